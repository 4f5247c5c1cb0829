"""Graph helpers: adjacency and normalisation, SparseGraph, kNN, GraphCache."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrecsys.graphs import (GraphCache, SparseGraph, bipartite_adjacency, knn_graph,
                             row_normalize, sym_normalize, to_torch_sparse)
from mmrecsys.graphs.knn import knn_to_csr
from mmrecsys.models.layers import propagate


# ------------------------------------------------------------------ normalisation
def test_sym_normalize_hand_case():
    # path graph 0 - 1 - 2 plus an isolated node 3: degrees 1, 2, 1, 0
    a = sp.csr_matrix(np.array([[0, 1, 0, 0],
                                [1, 0, 1, 0],
                                [0, 1, 0, 0],
                                [0, 0, 0, 0]], dtype=np.float32))
    out = sym_normalize(a).toarray()
    s = 1 / np.sqrt(2)
    expect = np.array([[0, s, 0, 0], [s, 0, s, 0], [0, s, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert np.isfinite(out).all()  # isolated node: eps keeps it finite
    # the +1e-7 of protocol §5.0 is in D: 1/sqrt(1+eps)·1/sqrt(2+eps)
    eps = 0.5
    np.testing.assert_allclose(sym_normalize(a, eps=eps).toarray()[0, 1],
                               1 / np.sqrt((1 + eps) * (2 + eps)), rtol=1e-6)
    # with self-loops: degrees 2, 3, 2, 1
    sl = sym_normalize(a, add_self_loops=True).toarray()
    np.testing.assert_allclose(sl[0, 0], 1 / 2, rtol=1e-6)
    np.testing.assert_allclose(sl[0, 1], 1 / np.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(sl[3, 3], 1.0, rtol=1e-6)


def test_sym_normalize_weighted_against_dense():
    rng = np.random.default_rng(0)
    w = rng.random((12, 12)) * (rng.random((12, 12)) < 0.3)
    w = w + w.T
    d = w.sum(1) + 1e-7
    expect = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    np.testing.assert_allclose(sym_normalize(sp.csr_matrix(w)).toarray(), expect, rtol=1e-5,
                               atol=1e-7)


def test_row_normalize():
    a = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0], [2, 2, 4]], dtype=np.float32))
    np.testing.assert_allclose(row_normalize(a).toarray(),
                               [[0.25, 0.75, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_bipartite_adjacency():
    r = sp.csr_matrix(np.array([[1, 0, 1, 0, 0],
                                [0, 1, 0, 0, 0],
                                [1, 1, 0, 0, 0]], dtype=np.float32))
    r.data[:] = 3.0  # values are binarised
    a = bipartite_adjacency(r)
    assert a.shape == (8, 8)
    dense = a.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(dense[:3, 3:], (r.toarray() > 0).astype(np.float32))
    assert (dense[:3, :3] == 0).all() and (dense[3:, 3:] == 0).all()  # no self-loops
    assert set(np.unique(dense).tolist()) == {0.0, 1.0}
    # LightGCN's Â: degrees are the user / item interaction counts
    norm = sym_normalize(a).toarray()
    assert norm[0, 3] == pytest.approx(1 / np.sqrt(2 * 2), rel=1e-5)  # user 0 deg 2, item 0 deg 2
    assert norm[1, 4] == pytest.approx(1 / np.sqrt(1 * 2), rel=1e-5)


def test_to_torch_sparse():
    m = sp.random(7, 5, density=0.4, format="csr", random_state=1, dtype=np.float32)
    t = to_torch_sparse(m)
    assert t.is_sparse and t.is_coalesced() and t.dtype == torch.float32
    np.testing.assert_allclose(t.to_dense().numpy(), m.toarray())


# ------------------------------------------------------------------ SparseGraph and propagate
@pytest.mark.parametrize("symmetric", [True, False])
def test_sparse_graph_forward_and_backward(symmetric):
    rng = np.random.default_rng(1)
    if symmetric:
        m = sym_normalize(bipartite_adjacency(sp.random(6, 9, density=0.4, format="csr",
                                                        random_state=2)))
        n_in = 15
    else:
        m = sp.random(8, 11, density=0.3, format="csr", random_state=3, dtype=np.float32)
        n_in = 11
    g = SparseGraph(m)
    assert g.symmetric == symmetric
    dense = torch.tensor(m.toarray(), dtype=torch.float32)
    x = torch.tensor(rng.standard_normal((n_in, 4)), dtype=torch.float32, requires_grad=True)
    w = torch.tensor(rng.standard_normal((m.shape[0], 4)), dtype=torch.float32)
    y = g(x)
    torch.testing.assert_close(y, dense @ x.detach(), rtol=1e-5, atol=1e-6)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, dense.T @ w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(g(x), dense @ x, rtol=1e-5, atol=1e-6)
    assert "a" not in g.state_dict()  # rebuilt from data, never saved


@pytest.mark.parametrize("as_module", [True, False])
def test_propagate_is_mean_over_layers_including_input(as_module):
    r = sp.random(5, 7, density=0.4, format="csr", random_state=4)
    m = sym_normalize(bipartite_adjacency(r))
    adj = SparseGraph(m, symmetric=True) if as_module else to_torch_sparse(m)
    dense = torch.tensor(m.toarray())
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    out = propagate(adj, x, 3)
    ref = (x + dense.float() @ x + dense.float() @ (dense.float() @ x)
           + dense.float() @ (dense.float() @ (dense.float() @ x))) / 4
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(propagate(adj, x, 2, mean=False, include_input=False),
                               dense.float() @ x + dense.float() @ (dense.float() @ x),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ kNN
def dense_topk(x, k, exclude_self=False, metric="cosine"):
    x = torch.as_tensor(x, dtype=torch.float64)
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True)
    sim = x @ x.T
    if exclude_self:
        sim.fill_diagonal_(-float("inf"))
    v, i = torch.topk(sim, k, dim=1)
    return i, v, sim


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_knn_graph_matches_dense_topk(chunk_size, exclude_self, metric):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    k = 5
    idx, val = knn_graph(x, k, chunk_size=chunk_size, exclude_self=exclude_self, metric=metric)
    assert idx.shape == (50, k) and val.shape == (50, k)
    assert idx.dtype == torch.int64 and val.dtype == torch.float32
    ref_i, ref_v, sim = dense_topk(x, k, exclude_self, metric)
    # continuous random data: no ties, so the neighbour sets agree exactly
    assert [set(r) for r in idx.tolist()] == [set(r) for r in ref_i.tolist()]
    np.testing.assert_allclose(val.numpy(), ref_v.numpy(), rtol=1e-5, atol=1e-5)
    # values are the similarities of the returned neighbours, in decreasing order
    np.testing.assert_allclose(val.numpy(), np.take_along_axis(sim.numpy(), idx.numpy(), 1),
                               rtol=1e-5, atol=1e-5)
    assert (np.diff(val.numpy(), axis=1) <= 1e-6).all()
    rows = np.arange(50)[:, None]
    if exclude_self:
        assert not (idx.numpy() == rows).any()
    elif metric == "cosine":
        assert (idx.numpy()[:, 0] == rows[:, 0]).all()  # self-similarity 1 ranks first


def test_knn_graph_k_clipped_and_tensor_input():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    idx, _ = knn_graph(x, 10)
    assert idx.shape == (4, 4)
    idx, _ = knn_graph(x, 10, exclude_self=True)
    assert idx.shape == (4, 3)
    with pytest.raises(ValueError, match="metric"):
        knn_graph(x, 2, metric="euclid")


def test_knn_to_csr():
    idx = np.array([[1, 2], [0, 2], [1, 0]])
    val = np.array([[0.9, 0.1], [0.5, 0.4], [0.3, 0.2]], dtype=np.float32)
    m = knn_to_csr(idx, val)
    assert m.shape == (3, 3) and m.nnz == 6
    np.testing.assert_allclose(m.toarray(), [[0, 0.9, 0.1], [0.5, 0, 0.4], [0.2, 0.3, 0]])
    assert knn_to_csr(torch.as_tensor(idx), torch.as_tensor(val), n_cols=5).shape == (3, 5)


# ------------------------------------------------------------------ cache
def test_graph_cache_hit_miss_and_key_sensitivity(tmp_path):
    cache = GraphCache(tmp_path)
    calls = []

    def build(v):
        def _b():
            calls.append(v)
            return {"m": torch.full((2, 2), float(v))}
        return _b

    key = {"data": "abc123", "k": 10, "weight": 0.5}
    a = cache.get_or_build("item_knn", key, build(1))
    assert (cache.hits, cache.misses, calls) == (0, 1, [1])
    b = cache.get_or_build("item_knn", dict(reversed(list(key.items()))), build(2))  # same key
    assert (cache.hits, cache.misses, calls) == (1, 1, [1])
    torch.testing.assert_close(a["m"], b["m"])
    # any change of a key value, of the name, or an extra key is a different entry
    for name, k in [("item_knn", {**key, "k": 11}), ("item_knn", {**key, "data": "abc124"}),
                    ("item_knn", {**key, "weight": 0.50001}), ("user_knn", key),
                    ("item_knn", {**key, "extra": True})]:
        out = cache.get_or_build(name, k, build(3))
        assert out["m"][0, 0].item() == 3.0
    assert cache.misses == 6 and cache.hits == 1
    # a new cache object on the same folder finds the files
    again = GraphCache(tmp_path)
    out = again.get_or_build("item_knn", key, build(4))
    assert again.hits == 1 and out["m"][0, 0].item() == 1.0
    assert len(list(tmp_path.glob("item_knn-*.pt"))) == 5
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_graph_cache_disabled_and_corrupt(tmp_path):
    off = GraphCache(None)
    n = []
    for _ in range(2):
        off.get_or_build("g", {"k": 1}, lambda: n.append(1) or 1)
    assert off.misses == 2 and off.hits == 0 and off.path("g", {"k": 1}) is None
    cache = GraphCache(tmp_path)
    p = cache.path("g", {"k": 1})
    p.write_bytes(b"not a torch file")
    assert cache.get_or_build("g", {"k": 1}, lambda: 42) == 42  # rebuilt, not crashed
    assert GraphCache(tmp_path).get_or_build("g", {"k": 1}, lambda: 0) == 42


def test_sparse_graph_transpose_product_and_gradient():
    rng = np.random.default_rng(5)
    m = sp.random(12, 7, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    g = SparseGraph(m, symmetric=False)
    x = torch.randn(12, 3, dtype=torch.float32, requires_grad=True)
    w = torch.arange(3, dtype=torch.float32)
    (g.t(x) * w).sum().backward()
    dense = torch.tensor(m.toarray())
    x2 = x.detach().clone().requires_grad_(True)
    (dense.T @ x2 * w).sum().backward()
    torch.testing.assert_close(g.t(x.detach()), dense.T @ x.detach())
    torch.testing.assert_close(x.grad, x2.grad)
