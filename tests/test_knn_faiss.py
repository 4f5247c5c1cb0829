"""kNN graphs through FAISS (the default backend): the exact index gives the torch path's
neighbour sets, ties included; approximate indexes are measured by their recall; the
configuration keys reach the models' graphs."""
import numpy as np
import pytest
import torch

from mmrecsys.graphs import knn_graph, knn_recall, knn_settings
from mmrecsys.graphs import knn as knn_module

faiss = pytest.importorskip("faiss")


def _features(n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_flat_index_equals_the_torch_path(exclude_self):
    x = _features()
    ti, tv = knn_graph(x, 10, exclude_self=exclude_self, backend="torch")
    fi, fv = knn_graph(x, 10, exclude_self=exclude_self, backend="faiss", index="flat")
    assert [set(r) for r in ti.tolist()] == [set(r) for r in fi.tolist()]
    assert torch.allclose(tv, fv, atol=1e-5)
    assert torch.equal(knn_graph(x, 10, exclude_self=exclude_self)[0], fi)   # the default


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("how", [dict(backend="faiss"), dict(backend="torch", tiles=True)])
def test_other_orders_keep_the_rows_tie_order(how, exclude_self, monkeypatch):
    """Duplicated rows (e.g. items whose missing image was filled with the mean vector) and
    all-zero rows tie exactly; FAISS, or the symmetric tiles, alone may keep other members of a
    tie than torch.topk over the full row. Such rows are decided by the rows schedule, so the
    lists are the rows schedule's, row for row."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, 8)).astype(np.float32)
    x = np.concatenate([base, np.repeat(base[:5], 6, axis=0),     # 6 copies of 5 rows
                        np.zeros((4, 8), np.float32)])            # 4 all-zero rows
    x = x[rng.permutation(len(x))]
    redone = []
    real = knn_module._torch_rows
    monkeypatch.setattr(knn_module, "_torch_rows",
                        lambda *a, rows=None: redone.append(rows) or real(*a, rows=rows))
    fi, fv = knn_graph(x, 4, exclude_self=exclude_self, chunk_size=16, **how)
    monkeypatch.setattr(knn_module, "_torch_rows", real)
    ti, tv = knn_graph(x, 4, exclude_self=exclude_self, backend="torch")
    assert [set(r) for r in fi.tolist()] == [set(r) for r in ti.tolist()]
    assert torch.allclose(fv.sort(1).values, tv.sort(1).values, atol=1e-6)
    # only the rows near a tie were redone: the copies and the zero rows, not the rest
    assert len(redone) == 1 and 30 <= len(redone[0]) < len(x)
    # without the check, the tie order does differ here (so the test can fail)
    monkeypatch.setattr(knn_module, "TIE_TOLERANCE", -1.0)
    gi, _ = knn_graph(x, 4, exclude_self=exclude_self, chunk_size=16, **how)
    assert [set(r) for r in gi.tolist()] != [set(r) for r in ti.tolist()]


def test_flat_index_when_k_reaches_every_row():
    x = _features(12, 4)
    for k, ex in ((12, False), (11, True)):
        fi, _ = knn_graph(x, k, exclude_self=ex, backend="faiss")
        ti, _ = knn_graph(x, k, exclude_self=ex, backend="torch")
        assert [set(r) for r in fi.tolist()] == [set(r) for r in ti.tolist()]


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
    torch_model = mr.fit(data, "mmhcl", knn_backend="torch", **base)
    n_torch = len(list(tmp_path.rglob("*.pt")))
    faiss_model = mr.fit(data, "mmhcl", **base)                  # faiss: the default
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


def test_without_faiss_the_torch_path_is_used_with_one_warning(monkeypatch):
    x = _features(80, 6)
    monkeypatch.setattr(knn_module, "faiss_available", lambda: False)
    monkeypatch.setattr(knn_module, "_warned_no_faiss", False)
    with pytest.warns(UserWarning, match="FAISS is not installed"):
        a, _ = knn_graph(x, 5)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # said once per process, not per graph
        b, _ = knn_graph(x, 5)
    t, _ = knn_graph(x, 5, backend="torch")
    assert torch.equal(a, t) and torch.equal(b, t)
