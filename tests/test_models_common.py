"""What every model shares: canonical key names and their aliases, presets that reach the
constructed model, reset_parameters."""
from __future__ import annotations

import ast
import inspect
import re

import pytest
import torch

from mmrecsys.config import (TRAIN_DEFAULTS, ConfigError, model_kwargs, parse_overrides,
                             resolve_config)
from mmrecsys.data.synthetic import make_synthetic
from mmrecsys.models import available_models, get_model_class

MODELS = available_models()
#: small settings so every model builds in well under a second on the tiny data
SMALL = {"bpr": {}, "lightgcn": {}, "lgmrec": {"hyper_num": 2}, "mmhcl": {"knn_k": 3},
         "rearm": {"user_knn_k": 5, "item_knn_k": 3}, "vbpr": {}, "bm3": {},
         "freedom": {"knn_k": 3}, "lattice": {"knn_k": 3},
         "mgcn": {"knn_k": 3}, "smore": {"image_knn_k": 3, "text_knn_k": 3},
         "ncl": {"num_clusters": 4},
         # one line per further model that needs smaller settings
         }


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, seed=2)


def build(name, data, **overrides):
    cls = get_model_class(name)
    cfg = resolve_config(cls, data.name, overrides={**SMALL.get(name, {}), **overrides})
    torch.manual_seed(0)
    return cls(data, None, **model_kwargs(cls, cfg)), cfg


def user_width(model) -> int:
    model.eval()
    with torch.no_grad():
        return model.representations()[0].shape[1]


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", MODELS)
def test_canonical_names_and_aliases_are_well_formed(name):
    cls = get_model_class(name)
    hp = cls.hyperparameters()
    assert "embedding_dim" in hp
    for alias, key in cls.aliases.items():
        assert key in hp, f"{name}: alias {alias} -> {key}, not a hyperparameter"
        assert alias not in hp and alias not in TRAIN_DEFAULTS
    for key in ("embedding_size", "embed_size", "tau", "cl_tmp", "num_layer", "ui_layers",
                "n_ui_layers"):
        assert key not in hp, f"{name} still uses the name {key}"


@pytest.mark.parametrize("name", MODELS)
def test_set_embedding_dim_reaches_every_model(name, data):
    cls = get_model_class(name)
    cfg = resolve_config(cls, data.name, overrides=parse_overrides(["embedding_dim=128"]))
    assert cfg["embedding_dim"] == 128
    small, _ = build(name, data, embedding_dim=8)
    large, _ = build(name, data, embedding_dim=12)
    assert (small.embedding_dim, large.embedding_dim) == (8, 12)
    # the representations scale with d (REARM concatenates M + 1 blocks of width d)
    assert user_width(small) * 12 == user_width(large) * 8


ALIAS_CASES = [(name, alias, key) for name in MODELS
               for alias, key in get_model_class(name).aliases.items()]


@pytest.mark.parametrize("name,alias,key", ALIAS_CASES)
def test_every_alias_reaches_the_model(name, alias, key, data):
    cls = get_model_class(name)
    default = cls.hyperparameters()[key]
    value = default * 2 if key != "temperature" else default / 2
    model, cfg = build(name, data, **{alias: value})
    assert cfg[key] == value and alias not in cfg           # resolved to the canonical key
    assert getattr(model, key) == value
    # a configuration written with the alias (e.g. an older config.yaml) builds the same model
    old = {alias if k == key else k: v for k, v in cfg.items()}
    assert model_kwargs(cls, old)[key] == value


def test_official_names_configure_the_model_itself(data):
    lgm, _ = build("lgmrec", data, embedding_size=6, n_ui_layers=0, tau=0.5)
    assert lgm.user_embedding.shape[1] == 6 and lgm.n_layers == 0 and lgm.temperature == 0.5
    mm, _ = build("mmhcl", data, embed_size=6, UI_layers=1, User_layers=1)
    assert mm.uu_embedding.shape[1] == 6 and (mm.n_layers, mm.user_layers) == (1, 1)
    re_, _ = build("rearm", data, num_layer=1, cl_tmp=0.3)
    assert (re_.n_layers, re_.temperature) == (1, 0.3)


def test_alias_conflicts_and_precedence():
    cls = get_model_class("mmhcl")
    with pytest.raises(ConfigError, match="embed_size=32 and embedding_dim=16"):
        resolve_config(cls, "x", overrides={"embed_size": 32, "embedding_dim": 16})
    assert resolve_config(cls, "x", overrides={"embed_size": 32, "embedding_dim": 32})["embedding_dim"] == 32
    # an override beats the file, whichever of the two names each uses
    cfg = resolve_config(cls, "x", file_cfg={"embedding_dim": 16}, overrides={"embed_size": 24})
    assert cfg["embedding_dim"] == 24
    cfg = resolve_config(cls, "x", file_cfg={"embed_size": 16}, overrides={"embedding_dim": 24})
    assert cfg["embedding_dim"] == 24


# ---------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", MODELS)
def test_train_defaults_reach_the_configuration(name):
    cls = get_model_class(name)
    cfg = resolve_config(cls, "no-such-dataset")
    assert cfg["preset"] == "none"
    for k, v in cls.train_defaults.items():
        assert cfg[k] == v, k
    for k, v in cls.hyperparameters().items():
        assert cfg[k] == v, k


PRESET_CASES = [(name, preset) for name in MODELS for preset in get_model_class(name).presets]


@pytest.mark.parametrize("name,preset", PRESET_CASES)
def test_preset_reaches_the_constructed_model(name, preset, data):
    cls = get_model_class(name)
    values = cls.presets[preset]
    cfg = resolve_config(cls, preset)                       # chosen by the dataset name
    assert cfg["preset"] == preset
    defaults = resolve_config(cls, preset, overrides={"preset": "none"})
    torch.manual_seed(0)
    model = cls(data, None, **model_kwargs(cls, cfg))
    hp = cls.hyperparameters()
    for k, v in values.items():
        assert cfg[k] == v
        if k in hp:
            assert getattr(model, k) == v, k
    # an explicit setting beats the preset (the Baby presets equal the defaults: nothing to beat)
    for k in [k for k, v in values.items() if defaults[k] != v][:1]:
        assert resolve_config(cls, preset, overrides={k: defaults[k]})[k] == defaults[k]


# ---------------------------------------------------------------------------- reset_parameters
@pytest.mark.parametrize("name", MODELS)
def test_reset_parameters_redraws_every_parameter_as_the_constructor(name, data):
    fresh, _ = build(name, data)                            # built under torch.manual_seed(0)
    used, _ = build(name, data)
    with torch.no_grad():
        for p in used.parameters():
            p.add_(1.0)
    torch.manual_seed(0)
    if "data" in inspect.signature(used.reset_parameters).parameters:
        used.reset_parameters(data)                         # also restores the feature tables
    else:
        used.reset_parameters()
    for (k, a), b in zip(fresh.named_parameters(), used.parameters()):
        assert torch.equal(a, b), f"{name}.{k} not reset"


# ---------------------------------------------------------------------------- documentation
@pytest.mark.parametrize("name", MODELS)
def test_every_hyperparameter_is_documented_with_its_default(name):
    cls = get_model_class(name)
    hp = cls.hyperparameters()
    desc = cls.describe_hyperparameters()
    assert list(desc) == list(hp)
    for key, default in hp.items():
        m = re.search(r"\(default: ``([^`]*)``\)", desc[key])
        assert m, f"{name}.{key}: no '(default: ``…``)' in its Args entry: {desc[key]!r}"
        assert ast.literal_eval(m.group(1)) == default, (key, m.group(1), default)
        assert len(desc[key]) > len(m.group(0)) + 10, f"{name}.{key}: no meaning given"
    for alias, key in cls.aliases.items():
        assert f"``{alias}``" in desc[key]


def test_describe_hyperparameters_parses_the_args_section():
    from mmrecsys.models.base import Recommender

    class Doc(Recommender):
        """Summary.

        Args:
            width (int): how wide, continued
                on a second line. (default: ``3``)
            undocumented_here: x (default: ``1``)

        Returns nothing.
        """
        aliases = {"w": "width"}

        def __init__(self, data, cache=None, *, width: int = 3, depth: int = 2):
            super().__init__(data, cache)

    d = Doc.describe_hyperparameters()
    assert d == {"width": "how wide, continued on a second line. (default: ``3``) "
                          "Also accepted as ``w``.", "depth": ""}


def test_no_docstring_cites_files_outside_the_repository():
    import pathlib

    import mmrecsys
    root = pathlib.Path(mmrecsys.__file__).parent
    bad = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if re.search(r"spec §|protocol §|spec/\w+\.md|shared/spec", line)]
    assert not bad, bad
