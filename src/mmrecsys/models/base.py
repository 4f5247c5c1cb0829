"""The interface every model implements, and the registry that finds models by name.

A model is a ``torch.nn.Module`` built from a :class:`~mmrecsys.data.Dataset` (in memory: it
never reads files) and an optional :class:`~mmrecsys.graphs.GraphCache`. Its hyperparameters
are the keyword arguments of its constructor, with the spec's defaults; the configuration
system reads them from the signature, so a constructor argument *is* a config key.

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
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import Dataset
from ..errors import UnknownModelError
from ..graphs import GraphCache

MODELS: dict[str, type["Recommender"]] = {}
#: built-in models: registry name -> module of this package (imported on first use)
BUILTIN = {"bpr": "bpr", "lightgcn": "lightgcn", "lgmrec": "lgmrec", "mmhcl": "mmhcl",
           "rearm": "rearm"}


class Recommender(nn.Module):
    #: registry name (lower case), e.g. "lightgcn"
    name: ClassVar[str] = ""
    #: trainer settings this model brings as its own defaults (lr, batch_size, sampler, ...)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: dataset name -> overrides of hyperparameters and trainer settings (spec presets)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: config key -> candidate values: the grid of the official code / paper (`mmrecsys sweep`)
    search_space: ClassVar[dict[str, list]] = {}
    #: a model that needs at least one modality feature matrix
    requires_features: ClassVar[bool] = False
    #: behaviour a user should know of, printed by ``mmrecsys models NAME``
    notes: ClassVar[str] = ""

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

    # -- hooks the trainer calls ----------------------------------------------
    def pre_epoch(self, epoch: int) -> None:
        """Called before each training epoch."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_repr (n_users, d), item_repr (n_items, d)) for full ranking."""
        raise NotImplementedError

    def score(self, users: torch.Tensor, reps) -> torch.Tensor:
        user_repr, item_repr = reps
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
