"""Speed and memory of one model on Baby or Clothing with proxy features (issue 13).

    flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_speed.py --model rearm [--dataset baby] [--steps N]
    python benchmarks/bench_speed.py --model mmhcl --set preset=clothing --steps 5

Builds the model's graphs from an EMPTY graph cache (a temporary ``cache_dir``), then times
``--steps N`` training steps (forward, backward, optimiser step, as the trainer's loop; one
untimed warm-up step first, reported apart), or one full epoch through the trainer when
``--steps`` is absent, then one evaluation pass (validation + test), then the trainer's whole
evaluation after an improving epoch (the pass again, the test-pass reports and the best weights
into a temporary run directory).
Prints one line per figure:

    graphs_s        seconds to build the model with an empty cache (graphs included), and
                    the per-graph breakdown the model records
    s_per_step      mean seconds of a timed training step
    s_per_epoch     measured (one full epoch) or extrapolated (steps per epoch × s_per_step)
    eval_s          seconds of one evaluation pass (valid + test, ranked as the trainer does);
                    then Trainer.evaluate runs it again with the test-pass reports and best.pt
                    (printed as trainer_eval_s; its memory counts in the peak)
    peak_rss_gib    the process's peak resident memory (ru_maxrss), GiB

each with the official code's figure on this CPU (Baby, 2 threads; issue 13) and the ratio
official / ours, and the issue's target. Data are the real interaction splits from
../shared/data with *proxy features* (../shared/tools/make_proxy_features.py defaults: 4096-d
image, 384-d text, made once into a cache folder); label every figure "proxy features". The
presets apply by dataset name (``--set preset=clothing`` picks another one). The load average
is printed before and after: take timings under the shared lock, and say when the machine was
loaded.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import peak_rss_gb as peak_rss_gib, proxy_dataset  # noqa: E402

from mmrecsys.config import parse_overrides, run_config  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.train.trainer import EpochEvaluator, Trainer  # noqa: E402

#: the official code on this CPU, 2 threads, Baby with proxy features of the real widths (issue 13)
OFFICIAL = {
    "rearm": {"graphs_s": 211.0, "s_per_epoch": 494.0, "eval_s": 13.0, "peak_rss_gib": 7.5},
    "lgmrec": {"s_per_epoch": 79.0, "eval_s": 13.5, "peak_rss_gib": 1.26},
    "mmhcl": {"graphs_s": 524.0, "s_per_epoch": 1980.0, "eval_s": 109.0, "peak_rss_gib": 8.7},
}
#: the issue's targets (Baby; peak RSS on Clothing, one full epoch + evaluation)
TARGETS = {
    "rearm": {"graphs_s": 60.0, "s_per_epoch": 99.0, "eval_s": 1.3, "clothing_peak_rss_gib": 6.0},
    "lgmrec": {"s_per_epoch": 13.0, "eval_s": 1.35, "clothing_peak_rss_gib": 3.0},
    "mmhcl": {"graphs_s": 10.0, "s_per_epoch": 330.0, "eval_s": 10.9, "clothing_peak_rss_gib": 3.0},
}


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def figure(name: str, value: float, model: str, dataset: str, label: str = "") -> None:
    """One output line: the figure, the official figure and ratio, the target."""
    ref = OFFICIAL.get(model, {}).get(name) if dataset == "baby" else None
    tkey = f"{dataset}_peak_rss_gib" if name == "peak_rss_gib" else name
    if name != "peak_rss_gib" and dataset != "baby":
        tkey = None
    target = TARGETS.get(model, {}).get(tkey)
    line = f"{name:13s} {value:10.3f}" + (f"  ({label})" if label else "")
    if ref is not None:
        line += f" | official {ref:g}, ratio official/ours {ref / max(value, 1e-9):.2f}x"
    if target is not None:
        ok = value <= target
        line += f" | target <= {target:g}: {'met' if ok else 'NOT met'}"
    print(line, flush=True)


def train_steps(trainer: Trainer, n_steps: int) -> tuple[float, list[float]]:
    """The trainer's loop body for the first 1 + n_steps batches of epoch 0: (warm-up step
    seconds, timed step seconds)."""
    net, dev = trainer.net, trainer.device
    net.train()
    net.pre_epoch(0)
    times = []
    batches = trainer.sampler.epoch(trainer.rng)
    for i, (users, pos, neg) in enumerate(batches):
        if i > n_steps:
            break
        t0 = time.perf_counter()
        terms = trainer.train_step(users, pos, neg)
        float(sum(terms.values()).detach())  # synchronise (CUDA)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return times[0], times[1:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(OFFICIAL))
    ap.add_argument("--dataset", default="baby", choices=["baby", "clothing"])
    ap.add_argument("--steps", type=int, default=None,
                    help="time N training steps (after one warm-up step) instead of a full epoch")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override k=v")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation pass")
    ap.add_argument("--cache-dir", default=None,
                    help="graph cache to use instead of an empty one (graphs_s then measures "
                         "loading; for memory runs that need not rebuild the graphs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"bench_speed: {args.model} on {args.dataset} (PROXY FEATURES: 4096-d image, 384-d text), "
          f"{args.threads} threads, device {args.device}, torch {torch.__version__}; {load()}",
          flush=True)
    data = load_dataset(proxy_dataset(args.dataset))
    with tempfile.TemporaryDirectory(prefix="mmrecsys-bench-speed-") as tmp:
        cache = args.cache_dir or str(pathlib.Path(tmp) / "cache")
        os.environ["MMRECSYS_CACHE"] = cache
        overrides = {**parse_overrides(args.sets), "cache_dir": cache}
        cfg = run_config(args.model, data, None, overrides)
        print(f"preset {cfg.get('preset')}; " + ", ".join(f"{k}={cfg[k]}" for k in sorted(
            overrides) if k in cfg and k != "cache_dir"), flush=True)
        run = pathlib.Path(tmp) / "run"
        run.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(data, cfg, run, device=args.device, log=None)
        graphs = getattr(trainer.net, "graph_seconds", {}) or {}
        figure("graphs_s", trainer.build_seconds, args.model, args.dataset,
               ("model build, FROM THE GIVEN CACHE; " if args.cache_dir else
                "model build, empty cache; ") + ", ".join(f"{k} {v:.1f}" for k, v in graphs.items()))
        phases = {"graphs": peak_rss_gib()}
        steps_per_epoch = len(trainer.sampler)
        if args.steps:
            first, times = train_steps(trainer, args.steps)
            s_step = float(np.mean(times)) if times else first
            figure("s_per_step", s_step, args.model, args.dataset,
                   f"mean of {len(times)} steps, median {np.median(times) if times else first:.3f},"
                   f" warm-up step {first:.3f}")
            figure("s_per_epoch", steps_per_epoch * s_step, args.model, args.dataset,
                   f"EXTRAPOLATED: {steps_per_epoch} steps x s_per_step")
        else:
            row = trainer.train_epoch(0)
            figure("s_per_step", row["train_seconds"] / steps_per_epoch, args.model, args.dataset,
                   f"one full epoch / {steps_per_epoch} steps")
            figure("s_per_epoch", row["train_seconds"], args.model, args.dataset,
                   f"MEASURED: one full epoch of {steps_per_epoch} steps")
        phases["training"] = peak_rss_gib()
        if not args.no_eval:
            t0 = time.perf_counter()
            ev = EpochEvaluator(trainer.net, trainer.data, trainer.cfg, 0, trainer.device)
            ev("valid")
            ev("test", keep_topk=True)
            figure("eval_s", time.perf_counter() - t0, args.model, args.dataset,
                   "one evaluation pass: valid + test, as the trainer ranks them")
            phases["evaluation"] = peak_rss_gib()
            t0 = time.perf_counter()
            trainer.evaluate(0, {})
            print(f"{'trainer_eval_s':13s} {time.perf_counter() - t0:10.3f}  (Trainer.evaluate after "
                  f"an improving epoch: the same pass plus the test-pass reports and best.pt)",
                  flush=True)
            phases["trainer.evaluate"] = peak_rss_gib()
        figure("peak_rss_gib", peak_rss_gib(), args.model, args.dataset, "ru_maxrss; after " +
               ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(f"done; {load()}", flush=True)


if __name__ == "__main__":
    main()
