"""MMHCL benchmark: accuracy (synthetic, item cold-start, real splits with proxy features),
speed and memory.

    flock /tmp/mmrecsys-heavy.lock python benchmarks/bench_mmhcl.py [--part PART ...]
        [--max-epochs N] [--clothing-steps 5]

Parts (default: all, in this order):
  synthetic  test Recall@20 of MMHCL vs LightGCN on the synthetic default (own defaults each,
             trained to early stopping);
  cold       the same models on an item cold-start split of the synthetic default (20 % of
             items, seed 0): test Recall@20 over cold items, with the chance level;
  speed      real Baby split, proxy features, Clothing preset: graph-building seconds (empty
             cache), seconds per training epoch (one full epoch), seconds per evaluation pass
             (valid + test), peak memory;
  memory     real mmhcl-clothing split, proxy features, Clothing preset: graph build and
             ``--clothing-steps`` training steps, peak memory (< 8 GB asserted), s/step;
  tiktok     real TikTok split, proxy features (image 128, audio 128, text 768):
             test Recall/Precision/NDCG@20 at early stopping (or after --max-epochs);
  clothing   real mmhcl-clothing split, proxy features (image 4096, text 1024): same.

Every result on real splits uses PROXY FEATURES (shared/tools/make_proxy_features.py) and is
labelled so; it is not comparable to the paper's numbers. Reference (official code, this CPU,
Baby + Clothing preset): graphs 520 s, 1,980 s/epoch, 109 s/eval pass, 8.7 GB.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import Timer, peak_rss_gb, proxy_dataset  # noqa: E402

from mmrecsys.data import load_dataset  # noqa: E402
from mmrecsys.data.cold import cold_split  # noqa: E402
from mmrecsys.data.synthetic import make_synthetic  # noqa: E402
from mmrecsys.evaluation import evaluate  # noqa: E402
from mmrecsys.train import fit  # noqa: E402

TIKTOK_MODALITIES = ["image_feat:128:1.0:relu", "audio_feat:128:1.0", "text_feat:768:2.0:l2"]
CLOTHING_MODALITIES = ["image_feat:4096:1.0:relu", "text_feat:1024:2.0:l2"]
REPORT: dict = {}


def say(*a):
    print(*a, flush=True)


def _fit(data, model, overrides, cache_dir):
    return fit(data, model, {"cache_dir": cache_dir, **overrides}, log=None)


def chance_recall(data, split, items, k=20):
    """Expected Recall@k over ``items`` of a uniformly random ranking of each user's candidates."""
    target = data.split(split)[:, items].tocsr()
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    cand = data.n_items - np.diff(data.train.indptr)[users]
    return float(np.mean(np.minimum(k, cand) / cand))


@torch.no_grad()
def cold_candidates_recall(model, data, split, items, k=20):
    """Recall@k when each user's candidates are the cold items only (strict cold-start ranking;
    the full-ranking figure compares cold items with every warm item too). Chance: k/|items|."""
    items = np.asarray(items, dtype=np.int64)
    model.eval()
    reps = model.representations()
    target = data.split(split)[:, items].tocsr()
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    rec = []
    for s in range(0, len(users), 1024):
        u = users[s:s + 1024]
        scores = model.score(torch.as_tensor(u), reps)[:, torch.as_tensor(items)]
        gt = torch.as_tensor(target[u].toarray() > 0)
        top = scores.topk(min(k, len(items)), dim=1).indices
        rec.append((gt.gather(1, top).sum(1) / gt.sum(1)).numpy())
    return float(np.concatenate(rec).mean())


def part_synthetic(args, cache):
    data = make_synthetic()
    out = {}
    for model in ("lightgcn", "mmhcl"):
        with Timer() as t:
            r = _fit(data, model, {"epochs": args.max_epochs} if args.max_epochs else {}, cache)
        out[model] = {"test_recall@20": r["test"]["recall@20"], "test_ndcg@20": r["test"]["ndcg@20"],
                      "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                      "seconds": round(t.seconds, 1)}
        say(f"[synthetic] {model:9s} test Recall@20 {r['test']['recall@20']:.4f} "
            f"NDCG@20 {r['test']['ndcg@20']:.4f} (best epoch {r['best_epoch']}, "
            f"{r['epochs_run']} epochs, {t.seconds:.0f}s)")
    REPORT["synthetic"] = out


def part_cold(args, cache):
    base = make_synthetic()
    data, cold = cold_split(base)        # the official protocol: share 0.2, seed 123
    rep = data.cold_split_report
    say(f"[cold] {rep['cold_items']} cold items of {rep['items_with_interactions']} "
        f"({rep['valid_items']} valid, {rep['test_items']} test), "
        f"{rep['rows_moved_from_train']} rows moved out of train, "
        f"{rep['users_without_train']} users without training rows")
    ch = chance_recall(data, "test", cold)
    out = {"split": rep, "chance_recall@20": ch}
    out["chance_recall@20_cold_candidates"] = min(20, len(cold)) / len(cold)
    runs = [("lightgcn", "lightgcn", {}), ("mmhcl", "mmhcl", {}),
            ("mmhcl (negatives_from=train_items)", "mmhcl", {"negatives_from": "train_items"})]
    for label, model, ov in runs:
        if args.max_epochs:
            ov = {**ov, "epochs": args.max_epochs}
        with Timer() as t:
            r = _fit(data, model, ov, cache)
        c = evaluate(r["model"], data, "test", topk=(20,), item_subset=cold)
        cc = cold_candidates_recall(r["model"], data, "test", cold)
        out[label] = {"test_recall@20_all": r["test"]["recall@20"],
                      "test_recall@20_cold": c.metrics["recall@20"],
                      "test_ndcg@20_cold": c.metrics["ndcg@20"], "cold_users": int(len(c.users)),
                      "test_recall@20_cold_candidates_only": cc,
                      "best_epoch": r["best_epoch"], "seconds": round(t.seconds, 1)}
        say(f"[cold] {label:34s} test Recall@20 all {r['test']['recall@20']:.4f} | cold items, "
            f"full ranking: Recall@20 {c.metrics['recall@20']:.4f} NDCG@20 "
            f"{c.metrics['ndcg@20']:.4f} ({len(c.users)} users; chance {ch:.4f}) | cold items "
            f"ranked among cold items only: Recall@20 {cc:.4f} (chance "
            f"{out['chance_recall@20_cold_candidates']:.4f})")
    REPORT["cold"] = out


def part_speed(args, cache):
    path = proxy_dataset("baby")
    data = load_dataset(path)
    with tempfile.TemporaryDirectory() as empty_cache:
        r = fit(data, "mmhcl", {"preset": "clothing", "epochs": 1, "eval_step": 1,
                                "cache_dir": empty_cache}, log=say)
    row = r["history"][0]
    out = {"dataset": "baby (proxy features: image 4096, text 384)", "preset": "clothing",
           "graph_build_seconds": r["model_build_seconds"], "epoch_seconds": row["train_seconds"],
           "eval_pass_seconds_valid_plus_test": row["eval_seconds"],
           "peak_rss_gb": round(peak_rss_gb(), 2),
           "reference": {"graph_build_seconds": 520, "epoch_seconds": 1980, "eval_pass_seconds": 109,
                         "peak_gb": 8.7}}
    out["epoch_speedup"] = round(1980 / row["train_seconds"], 2)
    say(f"[speed] Baby, proxy features, Clothing preset: graphs {r['model_build_seconds']:.1f}s "
        f"(ref 520s) | epoch {row['train_seconds']:.0f}s (ref 1,980s; {out['epoch_speedup']}x) | "
        f"eval pass {row['eval_seconds']:.1f}s (ref 109s) | peak {out['peak_rss_gb']} GB (ref 8.7)")
    REPORT["speed"] = out


def part_memory(args, cache):
    from mmrecsys.config import resolve_config
    from mmrecsys.models import get_model_class
    from mmrecsys.train import build_model
    from mmrecsys.train.sampler import make_sampler
    path = proxy_dataset("mmhcl-clothing", CLOTHING_MODALITIES)
    data = load_dataset(path)
    cls = get_model_class("mmhcl")
    with tempfile.TemporaryDirectory() as empty_cache:
        cfg = resolve_config(cls, data.name, None, {"cache_dir": empty_cache})
        cfg["model"] = "mmhcl"
        with Timer() as tb:
            net = build_model(data, cfg, "cpu")
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sampler = make_sampler(data, "users", cfg["batch_size"], "all_items", False)
    rng = np.random.default_rng(0)
    times = []
    for step, (u, p, n) in enumerate(sampler.epoch(rng)):
        if step == args.clothing_steps:
            break
        t0 = time.perf_counter()
        loss = sum(net.loss(torch.as_tensor(u), torch.as_tensor(p), torch.as_tensor(n)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    with Timer() as te:
        evaluate(net, data, "valid", topk=(20,))
        evaluate(net, data, "test", topk=(20,))
    peak = peak_rss_gb()
    s_step = float(np.median(times))
    out = {"dataset": "mmhcl-clothing (proxy features: image 4096, text 1024)",
           "users": data.n_users, "items": data.n_items, "graph_build_seconds": round(tb.seconds, 1),
           "steps": len(times), "seconds_per_step_median": round(s_step, 2),
           "steps_per_epoch": len(sampler), "epoch_seconds_estimate": round(s_step * len(sampler)),
           "eval_pass_seconds": round(te.seconds, 1), "peak_rss_gb": round(peak, 2),
           "under_8gb": peak < 8.0}
    say(f"[memory] Clothing ({data.n_users} users, {data.n_items} items), Clothing preset: graphs "
        f"{tb.seconds:.1f}s | {s_step:.2f} s/step over {len(times)} steps -> about "
        f"{out['epoch_seconds_estimate']} s/epoch ({len(sampler)} steps, estimate) | eval pass "
        f"{te.seconds:.1f}s | peak {peak:.2f} GB (< 8 GB: {peak < 8.0})")
    REPORT["memory"] = out
    assert peak < 8.0, f"peak memory {peak:.2f} GB exceeds 8 GB"


def _real(name, modalities, args, cache, label):
    path = proxy_dataset(name, modalities)
    data = load_dataset(path)
    ov = {"extra_metrics": ["ndcg_mmhcl"]}
    if args.max_epochs:
        ov["epochs"] = args.max_epochs
    with Timer() as t:
        r = fit(data, "mmhcl", {"cache_dir": cache, **ov}, log=say)
    te = r["test"]
    epochs = [h for h in r["history"] if "train_seconds" in h]
    s_epoch = float(np.median([h["train_seconds"] for h in epochs]))
    out = {"dataset": f"{name} (proxy features: {', '.join(modalities)})",
           "stopped_early": r["stopped_early"], "epochs_run": r["epochs_run"],
           "best_epoch": r["best_epoch"], "test": {k: te[k] for k in
                                                   ("recall@20", "precision@20", "ndcg@20",
                                                    "ndcg_mmhcl@20")},
           "seconds_per_epoch": round(s_epoch, 1), "seconds": round(t.seconds)}
    state = "at early stopping" if r["stopped_early"] else f"after {r['epochs_run']} epochs (bounded)"
    say(f"[{label}] PROXY FEATURES, {state}, best epoch {r['best_epoch']}: test Recall@20 "
        f"{te['recall@20']:.4f} Precision@20 {te['precision@20']:.4f} NDCG@20 {te['ndcg@20']:.4f} "
        f"(MMHCL NDCG@20 {te['ndcg_mmhcl@20']:.4f}) | {s_epoch:.0f} s/epoch")
    REPORT[label] = out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", action="append",
                    choices=["synthetic", "cold", "speed", "memory", "tiktok", "clothing"])
    ap.add_argument("--max-epochs", type=int, default=0,
                    help="bound the number of epochs of every training run (0 = the model's 1000)")
    ap.add_argument("--clothing-steps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    parts = args.part or ["synthetic", "cold", "speed", "memory", "tiktok", "clothing"]
    cache = tempfile.mkdtemp(prefix="mmhcl-bench-cache-")
    torch.set_num_threads(torch.get_num_threads())
    for p in parts:
        if p == "tiktok":
            _real("tiktok", TIKTOK_MODALITIES, args, cache, "tiktok")
        elif p == "clothing":
            _real("mmhcl-clothing", CLOTHING_MODALITIES, args, cache, "clothing")
        else:
            globals()[f"part_{p}"](args, cache)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(REPORT, fh, indent=2, default=str)
    return REPORT


if __name__ == "__main__":
    main()
