"""VBPR, BM3 and FREEDOM against dense, literal re-computations of MMRec's formulas
(``enoche/MMRec`` ``src/models/{vbpr,bm3,freedom}.py``): loss terms and gradients on tiny
inputs, graph construction, initialisation statistics, configuration, and a CLI run whose
reported metrics are recomputed from ``topk_test.tsv``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import model_kwargs, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.models import get_model_class
from mmrecsys.models import bm3 as bm3_module
from mmrecsys.models.freedom import FREEDOM
from mmrecsys.models.vbpr import VBPR
from mmrecsys.models.bm3 import BM3
from topk_recompute import recompute_from_topk

torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Feature rows projected a few at a time, so that the tests cover the block loop."""
    from mmrecsys.models import layers
    monkeypatch.setattr(layers, "PROJECT_BLOCK_BYTES", 4 * 384 * 7)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=60, n_items=40, seed=3)


def batch(data, n=48, seed=0):
    """A batch of (user, positive, negative) triples with repeated users and items."""
    rng = np.random.default_rng(seed)
    users, items = data.train_pairs()
    rows = rng.choice(len(users), n, replace=True)
    neg = rng.integers(0, data.n_items, n)
    return (torch.as_tensor(users[rows]), torch.as_tensor(items[rows]), torch.as_tensor(neg))


def dense(graph) -> torch.Tensor:
    return graph.a.to_dense()


def grads(model):
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for k, p in model.named_parameters()}


def assert_same_grads(model, loss_ours, loss_ref, atol=1e-6, rtol=1e-4):
    model.zero_grad(set_to_none=True)
    loss_ours.backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)
    loss_ref.backward()
    ref = grads(model)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=atol, rtol=rtol, msg=k)


def mmrec_norm_adj(train, n_users, n_items) -> torch.Tensor:
    """MMRec's get_norm_adj_mat, densely: D^{-1/2} A D^{-1/2}, D = binary degree + 1e-7."""
    r = torch.as_tensor(train.toarray() > 0, dtype=torch.float32)
    a = torch.zeros(n_users + n_items, n_users + n_items)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    d = (a.sum(1) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def bpr_mmrec(pos, neg):                # common/loss.py BPRLoss
    return -torch.log(1e-10 + torch.sigmoid(pos - neg)).mean()


def emb_mmrec(*xs):                     # common/loss.py EmbLoss
    return sum(torch.norm(x, p=2) for x in xs) / xs[-1].shape[0]


def bpr_freedom(u, a, b):               # freedom.py bpr_loss
    return -torch.mean(F.logsigmoid((u * a).sum(1) - (u * b).sum(1)))


# ============================================================================ VBPR
def test_vbpr_concatenates_text_then_image(data):
    m = VBPR(data)
    assert list(data.features) == ["image_feat", "text_feat"]
    expect = np.concatenate([data.features["text_feat"], data.features["image_feat"]], 1)
    assert np.array_equal(m.item_features.weight.numpy(), expect)
    assert not m.item_features.weight.requires_grad          # the features are not trained
    assert m.user_embedding.shape == (data.n_users, 128) and m.item_embedding.shape == (data.n_items, 64)


def test_vbpr_loss_and_gradients_equal_the_literal_formula(data):
    torch.manual_seed(0)
    m = VBPR(data, embedding_dim=8, reg_weight=0.3)
    with torch.no_grad():                       # a non-zero bias, so that it is tested too
        m.item_linear.bias.normal_()
    users, pos, neg = batch(data)
    terms = m.loss(users, pos, neg)
    # literal: every item projected, then the batch rows (vbpr.py forward / calculate_loss)
    feats = torch.cat([torch.as_tensor(data.features["text_feat"]),
                       torch.as_tensor(data.features["image_feat"])], -1)
    items = torch.cat([m.item_embedding, m.item_linear(feats)], -1)
    u, i, j = m.user_embedding[users], items[pos], items[neg]
    mf = bpr_mmrec((u * i).sum(1), (u * j).sum(1))
    reg = emb_mmrec(u, i, j)
    torch.testing.assert_close(terms["bpr"], mf)
    torch.testing.assert_close(terms["reg"], 0.3 * reg)
    assert_same_grads(m, sum(terms.values()), mf + 0.3 * reg)
    # full_sort_predict: p_u · q_i for every item
    m.eval()
    with torch.no_grad():
        ur, ir = m.representations()
        torch.testing.assert_close(ur @ ir.T, m.user_embedding @ items.T)


def test_vbpr_initialisation(data):
    big = make_synthetic(n_users=400, n_items=300, seed=0)
    torch.manual_seed(1)
    m = VBPR(big)
    d = m.embedding_dim
    for w, fan in ((m.user_embedding, big.n_users + 2 * d), (m.item_embedding, big.n_items + d)):
        bound = math.sqrt(6.0 / fan)                       # xavier_uniform over the table
        assert w.abs().max() <= bound
        assert float(w.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    w = m.item_linear.weight                               # xavier_normal, zero bias
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2.0 / (w.shape[0] + w.shape[1])), rel=0.03)
    assert float(w.detach().mean()) == pytest.approx(0.0, abs=3e-3)
    assert torch.count_nonzero(m.item_linear.bias) == 0


# ============================================================================ BM3
def fake_dropout(x, p=0.5, training=True, inplace=False):
    """A deterministic, row-wise stand-in for F.dropout (so both sides draw the same mask)."""
    keep = (torch.frac(x * 997.0).abs() > p).float()
    return x * keep / (1.0 - p)


def bm3_literal(m, data, users, items, dropout):
    """bm3.py calculate_loss, every table in full, F.dropout replaced by ``dropout``."""
    ego = torch.cat([m.user_embedding, m.item_embedding], 0)
    adj = mmrec_norm_adj(data.train, data.n_users, data.n_items)
    layers = [ego]
    for _ in range(m.n_layers):
        ego = adj @ ego
        layers.append(ego)
    allx = torch.stack(layers, 1).mean(1)
    u_ori, i_ori = allx[: data.n_users], allx[data.n_users:] + m.item_embedding
    t_feat = m.projections[1](m.features[1].weight)        # text_trs(text_embedding.weight)
    v_feat = m.projections[0](m.features[0].weight)        # image_trs(image_embedding.weight)
    with torch.no_grad():
        u_t, i_t = dropout(u_ori.clone(), m.dropout), dropout(i_ori.clone(), m.dropout)
        t_t, v_t = dropout(t_feat.clone(), m.dropout), dropout(v_feat.clone(), m.dropout)
    g = m.predictor
    u_on, i_on = g(u_ori)[users], g(i_ori)[items]
    u_t, i_t = u_t[users], i_t[items]
    cos = lambda a, b: F.cosine_similarity(a, b.detach(), dim=-1).mean()  # noqa: E731
    t_on, v_on = g(t_feat)[items], g(v_feat)[items]
    loss_t, loss_tv = 1 - cos(t_on, i_t), 1 - cos(t_on, t_t[items])
    loss_v, loss_vt = 1 - cos(v_on, i_t), 1 - cos(v_on, v_t[items])
    rec = (1 - cos(u_on, i_t)) + (1 - cos(i_on, u_t))
    reg = emb_mmrec(u_ori, i_ori)
    align = loss_t + loss_v + loss_tv + loss_vt
    return rec, reg, align


@pytest.mark.parametrize("n_layers", [1, 2])
def test_bm3_loss_and_gradients_equal_the_literal_formula(data, n_layers, monkeypatch):
    torch.manual_seed(0)
    m = BM3(data, embedding_dim=8, n_layers=n_layers, dropout=0.3, reg_weight=0.1, cl_weight=2.0)
    monkeypatch.setattr(bm3_module.F, "dropout", fake_dropout)
    users, pos, neg = batch(data)
    terms = m.loss(users, pos, neg)
    rec, reg, align = bm3_literal(m, data, users, pos, fake_dropout)
    torch.testing.assert_close(terms["rec"], rec)
    torch.testing.assert_close(terms["reg"], 0.1 * reg)
    torch.testing.assert_close(terms["align"], 2.0 * align)
    assert set(terms) == {"rec", "reg", "align"}
    # the raw feature tables are trained, as nn.Embedding.from_pretrained(freeze=False)
    assert_same_grads(m, sum(terms.values()), rec + 0.1 * reg + 2.0 * align)
    assert m.features[0].weight.requires_grad


def test_bm3_target_dropout_scales_and_ignores_negatives(data):
    torch.manual_seed(0)
    m = BM3(data, embedding_dim=8, dropout=0.5)
    users, pos, neg = batch(data)
    torch.manual_seed(5)
    a = m.loss(users, pos, neg)
    torch.manual_seed(5)
    b = m.loss(users, pos, torch.zeros_like(neg))           # negatives are not read
    for k in a:
        assert torch.equal(a[k], b[k])
    torch.manual_seed(6)
    c = m.loss(users, pos, neg)                             # a fresh target dropout
    assert not torch.equal(a["rec"], c["rec"])
    # F.dropout(x, p) as in the code: entries zeroed with probability p, kept ones × 1/(1-p)
    x = torch.ones(20000)
    y = F.dropout(x, 0.5)
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    assert float((y == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_bm3_scores_use_the_predictor(data):
    torch.manual_seed(0)
    m = BM3(data, embedding_dim=8)
    m.eval()
    with torch.no_grad():
        ur, ir = m.representations()
        h_u, h_i = m.forward()
        torch.testing.assert_close(ur, h_u @ m.predictor.weight.T + m.predictor.bias)
        torch.testing.assert_close(ir, h_i @ m.predictor.weight.T + m.predictor.bias)


def test_bm3_initialisation():
    big = make_synthetic(n_users=400, n_items=300, seed=0)
    torch.manual_seed(1)
    m = BM3(big)
    d = m.embedding_dim
    for w, n in ((m.user_embedding, big.n_users), (m.item_embedding, big.n_items)):
        assert float(w.detach().std()) == pytest.approx(math.sqrt(2.0 / (n + d)), rel=0.03)
    for lin in [m.predictor, *m.projections]:                  # xavier_normal weights
        fan_out, fan_in = lin.weight.shape
        assert float(lin.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.06)
        assert lin.bias.abs().max() <= 1 / math.sqrt(fan_in)   # torch's Linear default bias
        assert torch.count_nonzero(lin.bias) == d
    for table, mod in zip(m.features, m.modalities):           # a copy of the raw features
        assert np.array_equal(table.weight.detach().numpy(), big.features[mod])
        assert table.weight.data_ptr() != big.features[mod].ctypes.data


def test_bm3_finetune_features_option(data):
    torch.manual_seed(0)
    raw = {k: v.copy() for k, v in data.features.items()}
    for finetune in (True, False):
        m = BM3(data, embedding_dim=8, finetune_features=finetune)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        users, pos, neg = batch(data)
        sum(m.loss(users, pos, neg).values()).backward()
        opt.step()
        changed = not torch.equal(m.features[0].weight, torch.as_tensor(raw["image_feat"]))
        assert changed == finetune
        assert ("features.0.weight" in m.state_dict()) == finetune
    for k in raw:                                       # the dataset is never modified
        assert np.array_equal(raw[k], data.features[k])


# ============================================================================ FREEDOM
def knn_literal(x, k):
    """freedom.py get_knn_adj_mat + compute_normalized_laplacian, densely."""
    x = torch.as_tensor(x)
    xn = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    sim = xn @ xn.T
    _, ind = torch.topk(sim, k, dim=-1)
    adj = torch.zeros_like(sim)
    adj.scatter_(1, ind, 1.0)
    r = (1e-7 + adj.sum(-1)) ** -0.5
    return (r[:, None] * adj * r[None, :]) * (adj > 0)


@pytest.mark.parametrize("k,w", [(3, 0.1), (5, 0.7)])
def test_freedom_item_graph_equals_the_dense_reference(data, k, w):
    m = FREEDOM(data, knn_k=k, mm_image_weight=w)
    ref = w * knn_literal(data.features["image_feat"], k) + \
        (1 - w) * knn_literal(data.features["text_feat"], k)
    torch.testing.assert_close(dense(m.item_graph), ref, atol=1e-7, rtol=1e-6)
    assert m.item_graph.nnz <= 2 * k * data.n_items


def test_freedom_user_item_graph_and_edge_weights(data):
    m = FREEDOM(data, knn_k=3)
    torch.testing.assert_close(dense(m.norm_adj), mmrec_norm_adj(data.train, data.n_users, data.n_items))
    # get_edge_info: π_ui = (d_u + 1e-7)^-1/2 (d_i + 1e-7)^-1/2 on every training edge
    r = torch.as_tensor(data.train.toarray() > 0, dtype=torch.float32)
    du, di = (r.sum(1) + 1e-7) ** -0.5, (r.sum(0) + 1e-7) ** -0.5
    assert len(m.edge_weights) == data.train.nnz
    assert torch.all(r[m.edge_users, m.edge_items] == 1)
    torch.testing.assert_close(m.edge_weights, du[m.edge_users] * di[m.edge_items])


@pytest.mark.parametrize("dropout", [0.5, 0.8])
def test_freedom_pruned_graph_equals_the_literal_sampling(data, dropout):
    m = FREEDOM(data, knn_k=3, dropout=dropout)
    torch.manual_seed(11)
    m.pre_epoch(0)
    got = dense(m.masked_adj)
    # pre_epoch_processing, literally, from the same draw
    torch.manual_seed(11)
    keep = int(m.edge_weights.size(0) * (1. - dropout))
    idx = torch.multinomial(m.edge_weights, keep)
    u, i = m.edge_users[idx], m.edge_items[idx]
    row = torch.zeros(data.n_users).index_add_(0, u, torch.ones(keep)) + 1e-7
    col = torch.zeros(data.n_items).index_add_(0, i, torch.ones(keep)) + 1e-7
    vals = row[u] ** -0.5 * col[i] ** -0.5
    ref = torch.zeros(data.n_users + data.n_items, data.n_users + data.n_items)
    ref[u, data.n_users + i] = vals
    ref[data.n_users + i, u] = vals
    torch.testing.assert_close(got, ref)
    assert m.masked_adj.nnz == 2 * keep
    m.pre_epoch(1)                                      # a fresh graph every epoch
    assert not torch.equal(dense(m.masked_adj), got)
    # evaluation uses the full graph, whatever the last pruned one
    m.eval()
    with torch.no_grad():
        for a, b in zip(m.representations(), m.forward(m.norm_adj)):
            assert torch.equal(a, b)


def test_freedom_pruning_prefers_low_degree_edges():
    big = make_synthetic(n_users=300, n_items=150, seed=0)
    m = FREEDOM(big, knn_k=3, dropout=0.8)
    counts = torch.zeros(len(m.edge_weights))
    torch.manual_seed(0)
    for _ in range(200):
        idx = torch.multinomial(m.edge_weights, int(len(m.edge_weights) * 0.2))
        counts[idx] += 1
    w = m.edge_weights
    lo, hi = w < w.quantile(0.25), w > w.quantile(0.75)
    assert counts[hi].mean() > 1.5 * counts[lo].mean()   # kept ∝ π = 1/√(d_u d_i)


@pytest.mark.parametrize("reg_weight", [0.0, 1e-3])
def test_freedom_loss_and_gradients_equal_the_literal_formula(data, reg_weight):
    torch.manual_seed(0)
    m = FREEDOM(data, embedding_dim=8, knn_k=3, dropout=0.5, reg_weight=reg_weight, n_mm_layers=2)
    torch.manual_seed(2)
    m.pre_epoch(0)
    users, pos, neg = batch(data)
    terms = m.loss(users, pos, neg)
    # literal forward(masked_adj) and calculate_loss with dense matrices
    adj, s = dense(m.masked_adj), dense(m.item_graph)
    h = m.item_embedding
    for _ in range(m.n_mm_layers):
        h = s @ h
    ego = torch.cat([m.user_embedding, m.item_embedding], 0)
    layers = [ego]
    for _ in range(m.n_layers):
        ego = adj @ ego
        layers.append(ego)
    allx = torch.stack(layers, 1).mean(1)
    ua, ia = allx[: data.n_users], allx[data.n_users:] + h
    mf = bpr_freedom(ua[users], ia[pos], ia[neg])
    text = m.projections[1](m.features[1].weight)
    image = m.projections[0](m.features[0].weight)
    mm = bpr_freedom(ua[users], text[pos], text[neg]) + bpr_freedom(ua[users], image[pos], image[neg])
    torch.testing.assert_close(terms["bpr"], mf)
    if reg_weight:
        torch.testing.assert_close(terms["mm_bpr"], reg_weight * mm)
    else:
        assert "mm_bpr" not in terms                    # skipped: its gradient is exactly 0
    assert_same_grads(m, sum(terms.values()), mf + reg_weight * mm)


def test_freedom_initialisation():
    big = make_synthetic(n_users=400, n_items=300, seed=0)
    torch.manual_seed(1)
    m = FREEDOM(big, knn_k=5)
    d = m.embedding_dim
    for w, n in ((m.user_embedding, big.n_users), (m.item_embedding, big.n_items)):
        bound = math.sqrt(6.0 / (n + d))
        assert w.abs().max() <= bound
        assert float(w.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    for lin in m.projections:                          # torch's Linear default: U(±1/√fan_in)
        b = 1 / math.sqrt(lin.weight.shape[1])
        assert lin.weight.abs().max() <= b and lin.bias.abs().max() <= b
        assert float(lin.weight.detach().std()) == pytest.approx(b / math.sqrt(3), rel=0.03)


def test_freedom_item_graph_is_cached(data, tmp_path):
    from mmrecsys.graphs import GraphCache
    cache = GraphCache(tmp_path)
    a = FREEDOM(data, cache, knn_k=3)
    b = FREEDOM(data, cache, knn_k=3)
    assert cache.misses == 2 and cache.hits == 2        # user-item and item-item graphs
    assert torch.equal(dense(a.item_graph), dense(b.item_graph))
    FREEDOM(data, cache, knn_k=4)
    assert cache.misses == 3


# ============================================================================ configuration
@pytest.mark.parametrize("name", ["vbpr", "bm3", "freedom"])
def test_search_space_reaches_the_model(name, data):
    cls = get_model_class(name)
    assert cls.search_space and set(cls.search_space) <= set(cls.hyperparameters())
    for key, values in cls.search_space.items():
        assert cls.hyperparameters()[key] in values     # the default is one of the grid's
        for v in values:
            cfg = resolve_config(cls, data.name, overrides={key: v})
            model = cls(data, None, **model_kwargs(cls, {**cfg, "knn_k": 3} if name == "freedom" else cfg))
            assert getattr(model, key) == v


def test_mmrec_grids_and_presets():
    assert VBPR.search_space == {"reg_weight": [2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5]}
    assert BM3.search_space == {"n_layers": [1, 2], "reg_weight": [0.1, 0.01], "dropout": [0.3, 0.5]}
    assert FREEDOM.search_space == {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]}
    cfg = resolve_config(BM3, "sports")
    assert (cfg["preset"], cfg["n_layers"], cfg["dropout"], cfg["reg_weight"]) == ("sports", 1, 0.5, 0.01)
    assert resolve_config(BM3, "clothing")["preset"] == "none"
    # official names
    cfg = resolve_config(FREEDOM, "x", overrides={"n_ui_layers": 3, "embedding_size": 32,
                                                   "feat_embed_dim": 32})
    assert (cfg["n_layers"], cfg["embedding_dim"]) == (3, 32)


# ============================================================================ CLI
@pytest.mark.parametrize("name", ["vbpr", "bm3", "freedom"])
def test_cli_train_reports_the_metrics_of_topk_test(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 120, 90, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", name, "--data", str(d), "--out", str(run),
                                    "--set", "epochs=2", "--set", "batch_size=256", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["best_epoch"] in (0, 1)
    again = recompute_from_topk(run, load_dataset(d))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k


# ============================================================================ FeatureTable
def test_feature_table_gradient_buffer_equals_autograd():
    from mmrecsys.models.layers import FeatureTable
    torch.manual_seed(0)
    x = torch.randn(30, 7)
    table = FeatureTable(x.numpy())
    plain = torch.nn.Parameter(x.clone())
    w = torch.randn(7, 3)

    def step(rows):
        (table(rows) @ w).square().sum().backward()
        (plain.index_select(0, rows) @ w).square().sum().backward()

    for it in range(4):                                  # set_to_none between steps (trainer)
        table.weight.grad = plain.grad = None
        step(torch.randint(0, 30, (6,)).unique())
        torch.testing.assert_close(table.weight.grad, plain.grad)
    step(torch.tensor([0, 29]))                          # accumulates as autograd does
    torch.testing.assert_close(table.weight.grad, plain.grad)
    buf = table.weight.grad
    table.weight.grad.zero_()                            # zero_grad(set_to_none=False)
    plain.grad.zero_()
    step(torch.tensor([3, 4]))
    torch.testing.assert_close(table.weight.grad, plain.grad)
    table.weight.grad.add_(1.0)                          # modified by others in place ...
    table.weight.grad = plain.grad = None                # ... then released
    step(torch.tensor([5]))
    torch.testing.assert_close(table.weight.grad, plain.grad)
    assert table.weight.grad is buf                      # one buffer throughout
    frozen = FeatureTable(x.numpy(), trainable=False)
    assert not frozen.weight.requires_grad and "weight" not in frozen.state_dict()


@pytest.mark.parametrize("trainable,bias", [(True, True), (False, True), (True, False)])
def test_feature_table_project_equals_linear_of_rows(trainable, bias, monkeypatch):
    from mmrecsys.models import layers
    monkeypatch.setattr(layers, "PROJECT_BLOCK_BYTES", 4 * 7 * 4)      # blocks of 4 rows
    torch.manual_seed(0)
    x = torch.randn(30, 7)
    table = layers.FeatureTable(x.numpy(), trainable=trainable)
    lin = torch.nn.Linear(7, 5, bias=bias)
    plain = torch.nn.Parameter(x.clone(), requires_grad=trainable)
    rows = torch.tensor([3, 3, 0, 29, 7, 8, 9, 10, 11, 3, 5])          # repeated rows, 3 blocks
    up = torch.randn(len(rows), 5)
    y = table.project(lin, rows)
    (y * up).sum().backward()
    got = {k: p.grad.clone() for k, p in lin.named_parameters()}
    if trainable:
        got["x"] = table.weight.grad.clone()
    lin.zero_grad()
    y_ref = lin(plain[rows])
    (y_ref * up).sum().backward()
    torch.testing.assert_close(y, y_ref)
    for k, p in lin.named_parameters():
        torch.testing.assert_close(got[k], p.grad)
    if trainable:
        torch.testing.assert_close(got["x"], plain.grad)
    with torch.no_grad():                                               # all rows, inference
        torch.testing.assert_close(table.project(lin), lin(x))
