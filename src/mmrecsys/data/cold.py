"""Item cold-start splits: a seeded share of items keeps no training interaction.

``cold_split(data, share, seed)`` picks ``round(share · #items with interactions)`` items and
moves *all* their interactions (train, valid and test) into validation and test, half each
per item (seeded; an odd count gives the extra row to valid or test at random). Other items
keep their rows. Scores for cold items can then only come from content (features), which is
what the cold-item report of the evaluator measures (``cold_items.txt`` in the folder).

Users left without any training row would drop out of evaluation (protocol §1.1), so items
are taken in a seeded random order and an item is *skipped* while making it cold would remove
the last training row of one of its users; skipped items are used only if too few others
remain. The number of users lost this way is reported (normally 0).
"""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .dataset import TEST, TRAIN, VALID, Dataset, dataset_to_arrays, write_dataset


def cold_split(data: Dataset, share: float = 0.2, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """Return (new dataset, sorted cold item ids). See the module docstring.

    The new dataset carries ``cold_items`` (the ids) and ``cold_split_report`` (counts:
    cold items, moved rows, users who lost all training rows and were dropped).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share={share}: the share of cold items must be between 0 and 1")
    rng = np.random.default_rng(seed)
    users, items, labels = dataset_to_arrays(data)
    candidates = np.unique(items)
    n_cold = int(round(share * len(candidates)))
    if n_cold < 1:
        raise ValueError(f"share={share} of {len(candidates)} items with interactions is less "
                         f"than one item; raise --share")

    # choose cold items: seeded order, skip items that would leave a user without training rows
    train_csc = data.train.tocsc()
    user_train = np.diff(data.train.indptr).astype(np.int64)
    order = rng.permutation(candidates)
    chosen, deferred = [], []
    for it in order:
        us = train_csc.indices[train_csc.indptr[it]:train_csc.indptr[it + 1]]
        if len(us) == 0 or user_train[us].min() >= 2:
            user_train[us] -= 1
            chosen.append(it)
            if len(chosen) == n_cold:
                break
        else:
            deferred.append(it)
    for it in deferred:
        if len(chosen) == n_cold:
            break
        us = train_csc.indices[train_csc.indptr[it]:train_csc.indptr[it + 1]]
        user_train[us] -= 1
        chosen.append(it)
    if len(chosen) < n_cold:  # ran out of the permutation before reaching n_cold (cannot happen)
        raise RuntimeError("cold_split: not enough items")
    cold = np.sort(np.asarray(chosen, dtype=np.int64))

    # move every row of a cold item to valid/test, half each per item
    is_cold_item = np.zeros(data.n_items, dtype=bool)
    is_cold_item[cold] = True
    moved = np.flatnonzero(is_cold_item[items])
    key = rng.random(len(moved))
    o = np.lexsort((key, items[moved]))
    moved = moved[o]
    it_m = items[moved]
    starts = np.r_[0, np.flatnonzero(np.diff(it_m)) + 1]
    counts = np.diff(np.r_[starts, len(it_m)])
    rank = np.arange(len(it_m)) - np.repeat(starts, counts)
    extra = (counts % 2 == 1) & (rng.random(len(counts)) < 0.5)   # odd row goes to valid
    n_valid = counts // 2 + extra
    new_labels = labels.copy()
    new_labels[moved] = np.where(rank < np.repeat(n_valid, counts), VALID, TEST)

    # protocol §1.1: held-out rows of users with no training row are not evaluated
    had_train = np.diff(data.train.indptr) > 0
    has_train = np.zeros(data.n_users, dtype=bool)
    has_train[users[new_labels == TRAIN]] = True
    lost = np.flatnonzero(had_train & ~has_train)
    keep = (new_labels == TRAIN) | has_train[users]
    dropped_rows = int((~keep).sum())
    if len(lost):
        warnings.warn(f"cold_split: {len(lost)} users lost all their training rows and drop out "
                      f"of evaluation ({dropped_rows} held-out rows removed)", stacklevel=2)
    new = Dataset.from_arrays(users[keep], items[keep], new_labels[keep], data.n_users,
                              data.n_items, data.features, name=data.name)
    new.cold_items = cold
    new.cold_split_report = {
        "cold_items": int(len(cold)), "items_with_interactions": int(len(candidates)),
        "share": share, "seed": seed, "moved_rows": int(len(moved)),
        "moved_train_rows": int((labels[moved] == TRAIN).sum()),
        "users_lost": int(len(lost)), "rows_dropped": dropped_rows,
        "items_skipped_to_keep_users": int(len(deferred)),
    }
    return new, cold


def write_cold_split(data: Dataset, cold_items, out_dir, name: str | None = None) -> pathlib.Path:
    """Write the split in the standard format plus ``cold_items.txt`` (one id per line)."""
    from ..io import atomic_write_text
    out = pathlib.Path(out_dir)
    users, items, labels = dataset_to_arrays(data)
    path = write_dataset(out, users, items, labels, data.features, name=name or data.name)
    atomic_write_text(out / "cold_items.txt",
                      "".join(f"{int(i)}\n" for i in np.sort(np.asarray(cold_items))))
    return path
