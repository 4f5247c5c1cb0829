"""Loading and validating a dataset in the standard (MMRec) format.

A dataset directory holds ``<name>.inter`` (tab-separated, header row, columns
``userID``, ``itemID``, ``x_label`` required; ``rating`` and ``timestamp`` optional)
and any number of ``<modality>.npy`` feature files beside it, one row per item id.
MMRec names them ``image_feat.npy`` and ``text_feat.npy``; every ``*_feat.npy`` (and
any other 2-d ``.npy`` with one row per item) is read as a modality.

Splits are held as CSR matrices of shape (n_users, n_items) with binary values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import DataError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")


@dataclass
class Dataset:
    """Interactions as CSR splits plus item modality features.

    Attributes:
        name: dataset name (the stem of the ``.inter`` file).
        n_users, n_items: id ranges (max id + 1 over all splits, as MMRec's ``RecDataset``).
        train, valid, test: ``scipy.sparse.csr_matrix`` (n_users, n_items), binary float32.
        features: modality name -> float32 array (n_items, width), insertion-ordered.
        path: the directory it was loaded from (None for in-memory data).
    """

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    path: pathlib.Path | None = None
    #: items of an item cold-start split (``cold_items.txt`` beside the .inter file), if any
    cold_items: np.ndarray | None = None
    #: new items, rarely shown, most of their interactions held out (``new_items.txt``), if any
    new_items: np.ndarray | None = None
    #: (users, items, labels) of the validation/test rows of users with no training row, which
    #: loading leaves out of ``valid``/``test`` (MMRec); :meth:`with_users_without_train` puts
    #: them back (MMHCL evaluates them)
    heldout_of_users_without_train: tuple | None = field(default=None, repr=False)
    #: synthetic data only: each item's latent cluster (``mmrecsys.data.synthetic``)
    item_clusters: np.ndarray | None = field(default=None, repr=False)
    #: synthetic data only: the generating factors, for oracle scores in tests
    synthetic_truth: dict | None = field(default=None, repr=False)
    #: after ``mmrecsys.data.cold.cold_split``: counts of the split (items, rows moved)
    cold_split_report: dict | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_arrays(cls, users, items, labels, n_users=None, n_items=None,
                    features=None, name="data", path=None) -> "Dataset":
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        n_users = int(users.max()) + 1 if n_users is None else int(n_users)
        n_items = int(items.max()) + 1 if n_items is None else int(n_items)
        mats = []
        for lab in (TRAIN, VALID, TEST):
            sel = labels == lab
            mats.append(_binary_csr(users[sel], items[sel], n_users, n_items))
        return cls(name, n_users, n_items, *mats, features=dict(features or {}), path=path)

    # ------------------------------------------------------------------ variants
    def select_modalities(self, names) -> "Dataset":
        """A view with only the modalities ``names``, in that order."""
        names = [str(n) for n in names]
        missing = [n for n in names if n not in self.features]
        if missing:
            raise DataError(f"modalities {missing} not in dataset {self.name!r}; it has "
                            f"{self.modalities or 'none'} (files <name>.npy beside the .inter file)")
        if len(set(names)) != len(names):
            raise DataError(f"modalities {names}: a modality is named twice")
        return dataclasses.replace(self, features={n: self.features[n] for n in names})

    def with_users_without_train(self) -> "Dataset":
        """The dataset with the held-out rows of users without training rows restored."""
        rows = self.heldout_of_users_without_train
        if rows is None or len(rows[0]) == 0:
            return self
        users, items, labels = rows
        mats = {}
        for name, lab in (("valid", VALID), ("test", TEST)):
            sel = labels == lab
            extra = _binary_csr(users[sel], items[sel], self.n_users, self.n_items)
            m = (self.split(name) + extra).tocsr()
            m.data[:] = 1.0
            m.sort_indices()
            mats[name] = m
        return dataclasses.replace(self, heldout_of_users_without_train=None, **mats)

    # ------------------------------------------------------------------ views
    def split(self, which: str) -> sp.csr_matrix:
        if which not in SPLIT_NAMES:
            raise ValueError(f"unknown split {which!r}: use train, valid or test")
        return getattr(self, which)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of the training interactions, row-major order."""
        coo = self.train.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)

    def item_train_degree(self) -> np.ndarray:
        return np.asarray(self.train.sum(axis=0)).ravel().astype(np.int64)

    def user_train_degree(self) -> np.ndarray:
        return np.diff(self.train.indptr).astype(np.int64)

    def fingerprint(self, with_features: bool = True) -> str:
        """Content hash of the training split (and features): the key of graph caches."""
        h = hashlib.sha256()
        h.update(np.array([self.n_users, self.n_items], dtype=np.int64).tobytes())
        h.update(self.train.indptr.astype(np.int64).tobytes())
        h.update(self.train.indices.astype(np.int64).tobytes())
        if with_features:
            for name, x in self.features.items():
                h.update(name.encode())
                h.update(np.ascontiguousarray(x).tobytes())
        return h.hexdigest()[:16]

    def stats(self) -> dict:
        out = {"name": self.name, "users": self.n_users, "items": self.n_items}
        total = 0
        for s in ("train", "valid", "test"):
            m = self.split(s)
            out[f"{s}_interactions"] = int(m.nnz)
            out[f"{s}_users"] = int((np.diff(m.indptr) > 0).sum())
            total += m.nnz
        out["interactions"] = total
        out["sparsity"] = 1.0 - total / float(self.n_users * self.n_items)
        out["modalities"] = {k: int(v.shape[1]) for k, v in self.features.items()}
        return out

    def __repr__(self) -> str:
        mods = ", ".join(f"{k}:{v.shape[1]}" for k, v in self.features.items()) or "none"
        return (f"Dataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
                f"train={self.train.nnz}, valid={self.valid.nnz}, test={self.test.nnz}, "
                f"modalities=[{mods}])")


def _binary_csr(users, items, n_users, n_items) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                      shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


# ---------------------------------------------------------------------- loading
def find_inter_file(directory: pathlib.Path) -> pathlib.Path:
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory. Pass the folder that holds <name>.inter "
                        f"and its *_feat.npy files (or 'synthetic').")
    named = directory / f"{directory.name}.inter"
    if named.exists():
        return named
    found = sorted(directory.glob("*.inter"))
    if not found:
        raise DataError(f"{directory}: no .inter file found. A dataset folder needs "
                        f"<name>.inter with columns userID, itemID, x_label (tab-separated).")
    if len(found) > 1:
        raise DataError(f"{directory}: several .inter files ({', '.join(p.name for p in found)}); "
                        f"keep one per folder or name it {directory.name}.inter.")
    return found[0]


#: ids larger than this many times the number of rows make an implausibly sparse id space
#: (a dense 0-based index is expected); small files get at least this much room
MAX_ID_PER_ROW = 10
MIN_ID_ROOM = 1000


def _read_text(path: pathlib.Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark; anything else is refused."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {raw[e.start]:#04x}). "
                        f"Re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None


def _int_column(path, col: np.ndarray, name: str, line_no: np.ndarray) -> np.ndarray:
    """A column of integer strings as int64; the first bad row (its line number in the file,
    ``line_no[i]``) is named in the error."""
    try:
        return col.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(col), dtype=np.int64)
    for i, v in enumerate(col):
        v = str(v)
        try:
            x = int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if not math.isfinite(f) or f != round(f) or abs(f) >= 2 ** 53:
                raise DataError(f"{path}: line {line_no[i]}, column {name}: {v!r} is not an integer. "
                                f"Ids and x_label must be integers.") from None
            x = int(f)
        if not -2 ** 63 <= x < 2 ** 63:
            raise DataError(f"{path}: line {line_no[i]}, column {name}: {v} is beyond the 64-bit "
                            f"integer range. Ids must be 0-based indices (re-index the file).")
        out[i] = x
    return out


def read_inter(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read userID, itemID, x_label columns of an .inter file, validating each."""
    path = pathlib.Path(path)
    text = _read_text(path)
    header_line, _, body = text.partition("\n")
    header = header_line.rstrip("\r").split("\t")
    header = [h.split(":")[0].strip() for h in header]  # RecBole writes 'userID:token'
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: header row lacks column(s) {', '.join(missing)} "
                        f"(found {', '.join(map(repr, header))}). The first line must name the "
                        f"tab-separated columns, including userID, itemID and x_label.")
    cols = [header.index(c) for c in REQUIRED_COLUMNS]
    fast = _read_inter_fast(body, cols, len(header))
    if fast is not None:
        return fast
    numbered = [(i + 2, ln) for i, ln in enumerate(body.splitlines()) if ln.strip()]
    if not numbered:
        raise DataError(f"{path}: no interaction rows after the header.")
    line_no = np.array([n for n, _ in numbered], dtype=np.int64)
    rows = [ln.split("\t") for _, ln in numbered]
    width = len(header)
    arr = np.empty((len(rows), 3), dtype=np.int64)
    for j, c in enumerate(cols):
        try:
            col = np.array([r[c] for r in rows])
        except IndexError:
            bad = next(i for i, r in enumerate(rows) if len(r) <= c)
            raise DataError(f"{path}: line {line_no[bad]} has {len(rows[bad])} fields, the header "
                            f"has {width}. Fix or remove that line.") from None
        arr[:, j] = _int_column(path, col, REQUIRED_COLUMNS[j], line_no)
    users, items, labels = arr[:, 0], arr[:, 1], arr[:, 2]
    for name, v in (("userID", users), ("itemID", items)):
        if (v < 0).any():
            bad = int(np.flatnonzero(v < 0)[0])
            raise DataError(f"{path}: line {line_no[bad]}, column {name}: negative id {v[bad]}. Ids "
                            f"must be 0-based non-negative integers (re-index the file).")
        room = max(MAX_ID_PER_ROW * len(v), MIN_ID_ROOM)
        if (v >= room).any():
            bad = int(np.argmax(v))
            raise DataError(f"{path}: line {line_no[bad]}, column {name}: id {v[bad]:,} would make "
                            f"{v[bad] + 1:,} {name[:-2]}s for {len(v):,} rows; ids must be dense "
                            f"0-based indices (at most {room - 1:,} here). Re-index the file.")
    bad_lab = ~np.isin(labels, (TRAIN, VALID, TEST))
    if bad_lab.any():
        bad = int(np.flatnonzero(bad_lab)[0])
        raise DataError(f"{path}: line {line_no[bad]}, column x_label: {labels[bad]} is not a split "
                        f"label. Use 0 (train), 1 (validation) or 2 (test).")
    return users, items, labels


def _read_inter_fast(body: str, cols: list[int], width: int):
    """NumPy's C parser for a well-formed file (millions of rows in seconds); None when any
    row needs the checked path above (which then names the line and the fix)."""
    import io
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. an empty body
            arr = np.loadtxt(io.StringIO(body), delimiter="\t", dtype=np.int64, ndmin=2,
                             comments=None)
    except (ValueError, UserWarning, OverflowError):
        return None
    if arr.shape[0] == 0 or arr.shape[1] != width:
        return None
    users, items, labels = (np.ascontiguousarray(arr[:, c]) for c in cols)
    for v in (users, items):
        if (v < 0).any() or (v >= max(MAX_ID_PER_ROW * len(v), MIN_ID_ROOM)).any():
            return None
    if not np.isin(labels, (TRAIN, VALID, TEST)).all():
        return None
    return users, items, labels


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def heldout_without_train(users: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mask of validation/test rows whose user has no training row."""
    has_train = np.zeros(int(users.max()) + 1, dtype=bool)
    has_train[users[labels == TRAIN]] = True
    return (labels != TRAIN) & ~has_train[users]


def stack_splits(read, directory: pathlib.Path, files) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels) from split files: ``read(path) -> (users, items)`` for each
    ``(file name, label)`` of ``files``."""
    us, its, labs = [], [], []
    for fname, lab in files:
        u, i = read(pathlib.Path(directory) / fname)
        us.append(u)
        its.append(i)
        labs.append(np.full(len(u), lab, dtype=np.int64))
    return np.concatenate(us), np.concatenate(its), np.concatenate(labs)


def clean_interactions(users, items, labels, source="interactions", *, return_dropped=False):
    """Drop duplicate (user, item) pairs and held-out rows of users with no training row.

    Both are warned about (MMRec's ``filter_out_cod_start_users`` option). A duplicate keeps its
    first occurrence in file order. ``return_dropped`` also returns the (users, items, labels)
    of the held-out rows dropped for want of training rows.
    """
    n_items = int(items.max()) + 1
    key = users * n_items + items
    _, first = np.unique(key, return_index=True)
    if len(first) < len(key):
        keep = np.zeros(len(key), dtype=bool)
        keep[first] = True
        warnings.warn(f"{source}: dropped {len(key) - len(first)} duplicate (user, item) rows "
                      f"(kept the first occurrence of each pair).", stacklevel=2)
        users, items, labels = users[keep], items[keep], labels[keep]
    cold = heldout_without_train(users, labels)
    dropped = (users[cold], items[cold], labels[cold])
    if cold.any():
        warnings.warn(f"{source}: left {int(cold.sum())} validation/test rows of "
                      f"{len(np.unique(users[cold]))} users with no training row out of "
                      f"evaluation (MMRec's filter_out_cod_start_users; set "
                      f"keep_users_without_train: true to evaluate them, as MMHCL).", stacklevel=2)
        users, items, labels = users[~cold], items[~cold], labels[~cold]
    if return_dropped:
        return users, items, labels, dropped
    return users, items, labels


def read_feature_file(path, n_items: int) -> np.ndarray:
    """Load one modality file and validate it: 2-d, one row per item, finite values."""
    f = pathlib.Path(path)
    try:
        x = np.load(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 (any unreadable file)
        raise DataError(f"{f}: cannot be read as a .npy array ({e}). Re-save it with numpy.save "
                        f"as a 2-d float array.") from None
    if x.dtype.kind not in "fiub":
        kind = {"c": "complex numbers", "U": "strings", "S": "byte strings",
                "V": "structured records", "M": "dates", "m": "time deltas"}.get(x.dtype.kind,
                                                                                str(x.dtype))
        raise DataError(f"{f}: holds {kind} (dtype {x.dtype}); features must be real numbers. "
                        f"Re-save it with numpy.save as a 2-d float32 array.")
    if x.ndim != 2:
        raise DataError(f"{f}: expected a 2-d array (one row per item), got shape {x.shape}.")
    if x.shape[1] == 0:
        raise DataError(f"{f}: has shape {x.shape}: zero feature columns. Remove the file or "
                        f"write the modality's features (one row of width ≥ 1 per item).")
    if x.shape[0] != n_items:
        raise DataError(f"{f}: has {x.shape[0]} rows but the dataset has {n_items} items "
                        f"(max itemID + 1). Row i must hold the features of item i: add the "
                        f"missing rows or remove the extra ones.")
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{f}: row {r} (item {r}), column {c} is {x[r, c]}; {int(bad.any(1).sum())} "
                        f"rows hold NaN or infinite values. Replace them (e.g. by the mean "
                        f"feature vector, as MMRec does for missing images).")
    return x


def load_features(directory: pathlib.Path, n_items: int) -> dict[str, np.ndarray]:
    """Every ``*.npy`` beside the .inter file whose name ends in ``_feat`` is a modality."""
    return {f.name[:-len(".npy")]: read_feature_file(f, n_items)
            for f in sorted(pathlib.Path(directory).glob("*_feat.npy"))}


def load_dataset(directory, *, with_features: bool = True,
                 keep_users_without_train: bool = False) -> Dataset:
    """Load and validate a dataset folder; raise :class:`DataError` with the fix on bad input.

    Held-out rows of users with no training row are left out of ``valid``/``test`` (MMRec) and
    kept aside; ``keep_users_without_train=True`` evaluates them (MMHCL's population), as does
    the configuration key of the same name.
    """
    directory = pathlib.Path(directory)
    inter = find_inter_file(directory)
    users, items, labels = read_inter(inter)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    users, items, labels, dropped = clean_interactions(users, items, labels, source=str(inter),
                                                       return_dropped=True)
    if not (labels == TRAIN).any():
        raise DataError(f"{inter}: the training split is empty (no row has x_label 0). Label the "
                        f"training interactions 0, validation 1 and test 2.")
    feats = load_features(directory, n_items) if with_features else {}
    data = Dataset.from_arrays(users, items, labels, n_users, n_items, feats,
                               name=inter.stem, path=directory)
    data.heldout_of_users_without_train = dropped
    for attr, command in (("cold_items", "data cold-split"), ("new_items", "data synth")):
        listed = directory / f"{attr}.txt"
        if listed.exists():
            try:
                ids = np.loadtxt(listed, dtype=np.int64, ndmin=1)
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"{listed}: expected one integer item id per line ({e}); "
                                f"regenerate it with `mmrecsys {command}`.") from None
            setattr(data, attr, ids)
            if len(ids) and (ids.min() < 0 or ids.max() >= n_items):
                raise DataError(f"{listed}: item ids must lie in 0..{n_items - 1}; regenerate it "
                                f"with `mmrecsys {command}`.")
    if keep_users_without_train:
        data = data.with_users_without_train()
    return data


def write_dataset(directory, users, items, labels, features=None, name=None) -> pathlib.Path:
    """Write an .inter file (userID, itemID, x_label) and feature .npy files, atomically."""
    from ..io import atomic_write_text, atomic_save_npy
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or directory.name
    order = np.lexsort((np.asarray(items), np.asarray(users), np.asarray(labels)))
    lines = ["userID\titemID\tx_label"]
    lines += [f"{u}\t{i}\t{l}" for u, i, l in zip(np.asarray(users)[order], np.asarray(items)[order],
                                                  np.asarray(labels)[order])]
    path = directory / f"{name}.inter"
    atomic_write_text(path, "\n".join(lines) + "\n")
    for mod, x in (features or {}).items():
        atomic_save_npy(directory / f"{mod}.npy", np.asarray(x, dtype=np.float32))
    return path


def dataset_to_arrays(data: Dataset):
    """(users, items, labels) of all splits, for rewriting a dataset."""
    us, its, ls = [], [], []
    for lab, m in ((TRAIN, data.train), (VALID, data.valid), (TEST, data.test)):
        c = m.tocoo()
        us.append(c.row.astype(np.int64))
        its.append(c.col.astype(np.int64))
        ls.append(np.full(c.nnz, lab, dtype=np.int64))
    return np.concatenate(us), np.concatenate(its), np.concatenate(ls)
