"""SGL and NCL against dense, literal re-computations of the authors' formulas
(``wujcan/SGL-Torch`` ``model/general_recommender/SGL.py``; ``RUCAIBox/NCL`` ``ncl.py``,
``trainer.py``): augmented graphs, loss terms and gradients on tiny inputs, the E-step and
warm-up schedule, configuration, and a CLI run whose metrics are recomputed from
``topk_test.tsv``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.models.layers import info_nce_rows
from mmrecsys.models.ncl import NCL
from mmrecsys.models.sgl import SGL
from topk_recompute import recompute_from_topk


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, seed=3)


def batch(data, n=48, seed=0):
    """(user, positive, negative) triples with repeated users and items."""
    rng = np.random.default_rng(seed)
    users, items = data.train_pairs()
    rows = rng.choice(len(users), n, replace=True)
    return (torch.as_tensor(users[rows]), torch.as_tensor(items[rows]),
            torch.as_tensor(rng.integers(0, data.n_items, n)))


def norm_adj_literal(r: np.ndarray, eps: float = 0.0) -> torch.Tensor:
    """D^{-1/2} [[0, R], [Rᵀ, 0]] D^{-1/2}, inf -> 0, dense."""
    nu, ni = r.shape
    a = np.zeros((nu + ni, nu + ni))
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    deg = a.sum(1) + eps
    d = np.where(deg > 0, deg, np.inf) ** -0.5
    return torch.tensor(d[:, None] * a * d[None, :], dtype=torch.float32)


def lightgcn_literal(adjs, e0):
    out, h = [e0], e0
    for a in adjs:
        h = a @ h
        out.append(h)
    return torch.stack(out).mean(0)


def infonce_literal(z1_rows, z2_rows, z2_all, tau):
    """The authors' −log(exp(pos/τ) / Σ exp(tot/τ)), summed over rows (repeats included)."""
    z1, z2, za = (F.normalize(x, dim=1) for x in (z1_rows, z2_rows, z2_all))
    pos = (z1 * z2).sum(1)
    return torch.logsumexp((z1 @ za.T - pos[:, None]) / tau, dim=1).sum()


def grads(model):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for k, p in model.named_parameters()}


# ============================================================================ shared piece
@pytest.mark.parametrize("tau", [0.2, 0.01])
def test_info_nce_rows_equals_the_literal_formula(tau):
    torch.manual_seed(0)
    a, c = torch.randn(7, 5, requires_grad=True), torch.randn(11, 5, requires_grad=True)
    rows = torch.tensor([0, 3, 3, 10, 4, 0, 1])
    ours = info_nce_rows(a, c[rows], c, tau).sum()
    ref = infonce_literal(a, c[rows], c, tau)
    ga, gc = torch.autograd.grad(ours, (a, c))
    ra, rc = torch.autograd.grad(ref, (a, c))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    atol = 2e-6 / tau                                     # gradients scale with 1/τ
    torch.testing.assert_close(ga, ra, rtol=1e-4, atol=atol)
    torch.testing.assert_close(gc, rc, rtol=1e-4, atol=atol)


# ============================================================================ SGL
def sgl_literal(m: SGL, data, users, pos, neg, views):
    """SGL-Torch's loss: sums over the batch, all-node InfoNCE on both sides, ½‖·‖² reg."""
    r = data.train.toarray()
    full = norm_adj_literal(r)
    e0 = torch.cat([m.user_embedding, m.item_embedding])
    nu = m.n_users
    h = lightgcn_literal([full] * m.n_layers, e0)
    v = [lightgcn_literal([op.a.to_dense() for op in view], e0) for view in views]
    u, i, j = h[:nu][users], h[nu:][pos], h[nu:][neg]
    bpr = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).sum()
    reg = sum(x.pow(2).sum() / 2 for x in (m.user_embedding[users], m.item_embedding[pos],
                                           m.item_embedding[neg]))
    ssl = (infonce_literal(v[0][:nu][users], v[1][:nu][users], v[1][:nu], m.temperature)
           + infonce_literal(v[0][nu:][pos], v[1][nu:][pos], v[1][nu:], m.temperature))
    return bpr + m.ssl_reg * ssl + m.reg_weight * reg


@pytest.mark.parametrize("aug_type", ["ed", "nd", "rw"])
def test_sgl_loss_and_gradients_equal_the_literal_formula(data, aug_type):
    torch.manual_seed(0)
    m = SGL(data, embedding_dim=8, n_layers=2, aug_type=aug_type, ssl_ratio=0.3, reg_weight=0.1)
    m.pre_epoch(0)
    users, pos, neg = batch(data)
    terms = m.loss(users, pos, neg)
    assert set(terms) == {"bpr", "ssl", "reg"}
    sum(terms.values()).backward()
    ours = grads(m)
    m.zero_grad()
    ref = sgl_literal(m, data, users, pos, neg, m.views)
    ref.backward()
    torch.testing.assert_close(sum(terms.values()), ref, rtol=1e-5, atol=1e-4)
    for k, g in grads(m).items():
        torch.testing.assert_close(ours[k], g, rtol=1e-4, atol=1e-5)
        assert ours[k].abs().sum() > 0, k


def test_sgl_full_graph_is_the_plain_normalisation(data):
    m = SGL(data)
    torch.testing.assert_close(m.norm_adj.a.to_dense(), norm_adj_literal(data.train.toarray()))


def test_sgl_augmentations_drop_what_the_reference_drops(data):
    r = data.train.tocoo()
    n, nu, ni = r.nnz, data.n_users, data.n_items
    torch.manual_seed(1)
    m = SGL(data, aug_type="ed", ssl_ratio=0.25)
    views = m._draw_views()
    assert views[0][0] is views[0][1] is views[0][2] and views[0][0] is not views[1][0]
    for view in views:      # ⌊n(1 − ρ)⌋ edges kept, each edge twice in the symmetric graph
        assert view[0].nnz == 2 * int(n * 0.75)
        dense = view[0].a.to_dense()
        kept = (dense[:nu, nu:] > 0).numpy()
        assert (kept <= (data.train.toarray() > 0)).all()
        r_s = kept.astype(float)
        torch.testing.assert_close(dense, norm_adj_literal(r_s))
    m = SGL(data, aug_type="rw", ssl_ratio=0.25)
    views = m._draw_views()
    assert len({id(op) for op in views[0]}) == 3          # one graph per layer
    m = SGL(data, aug_type="nd", ssl_ratio=0.25)
    dense = m._draw_views()[0][0].a.to_dense()
    isolated_u = (dense[:nu].sum(1) == 0).sum().item()
    isolated_i = (dense[nu:].sum(1) == 0).sum().item()
    base_u = (data.train.toarray().sum(1) == 0).sum()
    base_i = (data.train.toarray().sum(0) == 0).sum()
    assert isolated_u >= int(nu * 0.25) + 0 and isolated_u <= int(nu * 0.25) + base_u
    assert isolated_i >= int(ni * 0.25) - base_i
    m = SGL(data, ssl_ratio=0.0)                          # ρ = 0: both views are the full graph
    assert all(op is m.norm_adj for view in m._draw_views() for op in view)


def test_sgl_initialisation_is_xavier_per_table(data):
    torch.manual_seed(0)
    m = SGL(make_synthetic(n_users=400, n_items=100, seed=0), embedding_dim=64)
    for t, n in ((m.user_embedding, 400), (m.item_embedding, 100)):
        bound = (6 / (n + 64)) ** 0.5
        assert t.abs().max() <= bound and t.abs().max() > 0.95 * bound


@pytest.mark.parametrize("kw", [{"aug_type": "xx"}, {"ssl_ratio": 1.0}, {"ssl_ratio": -0.1},
                                {"temperature": 0}, {"temperature": -1}, {"ssl_reg": -1},
                                {"aug_type": "rw", "n_layers": 0}])
def test_sgl_refuses_bad_settings(data, kw):
    with pytest.raises(ValueError):
        SGL(data, **kw)


# ============================================================================ NCL
def ncl_literal(m: NCL, data, users, pos, neg, with_proto: bool):
    r = data.train.toarray()
    a = norm_adj_literal(r, eps=1e-7)
    nu = m.n_users
    e0 = torch.cat([m.user_embedding, m.item_embedding])
    layers = [e0]
    for _ in range(max(m.n_layers, 2 * m.hyper_layers)):
        layers.append(a @ layers[-1])
    h = torch.stack(layers[: m.n_layers + 1]).mean(0)
    ctx = layers[2 * m.hyper_layers]
    u, i, j = h[:nu][users], h[nu:][pos], h[nu:][neg]
    bpr = -torch.log(1e-10 + torch.sigmoid((u * i).sum(1) - (u * j).sum(1))).mean()
    reg = sum(torch.linalg.norm(x) for x in (m.user_embedding[users], m.item_embedding[pos],
                                           m.item_embedding[neg])) / len(users)
    tau = m.temperature
    ssl = (infonce_literal(ctx[:nu][users], e0[:nu][users], e0[:nu], tau)
           + m.alpha * infonce_literal(ctx[nu:][pos], e0[nu:][pos], e0[nu:], tau))
    total = bpr + m.reg_weight * reg + m.ssl_reg * ssl
    if with_proto:
        cu, ci = m.user_centroids, m.item_centroids
        proto = (infonce_literal(e0[:nu][users], cu[m.user_2cluster[users]], cu, tau)
                 + infonce_literal(e0[nu:][pos], ci[m.item_2cluster[pos]], ci, tau))
        total = total + m.proto_reg * proto
    return total


@pytest.mark.parametrize("epoch,hyper_layers", [(0, 1), (3, 1), (3, 2)])
def test_ncl_loss_and_gradients_equal_the_literal_formula(data, epoch, hyper_layers):
    torch.manual_seed(0)
    # weights far above the defaults, so that every term moves the gradient
    m = NCL(data, embedding_dim=8, n_layers=2, hyper_layers=hyper_layers, num_clusters=5,
            warm_up_step=2, ssl_reg=0.3, proto_reg=0.2, alpha=0.7, reg_weight=0.1)
    m.pre_epoch(epoch)
    users, pos, neg = batch(data)
    terms = m.loss(users, pos, neg)
    assert set(terms) == {"bpr", "reg", "ssl", "proto"}
    assert (terms["proto"] == 0) == (epoch < 2)
    sum(terms.values()).backward()
    ours = grads(m)
    m.zero_grad()
    ref = ncl_literal(m, data, users, pos, neg, with_proto=epoch >= 2)
    ref.backward()
    torch.testing.assert_close(sum(terms.values()), ref, rtol=1e-5, atol=1e-5)
    for k, g in grads(m).items():
        # float32 sums in another order: error relative to the largest entry
        torch.testing.assert_close(ours[k], g, rtol=1e-4, atol=2e-6 * max(1.0, float(g.abs().max())))


def test_ncl_prototypes_are_normalised_kmeans_of_layer0(data):
    torch.manual_seed(0)
    m = NCL(data, embedding_dim=8, num_clusters=6, warm_up_step=0)
    m.pre_epoch(0)
    assert bool(m.prototypes_ready)
    torch.testing.assert_close(m.user_centroids.norm(dim=1), torch.ones(6))
    # each node sits in the cluster of its nearest (unnormalised) centroid: k-means assignment
    assert m.user_2cluster.unique().numel() > 1
    import faiss
    km = faiss.Kmeans(8, 6, niter=25, seed=1234)
    km.train(m.user_embedding.detach().numpy().copy())
    torch.testing.assert_close(m.user_centroids, F.normalize(torch.from_numpy(km.centroids), dim=1))
    # kept in the state dict (a resumed run goes on with the same prototypes)
    state = m.state_dict()
    m2 = NCL(data, embedding_dim=8, num_clusters=6, warm_up_step=0)
    m2.load_state_dict(state)
    assert bool(m2.prototypes_ready) and torch.equal(m2.item_2cluster, m.item_2cluster)


def test_ncl_skips_only_kmeans_runs_nobody_uses(data, monkeypatch):
    calls = []
    m = NCL(data, embedding_dim=8, num_clusters=5, warm_up_step=4, m_step=3)
    monkeypatch.setattr(m, "e_step", lambda: calls.append(m.epoch))
    for e in range(10):
        m.pre_epoch(e)
    # the reference runs one at 0, 3, 6, 9; the one at 0 serves epochs 0–2, all in the warm-up
    assert calls == [3, 6, 9]


@pytest.mark.parametrize("kw", [{"num_clusters": 41}, {"num_clusters": 0}, {"temperature": 0},
                                {"hyper_layers": 0}, {"m_step": 0}, {"proto_reg": -1}])
def test_ncl_refuses_bad_settings(data, kw):
    with pytest.raises(ValueError):
        NCL(data, **{"num_clusters": 5, **kw})


def test_ncl_refuses_more_prototypes_than_items_with_a_clear_message(data):
    with pytest.raises(ValueError, match="num_clusters=1000.*40 items"):
        NCL(data)


def test_defaults_and_aliases_are_the_references():
    cfg = resolve_config(SGL, "x")
    assert (cfg["embedding_dim"], cfg["n_layers"], cfg["ssl_ratio"], cfg["temperature"],
            cfg["ssl_reg"], cfg["reg_weight"], cfg["aug_type"], cfg["lr"], cfg["batch_size"]) == \
        (64, 3, 0.1, 0.2, 0.1, 1e-4, "ed", 1e-3, 2048)
    cfg = resolve_config(NCL, "x", overrides={"ssl_temp": 0.05, "embedding_size": 32})
    assert (cfg["temperature"], cfg["embedding_dim"], cfg["batch_size"], cfg["num_clusters"],
            cfg["proto_reg"], cfg["warm_up_step"]) == (0.05, 32, 4096, 1000, 8e-8, 20)


# ============================================================================ training, CLI
@pytest.mark.parametrize("name,extra", [("sgl", []), ("ncl", ["--set", "num_clusters=8",
                                                             "--set", "warm_up_step=1"])])
def test_cli_train_reports_the_metrics_of_topk_test(name, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 120, 90, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", name, "--data", str(d), "--out", str(run),
                                    "--set", "epochs=3", "--set", "batch_size=256", "--quiet",
                                    *extra])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name
    again = recompute_from_topk(run, load_dataset(d))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k


def test_contrast_blocks_are_reused_after_backward_and_values_stay_exact():
    """The K × N blocks of the all-node InfoNCE come from a pool: two alive at once (users and
    items of one step) are distinct, a block is reused once its backward has run, and the values
    and gradients equal the literal formula every time."""
    from mmrecsys.models import layers
    torch.manual_seed(0)
    layers._BLOCKS.free.clear()
    anchors = torch.randn(300, 8, requires_grad=True)       # not a multiple of ANCHOR_ROWS
    cands = torch.randn(50, 8, requires_grad=True)
    anchors2 = torch.randn(40, 8, requires_grad=True)
    cands2 = torch.randn(30, 8, requires_grad=True)
    ptrs = []
    for step in range(3):
        l1 = layers.info_nce_rows(anchors, cands[:300 % 50 + 1].repeat(300, 1)[:300], cands, 0.2)
        l2 = layers.info_nce_rows(anchors2, cands2[:1].repeat(40, 1), cands2, 0.5)
        assert len(layers._BLOCKS.free) == 0                # both blocks in use
        (l1.sum() + l2.sum()).backward()
        ptrs.append({b.data_ptr() for b in layers._BLOCKS.free})
        g = anchors.grad.clone()
        anchors.grad = None
        cands.grad = None
        a = F.normalize(anchors, dim=1)
        c = F.normalize(cands, dim=1)
        p = F.normalize(cands[:300 % 50 + 1].repeat(300, 1)[:300], dim=1)
        ref = torch.logsumexp(a @ c.T / 0.2, dim=1) - (a * p).sum(1) / 0.2
        torch.testing.assert_close(l1, ref)
        (rg,) = torch.autograd.grad(ref.sum(), anchors)
        torch.testing.assert_close(g, rg)
    assert len(layers._BLOCKS.free) == 2 and len(ptrs[0]) == 2   # both handed back
    assert ptrs[0] == ptrs[1] == ptrs[2]                    # and the same ones reused
    with torch.no_grad():                                   # no backward: handed back at once
        layers.info_nce_rows(anchors, cands[:1].repeat(300, 1), cands, 0.2)
    assert len(layers._BLOCKS.free) == 2
