"""REARM against LightGCN: synthetic default, Baby with proxy features (accuracy and speed),
Clothing peak memory.

    python benchmarks/bench_rearm.py --only synthetic [--max-epochs N]
    flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_rearm.py --only baby [--max-epochs N]
    flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_rearm.py --only clothing [--max-epochs 1]

Prints test Recall/NDCG@10/@20 at the best validation epoch (early stopping on validation
Recall@20, patience 20, as the official code; ``--max-epochs`` caps the run and the output says so), test
Recall@20 over held-out interactions whose item has 1–2 training interactions, and for REARM:
graph-building seconds (empty graph cache, per component), median seconds per training epoch,
seconds per evaluation pass (valid + test, best of 3) and the process's peak resident memory.
REARM uses its per-dataset preset (the official README's settings; lr 5e-5, AdamW, batch 2048);
LightGCN its own defaults.
Baby and Clothing use the real splits from ../shared/data with *proxy features* from
../shared/tools/make_proxy_features.py (default arguments: 4096-d image, 384-d text): every such
figure is labelled "proxy features" and is not comparable with the paper's numbers.
Reference (official code, this CPU, Baby): graphs 210 s, 494 s/epoch, 13 s/eval pass, 7.5 GB.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import peak_rss_gb, proxy_dataset  # noqa: E402

from mmrecsys.config import parse_overrides  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.evaluation import evaluate, items_with_train_degree  # noqa: E402
from mmrecsys.train import fit  # noqa: E402

KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
REFERENCE = {"graphs": 210.0, "epoch": 494.0, "eval": 13.0, "peak_gb": 7.5}


def eval_pass_seconds(model, data, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, data, "valid", topk=(10, 20))
        evaluate(model, data, "test", topk=(10, 20))
        best = min(best, time.perf_counter() - t0)
    return best


def step_seconds(net, data, fused: bool, steps=6, batch=2048, lr=5e-5, wd=5e-4):
    """Median seconds of one REARM training step (forward, backward, AdamW) with the given AdamW."""
    from mmrecsys.train.sampler import make_sampler
    sampler = make_sampler(data, "interactions", batch, "all_items", False)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr,
                            weight_decay=wd, fused=fused)
    net.train()
    times = []
    for i, (u, p, n) in enumerate(sampler.epoch(rng)):
        if i > steps:
            break
        t0 = time.perf_counter()
        loss = sum(net.loss(torch.as_tensor(u), torch.as_tensor(p), torch.as_tensor(n)).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    del opt
    return float(np.median(times)), len(sampler)


def run(data, model, overrides, label, log):
    t0 = time.perf_counter()
    res = fit(data, model, overrides, log=log)
    total = time.perf_counter() - t0
    net = res["model"]
    sparse = items_with_train_degree(data, 1, 2)
    sub = evaluate(net, data, "test", topk=(20,), item_subset=sparse).metrics["recall@20"]
    hist = res["history"]
    capped = (not res["stopped_early"]) and len(hist) >= overrides.get("epochs", 10 ** 9)
    t = res["test"]
    print(f"{label}: best epoch {res['best_epoch']} of {len(hist)} run"
          f"{' (CAPPED by --max-epochs, not converged)' if capped else ' (early stopping)'}; "
          + " ".join(f"test {k} {t[k]:.4f}" for k in KEYS if k in t)
          + f"; test recall@20 on items with 1-2 train interactions {sub:.4f} "
            f"({len(sparse)} items); wall {total:.0f}s", flush=True)
    return res, sub


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["synthetic", "baby", "clothing"], required=True)
    ap.add_argument("--max-epochs", type=int, default=None, help="cap REARM's epochs (default 2000)")
    ap.add_argument("--skip-lightgcn", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="REARM override k=v")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch log")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    over = parse_overrides(args.sets)
    if args.max_epochs:
        over["epochs"] = args.max_epochs

    if args.only == "synthetic":
        from mmrecsys.data.synthetic import make_synthetic
        data = make_synthetic()
        print(data)
        run(data, "rearm", dict(over), "synthetic REARM", log)
        if not args.skip_lightgcn:
            run(data, "lightgcn", {}, "synthetic LightGCN", log)
        return

    name = args.only
    data = load_dataset(proxy_dataset(name))
    print(f"{data}  [proxy features]", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # graph building from scratch: a fresh, empty graph cache
        res, _ = run(data, "rearm", {**over, "cache_dir": tmp}, f"{name} REARM [proxy features]", log)
        net = res["model"]
        comp = ", ".join(f"{k} {v:.1f}s" for k, v in net.graph_seconds.items())
        graphs = sum(net.graph_seconds.values())
        epoch_s = float(np.median([h["train_seconds"] for h in res["history"]]))
        ev = eval_pass_seconds(net, data)
        peak = peak_rss_gb()
        print(f"{name} REARM speed [proxy features]: graph building {graphs:.1f}s ({comp}); model "
              f"build incl. graphs {res['model_build_seconds']:.1f}s; {epoch_s:.1f}s/epoch (median "
              f"of {len(res['history'])}); eval pass (valid+test) {ev:.2f}s; peak RSS {peak:.2f} GB",
              flush=True)
        if name == "baby":
            print(f"  vs official code on this CPU: graphs {REFERENCE['graphs'] / graphs:.0f}x faster, "
                  f"epochs {REFERENCE['epoch'] / epoch_s:.1f}x faster, eval "
                  f"{REFERENCE['eval'] / ev:.1f}x faster, peak memory {peak:.2f} vs "
                  f"{REFERENCE['peak_gb']} GB")
        else:
            print(f"  peak memory {'<' if peak < 12 else '>='} 12 GB")
        if name == "baby":
            plain, n_steps = step_seconds(net, data, fused=False)
            fused, _ = step_seconds(net, data, fused=True)
            print(f"  step probe: {plain:.2f}s/step with the trainer's AdamW (for-loop), "
                  f"{fused:.2f}s/step with AdamW(fused=True): projected {plain * n_steps:.0f} vs "
                  f"{fused * n_steps:.0f} s/epoch ({n_steps} steps)", flush=True)
    if name == "baby" and not args.skip_lightgcn:
        del net, res
        run(data, "lightgcn", {}, f"{name} LightGCN (interactions only)", log)


if __name__ == "__main__":
    main()
