"""Seconds per training epoch, seconds per evaluation pass and peak memory of one model on a
real split with proxy features (default Baby), optionally beside a recorded reference run.

    python benchmarks/bench_baselines_speed.py --model NAME [--dataset baby] [--ref FILE]
                                               [--epochs 2] [--steps N] [--set k=v ...]

Proxy features (``benchmarks/common.py`` ``proxy_dataset``: image 4096-d, text 384-d) stand in
for the real ones; every figure is labelled so. Runs with 2 torch threads (``--threads``).

* model build: construction with a cold graph cache (a fresh temporary cache folder), graphs
  included;
* s/epoch: the trainer's ``train_epoch`` (``pre_epoch`` + every batch + scheduler) for
  ``--epochs`` epochs after one warm-up epoch; ``--steps N`` times N batches instead and
  extrapolates to a full epoch (labelled "extrapolated");
* evaluation pass: validation and test ranking with all metrics, as the trainer's evaluation
  after an improving epoch (one ranking serves both splits when their masks are equal);
* peak RSS of the process (``ru_maxrss``) after each phase;
* CPU seconds (process user + system time, all threads) of the same spans: on a shared machine
  wall time grows with the load, CPU time much less, so CPU seconds compare runs made at
  different loads better (with 2 threads and no contention, CPU ≈ up to 2 × wall).

``--ref-cmd CMD`` runs the reference's own timing first, in this same benchmark run (a shell
command, e.g. a driver of the official code in its own environment, that writes its record to
the file named by ``$REF_JSON``), then ours, so that both sides are timed on the same machine
at the same time; the processor and the load are printed with the figures. An interaction-only
model (no modality features) runs on the split itself, without proxy features.

``--ref FILE`` reads a reference timing record (keys ``hyperparameters``, ``seconds_per_epoch``
or ``epoch_seconds_full_estimate``, ``epoch_cpu_seconds`` with ``n_batches_per_epoch_run`` and
``n_batches_per_epoch_full``, ``eval_seconds``, ``peak_rss_mb``) and uses its hyperparameters,
so both sides train the same configuration. A reference epoch cut short is extrapolated to the
full epoch (its CPU seconds scaled by the batches), as the record's own wall estimate is.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_parity import map_hyperparameters  # noqa: E402
from common import peak_rss_gb, plain_dataset, processor, proxy_dataset  # noqa: E402

from mmrecsys.config import parse_overrides, run_config  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.models import get_model_class  # noqa: E402
from mmrecsys.train.trainer import EpochEvaluator, Trainer  # noqa: E402


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", default="baby")
    ap.add_argument("--ref", type=pathlib.Path, default=None)
    ap.add_argument("--ref-cmd", default=None,
                    help="shell command timing the reference now; it writes its record to $REF_JSON")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    ap.add_argument("--steps", type=int, default=None, help="time N batches per epoch and extrapolate")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--eval-passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"processor: {processor()}; start: {load()}")
    ref_path = args.ref
    if args.ref_cmd:
        fd, tmp = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        print(f"reference: {args.ref_cmd}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(args.ref_cmd, shell=True, env={**os.environ, "REF_JSON": tmp})
        if done.returncode != 0:
            sys.exit(f"error: the reference command failed with status {done.returncode}")
        print(f"reference finished in {time.perf_counter() - t0:.0f}s; {load()}", flush=True)
        ref_path = pathlib.Path(tmp)

    cls = get_model_class(args.model)
    if cls.requires_features:
        data = load_dataset(proxy_dataset(args.dataset))
        print(f"{data!r} (proxy features)")
    else:
        data = load_dataset(plain_dataset(args.dataset))
        print(f"{data!r} (interactions only)")
    overrides, ref = {}, None
    if ref_path:
        ref = json.loads(ref_path.read_text())
        overrides, ignored = map_hyperparameters(cls, ref["hyperparameters"])
        overrides["preset"] = "none"   # the reference's configuration, not our dataset preset
        if ignored:
            print(f"reference keys ignored: {', '.join(ignored)}")
    overrides.update(parse_overrides(args.sets))
    with tempfile.TemporaryDirectory() as cache:
        cfg = run_config(args.model, data, None, {**overrides, "cache_dir": cache, "epochs": 1000})
        t0 = time.perf_counter()
        trainer = Trainer(data, cfg, None, log=lambda *a, **k: None)
        build = time.perf_counter() - t0
    net = trainer.net
    print(f"hyperparameters: " + ", ".join(f"{k}={cfg[k]!r}" for k in cls.hyperparameters()))
    print(f"model build {build:.2f}s (graphs {dict((k, round(v, 2)) for k, v in net.graph_seconds.items())}); "
          f"peak RSS {peak_rss_gb():.2f} GB")

    n_batches = len(trainer.sampler)
    if args.steps:  # time N batches and extrapolate
        sampler = trainer.sampler
        full_epoch = sampler.epoch

        def short_epoch(rng):
            for b, item in enumerate(full_epoch(rng)):
                if b >= args.steps:
                    return
                yield item
        sampler.epoch = short_epoch
    times, cpus = [], []
    scale = n_batches / min(args.steps, n_batches) if args.steps else 1.0
    for e in range(args.epochs + (0 if args.no_warmup else 1)):
        c0 = time.process_time()
        row = trainer.train_epoch(e)
        cpu = (time.process_time() - c0) * scale
        secs = row["train_seconds"] * scale
        print(f"epoch {e}: {row['train_seconds']:.2f}s"
              + (f" for {min(args.steps, n_batches)} of {n_batches} batches, {secs:.2f}s extrapolated"
                 if args.steps else "") + f", loss {row['loss']:.4f}"
              + f", CPU {cpu:.2f}s" + (" (warm-up)" if e == 0 and not args.no_warmup else "")
              + f"  [{load()}]")
        if e > 0 or args.no_warmup:
            times.append(secs)
            cpus.append(cpu)
    s_epoch, c_epoch = statistics.median(times), statistics.median(cpus)
    print(f"peak RSS after training {peak_rss_gb():.2f} GB")

    evals, eval_cpus = [], []
    for p in range(args.eval_passes):
        t0, c0 = time.perf_counter(), time.process_time()
        ev = EpochEvaluator(net, trainer.data, cfg, p, trainer.device)
        v = ev("valid").metrics
        t = ev("test", keep_topk=True).metrics
        evals.append(time.perf_counter() - t0)
        eval_cpus.append(time.process_time() - c0)
    s_eval, c_eval = min(evals), min(eval_cpus)
    print(f"evaluation pass (valid + test): {', '.join(f'{x:.2f}s' for x in evals)}; valid recall@20 "
          f"{v['recall@20']:.4f}, test recall@20 {t['recall@20']:.4f}")
    rss = peak_rss_gb()
    label = f"{'extrapolated from ' + str(args.steps) + ' batches' if args.steps else 'full epochs'}"
    feats = "proxy features" if cls.requires_features else "interactions only"
    print(f"\n{args.model} on {args.dataset} ({feats}), {args.threads} threads, {label}, "
          f"{processor()}:")
    print(f"{'':24}{'ours':>12}" + (f"{'reference':>12}{'speed-up':>10}" if ref else ""))
    rows = [("s / epoch", s_epoch, None), ("CPU s / epoch", c_epoch, None),
            ("s / eval (valid+test)", s_eval, None), ("CPU s / eval", c_eval, None),
            ("peak RSS (GB)", rss, None)]
    if ref:
        rows = [(name, o, r) for (name, o, _), r in zip(rows, reference_figures(ref))]
    for name, o, r in rows:
        line = f"{name:24}{o:12.2f}"
        if ref:
            line += f"{r:12.2f}" if r is not None else f"{'-':>12}"
            if r is not None and name != "peak RSS (GB)":
                line += f"{r / o:9.1f}x"
        print(line)
    if ref and ref.get("loadavg_end"):
        print(f"(reference load at its end: {', '.join(f'{x:.2f}' for x in ref['loadavg_end'])})")
    print(f"end: {load()}")


def _median(x):
    if isinstance(x, list):
        x = [v for v in x if v is not None]
        return statistics.median(x) if x else None
    return x


def reference_figures(ref: dict) -> list:
    """The reference's [s/epoch, CPU s/epoch, s/eval, CPU s/eval, peak RSS GB] (None: absent);
    a truncated epoch's CPU seconds are scaled to the full number of batches."""
    wall = _median(ref.get("epoch_seconds_full_estimate")) or _median(ref.get("seconds_per_epoch"))
    cpu = None
    if ref.get("epoch_cpu_seconds"):
        full, run = ref.get("n_batches_per_epoch_full"), ref.get("n_batches_per_epoch_run") or []
        cpus = [c * (full / r if full and r else 1.0) for c, r in
                zip(ref["epoch_cpu_seconds"], run or [None] * len(ref["epoch_cpu_seconds"]))]
        cpu = _median(cpus)
    evals = ref.get("eval_seconds") or []
    ev = _median([e["total"] if isinstance(e, dict) else e for e in evals]) if isinstance(evals, list) else evals
    ev_cpu = _median([e["cpu_valid"] + e["cpu_test"] for e in evals
                      if isinstance(e, dict) and "cpu_valid" in e]) if isinstance(evals, list) else None
    rss = ref.get("peak_rss_mb")
    if isinstance(rss, dict):
        rss = max(v if not isinstance(v, list) else max(v) for v in rss.values() if v)
    return [wall, cpu, ev, ev_cpu, rss / 1024 if rss else None]


if __name__ == "__main__":
    main()
