"""Raw interactions → a dataset folder in MMRec's format (``mmrecsys data prepare``).

The steps are those of MMRec's preprocessing notebooks (enoche/MMRec, ``preprocessing/``:
``0rating2inter.ipynb`` and ``1splitting.ipynb``):

1. drop rows with a missing user, item or (when the file has one) timestamp, and duplicate
   (user, item, timestamp) triples, keeping the first; as in MMRec, a repeated (user, item) pair
   with another timestamp is kept (``dedup="pair"`` drops it too);
2. iterative k-core: remove every user and every item with fewer than k interactions, again
   and again until nothing changes (the fixed point does not depend on the order of removal);
3. re-index users and items 0..N−1 in order of first appearance in the filtered rows (file
   order), and write the maps ``u_id_mapping.csv`` (``user_id``, ``userID``) and
   ``i_id_mapping.csv`` (``asin``, ``itemID``), tab-separated as MMRec's;
4. split: MMRec's per-user random split (n < 10: n−2 / 1 / 1; otherwise m = ⌊0.2n⌋ held out,
   v = ⌊m/2⌋ validation, m − v test), seeded here (MMRec's notebook sets no seed); or the
   global temporal split of ``0rating2inter.ipynb`` (timestamp quantiles 0.8 / 0.9); or a
   per-user leave-last-out temporal split.

``prepare.json`` records the source file (with its SHA-256), the options and the counts after
every step, so the folder can be rebuilt exactly.
"""
from __future__ import annotations

import array
import csv
import datetime
import io
import json
import pathlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from .dataset import TEST, TRAIN, VALID, DataError
from .rawfiles import (MISSING, file_sha256, find_column, iter_delimited, iter_jsonl, open_text,
                       sniff_kind)

USER_ALIASES = ("user", "userID", "user_id", "userId", "reviewerID", "uid")
ITEM_ALIASES = ("item", "itemID", "item_id", "itemId", "asin", "iid", "parent_asin")
RATING_ALIASES = ("rating", "overall", "score")
TIME_ALIASES = ("timestamp", "unixReviewTime", "time", "ts")
FORMATS = ("auto", "csv", "tsv", "jsonl", "amazon-ratings", "amazon-reviews")
SPLITS = ("random", "temporal", "leave-last-out")
AMAZON_RATINGS_COLUMNS = ("user", "item", "rating", "timestamp")
U_MAP, I_MAP = "u_id_mapping.csv", "i_id_mapping.csv"


@dataclass
class RawInteractions:
    """Interactions as read: ids interned to codes in order of first appearance in the file
    (−1 for a missing id), ``user_ids[c]`` the raw id of code c."""

    path: pathlib.Path
    fmt: str
    columns: dict
    users: np.ndarray
    items: np.ndarray
    user_ids: list
    item_ids: list
    lines: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    notes: list = field(default_factory=list)

    def __len__(self):
        return len(self.users)


# ------------------------------------------------------------------------------- reading
def read_interactions(path, fmt: str = "auto", *, user_col=None, item_col=None, rating_col=None,
                      time_col=None, columns=None) -> RawInteractions:
    """Read a raw interaction file.

    ``fmt``: ``auto`` (JSON lines when the first line is an object, else a delimited file whose
    header names the columns, else Amazon's headerless ratings CSV), ``csv``, ``tsv``, ``jsonl``,
    ``amazon-ratings`` (``user,item,rating,timestamp``, no header) or ``amazon-reviews`` (JSON
    lines with ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``). Columns are found by
    name (``user``/``userID``/``reviewerID``…, ``item``/``itemID``/``asin``…, ``rating``/
    ``overall``, ``timestamp``/``unixReviewTime``) or given by ``*_col``; ``columns`` names the
    columns of a headerless delimited file. Gzip is detected from the file's first bytes.
    """
    path = pathlib.Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    kind, sep = sniff_kind(path)
    if fmt in ("jsonl", "amazon-reviews"):
        kind = "jsonl"
    elif fmt in ("csv", "amazon-ratings"):
        kind, sep = "delimited", ","
    elif fmt == "tsv":
        kind, sep = "delimited", "\t"
    given = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    if kind == "jsonl":
        return _read_jsonl(path, "amazon-reviews" if fmt == "amazon-reviews" else "jsonl", given)
    if fmt == "amazon-ratings" and columns is None:
        columns = AMAZON_RATINGS_COLUMNS
    return _read_delimited(path, sep, fmt, given, columns)


def _locate(names, given, path, opt_prefix="--"):
    aliases = {"user": USER_ALIASES, "item": ITEM_ALIASES, "rating": RATING_ALIASES,
               "timestamp": TIME_ALIASES}
    opts = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col",
            "timestamp": "--time-col"}
    return {k: find_column(names, aliases[k], k, path, opts[k], given[k]) for k in aliases}


class _Interner:
    def __init__(self):
        self.codes: dict[str, int] = {}

    def __call__(self, v) -> int:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return -1
        s = v if isinstance(v, str) else (str(int(v)) if isinstance(v, float) and v == int(v)
                                           else str(v))
        s = s.strip()
        if s in MISSING:
            return -1
        c = self.codes.get(s)
        if c is None:
            c = self.codes[s] = len(self.codes)
        return c

    def ids(self) -> list:
        return list(self.codes)


def _read_delimited(path, sep, fmt, given, columns) -> RawInteractions:
    rows = iter_delimited(path, sep)
    header_line = None
    if columns is None:
        try:
            header_line, names = next(rows)
        except StopIteration:
            raise DataError(f"{path}: the file is empty.") from None
        names = [n.strip().split(":")[0] for n in names]  # RecBole writes 'userID:token'
        cols = _locate(names, given, path)
        if cols["user"] is None or cols["item"] is None:
            if fmt == "auto" and _looks_like_amazon_ratings(names):
                columns = AMAZON_RATINGS_COLUMNS
                fmt = "amazon-ratings"
                rows = iter_delimited(path, sep)  # the first line is data
                header_line = None
            else:
                what = " and ".join(k for k in ("user", "item") if cols[k] is None)
                raise DataError(
                    f"{path}: the header {names} names no {what} column. Name them user and item "
                    f"(or userID/itemID, reviewerID/asin), pass --user-col/--item-col, or "
                    f"--columns user,item,rating,timestamp for a file without a header "
                    f"(--format amazon-ratings for Amazon's ratings CSV).")
    if columns is not None:
        names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
        cols = _locate(names, given, path)
        if cols["user"] is None or cols["item"] is None:
            raise DataError(f"columns {names}: name one column user and one item "
                            f"(e.g. --columns user,item,rating,timestamp).")
    kind = fmt if fmt != "auto" else ("tsv" if sep == "\t" else "csv")
    uc, ic, rc, tc = cols["user"], cols["item"], cols["rating"], cols["timestamp"]
    iu, ii = _Interner(), _Interner()
    us, its, lines = array.array("q"), array.array("q"), array.array("q")
    rs, ts = [], []
    for lineno, row in rows:
        n = len(row)
        us.append(iu(row[uc]) if uc < n else -1)
        its.append(ii(row[ic]) if ic < n else -1)
        if rc is not None:
            rs.append(row[rc].strip() if rc < n else "")
        if tc is not None:
            ts.append(row[tc].strip() if tc < n else "")
        lines.append(lineno)
    if not len(us):
        raise DataError(f"{path}: no interaction rows{' after the header' if header_line else ''}.")
    used = {k: names[v] for k, v in cols.items() if v is not None}
    lines = np.frombuffer(lines, dtype=np.int64)
    return RawInteractions(path, kind, used, np.frombuffer(us, dtype=np.int64),
                           np.frombuffer(its, dtype=np.int64), iu.ids(), ii.ids(), lines,
                           _ratings(rs, lines, path, used.get("rating")) if rc is not None else None,
                           _timestamps(ts, lines, path, used.get("timestamp")) if tc is not None else None)


def _looks_like_amazon_ratings(fields) -> bool:
    """Amazon 2014's ratings CSV: user,item,rating,timestamp with no header."""
    if len(fields) != 4:
        return False
    try:
        float(fields[2])
        float(fields[3])
        return True
    except ValueError:
        return False


def _read_jsonl(path, fmt, given) -> RawInteractions:
    iu, ii = _Interner(), _Interner()
    us, its, lines = array.array("q"), array.array("q"), array.array("q")
    rs, ts = [], []
    keys = None
    for lineno, rec in iter_jsonl(path):
        if keys is None:
            names = list(rec)
            cols = _locate(names, given, path)
            if cols["user"] is None or cols["item"] is None:
                what = " and ".join(k for k in ("user", "item") if cols[k] is None)
                raise DataError(f"{path}: line {lineno}: the record's fields {names} include no "
                                f"{what} field. Name them with --user-col/--item-col.")
            keys = {k: (names[v] if v is not None else None) for k, v in cols.items()}
        us.append(iu(rec.get(keys["user"])))
        its.append(ii(rec.get(keys["item"])))
        if keys["rating"] is not None:
            rs.append(_jsonval(rec.get(keys["rating"])))
        if keys["timestamp"] is not None:
            ts.append(_jsonval(rec.get(keys["timestamp"])))
        lines.append(lineno)
    if keys is None:
        raise DataError(f"{path}: the file holds no record.")
    lines = np.frombuffer(lines, dtype=np.int64)
    used = {k: v for k, v in keys.items() if v is not None}
    return RawInteractions(path, fmt, used, np.frombuffer(us, dtype=np.int64),
                           np.frombuffer(its, dtype=np.int64), iu.ids(), ii.ids(), lines,
                           _ratings(rs, lines, path, keys["rating"]) if keys["rating"] else None,
                           _timestamps(ts, lines, path, keys["timestamp"]) if keys["timestamp"] else None)


def _jsonval(v) -> str:
    return "" if v is None else str(v).strip()


def _ratings(values, lines, path, col) -> np.ndarray:
    vals = ["nan" if v in MISSING else v for v in values]
    try:
        return np.array(vals, dtype=np.float64)
    except ValueError:
        bad = next(k for k, v in enumerate(vals) if not _is_float(v))
        raise DataError(f"{path}: line {lines[bad]}, column {col}: {values[bad]!r} is not a number. "
                        f"Ratings must be numeric (or name the rating column with --rating-col).") from None


def _timestamps(values, lines, path, col) -> np.ndarray:
    """Unix seconds as float64 (NaN when missing); ISO 8601 dates are converted."""
    vals = ["nan" if v in MISSING else v for v in values]
    try:
        return np.array(vals, dtype=np.float64)
    except ValueError:
        pass
    dates = ["NaT" if v == "nan" else v for v in vals]
    try:
        d = np.array(dates, dtype="datetime64[s]")
    except ValueError:
        bad = next(k for k, v in enumerate(vals) if not _is_float(v) and not _is_date(v))
        raise DataError(f"{path}: line {lines[bad]}, column {col}: {values[bad]!r} is not a "
                        f"timestamp. Use Unix seconds or ISO 8601 dates (2014-01-31T12:00:00), "
                        f"or name the timestamp column with --time-col.") from None
    out = d.astype(np.int64).astype(np.float64)
    out[np.isnat(d)] = np.nan
    return out


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _is_date(v) -> bool:
    try:
        np.datetime64(v, "s")
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------- steps
def first_occurrence(*keys) -> np.ndarray:
    """Mask of the rows that are the first (in row order) of their key tuple."""
    n = len(keys[0])
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort((np.arange(n),) + tuple(reversed(keys)))
    new = np.ones(n, dtype=bool)
    diff = np.zeros(n - 1, dtype=bool)
    for k in keys:
        sk = np.asarray(k)[order]
        diff |= sk[1:] != sk[:-1]
    new[1:] = diff
    keep[order[new]] = True
    return keep


def kcore(users, items, user_k: int, item_k: int):
    """Iterative k-core: a mask of the rows kept when every user has at least ``user_k`` rows
    and every item at least ``item_k`` (repeated rows count, as in MMRec), and the
    (rows, users, items) left after each round of removal."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    idx = np.arange(len(users))
    nu = int(users.max()) + 1 if len(users) else 0
    ni = int(items.max()) + 1 if len(items) else 0
    rounds = []
    while True:
        u, i = users[idx], items[idx]
        du = np.bincount(u, minlength=nu)
        di = np.bincount(i, minlength=ni)
        ok = (du[u] >= user_k) & (di[i] >= item_k)
        if ok.all():
            break
        idx = idx[ok]
        rounds.append((len(idx), len(np.unique(users[idx])), len(np.unique(items[idx]))))
        if not len(idx):
            break
    keep = np.zeros(len(users), dtype=bool)
    keep[idx] = True
    return keep, rounds


def reindex_first_appearance(codes) -> tuple[np.ndarray, np.ndarray]:
    """(new ids 0..N−1 numbered in order of first appearance, the old code of each new id)."""
    uniq, first, inv = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inv.ravel()], uniq[order]


def split_sizes(n) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MMRec's per-user split of n interactions (``1splitting.ipynb``): (train, valid, test)
    counts; n < 10 gives n−2 / 1 / 1, otherwise m = ⌊0.2n⌋, v = ⌊m/2⌋, t = m − v."""
    n = np.asarray(n, dtype=np.int64)
    m = np.where(n < 10, 2, n // 5)
    v = np.where(n < 10, 1, m // 2)
    return n - m, v, m - v


def mmrec_split_labels(users, rng=None) -> np.ndarray:
    """Labels of MMRec's per-user split for rows already in the order to split in: for each
    user, its first train-count rows (in row order) are training, the next validation, the rest
    test. With rows shuffled first this is MMRec's random split; sorted by time, a temporal one.
    (``rng`` is unused: accepted for callers that pass their generator.)"""
    users = np.asarray(users, dtype=np.int64)
    labels = np.full(len(users), TRAIN, dtype=np.int64)
    if not len(users):
        return labels
    grouped = np.argsort(users, kind="stable")
    g = users[grouped]
    counts = np.bincount(g)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(g)) - starts[g]
    n_train, n_valid, _ = split_sizes(counts)
    lab = np.full(len(g), TRAIN, dtype=np.int64)
    lab[pos >= n_train[g]] = VALID
    lab[pos >= n_train[g] + n_valid[g]] = TEST
    labels[grouped] = lab
    return labels


def split_random(users, seed: int) -> np.ndarray:
    """MMRec's random per-user split: shuffle all rows with ``seed``, then split each user's
    rows in shuffled order."""
    users = np.asarray(users, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(users))
    labels = np.empty(len(users), dtype=np.int64)
    labels[perm] = mmrec_split_labels(users[perm])
    return labels


def split_temporal(timestamps, quantiles=(0.8, 0.9)) -> np.ndarray:
    """MMRec's global temporal split (``0rating2inter.ipynb``): with q1, q2 the timestamp
    quantiles, train is t < q1, validation q1 ≤ t < q2 and test t ≥ q2."""
    t = np.asarray(timestamps, dtype=np.float64)
    q1, q2 = np.quantile(t, quantiles)
    labels = np.full(len(t), TRAIN, dtype=np.int64)
    labels[t >= q1] = VALID
    labels[t >= q2] = TEST
    return labels


def split_leave_last_out(users, timestamps) -> np.ndarray:
    """Per user, the latest row is test and the one before validation (ties: later in the file
    counts as later); a user with fewer than 3 rows has no training row."""
    users = np.asarray(users, dtype=np.int64)
    n = len(users)
    order = np.lexsort((np.arange(n), np.asarray(timestamps, dtype=np.float64), users))
    g = users[order]
    counts = np.bincount(g)
    ends = np.cumsum(counts)
    from_end = ends[g] - 1 - (np.arange(n))  # 0 for a user's last row
    lab = np.full(n, TRAIN, dtype=np.int64)
    lab[from_end == 1] = VALID
    lab[from_end == 0] = TEST
    labels = np.empty(n, dtype=np.int64)
    labels[order] = lab
    return labels


# ------------------------------------------------------------------------------- pipeline
def prepare(path, out_dir, *, name: str | None = None, fmt: str = "auto", user_col=None,
            item_col=None, rating_col=None, time_col=None, columns=None, kcore_k: int = 5,
            user_k: int | None = None, item_k: int | None = None, split: str = "random",
            seed: int = 999, dedup: str = "triple", log=None) -> dict:
    """Build the dataset folder ``out_dir`` from the raw interactions in ``path``.

    Returns the report written to ``prepare.json`` (the counts after each step). Raises
    :class:`DataError` when the file cannot be read or nothing survives the filters.
    """
    say = log or (lambda *_: None)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    if dedup not in ("triple", "pair"):
        raise DataError(f"unknown dedup {dedup!r}: use triple (MMRec) or pair.")
    user_k = kcore_k if user_k is None else user_k
    item_k = kcore_k if item_k is None else item_k
    out = pathlib.Path(out_dir)
    name = name or out.name
    _check_out_dir(out, name)

    raw = read_interactions(path, fmt, user_col=user_col, item_col=item_col,
                            rating_col=rating_col, time_col=time_col, columns=columns)
    if split != "random" and raw.timestamps is None:
        raise DataError(f"{path}: --split {split} needs timestamps, and the file has no timestamp "
                        f"column (name it with --time-col).")
    steps = []

    def record(step, mask):
        steps.append({"step": step, "rows": int(mask.sum()),
                      "users": int(len(np.unique(raw.users[mask]))),
                      "items": int(len(np.unique(raw.items[mask])))})
        say(f"{step:40s} {steps[-1]['rows']:>11,} rows {steps[-1]['users']:>10,} users "
            f"{steps[-1]['items']:>10,} items")

    n = len(raw)
    steps.append({"step": "read", "rows": n, "users": len(raw.user_ids), "items": len(raw.item_ids)})
    say(f"read {raw.path} as {raw.fmt} (columns: "
        + ", ".join(f"{k}={v}" for k, v in raw.columns.items()) + ")")
    say(f"{'read':40s} {n:>11,} rows {len(raw.user_ids):>10,} users {len(raw.item_ids):>10,} items")
    keep = (raw.users >= 0) & (raw.items >= 0)
    if raw.timestamps is not None:
        keep &= ~np.isnan(raw.timestamps)
    record("drop rows with missing fields", keep)

    idx = np.flatnonzero(keep)
    u, i = raw.users[idx], raw.items[idx]
    if dedup == "triple" and raw.timestamps is not None:
        tcode = np.unique(raw.timestamps[idx], return_inverse=True)[1].ravel()
        first = first_occurrence(u, i, tcode)
        what = "duplicate (user, item, timestamp)"
    else:
        first = first_occurrence(u, i)
        what = "duplicate (user, item)"
    keep[idx[~first]] = False
    record(f"drop {what}", keep)

    idx = np.flatnonzero(keep)
    mask, rounds = kcore(raw.users[idx], raw.items[idx], user_k, item_k)
    core = f"{user_k}-core" if user_k == item_k else f"{user_k}/{item_k}-core (users/items)"
    for r, (rows, nu, ni) in enumerate(rounds, 1):
        steps.append({"step": f"{core} round {r}", "rows": rows, "users": nu, "items": ni})
        say(f"{core + ' round ' + str(r):40s} {rows:>11,} rows {nu:>10,} users {ni:>10,} items")
    keep[idx[~mask]] = False
    if not keep.any():
        counts = "; ".join(f"{s['step']}: {s['rows']:,} rows, {s['users']:,} users, "
                           f"{s['items']:,} items" for s in steps)
        raise DataError(f"{path}: no interaction is left after filtering ({counts}). Lower "
                        f"--kcore (or check the user/item columns: {raw.columns}).")

    idx = np.flatnonzero(keep)  # surviving rows, in file order
    users, user_codes = reindex_first_appearance(raw.users[idx])
    items, item_codes = reindex_first_appearance(raw.items[idx])
    ts = raw.timestamps[idx] if raw.timestamps is not None else None
    if split == "random":
        labels = split_random(users, seed)
    elif split == "temporal":
        labels = split_temporal(ts)
    else:
        labels = split_leave_last_out(users, ts)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1

    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[labels == TRAIN]] = True
    notes = []
    if not has_train.all():
        notes.append(f"{int((~has_train).sum()):,} users have no training interaction (their "
                     f"validation/test rows are dropped, with a warning, when the folder is loaded)")
    pair_first = first_occurrence(users, items)
    if not pair_first.all():
        notes.append(f"{int((~pair_first).sum()):,} rows repeat a (user, item) pair with another "
                     f"timestamp (kept, as MMRec; loading keeps the first of each pair; "
                     f"--dedup pair drops them here)")
    for note in notes:
        if log is None:
            warnings.warn(f"{out}: {note}.", stacklevel=2)
        else:
            log(f"note: {note}.")

    out.mkdir(parents=True, exist_ok=True)
    ratings = raw.ratings[idx] if raw.ratings is not None else None
    from ..io import atomic_write_json, atomic_write_text
    atomic_write_text(out / f"{name}.inter", _inter_text(users, items, labels, ratings, ts))
    atomic_write_text(out / U_MAP, _mapping_text("user_id", "userID",
                                                 [raw.user_ids[c] for c in user_codes]))
    atomic_write_text(out / I_MAP, _mapping_text("asin", "itemID",
                                                 [raw.item_ids[c] for c in item_codes]))
    split_counts = {s: int((labels == lab).sum()) for s, lab in
                    (("train", TRAIN), ("valid", VALID), ("test", TEST))}
    from .. import __version__
    report = {
        "source": {"path": str(pathlib.Path(path).resolve()), "sha256": file_sha256(path),
                   "format": raw.fmt, "columns": raw.columns},
        "options": {"kcore_users": user_k, "kcore_items": item_k, "dedup": dedup,
                    "split": split, "seed": seed if split == "random" else None},
        "steps": steps,
        "result": {"name": name, "users": n_users, "items": n_items, "interactions": len(idx),
                   "sparsity": 1.0 - len(idx) / float(n_users * n_items), "splits": split_counts},
        "notes": notes,
        "files": [f"{name}.inter", U_MAP, I_MAP],
        "mmrecsys": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if split == "temporal":
        report["options"]["quantiles"] = [0.8, 0.9]
    atomic_write_json(out / "prepare.json", report)
    return report


def _check_out_dir(out: pathlib.Path, name: str) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; pass a new folder to --out.")
    others = [p.name for p in out.glob("*.inter") if p.name != f"{name}.inter"]
    if others:
        raise DataError(f"{out}: already holds {', '.join(others)}; write to a new folder "
                        f"(a dataset folder holds one .inter file).")
    feats = sorted(p.name for p in out.glob("*_feat.npy"))
    if feats:
        raise DataError(f"{out}: already holds feature files ({', '.join(feats)}) aligned to the "
                        f"item ids of an earlier run; write to a new folder or delete them first.")


def _num_strings(x: np.ndarray) -> list:
    """Integers without a decimal point when every value is integral; '' for NaN."""
    finite = np.isfinite(x)
    if np.all(x[finite] == np.round(x[finite])) and np.all(np.abs(x[finite]) < 2**53):
        s = np.where(finite, x, 0).astype(np.int64).astype(str).astype(object)
    else:
        s = x.astype(str).astype(object)
    s[~finite] = ""
    return s.tolist()


def _inter_text(users, items, labels, ratings, timestamps) -> str:
    header = ["userID", "itemID"]
    cols = [users.astype(str).tolist(), items.astype(str).tolist()]
    if ratings is not None:
        header.append("rating")
        cols.append(_num_strings(ratings))
    if timestamps is not None:
        header.append("timestamp")
        cols.append(_num_strings(timestamps))
    header.append("x_label")
    cols.append(labels.astype(str).tolist())
    return "\t".join(header) + "\n" + "\n".join(map("\t".join, zip(*cols))) + "\n"


def _mapping_text(raw_name: str, id_name: str, raw_ids) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow([raw_name, id_name])
    w.writerows(zip(raw_ids, range(len(raw_ids))))
    return buf.getvalue()


def read_mapping(path) -> list:
    """Raw ids of a mapping file written by :func:`prepare` (row k: raw id of index k)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found. It maps raw ids to the dataset's ids and is written "
                        f"by `mmrecsys data prepare`; features keyed by raw item ids need it.")
    with open_text(path) as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a tab-separated header (raw id, index), e.g. "
                        f"asin\\titemID.")
    body = [r for r in rows[1:] if r]
    try:
        idx = np.array([int(r[1]) for r in body], dtype=np.int64)
    except (ValueError, IndexError):
        bad = next(k for k, r in enumerate(body) if len(r) < 2 or not r[1].strip().lstrip("-").isdigit())
        raise DataError(f"{path}: line {bad + 2}: expected a raw id and an integer index, got "
                        f"{body[bad]}.") from None
    if len(idx) and (np.sort(idx) != np.arange(len(idx))).any():
        raise DataError(f"{path}: the indices must be 0..{len(idx) - 1}, each once.")
    ids = [None] * len(idx)
    for r, k in zip(body, idx):
        ids[k] = r[0]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: a raw id is mapped twice; each raw id must appear once.")
    return ids
