"""Rows of LGMRec's Table 2 (Guo et al., AAAI 2024) on a real split: each model trained to early
stopping under our protocol for several seeds, test metrics at the best validation epoch as
mean ± std, beside the paper's row for the same model and dataset.

    python benchmarks/bench_table2.py --models lightgcn sgl ncl hccf sht [--dataset baby]
        [--seeds 999 1000 1001] [--max-epochs N] [--threads 2] [--json OUT] [--set k=v ...]

The interaction models (BPR, LightGCN, SGL, NCL, HCCF, SHT) read no modality features; the
multimodal ones get the proxy features of ``benchmarks/common.py`` (labelled so: the paper used
the real image/text features). ``--max-epochs`` caps the run (default: the model's own
``epochs``, 1000 for most, with early stopping); a capped run is labelled "capped at N" in the
table because its best epoch may be the cap. Every model trains with the setting LGMRec's authors state for all of them (Appendix,
"Parameter Setting": batch size 2048, learning rate 1e-3, embedding size 64), on top of its own
defaults; ``--own-setting`` keeps each model's own (e.g. NCL's batch 4096, HCCF's d 32).
``--json`` records every finished (model, seed)
at once and is read back on a second call, so an interrupted table resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import peak_rss_gb, plain_dataset, processor, proxy_dataset  # noqa: E402

from mmrecsys.config import parse_overrides  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.models import get_model_class  # noqa: E402
from mmrecsys.train import fit  # noqa: E402

#: LGMRec paper, Table 2: R@10, R@20, N@10, N@20 on (Baby, Sports, Clothing)
PAPER = {
    "bpr": [(0.0379, 0.0607, 0.0202, 0.0261), (0.0452, 0.0690, 0.0252, 0.0314),
            (0.0211, 0.0315, 0.0118, 0.0144)],
    "lightgcn": [(0.0464, 0.0732, 0.0251, 0.0320), (0.0553, 0.0829, 0.0307, 0.0379),
                 (0.0331, 0.0514, 0.0181, 0.0227)],
    "sgl": [(0.0532, 0.0820, 0.0289, 0.0363), (0.0620, 0.0945, 0.0339, 0.0423),
            (0.0392, 0.0586, 0.0216, 0.0266)],
    "ncl": [(0.0538, 0.0836, 0.0292, 0.0369), (0.0616, 0.0940, 0.0339, 0.0421),
            (0.0410, 0.0607, 0.0228, 0.0275)],
    "hccf": [(0.0480, 0.0756, 0.0259, 0.0332), (0.0573, 0.0857, 0.0317, 0.0394),
             (0.0342, 0.0533, 0.0187, 0.0235)],
    "sht": [(0.0470, 0.0748, 0.0256, 0.0329), (0.0564, 0.0838, 0.0306, 0.0384),
            (0.0345, 0.0541, 0.0192, 0.0243)],
    "vbpr": [(0.0424, 0.0663, 0.0223, 0.0284), (0.0556, 0.0854, 0.0301, 0.0378),
             (0.0281, 0.0412, 0.0158, 0.0191)],
    "lattice": [(0.0536, 0.0858, 0.0287, 0.0370), (0.0618, 0.0950, 0.0337, 0.0423),
                (0.0459, 0.0702, 0.0253, 0.0306)],
    "bm3": [(0.0538, 0.0857, 0.0301, 0.0378), (0.0659, 0.0979, 0.0354, 0.0437),
            (0.0450, 0.0669, 0.0243, 0.0295)],
    "lgmrec": [(0.0644, 0.1002, 0.0349, 0.0440), (0.0720, 0.1068, 0.0390, 0.0480),
               (0.0555, 0.0828, 0.0302, 0.0371)],
}
DATASETS = ("baby", "sports", "clothing")
#: LGMRec, Appendix "Parameter Setting": the common setting of every model in Table 2
PAPER_SETTING = {"batch_size": 2048, "lr": 1e-3, "embedding_dim": 64}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--dataset", default="baby", choices=DATASETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[999, 1000, 1001])
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--own-setting", action="store_true",
                    help="each model's own batch size, lr and width instead of the paper's common ones")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"processor: {processor()}; {args.threads} torch threads; load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))

    done: dict = {}
    if args.json and args.json.exists():
        done = json.loads(args.json.read_text()).get("runs", {})
    plain = needs_features = None
    for name in args.models:
        if get_model_class(name).requires_features:
            needs_features = True
        else:
            plain = True
    datasets = {}
    if plain:
        datasets[False] = load_dataset(plain_dataset(args.dataset))
    if needs_features:
        datasets[True] = load_dataset(proxy_dataset(args.dataset))
    for name in args.models:
        feats = get_model_class(name).requires_features
        data = datasets[bool(feats)]
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key in done:
                continue
            common = {} if args.own_setting else dict(PAPER_SETTING)
            overrides = {**common, **parse_overrides(args.sets), "seed": seed}
            if args.max_epochs:
                overrides["epochs"] = args.max_epochs
            t0 = time.perf_counter()
            res = fit(data, name, overrides, log=None)
            hist = res["history"]
            done[key] = {"test": {m: res["test"][m] for m in METRICS}, "best_epoch": res["best_epoch"],
                         "epochs_run": len(hist), "seconds": time.perf_counter() - t0,
                         "s_per_epoch": statistics.median(h["train_seconds"] for h in hist),
                         "capped": bool(args.max_epochs) and len(hist) >= args.max_epochs,
                         "proxy_features": bool(feats)}
            print(f"{name} seed {seed}: best epoch {res['best_epoch']} of {len(hist)}, "
                  f"test R@20 {res['test']['recall@20']:.4f} N@20 {res['test']['ndcg@20']:.4f}, "
                  f"{done[key]['seconds']:.0f}s", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"dataset": args.dataset, "processor": processor(),
                                                 "runs": done}, indent=1))
    col = DATASETS.index(args.dataset)
    print(f"\n{args.dataset}: test metrics at the best validation epoch, mean ± std over seeds "
          f"{', '.join(map(str, args.seeds))}; paper = LGMRec Table 2")
    print(f"{'model':9s}" + "".join(f"{m:>18s}" for m in METRICS) + f"{'paper R@20':>11s}{'Δ':>7s}"
          + "  epochs (best/run)")
    for name in args.models:
        runs = [done[f"{name}/{s}"] for s in args.seeds if f"{name}/{s}" in done]
        if not runs:
            continue
        line = f"{name:9s}"
        for m in METRICS:
            v = [r["test"][m] for r in runs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            line += f"{statistics.mean(v):11.4f} ± {sd:.4f}"
        paper = PAPER.get(name)
        mean20 = statistics.mean(r["test"]["recall@20"] for r in runs)
        line += (f"{paper[col][1]:11.4f}{100 * (mean20 / paper[col][1] - 1):+6.1f}%" if paper
                 else f"{'n/a':>11s}{'':>7s}")
        line += "  " + ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs)
        if any(r["capped"] for r in runs):
            line += f" (capped at {args.max_epochs})"
        if any(r["proxy_features"] for r in runs):
            line += " (proxy features)"
        print(line)
    print(f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
