"""One ranking per reported result, seeded stochastic inference, the last-epoch evaluation,
explicit modalities and the MMHCL evaluation population."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import load_dataset
from mmrecsys.data.dataset import DataError
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.evaluation import eval_seed, rank_users
from mmrecsys.train import build_model, fit
from mmrecsys.config import resolve_config
from mmrecsys.models import get_model_class
from topk_recompute import recompute_from_topk

TINY = {"batch_size": 256, "lr": 0.01, "seed": 3, "topk": [5, 10, 20]}
PER_MODEL = {
    "lightgcn": {"epochs": 2},
    "bpr": {"epochs": 2},
    "lgmrec": {"epochs": 2, "hyper_num": 4},
    "mmhcl": {"epochs": 3, "knn_k": 3},                 # evaluates every 5 epochs: last epoch
    "rearm": {"epochs": 1, "embedding_dim": 16} ,
}


@pytest.fixture(scope="module", autouse=True)
def _env(isolated_cache):
    """Before any other fixture of the module: its graph caches in a temporary folder."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 120, 80, seed=1)


def _model_overrides(name):
    return {**TINY, **PER_MODEL[name]}


@pytest.mark.parametrize("name", sorted(PER_MODEL))
def test_reported_metrics_come_from_the_written_ranking(name, data_dir, tmp_path):
    data = load_dataset(data_dir)
    run = tmp_path / name
    res = fit(data, name, _model_overrides(name), run_dir=run, log=None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] is not None and metrics["best_epoch"] >= 0
    again = recompute_from_topk(run, data, TINY["topk"], metrics=("recall", "ndcg"))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
    assert res["test"] == metrics["test"]
    # `evaluate` replays the best test pass exactly, every time
    r1 = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    r2 = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r1.exit_code == 0, r1.output
    assert r1.output == r2.output
    rows = {ln.split()[0]: [float(x) for x in ln.split()[1:]]
            for ln in r1.output.splitlines()[2:] if ln.strip()}
    for j, k in enumerate(TINY["topk"]):
        assert rows["recall"][j] == pytest.approx(metrics["test"][f"recall@{k}"], abs=5e-5)
        assert rows["ndcg"][j] == pytest.approx(metrics["test"][f"ndcg@{k}"], abs=5e-5)


def test_run_too_short_for_an_evaluation_evaluates_its_last_epoch(data_dir, tmp_path):
    data = load_dataset(data_dir)
    run = tmp_path / "short"
    res = fit(data, "lightgcn", {**TINY, "epochs": 2, "eval_step": 5}, run_dir=run, log=None)
    assert res["best_epoch"] == 1 and res["test"] is not None
    assert [("valid_recall@20" in h) for h in res["history"]] == [False, True]
    # with an evaluation inside the run, a last non-evaluation epoch is not evaluated (MMRec)
    res = fit(data, "lightgcn", {**TINY, "epochs": 3, "eval_step": 2}, log=None)
    assert [("valid_recall@20" in h) for h in res["history"]] == [False, True, False]


def test_lgmrec_inference_noise_per_pass_and_per_block(data_dir):
    data = load_dataset(data_dir)
    cls = get_model_class("lgmrec")
    cfg = resolve_config(cls, data.name, None, {**TINY, "hyper_num": 4})
    cfg["model"] = "lgmrec"
    torch.manual_seed(0)
    net = build_model(data, cfg, "cpu")
    assert net.stochastic_inference
    users = np.arange(data.n_users)
    a = rank_users(net, data, users, 20, seed=11, chunk_size=40).top
    b = rank_users(net, data, users, 20, seed=11, chunk_size=40).top
    c = rank_users(net, data, users, 20, seed=12, chunk_size=40).top
    one = rank_users(net, data, users, 20, seed=11, chunk_size=10 ** 6).top
    assert torch.equal(a, b)                 # a seed replays the pass
    assert not torch.equal(a, c)             # another seed, another draw
    assert torch.equal(a[:40], one[:40])     # the first block draws first, like a single pass
    assert not torch.equal(a[40:], one[40:])  # later blocks get their own draws
    state = torch.get_rng_state()
    rank_users(net, data, users, 20, seed=11)
    assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched
    assert eval_seed(3, 5, "valid") != eval_seed(3, 5, "test") != eval_seed(3, 6, "test")
    net.deterministic_inference = True
    assert not net.stochastic_inference
    d1 = rank_users(net, data, users, 20, seed=1, chunk_size=40).top
    d2 = rank_users(net, data, users, 20, seed=2).top
    assert torch.equal(d1, d2)


def test_recommend_is_repeatable_for_a_stochastic_model(data_dir, tmp_path):
    run = tmp_path / "lgm"
    fit(load_dataset(data_dir), "lgmrec", {**TINY, "epochs": 1, "hyper_num": 4}, run_dir=run,
        log=None)
    args = ["recommend", str(run), "-u", "0", "-u", "5", "-k", "7", "--json", "--device", "cpu"]
    out1 = CliRunner().invoke(main, args)
    out2 = CliRunner().invoke(main, args)
    assert out1.exit_code == 0, out1.output
    assert out1.output == out2.output and len(json.loads(out1.output)["0"]) == 7


def test_modalities_key_selects_and_orders(data_dir, tmp_path):
    data = load_dataset(data_dir)
    assert data.modalities == sorted(data.modalities)
    logs = []
    res = fit(data, "lgmrec", {**TINY, "epochs": 1, "hyper_num": 4,
                               "modalities": ["text_feat", "image_feat"]}, log=logs.append)
    assert res["model"].modalities == ["text_feat", "image_feat"]
    assert any(m.startswith("modalities: text_feat (") and "image_feat (" in m for m in logs)
    res = fit(data, "lgmrec", {**TINY, "epochs": 1, "hyper_num": 4, "modalities": ["text_feat"]},
              log=None)
    assert res["model"].modalities == ["text_feat"]
    with pytest.raises(DataError, match="audio_feat.*not in dataset"):
        fit(data, "lgmrec", {**TINY, "epochs": 1, "modalities": ["audio_feat"]}, log=None)


def test_preset_is_logged(data_dir):
    logs = []
    fit(load_dataset(data_dir), "lightgcn", {**TINY, "epochs": 1}, log=logs.append)
    assert any(m.startswith("preset: none (no preset of lightgcn matches dataset 'syn')")
               for m in logs)


def test_users_without_train_are_evaluated_only_when_asked(tmp_path):
    base = make_synthetic(60, 40, seed=2)
    folder = tmp_path / "d"
    from mmrecsys.data.dataset import dataset_to_arrays, write_dataset
    u, i, l = dataset_to_arrays(base)
    u = np.concatenate([u, [60, 60, 61]])      # two users with held-out rows only
    i = np.concatenate([i, [1, 2, 3]])
    l = np.concatenate([l, [1, 2, 2]])
    write_dataset(folder, u, i, l, base.features)
    with pytest.warns(UserWarning, match="keep_users_without_train"):
        data = load_dataset(folder)
    over = {**TINY, "epochs": 1}
    mmrec = fit(data, "lightgcn", over, log=None)
    mmhcl = fit(data, "lightgcn", {**over, "keep_users_without_train": True}, log=None)
    n_test = lambda d: int((np.diff(d.test.indptr) > 0).sum())  # noqa: E731
    assert n_test(data) + 2 == n_test(data.with_users_without_train())
    assert mmrec["test"] != mmhcl["test"]
