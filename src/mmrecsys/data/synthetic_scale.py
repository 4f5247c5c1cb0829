"""Synthetic catalogues at scale (millions of users and items), written in bounded memory.

The default synthetic generator (:mod:`.synthetic`) scores every user against every item, which
is fine for 1,000 items and impossible for 1,000,000. This one keeps the same ingredients
(items in latent clusters with a long-tailed popularity, users who like one to three clusters,
features that are noisy non-linear maps of the item attributes, MMRec's per-user split) but
samples interactions without a users × items matrix:

* each item belongs to one of ``n_clusters`` clusters and has a popularity p_i (log-normal);
* each user has an activity n_u (long-tailed, ≥ 5, scaled so the total is about
  ``n_interactions``) and one to three liked clusters; each of their picks is, with probability
  1 − ``explore``, an item of a liked cluster drawn ∝ p_i within it (inverse-CDF on the
  cluster's cumulative popularity), else an item of the whole catalogue drawn ∝ p_i; repeated
  picks of a user are dropped;
* features: z_i = centroid(cluster) + noise in R^k, and per modality x = tanh(z A) B + σ ε
  (``image_feat`` ReLU'd, non-negative; ``text_feat`` unit-length rows), computed and written
  ``item_chunk`` items at a time into ``.npy`` memory maps;
* the split is MMRec's per user (n < 10: n−2/1/1; else m = ⌊0.2 n⌋, v = ⌊m/2⌋, t = m − v).

Peak memory is O(n_interactions) integers (the rows themselves, a few hundred MB at 20 M) plus
one chunk of users or items, whatever the catalogue size.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

from .dataset import TEST, TRAIN, VALID

DEFAULT_WIDTHS = (("image_feat", 512, "relu"), ("text_feat", 384, "l2"))


def write_synthetic_scale(out_dir, n_users: int = 2_000_000, n_items: int = 1_000_000,
                          n_interactions: int = 20_000_000, seed: int = 0, *,
                          modalities=DEFAULT_WIDTHS, n_clusters: int = 2000,
                          n_attributes: int = 32, explore: float = 0.1,
                          user_chunk: int = 200_000, item_chunk: int = 50_000,
                          log=None) -> pathlib.Path:
    """Generate and write ``<out_dir>/<name>.inter`` and the feature files; returns the folder.

    ``log``: optional callable for progress lines (rows written, seconds).
    """
    if n_users < 10 or n_items < 20 or n_interactions < 5 * n_users:
        raise ValueError("need at least 10 users, 20 items and 5 interactions per user")
    log = log or (lambda *_: None)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    n_clusters = max(1, min(n_clusters, n_items // 50))  # clusters of ~50 items at least

    # items: cluster, popularity; per cluster, items sorted with cumulative popularity
    cluster_weight = rng.dirichlet(np.full(n_clusters, 2.0))
    item_cluster = rng.choice(n_clusters, size=n_items, p=cluster_weight).astype(np.int32)
    pop = np.exp(1.2 * rng.standard_normal(n_items)).astype(np.float64)
    order = np.argsort(item_cluster, kind="stable")
    starts = np.searchsorted(item_cluster[order], np.arange(n_clusters + 1))
    cum = np.cumsum(pop[order])                       # within-cluster CDF by differences
    global_cdf = np.cumsum(pop) / pop.sum()

    # users: activity scaled to the interaction budget, 1-3 liked clusters
    activity = 5 + rng.geometric(0.15, size=n_users) - 1
    activity = np.maximum(5, np.round(activity * (n_interactions / activity.sum()))).astype(np.int64)
    activity = np.minimum(activity, max(5, n_items // 10))
    n_liked = rng.integers(1, 4, size=n_users)
    liked = rng.choice(n_clusters, size=(n_users, 3), p=cluster_weight).astype(np.int64)

    inter = out / f"{out.name}.inter"
    rows_written = 0
    with open(inter, "w", encoding="utf-8") as fh:
        fh.write("userID\titemID\tx_label\n")
        for u0 in range(0, n_users, user_chunk):
            u1 = min(u0 + user_chunk, n_users)
            n = activity[u0:u1]
            users = np.repeat(np.arange(u0, u1), n)
            slot = rng.integers(0, n_liked[u0:u1].repeat(n))
            cl = liked[users, slot]
            lo, hi = starts[cl], starts[cl + 1]
            base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
            target = base + rng.random(len(users)) * (cum[hi - 1] - base)
            pos = np.clip(np.searchsorted(cum, target, side="left"), lo, hi - 1)
            items = order[pos]
            wild = (rng.random(len(users)) < explore) | (hi == lo)  # an empty cluster: anywhere
            items[wild] = np.minimum(np.searchsorted(global_cdf, rng.random(int(wild.sum()))),
                                     n_items - 1)
            # one row per (user, item), in random order within the user
            key = users * n_items + items
            _, first = np.unique(key, return_index=True)
            keep = np.sort(first)
            users, items = users[keep], items[keep]
            shuffle = np.lexsort((rng.random(len(users)), users))
            users, items = users[shuffle], items[shuffle]
            labels = _split(users)
            block = np.stack([users, items, labels], 1)
            np.savetxt(fh, block, fmt="%d", delimiter="\t")
            rows_written += len(block)
            log(f"users {u1:,}/{n_users:,}: {rows_written:,} rows, {time.perf_counter() - t0:.0f}s")

    # features in item chunks, written into memory maps
    k = n_attributes
    centroids = rng.standard_normal((n_clusters, k)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    maps = [(name, width, post, rng.standard_normal((k, 4 * k)).astype(np.float32) / np.sqrt(k),
             rng.standard_normal((4 * k, width)).astype(np.float32) / np.sqrt(4 * k))
            for name, width, post in modalities]
    files = {name: np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.float32,
                                             shape=(n_items, width))
             for name, width, *_ in maps}
    for i0 in range(0, n_items, item_chunk):
        i1 = min(i0 + item_chunk, n_items)
        z = centroids[item_cluster[i0:i1]] + 0.35 * rng.standard_normal((i1 - i0, k)).astype(
            np.float32) / np.sqrt(k)
        for name, width, post, a, b in maps:
            x = np.tanh(2.0 * z @ a) @ b
            x += 0.6 * rng.standard_normal(x.shape).astype(np.float32)
            if post == "relu":
                np.maximum(x, 0.0, out=x)
            else:
                x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
            files[name][i0:i1] = x
        log(f"features {i1:,}/{n_items:,} items, {time.perf_counter() - t0:.0f}s")
    for mm in files.values():
        mm.flush()
    del files
    return out


def _split(users: np.ndarray) -> np.ndarray:
    """MMRec's per-user split of rows grouped by user (already in random order within a user)."""
    change = np.r_[True, users[1:] != users[:-1]]
    starts = np.flatnonzero(change)
    counts = np.diff(np.r_[starts, len(users)])
    pos = np.arange(len(users)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    m = np.where(n < 10, 2, n // 5)
    v = np.where(n < 10, 1, m // 2)
    labels = np.full(len(users), TRAIN, dtype=np.int64)
    labels[(pos >= n - m) & (pos < n - m + v)] = VALID
    labels[pos >= n - m + v] = TEST
    labels[n < 3] = TRAIN  # too few distinct picks left to hold any out
    return labels
