"""One ranking per reported result, checked through the commands a user runs.

    python benchmarks/bench_fidelity_checks.py [--models ...] [--epochs 3]

For each model: ``mmrecsys train --model M --set epochs=N`` on the synthetic default (MMHCL
evaluates every 5 epochs, so a 3-epoch run must evaluate its last epoch), then

* an independent recomputation of Recall/NDCG@K from ``topk_test.tsv`` and the test split
  (written here with NumPy, not the package's evaluator) against ``metrics.json``;
* ``mmrecsys evaluate RUN`` twice: identical output, equal to ``metrics.json`` (4 decimals);
* ``mmrecsys recommend RUN -u 0 -u 7 --json`` twice: identical output.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cli(*args) -> str:
    env = {"PYTHONPATH": str(ROOT / "src")}
    import os
    res = subprocess.run([sys.executable, "-m", "mmrecsys.cli", *map(str, args)], capture_output=True,
                         text=True, env={**os.environ, **env})
    if res.returncode:
        raise SystemExit(f"mmrecsys {' '.join(map(str, args))} failed:\n{res.stderr}")
    return res.stdout


def recompute(run: pathlib.Path, data, ks) -> dict:
    lists = {}
    for line in (run / "topk_test.tsv").read_text().splitlines():
        u, *items = map(int, line.split("\t"))
        lists[u] = np.array(items)
    test = data.test
    out = {f"{m}@{k}": [] for m in ("recall", "ndcg") for k in ks}
    for u in np.flatnonzero(np.diff(test.indptr) > 0):
        truth = test.indices[test.indptr[u]:test.indptr[u + 1]]
        for k in ks:
            hits = np.isin(lists[u][:k], truth)
            out[f"recall@{k}"].append(hits.sum() / len(truth))
            dcg = (hits / np.log2(np.arange(2, k + 2))).sum()
            idcg = (1 / np.log2(np.arange(2, min(k, len(truth)) + 2))).sum()
            out[f"ndcg@{k}"].append(dcg / idcg)
    return {k: float(np.mean(v)) for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["lightgcn", "bpr", "lgmrec", "mmhcl", "rearm"])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    import mmrecsys as mr
    data = mr.load_dataset("synthetic")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmrecsys-fidelity-"))
    all_ok = True
    for m in args.models:
        run = tmp / m
        cli("train", "--model", m, "--set", f"epochs={args.epochs}", "--out", run, "--quiet")
        metrics = json.loads((run / "metrics.json").read_text())
        ks = sorted(int(k.split("@")[1]) for k in metrics["test"] if k.startswith("recall@"))
        again = recompute(run, data, ks)
        worst = max(abs(again[k] - metrics["test"][k]) for k in again)
        e1, e2 = cli("evaluate", run), cli("evaluate", run)
        row = {ln.split()[0]: ln.split()[1:] for ln in e1.splitlines()[2:] if ln.strip()}
        eval_match = all(abs(float(v) - metrics["test"][f"{name}@{k}"]) <= 5e-5
                         for name in ("recall", "ndcg") for k, v in zip(ks, row[name]))
        r1 = cli("recommend", run, "-u", 0, "-u", 7, "--json")
        r2 = cli("recommend", run, "-u", 0, "-u", 7, "--json")
        ok = worst < 1e-9 and e1 == e2 and eval_match and r1 == r2
        all_ok &= ok
        print(f"{m:9s} best epoch {metrics['best_epoch']} of {metrics['epochs_run']}: "
              f"topk_test.tsv recomputation max |diff| {worst:.1e}; evaluate twice identical "
              f"{e1 == e2}, equals metrics.json {eval_match}; recommend twice identical "
              f"{r1 == r2} -> {'OK' if ok else 'MISMATCH'}", flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
