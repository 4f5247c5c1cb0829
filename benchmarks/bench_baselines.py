"""BPR and LightGCN on a real split (default Baby) to early stopping, beside MMRec's figures.

    python benchmarks/bench_baselines.py [--dataset baby] [--models bpr lightgcn] [--set k=v ...]

Prints test Recall/NDCG @10/@20 at the best validation epoch next to MMRec's published numbers
(``enoche/MMRec`` ``evaluation/README.md``), seconds per training epoch, seconds per full evaluation pass (valid + test)
and peak memory. Also measures the evaluation of the Clothing split (--eval-only-clothing).
Interaction data only: no modality features are used by these models.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import Timer, peak_rss_gb, plain_dataset  # noqa: E402

from mmrecsys.config import parse_overrides  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.evaluation import evaluate, heldout_users, rank_users  # noqa: E402
from mmrecsys.train import fit  # noqa: E402

MMREC = {  # MMRec's evaluation/README.md: Recall@10, Recall@20, NDCG@10, NDCG@20
    ("baby", "bpr"): (0.0357, 0.0575, 0.0192, 0.0249),
    ("baby", "lightgcn"): (0.0479, 0.0754, 0.0257, 0.0328),
    ("sports", "bpr"): (0.0432, 0.0653, 0.0241, 0.0298),
    ("sports", "lightgcn"): (0.0569, 0.0864, 0.0311, 0.0387),
}


def eval_pass_seconds(model, data, repeats=3):
    """Seconds for one full evaluation of valid and test (all metrics, K up to 50).

    Returns (shared, separate): the trainer's way (one ranking of all items serves both
    splits, whose masks are equal: training items only) and two independent passes.
    """
    shared, separate = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranking = rank_users(model, data, heldout_users(data), 50, data.train)
        evaluate(model, data, "valid", ranking=ranking)
        evaluate(model, data, "test", ranking=ranking)
        shared.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate(model, data, "valid")
        evaluate(model, data, "test")
        separate.append(time.perf_counter() - t0)
    return min(shared), min(separate)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="baby")
    ap.add_argument("--models", nargs="+", default=["bpr", "lightgcn"])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--max-epochs", type=int, default=None, help="cap (default: the config's 1000)")
    ap.add_argument("--eval-only-clothing", action="store_true",
                    help="only measure one evaluation pass on the Clothing split and its peak memory")
    args = ap.parse_args()
    torch.set_num_threads(2)

    if args.eval_only_clothing:
        from mmrecsys.models.lightgcn import LightGCN
        data = load_dataset(plain_dataset("clothing"))
        model = LightGCN(data)
        with Timer() as t:
            r = evaluate(model, data, "test")
        print(f"clothing {data.n_users}x{data.n_items}: test evaluation pass {t.seconds:.2f}s "
              f"(untrained LightGCN, {len(r.users)} users), peak RSS {peak_rss_gb():.2f} GB")
        return

    data = load_dataset(plain_dataset(args.dataset))
    print(data)
    rows = []
    for name in args.models:
        overrides = parse_overrides(args.sets)
        if args.max_epochs:
            overrides["epochs"] = args.max_epochs
        t0 = time.perf_counter()
        res = fit(data, name, overrides, log=None)
        total = time.perf_counter() - t0
        hist = res["history"]
        epoch_s = float(np.median([h["train_seconds"] for h in hist]))
        ev = eval_pass_seconds(res["model"], data)
        t = res["test"]
        rows.append((name, t, res["best_epoch"], len(hist), epoch_s, ev, total))
        print(f"{name}: best epoch {res['best_epoch']}, {len(hist)} epochs, {total:.0f}s total", flush=True)
    print()
    print(f"dataset {args.dataset} (real interactions, no features); test metrics at best validation epoch")
    print(f"{'model':9s} {'R@10':>7s} {'R@20':>7s} {'N@10':>7s} {'N@20':>7s} | {'MMRec R@20':>10s} {'N@20':>6s} "
          f"{'dR@20':>6s} {'dN@20':>6s} | {'best':>4s} {'ep':>4s} {'s/epoch':>7s} {'s/eval':>6s} {'(2 passes)':>10s}")
    for name, t, be, ne, es, ev, _ in rows:
        ref = MMREC.get((args.dataset, name))
        rel = (f"{100 * (t['recall@20'] / ref[1] - 1):+5.1f}% {100 * (t['ndcg@20'] / ref[3] - 1):+5.1f}%"
               if ref else "   n/a    n/a")
        refs = f"{ref[1]:10.4f} {ref[3]:6.4f}" if ref else f"{'n/a':>10s} {'n/a':>6s}"
        print(f"{name:9s} {t['recall@10']:7.4f} {t['recall@20']:7.4f} {t['ndcg@10']:7.4f} {t['ndcg@20']:7.4f} | "
              f"{refs} {rel} | {be:4d} {ne:4d} {es:7.3f} {ev[0]:6.3f} {ev[1]:10.3f}")
    print(f"peak RSS {peak_rss_gb():.2f} GB; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
