"""Scale: a million-item catalogue on one machine (graphs, training steps, full ranking).

    python benchmarks/bench_scale.py [--users 2000000 --items 1000000 --interactions 20000000]
        [--steps 20] [--eval-users 20000] [--knn-backend faiss --knn-index hnsw]
        [--models lightgcn lgmrec mmhcl] [--ann ivf|hnsw]

1. writes the dataset with ``mmrecsys data synth --interactions`` (bounded memory; image 512-d,
   text 384-d) under the benchmark cache, once;
2. per model, in its own process (so each peak RSS is its own): graph construction (seconds,
   peak RSS), ``--steps`` training steps (s/step, extrapolated to an epoch and labelled), and
   full-ranking evaluation of ``--eval-users`` users over all items (extrapolated to every
   held-out user, labelled); ``--steps 0`` skips training (MMHCL: its all-node contrastive
   loss over millions of users is out of reach, but its graphs and ranking are not);
   ``--ann ivf|hnsw`` then serves the sample users from an ANN index over the item
   representations (``TrainedModel.use_ann``): build seconds, per-user query seconds against
   exact ranking, and recall@10 against exact;
3. ``--infonce-probe`` instead times MMHCL's all-node contrastive loss (forward + backward,
   every node a negative of every other: cost ∝ N²) at two sizes and extrapolates it to the
   users and items of the catalogue, per step and per epoch (labelled): the part of an MMHCL
   step that grows with the square of the catalogue;
4. REARM is not run: its per-user modality tables do not fit (the estimate is printed).

Every figure is printed as one line; extrapolations say so.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def stage(args) -> dict:
    """One model in this process: graphs, steps, evaluation."""
    import numpy as np
    import torch

    import mmrecsys as mr
    from mmrecsys.config import run_config
    from mmrecsys.evaluation import rank_users
    from mmrecsys.train.sampler import make_sampler
    from mmrecsys.train.trainer import _optimizer, build_model
    from common import peak_rss_gb as rss_gib
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        data = mr.load_dataset(args.data)
        load_s = time.perf_counter() - t
    out = {"model": args.model, "load_s": round(load_s, 1), "rss_after_load_gib": round(rss_gib(), 2)}
    over = {"cache_dir": args.cache, "knn_backend": args.knn_backend, "knn_index": args.knn_index}
    if args.model == "mmhcl":
        over["preset"] = "none"
    cfg = run_config(args.model, data, None, over)
    t = time.perf_counter()
    net = build_model(data, cfg, "cpu")
    out["graphs_s"] = round(time.perf_counter() - t, 1)
    out["graph_seconds"] = {k: round(v, 1) for k, v in getattr(net, "graph_seconds", {}).items()}
    out["rss_after_graphs_gib"] = round(rss_gib(), 2)
    opt, _ = _optimizer(net, cfg)
    sampler = make_sampler(data, cfg["sampler"], cfg["batch_size"], cfg["negatives_from"], False)
    rng = np.random.default_rng(0)
    it = sampler.epoch(rng)
    times = []
    for _ in range(args.steps):
        users, pos, neg = next(it)
        t = time.perf_counter()
        terms = net.loss(torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg))
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    if times:
        s_step = float(np.median(times[1:] if len(times) > 1 else times))
        out.update(s_per_step=round(s_step, 3), steps_per_epoch=len(sampler),
                   s_per_epoch_extrapolated=round(s_step * len(sampler), 0),
                   rss_after_training_gib=round(rss_gib(), 2))
    heldout = np.flatnonzero(np.diff(data.test.indptr) > 0)
    sample = np.random.default_rng(1).choice(heldout, min(args.eval_users, len(heldout)),
                                             replace=False)
    t = time.perf_counter()
    rank_users(net, data, sample, 50, "train", chunk_size=4096)
    ev = time.perf_counter() - t
    out.update(eval_users=len(sample), eval_s=round(ev, 1),
               eval_all_users_s_extrapolated=round(ev * len(heldout) / len(sample), 0),
               heldout_users=int(len(heldout)), peak_rss_gib=round(rss_gib(), 2))
    if args.ann != "none":
        from mmrecsys.api import TrainedModel
        served = TrainedModel(net, data, cfg, {"best_epoch": 0}, [])
        t = time.perf_counter()
        served.use_ann(args.ann)
        out["ann_build_s"] = round(time.perf_counter() - t, 1)
        users = sample[:2000]
        t = time.perf_counter()
        served.recommend(users, k=10)
        out["ann_query_ms_per_user"] = round(1000 * (time.perf_counter() - t) / len(users), 2)
        t = time.perf_counter()
        out[f"ann_{args.ann}_recall@10"] = round(served.ann_recall(10, users=users), 4)
        out["ann_recall_s"] = round(time.perf_counter() - t, 1)
        out["exact_ms_per_user"] = round(1000 * ev / len(sample), 2)
        out["peak_rss_gib"] = round(rss_gib(), 2)
    return out


def infonce_probe(users: int, items: int, train_rows: int, batch_size: int = 1024, d: int = 64,
                  threads: int = 2) -> str:
    """Seconds of MMHCL's all-node InfoNCE (forward + backward) at two sizes, fitted as c·N²
    and extrapolated to ``users`` and ``items`` (one u2u and one i2i term per step; MMHCL runs
    train_rows // batch_size + 1 steps per epoch)."""
    import torch
    from mmrecsys.models.mmhcl import all_node_infonce
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    fits = []
    for n in (8192, 16384):
        z1 = torch.randn(n, d, generator=gen, requires_grad=True)
        z2 = torch.randn(n, d, generator=gen, requires_grad=True)
        t = time.perf_counter()
        all_node_infonce(z1, z2, 0.6).backward()
        sec = time.perf_counter() - t
        fits.append((n, sec))
    c = fits[-1][1] / fits[-1][0] ** 2
    step = c * (users ** 2 + items ** 2)
    steps = train_rows // batch_size + 1
    return (f"MMHCL all-node InfoNCE, forward + backward (measured): "
            + ", ".join(f"N={n}: {sec:.2f}s" for n, sec in fits)
            + f" (ratio {fits[1][1] / fits[0][1]:.2f} for 2x N; N² predicts 4). EXTRAPOLATED as "
              f"c·N² to {users:,} users + {items:,} items: {step:,.0f} s per step, x {steps:,} "
              f"steps (users sampler, batch {batch_size}) = {step * steps / 86400:,.0f} days "
              f"per epoch, for this term alone")


def rearm_estimate(users: int, items: int, widths) -> str:
    d = sum(widths)
    table = users * d * 4
    total = 4 * table + 4 * items * d * 4
    fits = total < 0.8 * 24 * 2**30
    return (f"REARM: not run. It learns a (users × {d}) table of user modality features (the "
            f"users' interest features, one row per user per modality): {table / 2**30:.1f} GiB as "
            f"parameters, ×4 with the gradient and AdamW's two moments = {4 * table / 2**30:.1f} GiB, "
            f"plus {4 * items * d * 4 / 2**30:.1f} GiB for the item tables likewise and the "
            f"user-user similarity graph over {users:,} users; "
            + ("within this machine's 24 GiB: train it with bench_speed or mmrecsys train."
               if fits else "more than this machine's 24 GiB."))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--interactions", type=int, default=20_000_000)
    ap.add_argument("--models", nargs="+", default=["lightgcn", "lgmrec", "mmhcl"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-users", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--knn-backend", default="faiss")
    ap.add_argument("--knn-index", default="hnsw")
    ap.add_argument("--ann", default="none", choices=["none", "ivf", "hnsw", "flat"],
                    help="also serve the sample users from an ANN index over the item "
                         "representations and report its recall@10 against exact ranking")
    ap.add_argument("--infonce-probe", action="store_true",
                    help="only time MMHCL's all-node InfoNCE at two sizes and extrapolate")
    ap.add_argument("--stage", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(args)), flush=True)
        return
    from common import WORK
    name = f"scale-{args.users}-{args.items}-{args.interactions}"
    data = WORK / name
    if args.infonce_probe:
        train_rows = int(0.8 * args.interactions)    # data synth's default split, if not written
        if (data / f"{name}.inter").exists():
            import mmrecsys as mr
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train_rows = int(mr.load_dataset(data).train.nnz)
        print(infonce_probe(args.users, args.items, train_rows, threads=args.threads), flush=True)
        return
    if not (data / f"{name}.inter").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmrecsys.cli", "data", "synth", "--out", str(data),
                        "--users", str(args.users), "--items", str(args.items),
                        "--interactions", str(args.interactions)], check=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
        print(f"generate: {time.perf_counter() - t:.0f}s ({data})", flush=True)
    cache = WORK / f"{name}-cache"
    for m in args.models:
        cmd = [sys.executable, __file__, "--stage", "--model", m, "--data", str(data),
               "--cache", str(cache), "--steps", str(args.steps), "--eval-users",
               str(args.eval_users), "--threads", str(args.threads), "--knn-backend",
               args.knn_backend, "--knn-index", args.knn_index, "--ann", args.ann]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            tail = (res.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{m}: failed after {time.perf_counter() - t:.0f}s ({tail})", flush=True)
        else:
            print(res.stdout.strip().splitlines()[-1], flush=True)
    print(rearm_estimate(args.users, args.items, (512, 384)))


if __name__ == "__main__":
    main()
