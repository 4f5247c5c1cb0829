"""Layered, typed configuration (config.py)."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import (TRAIN_DEFAULTS, ConfigError, dump_yaml, load_yaml, parse_overrides,
                             resolve_config)
from mmrecsys.models import MODELS, Recommender
from mmrecsys.models.bpr import BPR


class Toy(Recommender):
    """A model class for configuration tests only (no name: not registered)."""

    train_defaults = {"lr": 0.01, "batch_size": 512, "patience": 5}
    presets = {
        "baby": {"batch_size": 256, "patience": 7, "eval_step": 2, "alpha": 0.6, "layers": 3},
        "sports": {"alpha": 0.9},
    }

    def __init__(self, data, cache=None, *, alpha: float = 0.5, beta: int = 1, gamma: str = "x",
                 layers: int = 2, flag: bool = False, dims: list = [8, 4]):  # noqa: B006
        super().__init__(data, cache)


def test_toy_is_not_registered():
    assert Toy not in MODELS.values()


def test_layering_order():
    file_cfg = {"patience": 9, "eval_step": 3, "beta": 2, "layers": 4}
    overrides = {"eval_step": 4, "gamma": "y", "layers": 5}
    cfg = resolve_config(Toy, "baby", file_cfg, overrides)
    assert cfg["epochs"] == TRAIN_DEFAULTS["epochs"]   # trainer default only
    assert cfg["lr"] == 0.01                            # model train_defaults > trainer default
    assert cfg["batch_size"] == 256                     # preset > train_defaults
    assert cfg["patience"] == 9                         # file > preset > train_defaults
    assert cfg["eval_step"] == 4                        # overrides > file > preset
    assert cfg["alpha"] == 0.6                          # preset > hyperparameter default
    assert cfg["beta"] == 2                             # file > hyperparameter default
    assert cfg["gamma"] == "y"                          # override > hyperparameter default
    assert cfg["layers"] == 5                           # override > file > preset > default
    assert cfg["flag"] is False and cfg["dims"] == [8, 4]
    assert cfg["preset"] == "baby"
    # every trainer key and every hyperparameter is present
    assert set(TRAIN_DEFAULTS) | set(Toy.hyperparameters()) <= set(cfg)


def test_presets_auto_none_and_named():
    assert resolve_config(Toy, "clothing")["preset"] == "none"
    assert resolve_config(Toy, "clothing")["alpha"] == 0.5
    assert resolve_config(Toy, "sports")["alpha"] == 0.9
    cfg = resolve_config(Toy, "baby", overrides={"preset": "none"})
    assert cfg["preset"] == "none" and cfg["alpha"] == 0.5 and cfg["batch_size"] == 512
    cfg = resolve_config(Toy, "mydata", {"preset": "baby"})
    assert cfg["preset"] == "baby" and cfg["alpha"] == 0.6
    with pytest.raises(ConfigError, match="preset 'nope' unknown.*baby, sports"):
        resolve_config(Toy, "baby", overrides={"preset": "nope"})


def test_set_strings_are_coerced_to_the_default_type():
    ov = parse_overrides([
        "lr=1e-3",                      # YAML reads this as a string; coerced to float
        "epochs=5", "eval_step=2.0", "weight_decay=0",
        "neg_exclude_heldout=true", "mask_valid_at_test=yes", "flag=1",
        "valid_metrics=[recall@20, ndcg@20]", "topk=10,20", "lr_scheduler=[0.96, 50]",
        "optimizer=adamw", "gamma=123", "dims=16",
        "cache_dir=/tmp/a=b",           # only the first '=' splits
    ])
    cfg = resolve_config(Toy, "x", overrides=ov)
    assert cfg["lr"] == 1e-3 and isinstance(cfg["lr"], float)
    assert cfg["epochs"] == 5 and isinstance(cfg["epochs"], int)
    assert cfg["eval_step"] == 2 and isinstance(cfg["eval_step"], int)
    assert cfg["weight_decay"] == 0.0 and isinstance(cfg["weight_decay"], float)
    assert cfg["neg_exclude_heldout"] is True and cfg["mask_valid_at_test"] is True
    assert cfg["flag"] is True
    assert cfg["valid_metrics"] == ["recall@20", "ndcg@20"]
    assert cfg["topk"] == [10, 20]
    assert cfg["lr_scheduler"] == [0.96, 50]
    assert cfg["optimizer"] == "adamw"
    assert cfg["gamma"] == "123"
    assert cfg["dims"] == [16]
    assert cfg["cache_dir"] == "/tmp/a=b"


@pytest.mark.parametrize("pair, pattern", [
    ("epochs=abc", r"epochs='abc': expected an integer"),
    ("epochs=2.5", r"epochs=2.5: expected an integer"),
    ("lr=fast", r"lr='fast': expected a number"),
    ("flag=maybe", r"flag='maybe': expected a boolean"),
    ("beta=true", r"beta=True: expected an integer"),
    ("epochs=", r"epochs has no value"),
    ("lr=null", r"lr has no value"),
])
def test_bad_values(pair, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config(Toy, "x", overrides=parse_overrides([pair]))


def test_set_without_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize("key, suggestion", [("epoch", "epochs"), ("patiense", "patience"),
                                             ("alhpa", "alpha"), ("batchsize", "batch_size")])
def test_unknown_key_with_suggestion(key, suggestion):
    with pytest.raises(ConfigError) as ei:
        resolve_config(Toy, "x", overrides={key: 1})
    msg = str(ei.value)
    assert f"unknown configuration key {key!r}" in msg and "Did you mean" in msg
    assert suggestion in msg.split("Did you mean")[1]


def test_unknown_key_in_file_too():
    with pytest.raises(ConfigError, match="unknown configuration key 'n_layer'.*n_layers"):
        from mmrecsys.models.lightgcn import LightGCN
        resolve_config(LightGCN, "x", file_cfg={"n_layer": 3})


@pytest.mark.parametrize("key, value", [("optimizer", "sgd"), ("sampler", "pairs"),
                                        ("negatives_from", "popular")])
def test_bad_choice(key, value):
    with pytest.raises(ConfigError, match=f"{key}={value!r}: choose one of"):
        resolve_config(Toy, "x", overrides={key: value})


@pytest.mark.parametrize("key", ["epochs", "batch_size", "eval_step", "eval_batch_size",
                                 "checkpoint_every"])
def test_positive_counts(key):
    with pytest.raises(ConfigError, match=f"{key}=0: must be an integer of at least 1"):
        resolve_config(Toy, "x", overrides={key: 0})


def test_step_in_backward_range():
    assert resolve_config(Toy, "x", overrides={"step_in_backward": 0})["step_in_backward"] == 0
    with pytest.raises(ConfigError, match="step_in_backward=-1: must be an integer of at least 0"):
        resolve_config(Toy, "x", overrides={"step_in_backward": -1})


def test_hyperparameter_clash_with_trainer_key():
    class Clash(Recommender):
        def __init__(self, data, cache=None, *, lr: float = 0.1):
            super().__init__(data, cache)

    with pytest.raises(ConfigError, match="clash"):
        resolve_config(Clash, "x")


def test_real_models_resolve_with_their_defaults():
    cfg = resolve_config(BPR, "whatever")
    assert cfg["embedding_dim"] == 64 and cfg["reg_weight"] == 1e-4
    assert cfg["epochs"] == 1000 and cfg["patience"] == 20 and cfg["lr"] == 1e-3
    assert cfg["valid_metrics"] == ["recall@20"] and cfg["topk"] == [5, 10, 20, 50]


def test_yaml_roundtrip_and_file_errors(tmp_path):
    cfg = resolve_config(Toy, "baby", overrides={"lr_scheduler": [0.96, 50]})
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_yaml(p) == cfg
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_cli_reports_config_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--model", "bpr", "--out", str(tmp_path / "r"),
                               "--set", "epoch=2", "--quiet"])
    assert res.exit_code == 2
    assert "unknown configuration key 'epoch'" in res.output and "epochs" in res.output
    res = runner.invoke(main, ["train", "--model", "bpr", "--out", str(tmp_path / "r"),
                               "--set", "optimizer=sgd", "--quiet"])
    assert res.exit_code == 2 and "choose one of adam, adamw" in res.output
    res = runner.invoke(main, ["train", "--model", "nosuchmodel", "--quiet"])
    assert res.exit_code == 2 and "unknown model 'nosuchmodel'" in res.output
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("patiense: 3\n")
    res = runner.invoke(main, ["train", "--model", "bpr", "--config", str(cfg_file),
                               "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2 and "patience" in res.output
    assert not (tmp_path / "r").exists()  # nothing was written


def test_a_run_recorded_before_a_trainer_key_existed_keeps_its_configuration():
    from mmrecsys.config import config_differences
    want = resolve_config(Toy, "x")
    have = {k: v for k, v in want.items() if k not in ("step_in_backward", "knn_index")}
    have["versions"] = {"mmrecsys": "0.0"}
    assert config_differences(have, want) == []       # added keys count as their defaults
    assert config_differences(have, {**want, "step_in_backward": 0}) == ["step_in_backward"]
    assert config_differences({**have, "lr": 0.5}, want) == ["lr"]
