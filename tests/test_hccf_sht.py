"""HCCF and SHT against dense, literal re-computations of the authors' TensorFlow formulas
(``akaxlh/HCCF`` ``labcode_efficient.py``; ``akaxlh/SHT`` ``labcode_hop.py``): encoders, loss terms
and gradients on tiny inputs, edge dropout, configuration checks, and a CLI run whose metrics
are recomputed from ``topk_test.tsv``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.graphs import EdgeList
from mmrecsys.models.hccf import HCCF, mean_sampled_pairs
from mmrecsys.models.sht import SHT
from topk_recompute import recompute_from_topk


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, seed=3)


def batch(data, n=48, seed=0):
    rng = np.random.default_rng(seed)
    users, items = data.train_pairs()
    rows = rng.choice(len(users), n, replace=True)
    return (torch.as_tensor(users[rows]), torch.as_tensor(items[rows]),
            torch.as_tensor(rng.integers(0, data.n_items, n)))


def norm_literal(data) -> torch.Tensor:
    """The code's ``transToLsts(norm=True)``, dense: R[u,i] / ((√(deg u+1e-8)+1e-8)(√(deg i+1e-8)+1e-8))."""
    r = (data.train.toarray() > 0).astype(np.float64)
    du = 1 / (np.sqrt(r.sum(1) + 1e-8) + 1e-8)
    di = 1 / (np.sqrt(r.sum(0) + 1e-8) + 1e-8)
    return torch.tensor(du[:, None] * r * di[None, :], dtype=torch.float32)


def lrelu(x, s):
    return torch.maximum(s * x, x)


def hinge_literal(data, u, p, n):
    deg = (data.train.toarray() > 0).sum(1)
    sbar = np.minimum(deg[deg > 0], 40).mean()
    return torch.clamp(1 - (p - n), min=0).sum() / (len(u) / sbar)


# ============================================================================ HCCF
def hccf_literal(m: HCCF, data, users, pos, neg):
    """labcode_efficient.py's ``ours()`` and ``prepareModel`` losses with keepRate 1."""
    a = norm_literal(data)
    s = m.leaky_slope
    eu, ei = m.user_embedding, m.item_embedding
    uu, ii = eu @ m.user_hyper, ei @ m.item_hyper
    ulats, ilats, gu, gi, yu, yi = [eu], [ei], [], [], [], []

    def hyper(lats, adj, side, layer):
        lat = lrelu(adj.T @ lats, s)
        for k in range(3):
            lat = (lrelu(lat.T @ m.mixing[side, layer, k], s)).T + lat
        return lrelu(adj @ lat, s)

    for layer in range(m.n_layers):
        zu = lrelu(a @ ilats[-1], s)
        zi = lrelu(a.T @ ulats[-1], s)
        hu = hyper(ulats[-1], uu, 0, layer)
        hi = hyper(ilats[-1], ii, 1, layer)
        gu.append(zu), gi.append(zi), yu.append(hu), yi.append(hi)
        ulats.append(zu + hu + ulats[-1])
        ilats.append(zi + hi + ilats[-1])
    ulat, ilat = sum(ulats), sum(ilats)
    pre = hinge_literal(data, users, (ulat[users] * ilat[pos]).sum(1), (ulat[users] * ilat[neg]).sum(1))

    def ssl(hyper_lat, gnn_lat):
        pos_score = torch.exp((hyper_lat * gnn_lat).sum(1) / m.temperature)
        neg_score = torch.exp(gnn_lat @ hyper_lat.T / m.temperature).sum(1)
        return (-torch.log(pos_score / (neg_score + 1e-8) + 1e-8)).sum()

    nz = torch.nn.functional.normalize
    uu_ids, ii_ids = torch.unique(users), torch.unique(torch.cat([pos, neg]))
    sl = 0
    for layer in range(m.n_layers):
        w = m.projection[layer]
        sl = sl + ssl(nz(yu[layer][uu_ids], dim=1) @ w, nz(gu[layer][uu_ids], dim=1))
        sl = sl + ssl(nz(yi[layer][ii_ids], dim=1) @ w, nz(gi[layer][ii_ids], dim=1))
    reg = sum((p ** 2).sum() for p in (eu, ei, m.user_hyper, m.item_hyper))
    return pre, m.ssl_reg * sl, m.reg_weight * reg, ulat, ilat


@pytest.mark.parametrize("slope,temp", [(0.5, 1.0), (0.1, 0.1)])
def test_hccf_loss_and_gradients_equal_the_literal_code(data, slope, temp):
    torch.manual_seed(0)
    m = HCCF(data, embedding_dim=8, n_hyperedges=6, keep_rate=1.0, leaky_slope=slope,
             temperature=temp, ssl_reg=0.3, reg_weight=1e-2)
    users, pos, neg = batch(data)
    ours = m.loss(users, pos, neg)
    pre, sl, reg, ulat, ilat = hccf_literal(m, data, users, pos, neg)
    assert float(ours["hinge"]) == pytest.approx(float(pre), rel=1e-5)
    assert float(ours["ssl"]) == pytest.approx(float(sl), rel=1e-5)
    assert float(ours["reg"]) == pytest.approx(float(reg), rel=1e-5)
    params = list(m.parameters())
    g_ours = torch.autograd.grad(sum(ours.values()), params)
    g_ref = torch.autograd.grad(pre + sl + reg, params)
    for (name, _), a, b in zip(m.named_parameters(), g_ours, g_ref):
        # float32 sums in another order: error relative to the largest entry
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6 * max(1.0, float(b.abs().max())),
                                   msg=name)
    hu, hi = m.representations()
    torch.testing.assert_close(hu, ulat.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hi, ilat.detach(), rtol=1e-5, atol=1e-6)


def test_hccf_contrast_is_finite_where_the_exponentials_overflow(data):
    torch.manual_seed(0)
    m = HCCF(data, embedding_dim=8, n_hyperedges=6, temperature=1e-3, ssl_reg=1.0)
    out = m.loss(*batch(data))
    assert all(torch.isfinite(v) for v in out.values())
    # each row's −log(ratio + 1e-8) is at most −log(1e-8)
    n_rows = 2 * len(torch.unique(batch(data)[0])) + 2 * len(torch.unique(torch.cat(batch(data)[1:])))
    assert float(out["ssl"]) <= n_rows * -math.log(1e-8) + 1e-3


def test_hccf_dropout_draws_fresh_masks_in_training_only(data):
    torch.manual_seed(0)
    m = HCCF(data, embedding_dim=8, n_hyperedges=6, keep_rate=0.5)
    b = batch(data)
    l1, l2 = float(sum(m.loss(*b).values())), float(sum(m.loss(*b).values()))
    assert l1 != l2                          # a fresh dropout draw per step
    r1, r2 = m.representations(), m.representations()
    torch.testing.assert_close(r1[0], r2[0])   # scoring: no dropout
    m1 = HCCF(data, embedding_dim=8, n_hyperedges=6, keep_rate=1.0)
    m1.load_state_dict(m.state_dict())
    torch.testing.assert_close(m1.representations()[0], r1[0])


def test_edge_dropout_keeps_a_share_and_rescales():
    torch.manual_seed(0)
    n = 20000
    e = EdgeList(torch.arange(n), torch.zeros(n, dtype=torch.long), torch.full((n,), 2.0), (n, 1))
    d = e.dropout(0.25)
    assert d.nnz == pytest.approx(0.25 * n, rel=0.05)
    assert torch.all(d.values == 8.0)
    assert e.dropout(1.0) is e
    with pytest.raises(ValueError):
        e.dropout(0.0)


def test_mean_sampled_pairs_caps_each_user_at_the_code_sample_count(data):
    deg = np.diff(data.train.indptr)
    assert mean_sampled_pairs(data.train, 40) == pytest.approx(np.minimum(deg[deg > 0], 40).mean())
    assert mean_sampled_pairs(data.train, 1) == 1.0


# ============================================================================ SHT
def sht_literal(m: SHT, data, users, pos, neg, edges):
    """labcode_hop.py's ``ours()`` with explicit per-head loops and the given sampled edges."""
    a = norm_literal(data)
    s, d, h = m.leaky_slope, m.embedding_dim, m.n_heads
    dh = d // h
    eu, ei = m.user_embedding, m.item_embedding
    xs_u, xs_i = [eu], [ei]
    for _ in range(m.gcn_hops):
        xs_u, xs_i = xs_u + [a @ xs_i[-1]], xs_i + [a.T @ xs_u[-1]]
    e0u, e0i = eu + sum(xs_u[1:]), ei + sum(xs_i[1:])
    ku, ki = e0u @ m.key, e0i @ m.key

    def layer(x, k, hyper, side, l):
        v = x @ m.value
        t = torch.cat([v[:, c * dh:(c + 1) * dh].T @ k[:, c * dh:(c + 1) * dh]
                       @ hyper[:, c * dh:(c + 1) * dh].T for c in range(h)], 0)     # (d, H)
        for j in range(2):
            t = lrelu(t @ m.mixing[side, l, j], s) + t
        p = t.T @ m.value                                                          # (H, d)
        return torch.cat([k[:, c * dh:(c + 1) * dh] @ (hyper[:, c * dh:(c + 1) * dh].T
                                                       @ p[:, c * dh:(c + 1) * dh])
                          for c in range(h)], 1)

    lu, li = [e0u], [e0i]
    for l in range(m.n_layers):
        lu.append(layer(lu[-1], ku, m.user_hyper, 0, l))
        li.append(layer(li[-1], ki, m.item_hyper, 1, l))
    ulat, ilat = sum(lu), sum(li)
    pre = hinge_literal(data, users, (ulat[users] * ilat[pos]).sum(1), (ulat[users] * ilat[neg]).sum(1))

    def meta(hyper):
        mean = hyper.mean(0, keepdim=True)
        w1 = (mean @ m.gen_w + m.gen_w_bias).reshape(d, d)
        b1 = mean @ m.gen_b + m.gen_b_bias
        return lambda key: lrelu(key @ w1 + b1, s)

    coo = data.train.tocoo()
    eus = torch.as_tensor(coo.row.astype(np.int64))[edges]
    eis = torch.as_tensor(coo.col.astype(np.int64))[edges]
    ua, ia = meta(m.user_hyper)(ku[eus]), meta(m.item_hyper)(ki[eis])
    q = lrelu(torch.cat([ua, ia], -1) @ m.score1 + m.score1_bias, s) + ua + ia
    scores = torch.sigmoid(q @ m.score2 + m.score2_bias).reshape(-1)
    preds = (e0u[eus] * e0i[eis]).sum(-1)
    half = len(edges) // 2
    sl = torch.clamp(1 - (preds[:half] - preds[half:]) * m.mult * (scores[:half] - scores[half:]),
                     min=0).sum()
    reg = sum((p ** 2).sum() for p in (eu, ei, m.user_hyper, m.item_hyper, m.key, m.value,
                                       m.gen_w, m.gen_b, m.score1, m.score2))
    return pre, m.ssl_reg * sl, m.reg_weight * reg, ulat, ilat


@pytest.mark.parametrize("heads,hops,slope", [(2, 2, 0.5), (4, 1, 0.1)])
def test_sht_loss_and_gradients_equal_the_literal_code(data, heads, hops, slope):
    torch.manual_seed(0)
    m = SHT(data, embedding_dim=8, n_heads=heads, n_hyperedges=6, gcn_hops=hops,
            leaky_slope=slope, ssl_reg=0.5, reg_weight=1e-2, mult=10.0)
    with torch.no_grad():      # non-zero biases, so that they are checked too
        for b in (m.gen_w_bias, m.gen_b_bias, m.score1_bias, m.score2_bias):
            b.uniform_(-0.1, 0.1)
    users, pos, neg = batch(data)
    edges = m.sample_edges()
    assert len(edges) % 2 == 0
    m.sample_edges = lambda: edges
    ours = m.loss(users, pos, neg)
    pre, sl, reg, ulat, ilat = sht_literal(m, data, users, pos, neg, edges)
    assert float(ours["hinge"]) == pytest.approx(float(pre), rel=1e-5)
    assert float(ours["ssl"]) == pytest.approx(float(sl), rel=1e-5)
    assert float(ours["reg"]) == pytest.approx(float(reg), rel=1e-5)
    params = list(m.parameters())
    g_ours = torch.autograd.grad(sum(ours.values()), params, allow_unused=True)
    g_ref = torch.autograd.grad(pre + sl + reg, params, allow_unused=True)
    for (name, _), a, b in zip(m.named_parameters(), g_ours, g_ref):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    hu, hi = m.representations()
    torch.testing.assert_close(hu, ulat.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hi, ilat.detach(), rtol=1e-5, atol=1e-6)


def test_sht_samples_the_code_number_of_edges(data):
    m = SHT(data, edge_sample_rate=0.5)
    n = int(0.5 * data.train.nnz)
    assert len(m.sample_edges()) == n + n % 2
    edges = m.sample_edges()
    assert int(edges.min()) >= 0 and int(edges.max()) < data.train.nnz


# ============================================================================ configuration
@pytest.mark.parametrize("cls,kwargs,match", [
    (HCCF, {"n_hyperedges": 0}, "hyperedge"), (HCCF, {"temperature": -1.0}, "temperature"),
    (HCCF, {"temperature": 0.0}, "temperature"), (HCCF, {"keep_rate": 0.0}, "keep_rate"),
    (HCCF, {"keep_rate": 1.5}, "keep_rate"), (HCCF, {"n_layers": 0}, "layer"),
    (HCCF, {"ssl_reg": -1e-3}, "ssl_reg"), (SHT, {"n_hyperedges": 0}, "hyperedge"),
    (SHT, {"embedding_dim": 30, "n_heads": 4}, "multiple"),
    (SHT, {"edge_sample_rate": 0.0}, "edge_sample_rate"), (SHT, {"reg_weight": -1.0}, "reg_weight"),
])
def test_bad_configuration_is_refused_before_training(data, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(data, **kwargs)


def test_cli_refuses_a_bad_value_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 120, 90, seed=1)
    res = CliRunner().invoke(main, ["train", "--model", "hccf", "--data", str(d), "--out",
                                    str(tmp_path / "run"), "--set", "n_hyperedges=0", "--quiet"])
    assert res.exit_code != 0
    assert "n_hyperedges=0" in res.output


@pytest.mark.parametrize("name", ["hccf", "sht"])
def test_cli_train_reports_the_metrics_of_topk_test(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 120, 90, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", name, "--data", str(d), "--out", str(run),
                                    "--set", "epochs=3", "--set", "batch_size=256", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name
    again = recompute_from_topk(run, load_dataset(d))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k


@pytest.mark.parametrize("scale,tau,pad", [(1.0, 1.0, 0), (3.0, 0.2, 0), (30.0, 0.1, 0),
                                           (1.0, 1.0, 4), (3.0, 0.2, 8)])
def test_bounded_logsumexp_equals_logsumexp_values_and_gradients(scale, tau, pad):
    from mmrecsys.models.layers import bounded_logsumexp
    torch.manual_seed(0)
    a = (torch.randn(7, 5, dtype=torch.float64) * scale).requires_grad_()
    b = (torch.randn(9, 5, dtype=torch.float64) * scale).requires_grad_()
    g = torch.randn(7, dtype=torch.float64)
    ours = bounded_logsumexp(a, b, tau, pad=pad)
    ref = torch.logsumexp(a @ b.T / tau, dim=1)
    torch.testing.assert_close(ours, ref)
    ga, gb = torch.autograd.grad(ours, (a, b), g)
    ra, rb = torch.autograd.grad(ref, (a, b), g)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("slope", [0.0, 0.1, 0.5, 1.0, 2.0])
def test_leaky_is_the_code_maximum_with_tensorflow_tie_gradient(slope):
    from mmrecsys.models.hccf import leaky
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = leaky(x, slope)
    torch.testing.assert_close(y, torch.maximum(slope * x, x))
    (g,) = torch.autograd.grad(y.sum(), x)
    # tf.maximum(a, b)'s gradient goes to a where a >= b: a = slope·x, so at x = 0 it is slope
    expected = torch.where(slope * x >= x, torch.full_like(x, slope), torch.ones_like(x))
    torch.testing.assert_close(g, expected)


def test_user_pairs_sampler_draws_the_code_batches(data):
    from mmrecsys.train.sampler import NegativeSampler, UserPairsSampler
    s = UserPairsSampler(data, 16, NegativeSampler(data, "all_items"), per_user=3)
    deg = np.diff(data.train.indptr)
    seen = []
    train = data.train.toarray() > 0
    for users, pos, neg in s.epoch(np.random.default_rng(0)):
        uniq, counts = np.unique(users, return_counts=True)
        assert len(uniq) <= 16
        np.testing.assert_array_equal(counts, np.minimum(deg[uniq], 3))
        assert train[users, pos].all() and not train[users, neg].any()
        seen.extend(uniq)
    assert sorted(seen) == list(np.flatnonzero(deg > 0))          # every user once per epoch
    assert len(s) == -(-int((deg > 0).sum()) // 16)


def test_hinge_scale_follows_the_sampler(data):
    m = HCCF(data, embedding_dim=8, n_hyperedges=6)
    assert m.train_sampler is None
    assert m.hinge_pairs_per_user / 100 == pytest.approx(__import__("mmrecsys.models.hccf", fromlist=["x"]).hinge_scale(m, 100))
    m.train_sampler, m.train_batch_size = "user_pairs", 256
    from mmrecsys.models.hccf import hinge_scale
    assert hinge_scale(m, 999) == 1 / 256
