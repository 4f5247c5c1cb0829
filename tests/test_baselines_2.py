"""LATTICE, MGCN and SMORE against dense, literal re-computations of their reference code
(``enoche/MMRec`` ``src/models/{lattice,mgcn}.py``, ``src/utils/utils.py``; ``kennethorq/SMORE``
``src/models/smore.py``): graphs, loss terms and gradients on tiny inputs; initialisation;
configuration; the command line and the written ranking."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import model_kwargs, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.graphs import EdgeList, elementwise_max, knn_adjacency
from mmrecsys.models import get_model_class
from mmrecsys.models.layers import half_squared_l2, info_nce
from topk_recompute import recompute_from_topk

NAMES = ["lattice", "mgcn", "smore"]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=40, n_items=30, seed=5)


def build(name, data, **kw):
    torch.manual_seed(0)
    m = get_model_class(name)(data, None, **kw)
    m.train_batch_size = 2048
    return m


def batch(data, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, data.n_users, (b,), generator=g)
    pos = torch.randint(0, data.n_items, (b,), generator=g)
    neg = torch.randint(0, data.n_items, (b,), generator=g)
    return users, pos, neg


# ------------------------------------------------------------------ the reference, literally (dense)
def build_sim(x):
    xn = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    return xn @ xn.T


def knn_neighbourhood(adj, k):
    val, ind = torch.topk(adj, k, dim=-1)
    return torch.zeros_like(adj).scatter_(-1, ind, val)


def normalized_laplacian(adj):
    d = torch.sum(adj, -1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return torch.diagflat(d) @ adj @ torch.diagflat(d)


def bipartite(data, self_loops=False):
    U, I = data.n_users, data.n_items
    r = torch.tensor((data.train.toarray() > 0).astype(np.float32))
    a = torch.zeros(U + I, U + I)
    a[:U, U:] = r
    a[U:, :U] = r.T
    return a + torch.eye(U + I) if self_loops else a


def sym(a):
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * a * d[None, :]


def raw(data, m):
    return torch.tensor(np.asarray(list(data.features.values())[m], dtype=np.float32))


def infonce_literal(v1, v2, t):
    v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
    pos = torch.exp((v1 * v2).sum(-1) / t)
    ttl = torch.exp(v1 @ v2.T / t).sum(1)
    return torch.mean(-torch.log(pos / ttl))


def bpr_reg_literal(u, i, j, reg_weight, batch_size):
    reg = (0.5 * (u ** 2).sum() + 0.5 * (i ** 2).sum() + 0.5 * (j ** 2).sum()) / batch_size
    mf = -torch.mean(F.logsigmoid((u * i).sum(1) - (u * j).sum(1)))
    return mf, reg_weight * reg


def lattice_literal(m, data, users, pos, neg):
    U = m.n_users
    adj = bipartite(data, self_loops=True)
    adj = adj / adj.sum(1, keepdim=True)                                # D^-1 (A + I)
    keys = m._keys
    orig = [normalized_laplacian(knn_neighbourhood(build_sim(raw(data, i)), m.knn_k))
            for i in range(len(keys))]
    w = torch.softmax(m.modal_weight, dim=0)
    feats = [m.projection[k](m.feature_table(k)) for k in keys]
    learned = sum(w[i] * knn_neighbourhood(build_sim(f), m.knn_k) for i, f in enumerate(feats))
    original = sum(w[i] * o for i, o in enumerate(orig))
    item_adj = (1 - m.lambda_coeff) * normalized_laplacian(learned) + m.lambda_coeff * original
    h = m.item_embedding
    for _ in range(m.n_item_layers):
        h = item_adj @ h
    ego = torch.cat([m.user_embedding, m.item_embedding])
    layers = [ego]
    for _ in range(m.n_layers):
        ego = adj @ ego
        layers.append(ego)
    allx = torch.stack(layers, 1).mean(1)
    ua, ia = allx[:U], allx[U:] + F.normalize(h, p=2, dim=1)
    mf, reg = bpr_reg_literal(ua[users], ia[pos], ia[neg], m.reg_weight, 2048)
    return {"bpr": mf, "reg": reg}, (ua, ia), item_adj


def views_literal(m, data, item_views):
    """content (LightGCN on D^-1/2 A D^-1/2) and [user; item] rows of each item-item view."""
    U = m.n_users
    norm = sym(bipartite(data))
    ego = torch.cat([m.user_embedding, m.item_embedding])
    layers = [ego]
    for _ in range(m.n_layers):
        ego = norm @ ego
        layers.append(ego)
    content = torch.stack(layers, 1).mean(1)
    out = []
    for x, g in item_views:
        for _ in range(m.n_item_layers):
            x = g @ x
        out.append(torch.cat([norm[:U, U:] @ x, x]))
    return content, out


def cl_loss_literal(m, side, content, users, pos):
    U = m.n_users
    return infonce_literal(side[U:][pos], content[U:][pos], 0.2) + \
        infonce_literal(side[:U][users], content[:U][users], 0.2)


def mgcn_literal(m, data, users, pos, neg):
    U = m.n_users
    graphs = [normalized_laplacian(knn_neighbourhood(build_sim(raw(data, i)), m.knn_k)) for i in range(2)]
    feats = [m.projection[i](m.feature_table(k)) for i, k in enumerate(m._keys)]
    item_views = [(m.item_embedding * torch.sigmoid(m.gate[i](f)), graphs[i]) for i, f in enumerate(feats)]
    content, (img, txt) = views_literal(m, data, item_views)
    att = torch.cat([m.query_common(img), m.query_common(txt)], dim=-1)
    wc = torch.softmax(att, dim=-1)
    common = wc[:, 0].unsqueeze(1) * img + wc[:, 1].unsqueeze(1) * txt
    sep_i = torch.sigmoid(m.gate_prefer[0](content)) * (img - common)
    sep_t = torch.sigmoid(m.gate_prefer[1](content)) * (txt - common)
    side = (sep_i + sep_t + common) / 3
    allx = content + side
    ua, ia = allx[:U], allx[U:]
    mf, reg = bpr_reg_literal(ua[users], ia[pos], ia[neg], m.reg_weight, 2048)
    cl = cl_loss_literal(m, side, content, users, pos)
    return {"bpr": mf, "reg": reg, "cl": m.cl_weight * cl}, (ua, ia)


def max_pool_literal(a, b):
    """SMORE's max_pool_fusion on dense matrices (absent entries are −inf, not 0)."""
    ninf = torch.tensor(float("-inf"))
    out = torch.maximum(torch.where(a != 0, a, ninf), torch.where(b != 0, b, ninf))
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def smore_literal(m, data, users, pos, neg):
    U = m.n_users
    g_v = normalized_laplacian(knn_neighbourhood(build_sim(raw(data, 0)), m.image_knn_k))
    g_t = normalized_laplacian(knn_neighbourhood(build_sim(raw(data, 1)), m.text_knn_k))
    g_f = max_pool_literal(g_v, g_t)
    f_v = m.projection[0](m.feature_table(m._keys[0]))
    f_t = m.projection[1](m.feature_table(m._keys[1]))
    fv = torch.fft.rfft(f_v, dim=1, norm="ortho")
    ft = torch.fft.rfft(f_t, dim=1, norm="ortho")
    wv, wt, wf = (torch.view_as_complex(w) for w in m.spectral_filter)
    d = f_v.shape[1]
    conv = [torch.fft.irfft(fv * wv, n=d, dim=1, norm="ortho"),
            torch.fft.irfft(ft * wt, n=d, dim=1, norm="ortho"),
            torch.fft.irfft(ft * fv * wf, n=d, dim=1, norm="ortho")]
    item_views = [(m.item_embedding * torch.sigmoid(m.gate[i](c)), g) for i, (c, g) in
                  enumerate(zip(conv, (g_v, g_t, g_f)))]
    content, (img, txt, fus) = views_literal(m, data, item_views)
    agg_i = torch.softmax(m.query_v(fus), dim=-1) * img
    agg_t = torch.softmax(m.query_t(fus), dim=-1) * txt
    p = [torch.sigmoid(g(content)) for g in m.gate_prefer]
    side = torch.mean(torch.stack([p[0] * agg_i, p[1] * agg_t, p[2] * fus]), dim=0)
    allx = content + side
    ua, ia = allx[:U], allx[U:]
    mf, reg = bpr_reg_literal(ua[users], ia[pos], ia[neg], m.reg_weight, 2048)
    cl = cl_loss_literal(m, side, content, users, pos)
    return {"bpr": mf, "reg": reg, "cl": m.cl_weight * cl}, (ua, ia)


LITERAL = {"lattice": lattice_literal, "mgcn": mgcn_literal, "smore": smore_literal}
SMALL = {"lattice": {"knn_k": 4, "reg_weight": 1e-3},
         "mgcn": {"knn_k": 4, "cl_weight": 0.1},
         "smore": {"image_knn_k": 5, "text_knn_k": 3, "dropout": 0.0, "n_layers": 3,
                   "cl_weight": 0.1, "reg_weight": 1e-3}}


def grads(model, terms):
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    return {k: (p.grad.clone() if p.grad is not None else None) for k, p in model.named_parameters()}


# ------------------------------------------------------------------ shared graph pieces
def test_knn_adjacency_equals_the_dense_reference():
    torch.manual_seed(0)
    x = torch.randn(37, 9)
    for k in (1, 4, 11):
        ours = torch.tensor(knn_adjacency(x.numpy(), k, chunk_size=8).toarray())
        ref = normalized_laplacian(knn_neighbourhood(build_sim(x), k))
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    # all 37 neighbours: some rows sum to a negative number; the reference's scale is NaN there
    # (it poisons the whole column too), ours 0
    ours = torch.tensor(knn_adjacency(x.numpy(), 37).toarray())
    ref = normalized_laplacian(knn_neighbourhood(build_sim(x), 37))
    bad = torch.isnan(ref).all(1)
    assert bad.any() and (ours[bad] == 0).all() and (ours[:, bad] == 0).all()
    ok = ~bad
    torch.testing.assert_close(ours[ok][:, ok], ref[ok][:, ok], atol=1e-6, rtol=1e-5)
    rw = torch.tensor(knn_adjacency(x.numpy(), 4, normalization="rw").toarray())
    dense = knn_neighbourhood(build_sim(x), 4)
    torch.testing.assert_close(rw, dense / dense.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)


def test_elementwise_max_is_smores_max_pool_including_lone_negative_entries():
    a = sp.csr_matrix(np.array([[0.5, -0.2, 0], [0, 0, 0.3], [0.1, 0, 0]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0.4, 0, -0.7], [0, 0.2, 0.9], [0, 0, 0]], dtype=np.float32))
    out = elementwise_max(a, b).toarray()
    np.testing.assert_allclose(out, [[0.5, -0.2, -0.7], [0, 0.2, 0.9], [0.1, 0, 0]])
    ref = max_pool_literal(torch.tensor(a.toarray()), torch.tensor(b.toarray())).numpy()
    np.testing.assert_allclose(out, ref)
    # on real kNN graphs (values mostly positive, overlapping patterns)
    x, y = torch.randn(25, 6), torch.randn(25, 4)
    ga, gb = knn_adjacency(x.numpy(), 5), knn_adjacency(y.numpy(), 3)
    ref = max_pool_literal(torch.tensor(ga.toarray()), torch.tensor(gb.toarray()))
    torch.testing.assert_close(torch.tensor(elementwise_max(ga, gb).toarray()), ref)


def test_edge_list_graph_values_and_gradients_equal_the_dense_computation():
    torch.manual_seed(1)
    n, k = 23, 4
    f1 = torch.randn(n, 7, requires_grad=True)
    f2 = torch.randn(n, 5, requires_grad=True)
    w = torch.tensor([0.3, 0.9], requires_grad=True)
    fixed = torch.tensor(knn_adjacency(torch.randn(n, 6).numpy(), 3).toarray())
    x = torch.randn(n, 3, requires_grad=True)
    probe = torch.randn(n, 3)

    def dense():
        a = torch.softmax(w, 0)
        learned = a[0] * knn_neighbourhood(build_sim(f1), k) + a[1] * knn_neighbourhood(build_sim(f2), k)
        s = 0.2 * normalized_laplacian(learned) + 0.8 * a[0] * fixed
        return s, ((s @ (s @ x)) * probe).sum()

    def sparse():
        a = torch.softmax(w, 0)
        learned = EdgeList.add(EdgeList.knn(f1, k).scale(a[0]), EdgeList.knn(f2, k, chunk_size=5).scale(a[1]))
        s = EdgeList.add(learned.sym_normalize().scale(0.2),
                         EdgeList.from_scipy(sp.csr_matrix(fixed.numpy())).scale(0.8 * a[0]))
        return s, ((s(s(x))) * probe).sum()

    s_d, out_d = dense()
    g_d = torch.autograd.grad(out_d, [f1, f2, w, x])
    s_s, out_s = sparse()
    g_s = torch.autograd.grad(out_s, [f1, f2, w, x])
    torch.testing.assert_close(s_s.to_dense(), s_d, atol=1e-6, rtol=1e-5)
    assert s_s.nnz <= n * (2 * k + 3)
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_s, g_d):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_half_squared_l2_and_info_nce_are_the_reference_formulas():
    u, i, j = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    mf, reg = bpr_reg_literal(u, i, j, 1.0, 2048)
    torch.testing.assert_close(half_squared_l2(u, i, j, divisor=2048), reg)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    b[3] = b[1]                                           # repeated rows stay candidates
    torch.testing.assert_close(info_nce(a, b, 0.2), infonce_literal(a, b, 0.2))
    # the distinct rows with their multiplicities give the loss over the repeated rows
    rows = torch.tensor([0, 2, 2, 1, 0, 2, 3])
    a.requires_grad_(True)
    b.requires_grad_(True)
    full = infonce_literal(a[rows], b[rows], 0.2)
    ids, cnt = torch.unique(rows, return_counts=True)
    dedup = info_nce(a[ids], b[ids], 0.2, cnt)
    torch.testing.assert_close(dedup, full)
    g_full = torch.autograd.grad(full, [a, b])
    g_dedup = torch.autograd.grad(dedup, [a, b])
    for x, y in zip(g_dedup, g_full):
        torch.testing.assert_close(x, y)



@pytest.mark.parametrize("tau", [0.2, 0.01])     # the shifted log-sum-exp; the max-shifted one
def test_info_nce_paths_match_the_literal_formula_in_float64(tau):
    from mmrecsys.models import layers
    assert (tau > layers.SHIFTED_LSE_MIN_TAU) == (tau == 0.2)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(30, 8, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(30, 8, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.randint(0, 30, (50,), generator=g)
    ids, cnt = torch.unique(rows, return_counts=True)
    for ours, literal in ((info_nce(a, b, tau), infonce_literal(a, b, tau)),
                          (info_nce(a[ids], b[ids], tau, cnt), infonce_literal(a[rows], b[rows], tau))):
        torch.testing.assert_close(ours, literal)
        for x, y in zip(torch.autograd.grad(ours, [a, b]), torch.autograd.grad(literal, [a, b])):
            torch.testing.assert_close(x, y)
    w = cnt.to(torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, y: layers._ShiftedLogSumExp.apply(torch.nn.functional.normalize(x, dim=1),
                                                    torch.nn.functional.normalize(y, dim=1), w, 0.3),
        (a[ids].detach().requires_grad_(), b[ids].detach().requires_grad_()))

# ------------------------------------------------------------------ the models against the literal code
@pytest.mark.parametrize("name", NAMES)
def test_loss_terms_and_gradients_equal_the_literal_reference(name, data):
    m = build(name, data, **SMALL[name])
    m.train()
    users, pos, neg = batch(data)
    ours = m.loss(users, pos, neg)
    g_ours = grads(m, ours)
    ref = LITERAL[name](m, data, users, pos, neg)[0]
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=1e-5, msg=k)
    g_ref = grads(m, ref)
    for k, g in g_ref.items():
        assert g is not None, k
        assert g_ours[k] is not None, f"{name}: no gradient for {k}"
        torch.testing.assert_close(g_ours[k], g, atol=1e-6, rtol=2e-4, msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_representations_equal_the_literal_reference(name, data):
    m = build(name, data, **SMALL[name])
    m.eval()
    with torch.no_grad():
        u, i = m.representations()
        _, (ru, ri), *rest = LITERAL[name](m, data, *batch(data))
    torch.testing.assert_close(u, ru, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i, ri, atol=1e-6, rtol=1e-5)


def test_reg_divides_by_the_configured_batch_size(data):
    m = build("mgcn", data, knn_k=4, reg_weight=1.0)
    users, pos, neg = batch(data, b=10)
    m.train_batch_size = 2048
    r1 = m.loss(users, pos, neg)["reg"]
    m.train_batch_size = 1024
    torch.testing.assert_close(m.loss(users, pos, neg)["reg"], 2 * r1)
    m.train_batch_size = None                                  # built directly: the batch's rows
    torch.testing.assert_close(m.loss(users, pos, neg)["reg"], r1 * 2048 / 10)


def test_lattice_rebuilds_its_learned_graph_once_per_epoch(data):
    m = build("lattice", data, knn_k=4)
    m.train()
    users, pos, neg = batch(data)
    graph_keys = [k for k, _ in m.named_parameters() if k.startswith(("projection", "raw_features", "modal"))]
    proj = [p for k, p in m.named_parameters() if k in graph_keys]
    # the first batch of an epoch: the graph is built with gradient into the projections
    g = grads(m, m.loss(users, pos, neg))
    assert len(graph_keys) == 7 and all(g[k] is not None for k in graph_keys)
    _, _, s_dense = lattice_literal(m, data, users, pos, neg)
    torch.testing.assert_close(m._epoch_graph["graph"].a.to_dense(), s_dense.detach(),
                               atol=1e-6, rtol=1e-5)
    # after a change of the weights, the other batches still use the epoch's (detached) graph
    with torch.no_grad():
        for p in proj:
            p.add_(0.05 * torch.randn_like(p))
    before = m._epoch_graph["graph"]
    g = grads(m, m.loss(users, pos, neg))
    assert m._epoch_graph["graph"] is before
    assert all(g[k] is None for k in graph_keys)
    assert g["item_embedding"] is not None
    # the next epoch rebuilds it from the current weights
    m.pre_epoch(1)
    g = grads(m, m.loss(users, pos, neg))
    assert m._epoch_graph["graph"] is not before
    _, _, s_now = lattice_literal(m, data, users, pos, neg)
    torch.testing.assert_close(m._epoch_graph["graph"].a.to_dense(), s_now.detach(),
                               atol=1e-6, rtol=1e-5)
    assert g["modal_weight"] is not None


def test_smore_dropout_acts_in_training_only(data):
    m = build("smore", data, image_knn_k=4, text_knn_k=3, dropout=0.5)
    users, pos, neg = batch(data)
    m.train()
    a, b = m.loss(users, pos, neg)["bpr"], m.loss(users, pos, neg)["bpr"]
    assert not torch.equal(a, b)                                 # a fresh mask per step
    m.eval()
    with torch.no_grad():
        r1, r2 = m.representations(), m.representations()
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    m0 = build("smore", data, image_knn_k=4, text_knn_k=3, dropout=0.0)
    m0.load_state_dict(m.state_dict())
    m0.eval()
    with torch.no_grad():
        torch.testing.assert_close(m0.representations()[1], r1[1])


def test_smore_dropout_mask_is_per_node_as_in_the_reference(data, monkeypatch):
    """The reference drops entries of the preference gates of every node once per step, so a
    node repeated in the batch carries one mask; ours fuses each distinct node once."""
    m = build("smore", data, image_knn_k=4, text_knn_k=3, dropout=0.5)
    m.train()
    seen = []
    fuse = m.fuse
    monkeypatch.setattr(m, "fuse", lambda c, v: seen.append(len(c)) or fuse(c, v))
    users = torch.tensor([3, 3, 3, 7])
    pos, neg = torch.tensor([5, 5, 6, 6]), torch.tensor([6, 9, 9, 5])
    terms = m.loss(users, pos, neg)
    assert seen == [2, 3]                               # users {3, 7}; items {5, 6, 9}
    assert all(torch.isfinite(t) for t in terms.values())


def test_smore_needs_two_modalities():
    one = make_synthetic(n_users=30, n_items=20, seed=1).select_modalities(["image_feat"])
    with pytest.raises(ValueError, match="exactly two modalities"):
        get_model_class("smore")(one)


def test_lattice_and_mgcn_take_any_number_of_modalities():
    one = make_synthetic(n_users=30, n_items=20, seed=1).select_modalities(["text_feat"])
    for name in ("lattice", "mgcn"):
        m = build(name, one, knn_k=3)
        m.train()
        terms = m.loss(*batch(one, b=8))
        assert all(torch.isfinite(v) for v in terms.values())
    lat = build("lattice", one, knn_k=3)
    assert lat.modal_weight.shape == (1,)
    # one modality: S = (1 - λ) sym(kNN(F)) + λ S^o, no weights (softmax of one entry is 1)
    users, pos, neg = batch(one, b=8)
    _, _, s = lattice_literal(lat, one, users, pos, neg)
    lat.train()
    lat.loss(users, pos, neg)
    torch.testing.assert_close(lat._epoch_graph["graph"].a.to_dense(), s.detach(),
                               atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("name", NAMES)
def test_initialisation_statistics(name):
    data = make_synthetic(n_users=400, n_items=300, seed=2)
    m = build(name, data, **SMALL[name])
    d = m.embedding_dim
    for table, n in ((m.user_embedding, m.n_users), (m.item_embedding, m.n_items)):
        bound = math.sqrt(6.0 / (n + d))                          # xavier-uniform over the table
        assert table.abs().max() <= bound
        assert abs(table.std().item() - bound / math.sqrt(3)) < 0.03 * bound
        assert abs(table.mean().item()) < 0.02 * bound
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert linears
    for lin in linears:                                         # PyTorch's default
        b = 1.0 / math.sqrt(lin.in_features)
        assert lin.weight.abs().max() <= b
        assert lin.weight.std().item() > 0.4 * b
        if lin.bias is not None:
            assert lin.bias.abs().max() <= b
    for k, x in data.features.items():                          # raw features, trainable, as loaded
        t = m.feature_table(k)
        assert t.requires_grad and torch.equal(t.detach(), torch.from_numpy(x))
    if name == "lattice":
        assert torch.equal(m.modal_weight.detach(), torch.full((2,), 0.5))
    if name == "smore":
        w = torch.cat([p.detach().reshape(-1) for p in m.spectral_filter])
        assert w.numel() == 3 * (d // 2 + 1) * 2
        assert abs(w.mean().item()) < 0.25 and abs(w.std().item() - 1.0) < 0.2


@pytest.mark.parametrize("name", NAMES)
def test_frozen_features_are_buffers(name, data):
    m = build(name, data, **SMALL[name], train_features=False)
    names = [k for k, _ in m.named_parameters()]
    assert not any("raw_feature" in k for k in names)
    full = build(name, data, **SMALL[name])
    n_feat = sum(x.size for x in data.features.values())
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in m.parameters()) == n_feat
    m.train()
    terms = m.loss(*batch(data))
    sum(terms.values()).backward()
    for k, x in data.features.items():
        assert not m.feature_table(k).requires_grad
        assert torch.equal(m.feature_table(k), torch.from_numpy(x))


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("name", NAMES)
def test_search_space_values_reach_the_model(name, data):
    cls = get_model_class(name)
    assert cls.search_space
    hp = cls.hyperparameters()
    for key, values in cls.search_space.items():
        assert values and len(set(map(str, values))) == len(values)
        for v in values:
            cfg = resolve_config(cls, "x", overrides={key: v})
            assert cfg[key] == v
            if key in hp:
                torch.manual_seed(0)
                model = cls(data, None, **model_kwargs(cls, cfg))
                assert getattr(model, key) == v


def test_smore_presets_are_the_readme_table(data):
    cls = get_model_class("smore")
    rows = {"baby": (4, 1, 40, 15, 0.01, 1e-4, 0.1), "sports": (3, 1, 10, 10, 0.03, 1e-4, 0.0),
            "clothing": (3, 1, 40, 10, 0.01, 1e-5, 0.0)}
    keys = ("n_layers", "n_item_layers", "image_knn_k", "text_knn_k", "cl_weight", "reg_weight", "dropout")
    for ds, row in rows.items():
        cfg = resolve_config(cls, ds)
        assert cfg["preset"] == ds
        assert tuple(cfg[k] for k in keys) == row
    # official names are accepted
    cfg = resolve_config(cls, "x", overrides={"n_ui_layers": 3, "cl_loss": 0.05, "dropout_rate": 0.2,
                                              "embedding_size": 32})
    assert (cfg["n_layers"], cfg["cl_weight"], cfg["dropout"], cfg["embedding_dim"]) == (3, 0.05, 0.2, 32)


def test_defaults_and_trainer_settings():
    lat, mg, sm = (get_model_class(n) for n in NAMES)
    for cls in (lat, mg, sm):
        cfg = resolve_config(cls, "x")
        assert cfg["lr_scheduler"] == [0.96, 50] and cfg["batch_size"] == 2048
    assert resolve_config(lat, "x")["lr"] == 5e-4 and resolve_config(lat, "x")["reg_weight"] == 1e-5
    assert resolve_config(mg, "x")["cl_weight"] == 0.01 and resolve_config(mg, "x")["lr"] == 1e-3
    assert resolve_config(sm, "x")["n_layers"] == 4


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 120, 80, seed=4)


@pytest.mark.parametrize("name", NAMES)
def test_cli_train_reports_the_metrics_of_its_written_ranking(name, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    small = {"lattice": ["knn_k=5"], "mgcn": ["knn_k=5"], "smore": ["image_knn_k=5", "text_knn_k=4"]}[name]
    args = ["train", "--model", name, "--data", str(data_dir), "--out", str(run), "--device", "cpu",
            "--quiet", "--set", "epochs=2", "--set", "batch_size=256", "--set", "topk=[5,10,20]"]
    for s in small:
        args += ["--set", s]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["epochs_run"] == 2
    again = recompute_from_topk(run, load_dataset(data_dir), [5, 10, 20])
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
    assert any(k.startswith("knn-sym") for k in metrics["graph_seconds"])


def test_feature_projection_reuses_its_gradient_buffer(data):
    m = build("mgcn", data, knn_k=4)
    key, lin = m._keys[0], m.projection[0]
    x = m.feature_table(key)
    probe = torch.randn(data.n_items, m.embedding_dim)
    (m.project_features(key, lin) * probe).sum().backward()
    g1 = x.grad.clone()
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    ptr = x.grad.data_ptr()
    x2 = x.detach().clone().requires_grad_(True)                  # the plain computation
    w2 = lin.weight.detach().clone().requires_grad_(True)
    b2 = lin.bias.detach().clone().requires_grad_(True)
    (F.linear(x2, w2, b2) * probe).sum().backward()
    torch.testing.assert_close(g1, x2.grad)
    torch.testing.assert_close(gw, w2.grad)
    torch.testing.assert_close(gb, b2.grad)
    (m.project_features(key, lin) * probe).sum().backward()       # accumulates, like autograd
    torch.testing.assert_close(x.grad, 2 * x2.grad)
    m.zero_grad(set_to_none=True)                                 # the trainer's zero_grad
    (m.project_features(key, lin) * probe).sum().backward()
    assert x.grad.data_ptr() == ptr                               # the same buffer, no new allocation
    torch.testing.assert_close(x.grad, x2.grad)
    with torch.no_grad():
        torch.testing.assert_close(m.project_features(key, lin), F.linear(x2, w2, b2))
