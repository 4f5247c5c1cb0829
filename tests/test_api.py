"""The public Python API: the README snippet, recommend/similar_items semantics, save/load."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import mmrecsys as mr


@pytest.fixture(scope="module", autouse=True)
def _env(isolated_cache):
    """Before any other fixture of the module: its graph caches in a temporary folder."""


@pytest.fixture(scope="module")
def data():
    return mr.load_dataset("synthetic", n_users=150, n_items=90, seed=4)


@pytest.fixture(scope="module")
def trained(data):
    return mr.fit(data, "lightgcn", epochs=3, seed=1, batch_size=256, lr=0.01)


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = mr.load_dataset("synthetic")
    model = mr.fit(data, "lgmrec", epochs=2, seed=1)
    ids, scores = model.recommend([0, 7], k=10)
    assert ids.shape == scores.shape == (2, 10)
    ids, scores = model.similar_items([3], k=10)
    assert ids.shape == (1, 10)
    assert model.metrics["test"]["recall@20"] >= 0
    model.save("runs/x")
    again = mr.load("runs/x")
    a, sa = again.recommend([0, 7], k=10)
    b, sb = model.recommend([0, 7], k=10)
    assert np.array_equal(a, b) and np.allclose(sa, sb)


def test_fit_returns_an_object_and_logs_quietly(trained, capsys):
    assert isinstance(trained, mr.TrainedModel)
    assert set(trained.metrics) >= {"best_epoch", "valid", "test"}
    assert len(trained.history) == 3
    assert capsys.readouterr().out == ""      # no print


def test_recommend_excludes_training_items_and_matches_scores(trained, data):
    users = np.arange(20)
    ids, scores = trained.recommend(users, k=15)
    assert ids.dtype == np.int64 and ids.shape == (20, 15)
    for u, row in zip(users, ids):
        seen = set(data.train.indices[data.train.indptr[u]:data.train.indptr[u + 1]])
        assert not seen & set(row.tolist())
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    with torch.no_grad():
        u_rep, i_rep = trained.model.representations()
    expect = (u_rep[torch.as_tensor(users)] @ i_rep.T).numpy()
    assert np.allclose(np.take_along_axis(expect, ids, 1), scores, atol=1e-5)
    ids_all, _ = trained.recommend(users, k=15, filter_seen=False)
    assert np.array_equal(ids_all, np.argsort(-expect, axis=1, kind="stable")[:, :15]) or \
        np.allclose(np.take_along_axis(expect, ids_all, 1), -np.sort(-expect, 1)[:, :15], atol=1e-5)


def test_recommend_says_when_fewer_items_remain(trained, data):
    u = int(np.argmax(np.diff(data.train.indptr)))
    n_unseen = data.n_items - data.train[u].nnz
    with pytest.warns(mr.RecommendationWarning, match="fewer than k"):
        ids, scores = trained.recommend([u], k=data.n_items)
    assert (ids[0] >= 0).sum() == n_unseen and np.isnan(scores[0][ids[0] < 0]).all()
    with pytest.raises(ValueError, match="k=0"):
        trained.recommend([0], k=0)
    with pytest.raises(ValueError, match="out of range"):
        trained.recommend([data.n_users], k=5)
    with pytest.raises(ValueError, match="out of range"):
        trained.recommend([10 ** 20], k=5)


def test_similar_items_is_brute_force_cosine(trained, data):
    items = [0, 5, 17]
    ids, sims = trained.similar_items(items, k=8)
    with torch.no_grad():
        rep = trained.model.representations()[1].numpy()
    rep = rep / np.linalg.norm(rep, axis=1, keepdims=True)
    cos = rep[items] @ rep.T
    cos[np.arange(3), items] = -np.inf
    want = np.sort(cos, axis=1)[:, ::-1][:, :8]
    assert np.allclose(sims, want, atol=1e-5)
    assert np.allclose(np.take_along_axis(cos, ids, 1), want, atol=1e-5)
    assert not any(i in row for i, row in zip(items, ids.tolist()))


def test_fold_in_from_history(trained, data):
    u = 3
    hist = data.train.indices[data.train.indptr[u]:data.train.indptr[u + 1]].tolist()
    ids, scores = trained.recommend_for_history([hist, [1, 2]], k=5)
    assert ids.shape == (2, 5) and not set(hist) & set(ids[0].tolist())
    with torch.no_grad():
        item_rep = trained.model.representations()[1]
    vec = item_rep[torch.as_tensor(hist)].mean(0)
    assert np.allclose(scores[0], (item_rep @ vec).numpy()[ids[0]], atol=1e-5)
    with pytest.raises(ValueError, match="at least one item"):
        trained.recommend_for_history([[]], k=5)


def test_recommend_all_writes_every_user(trained, data, tmp_path):
    path = trained.recommend_all(k=4, path=tmp_path / "all.tsv")
    lines = path.read_text().splitlines()
    assert lines[0] == "user\trank\titem\tscore" and len(lines) == 1 + 4 * data.n_users
    ids, _ = trained.recommend_all(k=4)
    first = [ln.split("\t") for ln in lines[1:5]]
    assert [int(r[2]) for r in first] == ids[0].tolist()


def test_save_load_roundtrip_and_refusals(trained, data, tmp_path):
    run = trained.save(tmp_path / "r")
    back = mr.load(run, data=data)
    assert back.metrics == trained.metrics and back.config == trained.config
    assert np.array_equal(back.recommend([1, 2], k=5)[0], trained.recommend([1, 2], k=5)[0])
    other = mr.fit(data, "lightgcn", epochs=1, batch_size=256)
    with pytest.raises(mr.RunError, match="already holds a run"):
        other.save(run)
    with pytest.raises(mr.RunError, match="no config.yaml"):
        mr.load(tmp_path / "nothing")


def test_fit_writes_a_run_directory_when_asked(data, tmp_path):
    m = mr.fit(data, "bpr", epochs=2, out=tmp_path / "bpr", batch_size=256)
    assert (tmp_path / "bpr" / "best.pt").exists() and m.run_dir == tmp_path / "bpr"
    back = mr.load(tmp_path / "bpr", data=data)
    assert back.metrics["test"] == m.metrics["test"]


def test_layering_library_never_imports_the_cli():
    code = ("import sys, mmrecsys, mmrecsys.serving, mmrecsys.api; "
            "assert 'mmrecsys.cli' not in sys.modules, 'cli imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
