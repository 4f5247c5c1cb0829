"""Convert a dataset in REARM's own layout (read by ``utils/data_loader.py``) into the standard
format.

REARM's layout (``MrShouxingMa/REARM``, ``data/<dataset>/``)::

    train.npy valid.npy test.npy     int64 arrays of shape (2, n): row 0 user ids, row 1 item ids
    image_feat.npy text_feat.npy     float arrays (n_items, width), row i = item i (optional)

Ids are 0-based; U = max user id + 1 and I = max item id + 1 over the three splits (as the
code). The output is ``<name>.inter`` (userID, itemID, x_label with 0 = train, 1 = valid,
2 = test) plus every ``*_feat.npy`` as float32, ids and splits unchanged.
"""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .dataset import DataError, TEST, TRAIN, VALID, load_features, stack_splits, write_dataset

SPLIT_FILES = (("train.npy", TRAIN), ("valid.npy", VALID), ("test.npy", TEST))


def read_split_npy(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of one REARM split file, validated."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: file missing. REARM's layout has train.npy, valid.npy and "
                        f"test.npy side by side, each an int array of shape (2, n) (row 0 user "
                        f"ids, row 1 item ids); add the missing file.")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: holds pickled Python objects, not a plain int array. "
                            f"Re-save it with numpy.save(path, np.asarray(pairs, dtype=np.int64)) "
                            f"as shape (2, n).") from None
        raise DataError(f"{path}: cannot be read as a .npy array ({e}).") from None
    except Exception as e:  # noqa: BLE001 (truncated or foreign file)
        raise DataError(f"{path}: cannot be read as a .npy array ({e}). Re-save it with "
                        f"numpy.save as an int64 array of shape (2, n).") from None
    if arr.ndim != 2 or arr.shape[0] != 2:
        hint = " (it looks transposed: save arr.T)" if arr.ndim == 2 and arr.shape[1] == 2 else ""
        raise DataError(f"{path}: expected shape (2, n) (row 0 user ids, row 1 item ids), got "
                        f"{arr.shape}{hint}.")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise DataError(f"{path}: ids must be integers, found dtype {arr.dtype}. Save the "
                            f"pairs as an int64 array.")
    arr = arr.astype(np.int64)
    if arr.size and (arr < 0).any():
        r, c = np.argwhere(arr < 0)[0]
        raise DataError(f"{path}: column {c} holds a negative {'user' if r == 0 else 'item'} id "
                        f"{arr[r, c]}; ids must be 0-based non-negative integers.")
    return arr[0].copy(), arr[1].copy()


def import_rearm(src_dir, out_dir, name: str | None = None) -> pathlib.Path:
    """Convert REARM's ``train/valid/test.npy`` and ``*_feat.npy`` in ``src_dir`` into ``out_dir``.

    ``name`` defaults to the output folder's name. Returns the path of the written ``.inter``.
    Duplicate pairs and pairs in two splits are errors (REARM's splits have neither).
    """
    src = pathlib.Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory. Pass REARM's dataset folder (e.g. "
                        f"REARM/data/baby) holding train.npy, valid.npy, test.npy.")
    users, items, labels = stack_splits(read_split_npy, src, SPLIT_FILES)
    if not (labels == TRAIN).any():
        raise DataError(f"{src / 'train.npy'}: holds no interaction (shape (2, 0)).")
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    key = users * n_items + items
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        where = [fname for fname, lab in SPLIT_FILES
                 if ((key == dup) & (labels == lab)).any()]
        raise DataError(f"{src}: the pair (user {dup // n_items}, item {dup % n_items}) occurs "
                        f"{int(counts[counts > 1][0])} times (in {', '.join(where)}); "
                        f"{int((counts > 1).sum())} pairs repeat in all. Each pair must occur once "
                        f"in exactly one split: remove the repeats.")
    feats = load_features(src, n_items)
    if not feats:
        warnings.warn(f"{src}: no *_feat.npy feature file found (REARM expects image_feat.npy "
                      f"and text_feat.npy); the dataset is written without modalities.",
                      stacklevel=2)
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[labels == TRAIN]] = True
    if not has_train.all():
        warnings.warn(f"{src}: {int((~has_train).sum())} user ids have no training pair; the "
                      f"standard loader drops their held-out rows, as MMRec does.", stacklevel=2)
    out = pathlib.Path(out_dir)
    return write_dataset(out, users, items, labels, feats, name=name or out.name)
