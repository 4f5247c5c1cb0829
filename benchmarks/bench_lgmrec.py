"""LGMRec against LightGCN: synthetic default, Baby with proxy features, Clothing peak memory.

    python benchmarks/bench_lgmrec.py                      # synthetic default + Baby (proxy features)
    python benchmarks/bench_lgmrec.py --only synthetic     # just the synthetic comparison
    python benchmarks/bench_lgmrec.py --only baby [--max-epochs N] [--set k=v ...]
    python benchmarks/bench_lgmrec.py --only clothing [--max-epochs 1]   # peak memory (< 8 GB?)

Prints, for each dataset, test Recall/NDCG@10/@20 at the best validation epoch (early stopping on
validation Recall@20, patience 20, as the official code), test Recall@20 restricted to held-out interactions
whose item has 1–2 training interactions, seconds per training epoch (median), seconds per full
evaluation pass (valid + test, best of 3) and the process's peak resident memory after each
model. Baby and Clothing use the real interaction splits from ../shared/data with *proxy
features* made by ../shared/tools/make_proxy_features.py with its default arguments (4096-d
image, 384-d text): those figures are labelled "proxy features" and are not comparable with the
paper's numbers. LGMRec's inference draws Gumbel noise (as the official code), so its figures
restricted to sparse items are averaged over 5 evaluation passes (mean ± std).

Run it under the shared lock: ``flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_lgmrec.py``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
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
REFERENCE_SECONDS = {"epoch": 79.0, "eval": 13.0}  # reference implementation, Baby, this CPU


def eval_pass_seconds(model, data, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, data, "valid", topk=(5, 10, 20, 50))
        evaluate(model, data, "test", topk=(5, 10, 20, 50))
        times.append(time.perf_counter() - t0)
    return min(times)


def sparse_item_recall(model, data, passes):
    items = items_with_train_degree(data, 1, 2)
    vals = [evaluate(model, data, "test", topk=(20,), item_subset=items).metrics["recall@20"]
            for _ in range(passes)]
    users = len(evaluate(model, data, "test", topk=(20,), item_subset=items).users)
    return float(np.mean(vals)), float(np.std(vals)), len(items), users


def run(data, name, overrides, label, log):
    t0 = time.perf_counter()
    res = fit(data, name, dict(overrides), log=log)
    wall = time.perf_counter() - t0
    model = res["model"]
    hist = res["history"]
    epoch_s = float(np.median([h["train_seconds"] for h in hist]))
    ev = eval_pass_seconds(model, data)
    passes = 5 if name == "lgmrec" else 1
    sp_mean, sp_std, n_items, n_users = sparse_item_recall(model, data, passes)
    t = res["test"] or {}
    row = {"model": name, "best_epoch": res["best_epoch"], "epochs": len(hist),
           **{k: t.get(k, float("nan")) for k in KEYS},
           "sparse_r20": sp_mean, "sparse_r20_std": sp_std,
           "epoch_s": epoch_s, "eval_s": ev, "wall_s": wall, "peak_gb": peak_rss_gb()}
    print(f"[{label}] {name}: best epoch {row['best_epoch']} of {row['epochs']} | test "
          + " ".join(f"{k} {row[k]:.4f}" for k in KEYS)
          + f" | R@20 on test items with 1-2 train interactions ({n_items} items, {n_users} users) "
          f"{sp_mean:.4f}" + (f" ± {sp_std:.4f} ({passes} passes)" if passes > 1 else "")
          + f" | {epoch_s:.2f} s/epoch, {ev:.2f} s/eval pass (valid+test), wall {wall:.0f} s, "
          f"peak RSS so far {row['peak_gb']:.2f} GB", flush=True)
    return row


def table(rows, label):
    print(f"\n== {label} ==")
    print(f"{'model':10s} {'R@10':>7s} {'R@20':>7s} {'N@10':>7s} {'N@20':>7s} {'R@20 items 1-2':>15s} "
          f"{'s/epoch':>8s} {'s/eval':>7s} {'best/epochs':>12s}")
    for r in rows:
        print(f"{r['model']:10s} {r['recall@10']:7.4f} {r['recall@20']:7.4f} {r['ndcg@10']:7.4f} "
              f"{r['ndcg@20']:7.4f} {r['sparse_r20']:15.4f} {r['epoch_s']:8.2f} {r['eval_s']:7.2f} "
              f"{r['best_epoch']:>5d}/{r['epochs']:<6d}")
    print(flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["synthetic", "baby", "clothing"], default=None)
    ap.add_argument("--models", nargs="+", default=["lgmrec", "lightgcn"])
    ap.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: 1000)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="LGMRec overrides k=v")
    ap.add_argument("--verbose", action="store_true", help="print every epoch")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = print if args.verbose else None
    lg_over = parse_overrides(args.sets)
    if args.max_epochs:
        lg_over["epochs"] = args.max_epochs
    base_over = {"epochs": args.max_epochs} if args.max_epochs else {}

    todo = [args.only] if args.only else ["synthetic", "baby"]
    if "synthetic" in todo:
        from mmrecsys.data.synthetic import make_synthetic
        data = make_synthetic()
        print(data)
        rows = [run(data, m, lg_over if m == "lgmrec" else base_over, "synthetic default", log)
                for m in args.models]
        table(rows, "synthetic default (make_synthetic(), seed 0)")
    for name in ("baby", "clothing"):
        if name not in todo:
            continue
        data = load_dataset(proxy_dataset(name))
        print(data, "-- proxy features")
        models = args.models if name == "baby" else ["lgmrec"]
        rows = [run(data, m, lg_over if m == "lgmrec" else base_over, f"{name}, proxy features", log)
                for m in models]
        table(rows, f"{name} with PROXY FEATURES (make_proxy_features.py defaults: 4096-d image, "
                    f"384-d text)")
        lg = next((r for r in rows if r["model"] == "lgmrec"), None)
        if lg and name == "baby":
            print(f"LGMRec speed on Baby: {lg['epoch_s']:.2f} s/epoch "
                  f"({REFERENCE_SECONDS['epoch'] / lg['epoch_s']:.1f}x faster than the reference's "
                  f"~79 s), {lg['eval_s']:.2f} s per evaluation pass (reference ~13 s)")
        if lg and name == "clothing":
            print(f"LGMRec on Clothing: peak RSS {lg['peak_gb']:.2f} GB "
                  f"({'within' if lg['peak_gb'] < 8 else 'ABOVE'} 8 GB)")


if __name__ == "__main__":
    main()
