"""On-disk cache of preprocessed graphs, keyed by everything they depend on.

The key is a hash of a dict the caller gives: the dataset fingerprint (training split and
feature contents), the builder's name and version, and every hyperparameter used. A change in
any of them is a different file, so a stale graph is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import torch

from ..io import atomic_torch_save

CACHE_VERSION = 1


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
                obj = torch.load(p, weights_only=False)
                self.hits += 1
                return obj
            except Exception:  # corrupt cache file: rebuild it
                pass
        obj = build()
        self.misses += 1
        if p is not None:
            atomic_torch_save(p, obj)
        return obj
