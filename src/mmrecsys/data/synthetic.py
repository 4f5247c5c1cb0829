"""The embedded default dataset: seeded, generated, shaped like the real benchmarks.

Items are sparse because they were rarely *shown*, not because nobody would like them: a share
of the catalogue is **new** (default 15 %), and the interactions they would have under full
exposure are almost all held out. Their held-out rows follow taste, so the true scores rank
them well; their training rows are 0–2, so a purely collaborative model can hardly rank them;
their content features come from the same attributes as every other item's, so a model that
reads features can.

Generative story (all draws from one ``numpy`` generator seeded by ``seed``):

* every item has a latent attribute vector z_i ∈ R^k: a cluster centroid (its category, kept as
  ``item_clusters``) plus item-specific variation. Old items have a popularity p_i drawn from
  a heavy-tailed law, log p_i ~ N(0, σ²) (σ = ``popularity_sigma`` = 1). A seeded random
  ``round(new_item_share · n_items)`` items are new (``new_items``) and have no popularity of
  their own: log p_i = ``new_item_log_popularity`` (0, the median old item's);
* every user u has preferences w_u over attributes: a mixture of one to three category
  centroids plus noise (unit length), and an activity level n_u ≥ 5 (long-tailed, at most a
  quarter of the old items);
* the true affinity is s_ui = w_uᵀ z_i / T + log p_i, with T = ``temperature`` = 0.2 so that
  taste outweighs popularity (with T = 0.5 popular old items crowd new ones out of any top-20,
  even the true scores'). Users choose by Gumbel top-n sampling (= sampling without
  replacement with probability ∝ exp(s_ui)) on g_ui = s_ui + Gumbel noise: user u takes the
  n_u old items of highest g_ui and, *under full exposure*, every new item with g_ui at least
  the n_u-th of those (a new item they would have chosen over one of their own picks). So taste
  decides new items' interactions, taste and popularity old items';
* each modality is a noisy non-linear map of its own view of z: z is rotated at random, and
  ``image_feat`` sees the first ⌈2k/3⌉ coordinates, ``text_feat`` the last ⌈2k/3⌉ (a third
  shared: some information in each, complementary); of view v_i, x_i = post(standardised
  tanh(2 v_i A) B + σ_m ε) with random A, B. ``image_feat`` (256-d) is ReLU'd, hence
  non-negative, as CNN features; ``text_feat`` (128-d) has unit-length rows, as sentence
  embeddings. New and old items go through the same maps.

Split (labels 0 train, 1 validation, 2 test):

* old-item rows follow MMRec's per-user rule (``enoche/MMRec`` ``preprocessing/1splitting.ipynb``)
  on the user's old-item rows alone,
  in random order: n < 10 gives n−2 / 1 / 1, otherwise m = ⌊0.2 n⌋, v = ⌊m/2⌋ go to validation
  and m − v to test (n = n_u ≥ 5, so every user keeps ≥ 3 training rows);
* new-item rows are split per item: item i keeps c_i ~ Uniform{0, 1, 2} of its rows (random
  ones; all of them if it has fewer) in training, and the rest go to validation and test, half
  each (an odd count gives the extra row to one of them at random).

So a user's validation/test rows are its MMRec share of old-item rows plus its held-out
new-item rows. Old items in the popularity tail still have few interactions (a long tail, as in
real data); new items have ≤ 2 training rows by construction.

The generator's truth is kept on the dataset (in memory only) as ``synthetic_truth``;
:func:`true_scores` and :func:`oracle_model` turn it into the oracle's scores (for tests and
benchmarks).
"""
from __future__ import annotations

import math

import numpy as np

from .dataset import TEST, TRAIN, VALID, Dataset

# (name, width, noise σ, post-processing)
DEFAULT_MODALITIES = (("image_feat", 256, 0.6, "relu"), ("text_feat", 128, 0.9, "l2"))


def make_synthetic(n_users: int = 2000, n_items: int = 1000, seed: int = 0, *,
                   new_item_share: float = 0.15, new_item_log_popularity: float = 0.0,
                   n_attributes: int = 16, n_clusters: int = 20, mean_interactions: float = 9.0,
                   popularity_sigma: float = 1.0, temperature: float = 0.2,
                   modalities=DEFAULT_MODALITIES, name: str = "synthetic") -> Dataset:
    """Generate the synthetic dataset (see module docstring). Returns a :class:`Dataset`.

    It carries ``new_items`` (sorted ids), ``item_clusters`` (each item's latent cluster) and
    ``synthetic_truth`` (the generator's user preferences, item attributes, item
    log-popularities and temperature; see :func:`true_scores`).
    """
    if n_users < 10 or n_items < 20:
        raise ValueError("make_synthetic needs at least 10 users and 20 items")
    if not 0.0 <= new_item_share < 1.0:
        raise ValueError(f"new_item_share={new_item_share}: must be in [0, 1)")
    rng = np.random.default_rng(seed)
    k = n_attributes
    centroids = rng.standard_normal((n_clusters, k))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cluster_pop = rng.dirichlet(np.full(n_clusters, 2.0))
    item_cluster = rng.choice(n_clusters, size=n_items, p=cluster_pop)
    z = centroids[item_cluster] + 0.35 * rng.standard_normal((n_items, k)) / np.sqrt(k)
    log_pop = popularity_sigma * rng.standard_normal(n_items)
    n_new = int(round(new_item_share * n_items))
    new_items = np.sort(rng.choice(n_items, size=n_new, replace=False)).astype(np.int64)
    is_new = np.zeros(n_items, dtype=bool)
    is_new[new_items] = True
    log_pop[is_new] = new_item_log_popularity
    old_items = np.flatnonzero(~is_new)

    # users: mixture of 1-3 liked clusters
    n_liked = rng.integers(1, 4, size=n_users)
    liked = rng.choice(n_clusters, size=(n_users, 3), p=cluster_pop)
    mask = np.arange(3)[None, :] < n_liked[:, None]
    w = (centroids[liked] * mask[..., None]).sum(1) / n_liked[:, None]
    w = w + 0.2 * rng.standard_normal((n_users, k)) / np.sqrt(k)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    activity = 5 + rng.geometric(1.0 / max(mean_interactions - 4.0, 1.0), size=n_users) - 1
    activity = np.minimum(activity, max(5, len(old_items) // 4))

    old_u, old_i, new_u, new_i = [], [], [], []
    chunk = 2048
    for start in range(0, n_users, chunk):  # bounded memory: (chunk, n_items) scores at a time
        stop = min(start + chunk, n_users)
        g = (w[start:stop] @ z.T) / temperature + log_pop[None, :]
        g = g + rng.gumbel(size=g.shape)  # Gumbel top-n == sampling without replacement
        g_old = g[:, old_items]
        order = np.argsort(-g_old, axis=1)
        n = activity[start:stop]
        take = np.arange(order.shape[1])[None, :] < n[:, None]
        old_u.append(np.repeat(np.arange(start, stop), n))
        old_i.append(old_items[order[take]])
        # full exposure: new items the user would have chosen over its n-th old pick
        rows = np.arange(stop - start)
        threshold = g_old[rows, order[rows, n - 1]][:, None]
        r, c = np.nonzero(g[:, new_items] >= threshold)
        new_u.append(start + r)
        new_i.append(new_items[c])
    old_u, old_i = np.concatenate(old_u), np.concatenate(old_i)
    new_u, new_i = np.concatenate(new_u).astype(np.int64), np.concatenate(new_i)

    shuffle = np.lexsort((rng.random(len(old_u)), old_u))  # random order within each user
    old_u, old_i = old_u[shuffle], old_i[shuffle]
    old_labels = _mmrec_split_labels(old_u, n_users)
    new_labels = _new_item_split_labels(new_i, n_items, rng)

    feats = _features(z, modalities, rng)
    data = Dataset.from_arrays(np.concatenate([old_u, new_u]), np.concatenate([old_i, new_i]),
                               np.concatenate([old_labels, new_labels]), n_users, n_items, feats,
                               name=name)
    data.new_items = new_items
    data.item_clusters = item_cluster
    data.synthetic_truth = {"user_pref": w.astype(np.float32), "item_attr": z.astype(np.float32),
                            "item_log_pop": log_pop.astype(np.float32),
                            "temperature": float(temperature)}
    return data


def _mmrec_split_labels(users: np.ndarray, n_users: int) -> np.ndarray:
    """MMRec's per-user split (``preprocessing/1splitting.ipynb``; ``users`` sorted, each user's
    rows in random order)."""
    counts = np.bincount(users, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(users)) - starts[users]  # position of the row within its user
    n = counts[users]
    m = np.where(n < 10, 2, n // 5)
    v = np.where(n < 10, 1, m // 2)
    labels = np.full(len(users), TRAIN, dtype=np.int64)
    labels[(pos >= n - m) & (pos < n - m + v)] = VALID
    labels[pos >= n - m + v] = TEST
    return labels


def _new_item_split_labels(items: np.ndarray, n_items: int, rng) -> np.ndarray:
    """Per new item: c ~ U{0,1,2} random rows to train, the others half to valid, half to test."""
    labels = np.full(len(items), TRAIN, dtype=np.int64)
    if len(items) == 0:
        return labels
    keep_train = rng.integers(0, 3, size=n_items)  # drawn for every id: simple and seeded
    coin = rng.random(n_items) < 0.5
    o = np.lexsort((rng.random(len(items)), items))  # random order within each item
    it = items[o]
    counts = np.bincount(it, minlength=n_items)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(it)) - starts[it]
    c = np.minimum(keep_train[it], counts[it])
    held = counts[it] - c
    n_valid = held // 2 + ((held % 2 == 1) & coin[it])
    lab = np.where(rank < c, TRAIN, np.where(rank - c < n_valid, VALID, TEST))
    labels[o] = lab
    return labels


def _features(z: np.ndarray, modalities, rng) -> dict[str, np.ndarray]:
    """Each modality: a noisy non-linear map of its own (overlapping) view of z."""
    n_items, k = z.shape
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    zr = z @ q  # a random rotation: a view is not a plain subset of the attributes
    span = min(k, math.ceil(2 * k / 3))
    n_mod = len(modalities)
    feats = {}
    for j, (mod_name, width, noise, post) in enumerate(modalities):
        lo = 0 if n_mod == 1 else round(j * (k - span) / (n_mod - 1))
        view = zr[:, lo:lo + span]
        a = rng.standard_normal((span, 4 * k)) / np.sqrt(span)
        b = rng.standard_normal((4 * k, width)) / np.sqrt(4 * k)
        signal = np.tanh(2.0 * view @ a) @ b
        signal /= signal.std() + 1e-12
        x = signal + noise * rng.standard_normal(signal.shape)
        if post == "relu":
            x = np.maximum(x, 0.0)
        elif post == "l2":
            x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        feats[mod_name] = x.astype(np.float32)
    return feats


# ---------------------------------------------------------------------- the oracle
def true_scores(data: Dataset, users=None) -> np.ndarray:
    """The generator's true affinity s_ui = w_uᵀ z_i / T + log p_i, shape (len(users), n_items).

    Only for data made by :func:`make_synthetic` in this process (``synthetic_truth`` is not
    written to disk).
    """
    t = _truth(data)
    w = t["user_pref"] if users is None else t["user_pref"][np.asarray(users, dtype=np.int64)]
    return (w @ t["item_attr"].T) / t["temperature"] + t["item_log_pop"][None, :]


def oracle_model(data: Dataset):
    """A model-like ``torch.nn.Module`` scoring by :func:`true_scores`, for ``evaluate``."""
    import torch

    t = _truth(data)

    class TrueScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.as_tensor(t["user_pref"] / t["temperature"]))
            self.register_buffer("z", torch.as_tensor(t["item_attr"]))
            self.register_buffer("pop", torch.as_tensor(t["item_log_pop"]))

        def representations(self):
            return None

        def score(self, users, reps=None):
            return self.w[users] @ self.z.T + self.pop

    return TrueScores()


def _truth(data: Dataset) -> dict:
    t = getattr(data, "synthetic_truth", None)
    if t is None:
        raise ValueError("this dataset carries no generator truth: use make_synthetic's result "
                         "(the truth is not written to disk)")
    return t


def write_synthetic(out_dir, n_users: int = 2000, n_items: int = 1000, seed: int = 0, **options):
    """Generate and write the dataset in the standard format, plus ``new_items.txt`` (one id per
    line) when there are new items; returns the folder path. ``options`` go to
    :func:`make_synthetic`."""
    import pathlib

    from ..io import atomic_write_text
    from .dataset import dataset_to_arrays, write_dataset
    data = make_synthetic(n_users, n_items, seed, **options)
    out = pathlib.Path(out_dir)
    u, i, l = dataset_to_arrays(data)
    write_dataset(out, u, i, l, data.features, name=out.name)
    if len(data.new_items):
        atomic_write_text(out / "new_items.txt", "".join(f"{int(x)}\n" for x in data.new_items))
    elif (out / "new_items.txt").exists():  # a stale list from an earlier write
        (out / "new_items.txt").unlink()
    return out
