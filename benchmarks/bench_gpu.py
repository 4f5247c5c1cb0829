"""The CUDA path once: every model trains and ranks on a GPU, beside the CPU, and the seed
models' speed at Baby's size.

    python benchmarks/bench_gpu.py [--budget 420] [--out results.jsonl]

1. **Same function on both devices.** On the synthetic default (2,000 users, 1,000 items) every
   built-in model trains 3 epochs with the same seed on the CPU and on CUDA: the mean loss of
   each epoch, the best validation Recall@20 and seconds per epoch, side by side. Sampling and
   initialisation are drawn on the CPU, so models without dropout agree to float rounding in
   epoch 0; dropout masks come from each device's own generator, so those models agree only in
   distribution. ``recommend`` is called once on the CUDA model (the serving path).
2. **Speed at Baby's size.** A synthetic dataset with Baby's shape (19,445 users, 7,050 items,
   about 160k interactions, 4,096-d image and 384-d text features, generated in memory:
   ``../shared`` does not travel to a GPU machine): per model, the model build (graphs
   included, empty cache), one training epoch, one evaluation pass (valid + test) and the peak
   CUDA memory (``torch.cuda.max_memory_allocated``).

Stops starting new work once ``--budget`` seconds have passed. Prints one JSON line per
result (also appended to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = ["bpr", "lightgcn", "lgmrec", "mmhcl", "rearm", "vbpr", "bm3", "freedom", "lattice",
          "mgcn", "smore"]


def emit(row: dict, out) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def same_function(data, model: str, cache: str, gpu: str = "cuda") -> dict:
    import mmrecsys as mr
    row = {"part": "cpu_vs_cuda", "model": model}
    for side, dev in (("cpu", "cpu"), ("cuda", gpu)):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tm = mr.fit(data, model, device=dev, epochs=3, eval_step=1, seed=7, cache_dir=cache)
        hist = tm.history
        row[side] = {"loss": [round(h["loss"], 6) for h in hist],
                    "best_valid_recall@20": round(tm.metrics["valid"]["recall@20"], 4),
                    "s_per_epoch": round(float(np.median([h["train_seconds"] for h in hist])), 3),
                    "total_s": round(time.perf_counter() - t, 1)}
        if side == "cuda":
            ids, _ = tm.recommend(np.arange(5), k=10)
            row["cuda_recommend_shape"] = list(ids.shape)
    a, b = row["cpu"]["loss"][0], row["cuda"]["loss"][0]
    row["epoch0_loss_rel_diff"] = float(abs(a - b) / max(abs(a), 1e-12))
    return row


def baby_speed(data, model: str, cache: str, gpu: str = "cuda") -> dict:
    from mmrecsys.config import run_config
    from mmrecsys.train.trainer import EpochEvaluator, Trainer
    if gpu.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = run_config(model, data, None, {"cache_dir": cache, "epochs": 1})
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = Trainer(data, cfg, None, device=gpu, log=None)
    _sync(gpu)
    build = time.perf_counter() - t
    t = time.perf_counter()
    row = tr.train_epoch(0)
    _sync(gpu)
    epoch = time.perf_counter() - t
    t = time.perf_counter()
    ev = EpochEvaluator(tr.net, tr.data, cfg, 0, tr.device)
    valid = ev("valid").metrics
    ev("test")
    _sync(gpu)
    return {"part": "baby_shape_speed", "model": model, "build_s": round(build, 2),
            "s_per_epoch": round(epoch, 2), "steps": len(tr.sampler),
            "eval_s": round(time.perf_counter() - t, 2), "loss": round(row["loss"], 5),
            "valid_recall@20": round(valid["recall@20"], 4),
            "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if gpu.startswith("cuda") else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before no new work starts")
    ap.add_argument("--out", default=None)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--speed-models", nargs="+",
                    default=["rearm", "lgmrec", "mmhcl", "lightgcn", "mgcn", "smore", "freedom",
                             "lattice", "bm3", "vbpr"])
    ap.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--baby-users", type=int, default=19445, help=argparse.SUPPRESS)
    ap.add_argument("--baby-items", type=int, default=7050, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    gpu = "cpu" if args.cpu_dry_run else "cuda"
    if gpu == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark checks the GPU path")
    from mmrecsys.data.synthetic import make_synthetic
    emit({"part": "device", "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name(0) if gpu == "cuda" else "none (dry run)",
          "cpu_threads": torch.get_num_threads()}, args.out)
    with tempfile.TemporaryDirectory() as cache:
        small = make_synthetic(2000, 1000, 0)
        for m in args.models:
            if time.perf_counter() - t0 > args.budget * 0.45:
                emit({"part": "cpu_vs_cuda", "model": m, "skipped": "time budget"}, args.out)
                continue
            try:
                emit(same_function(small, m, cache, gpu), args.out)
            except Exception as e:  # noqa: BLE001 (report and go on)
                emit({"part": "cpu_vs_cuda", "model": m, "error": f"{type(e).__name__}: {e}"[:500]},
                     args.out)
        t = time.perf_counter()
        baby = make_synthetic(args.baby_users, args.baby_items, 0, mean_interactions=8.3,
                              modalities=(("image_feat", 4096, 0.6, "relu"),
                                          ("text_feat", 384, 0.9, "l2")), name="baby-shape")
        emit({"part": "baby_shape_data", "seconds": round(time.perf_counter() - t, 1),
              "data": repr(baby)}, args.out)
        for m in args.speed_models:
            if time.perf_counter() - t0 > args.budget:
                emit({"part": "baby_shape_speed", "model": m, "skipped": "time budget"}, args.out)
                continue
            try:
                emit(baby_speed(baby, m, cache, gpu), args.out)
            except Exception as e:  # noqa: BLE001
                emit({"part": "baby_shape_speed", "model": m,
                      "error": f"{type(e).__name__}: {e}"[:500]}, args.out)
            if gpu == "cuda":
                torch.cuda.empty_cache()
    emit({"part": "done", "seconds": round(time.perf_counter() - t0, 1)}, args.out)


if __name__ == "__main__":
    main()
