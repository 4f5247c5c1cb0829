"""REARM (MrShouxingMa/REARM): graphs, attention, meta-network, losses, forward, training."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrecsys.data import Dataset
from mmrecsys.graphs import GraphCache
from mmrecsys.graphs.cooccurrence import (cooccurrence_topk, item_cooccurrence_graph,
                                          similarity_graph, user_cooccurrence_graph,
                                          user_interest_features, weighted_sum)
from mmrecsys.models import rearm as rearm_mod
from mmrecsys.models.rearm import (REARM, ScalarAttention, info_nce, meta_transform,
                                   orthogonal_loss, rearm_homographs)

E = math.e


def _r(rows, n_items):
    users = [u for u, its in enumerate(rows) for _ in its]
    items = [i for its in rows for i in its]
    return sp.csr_matrix((np.ones(len(users), np.float32), (users, items)),
                         shape=(len(rows), n_items))


# u0 {0,1,2}, u1 {0,1}, u2 {1}, u3 {3}, u4 {} ; C^U: (0,1)=2, (0,2)=1, (1,2)=1
R = _r([[0, 1, 2], [0, 1], [1], [3], []], 4)


# ----------------------------------------------------------------------------- co-occurrence
def test_user_cooccurrence_case_a_and_c_by_hand():
    g = user_cooccurrence_graph(R, k=2).toarray()
    a, b = E / (E + 1), 1 / (E + 1)                      # softmax([2, 1])
    np.testing.assert_allclose(g[0], [0, a, b, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(g[1], [a, 0, b, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(g[2], [0.5, 0.5, 0, 0, 0], rtol=1e-6)   # tie: counts 1, 1
    # u3, u4: no co-occurring user -> the 2 most popular users (train degrees 3, 2),
    # raw values 3/5, 2/5, then softmax
    c0 = math.exp(0.6) / (math.exp(0.6) + math.exp(0.4))
    for row in (3, 4):
        np.testing.assert_allclose(g[row], [c0, 1 - c0, 0, 0, 0], rtol=1e-6)
    _, _, case = cooccurrence_topk(R, 2, np.diff(R.indptr))
    assert case.tolist() == [0, 0, 0, 2, 2]


def test_cooccurrence_tie_break_is_ascending_index():
    # u0 shares one item with each of u1, u2, u3: k=2 keeps u1, u2
    r = _r([[0, 1, 2], [0], [1], [2]], 3)
    cols, raw, _ = cooccurrence_topk(r, 2, np.diff(r.indptr))
    assert cols[0].tolist() == [1, 2] and raw[0].tolist() == [1, 1]


def test_cooccurrence_case_b_padding_by_hand():
    # k=3: u0 has 2 neighbours (u1 count 2, u2 count 1) -> one extra slot drawn from them
    cols, raw, case = cooccurrence_topk(R, 3, np.diff(R.indptr), seed=5)
    assert case.tolist()[:3] == [1, 1, 1]
    assert cols[0, :2].tolist() == [1, 2] and raw[0, :2].tolist() == [2, 1]
    assert cols[0, 2] in (1, 2) and raw[0, 2] == {1: 2, 2: 1}[cols[0, 2]]
    g = user_cooccurrence_graph(R, k=3, seed=5).toarray()
    expect = {1: [2 * E / (2 * E + 1), 1 / (2 * E + 1)],   # raw [2, 1, 2]
              2: [E / (E + 2), 2 / (E + 2)]}[cols[0, 2]]  # raw [2, 1, 1]
    np.testing.assert_allclose(g[0, 1:3], expect, rtol=1e-6)
    np.testing.assert_allclose(g.sum(1), 1, rtol=1e-6)
    assert g[0, 0] == 0                                   # no self-loop


def test_cooccurrence_padding_is_uniform_and_chunk_independent():
    # node 0 co-occurs with 1 (count 1) and 2 (count 3); 999 padding draws among them
    r = _r([[0, 1, 2, 3], [0], [1, 2, 3]], 4)
    cols, raw, _ = cooccurrence_topk(r, 1001, np.diff(r.indptr), seed=0)
    assert cols[0, :2].tolist() == [2, 1]
    draws = cols[0, 2:]
    assert set(draws.tolist()) <= {1, 2}
    assert abs((draws == 1).sum() - 499.5) < 4 * math.sqrt(999 / 4)
    np.testing.assert_array_equal(raw[0, 2:], np.where(draws == 1, 1.0, 3.0))
    big = _r([list(np.flatnonzero(np.random.default_rng(i).random(15) < 0.2)) for i in range(40)], 15)
    a = cooccurrence_topk(big, 6, np.diff(big.indptr), seed=3, chunk_size=7)
    b = cooccurrence_topk(big, 6, np.diff(big.indptr), seed=3, chunk_size=4096)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_cooccurrence_matches_dense_on_random_data():
    rng = np.random.default_rng(0)
    r = sp.csr_matrix((rng.random((30, 25)) < 0.15).astype(np.float32))
    k = 4
    cols, raw, case = cooccurrence_topk(r.T.tocsr(), k, np.asarray(r.sum(0)).ravel(), seed=1,
                                        chunk_size=6)
    c = (r.T @ r).toarray()
    np.fill_diagonal(c, 0)
    pop_order = np.argsort(-np.asarray(r.sum(0)).ravel(), kind="stable")[:k]
    for a in range(c.shape[0]):
        nb = sorted(np.flatnonzero(c[a]), key=lambda b: (-c[a, b], b))
        if len(nb) >= k:
            assert case[a] == 0 and cols[a].tolist() == nb[:k]
            np.testing.assert_array_equal(raw[a], c[a, nb[:k]])
        elif nb:
            assert case[a] == 1 and cols[a, :len(nb)].tolist() == nb
            assert set(cols[a, len(nb):].tolist()) <= set(nb)
            np.testing.assert_array_equal(raw[a], c[a, cols[a]])
        else:
            assert case[a] == 2 and cols[a].tolist() == pop_order.tolist()
    g = item_cooccurrence_graph(sp.csr_matrix(r), k, seed=1).toarray()
    np.testing.assert_allclose(g.sum(1), 1, rtol=1e-6)
    assert (np.diag(g) == 0).all() or (case == 2).any()


# ----------------------------------------------------------------------------- similarity
def test_user_interest_is_mean_of_train_items():
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    xu = user_interest_features(R, x)
    np.testing.assert_allclose(xu[0], x[[0, 1, 2]].mean(0))
    np.testing.assert_allclose(xu[2], x[1])
    np.testing.assert_allclose(xu[4], [0, 0])


def test_similarity_graph_keeps_topk_cosines_scaled():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    g = similarity_graph(x, 3, chunk_size=5).toarray()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    for a in range(12):
        top = np.argsort(-s[a])[:3]
        assert top[0] == a                                    # itself, cosine 1
        np.testing.assert_allclose(g[a, top], s[a, top] / 3, rtol=1e-5, atol=1e-6)
        assert np.count_nonzero(g[a]) == 3
    # by hand: 3 vectors, k=2
    h = similarity_graph(np.array([[1, 0], [1, 1], [0, 1]], np.float32), 2).toarray()
    c = 1 / math.sqrt(2)
    np.testing.assert_allclose(h, [[0.5, c / 2, 0], [c / 2, 0.5, 0], [0, c / 2, 0.5]], rtol=1e-6)
    # no symmetrisation: row 1 keeps 2 of its two equal neighbours only by index order
    assert np.count_nonzero(h[1]) == 2


def _tiny_data(n_users=7, n_items=6, seed=0, widths=(4, 3)):
    rng = np.random.default_rng(seed)
    rows = [sorted(rng.choice(n_items - 1, size=rng.integers(1, 4), replace=False).tolist())
            for _ in range(n_users)]                       # item n_items-1: no train pair
    users = [u for u, its in enumerate(rows) for _ in its]
    items = [i for its in rows for i in its]
    labels = [0] * len(users)
    for u in range(n_users):                               # one valid and one test pair each
        rest = [i for i in range(n_items) if i not in rows[u]]
        users += [u, u]
        items += rest[:2]
        labels += [1, 2]
    feats = {f"{m}_feat": rng.normal(size=(n_items, w)).astype(np.float32)
             for m, w in zip(("image", "text"), widths)}
    return Dataset.from_arrays(users, items, labels, n_users, n_items, feats, name="tiny")


def test_mixed_homographs_match_their_formula_and_cache(tmp_path):
    data = _tiny_data()
    kw = dict(user_k=3, item_k=2, uu_co_weight=0.4, ii_co_weight=0.2, u_image_weight=0.3,
              i_image_weight=0.6, seed=7)
    cache = GraphCache(tmp_path)
    g_u, g_i = rearm_homographs(data, cached=cache.get_or_build, **kw)
    assert cache.misses == 6 and cache.hits == 0
    v, t = data.features["image_feat"], data.features["text_feat"]
    cu = user_cooccurrence_graph(data.train, 3, seed=7).toarray()
    ci = item_cooccurrence_graph(data.train, 2, seed=7).toarray()
    suv = similarity_graph(user_interest_features(data.train, v), 3).toarray()
    sut = similarity_graph(user_interest_features(data.train, t), 3).toarray()
    siv, sit = similarity_graph(v, 2).toarray(), similarity_graph(t, 2).toarray()
    np.testing.assert_allclose(g_u.toarray(), 0.4 * cu + 0.6 * (0.3 * suv + 0.7 * sut), atol=1e-6)
    np.testing.assert_allclose(g_i.toarray(), 0.2 * ci + 0.8 * (0.6 * siv + 0.4 * sit), atol=1e-6)
    # row sums: α + (1 − α)·(mean of the row's top-k similarities)
    mean_sim = 0.6 * siv.sum(1) + 0.4 * sit.sum(1)
    np.testing.assert_allclose(g_i.toarray().sum(1), 0.2 + 0.8 * mean_sim, rtol=1e-5)
    assert g_i.getnnz(axis=1).max() <= 3 * 2
    # second build: every component from the cache; another k is a different key
    g_u2, _ = rearm_homographs(data, cached=cache.get_or_build, **kw)
    assert cache.hits == 6 and (g_u2 != g_u).nnz == 0
    rearm_homographs(data, cached=cache.get_or_build, **{**kw, "item_k": 3})
    assert cache.misses == 6 + 3
    # weight 0 removes a graph (it is not even built)
    c2 = GraphCache(tmp_path / "c2")
    g_u0, _ = rearm_homographs(data, cached=c2.get_or_build, **{**kw, "u_image_weight": 0.0})
    np.testing.assert_allclose(g_u0.toarray(), 0.4 * cu + 0.6 * sut, atol=1e-6)
    assert not list((tmp_path / "c2").glob("rearm-user-knn-image_feat-*"))
    with pytest.raises(ValueError):
        weighted_sum([(0.0, None), (0.0, None)])


# ----------------------------------------------------------------------------- attention
def _mha_copy(att):
    mha = torch.nn.MultiheadAttention(1, 1, dropout=att.dropout, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(att.in_proj_weight)
        mha.in_proj_bias.copy_(att.in_proj_bias)
        mha.out_proj.weight.copy_(att.out_weight.view(1, 1))
        mha.out_proj.bias.copy_(att.out_bias)
    return mha


def test_attention_equals_multihead_attention_1x1():
    torch.manual_seed(0)
    att = ScalarAttention(0.4, chunk_size=3)
    with torch.no_grad():
        att.in_proj_bias.normal_()
        att.out_bias.normal_()
    mha = _mha_copy(att).eval()
    att.eval()
    q, c = torch.randn(7, 8), torch.randn(7, 8)
    ref, _ = mha(q.unsqueeze(-1), c.unsqueeze(-1), c.unsqueeze(-1), need_weights=False)
    torch.testing.assert_close(att(q, c), ref.squeeze(-1), rtol=1e-5, atol=1e-6)
    # initialisation (torch's MultiheadAttention(1, 1) defaults)
    a2 = ScalarAttention()
    assert a2.in_proj_weight.abs().max() <= math.sqrt(1.5) and (a2.in_proj_bias == 0).all()
    assert a2.out_weight.abs().max() <= 1 and a2.out_bias.item() == 0


def test_attention_p1_zeroes_the_map_in_training():
    att = ScalarAttention(1.0)
    with torch.no_grad():
        att.out_bias.fill_(0.3)
    q = torch.randn(5, 8, requires_grad=True)
    out = att.train()(q, q)
    torch.testing.assert_close(out, torch.full((5, 8), 0.3))
    out.sum().backward()
    assert q.grad.abs().max() == 0 and att.in_proj_weight.grad.abs().max() == 0


def test_attention_backward_with_dropout_matches_dense(monkeypatch):
    torch.manual_seed(1)
    n, d, p = 6, 8, 0.4
    words = torch.randint(0, 32768, (n, d, d), dtype=torch.int16)
    masks = rearm_mod._keep_from_words(words, 1 - p).double()
    calls = {False: [], True: []}   # forward draws; backward replays (with a generator)

    def fixed_words(shape, device, generator=None):
        done = calls[generator is not None]
        s = sum(w.shape[0] for w in done)
        w = words[s:s + shape[0]]
        done.append(w)
        return w
    monkeypatch.setattr(rearm_mod, "_random_words", fixed_words)
    att = ScalarAttention(p, chunk_size=4).train()
    q = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    att = att.double()
    out = att(q, c)
    w = torch.randn(n, d, dtype=torch.float64)
    gq, gc, gw = torch.autograd.grad((out * w).sum(), (q, c, att.in_proj_weight))
    # dense reference, same masks
    wq, wk, wv = att.in_proj_weight[:, 0]
    bq, bk, bv = att.in_proj_bias
    q2, c2 = q.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    pi = torch.softmax((wq * q2 + bq)[:, :, None] * (wk * c2 + bk)[:, None, :], 2)
    pi = pi * masks / (1 - p)
    ref = att.out_weight * (pi @ (wv * c2 + bv)[:, :, None])[:, :, 0] + att.out_bias
    torch.testing.assert_close(out, ref)
    rq, rc = torch.autograd.grad((ref * w).sum(), (q2, c2))
    torch.testing.assert_close(gq, rq)
    torch.testing.assert_close(gc, rc)


def test_attention_backward_replays_the_forward_dropout_words(monkeypatch):
    """No mask is stored: backward regenerates exactly the forward pass's random words from
    the recorded generator state, and leaves the global stream where forward left it."""
    real = rearm_mod._random_words
    seen = {False: [], True: []}

    def spy(shape, device, generator=None):
        w = real(shape, device, generator)
        seen[generator is not None].append(w.clone())
        return w
    monkeypatch.setattr(rearm_mod, "_random_words", spy)
    torch.manual_seed(3)
    att = ScalarAttention(0.5, chunk_size=5).train()
    q = torch.randn(13, 8, requires_grad=True)
    out = att(q, q)
    after_forward = torch.get_rng_state()
    out.square().sum().backward()
    assert torch.equal(torch.get_rng_state(), after_forward)
    assert len(seen[False]) == 3 and len(seen[True]) == 3
    for a, b in zip(seen[False], seen[True]):
        assert torch.equal(a, b)


def test_attention_does_not_depend_on_the_chunk_size():
    """Values, gradients and dropout draws are the same for every chunk size (so the chunk may
    follow the device: 256 rows on CPU, 8192 on GPU)."""
    att = ScalarAttention(0.4).train()
    assert att.rows_per_chunk("cpu") == 256 and att.rows_per_chunk("cuda") == 8192
    h = torch.randn(70, 8)
    runs = []
    for chunk in (None, 7, 16, 70, 1000):
        att.chunk_size = chunk
        torch.manual_seed(2)
        x = h.clone().requires_grad_()
        out = att(x, x)
        out.square().sum().backward()
        runs.append((out.detach(), x.grad, torch.get_rng_state()))
    for out, grad, state in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grad, runs[0][1])
        assert torch.equal(state, runs[0][2])


def test_dropout_keep_rate():
    torch.manual_seed(0)
    m = rearm_mod.dropout_keep_mask((300, 64, 64), 0.6, "cpu")
    assert set(m.unique().tolist()) == {0.0, 1.0} and abs(m.mean().item() - 0.6) < 2e-3
    assert (rearm_mod.dropout_keep_mask((10, 3), 1.0, "cpu") == 1).all()
    w = torch.tensor([0, 19660, 19661, 32767], dtype=torch.int16)   # round(0.6·2^15) = 19661
    assert rearm_mod._keep_from_words(w, 0.6).tolist() == [1, 1, 0, 0]


# ----------------------------------------------------------------------------- meta-network
def test_meta_transform_by_hand():
    # n=1, d=2, r=1: M1 = softmax([0, 0]) = [.5, .5]; M2 = softmax over r (one entry) = 1
    e = torch.tensor([[2.0, 4.0]])
    s = meta_transform(e, torch.zeros(1, 2, 1), torch.tensor([[[5.0, -3.0]]]))
    torch.testing.assert_close(s, torch.tensor([[3.0, 3.0]]))
    # population mean bias: Ω1 rows [1, 0] and [-1, 0] have mean 0
    om1 = torch.tensor([[[1.0], [0.0]], [[-1.0], [0.0]]])
    s = meta_transform(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), om1, torch.zeros(2, 1, 2))
    a = E / (E + 1)
    torch.testing.assert_close(s, torch.tensor([[a, a], [1 - a, 1 - a]]))


def test_meta_network_shapes_rank_and_softmax_axes():
    data = _tiny_data()
    m = REARM(data, user_knn_k=3, item_knn_k=2, rank=2, embedding_dim=8)
    k = torch.randn(7, 8)
    om1 = m.user_gen1(k).view(7, 8, 2)
    om2 = m.user_gen2(k).view(7, 2, 8)
    torch.testing.assert_close(m.user_gen1(k).norm(dim=1), torch.ones(7))   # ℓ2 over d·r
    m1 = torch.softmax(om1 + om1.mean(0, keepdim=True), 1)
    m2 = torch.softmax(om2 + om2.mean(0, keepdim=True), 1)
    torch.testing.assert_close(m1.sum(1), torch.ones(7, 2))
    torch.testing.assert_close(m2.sum(1), torch.ones(7, 8))
    e = torch.randn(7, 8)
    s = meta_transform(e, om1, om2)
    for node in range(7):   # S_n = e_nᵀ (M1_n M2_n): a d×d map of rank ≤ r
        w = m1[node] @ m2[node]
        torch.testing.assert_close(s[node], e[node] @ w)
        assert torch.linalg.matrix_rank(w).item() <= 2
    assert isinstance(m.user_gen1.act, torch.nn.PReLU) and m.user_gen1.act.weight.item() == 0.25
    assert m.user_gen1.lin1.out_features == 16 and m.user_compress.in_features == 16


# ----------------------------------------------------------------------------- losses
def test_info_nce_by_hand():
    z = torch.eye(2)
    torch.testing.assert_close(info_nce(z, z, 1.0), torch.tensor(math.log(1 + math.exp(-1))))
    torch.testing.assert_close(info_nce(3 * z, z, 0.5), torch.tensor(math.log(1 + math.exp(-2))))
    # one direction only: anchors z1 against candidates z2
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # row 0: -log(e/(e+1)); row 1: -log(1/(e+1))
    torch.testing.assert_close(info_nce(z1, z2, 1.0),
                               torch.tensor((math.log(E + 1) - 1 + math.log(E + 1)) / 2))


def test_orthogonal_loss_by_hand():
    x1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    x2 = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    # X̃1ᵀX̃2 = [[0, 2], [0, 0]]: mean of squares over d² = 4 entries = 1 (a sum would be 4)
    torch.testing.assert_close(orthogonal_loss(x1, x2), torch.tensor(1.0))
    # centring: a constant shift of a column changes nothing
    torch.testing.assert_close(orthogonal_loss(x1 + torch.tensor([5.0, -2.0]), x2), torch.tensor(1.0))
    # the row norm is detached: the gradient treats it as a constant
    a = torch.tensor([[2.0, 1.0], [0.0, -1.0], [1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])
    orthogonal_loss(a, b).backward()
    ac = (a - a.mean(0)).detach()
    n = ac.norm(dim=1, keepdim=True) + 1e-6
    a2 = a.clone().detach().requires_grad_()
    bc = b - b.mean(0)
    bt = bc / (bc.norm(dim=1, keepdim=True) + 1e-6)
    (((a2 - a2.mean(0)) / n).T @ bt).pow(2).mean().backward()
    torch.testing.assert_close(a.grad, a2.grad)


# ----------------------------------------------------------------------------- the model
def _dense_reference(m, data):
    """Literal dense forward of the code's REARM.forward in eval mode (no chunking, dense graphs)."""
    d, U = m.embedding_dim, m.n_users
    nrm = torch.nn.functional.normalize
    gu = torch.tensor(user_cooccurrence_graph(data.train, m.user_knn_k, m.graph_seed).toarray())
    gi = torch.tensor(item_cooccurrence_graph(data.train, m.item_knn_k, m.graph_seed).toarray())
    v, t = data.features["image_feat"], data.features["text_feat"]
    su = [similarity_graph(user_interest_features(data.train, x), m.user_knn_k).toarray() for x in (v, t)]
    si = [similarity_graph(x, m.item_knn_k).toarray() for x in (v, t)]
    bu, bi = m.u_mm_image_weight, m.i_mm_image_weight
    gu = m.uu_co_weight * gu + (1 - m.uu_co_weight) * torch.tensor(bu * su[0] + (1 - bu) * su[1])
    gi = m.ii_co_weight * gi + (1 - m.ii_co_weight) * torch.tensor(bi * si[0] + (1 - bi) * si[1])
    r = torch.tensor(data.train.toarray())
    a = torch.zeros(U + data.n_items, U + data.n_items)
    a[:U, U:], a[U:, :U] = r, r.T
    dinv = (a.sum(1) + 1e-7).pow(-0.5)
    ahat = dinv[:, None] * a * dinv[None, :]
    rho, ln = m.act, m.layer_norm

    def att(blk, q, c):
        w, b = blk.in_proj_weight[:, 0], blk.in_proj_bias
        pi = torch.softmax((w[0] * q + b[0])[:, :, None] * (w[1] * c + b[1])[:, None, :], 2)
        return blk.out_weight * (pi @ (w[2] * c + b[2])[:, :, None])[:, :, 0] + blk.out_bias

    xv, xt = m.item_proj[0](m.item_raw[0]), m.item_proj[1](m.item_raw[1])
    yv, yt = m.user_proj[0](m.user_raw[0]), m.user_proj[1](m.user_raw[1])
    zi = nrm(torch.linalg.matrix_power(gi, m.n_ii_layers).float() @ torch.cat([m.item_embedding, xv, xt], 1), dim=1)
    zu = nrm(torch.linalg.matrix_power(gu, m.n_uu_layers).float() @ torch.cat([m.user_embedding, yv, yt], 1), dim=1)
    ei, hv, ht = zi[:, :d], zi[:, d:2 * d], zi[:, 2 * d:]
    eu, qv, qt = zu[:, :d], zu[:, d:2 * d], zu[:, 2 * d:]
    av = rho(ln(hv + att(m.self_att[0], hv, hv)))
    at = rho(ln(ht + att(m.self_att[1], ht, ht)))
    cv = rho(ln(av + att(m.cross_att[0], at, av)))          # text queries visual
    ct = rho(ln(at + att(m.cross_att[1], av, at)))          # visual queries text
    f0 = torch.cat([torch.cat([rho(qv), rho(qt)], 1), torch.cat([cv, ct], 1)], 0)
    e0 = torch.cat([eu, ei], 0)
    ahat = ahat.float()
    f, e, xf, xe = f0, e0, f0, e0
    for _ in range(m.n_layers):
        xf, xe = ahat @ xf, ahat @ xe
        f, e = f + xf, e + xe
    f, e = f / (m.n_layers + 1), e / (m.n_layers + 1)
    s = []
    for part, comp, g1, g2 in ((slice(0, U), m.user_compress, m.user_gen1, m.user_gen2),
                               (slice(U, None), m.item_compress, m.item_gen1, m.item_gen2)):
        k = comp(f[part])
        n, r_ = k.shape[0], m.rank
        o1 = nrm(g1.lin2(g1.act(g1.lin1(k))), dim=1).view(n, d, r_)
        o2 = nrm(g2.lin2(g2.act(g2.lin1(k))), dim=1).view(n, r_, d)
        m1 = torch.softmax(o1 + o1.mean(0), 1)
        m2 = torch.softmax(o2 + o2.mean(0), 1)
        s.append(torch.stack([e[part][j] @ m1[j] @ m2[j] for j in range(n)]))
    s = torch.cat(s, 0)
    return torch.cat([rho(f[:, :d]) + e, rho(f[:, d:]) + e, rho(s) + e], 1), f


def test_forward_matches_dense_reference():
    torch.manual_seed(0)
    data = _tiny_data()
    m = REARM(data, embedding_dim=8, rank=2, user_knn_k=3, item_knn_k=2, n_uu_layers=2,
              n_ii_layers=1, n_layers=3, u_mm_image_weight=0.3, i_mm_image_weight=0.5)
    with torch.no_grad():
        for blk in list(m.self_att) + list(m.cross_att):
            blk.in_proj_bias.normal_()
            blk.out_bias.normal_()
    m.eval()
    with torch.no_grad():
        ref, _ = _dense_reference(m, data)
        u, i = m.representations()
    torch.testing.assert_close(torch.cat([u, i], 0), ref, rtol=1e-4, atol=1e-5)
    assert u.shape == (7, 24) and i.shape == (6, 24)


def test_total_loss_terms():
    torch.manual_seed(0)
    data = _tiny_data()
    m = REARM(data, embedding_dim=8, rank=2, user_knn_k=3, item_knn_k=2, cl_loss_weight=0.5,
              diff_loss_weight=0.25, temperature=0.6).eval()
    users, pos, neg = torch.tensor([0, 1, 1, 3]), torch.tensor([0, 2, 2, 1]), torch.tensor([5, 5, 3, 4])
    terms = m.loss(users, pos, neg)
    assert set(terms) == {"bpr", "cl", "diff"}
    o, f, _ = m.forward()
    U = 7
    ou, op, on = o[users], o[U + pos], o[U + neg]
    bpr = -torch.log(torch.sigmoid((ou * op).sum(1) - (ou * on).sum(1))).mean()
    fv, ft = f[:, :8], f[:, 8:]
    items = U + torch.tensor([0, 1, 2, 3, 4, 5])            # unique pos ∪ neg
    uu = torch.tensor([0, 1, 3])
    cl = 0.5 * (info_nce(fv[items], ft[items], 0.6) + info_nce(fv[uu], ft[uu], 0.6))
    diff = 0.25 * (orthogonal_loss(fv[U + pos], ft[U + pos]) + orthogonal_loss(fv[users], ft[users]))
    torch.testing.assert_close(terms["bpr"], bpr)
    torch.testing.assert_close(terms["cl"], cl)
    torch.testing.assert_close(terms["diff"], diff)
    # the compressor never gets a gradient (stop-gradient), the generators do
    m.train()
    sum(m.loss(users, pos, neg).values()).backward()
    assert m.user_compress.weight.grad is None and m.item_compress.weight.grad is None
    assert m.user_gen1.lin1.weight.grad.abs().sum() > 0
    assert m.item_raw[0].grad.abs().sum() > 0 and m.user_raw[1].grad.abs().sum() > 0


def test_single_modality():
    data = _tiny_data()
    data.features.pop("text_feat")
    m = REARM(data, embedding_dim=8, user_knn_k=3, item_knn_k=2)
    terms = m.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([4, 5]))
    assert set(terms) == {"bpr"} and m.representations()[1].shape == (6, 16)


def test_training_improves_validation_recall():
    from mmrecsys.data.synthetic import make_synthetic
    from mmrecsys.evaluation import evaluate
    from mmrecsys.train import fit, seed_everything
    data = make_synthetic()
    seed_everything(2025)                                   # the same initialisation as fit's
    before = evaluate(REARM(data).eval(), data, "valid", topk=(20,)).metrics["recall@20"]
    res = fit(data, "rearm", {"epochs": 2, "lr": 1e-3, "cache_dir": ""}, log=None)
    # untrained 0.203 (features and homographs already carry signal), trained 0.313 after two
    # epochs: demand at least half of that gain, 25% over the untrained model
    assert res["valid"]["recall@20"] > before + 0.05
    assert res["valid"]["recall@20"] > 1.25 * before
