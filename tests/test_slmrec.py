"""SLMRec against dense, literal re-computations of MMRec's formulas (``enoche/MMRec``
``src/models/slmrec.py``, re-derived here from its operations, not copied): the adjacency, the
encoders and fusion, the main loss and each self-supervised task (loss and gradients), the
initialisation order, the stored evaluation result, configuration, three modalities, and a CLI
run whose reported metrics are recomputed from ``topk_test.tsv``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from topk_recompute import recompute_from_topk
from torch import nn

from mmrecsys.cli import main
from mmrecsys.config import model_kwargs, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.models import get_model_class
from mmrecsys.models.slmrec import SLMRec, slmrec_adjacency

D = 8


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=20, seed=5,
                          modalities=(("image_feat", 24, 0.6, "relu"), ("text_feat", 16, 0.9, "l2")))


@pytest.fixture(scope="module")
def data3():
    return make_synthetic(n_users=25, n_items=22, seed=6,
                          modalities=(("image_feat", 12, 0.6, "relu"), ("audio_feat", 7, 0.7, "relu"),
                                      ("text_feat", 10, 0.9, "l2")))


def batch(data, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    tr = data.train.tocoo()
    pick = torch.randint(0, tr.nnz, (b,), generator=g)
    users = torch.from_numpy(tr.row.astype(np.int64))[pick]
    pos = torch.from_numpy(tr.col.astype(np.int64))[pick]
    neg = torch.randint(0, data.n_items, (b,), generator=g)
    return users, pos, neg


def build(data, **kw):
    torch.manual_seed(0)
    return SLMRec(data, None, embedding_dim=D, **kw)


# ------------------------------------------------------------------ the reference, literally (dense)
def ref_adjacency(train, adj_type):
    """The code's ``create_adj_mat``, dense."""
    r = (train.toarray() != 0).astype(np.float64)
    u, i = r.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:] = r
    a[u:, :u] = r.T
    rows = a.sum(1)
    if adj_type == "pre":
        d = (rows + 1e-8) ** -0.5
        return d[:, None] * a * d[None, :]
    if adj_type == "plain":
        return a
    inv = lambda m: np.where(m.sum(1) > 0, 1.0 / np.where(m.sum(1) > 0, m.sum(1), 1), 0.0)[:, None] * m
    if adj_type == "norm":
        return inv(a + np.eye(u + i))
    if adj_type == "gcmc":
        return inv(a)
    return inv(a) + np.eye(u + i)


def ref_graph(adj, u_emb, i_emb, n_layers):
    x = torch.cat([u_emb, i_emb])
    embs = [x]
    for _ in range(n_layers):
        x = adj @ x
        embs.append(x)
    return torch.stack(embs, 1).mean(1)


def ref_ce(a, b, temp):
    logits = torch.mm(a, b.T) / temp
    return nn.CrossEntropyLoss()(logits, torch.tensor(list(range(a.shape[0]))))


def ref_parts(m, data):
    adj = torch.tensor(ref_adjacency(data.train, m.adj_type), dtype=torch.float32)
    feats = [F.normalize(torch.tensor(x, dtype=torch.float32), dim=1) for x in data.features.values()]
    eu, ei = m.embedding_user.weight, m.embedding_item.weight
    tables = [ei] + [lin(f) for lin, f in zip(m.dense, feats)]
    return adj, feats, eu, tables


def ref_compute(m, data):
    """The code's ``compute``: (user, item, [per-component (N × d)])."""
    adj, _, eu, tables = ref_parts(m, data)
    h = [ref_graph(adj, eu, t, m.n_layers) for t in tables]
    nu = m.n_users
    user = m.user_fusion(torch.cat([c[:nu] for c in h], 1))
    item = m.item_fusion(torch.cat([c[nu:] for c in h], 1))
    return user, item, h


def ref_main(user, item, users, pos, temp):
    return ref_ce(F.normalize(user[users], dim=1), F.normalize(item[pos], dim=1), temp)


def ref_fac_two(m, h, pos):
    """The code's ``fac`` with v and t (audio loss commented out)."""
    nu = m.n_users
    g_i_iv, g_iv_iva, g_iva_ivat = m.fac_links
    g_v_iv, g_t_ivat = m.fac_heads
    x_i_iv = g_i_iv(h[0][nu:][pos])
    v_loss = ref_ce(x_i_iv, g_v_iv(h[1][nu:][pos]), m.ssl_temp)
    x_iva_ivat = g_iva_ivat(g_iv_iva(x_i_iv))
    t_loss = ref_ce(x_iva_ivat, g_t_ivat(h[2][nu:][pos]), m.ssl_temp)
    return v_loss + t_loss


def ref_views(m, data, users, items, mask1=None, mask2=None, dropout=False):
    """The code's ``feature_dropout`` / ``feature_masking`` (on the components that exist)."""
    adj, _, eu, tables = ref_parts(m, data)
    drop = nn.Dropout(p=m.dropout_rate)
    nu = m.n_users
    us1, is1, us2, is2 = [], [], [], []
    for c, t in enumerate(tables):
        e1 = torch.cat([eu, t if mask1 != c else torch.zeros_like(t)])
        e2 = torch.cat([eu, t if mask2 != c else torch.zeros_like(t)])
        l1, l2 = [e1], [e2]
        for _ in range(m.n_layers):
            e1 = adj @ e1
            if dropout:
                e1 = drop(e1)
            e2 = adj @ e2
            if dropout:
                e2 = drop(e2)
            l2.append(e1)
            l1.append(e2)
        o1 = torch.stack(l1, 1).mean(1)
        o2 = torch.stack(l2, 1).mean(1)
        us1.append(o1[:nu][users]); is1.append(o1[nu:][items])
        us2.append(o2[:nu][users]); is2.append(o2[nu:][items])
    n = lambda x: F.normalize(x, dim=1)
    u1 = n(m.user_fusion(torch.cat(us1, 1))); u2 = n(m.user_fusion(torch.cat(us2, 1)))
    i1 = n(m.item_fusion(torch.cat(is1, 1))); i2 = n(m.item_fusion(torch.cat(is2, 1)))
    return ref_ce(u1, u2, m.ssl_temp) + ref_ce(i1, i2, m.ssl_temp)


def grads(m, loss):
    m.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def assert_same_grads(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("adj_type", ["pre", "plain", "norm", "gcmc", "mean"])
def test_adjacency_is_the_codes(adj_type, data):
    got = slmrec_adjacency(data.train, adj_type).toarray()
    np.testing.assert_allclose(got, ref_adjacency(data.train, adj_type), rtol=1e-5, atol=1e-7)


def test_fac_loss_and_gradients_equal_the_reference(data):
    m = build(data, ssl_alpha=0.3, ssl_temp=0.5)
    users, pos, neg = batch(data)
    m.train()
    out = m.loss(users, pos, neg)
    assert set(out) == {"infonce", "ssl"}
    got = grads(m, sum(out.values()))
    user, item, h = ref_compute(m, data)
    main_ = ref_main(user, item, users, pos, m.temperature)
    ssl = ref_fac_two(m, h, pos)
    torch.testing.assert_close(out["infonce"], main_)
    torch.testing.assert_close(out["ssl"], 0.3 * ssl)
    want = grads(m, main_ + 0.3 * ssl)
    assert_same_grads(got, want)
    assert len(m.fac_links) == 3 and len(m.fac_heads) == 2       # g_a_iva drawn and dropped
    assert m.fac_links[2].out_features == D // 2
    z_u, z_i, _ = m.forward()
    torch.testing.assert_close(z_u, user)
    torch.testing.assert_close(z_i, item)


@pytest.mark.parametrize("task", ["FD", "FM", "FD+FM"])
def test_view_tasks_loss_and_gradients_equal_the_reference(task, data):
    m = build(data, ssl_task=task, ssl_alpha=0.5, dropout_rate=0.4)
    users, pos, neg = batch(data)
    m.train()
    torch.manual_seed(7)
    out = m.loss(users, pos, neg)
    got = grads(m, sum(out.values()))
    torch.manual_seed(7)
    user, item, _ = ref_compute(m, data)
    mask1 = mask2 = None
    if "FM" in task:                 # the same draws: two distinct components of M + 1
        mask1 = int(torch.randint(3, ()))
        while True:
            mask2 = int(torch.randint(3, ()))
            if mask2 != mask1:
                break
    ssl = ref_views(m, data, users, pos, mask1, mask2, dropout="FD" in task)
    main_ = ref_main(user, item, users, pos, m.temperature)
    torch.testing.assert_close(out["ssl"], 0.5 * ssl)
    want = grads(m, main_ + 0.5 * ssl)
    assert_same_grads(got, want)


def test_initialisation_follows_the_codes_order(data):
    m = build(data)
    torch.manual_seed(0)
    d = D
    eu, ei = nn.Embedding(30, d), nn.Embedding(20, d)
    nn.init.xavier_uniform_(eu.weight, gain=1)
    nn.init.xavier_uniform_(ei.weight, gain=1)
    v = nn.Linear(24, d); nn.init.xavier_uniform_(v.weight)
    t = nn.Linear(16, d); nn.init.xavier_uniform_(t.weight)
    it = nn.Linear(3 * d, d); us = nn.Linear(3 * d, d)
    nn.init.xavier_uniform_(it.weight); nn.init.xavier_uniform_(us.weight)
    heads = [nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d),
             nn.Linear(d, d // 2), nn.Linear(d, d // 2)]
    for h in heads:
        nn.init.xavier_uniform_(h.weight)
    g_i_iv, g_v_iv, g_iv_iva, _g_a_iva, g_iva_ivat, g_t_ivat = heads
    pairs = [(m.embedding_user, eu), (m.embedding_item, ei), (m.dense[0], v), (m.dense[1], t),
             (m.item_fusion, it), (m.user_fusion, us), (m.fac_links[0], g_i_iv),
             (m.fac_heads[0], g_v_iv), (m.fac_links[1], g_iv_iva), (m.fac_links[2], g_iva_ivat),
             (m.fac_heads[1], g_t_ivat)]
    for ours, ref in pairs:
        for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
            assert torch.equal(p1, p2), (ours, n1)
    # the raw features are L2-normalised once
    for k, x in zip(m._keys, data.features.values()):
        torch.testing.assert_close(m.feature_table(k), F.normalize(torch.tensor(x, dtype=torch.float32), dim=1))


def test_evaluation_uses_the_last_training_forward_and_sigmoid(data):
    m = build(data)
    assert m.reuse_training_result and "result" in m.state_dict()
    m.eval()
    with torch.no_grad():                            # before training: a fresh forward
        u0, _ = m.representations()
        z_u, _, _ = m.forward()
    torch.testing.assert_close(u0, z_u)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    users, pos, neg = batch(data)
    loss = sum(m.loss(users, pos, neg).values())
    with torch.no_grad():
        before = torch.cat(m.forward()[:2])
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        reps = m.representations()
        torch.testing.assert_close(torch.cat(reps), before)            # stale by one step
        s = m.score(torch.tensor([0, 3]), reps)
        torch.testing.assert_close(s, torch.sigmoid(reps[0][[0, 3]] @ reps[1].T))
        m.reuse_training_result = False
        fresh = torch.cat(m.representations())
        assert not torch.allclose(fresh, before)
        m.sigmoid_scores = False
        torch.testing.assert_close(m.score(torch.tensor([0]), reps), reps[0][[0]] @ reps[1].T)
    m.reuse_training_result = True
    stored = m.result.clone()
    m.loss(users, pos, neg)                                          # eval mode: not stored
    assert torch.equal(m.result, stored)
    other = build(data)
    other.load_state_dict(m.state_dict())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(other.representations()), before)


def test_three_modalities_fac_chain(data3):
    m = build(data3, ssl_alpha=1.0)
    assert [l.out_features for l in m.fac_links] == [D, D, D // 2]
    assert m.fac_components == [1, 2, 3] and len(m.fac_heads) == 3
    users, pos, neg = batch(data3)
    out = m.loss(users, pos, neg)
    got = grads(m, sum(out.values()))
    user, item, h = ref_compute(m, data3)
    nu = m.n_users
    x1 = m.fac_links[0](h[0][nu:][pos])
    x2 = m.fac_links[1](x1)
    x3 = m.fac_links[2](x2)
    ssl = (ref_ce(x1, m.fac_heads[0](h[1][nu:][pos]), m.ssl_temp)
           + ref_ce(x2, m.fac_heads[1](h[2][nu:][pos]), m.ssl_temp)     # the audio level
           + ref_ce(x3, m.fac_heads[2](h[3][nu:][pos]), m.ssl_temp))
    torch.testing.assert_close(out["ssl"], ssl)
    assert_same_grads(got, grads(m, ref_main(user, item, users, pos, m.temperature) + ssl))
    for task in ("FD", "FM", "FD+FM"):
        mm = build(data3, ssl_task=task)
        assert torch.isfinite(sum(mm.loss(users, pos, neg).values()))


def test_one_modality_and_mean_fusion(data):
    one = make_synthetic(n_users=15, n_items=20, seed=2, modalities=(("image_feat", 6, 0.6, "relu"),))
    m = build(one)
    assert len(m.fac_links) == 1 and len(m.fac_heads) == 1
    users, pos, neg = batch(one, 6)
    _, _, h = ref_compute(m, one)
    nu = m.n_users
    ssl = ref_ce(m.fac_links[0](h[0][nu:][pos]), m.fac_heads[0](h[1][nu:][pos]), m.ssl_temp)
    torch.testing.assert_close(m.loss(users, pos, neg)["ssl"], m.ssl_alpha * ssl)
    mean = build(data, mm_fusion_mode="mean")
    assert mean.user_fusion.in_features == D
    users, pos, neg = batch(data)
    z_u, _, h = mean.forward()
    torch.testing.assert_close(z_u, mean.user_fusion(torch.stack([c[:30] for c in h]).mean(0)))


def test_bad_configuration_is_refused(data):
    bad = [{"ssl_task": "XX"}, {"mm_fusion_mode": "sum"}, {"adj_type": "sym"},
           {"ssl_temp": 0.0}, {"temperature": -1.0}, {"ssl_alpha": -0.1},
           {"dropout_rate": 1.0}, {"reg_weight": math.nan}, {"n_layers": 1.5},
           {"embedding_dim": 1}]
    for kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            SLMRec(data, None, **kw)
    empty = make_synthetic(n_users=10, n_items=20, seed=0, modalities=())
    with pytest.raises(ValueError, match="needs item modality features"):
        SLMRec(empty)


def test_defaults_grid_and_registry():
    assert get_model_class("slmrec") is SLMRec and SLMRec.requires_features
    hp = SLMRec.hyperparameters()
    assert (hp["embedding_dim"], hp["n_layers"], hp["ssl_task"], hp["dropout_rate"],
            hp["mm_fusion_mode"], hp["temperature"], hp["adj_type"]) == (64, 3, "FAC", 0.3,
                                                                        "concat", 0.2, "pre")
    assert hp["reuse_training_result"] and hp["sigmoid_scores"]
    assert SLMRec.search_space == {"lr": [1e-4, 1e-3, 1e-2, 0.1], "ssl_temp": [0.1, 0.2, 0.5, 1.0],
                                   "ssl_alpha": [0.01, 0.05, 0.1, 0.5, 1.0],
                                   "reg_weight": [1e-4, 1e-3, 1e-2, 0.1]}
    cfg = resolve_config(SLMRec, "x", overrides={"recdim": 16, "layer_num": 2, "temp": 0.5})
    assert (cfg["embedding_dim"], cfg["n_layers"], cfg["temperature"]) == (16, 2, 0.5)
    assert cfg["weight_decay"] == 1e-4 and cfg["lr"] == 1e-3
    assert model_kwargs(SLMRec, cfg)["embedding_dim"] == 16
    assert all(SLMRec.describe_hyperparameters().values())


def test_cli_train_reports_the_metrics_of_topk_test(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 80, 60, seed=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", "slmrec", "--data", str(d), "--out", str(run),
                                    "--set", "epochs=2", "--set", "batch_size=256",
                                    "--set", "embedding_dim=16", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "slmrec" and metrics["best_epoch"] in (0, 1)
    again = recompute_from_topk(run, load_dataset(d))
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
