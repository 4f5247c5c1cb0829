"""Typed configuration: one flat set of keys, resolved in layers.

    trainer defaults ← model's train_defaults ← model hyperparameters (constructor defaults)
        ← dataset preset (model.presets[dataset name]) ← YAML file ← --set key=value

Every key has a default, hence a type; values given as strings (``--set lr=1e-3``) are parsed
as YAML and coerced to that type. An unknown key is an error naming the closest known keys.
"""
from __future__ import annotations

import difflib
from typing import Any

import yaml

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
    "sampler": "interactions",     # interactions (MMRec) | users (MMHCL)
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
}

#: keys whose value may be null (YAML ``null`` / ``--set key=null``)
NULLABLE = {"valid_round"}

CHOICES = {
    "optimizer": ("adam", "adamw"),
    "sampler": ("interactions", "users"),
    "negatives_from": ("train_items", "all_items"),
}


class ConfigError(ValueError):
    pass


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
    raise ConfigError(f"{key}={value!r}: expected a {type(default).__name__} "
                      f"(default {default!r})")


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
                   overrides: dict | None = None) -> dict[str, Any]:
    """The fully resolved flat configuration for ``model_cls`` on ``dataset_name``.

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
    for k, choices in CHOICES.items():
        if cfg[k] not in choices:
            raise ConfigError(f"{k}={cfg[k]!r}: choose one of {', '.join(choices)}")
    for m in cfg["valid_metrics"]:
        name, _, k = str(m).partition("@")
        if not k.isdigit() or int(k) not in cfg["topk"] or name not in (
                "recall", "ndcg", "precision", "map", *cfg["extra_metrics"]):
            raise ConfigError(f"valid_metrics entry {m!r} is not computed: it must be "
                              f"<metric>@<k> with k in topk={cfg['topk']} (e.g. recall@20)")
    for k in ("epochs", "batch_size", "eval_step", "eval_batch_size"):
        if cfg[k] < 1:
            raise ConfigError(f"{k}={cfg[k]}: must be at least 1")
    if cfg["valid_round"] is not None and not 0 <= cfg["valid_round"] <= 15:
        raise ConfigError(f"valid_round={cfg['valid_round']}: give 0..15 decimals, or null to "
                          f"compare raw floats")
    cfg["modalities"] = [str(m) for m in cfg["modalities"]]
    return cfg


def model_kwargs(model_cls, cfg: dict) -> dict[str, Any]:
    """The constructor keywords of ``model_cls`` from a configuration (aliases accepted, so a
    ``config.yaml`` written before a key was renamed still loads)."""
    cfg = canonical_keys(model_cls, cfg)
    return {k: cfg[k] for k in model_cls.hyperparameters()}


def load_yaml(path) -> dict:
    with open(path, encoding="utf-8") as fh:
        obj = yaml.safe_load(fh) or {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value")
    return obj


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
