"""Speed and memory of LATTICE, MGCN and SMORE on a real split with proxy features.

    flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_baselines_speed_2.py --model mgcn \
        [--dataset baby] [--ref /work/ref/results/mgcn_baby_timing.json] [--epochs 2]
        [--steps N] [--threads 2] [--set key=value ...] [--out FILE]

Proxy features (``benchmarks/common.py`` ``proxy_dataset``: image 4096-d, text 384-d, from
``shared/tools/make_proxy_features.py``); every figure is labelled "proxy features". With
``--ref`` (a reference timing run's JSON) the model uses the reference run's hyperparameters and
its figures are printed beside ours; otherwise our defaults (no dataset preset).

Measured, single process, ``--threads`` threads: model construction with a cold graph cache
(kNN graphs included); seconds per training epoch (the trainer's loop: pre_epoch, sampling,
loss, backward, Adam step), the whole epoch, or with ``--steps N`` the first N batches
extrapolated to the epoch (first batch + mean of the others × remaining batches; labelled as
such); one evaluation pass as the trainer runs it (validation and test, all metrics at
K ∈ {5, 10, 20, 50}); peak resident memory (``ru_maxrss``) after each phase. Beside the wall
times, the process CPU seconds (user + sys, all threads) of the same spans: on a shared machine
they depend much less on the load than the wall times (with 2 threads and no contention, CPU
time is up to twice the wall time). The 1-minute load average is recorded with each epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_parity_2 import MAPS  # noqa: E402
from common import proxy_dataset  # noqa: E402

from mmrecsys.config import parse_overrides, run_config  # noqa: E402
from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.train.trainer import EpochEvaluator, Trainer  # noqa: E402


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_epoch(tr: Trainer, epoch: int, steps: int | None):
    """The trainer's epoch (``Trainer.train_epoch``), timed per batch; stops after ``steps``."""
    net, opt, dev = tr.net, tr.opt, tr.device
    t0, c0 = time.perf_counter(), time.process_time()
    net.train()
    net.pre_epoch(epoch)
    t_pre = time.perf_counter() - t0
    times, cpu, losses = [], [], []
    t_prev, c_prev = time.perf_counter(), time.process_time()
    for b, (users, pos, neg) in enumerate(tr.sampler.epoch(tr.rng)):
        if steps is not None and b >= steps:
            break
        terms = net.loss(torch.as_tensor(users, device=dev), torch.as_tensor(pos, device=dev),
                         torch.as_tensor(neg, device=dev))
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        now, cnow = time.perf_counter(), time.process_time()
        times.append(now - t_prev)
        cpu.append(cnow - c_prev)
        t_prev, c_prev = now, cnow
    tr.sched.step()
    n_full = len(tr.sampler)
    if len(times) < n_full:
        est = t_pre + times[0] + float(np.mean(times[1:] if len(times) > 1 else times)) * (n_full - 1)
        est_cpu = cpu[0] + float(np.mean(cpu[1:] if len(cpu) > 1 else cpu)) * (n_full - 1)
    else:
        est, est_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": est, "cpu_seconds": est_cpu, "extrapolated": len(times) < n_full,
            "load": os.getloadavg()[0], "batches_run": len(times),
            "batches_full": n_full, "batch_seconds": times, "pre_epoch_seconds": t_pre,
            "mean_loss": float(np.mean(losses))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(MAPS))
    ap.add_argument("--dataset", default="baby")
    ap.add_argument("--ref", default=None, help="a reference timing run's JSON (its hyperparameters are used)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="batches per epoch, extrapolated to the epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = json.loads(pathlib.Path(args.ref).read_text()) if args.ref else None
    overrides = MAPS[args.model](ref["hyperparameters"]) if ref else {}
    overrides.update(parse_overrides(args.sets))
    out = {"model": args.model, "dataset": args.dataset, "features": "proxy features",
           "threads": torch.get_num_threads(), "load_start": os.getloadavg(), "overrides": overrides}
    print(f"{args.model} on {args.dataset} (proxy features), {out['threads']} threads, "
          f"load {out['load_start'][0]:.2f}")

    t0 = time.perf_counter()
    data = load_dataset(proxy_dataset(args.dataset))
    out["load_data_seconds"] = time.perf_counter() - t0
    out["rss_after_data_gb"] = rss_gb()
    print(f"  {data}")
    with tempfile.TemporaryDirectory() as cache:
        cfg = run_config(args.model, data, overrides={**overrides, "preset": "none",
                                                      "cache_dir": cache, "epochs": args.epochs})
        tr = Trainer(data, cfg, None, device="cpu", log=None)
    out["model_build_seconds"] = tr.build_seconds
    out["graph_seconds"] = dict(tr.net.graph_seconds)
    out["n_parameters"] = int(sum(p.numel() for p in tr.net.parameters()))
    out["rss_after_build_gb"] = rss_gb()
    print(f"  built in {tr.build_seconds:.1f}s (graphs {sum(out['graph_seconds'].values()):.1f}s), "
          f"{out['n_parameters']:,} parameters; peak RSS {out['rss_after_build_gb']:.2f} GB")

    out["epochs"], out["eval"] = [], []
    for e in range(args.epochs):
        r = run_epoch(tr, e, args.steps)
        r["rss_gb"] = rss_gb()
        out["epochs"].append(r)
        lab = (f"extrapolated from {r['batches_run']} of {r['batches_full']} batches"
               if r["extrapolated"] else f"{r['batches_full']} batches")
        print(f"  epoch {e}: {r['seconds']:.2f}s, CPU {r['cpu_seconds']:.2f}s ({lab}); mean loss "
              f"{r['mean_loss']:.4f}; peak RSS {r['rss_gb']:.2f} GB; load {r['load']:.2f}")
        if not args.no_eval:
            t1, c1 = time.perf_counter(), time.process_time()
            ev = EpochEvaluator(tr.net, tr.data, cfg, e, tr.device)
            valid = ev("valid").metrics
            t_valid = time.perf_counter() - t1
            test = ev("test").metrics
            t_all = time.perf_counter() - t1
            c_all = time.process_time() - c1
            out["eval"].append({"valid": t_valid, "test": t_all - t_valid, "total": t_all, "cpu": c_all,
                                "valid_recall@20": valid["recall@20"], "test_recall@20": test["recall@20"],
                                "rss_gb": rss_gb()})
            print(f"  evaluation (valid + test): {t_all:.2f}s, CPU {c_all:.2f}s; valid R@20 "
                  f"{valid['recall@20']:.4f}; peak RSS {rss_gb():.2f} GB")
    out["peak_rss_gb"] = rss_gb()
    out["load_end"] = os.getloadavg()
    ep = [r["seconds"] for r in out["epochs"]]
    ours_epoch = float(np.median(ep))
    ours_eval = float(np.median([r["total"] for r in out["eval"]])) if out["eval"] else None
    ours_cpu = float(np.median([r["cpu_seconds"] for r in out["epochs"]]))
    ours_eval_cpu = float(np.median([r["cpu"] for r in out["eval"]])) if out["eval"] else None
    print(f"\nsummary ({args.dataset}, proxy features; load {out['load_start'][0]:.2f} -> "
          f"{out['load_end'][0]:.2f}):")
    print(f"  {'':22s}{'ours':>12s}{'reference':>12s}{'ratio':>8s}")
    if ref:
        est = ref.get("epoch_seconds_full_estimate") or ref.get("epoch_seconds") or []
        r_epoch = float(np.median(est)) if est else None
        r_eval = [x["total"] for x in ref.get("eval_seconds", []) if "total" in x]
        r_eval = float(np.median(r_eval)) if r_eval else None
        r_eval_cpu = [x["cpu_valid"] + x["cpu_test"] for x in ref.get("eval_seconds", []) if "cpu_test" in x]
        r_eval_cpu = float(np.median(r_eval_cpu)) if r_eval_cpu else None
        r_cpu = None
        if ref.get("epoch_cpu_seconds") and ref.get("epoch_seconds") and est:
            # CPU seconds of the span run, scaled to the epoch as its wall time was (CPU/wall of
            # the span × the extrapolated wall time; the first batch may differ from the others)
            r_cpu = float(np.median([c / w * e for c, w, e in
                                     zip(ref["epoch_cpu_seconds"], ref["epoch_seconds"], est)]))
        peaks = ref.get("peak_rss_mb", {})
        r_peak = max([v for v in [peaks.get("final"), *(peaks.get("after_each_epoch") or []),
                                  *(peaks.get("after_each_eval") or [])] if v] or [0]) / 1024
    else:
        r_epoch = r_eval = r_peak = r_cpu = r_eval_cpu = None

    def row(name, a, b, fmt="{:.2f}"):
        rs = fmt.format(b) if b is not None else "—"
        ratio = f"{b / a:.1f}x" if (a and b) else ""
        print(f"  {name:22s}{fmt.format(a) if a is not None else '—':>12s}{rs:>12s}{ratio:>8s}")
    row("s/epoch (wall)", ours_epoch, r_epoch)
    row("CPU s/epoch", ours_cpu, r_cpu)
    row("eval s (valid+test)", ours_eval, r_eval)
    row("eval CPU s", ours_eval_cpu, r_eval_cpu)
    row("peak RSS GB", out["peak_rss_gb"], r_peak)
    out["summary"] = {"s_per_epoch": ours_epoch, "cpu_s_per_epoch": ours_cpu, "eval_seconds": ours_eval,
                      "eval_cpu_seconds": ours_eval_cpu, "peak_rss_gb": out["peak_rss_gb"],
                      "ref_s_per_epoch": r_epoch, "ref_cpu_s_per_epoch": r_cpu, "ref_eval_seconds": r_eval,
                      "ref_eval_cpu_seconds": r_eval_cpu, "ref_peak_rss_gb": r_peak}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
