"""On-disk cache of preprocessed graphs, keyed by everything they depend on.

The key is a hash of a dict the caller gives: the dataset fingerprint (training split and
feature contents), the builder's name and version, and every hyperparameter used. A change in
any of them is a different file, so a stale graph is never loaded.

Files hold only tensors, numbers, strings and containers (NumPy arrays, SciPy sparse matrices
and the graph dataclasses of this package are encoded as such) and are read with
``torch.load(weights_only=True)``: a planted cache file cannot run code, it is rebuilt.

The cache lives in ``$MMRECSYS_CACHE``, else ``$XDG_CACHE_HOME/mmrecsys``, else
``~/.cache/mmrecsys`` (``mmrecsys cache info`` / ``mmrecsys cache clear``).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

from ..io import atomic_torch_save

CACHE_VERSION = 2  # 2: safe (weights_only) encoding; version-1 files are pickles, never read
#: name pattern of the files this cache writes (``mmrecsys cache clear`` removes only these)
FILE_GLOB = "*-" + "?" * 20 + ".pt"


def _dataclass_types() -> dict:
    from .hypergraph import FactoredHypergraph
    return {"FactoredHypergraph": FactoredHypergraph}


def encode(obj):
    """``obj`` as tensors, numbers, strings and containers (loadable with weights_only=True)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return {"__kind__": "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if sp.issparse(obj):
        m = obj.tocsr()
        return {"__kind__": "sparse", "format": obj.format, "shape": list(m.shape),
                "data": encode(m.data), "indices": encode(m.indices), "indptr": encode(m.indptr),
                "sorted": bool(m.has_sorted_indices)}
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in _dataclass_types():
        return {"__kind__": "dataclass", "type": type(obj).__name__,
                "fields": {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"__kind__": "dict", "items": {k: encode(v) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__kind__": type(obj).__name__, "items": [encode(v) for v in obj]}
    raise TypeError(f"cannot cache a {type(obj).__name__}")


def decode(obj):
    if not isinstance(obj, dict):
        return obj
    kind = obj["__kind__"]
    if kind == "ndarray":
        return obj["data"].numpy()
    if kind == "sparse":
        m = sp.csr_matrix((decode(obj["data"]), decode(obj["indices"]), decode(obj["indptr"])),
                          shape=tuple(obj["shape"]))
        m.has_sorted_indices = obj["sorted"]
        return m.asformat(obj["format"])
    if kind == "dataclass":
        return _dataclass_types()[obj["type"]](**{k: decode(v) for k, v in obj["fields"].items()})
    if kind == "dict":
        return {k: decode(v) for k, v in obj["items"].items()}
    if kind in ("list", "tuple"):
        items = [decode(v) for v in obj["items"]]
        return items if kind == "list" else tuple(items)
    raise ValueError(f"unknown cached kind {kind!r}")


def default_cache_dir() -> pathlib.Path:
    env = os.environ.get("MMRECSYS_CACHE")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "mmrecsys"


class GraphCache:
    """``cache.get_or_build(name, key, build)``: load ``name`` for ``key`` or build and store it.

    Args:
        root: the folder of the cache files; ``None`` disables caching (everything is built
            in memory). (default: ``None``)
        enabled: ``False`` also disables it. (default: ``True``)
    """

    def __init__(self, root=None, enabled: bool = True):
        self.root = pathlib.Path(root) if root is not None else None
        self.enabled = enabled and self.root is not None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key_hash(name: str, key: dict) -> str:
        blob = json.dumps({"name": name, "v": CACHE_VERSION, **key}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def path(self, name: str, key: dict) -> pathlib.Path | None:
        if not self.enabled:
            return None
        return self.root / f"{name}-{self.key_hash(name, key)}.pt"

    def get_or_build(self, name: str, key: dict, build):
        p = self.path(name, key)
        if p is not None and p.exists():
            try:
                obj = decode(torch.load(p, weights_only=True, map_location="cpu"))
                self.hits += 1
                return obj
            except Exception:  # corrupt, foreign or unsafe cache file: rebuild it
                pass
        obj = build()
        self.misses += 1
        if p is not None:
            try:
                payload = encode(obj)
            except TypeError:  # not a cacheable type: keep it in memory only
                return obj
            try:
                atomic_torch_save(p, payload)
            except OSError:  # read-only or full cache folder: caching is an optimisation
                pass
        return obj


def cache_files(root) -> list[pathlib.Path]:
    """The graph files this cache wrote under ``root`` (version 1 and 2 names alike)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(FILE_GLOB) if p.is_file())
