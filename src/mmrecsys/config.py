"""Typed configuration: one flat set of keys, resolved in layers.

    trainer defaults ← model's train_defaults ← model hyperparameters (constructor defaults)
        ← dataset preset (model.presets[dataset name]) ← YAML file ← --set key=value

Every key has a default, hence a type; values given as strings (``--set lr=1e-3``) are parsed
as YAML and coerced to that type. An unknown key is an error naming the closest known keys.
"""
from __future__ import annotations

import difflib
import json
import math
import pathlib
from typing import Any

import yaml

from .errors import ConfigError

#: the shared trainer's settings and their defaults (``enoche/MMRec`` ``src/configs/overall.yaml``)
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1000,
    "batch_size": 2048,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "optimizer": "adam",           # adam | adamw
    "lr_scheduler": [1.0, 50],     # lr_e = lr · a^(e / b)
    "eval_step": 1,
    "patience": 20,                # stop when consecutive non-improving evaluations > patience
    "seed": 999,
    "sampler": "interactions",     # interactions (MMRec) | users (MMHCL) | user_pairs (HCCF, SHT)
    "negatives_from": "train_items",  # train_items (MMRec) | all_items
    "neg_exclude_heldout": False,  # compatibility: negatives avoid valid/test items (a leak)
    "valid_metrics": ["recall@20"],  # improvement if any beats its running max
    "valid_round": 4,              # decimals of valid metrics before comparing; null = raw floats
    "topk": [5, 10, 20, 50],
    "eval_batch_size": 4096,
    "mask_valid_at_test": False,
    "extra_metrics": [],           # e.g. [ndcg_mmhcl]
    "preset": "auto",              # auto (by dataset name) | none | a preset name
    "cache_dir": "",               # graph cache ("" = $MMRECSYS_CACHE or ~/.cache/mmrecsys)
    "checkpoint_every": 1,         # epochs between resume checkpoints
    "modalities": [],              # feature files to use, in order ([] = every *_feat.npy, by name)
    "keep_users_without_train": False,  # evaluate held-out users with no training row (MMHCL)
    "knn_backend": "faiss",        # faiss (flat: exact, ties decided by torch) | torch
    "knn_index": "flat",           # flat (exact) | ivf | hnsw (approximate; faiss only)
    "step_in_backward": 1 << 22,   # parameters this large are updated inside backward (0 = off)
    "cpu_matmul": "auto",          # auto | mkl | onednn: the library of CPU float32 products
}

#: one-line meaning of each trainer key (``mmrecsys models NAME`` prints them)
TRAIN_HELP: dict[str, str] = {
    "epochs": "maximum number of training epochs",
    "batch_size": "training triples (or users, for the users and user_pairs samplers) per step",
    "lr": "learning rate of the optimiser",
    "weight_decay": "optimiser weight decay (AdamW: decoupled)",
    "optimizer": "adam or adamw",
    "lr_scheduler": "[a, b]: the learning rate at epoch e is lr * a ** (e / b)",
    "eval_step": "evaluate on validation every N epochs",
    "patience": "stop after more than N consecutive evaluations without improvement",
    "seed": "seed of initialisation, sampling and inference noise",
    "sampler": ("interactions (one triple per training row, MMRec), users (MMHCL) or user_pairs "
                "(users with up to samples_per_user pairs each, HCCF's and SHT's authors)"),
    "negatives_from": "draw negatives from train_items (MMRec) or all_items",
    "neg_exclude_heldout": "compatibility: negatives avoid valid/test items (a leak; off)",
    "valid_metrics": "an evaluation improves when any of these beats its running best",
    "valid_round": "decimals the valid metrics are rounded to before comparing (null: raw)",
    "topk": "list lengths K of the reported metrics",
    "eval_batch_size": "users ranked per block in evaluation",
    "mask_valid_at_test": "also mask validation items when ranking for test",
    "extra_metrics": "additional metrics, e.g. [ndcg_mmhcl] (MMHCL's own NDCG)",
    "preset": "auto (by dataset name), none, or a preset name",
    "cache_dir": "graph cache folder ('' = $MMRECSYS_CACHE or ~/.cache/mmrecsys)",
    "checkpoint_every": "epochs between resume checkpoints (last.pt)",
    "modalities": "feature files to use, in order ([] = every *_feat.npy, sorted by name)",
    "keep_users_without_train": "evaluate held-out users with no training row (as MMHCL)",
    "knn_backend": "kNN graph search: faiss (flat: exact, near-ties decided by the torch path, "
                   "the references' torch.topk) or torch (used when FAISS is absent)",
    "knn_index": "faiss index: flat (exact), ivf or hnsw (approximate, for huge catalogues)",
    "step_in_backward": "parameters of at least N values take their optimiser step in backward, "
                        "as soon as their gradient is complete (same update, less memory; 0: off)",
    "cpu_matmul": "library of CPU float32 matrix products of fixed shape: auto (oneDNN on AMD "
                  "processors, where MKL is slow, when checked to compute exact float32; else "
                  "MKL), mkl (PyTorch's default) or onednn",
}

#: keys whose value may be null (YAML ``null`` / ``--set key=null``)
NULLABLE = {"valid_round"}

CHOICES = {
    "cpu_matmul": ("auto", "mkl", "onednn"),
    "knn_backend": ("torch", "faiss"),
    "knn_index": ("flat", "ivf", "hnsw"),
    "optimizer": ("adam", "adamw"),
    "sampler": ("interactions", "users", "user_pairs"),
    "negatives_from": ("train_items", "all_items"),
}


def parse_value(text: str):
    """Parse a command-line value as YAML (numbers, booleans, lists); bare words stay strings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs) -> dict[str, Any]:
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: expected key=value, e.g. --set lr=0.001")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def _coerce(key: str, value, default):
    if default is None or (value is None and key in NULLABLE):
        return value
    if value is None:
        raise ConfigError(f"{key} has no value (an empty --set {key}= or YAML 'null'); give a "
                          f"{type(default).__name__} (default {default!r})")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            return [parse_value(x.strip()) for x in value.strip("[]").split(",") if x.strip()]
        return [value]
    else:
        return value
    raise ConfigError(f"{key}={value!r}: expected {_a(default)} (default {default!r})")


def _a(default) -> str:
    """'an integer', 'a number', ... for a default value's type (for messages)."""
    if isinstance(default, bool):
        return "a boolean (true or false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list, e.g. [1, 2]"
    return f"a {type(default).__name__}"


def canonical_keys(model_cls, cfg: dict) -> dict[str, Any]:
    """``cfg`` with every alias of a hyperparameter (``model_cls.aliases``, e.g. ``embed_size``)
    renamed to its canonical key (``embedding_dim``). An alias and its key both given must agree."""
    aliases = getattr(model_cls, "aliases", {})
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = aliases.get(k, k)
        if key in out and out[key] != v:
            names = " and ".join(f"{n}={cfg[n]!r}" for n in cfg if aliases.get(n, n) == key)
            raise ConfigError(f"{names} name the same key of {model_cls.name}, {key}, with different "
                              f"values; give one")
        out[key] = v
    return out


def resolve_config(model_cls, dataset_name: str, file_cfg: dict | None = None,
                   overrides: dict | None = None, n_items: int | None = None) -> dict[str, Any]:
    """The fully resolved flat configuration for ``model_cls`` on ``dataset_name``.

    ``n_items`` (the dataset's) lets :func:`validate_config` check ``topk`` against it. A
    ``versions`` entry (what a run's config.yaml records) is ignored.
    Keys are canonical: an alias of a hyperparameter (``model_cls.aliases``) given in the file,
    the overrides or a preset is renamed to its key, so ``embed_size=32`` and
    ``embedding_dim=32`` configure MMHCL alike (an override beats the file either way).
    """
    defaults: dict[str, Any] = dict(TRAIN_DEFAULTS)
    defaults.update(model_cls.train_defaults)
    hp = model_cls.hyperparameters()
    clash = (set(hp) | set(getattr(model_cls, "aliases", {}))) & set(TRAIN_DEFAULTS)
    if clash:
        raise ConfigError(f"{model_cls.__name__} hyperparameters clash with trainer keys: {clash}")
    defaults.update(hp)
    known = set(defaults) | {"model", "data"}
    user = canonical_keys(model_cls, file_cfg or {})
    user.update(canonical_keys(model_cls, overrides or {}))
    user.pop("versions", None)  # recorded in config.yaml for information only
    for k in user:
        if k not in known:
            near = difflib.get_close_matches(k, sorted(known), n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown configuration key {k!r} for model {model_cls.name}.{hint} "
                              f"(`mmrecsys models {model_cls.name}` lists every key)")
    preset_name = user.get("preset", defaults["preset"])
    cfg = dict(defaults)
    presets = {str(k).lower(): (k, v) for k, v in model_cls.presets.items()}  # case-insensitive
    if preset_name == "auto":
        name, preset = presets.get(str(dataset_name).lower(), ("none", {}))
        cfg["preset"] = name
    elif preset_name in ("none", "", None):
        preset = {}
        cfg["preset"] = "none"
    else:
        if str(preset_name).lower() not in presets:
            raise ConfigError(f"preset {preset_name!r} unknown for {model_cls.name}; available: "
                              f"{', '.join(model_cls.presets) or 'none'}")
        cfg["preset"], preset = presets[str(preset_name).lower()]
    for layer in (canonical_keys(model_cls, preset), {k: v for k, v in user.items() if k != "preset"}):
        for k, v in layer.items():
            if k in ("model", "data"):
                cfg[k] = v
                continue
            cfg[k] = _coerce(k, v, defaults[k])
    validate_config(cfg, n_items=n_items, model_cls=model_cls)
    return cfg


#: model hyperparameters checked by name, whatever the model (constructors check the rest)
_SIZE_KEYS = ("embedding_size", "embed_size", "embedding_dim", "hyper_num", "rank")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_differences(have: dict, want: dict) -> list[str]:
    """Keys in which a run's recorded configuration ``have`` (its config.yaml) differs from
    ``want``, compared as JSON. ``versions`` is ignored, and a trainer key the recording lacks
    (added to the package after the run was made, with the old behaviour as its default) counts
    as its default, so upgrading does not orphan finished runs."""
    a = json.loads(json.dumps({k: v for k, v in have.items() if k != "versions"}))
    b = json.loads(json.dumps({k: v for k, v in want.items() if k != "versions"}))
    for k, v in TRAIN_DEFAULTS.items():
        if k not in a and k in b:
            a[k] = json.loads(json.dumps(v))
    return sorted(k for k in set(a) | set(b) if json.dumps(a.get(k)) != json.dumps(b.get(k)))


def validate_config(cfg: dict, n_items: int | None = None, model_cls=None) -> None:
    """Check the ranges of the trainer's keys (and generic model keys); raise ConfigError.

    Checks run in the order a user would fix them: ``topk`` before ``valid_metrics``, which
    refers to it. ``n_items`` (when known) bounds ``topk``.
    """
    for k, choices in CHOICES.items():
        if k in cfg and cfg[k] not in choices:
            raise ConfigError(f"{k}={cfg[k]!r}: choose one of {', '.join(choices)}")
    for k in ("epochs", "batch_size", "eval_step", "eval_batch_size", "checkpoint_every"):
        if k in cfg and (not _is_int(cfg[k]) or cfg[k] < 1):
            raise ConfigError(f"{k}={cfg[k]!r}: must be an integer of at least 1")
    if "patience" in cfg and (not _is_int(cfg["patience"]) or cfg["patience"] < 0):
        raise ConfigError(f"patience={cfg['patience']!r}: must be an integer of at least 0 "
                          f"(the number of non-improving evaluations tolerated)")
    if "step_in_backward" in cfg and (not _is_int(cfg["step_in_backward"]) or cfg["step_in_backward"] < 0):
        raise ConfigError(f"step_in_backward={cfg['step_in_backward']!r}: must be an integer of at "
                          f"least 0 (parameters of at least that many values; 0: off)")
    if "seed" in cfg and (not _is_int(cfg["seed"]) or not 0 <= cfg["seed"] < 2 ** 63):
        raise ConfigError(f"seed={cfg['seed']!r}: must be an integer from 0 to 2**63-1")
    for k in ("lr", "weight_decay"):
        if k in cfg and (not _is_num(cfg[k]) or not math.isfinite(cfg[k]) or cfg[k] < 0):
            raise ConfigError(f"{k}={cfg[k]!r}: must be a finite number of at least 0")
    if "lr_scheduler" in cfg:
        sch = cfg["lr_scheduler"]
        if (not isinstance(sch, (list, tuple)) or len(sch) != 2 or not all(_is_num(x) for x in sch)
                or not all(math.isfinite(x) and x > 0 for x in sch)):
            raise ConfigError(f"lr_scheduler={sch!r}: must be two positive numbers [a, b] "
                              f"(lr at epoch e = lr * a ** (e / b)), e.g. --set lr_scheduler=[0.96,50]")
    if "topk" in cfg:
        topk = cfg["topk"]
        if not isinstance(topk, (list, tuple)) or not topk or not all(_is_int(k) and k >= 1 for k in topk):
            raise ConfigError(f"topk={topk!r}: must be a non-empty list of integers of at least 1, "
                              f"e.g. --set topk=[5,10,20,50]")
        if n_items is not None and max(topk) > n_items:
            keep = sorted({k for k in topk if k <= n_items}) or [n_items]
            hint = f"--set topk=[{','.join(map(str, keep))}]"
            vm = [str(m) for m in cfg.get("valid_metrics", [])]
            if any(m.partition("@")[2] not in {str(k) for k in keep} for m in vm):
                names = sorted({m.partition("@")[0] for m in vm}) or ["recall"]
                hint += f" --set valid_metrics=[{','.join(f'{n}@{max(keep)}' for n in names)}]"
            raise ConfigError(f"topk={list(topk)}: asks for lists longer than the {n_items} items "
                              f"of the dataset; lower it, e.g. {hint}")
    if "valid_metrics" in cfg:
        vm = cfg["valid_metrics"]
        if not isinstance(vm, (list, tuple)) or not vm:
            raise ConfigError(f"valid_metrics={vm!r}: must be a non-empty list, e.g. [recall@20]")
        for m in vm:
            name, _, k = str(m).partition("@")
            if not k.isdigit() or int(k) not in cfg.get("topk", ()) or name not in (
                    "recall", "ndcg", "precision", "map", *cfg.get("extra_metrics", [])):
                raise ConfigError(f"valid_metrics entry {m!r} is not computed: it must be "
                                  f"<metric>@<k> with k in topk={cfg.get('topk')} (e.g. recall@20)")
    if cfg.get("valid_round") is not None and (not _is_int(cfg["valid_round"])
                                               or not 0 <= cfg["valid_round"] <= 15):
        raise ConfigError(f"valid_round={cfg['valid_round']!r}: give 0..15 decimals, or null to "
                          f"compare raw floats")
    if "modalities" in cfg:
        if not isinstance(cfg["modalities"], (list, tuple)):
            raise ConfigError(f"modalities={cfg['modalities']!r}: must be a list of feature names, "
                              f"e.g. [image_feat, text_feat] (empty = all)")
        cfg["modalities"] = [str(m) for m in cfg["modalities"]]
    if model_cls is not None:
        for k in model_cls.hyperparameters():
            if k in cfg:
                _check_model_key(k, cfg[k])


def _check_model_key(k: str, v) -> None:
    """Ranges every model shares by key name: sizes ≥ 1, layer counts ≥ 0, finite numbers,
    probabilities in [0, 1]."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{k}={v!r}: must be a finite number")
    if not _is_num(v):
        return
    if k in _SIZE_KEYS or k.endswith(("_size", "knn_k")):
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{k}={v!r}: must be an integer of at least 1")
    elif "layer" in k:
        if not _is_int(v) or v < 0:
            raise ConfigError(f"{k}={v!r}: must be an integer of at least 0 (a number of layers)")
    elif k.endswith(("drop", "keep_rate")):
        if not 0 <= v <= 1:
            raise ConfigError(f"{k}={v!r}: must be a probability between 0 and 1")
    elif k in ("tau", "temperature", "cl_tmp"):
        if v <= 0:
            raise ConfigError(f"{k}={v!r}: must be a positive number (a temperature)")
    elif k.endswith(("weight", "regs", "ratio")):
        if v < 0:
            raise ConfigError(f"{k}={v!r}: must be at least 0 (a loss weight)")


def run_config(model: str | None, data, file_cfg: dict | None = None,
               overrides: dict | None = None) -> dict[str, Any]:
    """The one resolution of a run's configuration, model and dataset included.

    ``model``: the model name (wins over a ``model:`` key of ``file_cfg``; default lightgcn).
    ``data``: the :class:`~mmrecsys.data.Dataset` (its name picks the preset; its folder is
    recorded as ``data``, or ``synthetic`` / its name for in-memory data). ``file_cfg``'s
    ``data`` and ``versions`` keys are the caller's business and are ignored here.
    """
    from .models import get_model_class
    file_cfg = dict(file_cfg or {})
    file_model = file_cfg.pop("model", None)
    file_cfg.pop("data", None)
    file_cfg.pop("versions", None)
    cls = get_model_class(model or file_model or "lightgcn")
    cfg = resolve_config(cls, data.name, file_cfg, overrides, n_items=data.n_items)
    cfg["model"] = cls.name
    path = getattr(data, "path", None)
    cfg["data"] = str(pathlib.Path(path).resolve()) if path is not None else data.name
    return cfg


def model_kwargs(model_cls, cfg: dict) -> dict[str, Any]:
    """The constructor keywords of ``model_cls`` from a configuration (aliases accepted, so a
    ``config.yaml`` written before a key was renamed still loads)."""
    cfg = canonical_keys(model_cls, cfg)
    return {k: cfg[k] for k in model_cls.hyperparameters()}


def load_yaml(path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = yaml.safe_load(fh) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); re-save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where} ({problem}); a config file holds "
                          f"lines of key: value, e.g. 'lr: 0.001'") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
    return obj


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
