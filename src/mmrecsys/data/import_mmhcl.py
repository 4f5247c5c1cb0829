"""Convert a dataset in MMHCL's own layout (read by ``codes/utility/load_data.py``) into the
standard format.

MMHCL's layout (``Xu107/MMHCL``)::

    <dataset>/                      e.g. Tiktok/, Clothing/, Sports/
        image_feat.npy text_feat.npy [audio_feat.npy]    one row per item id
        5-core/ train.json val.json test.json            {"<user id>": [item ids], ...}

``SRC`` may be the dataset folder (the ``5-core`` subfolder is used; another ``*-core`` folder
if it is the only one) or the folder holding the three JSON files itself (features are then
looked for there and in its parent). The output is ``<name>.inter`` (userID, itemID, x_label
with 0 = train, 1 = valid, 2 = test) plus every ``*_feat.npy`` copied as float32 — the same
conversion as the authors' ``log/convert2MMRec/convert.ipynb``, so ids and splits are kept.
"""
from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np

from .dataset import (DataError, TEST, TRAIN, VALID, heldout_without_train, read_feature_file,
                      stack_splits, write_dataset)

SPLIT_FILES = (("train.json", TRAIN), ("val.json", VALID), ("test.json", TEST))


def _find_json_dir(src: pathlib.Path) -> pathlib.Path:
    if (src / "train.json").exists():
        return src
    cores = sorted(p for p in src.glob("*-core") if (p / "train.json").exists())
    if (src / "5-core" / "train.json").exists():
        return src / "5-core"
    if len(cores) == 1:
        return cores[0]
    if len(cores) > 1:
        raise DataError(f"{src}: several split folders ({', '.join(p.name for p in cores)}) and no "
                        f"5-core; pass the one to import, e.g. {cores[0]}.")
    raise DataError(f"{src}: no MMHCL split files found. Expected {src}/5-core/train.json (or "
                    f"train.json, val.json and test.json directly in {src}), each mapping a user "
                    f"id string to a list of item ids, e.g. {{\"0\": [885, 1387]}}.")


def read_split_json(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of one MMHCL split file, validated."""
    if not path.exists():
        raise DataError(f"{path}: file missing. MMHCL's layout has train.json, val.json and "
                        f"test.json side by side; add the missing one (it may map users to []).")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                        f"Fix the file or re-export it from MMHCL's preprocessing.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: the top level must be an object mapping user id strings to "
                        f"lists of item ids, e.g. {{\"0\": [885, 1387]}}; found a "
                        f"{type(obj).__name__}.")
    users, items = [], []
    for key, lst in obj.items():
        try:
            u = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{path}: key {key!r} is not an integer user id. Keys must be "
                            f"non-negative integers written as strings, e.g. \"0\".") from None
        if u < 0:
            raise DataError(f"{path}: user id {u} is negative; ids must be 0-based.")
        if not isinstance(lst, list):
            raise DataError(f"{path}: user {key!r} maps to a {type(lst).__name__}, expected a list "
                            f"of item ids (possibly empty).")
        for it in lst:
            if isinstance(it, bool) or not isinstance(it, (int, float)) or int(it) != it or it < 0:
                raise DataError(f"{path}: user {key!r} has item {it!r}, which is not a "
                                f"non-negative integer item id.")
        users.extend([u] * len(lst))
        items.extend(int(i) for i in lst)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def _read_features(dirs: list[pathlib.Path], n_items: int) -> dict[str, np.ndarray]:
    """Every ``*_feat.npy`` of the folders (the first one of a name wins), validated."""
    feats: dict[str, np.ndarray] = {}
    for d in dirs:
        for f in sorted(d.glob("*_feat.npy")):
            feats.setdefault(f.name[: -len(".npy")], read_feature_file(f, n_items))
    return feats


def import_mmhcl(src_dir, out_dir, name: str | None = None) -> pathlib.Path:
    """Convert MMHCL's JSON splits and feature files in ``src_dir`` into ``out_dir``.

    ``n_items`` is 1 + the largest item id of any split (as MMHCL); ``name`` defaults to the
    output folder's name. Returns the path of the written ``.inter`` file. Users with held-out
    items but no training item are written as they are (MMHCL evaluates them; the standard
    loader drops them with a warning, as MMRec's ``filter_out_cod_start_users``).
    """
    src = pathlib.Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory. Pass MMHCL's dataset folder (holding "
                        f"5-core/train.json and the *_feat.npy files).")
    jdir = _find_json_dir(src)
    users, items, labels = stack_splits(read_split_json, jdir, SPLIT_FILES)
    if not (labels == TRAIN).any():
        raise DataError(f"{jdir / 'train.json'}: holds no training interaction (every list is "
                        f"empty).")
    n_items = int(items.max()) + 1
    feature_dirs = [src, src.parent] if jdir == src else [src, jdir]
    feats = _read_features(feature_dirs, n_items)
    if not feats:
        warnings.warn(f"{src}: no *_feat.npy feature file found (looked in "
                      f"{', '.join(str(d) for d in feature_dirs)}); the dataset is written "
                      f"without modalities.", stacklevel=2)
    n_users_code = int(users[labels == TRAIN].max()) + 1
    cold = heldout_without_train(users, labels)
    if cold.any():
        warnings.warn(f"{jdir}: {len(np.unique(users[cold]))} users have validation/test items "
                      f"but no training item; the standard loader drops their "
                      f"{int(cold.sum())} held-out rows (MMHCL's own code evaluates them).",
                      stacklevel=2)
    beyond = users >= n_users_code
    if beyond.any():
        warnings.warn(f"{jdir}: {len(np.unique(users[beyond]))} user ids are beyond MMHCL's "
                      f"n_users = {n_users_code} (1 + the largest user with training items).",
                      stacklevel=2)
    out = pathlib.Path(out_dir)
    return write_dataset(out, users, items, labels, feats, name=name or out.name)
