"""Item cold-start split: the official protocol of LATTICE (``data/cold_start.py``), used by MMHCL.

The official script works on the 5-core ``user-item-dict.json`` (every interaction of every user,
whatever its train/valid/test label) and does::

    np.random.seed(123)
    n = number of distinct items
    drawn = np.random.choice(n, int(0.2 * n), replace=False).tolist()
    test items  = drawn[:len(drawn) // 2]      # first half of the drawn list
    valid items = drawn[len(drawn) // 2:]      # second half

and for every user: train = their items not drawn, valid = their valid items, test = their test
items. So a *cold* item keeps no training row at all (all its rows go to valid or test, by item),
and a *warm* item has all its rows in train, including the rows that were valid or test before.

:func:`cold_split` reproduces that split exactly: the draw is
``np.random.RandomState(seed).choice(n, int(share * n), replace=False)``, which is the same
stream as ``np.random.seed(seed); np.random.choice(...)`` (NumPy's legacy Mersenne-Twister
generator); ``share=0.2, seed=123`` are the official values. ``n`` counts the distinct items
among all rows of the dataset. A folder is read with :func:`load_all_rows`, which keeps every
row of the ``.inter`` file (``load_dataset`` would drop held-out rows of users without a training
row, but the labels are being replaced: such rows may well become training rows).

Item ids. The script draws raw ids from ``range(n)``: it assumes the items are numbered 0..n-1,
which holds for the 5-core files (and for every dataset in the standard format whose ids are
contiguous). When the ids with interactions are *not* 0..n-1 (gaps), drawing raw ids would make
fewer than ``int(share * n)`` items cold (a drawn gap is no item) and could never pick an id
``>= n``; instead a drawn number ``p`` is taken as the ``p``-th smallest item id with
interactions. This is the same split as the script's whenever the ids are contiguous, and
otherwise still makes exactly ``int(share * n)`` real items cold; a warning says so.

Users whose items are all cold have no training row left. Their valid/test rows are kept in the
split (the official split keeps them). Note that loading the written folder with
:func:`~mmrecsys.data.load_dataset` drops held-out rows of users without a training row, with a
warning, as MMRec's loader does; the report counts these users.

Evaluation. Validation and test contain only rows of cold items, so the run's main validation and
test metrics *are* the cold-start metrics (early stopping included). As for any split, each user's
ranking is over all items minus their training items (validation items are masked at test time
only with ``mask_valid_at_test``); warm items stay candidates, as in LATTICE/MMHCL, so a model
must rank cold items, scored only from their content, above warm ones.
"""
from __future__ import annotations

import math
import numbers
import pathlib
import warnings

import numpy as np

from .dataset import (TEST, TRAIN, VALID, DataError, Dataset, dataset_to_arrays, find_inter_file,
                      load_features, read_inter, write_dataset)

OFFICIAL_SHARE = 0.2
OFFICIAL_SEED = 123


def load_all_rows(directory, *, with_features: bool = True) -> Dataset:
    """Every (user, item) row of a dataset folder, whatever its label: the input of a cold split.

    The file is validated as by ``load_dataset`` (integer ids, labels 0/1/2) and duplicate pairs
    are dropped with a warning (keeping the first), but no row is dropped for its label.
    """
    directory = pathlib.Path(directory)
    inter = find_inter_file(directory)
    users, items, labels = read_inter(inter)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    _, first = np.unique(users * n_items + items, return_index=True)
    if len(first) < len(users):
        warnings.warn(f"{inter}: dropped {len(users) - len(first)} duplicate (user, item) rows "
                      f"(kept the first occurrence of each pair).", stacklevel=2)
        first = np.sort(first)
        users, items, labels = users[first], items[first], labels[first]
    feats = load_features(directory, n_items) if with_features else {}
    return Dataset.from_arrays(users, items, labels, n_users, n_items, feats, name=inter.stem,
                               path=directory)


def _check_args(share, seed) -> tuple[float, int]:
    if isinstance(share, bool) or not isinstance(share, numbers.Real):
        raise ValueError(f"share={share!r}: the share of cold items must be a number between 0 "
                         f"and 1 (exclusive), e.g. 0.2")
    share = float(share)
    if not (math.isfinite(share) and 0.0 < share < 1.0):
        raise ValueError(f"share={share}: the share of cold items must be between 0 and 1 "
                         f"(exclusive), e.g. 0.2")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed={seed!r}: the seed must be an integer in 0..2**32-1")
    seed = int(seed)
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed={seed}: the seed must be an integer in 0..2**32-1 (NumPy's legacy "
                         f"generator)")
    return share, seed


def draw_cold_items(item_ids, share: float = OFFICIAL_SHARE,
                    seed: int = OFFICIAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(valid items, test items) drawn as the official script does, from the ids of ``item_ids``.

    ``item_ids``: the item id of every row (or the distinct ids); ``n`` = their distinct count.
    Both arrays are in drawn order (test = first half of the drawn list, valid = second half).
    """
    share, seed = _check_args(share, seed)
    distinct = np.unique(np.asarray(item_ids, dtype=np.int64))
    n = len(distinct)
    k = int(share * n)                      # as the script: int(0.2 * len(iu))
    if k < 2:
        raise DataError(f"share={share} of {n} items with interactions is {k} item(s); a cold "
                        f"split needs at least 2 (one validation, one test item): raise the share")
    drawn = np.random.RandomState(seed).choice(n, k, replace=False)
    if n and distinct[-1] != n - 1:
        warnings.warn(f"cold split: the {n} item ids with interactions are not 0..{n - 1} (largest "
                      f"id {int(distinct[-1])}); the official script would draw raw ids from "
                      f"range({n}), here drawn number p is the p-th smallest item id instead",
                      stacklevel=3)
    ids = distinct[drawn]
    return ids[k // 2:], ids[:k // 2]


def cold_split(data: Dataset, share: float = OFFICIAL_SHARE,
               seed: int = OFFICIAL_SEED) -> tuple[Dataset, np.ndarray]:
    """Return (new dataset, sorted cold item ids) of the official item cold-start split.

    Every row of ``data`` (train, valid and test) is relabelled: rows of test items → test, of
    valid items → valid, all others → train. See the module docstring. The new dataset keeps
    ``n_users``, ``n_items``, the features and the name; it carries ``cold_items`` (valid + test
    items, sorted) and ``cold_split_report`` (a dict of counts).

    Raises ``ValueError`` for a share outside (0, 1) or a bad seed, :class:`DataError` when the
    data has too few items for one validation and one test item.
    """
    share, seed = _check_args(share, seed)
    users, items, labels = dataset_to_arrays(data)
    if len(items) == 0:
        raise DataError(f"{data.name}: no interactions to split")
    valid_items, test_items = draw_cold_items(items, share, seed)

    role = np.full(data.n_items, TRAIN, dtype=np.int64)
    role[valid_items] = VALID
    role[test_items] = TEST
    new_labels = role[items]

    has_train = np.zeros(data.n_users, dtype=bool)
    has_train[users[new_labels == TRAIN]] = True
    no_train_rows = ~has_train[users]            # (all held out: such users have no train row)
    cold = np.sort(np.concatenate([valid_items, test_items]))
    new = Dataset.from_arrays(users, items, new_labels, data.n_users, data.n_items, data.features,
                              name=data.name)
    new.cold_items = cold
    new.cold_split_report = {
        "share": share, "seed": seed,
        "items_with_interactions": int(len(np.unique(items))),
        "cold_items": int(len(cold)),
        "valid_items": int(len(valid_items)),
        "test_items": int(len(test_items)),
        "train_rows": int((new_labels == TRAIN).sum()),
        "valid_rows": int((new_labels == VALID).sum()),
        "test_rows": int((new_labels == TEST).sum()),
        "rows_moved_from_train": int(((labels == TRAIN) & (new_labels != TRAIN)).sum()),
        "rows_moved_to_train": int(((labels != TRAIN) & (new_labels == TRAIN)).sum()),
        "users_without_train": int(len(np.unique(users[no_train_rows]))),
        "heldout_rows_of_users_without_train": int(no_train_rows.sum()),
    }
    return new, cold


def write_cold_split(data: Dataset, cold_items, out_dir, name: str | None = None) -> pathlib.Path:
    """Write the split in the standard format plus ``cold_items.txt`` (one id per line, sorted).

    Every row is written, those of users without a training row included.
    """
    from ..io import atomic_write_text
    out = pathlib.Path(out_dir)
    users, items, labels = dataset_to_arrays(data)
    path = write_dataset(out, users, items, labels, data.features, name=name or data.name)
    atomic_write_text(out / "cold_items.txt",
                      "".join(f"{int(i)}\n" for i in np.sort(np.asarray(cold_items))))
    return path
