"""LGMRec (georgeguo-cn/LGMRec models/lgmrec.py): hand-checked small cases, a dense literal reference, a short training run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrecsys.data import Dataset
from mmrecsys.models.lgmrec import LGMRec, hcl_term

# tiny graph: 3 users, 4 items; item 3 has no training interaction (only in test)
#   u0: i0 i1      u1: i1      u2: i0 i1 i2
TRAIN = [(0, 0), (0, 1), (1, 1), (2, 0), (2, 1), (2, 2)]
HELD = [(0, 2, 1), (1, 0, 1), (2, 3, 1), (0, 3, 2), (1, 2, 2), (2, 3, 2)]


def tiny_data(n_modalities=2, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    u = [a for a, _ in TRAIN] + [a for a, _, _ in HELD]
    i = [b for _, b in TRAIN] + [b for _, b, _ in HELD]
    lab = [0] * len(TRAIN) + [c for _, _, c in HELD]
    widths = [5, 3, 4][:n_modalities]
    names = ["image_feat", "text_feat", "audio_feat"][:n_modalities]
    feats = {n: rng.standard_normal((4, w)).astype(np.float32) for n, w in zip(names, widths)}
    return Dataset.from_arrays(u, i, lab, 3, 4, feats, name="tiny")


def dense(t):
    if isinstance(t, torch.nn.Module):  # a SparseGraph operator
        t = t.a
    return t.to_dense() if t.layout != torch.strided else t


# ---------------------------------------------------------------------------- graphs
def test_adjacency_normalisation_by_hand():
    m = LGMRec(tiny_data())
    a = dense(m.norm_adj)
    deg = {"u0": 2, "u1": 1, "u2": 3, "i0": 2, "i1": 3, "i2": 1}
    U = 3
    expected = torch.zeros(7, 7)
    names_u, names_i = ["u0", "u1", "u2"], ["i0", "i1", "i2", "i3"]
    for uu, ii in TRAIN:
        v = 1.0 / math.sqrt((deg[names_u[uu]] + 1e-7) * (deg[names_i[ii]] + 1e-7))
        expected[uu, U + ii] = expected[U + ii, uu] = v
    torch.testing.assert_close(a, expected)
    assert a[U + 3].abs().sum() == 0 and a[:, U + 3].abs().sum() == 0   # untrained item: zero row
    assert a.diagonal().abs().sum() == 0                                # no self-loops
    assert abs(a[0, U + 1].item() - 1 / math.sqrt(6)) < 1e-6           # u0 (deg 2) – i1 (deg 3)
    torch.testing.assert_close(dense(m.inter), torch.tensor(
        [[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32))


def test_user_modal_initialisation_is_mean_of_projected_items():
    data = tiny_data()
    m = LGMRec(data, embedding_dim=3, hyper_num=2)
    f0, s_item, s_user = m.modal_inputs()[0]
    x = torch.from_numpy(data.features["image_feat"])
    fi = x @ m.projection["image_feat"]
    expected_users = torch.stack([(fi[0] + fi[1]) / 2, fi[1], (fi[0] + fi[1] + fi[2]) / 3])
    torch.testing.assert_close(f0[:3], expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f0[3:], fi)
    si = x @ m.hyperedges["image_feat"]
    torch.testing.assert_close(s_item, si)
    # user logits: plain SUM over the user's items, no degree normalisation
    torch.testing.assert_close(s_user, torch.stack([si[0] + si[1], si[1], si[0] + si[1] + si[2]]))


def test_mge_propagation_last_layer_and_cge_layer_mean():
    data = tiny_data()
    m = LGMRec(data, embedding_dim=3, n_layers=2, n_mm_layers=3)
    a = dense(m.norm_adj)
    ego = torch.randn(7, 3)
    f0 = [torch.randn(7, 3), torch.randn(7, 3)]
    e_c, feats = m.local_propagation(ego, f0)
    torch.testing.assert_close(e_c, (ego + a @ ego + a @ a @ ego) / 3)
    for f, x in zip(feats, f0):
        torch.testing.assert_close(f, a @ a @ a @ x)
    m.n_mm_layers = 0
    _, feats = m.local_propagation(ego, f0)
    torch.testing.assert_close(feats[1], f0[1])
    m.cf_model = "mf"
    e_c, _ = m.local_propagation(ego, f0)
    torch.testing.assert_close(e_c, ego)


@pytest.mark.parametrize("cf_model", ["lightgcn", "mf"])
@pytest.mark.parametrize("n_modal", [1, 2])
def test_local_propagation_every_layer_count_with_gradients(cf_model, n_modal):
    """E_c and the F^m against the dense reference, values and gradients, whichever of L_c and
    L_m is larger (0 included)."""
    data = tiny_data()
    for lc in range(4):
        for lm in range(4):
            m = LGMRec(data, embedding_dim=3, n_layers=lc, n_mm_layers=lm, cf_model=cf_model)
            a = dense(m.norm_adj)
            ego = torch.randn(7, 3, requires_grad=True)
            f0 = [torch.randn(7, 3, requires_grad=True) for _ in range(n_modal)]
            e_c, feats = m.local_propagation(ego, f0)
            n = lc if cf_model == "lightgcn" else 0
            ref_e = sum(torch.linalg.matrix_power(a, k) @ ego for k in range(n + 1)) / (n + 1)
            ref_f = [torch.linalg.matrix_power(a, lm) @ x for x in f0]
            torch.testing.assert_close(e_c, ref_e)
            for f, r in zip(feats, ref_f):
                torch.testing.assert_close(f, r)
            weights = [torch.randn(7, 3) for _ in range(n_modal + 1)]
            out = (e_c * weights[0]).sum() + sum((f * w).sum() for f, w in zip(feats, weights[1:]))
            grads = torch.autograd.grad(out, [ego] + f0)
            ref = (ref_e * weights[0]).sum() + sum((f * w).sum() for f, w in zip(ref_f, weights[1:]))
            for g, r in zip(grads, torch.autograd.grad(ref, [ego] + f0)):
                torch.testing.assert_close(g, r)


# ---------------------------------------------------------------------------- hypergraph
def test_dependency_matrices_gumbel_softmax_and_dropout():
    m = LGMRec(tiny_data(), temperature=0.2)
    logits = torch.tensor([[0.0, 0.2, -0.1], [1.0, 0.0, 0.0]])
    torch.manual_seed(5)
    h = m.dependency(logits)
    torch.manual_seed(5)
    g = -torch.empty_like(logits).exponential_().log()     # standard Gumbel(0, 1)
    torch.testing.assert_close(h, torch.softmax((logits + g) / 0.2, dim=1))
    torch.testing.assert_close(h.sum(1), torch.ones(2))
    # inference keeps the noise by default ...
    m.eval()
    torch.manual_seed(6)
    noisy = m.dependency(logits)
    assert not torch.allclose(noisy, torch.softmax(logits / 0.2, 1))
    # ... and is deterministic on request
    m.deterministic_inference = True
    det = m.dependency(logits)
    torch.testing.assert_close(det, torch.softmax(logits / 0.2, 1))
    # hand value: softmax([0, 1]/0.2) = [1/(1+e^5), e^5/(1+e^5)]
    torch.testing.assert_close(m.dependency(torch.tensor([[0.0, 1.0]])),
                               torch.tensor([[1 / (1 + math.e ** 5), 1 / (1 + math.e ** -5)]]))


def test_hypergraph_pass_by_hand():
    m = LGMRec(tiny_data(), n_hyper_layer=1)
    h_item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])   # (I=4, A=2)
    h_user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])               # (U=3, A=2)
    g0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [2.0, 2.0]])       # (I, d=2)
    g_user, g_item, z = m.hypergraph(h_item, h_user, g0)
    # hyperedge 0 collects items 0, 2 and half of 3: (1+3+1, 0+0+1) = (5, 1); hyperedge 1: (1, 3)
    torch.testing.assert_close(z, torch.tensor([[5.0, 1.0], [1.0, 3.0]]))
    torch.testing.assert_close(g_item, torch.tensor([[5.0, 1.0], [1.0, 3.0], [5.0, 1.0], [3.0, 2.0]]))
    torch.testing.assert_close(g_user, torch.tensor([[5.0, 1.0], [1.0, 3.0], [3.0, 2.0]]))
    m.n_hyper_layer = 2  # the same H reused; users read the last layer's hyperedges
    g_user2, g_item2, z2 = m.hypergraph(h_item, h_user, g0)
    z_exp = h_item.T @ (h_item @ torch.tensor([[5.0, 1.0], [1.0, 3.0]]))
    torch.testing.assert_close(z2, z_exp)
    torch.testing.assert_close(g_user2, h_user @ z_exp)


def test_dropout_on_dependencies_in_training_only():
    m = LGMRec(tiny_data(), keep_rate=0.5)
    h = torch.full((200, 4), 0.25)
    m.train()
    torch.manual_seed(0)
    dropped = F.dropout(h, 1 - m.keep_rate, m.training)
    assert set(torch.unique(dropped).tolist()) == {0.0, 0.5}     # kept entries scaled by 1/keep_rate
    m.eval()
    torch.testing.assert_close(F.dropout(h, 1 - m.keep_rate, m.training), h)


# ---------------------------------------------------------------------------- contrastive loss
def test_contrastive_loss_value_on_fixed_input():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cand = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    rows = torch.tensor([0, 2, 0])  # row 0 twice: counted twice (sum over the batch)
    tau = 0.5
    # cosines by hand: anchor0·cand = [1, 1/√2, 0]; anchor2·cand = [1/√2, 1, -1/√2];
    # the positive of row b is cand[b]: cos 1 for row 0, −1/√2 for row 2
    r = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(r / tau) + math.exp(0)))
    l2 = -math.log(math.exp(-r / tau) / (math.exp(r / tau) + math.exp(1 / tau) + math.exp(-r / tau)))
    value = hcl_term(anchor, cand, rows, tau)
    assert abs(value.item() - (2 * l0 + l2)) < 1e-5


@pytest.mark.parametrize("tau", [0.2, 0.01])  # 0.01: the row-maximum shift path
def test_contrastive_factored_and_chunked_paths_match_direct(tau):
    torch.manual_seed(0)
    h = torch.rand(50, 3, requires_grad=True)
    z = torch.randn(3, 8, requires_grad=True)
    anchor = torch.randn(50, 8, requires_grad=True)
    rows = torch.randint(0, 50, (40,))

    def direct():
        cand = h @ z
        p, q = F.normalize(anchor[rows], dim=1), F.normalize(cand[rows], dim=1)
        qa = F.normalize(cand, dim=1)
        return (torch.logsumexp(p @ qa.T / tau, 1) - (p * q).sum(1) / tau).sum()

    ref = direct()
    g_ref = torch.autograd.grad(ref, (h, z, anchor))
    for factors in (None, "hz"):
        cand = h @ z
        val = hcl_term(anchor, cand, rows, tau, (h, z) if factors else None, chunk_elems=100)
        g = torch.autograd.grad(val, (h, z, anchor))
        torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-4)
        for a, b in zip(g, g_ref):  # gradients scale with 1/τ: float32 tolerance scaled too
            torch.testing.assert_close(a, b, rtol=1e-4 * 0.2 / tau, atol=1e-5 * 0.2 / tau)


# ---------------------------------------------------------------------------- full model
def reference_loss(m: LGMRec, data: Dataset, users, pos, neg, training=True, legacy=False):
    """Literal dense transcription of the official forward/loss (paper Eqs. 2–15, code's forward and calculate_loss), same RNG order."""
    U, I = data.n_users, data.n_items
    r = torch.from_numpy(data.train.toarray())
    a = torch.zeros(U + I, U + I)
    a[:U, U:], a[U:, :U] = r, r.T
    deg = a.sum(1) + 1e-7
    a_hat = deg[:, None] ** -0.5 * a * deg[None, :] ** -0.5
    num_inters = 1.0 / (r.sum(1) + 1e-7)
    keys = list(m._keys)
    xs = [m.features(k) for k in keys]
    hyp = []
    for k, x in zip(keys, xs):
        i_h = x @ m.hyperedges[k]
        u_h = r @ i_h
        hyp.append([F.gumbel_softmax(i_h, m.temperature, dim=1), F.gumbel_softmax(u_h, m.temperature, dim=1), u_h])
    if legacy:
        hyp[0][1], hyp[1][1] = hyp[1][1], hyp[1][2]
    ego = torch.cat([m.user_embedding, m.item_embedding])
    layers = [ego]
    for _ in range(m.n_layers):
        layers.append(a_hat @ layers[-1])
    cge = torch.stack(layers).mean(0)
    lge = cge
    for k, x in zip(keys, xs):
        item_feats = x @ m.projection[k]
        user_feats = (r @ item_feats) * num_inters[:, None]
        f = torch.cat([user_feats, item_feats])
        for _ in range(m.n_mm_layers):
            f = a_hat @ f
        lge = lge + F.normalize(f)
    drop = torch.nn.Dropout(1 - m.keep_rate)
    drop.train(training)
    glob, per = 0, []
    for h_i, h_u, _ in hyp:
        hi, hu = drop(h_i), drop(h_u)
        gi = cge[U:]
        for _ in range(m.n_hyper_layer):
            lat = hi.T @ gi
            gi = hi @ lat
            gu = hu @ lat
        per.append((gu, gi))
        glob = glob + torch.cat([gu, gi])
    out = lge + m.alpha * F.normalize(glob)
    ue, ie = out[:U], out[U:]
    u, i, j = ue[users], ie[pos], ie[neg]
    bpr = -torch.mean(F.logsigmoid((u * i).sum(1) - (u * j).sum(1)))

    def ssl(e1, e2, all_e):
        n1, n2, na = F.normalize(e1), F.normalize(e2), F.normalize(all_e)
        pos_s = torch.exp((n1 * n2).sum(1) / m.temperature)
        ttl = torch.exp(n1 @ na.T / m.temperature).sum(1)
        return -torch.log(pos_s / ttl).sum()

    (gu_v, gi_v), (gu_t, gi_t) = per[0], per[1]
    hcl = ssl(gu_v[users], gu_t[users], gu_t) + ssl(gi_v[pos], gi_t[pos], gi_t)
    reg = (torch.norm(u) + torch.norm(i) + torch.norm(j)) / users.shape[0]
    return {"bpr": bpr, "hcl": m.cl_weight * hcl, "reg": m.reg_weight * reg}, out


@pytest.mark.parametrize("legacy", [False, True])
def test_total_loss_matches_dense_reference(legacy):
    data = tiny_data()
    torch.manual_seed(1)
    m = LGMRec(data, embedding_dim=4, hyper_num=2, n_layers=2, n_mm_layers=2, n_hyper_layer=2,
               keep_rate=0.6, alpha=0.7, cl_weight=0.01, reg_weight=0.1,
               legacy_user_hyperedges=legacy)
    users, pos, neg = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0, 2, 1]), torch.tensor([2, 3, 3, 0])
    m.train()
    torch.manual_seed(7)
    got = m.loss(users, pos, neg)
    torch.manual_seed(7)
    ref, _ = reference_loss(m, data, users, pos, neg, legacy=legacy)
    for k in ("bpr", "hcl", "reg"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    total_got = sum(got.values())
    total_ref = sum(ref.values())
    grads = torch.autograd.grad(total_got, list(m.parameters()))
    grads_ref = torch.autograd.grad(total_ref, list(m.parameters()))
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-6)
    # inference: same forward without dropout, Gumbel noise kept
    m.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        ue, ie = m.representations()
    torch.manual_seed(3)
    _, out = reference_loss(m, data, users, pos, neg, training=False, legacy=legacy)
    torch.testing.assert_close(torch.cat([ue, ie]), out.detach(), rtol=1e-5, atol=1e-6)


def test_initial_hcl_magnitude_is_the_batch_sum_of_log_n():
    """At initialisation a positive is no closer than any candidate, so each anchor row costs
    about log(N) nats; the official loss SUMS them over the batch, so with its weights
    (λ_cl = 1e-4, B = 2048) the weighted HCL term is λ·B·(log U + log I) and dominates BPR."""
    from mmrecsys.data.synthetic import make_synthetic
    data = make_synthetic()                                     # 2000 users, 1000 items
    torch.manual_seed(999)
    m = LGMRec(data).train()
    r = data.train.tocoo()
    pick = np.random.default_rng(0).choice(r.nnz, 2048, replace=False)
    users = torch.as_tensor(r.row[pick], dtype=torch.long)
    pos = torch.as_tensor(r.col[pick], dtype=torch.long)
    neg = torch.as_tensor(np.random.default_rng(1).integers(0, data.n_items, 2048))
    torch.manual_seed(5)
    terms = m.loss(users, pos, neg)
    per_row = terms["hcl"].item() / m.cl_weight / len(users)   # user term + item term per row
    log_n = math.log(data.n_users) + math.log(data.n_items)
    assert abs(per_row - log_n) < 1.0, (per_row, log_n)
    assert terms["hcl"].item() > 3 * terms["bpr"].item()
    # a sum, not a mean: the same rows twice cost exactly twice (same noise draws)
    torch.manual_seed(5)
    twice = m.loss(torch.cat([users, users]), torch.cat([pos, pos]), torch.cat([neg, neg]))
    torch.testing.assert_close(twice["hcl"], 2 * terms["hcl"])
    torch.testing.assert_close(twice["bpr"], terms["bpr"])


def test_parameter_count_matches_the_official_log():
    """The official Baby log reports 33,584,320 trainable parameters, which counts the raw
    4096- and 384-wide feature tables (7,050 rows each, frozen in use); without them the
    model has (U + I)·d + Σ_m D_m·(d + A) = 2,000,320."""
    U, I, widths = 19445, 7050, (4096, 384)
    feats = {f"m{j}": np.zeros((I, w), np.float32) for j, w in enumerate(widths)}  # never touched
    data = Dataset.from_arrays([0, U - 1], [0, I - 1], [0, 0], U, I, feats, name="baby-shaped")
    m = LGMRec(data, embedding_dim=64, hyper_num=4)
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params + I * sum(widths) == 33_584_320
    small = LGMRec(tiny_data(), embedding_dim=4, hyper_num=2)
    assert sum(p.numel() for p in small.parameters()) == 7 * 4 + 5 * (4 + 2) + 3 * (4 + 2)


def test_determinism_under_a_seed():
    data = tiny_data()
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0]), torch.tensor([3, 2, 3])

    def run():
        torch.manual_seed(11)
        m = LGMRec(data, embedding_dim=4, hyper_num=2)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        losses = []
        for _ in range(3):
            loss = sum(m.loss(users, pos, neg).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in m.parameters()]

    l1, p1 = run()
    l2, p2 = run()
    assert l1 == l2
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)


def test_modalities_from_data_any_number_and_clear_error_without():
    m3 = LGMRec(tiny_data(3), embedding_dim=4, hyper_num=2)
    assert m3._keys == ["image_feat", "text_feat", "audio_feat"]
    terms = m3.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([3, 3]))
    assert all(torch.isfinite(v) for v in terms.values()) and terms["hcl"] > 0
    m1 = LGMRec(tiny_data(1), embedding_dim=4, hyper_num=2)
    assert m1.loss(torch.tensor([0]), torch.tensor([0]), torch.tensor([3]))["hcl"].item() == 0.0
    empty = tiny_data(0)
    with pytest.raises(ValueError, match="needs item modality features"):
        LGMRec(empty)
    with pytest.raises(ValueError, match="two-modality"):
        LGMRec(tiny_data(3), legacy_user_hyperedges=True)


# ---------------------------------------------------------------------------- training
def test_short_training_improves_validation_recall():
    synthetic = pytest.importorskip("mmrecsys.data.synthetic")
    train = pytest.importorskip("mmrecsys.train")
    from mmrecsys.evaluation import evaluate
    data = synthetic.make_synthetic(n_users=600, n_items=300, seed=0)
    overrides = {"epochs": 6, "batch_size": 512, "lr": 5e-3, "deterministic_inference": True,
                 "seed": 1, "cache_dir": ""}
    torch.manual_seed(1)
    untrained = LGMRec(data, deterministic_inference=True)
    before = evaluate(untrained, data, "valid", topk=(20,)).metrics["recall@20"]
    res = train.fit(data, "lgmrec", overrides, log=None)
    after = res["valid"]["recall@20"]
    assert after > before + 0.05, (before, after)


def test_inference_session_reuses_the_noise_free_part_exactly():
    """Forward passes inside inference_session equal fresh ones draw for draw; training mode
    and gradient-enabled passes never read the cache; the cache ends with the session."""
    from mmrecsys.evaluation import evaluate
    from mmrecsys.evaluation.ranking import seeded
    data = tiny_data()
    m = LGMRec(data, embedding_dim=4, hyper_num=3)
    m.eval()
    with torch.no_grad(), seeded(5):
        fresh = [m.representations() for _ in range(3)]
    with torch.no_grad(), seeded(5), m.inference_session():
        calls = []
        orig = m.modal_inputs
        m.modal_inputs = lambda: calls.append(1) or orig()
        reused = [m.representations() for _ in range(3)]
        del m.modal_inputs
    assert len(calls) == 1
    for (a, b), (c, d) in zip(fresh, reused):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert "_session" not in m.__dict__
    with m.inference_session():
        m.train()
        u, _, _ = m.forward()
        assert u.requires_grad and "parts" not in m.__dict__["_session"]
    m.eval()
    r1 = evaluate(m, data, "test", topk=(2,), seed=3).metrics
    r2 = evaluate(m, data, "test", topk=(2,), seed=3).metrics
    assert r1 == r2
