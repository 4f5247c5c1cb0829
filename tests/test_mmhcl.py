"""MMHCL: hypergraph operators, convolution, contrastive loss, total loss, metric, training."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mmrecsys.data import Dataset
from mmrecsys.evaluation.metrics_mmhcl import ndcg_mmhcl
from mmrecsys.graphs import GraphCache
from mmrecsys.graphs.hypergraph import (TorchHypergraph, i2i_hypergraph, knn_incidence,
                                        multimodal_knn_incidence, u2u_hypergraph, u2u_matrix)
from mmrecsys.graphs import normalized_adjacency
from mmrecsys.models.mmhcl import MMHCL, all_node_infonce, dense_infonce


def _csr(rows, shape):
    r, c = zip(*[(u, i) for u, its in rows.items() for i in its])
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=shape)


# ---------------------------------------------------------------------------- u2u
def test_u2u_operator_hand_case():
    # u0: items 0,1 | u1: item 0 | u2: items 1,2 | u3: none | u4: item 3 (shared with no one)
    r = _csr({0: [0, 1], 1: [0], 2: [1, 2], 4: [3]}, (5, 4))
    expected = np.zeros((5, 5), np.float32)
    expected[0, 1] = expected[0, 2] = 0.5          # C[0,1] = C[0,2] = 1, diagonal removed
    expected[1, 0] = 1.0
    expected[2, 0] = 1.0
    g = u2u_hypergraph(r)
    np.testing.assert_allclose(g.matrix().toarray(), expected, atol=1e-7)
    np.testing.assert_allclose(u2u_matrix(r).toarray(), expected, atol=1e-7)
    # dense definition: D^-1 (R Rᵀ with zero diagonal), inf -> 0
    c = (r @ r.T).toarray()
    np.fill_diagonal(c, 0)
    rs = c.sum(1, keepdims=True)
    np.testing.assert_allclose(np.divide(c, rs, out=np.zeros_like(c), where=rs > 0), expected)
    # factored application == matrix product, in numpy and torch
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(g.apply_numpy(x), expected @ x, atol=1e-6)
    tg = TorchHypergraph(g)
    np.testing.assert_allclose(tg(torch.from_numpy(x)).numpy(), expected @ x, atol=1e-6)


# ---------------------------------------------------------------------------- i2i
M1 = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], np.float32)       # items 0 and 1 identical
M2 = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], np.float32)


def test_knn_incidence_self_ties_and_nonpositive():
    i1 = knn_incidence(M1, 2).toarray()
    # row 0/1: the duplicate ties with self, both kept; row 2: the other top-2 entry has
    # similarity 0 and is dropped; row 3: similarities -1, -1, 0 -> only self survives
    np.testing.assert_array_equal(i1, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    i2 = knn_incidence(M2, 2).toarray()
    np.testing.assert_array_equal(i2, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    # K = 1 with an exact duplicate: one neighbour per row, chosen as torch.topk does
    k1 = knn_incidence(M1, 1).toarray()
    sim = F.normalize(torch.from_numpy(M1), dim=1) @ F.normalize(torch.from_numpy(M1), dim=1).T
    top = torch.topk(sim, 1, dim=1).indices[:, 0].numpy()
    assert k1.sum(1).tolist() == [1, 1, 1, 1]
    assert set(np.flatnonzero(k1[0])) <= {0, 1} and k1[0, top[0]] == 1
    # chunking does not change anything
    np.testing.assert_array_equal(knn_incidence(M2, 2, chunk_size=1).toarray(), i2)


def test_i2i_hypergraph_normalisation_hand_case():
    h = multimodal_knn_incidence([M1, M2], 2)
    assert h.shape == (4, 8)
    p_expected = np.array([[4, 3, 1, 0], [3, 4, 2, 1], [1, 2, 3, 1], [0, 1, 1, 3]], np.float32)
    np.testing.assert_array_equal((h @ h.T).toarray(), p_expected)
    assert p_expected[0, 0] == 2 * 2                       # M·K: self kept in both modalities
    g = i2i_hypergraph(h)
    np.testing.assert_allclose(g.left, 1 / np.sqrt([8, 10, 7, 5]), rtol=1e-6)
    d = 1 / np.sqrt(p_expected.sum(1))
    dense = d[:, None] * p_expected * d[None, :]
    np.testing.assert_allclose(g.matrix().toarray(), dense, rtol=1e-6)
    assert abs(dense[0, 1] - 3 / np.sqrt(80)) < 1e-7
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(TorchHypergraph(g)(torch.from_numpy(x)).numpy(), dense @ x,
                               atol=1e-6)


def test_zero_feature_row_gets_no_neighbour():
    x = np.array([[1, 0], [0, 0], [1, 1]], np.float32)
    inc = knn_incidence(x, 2).toarray()
    assert inc[1].sum() == 0
    g = i2i_hypergraph(inc)
    assert np.isfinite(g.matrix().toarray()).all() and g.left[1] == 0


# ---------------------------------------------------------------------------- model pieces
def tiny_data(seed=0, n_users=12, n_items=9):
    rng = np.random.default_rng(seed)
    users, items, labels = [], [], []
    for u in range(n_users):
        its = rng.choice(n_items, size=4, replace=False)
        for j, i in enumerate(its):
            users.append(u)
            items.append(i)
            labels.append(0 if j < 2 else (1 if j == 2 else 2))
    users += [0]
    items += [n_items - 1]           # keep the last item in range
    labels += [1]
    feats = {"image_feat": rng.standard_normal((n_items, 5)).astype(np.float32),
             "text_feat": rng.standard_normal((n_items, 3)).astype(np.float32)}
    return Dataset.from_arrays(users, items, labels, n_users, n_items, feats, name="tiny")


def dense_operators(data, k):
    r = data.train.toarray()
    a = np.block([[np.zeros((data.n_users, data.n_users)), r],
                  [r.T, np.zeros((data.n_items, data.n_items))]])
    deg = a.sum(1)
    dv = np.where(deg > 0, deg, 1) ** -0.5 * (deg > 0)
    a_hat = dv[:, None] * a * dv[None, :]
    c = r @ r.T
    np.fill_diagonal(c, 0)
    rs = c.sum(1, keepdims=True)
    g_uu = np.divide(c, rs, out=np.zeros_like(c), where=rs > 0)
    blocks = []
    for x in data.features.values():
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = xn @ xn.T
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        ind = np.zeros_like(s)
        np.put_along_axis(ind, top, 1.0, axis=1)
        blocks.append(ind * (s > 0))
    h = np.hstack(blocks)
    p = h @ h.T
    dp = p.sum(1) ** -0.5
    g_ii = dp[:, None] * p * dp[None, :]
    return a_hat, g_uu, g_ii


def test_ui_adjacency_matches_dense():
    data = tiny_data()
    a_hat, _, _ = dense_operators(data, 3)
    np.testing.assert_allclose(normalized_adjacency(data.train, eps=0.0).toarray(), a_hat, atol=1e-6)


def test_hypergraph_convolution_matches_dense_powers():
    data = tiny_data()
    m = MMHCL(data, knn_k=3, user_layers=3, item_layers=2)
    _, g_uu, g_ii = dense_operators(data, 3)
    with torch.no_grad():
        e_u, e_i, h_i, h_u = m.forward()
    q_u = m.uu_embedding.detach().double().numpy()
    q_i = m.ii_embedding.detach().double().numpy()
    np.testing.assert_allclose(h_u.numpy(), np.linalg.matrix_power(g_uu, 3) @ q_u, atol=1e-5)
    np.testing.assert_allclose(h_i.numpy(), np.linalg.matrix_power(g_ii, 2) @ q_i, atol=1e-5)


@pytest.mark.parametrize("tau,chunk", [(0.6, 1000), (0.4, 5), (0.02, 7)])
def test_contrastive_loss_and_gradient_match_dense(tau, chunk):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(23, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(23, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(23, 6, generator=g, dtype=torch.float64)
    loss = all_node_infonce(z1 * w, z2 + 0.5 * z1, tau, chunk)
    ref = dense_infonce(z1 * w, z2 + 0.5 * z1, tau)
    assert abs(loss.item() - ref.item()) < 1e-9 * max(1.0, abs(ref.item()))
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(g1, r1, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g2, r2, rtol=1e-6, atol=1e-9)


def test_contrastive_loss_hand_value():
    # two orthogonal nodes, views equal: c(z1n, z2n) = 1, every other cosine 0, tau = 1
    z = torch.eye(2, dtype=torch.float64)
    expected = -np.log(np.e / (1 + np.e + 1))
    assert abs(all_node_infonce(z, z, 1.0).item() - expected) < 1e-12
    # an all-zero second view row gives cosine 0 (no NaN)
    z2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    v = all_node_infonce(z, z2, 1.0).item()
    assert np.isfinite(v) and abs(v - dense_infonce(z, z2, 1.0).item()) < 1e-12


def test_total_loss_matches_direct_dense_computation():
    data = tiny_data()
    torch.manual_seed(0)
    m = MMHCL(data, knn_k=3, user_layers=2, item_layers=2, n_layers=2, regs=1e-2,
              user_loss_ratio=0.3, item_loss_ratio=0.7, temperature=0.5, cl_chunk_size=4)
    a_hat, g_uu, g_ii = (torch.from_numpy(x).float() for x in dense_operators(data, 3))
    users = torch.tensor([0, 3, 5, 7])
    pos = torch.tensor([int(data.train[u].indices[0]) for u in users.tolist()])
    neg = torch.tensor([8, 2, 0, 4])
    terms = m.loss(users, pos, neg)
    # direct computation
    E_U, E_I, Q_U, Q_I = (m.user_ui_embedding, m.item_ui_embedding, m.uu_embedding,
                          m.ii_embedding)
    h_i = g_ii @ (g_ii @ Q_I)
    h_u = g_uu @ (g_uu @ Q_U)
    x0 = torch.cat([E_U, E_I])
    x1 = a_hat @ x0
    x2 = a_hat @ x1
    e = (x0 + x1 + x2) / 3
    e_u = e[:12] + F.normalize(h_u, dim=1)
    e_i = e[12:] + F.normalize(h_i, dim=1)
    u, p, n = e_u[users], e_i[pos], e_i[neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 1e-2 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 4
    cl_i = 0.7 * dense_infonce(e_i, h_i, 0.5)
    cl_u = 0.3 * dense_infonce(e_u, h_u, 0.5)
    for k, v in {"bpr": bpr, "reg": reg, "cl_i2i": cl_i, "cl_u2u": cl_u}.items():
        assert abs(terms[k].item() - v.item()) < 1e-5, k
    total = sum(terms.values())
    ref = bpr + reg + cl_i + cl_u
    total.backward()
    grads = [p.grad.clone() for p in (E_U, E_I, Q_U, Q_I)]
    for p_ in (E_U, E_I, Q_U, Q_I):
        p_.grad = None
    ref.backward()
    for g_, p_ in zip(grads, (E_U, E_I, Q_U, Q_I)):
        torch.testing.assert_close(g_, p_.grad, rtol=1e-4, atol=1e-6)


def test_zero_ratio_skips_branch():
    data = tiny_data()
    m = MMHCL(data, knn_k=3, user_loss_ratio=0.0, item_loss_ratio=0.0)
    with torch.no_grad():
        e_u, e_i, h_i, h_u = m.forward()
    assert torch.equal(h_u, m.uu_embedding) and torch.equal(h_i, m.ii_embedding)
    assert set(m.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))) == {"bpr", "reg"}


def test_graphs_cached_by_content(tmp_path):
    data = tiny_data()
    cache = GraphCache(tmp_path)
    MMHCL(data, cache, knn_k=3)
    assert cache.misses == 2
    MMHCL(data, cache, knn_k=3)
    assert cache.hits == 2
    MMHCL(data, cache, knn_k=2)                     # i2i depends on K, u2u does not
    assert cache.misses == 3 and cache.hits == 3
    data.features["text_feat"] = data.features["text_feat"] + 1.0
    MMHCL(data, cache, knn_k=3)                     # changed features: new i2i graph
    assert cache.misses == 4


def test_preset_selected_by_dataset_name():
    from mmrecsys.config import resolve_config
    # the official data folders (Tiktok, Clothing, Sports) and the imported MMHCL copies
    # select the same preset, case-insensitively; other data gets none
    for a, b in (("mmhcl-clothing", "clothing"), ("mmhcl-sports", "sports"), ("TikTok", "tiktok")):
        ca, cb = resolve_config(MMHCL, a), resolve_config(MMHCL, b)
        assert {k: v for k, v in ca.items() if k != "preset"} == \
            {k: v for k, v in cb.items() if k != "preset"}
    assert resolve_config(MMHCL, "TikTok")["preset"] == "tiktok"
    none = resolve_config(MMHCL, "synthetic")
    assert none["preset"] == "none" and none["keep_users_without_train"] is False
    # its own selection rule is configurable: the metric it names must be computed
    assert set(none["valid_metrics"]) <= {f"{m}@{k}" for m in ("recall", "ndcg", *none["extra_metrics"])
                                          for k in none["topk"]}


def test_needs_features():
    data = tiny_data()
    data.features = {}
    with pytest.raises(ValueError, match="modality features"):
        MMHCL(data)


# ---------------------------------------------------------------------------- metric
def test_ndcg_mmhcl_hand_case():
    hits = torch.zeros(3, 20)
    hits[0, 2] = 1            # 2 held-out, one hit at rank 3: 0.5 (standard: 0.307)
    hits[1, 0] = hits[1, 3] = 1
    n_pos = torch.tensor([2, 5, 1])   # user 2: no hit -> 0
    out = ndcg_mmhcl(hits, n_pos, 20)
    d = 1 / np.log2(np.arange(2, 22))
    np.testing.assert_allclose(out.numpy(), [0.5, (d[0] + d[3]) / (d[0] + d[1]), 0.0])
    # @1: IDCG uses min(1, hits@20) = 1 even though rank 1 is a miss for user 0
    np.testing.assert_allclose(ndcg_mmhcl(hits, n_pos, 1).numpy(), [0.0, 1.0, 0.0])


# ---------------------------------------------------------------------------- training
def test_short_training_improves_validation_recall(tmp_path):
    train = pytest.importorskip("mmrecsys.train")
    from mmrecsys.data.synthetic import make_synthetic
    from mmrecsys.evaluation import evaluate
    data = make_synthetic(n_users=600, n_items=300, seed=0)
    torch.manual_seed(2024)
    before = evaluate(MMHCL(data), data, "valid", topk=(20,)).metrics["recall@20"]
    res = train.fit(data, "mmhcl", {"epochs": 5, "lr": 1e-2, "eval_step": 5, "topk": [20],
                                    "cache_dir": str(tmp_path)}, log=None)
    assert res["valid"]["recall@20"] > before + 0.05
