"""MMGCN and GRCN against dense, literal re-computations of MMRec's formulas (``enoche/MMRec``
``src/models/{mmgcn,grcn}.py``, re-derived here from their operations): loss and gradients,
representations, the stored evaluation result, initialisation, configuration, any number of
modalities, and a CLI run whose reported metrics are recomputed from ``topk_test.tsv``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from mmrecsys.cli import main
from mmrecsys.config import model_kwargs, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.models import get_model_class
from mmrecsys.models.grcn import GRCN
from mmrecsys.models.mmgcn import MMGCN
from topk_recompute import recompute_from_topk

THREE = (("image_feat", 12, 0.6, "relu"), ("audio_feat", 7, 0.7, "relu"),
         ("text_feat", 10, 0.9, "l2"))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=20, seed=5,
                          modalities=(("image_feat", 24, 0.6, "relu"), ("text_feat", 16, 0.9, "l2")))


@pytest.fixture(scope="module")
def data3():
    return make_synthetic(n_users=25, n_items=22, seed=6, modalities=THREE)


def batch(data, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    tr = data.train.tocoo()
    pick = torch.randint(0, tr.nnz, (b,), generator=g)
    users = torch.from_numpy(tr.row.astype(np.int64))[pick]
    pos = torch.from_numpy(tr.col.astype(np.int64))[pick]
    neg = torch.randint(0, data.n_items, (b,), generator=g)
    return users, pos, neg


def code_edge_index(data):
    """The code's ``pack_edge_index``: (2, E) rows users, items shifted by U (one direction)."""
    c = data.train.tocoo()
    return torch.tensor(np.column_stack((c.row, c.col + data.n_users)), dtype=torch.long).t()


def code_bpr(out, users, pos, neg, n_users):
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((pos + n_users, neg + n_users)).t().contiguous().view(-1)
    score = torch.sum(out[user_tensor] * out[item_tensor], dim=1).view(-1, 2)
    loss = -torch.mean(torch.log(torch.sigmoid(torch.matmul(score, torch.tensor([[1.0], [-1.0]])))))
    return loss, user_tensor, item_tensor


# ============================================================================ MMGCN reference
def dense_mean_conv(x, w, edge_index, n):
    """PyG MessagePassing(aggr='mean') with message x_j, as a dense N × N average."""
    a = torch.zeros(n, n)
    a.index_put_((edge_index[1], edge_index[0]), torch.ones(edge_index.shape[1]), accumulate=True)
    deg = a.sum(1, keepdim=True)
    return (a @ (x @ w)) / torch.where(deg > 0, deg, torch.ones_like(deg))


def ref_mmgcn(model, data, users, pos, neg, reg_weight):
    n = data.n_users + data.n_items
    ei = code_edge_index(data)
    ei = torch.cat((ei, ei[[1, 0]]), dim=1)
    rep = None
    for m, feat in enumerate(data.features.values()):
        gcn = model.gcns[m]
        feat = torch.from_numpy(np.asarray(feat, dtype=np.float32))
        t = F.linear(feat, gcn.mlp.weight, gcn.mlp.bias) if gcn.mlp is not None else feat
        x = F.normalize(torch.cat((gcn.preference, t), dim=0))
        for w, lin, g in zip(gcn.conv, gcn.linear, gcn.gate):
            h = F.leaky_relu(dense_mean_conv(x, w, ei, n))
            x_hat = F.leaky_relu(F.linear(x, lin.weight, lin.bias)) + model.id_embedding
            x = F.leaky_relu(F.linear(torch.cat((h, x_hat), dim=1), g.weight, g.bias))
        rep = x if rep is None else rep + x
    rep = rep / len(model.gcns)
    loss, ut, it = code_bpr(rep, users, pos, neg, data.n_users)
    reg = (model.id_embedding[ut] ** 2 + model.id_embedding[it] ** 2).mean()
    reg = reg + (model.gcns[0].preference ** 2).mean()
    return loss + reg_weight * reg, rep


def build(cls, data, **kw):
    torch.manual_seed(0)
    return cls(data, None, **kw)


@pytest.mark.parametrize("trainable", [False, True])
def test_mmgcn_loss_gradients_and_representations_equal_the_dense_code(data, trainable):
    model = build(MMGCN, data, embedding_dim=8, dim_latent=6, reg_weight=0.3,
                  trainable_embeddings=trainable)
    model.train()
    users, pos, neg = batch(data)
    params = list(model.parameters())
    terms = model.loss(users, pos, neg)
    assert set(terms) == {"bpr", "reg"}
    ours = sum(terms.values())
    ref, rep = ref_mmgcn(model, data, users, pos, neg, 0.3)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the stored result is the training forward's representation
    torch.testing.assert_close(model.result, rep.detach(), rtol=1e-5, atol=1e-6)
    names = {k for k, _ in model.named_parameters()}
    assert ("id_embedding" in names) == trainable
    assert ("gcns.0.preference" in names) == trainable
    assert "result" in model.state_dict() and "result" not in names


def test_mmgcn_elementwise_combiner_and_raw_first_modality(data):
    model = build(MMGCN, data, embedding_dim=5, n_layers=2, dim_latent=0, concat=False)
    assert model.gcns[0].mlp is None and model.gcns[0].preference.shape == (30, 24)
    assert model.gcns[0].gate[0].in_features == 24 and model.gcns[1].gate[1].in_features == 5
    x = F.normalize(torch.cat((model.gcns[1].preference,
                               torch.from_numpy(data.features["text_feat"]).float())))
    n = data.n_users + data.n_items
    ei = code_edge_index(data)
    ei = torch.cat((ei, ei[[1, 0]]), 1)
    g = model.gcns[1]
    for w, lin, gate in zip(g.conv, g.linear, g.gate):
        h = F.leaky_relu(dense_mean_conv(x, w, ei, n))
        x_hat = F.leaky_relu(lin(x)) + model.id_embedding
        x = F.leaky_relu(gate(h) + x_hat)
    with torch.no_grad():
        torch.testing.assert_close(model.modality_forward(1), x, rtol=1e-5, atol=1e-6)


def test_mmgcn_initialisation_follows_the_code(data):
    d, lat = 8, 6
    model = build(MMGCN, data, embedding_dim=d, dim_latent=lat)
    torch.manual_seed(0)
    n, u = data.n_users + data.n_items, data.n_users
    for m, x in enumerate(data.features.values()):
        width = lat if m == 0 else x.shape[1]
        pref = nn.init.xavier_normal_(torch.rand((u, width), requires_grad=True))
        if m == 0:
            mlp = nn.Linear(x.shape[1], lat)
        gcn = model.gcns[m]
        torch.testing.assert_close(gcn.preference, pref.detach(), rtol=0, atol=0)
        if m == 0:
            torch.testing.assert_close(gcn.mlp.weight, mlp.weight, rtol=0, atol=0)
            torch.testing.assert_close(gcn.mlp.bias, mlp.bias, rtol=0, atol=0)
        for layer in range(3):
            w_in = width if layer == 0 else d
            conv = torch.empty(w_in, w_in)
            conv.uniform_(-1 / math.sqrt(w_in), 1 / math.sqrt(w_in))
            nn.init.xavier_normal_(conv)
            lin = nn.Linear(w_in, d)
            nn.init.xavier_normal_(lin.weight)
            gate = nn.Linear(w_in + d, d)
            if layer == 0:
                nn.init.xavier_normal_(gate.weight)
            torch.testing.assert_close(gcn.conv[layer].detach(), conv, rtol=0, atol=0)
            for a, b in ((gcn.linear[layer], lin), (gcn.gate[layer], gate)):
                torch.testing.assert_close(a.weight.detach(), b.weight.detach(), rtol=0, atol=0)
                torch.testing.assert_close(a.bias.detach(), b.bias.detach(), rtol=0, atol=0)
    ide = nn.init.xavier_normal_(torch.rand((n, d), requires_grad=True))
    res = nn.init.xavier_normal_(torch.rand((n, d)))
    torch.testing.assert_close(model.id_embedding, ide.detach(), rtol=0, atol=0)
    torch.testing.assert_close(model.result, res, rtol=0, atol=0)
    # statistics: xavier-normal std sqrt(2 / (fan_in + fan_out)), mean 0
    big = build(MMGCN, make_synthetic(n_users=300, n_items=200, seed=1), embedding_dim=64)
    std = math.sqrt(2.0 / (500 + 64))
    assert abs(big.id_embedding.std().item() / std - 1) < 0.05
    assert abs(big.id_embedding.mean().item()) < 0.01
    # reset_parameters redraws in the same order
    torch.manual_seed(0)
    with torch.no_grad():
        model.id_embedding.add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.id_embedding, ide.detach(), rtol=0, atol=0)


# ============================================================================ GRCN reference
def dense_gat(x, edge_index, n):
    """The code's GATConv (aggr='add', no self loops): α = softmax over each target's incoming
    edges of x_i·x_j, as a dense masked row softmax; returns (messages at targets, α per edge)."""
    src, tgt = edge_index[0], edge_index[1]
    logits = torch.full((n, n), -math.inf)
    logits = logits.index_put((tgt, src), (x[tgt] * x[src]).sum(-1))
    att = torch.softmax(logits, dim=1)
    att = torch.where(torch.isnan(att), torch.zeros_like(att), att)   # rows without edges
    return att @ x, att[tgt, src]


def ref_grcn(model, data, users, pos, neg, reg_weight):
    n, u = data.n_users + data.n_items, data.n_users
    ei = code_edge_index(data)
    ei2 = torch.cat((ei, ei[[1, 0]]), dim=1)
    contents, weights = [], []
    for m, feat in enumerate(data.features.values()):
        feat = torch.from_numpy(np.asarray(feat, dtype=np.float32))
        features = F.normalize(F.leaky_relu(F.linear(feat, model.mlps[m].weight, model.mlps[m].bias)))
        preference = F.normalize(model.preferences[m])
        for _ in range(model.n_routing):
            x = torch.cat((preference, features), dim=0)
            x_hat, _ = dense_gat(x, ei, n)
            preference = F.normalize(preference + x_hat[:u])
        x = torch.cat((preference, features), dim=0)
        x_hat, alpha = dense_gat(x, ei2, n)
        contents.append(x + x_hat)
        weights.append(alpha.view(-1, 1))
    weight = torch.cat(weights, dim=1)
    confidence = torch.cat((model.confidence[ei[0]], model.confidence[ei[1]]), dim=0)
    weight = torch.relu(torch.max(weight * confidence, dim=1).values.view(-1, 1))
    wd = torch.zeros(n, n).index_put((ei2[1], ei2[0]), weight.view(-1), accumulate=True)
    x = F.normalize(model.id_embedding)
    x1 = wd @ x
    x2 = wd @ x1
    rep = torch.cat([x + x1 + x2] + contents, dim=1)
    loss, ut, it = code_bpr(rep, users, pos, neg, u)
    reg = (model.id_embedding[ut] ** 2 + model.id_embedding[it] ** 2).mean()
    reg = reg + (model.preferences[0] ** 2).mean()
    for p in model.preferences:
        reg = reg + (p[ut] ** 2).mean()
    return loss + reg_weight * reg, rep


@pytest.mark.parametrize("fixture", ["data", "data3"])
def test_grcn_loss_gradients_and_representations_equal_the_dense_code(fixture, request):
    d = request.getfixturevalue(fixture)
    model = build(GRCN, d, embedding_dim=6, latent_dim=5, reg_weight=0.2)
    model.train()
    users, pos, neg = batch(d)
    params = list(model.parameters())
    ours = sum(model.loss(users, pos, neg).values())
    ref, rep = ref_grcn(model, d, users, pos, neg, 0.2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.result, rep.detach(), rtol=1e-5, atol=1e-6)
    assert model.result.shape == (d.n_users + d.n_items, 6 + len(d.features) * 5)


def test_grcn_initialisation_follows_the_code(data):
    model = build(GRCN, data, embedding_dim=8)
    assert model.dim_c == 8 and model.latent_dim == 0          # latent_dim 0: d_C = d
    torch.manual_seed(0)
    n, u, m = data.n_users + data.n_items, data.n_users, len(data.features)
    ide = nn.init.xavier_normal_(torch.rand((n, 8)))
    torch.testing.assert_close(model.id_embedding.detach(), ide, rtol=0, atol=0)
    for k, x in enumerate(data.features.values()):
        pref = nn.init.xavier_normal_(torch.rand((u, 8)))
        mlp = nn.Linear(x.shape[1], 8)
        nn.init.xavier_normal_(mlp.weight)
        torch.testing.assert_close(model.preferences[k].detach(), pref, rtol=0, atol=0)
        torch.testing.assert_close(model.mlps[k].weight.detach(), mlp.weight.detach(), rtol=0, atol=0)
        torch.testing.assert_close(model.mlps[k].bias.detach(), mlp.bias.detach(), rtol=0, atol=0)
    conf = nn.init.xavier_normal_(torch.rand((n, m)))
    torch.testing.assert_close(model.confidence.detach(), conf, rtol=0, atol=0)
    assert abs(model.mlps[0].weight.std().item() / math.sqrt(2 / (24 + 8)) - 1) < 0.2


# ============================================================================ both
@pytest.mark.parametrize("cls", [MMGCN, GRCN])
def test_evaluation_uses_the_last_training_forward_unless_told_otherwise(cls, data):
    model = build(cls, data, embedding_dim=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    users, pos, neg = batch(data)
    model.train()
    loss = sum(model.loss(users, pos, neg).values())
    with torch.no_grad():
        before = model.forward()
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        u, i = model.representations()
        torch.testing.assert_close(torch.cat([u, i]), before)     # stale by one step, as the code
        model.reuse_training_result = False
        u2, i2 = model.representations()
        fresh = model.forward()
    torch.testing.assert_close(torch.cat([u2, i2]), fresh)
    if cls is GRCN:        # the step changed GRCN's trained embeddings, hence the representation
        assert not torch.allclose(fresh, before)
    # a loss in eval mode does not overwrite the stored result
    model.reuse_training_result = True
    stored = model.result.clone()
    model.loss(users, pos, neg)
    assert torch.equal(model.result, stored)


@pytest.mark.parametrize("cls", [MMGCN, GRCN])
def test_three_modalities(cls, data3):
    model = build(cls, data3, embedding_dim=4)
    users, pos, neg = batch(data3)
    model.train()
    terms = model.loss(users, pos, neg)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert model.modalities == ["image_feat", "audio_feat", "text_feat"]
    if cls is MMGCN:
        assert len(model.gcns) == 3 and model.gcns[0].mlp is not None
        assert model.gcns[1].mlp is None and model.gcns[2].preference.shape == (25, 10)
        ref, _ = ref_mmgcn(model, data3, users, pos, neg, 0.0)
        torch.testing.assert_close(sum(model.loss(users, pos, neg).values()), ref,
                                   rtol=1e-5, atol=1e-6)
    else:
        assert model.confidence.shape == (25 + 22, 3) and model.result.shape[1] == 4 + 3 * 4
        assert model.mlps[2].weight.grad is not None


def test_graphs_hold_training_edges_only(data):
    train = data.train.tocoo()
    grcn = build(GRCN, data, embedding_dim=4)
    got = set(zip(grcn.edge_users.tolist(), (grcn.edge_items - data.n_users).tolist()))
    assert got == set(zip(train.row.tolist(), train.col.tolist()))
    from mmrecsys.models.mmgcn import mean_aggregation
    a = mean_aggregation(data.train)
    assert a.nnz == 2 * train.nnz
    np.testing.assert_allclose(np.asarray(a.sum(1)).ravel()[np.diff(a.indptr) > 0], 1.0, rtol=1e-6)


def test_grcn_edge_dropout_only_in_training(data):
    model = build(GRCN, data, embedding_dim=4, dropout=0.5)
    model.train()
    torch.manual_seed(1)
    u, _ = model.edges()
    assert 0 < len(u) < len(model.edge_users)
    model.eval()
    assert len(model.edges()[0]) == len(model.edge_users)


def test_bad_configuration_is_refused(data, monkeypatch):
    bad = [(MMGCN, {"n_layers": 0}), (MMGCN, {"dim_latent": -1}), (MMGCN, {"embedding_dim": 0}),
           (MMGCN, {"reg_weight": -0.1}), (GRCN, {"dropout": 1.0}), (GRCN, {"n_routing": -1}),
           (GRCN, {"latent_dim": -2}), (GRCN, {"n_layers": 1.5}), (GRCN, {"reg_weight": math.nan})]
    for cls, kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            cls(data, None, **kw)
    empty = make_synthetic(n_users=10, n_items=20, seed=0, modalities=())
    assert not empty.features
    from mmrecsys.models import mmgcn as mmgcn_module

    def no_graph(*a, **k):
        raise AssertionError("a graph was built before the features were checked")
    monkeypatch.setattr(mmgcn_module, "mean_aggregation", no_graph)
    for cls in (MMGCN, GRCN):
        with pytest.raises(ValueError, match="needs item modality features"):
            cls(empty)


def test_defaults_grids_and_registry():
    assert get_model_class("mmgcn") is MMGCN and get_model_class("grcn") is GRCN
    assert MMGCN.search_space == {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
                                  "lr": [1e-4, 5e-4, 1e-3, 5e-3, 1e-2]}
    assert GRCN.search_space == {"reg_weight": [0.1, 0.01, 1e-3, 1e-4, 1e-5],
                                 "lr": [1.0, 0.1, 0.01, 1e-3, 1e-4]}
    hp = MMGCN.hyperparameters()
    assert (hp["embedding_dim"], hp["n_layers"], hp["dim_latent"], hp["concat"]) == (64, 3, 256, True)
    hp = GRCN.hyperparameters()
    assert (hp["embedding_dim"], hp["n_routing"], hp["n_layers"], hp["dropout"]) == (64, 3, 2, 0.0)
    assert MMGCN.requires_features and GRCN.requires_features
    cfg = resolve_config(GRCN, "x", overrides={"latent_embedding": 32, "num_routing": 2,
                                               "embedding_size": 16})
    assert (cfg["latent_dim"], cfg["n_routing"], cfg["embedding_dim"]) == (32, 2, 16)
    assert resolve_config(MMGCN, "x")["lr"] == 1e-3
    kw = model_kwargs(MMGCN, resolve_config(MMGCN, "x", overrides={"embedding_size": 8}))
    assert kw["embedding_dim"] == 8


# ============================================================================ CLI
@pytest.mark.parametrize("name,extra", [("mmgcn", "dim_latent=16"), ("grcn", "latent_dim=8")])
def test_cli_train_reports_the_metrics_of_topk_test(name, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 120, 90, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", name, "--data", str(d), "--out", str(run),
                                    "--set", "epochs=2", "--set", "batch_size=256",
                                    "--set", "embedding_dim=16", "--set", extra, "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["best_epoch"] in (0, 1)
    again = recompute_from_topk(run, load_dataset(d))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
