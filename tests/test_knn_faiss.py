"""kNN graphs through FAISS: the exact index gives the torch path's neighbour sets; approximate
indexes are measured by their recall; the configuration keys reach the models' graphs."""
import numpy as np
import pytest
import torch

from mmrecsys.graphs import knn_graph, knn_recall, knn_settings

faiss = pytest.importorskip("faiss")


def _features(n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_flat_index_equals_the_torch_path(exclude_self):
    x = _features()
    ti, tv = knn_graph(x, 10, exclude_self=exclude_self)
    fi, fv = knn_graph(x, 10, exclude_self=exclude_self, backend="faiss", index="flat")
    assert [set(r) for r in ti.tolist()] == [set(r) for r in fi.tolist()]
    assert torch.allclose(tv, fv, atol=1e-5)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(index):
    x = _features(2000, 16)
    exact, _ = knn_graph(x, 10)
    approx, _ = knn_graph(x, 10, backend="faiss", index=index, nprobe=16)
    assert knn_recall(approx, exact) > 0.9
    assert knn_recall(exact, exact) == 1.0


def test_settings_are_the_default_and_checked():
    x = _features(100, 8)
    with knn_settings("faiss", "hnsw"):
        a, _ = knn_graph(x, 5)
    b, _ = knn_graph(x, 5, backend="faiss", index="hnsw")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs knn_backend faiss"):
        with knn_settings("torch", "ivf"):
            pass


def test_config_keys_reach_a_models_graphs(tmp_path):
    import mmrecsys as mr
    from mmrecsys.config import resolve_config
    from mmrecsys.errors import ConfigError
    from mmrecsys.models import get_model_class
    data = mr.load_dataset("synthetic", n_users=120, n_items=80, seed=2)
    base = dict(epochs=1, cache_dir=str(tmp_path), knn_k=3)
    torch_model = mr.fit(data, "mmhcl", **base)
    n_torch = len(list(tmp_path.rglob("*.pt")))
    faiss_model = mr.fit(data, "mmhcl", knn_backend="faiss", **base)
    # the faiss graph is its own cache entry (not the torch one read back) ...
    assert len(list(tmp_path.rglob("*.pt"))) > n_torch
    # ... and, exact, it trains the same model
    assert faiss_model.history[0]["loss"] == pytest.approx(torch_model.history[0]["loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="knn_index"):
        resolve_config(get_model_class("mmhcl"), "x", overrides={"knn_index": "annoy"})


def test_serving_from_an_ann_index(tmp_path):
    import warnings

    import mmrecsys as mr
    data = mr.load_dataset("synthetic", n_users=150, n_items=300, seed=5)
    m = mr.fit(data, "lightgcn", epochs=2, batch_size=256)
    exact, _ = m.recommend(np.arange(40), k=10)
    m.use_ann("flat")                               # exact index: the same lists
    flat, _ = m.recommend(np.arange(40), k=10)
    assert np.array_equal(exact, flat)
    for u, row in zip(range(40), flat):
        assert not set(row.tolist()) & set(data.train[u].indices.tolist())
    m.use_ann("hnsw")
    assert m.ann_recall(k=10) > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, sc = m.recommend([0], k=300)           # beyond the unseen items: padded
    assert (ids[0] >= 0).sum() == 300 - data.train[0].nnz
