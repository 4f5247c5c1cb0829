"""Loss trajectory and speed of every model over a few epochs on the synthetic default.

    python benchmarks/bench_trajectory.py [--epochs 3] [--models ...] [--save FILE] [--compare FILE]

Prints, per model, each epoch's training loss terms (full precision) and seconds per epoch.
``--save`` writes the figures as JSON; ``--compare`` checks a later run against such a file:
every loss term must agree to 1e-6 (relative), and it prints the speed ratio. Used to show that
a refactor or a speed-up leaves the computed function unchanged.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import mmrecsys as mr  # noqa: E402

MODELS = ["bpr", "lightgcn", "lgmrec", "mmhcl", "rearm"]


def trajectory(model: str, epochs: int) -> dict:
    data = mr.load_dataset("synthetic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        m = mr.fit(data, model, epochs=epochs, eval_step=epochs + 1)
        total = time.perf_counter() - t
    losses = [{k: v for k, v in h.items() if k.startswith("loss")} for h in m.history]
    secs = [h["train_seconds"] for h in m.history]
    return {"losses": losses, "s_per_epoch": statistics.median(secs), "total_s": round(total, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save")
    ap.add_argument("--compare")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = json.loads(pathlib.Path(args.compare).read_text()) if args.compare else {}
    out, ok = {}, True
    for name in args.models:
        r = trajectory(name, args.epochs)
        out[name] = r
        print(f"{name}: {r['s_per_epoch']:.3f} s/epoch (median), {r['total_s']} s in all")
        for e, terms in enumerate(r["losses"]):
            print(f"  epoch {e}: " + " ".join(f"{k}={v:.10g}" for k, v in terms.items()))
        if name in ref:
            worst = 0.0
            for a, b in zip(r["losses"], ref[name]["losses"]):
                for k in set(a) | set(b):
                    if k not in a or k not in b:
                        worst = float("inf")
                        continue
                    worst = max(worst, abs(a[k] - b[k]) / max(abs(b[k]), 1e-12))
            same = worst <= 1e-6
            ok &= same
            print(f"  vs reference: max relative loss difference {worst:.2e} "
                  f"({'same' if same else 'DIFFERENT'}); speed {ref[name]['s_per_epoch']:.3f} → "
                  f"{r['s_per_epoch']:.3f} s/epoch ({ref[name]['s_per_epoch'] / r['s_per_epoch']:.2f}×)")
    if args.save:
        pathlib.Path(args.save).write_text(json.dumps(out, indent=1))
    if ref and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
