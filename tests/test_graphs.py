"""The shared graph pieces against dense references: binarising, zero-safe inverses,
normalisation, SparseGraph, power and layer mean, kNN, weighted sums, the graph cache."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrecsys.graphs import (GraphCache, SparseGraph, binarize, bipartite_adjacency, inv_power,
                             knn_graph, normalized_adjacency, row_normalize, sym_normalize,
                             to_torch_sparse)
from mmrecsys.graphs.cooccurrence import weighted_sum
from mmrecsys.graphs.hypergraph import TorchHypergraph, i2i_hypergraph, u2u_hypergraph
from mmrecsys.graphs.knn import knn_to_csr
from mmrecsys.models.layers import power, propagate


# ------------------------------------------------------------------ binarise, inverses
def test_binarize_copies_and_drops_explicit_zeros():
    m = sp.csr_matrix(np.array([[0, 2.5, 0], [-1, 0, 3]], dtype=np.float64))
    m.data[0] = 0.0                                    # an explicit zero is stored
    before = m.copy()
    b = binarize(m)
    assert b.dtype == np.float32 and b.has_sorted_indices
    np.testing.assert_array_equal(b.toarray(), [[0, 0, 0], [1, 0, 1]])
    assert b.nnz == 2
    np.testing.assert_array_equal(m.data, before.data)  # the input is untouched


def test_inv_power_is_zero_safe_and_keeps_the_dtype():
    x = np.array([0.0, 1.0, 4.0, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(inv_power(x), [0, 1, 0.25, 0])
    np.testing.assert_array_equal(inv_power(x, 0.5), [0, 1, 0.5, 0])
    assert inv_power(x).dtype == np.float32 and inv_power(x.astype(np.float64)).dtype == np.float64
    assert inv_power(np.array([0, 2])).dtype == np.float32        # integers become float32
    # eps is added in the dtype of x before inverting (MMRec's deg + 1e-7)
    with_eps = inv_power(x, 0.5, eps=1e-7)
    np.testing.assert_array_equal(with_eps[:3], np.power(x[:3] + np.float32(1e-7), -0.5))
    assert with_eps[3] == 0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 50, 1000).astype(np.float32)
    ref = np.zeros_like(y)
    ref[y > 0] = y[y > 0] ** -0.5
    np.testing.assert_array_equal(inv_power(y, 0.5), ref)


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
    # MMRec's +1e-7 is in D: 1/sqrt(1+eps)·1/sqrt(2+eps)
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


def test_sym_normalize_without_eps_gives_isolated_nodes_zero_rows():
    r = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=np.float32))  # user 1: none
    for eps in (0.0, 1e-7):
        a = bipartite_adjacency(r).toarray().astype(np.float64)
        deg = a.sum(1) + eps
        d = np.where(deg > 0, deg, 1.0) ** -0.5 * (deg > 0)
        ref = d[:, None] * a * d[None, :]
        got = normalized_adjacency(r, eps=eps)
        np.testing.assert_allclose(got.toarray(), ref, rtol=1e-6, atol=1e-7)
        assert np.isfinite(got.toarray()).all()
    assert normalized_adjacency(r, eps=0.0)[1].nnz == 0


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


def test_propagate_equals_the_stacked_mean_exactly():
    r = sp.random(30, 20, density=0.2, format="csr", random_state=6)
    adj = SparseGraph(normalized_adjacency(r), symmetric=True)
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    layers = [x]
    for _ in range(3):
        layers.append(adj(layers[-1]))
    assert torch.equal(propagate(adj, x, 3), torch.stack(layers).mean(0))
    assert torch.equal(propagate(adj, x, 0), x)


@pytest.mark.parametrize("kind", ["sparse_graph", "u2u", "i2i", "torch_sparse"])
def test_power_matches_dense_matrix_power(kind):
    r = sp.random(12, 9, density=0.3, format="csr", random_state=8, dtype=np.float32)
    if kind == "sparse_graph":                   # a directed (row-stochastic) operator
        m = row_normalize(sp.random(12, 12, density=0.3, format="csr", random_state=9))
        op, dense = SparseGraph(m), m.toarray()
    elif kind in ("u2u", "i2i"):
        g = u2u_hypergraph(r) if kind == "u2u" else i2i_hypergraph(r)
        op, dense = TorchHypergraph(g), g.matrix().toarray()
    else:
        m = normalized_adjacency(r)[:12, :12] + sp.identity(12, format="csr", dtype=np.float32)
        op, dense = to_torch_sparse(m), m.toarray()
    dense = torch.tensor(dense, dtype=torch.float64)
    x = torch.randn(12, 3, dtype=torch.float32, requires_grad=True)
    w = torch.randn(12, 3, dtype=torch.float64)
    for n_layers in (0, 1, 3):
        ref = torch.linalg.matrix_power(dense, n_layers) @ x.detach().double()
        y = power(op, x, n_layers)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
        if n_layers and kind != "torch_sparse":
            (g,) = torch.autograd.grad((y.double() * w).sum(), x)
            torch.testing.assert_close(g.double(), torch.linalg.matrix_power(dense, n_layers).T @ w,
                                       rtol=1e-5, atol=1e-6)
    assert power(op, x, 0) is x


def test_i2i_operator_is_symmetric_normalisation_of_h_ht():
    h = sp.random(10, 14, density=0.25, format="csr", random_state=3)
    p = (binarize(h) @ binarize(h).T).toarray().astype(np.float64)
    d = p.sum(1)
    dv = np.where(d > 0, d, 1.0) ** -0.5 * (d > 0)
    np.testing.assert_allclose(i2i_hypergraph(h).matrix().toarray(), dv[:, None] * p * dv[None, :],
                               rtol=1e-6, atol=1e-7)


def test_weighted_sum_against_dense():
    a = sp.random(6, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
    b = sp.random(6, 6, density=0.4, format="csr", random_state=2, dtype=np.float32)
    g = weighted_sum([(0.3, a), (0.0, None), (0.7, b)])
    assert g.dtype == np.float32 and g.has_sorted_indices
    np.testing.assert_allclose(g.toarray(), 0.3 * a.toarray() + 0.7 * b.toarray(), rtol=1e-6)
    with pytest.raises(ValueError, match="weight 0"):
        weighted_sum([(0.0, a)])


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


@pytest.mark.parametrize("schedule", ["rows", "tiles", "faiss"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_knn_graph_matches_dense_topk(chunk_size, exclude_self, metric, schedule):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    k = 5
    idx, val = knn_graph(x, k, chunk_size=chunk_size, exclude_self=exclude_self, metric=metric,
                         tiles=schedule == "tiles",
                         backend="faiss" if schedule == "faiss" else "torch")
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


def test_knn_graph_rows_schedule_is_torch_topk_of_the_full_rows():
    # exact duplicates tie; the row schedule resolves ties as one torch.topk over the dense
    # similarity matrix does (the reference codes), for any chunk size
    x = np.array([[1, 0], [1, 0], [0, 1], [-1, 0], [1, 0]], np.float32)
    sim = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    v_ref, i_ref = torch.topk(sim @ sim.T, 2, dim=1)
    for chunk in (1, 2, 100):
        for backend in ("torch", "faiss"):      # FAISS: these rows tie, the rows schedule decides
            idx, val = knn_graph(x, 2, chunk_size=chunk, backend=backend)
            assert torch.equal(idx, i_ref) and torch.equal(val, v_ref)


def test_graph_cache_hook_of_the_models(tmp_path):
    from mmrecsys.data import Dataset
    from mmrecsys.models.base import Recommender
    data = Dataset.from_arrays([0, 1], [0, 1], [0, 0], 2, 2, name="t")
    model = Recommender(data)
    calls = []
    build = lambda: calls.append(1) or 7                       # noqa: E731
    assert model.cached_graph(None, "g", {"k": 1}, build) == 7
    assert model.cached_graph(None, "g", {"k": 1}, build) == 7  # no cache: built every time
    cache = GraphCache(tmp_path)
    model.cached_graph(cache, "g", {"k": 1}, build)
    model.cached_graph(cache, "g", {"k": 1}, build)
    assert len(calls) == 3 and (cache.hits, cache.misses) == (1, 1)
    assert set(model.graph_seconds) == {"g"} and model.graph_seconds["g"] >= 0


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
