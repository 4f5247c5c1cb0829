"""The interface every model implements, and the registry that finds models by name.

A model is a ``torch.nn.Module`` built from a :class:`~mmrecsys.data.Dataset` (in memory: it
never reads files) and an optional :class:`~mmrecsys.graphs.GraphCache`. Its hyperparameters
are the keyword arguments of its constructor, with the official code's defaults; the
configuration system reads them from the signature, so a constructor argument *is* a config
key. The class docstring documents each one in an ``Args:`` section, one entry per key ending
with its default, ``(default: ``64``)``, which :meth:`Recommender.describe_hyperparameters`
reads for ``mmrecsys models NAME``.

Shared names: ``embedding_dim`` (width of the ID embeddings), ``n_layers`` (propagation layers
on the user–item graph), ``temperature`` (of the contrastive loss). The official codes' own
names are accepted as :attr:`Recommender.aliases`.

Fixed graphs are built through :meth:`Recommender.cached_graph`, which owns the on-disk cache.

The trainer calls:
  * ``pre_epoch(epoch)`` once before each training epoch (edge sampling and the like);
  * ``loss(users, pos, neg)`` per batch: a dict of named scalar terms whose sum is minimised;
  * ``representations()`` once per evaluation pass (under ``torch.no_grad`` and ``eval()``):
    the final user and item representations;
  * ``score(users, reps)``: (B, n_items) scores of the users against every item
    (default: inner product of the representations).
"""
from __future__ import annotations

import inspect
import re
import time
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..errors import UnknownModelError
from ..graphs import GraphCache
from .layers import project_table

MODELS: dict[str, type["Recommender"]] = {}
_NO_CACHE = GraphCache(None)
#: built-in models: registry name -> module of this package (imported on first use)
BUILTIN = {
    "bpr": "bpr", "lightgcn": "lightgcn", "lgmrec": "lgmrec", "mmhcl": "mmhcl", "rearm": "rearm",
    "vbpr": "vbpr", "bm3": "bm3", "freedom": "freedom", "lattice": "lattice", "mgcn": "mgcn",
    "smore": "smore",
    "sgl": "sgl",
    "ncl": "ncl",
    "hccf": "hccf",
    "sht": "sht",
    "dualgnn": "dualgnn",
    "dragon": "dragon",
    "mmgcn": "mmgcn",
    "grcn": "grcn",
    "micro": "micro",
    "slmrec": "slmrec",
    # one line per further model
}


class Recommender(nn.Module):
    #: registry name (lower case), e.g. "lightgcn"
    name: ClassVar[str] = ""
    #: trainer settings this model brings as its own defaults (lr, batch_size, sampler, ...)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: dataset name -> overrides of hyperparameters and trainer settings (the tuned settings
    #: the model's authors published), in canonical key names
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: other accepted names of hyperparameters -> the canonical name (the official codes'
    #: spellings and earlier names), e.g. ``{"embed_size": "embedding_dim"}``; resolved by
    #: :func:`mmrecsys.config.resolve_config` and :func:`mmrecsys.config.model_kwargs`
    aliases: ClassVar[dict[str, str]] = {}
    #: hyperparameter -> the values its authors' grid search tries (e.g. the ``hyper_parameters``
    #: grid of the model's MMRec yaml), in canonical key names; read by sweeps
    search_space: ClassVar[dict[str, list]] = {}
    #: a model that needs at least one modality feature matrix
    requires_features: ClassVar[bool] = False
    #: behaviour a user should know of, printed by ``mmrecsys models NAME``
    notes: ClassVar[str] = ""
    #: data-parallel training (``--nproc``): "split" when every loss term is a sum over batch
    #: rows or uses the batch helpers of :mod:`.layers` (each process computes its share of the
    #: global batch), "replicate" otherwise (every process computes the global batch's loss:
    #: exact, but no speed-up)
    data_parallel: ClassVar[str] = "replicate"
    #: loss terms that do not depend on the batch (e.g. a contrastive loss over all nodes): under
    #: "split" every process computes them whole, so each contributes 1/world of them
    global_loss_terms: ClassVar[tuple] = ()
    #: the trainer's configured ``batch_size``, set by :func:`mmrecsys.train.build_model`;
    #: ``None`` when the model is built directly. Losses that divide by the *configured* batch
    #: size rather than the rows of the batch (MMRec's LATTICE, MGCN, SMORE) read it.
    train_batch_size: int | None = None
    #: every matrix product of the model's training step (forward and backward) has a shape set
    #: by the dataset and configuration alone (batch-shaped ones padded to a few sizes), so the
    #: trainer may send the whole step to oneDNN (:func:`mmrecsys.matmul.fixed_shape_products`,
    #: under ``cpu_matmul``); a model with products shaped by each batch leaves it False
    fixed_shape_step: ClassVar[bool] = False
    #: the trainer's configured ``sampler`` (set with ``train_batch_size``; ``None`` when built
    #: directly): a loss whose scale depends on what a batch is (HCCF, SHT) reads it
    train_sampler: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            MODELS[cls.name.lower()] = cls

    def __init__(self, data: Dataset, cache: GraphCache | None = None):
        super().__init__()
        if self.requires_features and not data.features:
            raise ValueError(
                f"{type(self).__name__} needs item modality features, but dataset {data.name!r} has "
                f"none. Put one file per modality (e.g. image_feat.npy, text_feat.npy; one row per "
                f"item id) beside {data.name}.inter, or generate proxy features.")
        self.n_users = data.n_users
        self.n_items = data.n_items
        #: seconds spent getting each precomputed graph (built, or loaded from the graph cache)
        self.graph_seconds: dict[str, float] = {}

    # -- precomputed graphs ------------------------------------------------------
    def cached_graph(self, cache: GraphCache | None, name: str, key: dict, build: Callable[[], Any]):
        """``build()``, or its result stored in ``cache`` under ``name`` and ``key``.

        The one place a model's fixed graphs meet the on-disk cache (``cache=None``: always
        built). ``key`` must hold everything the result depends on: the dataset fingerprint,
        the hyperparameters used and a builder version. The time taken is recorded in
        :attr:`graph_seconds` under ``name``.
        """
        from ..graphs.knn import current_knn_settings
        knn = current_knn_settings()
        if knn.get("backend", "torch") != "torch":  # another kNN search: another graph
            key = {**key, "knn": knn}
        t0 = time.perf_counter()
        out = (cache if cache is not None else _NO_CACHE).get_or_build(name, key, build)
        self.graph_seconds[name] = time.perf_counter() - t0
        return out

    def modality_knn_graphs(self, data: Dataset, cache: GraphCache | None, ks: list[int],
                            chunk_size: int = 2048) -> list:
        """Per modality of ``data`` (its order), the weighted, sym-normalised top-``ks[m]`` cosine
        graph of the raw features (:func:`mmrecsys.graphs.knn_adjacency`: MMRec's
        ``build_knn_normalized_graph(.., norm_type='sym')``), each cached as ``knn-sym``."""
        from ..graphs import knn_adjacency
        if len(ks) != len(data.features):
            raise ValueError(f"{len(ks)} neighbour counts for {len(data.features)} modalities")
        fp = data.fingerprint(with_features=True)
        out = []
        for (mod, x), k in zip(data.features.items(), ks):
            key = {"data": fp, "modality": mod, "k": int(k), "normalization": "sym", "version": 1}
            out.append(self.cached_graph(
                cache, f"knn-sym-{re.sub(r'[^A-Za-z0-9_]', '_', mod)}", key,
                lambda x=x, k=k: knn_adjacency(x, int(k), normalization="sym",
                                               chunk_size=chunk_size)))
        return out

    # -- modality features -----------------------------------------------------
    def register_features(self, data: Dataset, trainable: bool) -> list[str]:
        """One float32 table per modality of ``data`` (in its order), as a trainable
        ``nn.Parameter`` (the MMRec models' ``nn.Embedding.from_pretrained(feat, freeze=False)``,
        which Adam fine-tunes) or a frozen buffer. Returns their keys; the table of key ``k`` is
        :meth:`feature_table` of ``k``. :meth:`reset_feature_tables` restores the raw values.
        """
        self._feature_keys: list[str] = []
        self._feature_source: dict[str, Any] = {}
        self._features_trainable = bool(trainable)
        if trainable:
            self.raw_features = nn.ParameterDict()
        for i, (mod, x) in enumerate(data.features.items()):
            key = re.sub(r"\W", "_", mod) or f"m{i}"
            if key in self._feature_keys:
                key = f"{key}_{i}"
            self._feature_keys.append(key)
            self._feature_source[key] = x   # the dataset's array (a reference, not a copy)
            t = torch.empty(x.shape, dtype=torch.float32)
            if trainable:
                self.raw_features[key] = nn.Parameter(t)
            else:
                self.register_buffer(f"raw_feature_{key}", t, persistent=False)
        self.reset_feature_tables()
        return list(self._feature_keys)

    def feature_table(self, key: str) -> torch.Tensor:
        if self._features_trainable:
            return self.raw_features[key]
        return getattr(self, f"raw_feature_{key}")

    def project_features(self, key: str, linear: nn.Linear) -> torch.Tensor:
        """``linear(feature_table(key))``, X Wᵀ + b, with the same value and gradients; a
        trainable table's gradient is never allocated afresh per step (it goes block by block
        into the optimiser, or into a buffer kept across steps: :func:`~.layers.project_table`).
        ``X`` then receives its gradient only through ``backward()``, not through
        ``torch.autograd.grad``."""
        if not hasattr(self, "_feature_grad_buffers"):
            self._feature_grad_buffers: dict[str, torch.Tensor] = {}
        return project_table(self.feature_table(key), linear, self._feature_grad_buffers, key)

    def reset_feature_tables(self) -> None:
        """Copy the dataset's raw features back into the tables (fine-tuning undone)."""
        with torch.no_grad():
            for key in self._feature_keys:
                src = torch.from_numpy(np.ascontiguousarray(self._feature_source[key], dtype=np.float32))
                self.feature_table(key).copy_(src)

    # -- hyperparameters -------------------------------------------------------
    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Constructor keyword arguments and their defaults (the model's config keys)."""
        sig = inspect.signature(cls.__init__)
        out = {}
        for p in list(sig.parameters.values())[1:]:
            if p.name in ("data", "cache") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"{cls.__name__}.{p.name} needs a default value")
            out[p.name] = p.default
        return out

    @classmethod
    def describe_hyperparameters(cls) -> dict[str, str]:
        """{key: one-line meaning} of every hyperparameter, from the ``Args:`` section of the
        class docstring (entries ``name: text`` or ``name (type): text``, continuation lines
        indented deeper), in the order of the constructor. Other accepted names (aliases) not
        named in the entry are appended; a key without an entry maps to ``""``."""
        entries: dict[str, list[str]] = {}
        doc = inspect.cleandoc(cls.__doc__ or "").splitlines()
        indent, current = None, None
        in_args = False
        for line in doc:
            if not in_args:
                in_args = line.strip() == "Args:"
                continue
            if not line.strip():
                current = None
                continue
            width = len(line) - len(line.lstrip())
            if indent is None:
                indent = width
            if width < indent:                    # the section ended
                break
            m = re.match(r"(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line.strip())
            if width == indent and m:
                current = m.group(1)
                entries[current] = [m.group(2)]
            elif current is not None:
                entries[current].append(line.strip())
        out = {}
        for key in cls.hyperparameters():
            text = " ".join(" ".join(entries.get(key, [])).split())
            others = [a for a, k in cls.aliases.items() if k == key and f"``{a}``" not in text]
            if others:
                text += " Also accepted as " + ", ".join(f"``{a}``" for a in others) + "."
            out[key] = text
        return out

    # -- hooks the trainer calls ----------------------------------------------
    def pre_epoch(self, epoch: int) -> None:
        """Called before each training epoch."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_repr (n_users, d), item_repr (n_items, d)) for full ranking."""
        raise NotImplementedError

    def score(self, users: torch.Tensor, reps, items: slice | None = None) -> torch.Tensor:
        """(B, n_items) scores of ``users`` (or (B, len) against the item range ``items``, which
        lets the evaluator stream a large catalogue in blocks)."""
        user_repr, item_repr = reps
        if items is not None:
            item_repr = item_repr[items]
        return user_repr[users] @ item_repr.T

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={getattr(self, k, v)!r}" for k, v in self.hyperparameters().items())
        return f"users={self.n_users}, items={self.n_items}, {hp}"


def get_model_class(name: str) -> type[Recommender]:
    """The model class registered as ``name`` (built-in modules are imported on first use)."""
    import importlib
    key = str(name).lower()
    if key not in MODELS and key in BUILTIN:
        importlib.import_module(f"{__package__}.{BUILTIN[key]}")
    if key not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[key]


def available_models() -> list[str]:
    return sorted(set(MODELS) | set(BUILTIN))
