"""The embedded default dataset: seeded, generated, shaped like the real benchmarks.

Generative story (all draws from one ``numpy`` generator seeded by ``seed``):

* every item has a latent attribute vector z_i ∈ R^k: a cluster centroid (its category) plus
  item-specific variation, and a popularity p_i drawn from a heavy-tailed (log-normal) law;
* every user has preferences over attributes: a mixture of one to three category centroids plus
  noise, and an activity level (number of interactions, at least 5, long-tailed);
* a user picks items without replacement with probability ∝ exp(w_uᵀ z_i / T) · p_i
  (Gumbel top-n sampling), so taste and popularity both matter;
* each modality m is a different noisy non-linear map of z: x_i^m = post(tanh(z_i A_m) B_m + σ_m ε);
  ``image_feat`` is non-negative (ReLU, as CNN features), ``text_feat`` has unit-length rows
  (as sentence embeddings);
* the per-user split follows MMRec (protocol §2): n < 10 gives n−2 / 1 / 1, otherwise
  m = ⌊0.2 n⌋, v = ⌊m/2⌋ go to validation and m − v to test.

The long tail leaves a share of items with 0–2 training interactions, whose only reliable
signal is their content — the case multimodal models are for.
"""
from __future__ import annotations

import numpy as np

from .dataset import TEST, TRAIN, VALID, Dataset

DEFAULT_MODALITIES = (("image_feat", 256, 0.6, "relu"), ("text_feat", 128, 0.9, "l2"))


def make_synthetic(n_users: int = 2000, n_items: int = 1000, seed: int = 0, *,
                   n_attributes: int = 16, n_clusters: int = 20, mean_interactions: float = 9.0,
                   popularity_sigma: float = 1.2, temperature: float = 0.5,
                   modalities=DEFAULT_MODALITIES, name: str = "synthetic") -> Dataset:
    """Generate the synthetic dataset (see module docstring). Returns a :class:`Dataset`.

    The cluster labels of the items are kept as ``dataset.item_clusters`` (for tests).
    """
    if n_users < 10 or n_items < 20:
        raise ValueError("make_synthetic needs at least 10 users and 20 items")
    rng = np.random.default_rng(seed)
    k = n_attributes
    centroids = rng.standard_normal((n_clusters, k))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cluster_pop = rng.dirichlet(np.full(n_clusters, 2.0))
    item_cluster = rng.choice(n_clusters, size=n_items, p=cluster_pop)
    z = centroids[item_cluster] + 0.35 * rng.standard_normal((n_items, k)) / np.sqrt(k)
    log_pop = popularity_sigma * rng.standard_normal(n_items)

    # users: mixture of 1-3 liked clusters
    n_liked = rng.integers(1, 4, size=n_users)
    liked = rng.choice(n_clusters, size=(n_users, 3), p=cluster_pop)
    mask = np.arange(3)[None, :] < n_liked[:, None]
    w = (centroids[liked] * mask[..., None]).sum(1) / n_liked[:, None]
    w = w + 0.2 * rng.standard_normal((n_users, k)) / np.sqrt(k)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    activity = 5 + rng.geometric(1.0 / max(mean_interactions - 4.0, 1.0), size=n_users) - 1
    activity = np.minimum(activity, max(5, n_items // 4))

    users, items = [], []
    chunk = 2048
    for start in range(0, n_users, chunk):  # bounded memory: (chunk, n_items) logits at a time
        stop = min(start + chunk, n_users)
        logits = (w[start:stop] @ z.T) / temperature + log_pop[None, :]
        logits = logits + rng.gumbel(size=logits.shape)  # Gumbel top-n == sampling w/o replacement
        order = np.argsort(-logits, axis=1)
        n = activity[start:stop]
        take = np.arange(order.shape[1])[None, :] < n[:, None]
        users.append(np.repeat(np.arange(start, stop), n))
        items.append(order[take])  # row-major: each user's picks, best first
    users = np.concatenate(users)
    items = np.concatenate(items)
    shuffle = np.lexsort((rng.random(len(users)), users))  # random order within each user
    users, items = users[shuffle], items[shuffle]
    labels = _mmrec_split_labels(users, rng)

    feats = {}
    for mod_name, width, noise, post in modalities:
        a = rng.standard_normal((k, 4 * k)) / np.sqrt(k)
        b = rng.standard_normal((4 * k, width)) / np.sqrt(4 * k)
        signal = np.tanh(2.0 * z @ a) @ b
        signal /= signal.std() + 1e-12
        x = signal + noise * rng.standard_normal(signal.shape)
        if post == "relu":
            x = np.maximum(x, 0.0)
        elif post == "l2":
            x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        feats[mod_name] = x.astype(np.float32)
    data = Dataset.from_arrays(users, items, labels, n_users, n_items, feats, name=name)
    data.item_clusters = item_cluster
    return data


def _mmrec_split_labels(users: np.ndarray, rng) -> np.ndarray:
    """Per-user random split of protocol §2 (rows of a user are already in random order)."""
    n_users = int(users.max()) + 1
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


def write_synthetic(out_dir, n_users: int = 2000, n_items: int = 1000, seed: int = 0):
    """Generate and write the dataset in the standard format; returns the folder path."""
    import pathlib

    from .dataset import dataset_to_arrays, write_dataset
    data = make_synthetic(n_users, n_items, seed)
    out = pathlib.Path(out_dir)
    u, i, l = dataset_to_arrays(data)
    write_dataset(out, u, i, l, data.features, name=out.name)
    return out
