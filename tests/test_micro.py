"""MICRO against a dense, literal re-computation of the authors' formulas (``CRIPAC-DIG/MICRO``
``codes/Models.py``, ``codes/main.py``, ``codes/utility/norm.py``): per-modality learned graphs,
attention fusion, the chunked all-item contrastive loss, loss terms and gradients on tiny
inputs; the once-per-epoch graph rebuild; initialisation; configuration; any number of
modalities; the command line and the written ranking."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from topk_recompute import recompute_from_topk

from mmrecsys.cli import main
from mmrecsys.config import ConfigError, model_kwargs, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.models import get_model_class
from mmrecsys.models.micro import MICRO

THREE = (("image_feat", 12, 0.6, "relu"), ("audio_feat", 7, 0.7, "l2"),
         ("text_feat", 10, 0.9, "l2"))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=40, n_items=30, seed=5)


@pytest.fixture(scope="module")
def data3():
    return make_synthetic(n_users=30, n_items=26, seed=6, modalities=THREE)


def build(data, **kw):
    torch.manual_seed(0)
    m = MICRO(data, None, **{"knn_k": 4, **kw})
    m.train_batch_size = 1024
    return m


def batch(data, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, data.n_users, (b,), generator=g)
    pos = torch.randint(0, data.n_items, (b,), generator=g)
    neg = torch.randint(0, data.n_items, (b,), generator=g)
    return users, pos, neg


def grads(model, terms):
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    return {k: (p.grad.clone() if p.grad is not None else None) for k, p in model.named_parameters()}


# ------------------------------------------------------------------ the reference, literally (dense)
def build_sim(x):
    xn = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    return xn @ xn.T


def knn_sym(sim, k):
    """top-k with the values kept, then D^-1/2 A D^-1/2 with row sums (inf -> 0)."""
    val, ind = torch.topk(sim, k, dim=-1)
    a = torch.zeros_like(sim).scatter_(-1, ind, val)
    d = a.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return torch.diagflat(d) @ a @ torch.diagflat(d)


def raw(data, m):
    return torch.tensor(np.asarray(list(data.features.values())[m], dtype=np.float32))


def contrastive_literal(z1, z2, tau, chunk):
    """The code's batched_contrastive_loss: anchors of z1 in blocks, intra- and inter-view
    negatives, the anchor's own intra-view term subtracted."""
    n = z1.shape[0]
    a, b = F.normalize(z1), F.normalize(z2)
    out = []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        refl = torch.exp(a[s:e] @ a.T / tau)
        between = torch.exp(a[s:e] @ b.T / tau)
        r = torch.arange(e - s)
        out.append(-torch.log(between[r, s + r] / (refl.sum(1) + between.sum(1) - refl[r, s + r])))
    return torch.cat(out).mean()


def micro_literal(m, data, users, pos, neg, chunk=7):
    U = m.n_users
    r = torch.tensor((data.train.toarray() > 0).astype(np.float32))
    adj = torch.zeros(U + m.n_items, U + m.n_items)
    adj[:U, U:] = r
    adj[U:, :U] = r.T
    adj = adj + torch.eye(U + m.n_items)
    adj = adj / adj.sum(1, keepdim=True)                                  # D^-1 (A + I)
    graphs, views = [], []
    for i, key in enumerate(m._keys):
        orig = knn_sym(build_sim(raw(data, i)), m.knn_k)
        feats = m.projection[key](m.feature_table(key))
        s = (1 - m.lambda_coeff) * knn_sym(build_sim(feats), m.knn_k) + m.lambda_coeff * orig
        h = m.item_embedding
        for _ in range(m.n_item_layers):
            h = s @ h
        graphs.append(s)
        views.append(h)
    weight = torch.softmax(torch.cat([m.query(v) for v in views], dim=-1), dim=-1)
    h = sum(weight[:, i].unsqueeze(1) * v for i, v in enumerate(views))
    if m.cf_model == "lightgcn":
        ego = torch.cat([m.user_embedding, m.item_embedding])
        layers = [ego]
        for _ in range(m.n_layers):
            ego = adj @ ego
            layers.append(ego)
        allx = torch.stack(layers, 1).mean(1)
        ua, ia = allx[:U], allx[U:]
    else:
        ua, ia = m.user_embedding, m.item_embedding
    ia = ia + F.normalize(h, p=2, dim=1)
    u, i, j = ua[users], ia[pos], ia[neg]
    mf = -torch.mean(F.logsigmoid((u * i).sum(1) - (u * j).sum(1)))
    reg = (0.5 * (u ** 2).sum() + 0.5 * (i ** 2).sum() + 0.5 * (j ** 2).sum()) / 1024
    cl = sum(contrastive_literal(v, h, m.temperature, chunk) for v in views)
    return ({"bpr": mf, "reg": m.reg_weight * reg, "cl": m.cl_weight * cl}, (ua, ia), graphs)


# ------------------------------------------------------------------ the model against the literal code
@pytest.mark.parametrize("which,kw", [
    ("two", {}),
    ("two", {"cf_model": "mf", "n_item_layers": 2, "lambda_coeff": 0.3, "cl_chunk_size": 7}),
    ("three", {"reg_weight": 1e-2, "cl_weight": 0.5, "temperature": 0.2, "cl_chunk_size": 5}),
])
def test_loss_terms_and_gradients_equal_the_literal_reference(which, kw, data, data3):
    d = data if which == "two" else data3
    m = build(d, **kw)
    m.train()
    users, pos, neg = batch(d)
    ours = m.loss(users, pos, neg)
    g_ours = grads(m, ours)
    ref = micro_literal(m, d, users, pos, neg)[0]
    assert set(ours) == set(ref) == {"bpr", "reg", "cl"}
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=1e-5, msg=k)
    g_ref = grads(m, ref)
    for k, g in g_ref.items():
        assert g is not None, k
        assert g_ours[k] is not None, f"no gradient for {k}"
        torch.testing.assert_close(g_ours[k], g, atol=1e-6, rtol=2e-4, msg=k)


def test_representations_equal_the_literal_reference(data3):
    m = build(data3)
    m.eval()
    with torch.no_grad():
        u, i = m.representations()
        _, (ru, ri), _ = micro_literal(m, data3, *batch(data3))
    torch.testing.assert_close(u, ru, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i, ri, atol=1e-6, rtol=1e-5)


def test_contrastive_loss_is_the_chunked_code_formula_in_float64():
    from mmrecsys.models.mmhcl import all_node_infonce
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    for chunk in (4, 23, 4096):                 # the code's anchor blocks change nothing
        ours, ref = all_node_infonce(z1, z2, 0.5, chunk), contrastive_literal(z1, z2, 0.5, chunk)
        torch.testing.assert_close(ours, ref)
        for a, b in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(ref, [z1, z2])):
            torch.testing.assert_close(a, b)


def test_learned_graphs_are_sparse_and_equal_the_dense_ones(data3):
    m = build(data3, knn_k=3)
    graphs = m.item_graphs()
    _, _, dense = micro_literal(m, data3, *batch(data3))
    assert len(graphs) == 3
    for g, s in zip(graphs, dense):
        assert g.nnz <= 2 * m.knn_k * m.n_items
        torch.testing.assert_close(g.to_dense(), s, atol=1e-6, rtol=1e-5)


def test_graphs_are_rebuilt_once_per_epoch(data):
    m = build(data)
    m.train()
    users, pos, neg = batch(data)
    graph_keys = [k for k, _ in m.named_parameters() if k.startswith(("projection", "raw_features"))]
    assert len(graph_keys) == 6
    # first batch of the epoch: the graphs carry gradient into the projections and features
    g = grads(m, m.loss(users, pos, neg))
    assert all(g[k] is not None for k in graph_keys)
    _, _, s = micro_literal(m, data, users, pos, neg)
    for fixed, ref in zip(m._epoch_graph["graphs"], s):
        torch.testing.assert_close(fixed.a.to_dense(), ref.detach(), atol=1e-6, rtol=1e-5)
    # later batches: the epoch's detached graphs, even after the weights changed
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k in graph_keys:
                p.add_(0.05 * torch.randn_like(p))
    before = m._epoch_graph["graphs"]
    g = grads(m, m.loss(users, pos, neg))
    assert m._epoch_graph["graphs"] is before
    assert all(g[k] is None for k in graph_keys)
    assert all(g[k] is not None for k in ("item_embedding", "user_embedding", "query.0.weight",
                                          "query.2.weight"))
    # the next epoch rebuilds them from the current weights
    m.pre_epoch(1)
    g = grads(m, m.loss(users, pos, neg))
    assert m._epoch_graph["graphs"] is not before
    assert all(g[k] is not None for k in graph_keys)
    _, _, s = micro_literal(m, data, users, pos, neg)
    for fixed, ref in zip(m._epoch_graph["graphs"], s):
        torch.testing.assert_close(fixed.a.to_dense(), ref.detach(), atol=1e-6, rtol=1e-5)


def test_zero_contrastive_weight_skips_the_loss(data, monkeypatch):
    from mmrecsys.models import micro
    m = build(data, cl_weight=0.0)
    monkeypatch.setattr(micro, "all_node_infonce", lambda *a, **k: pytest.fail("computed"))
    terms = m.loss(*batch(data))
    assert terms["cl"].item() == 0.0 and torch.isfinite(terms["bpr"])


def test_one_modality_fuses_to_itself():
    one = make_synthetic(n_users=30, n_items=20, seed=1).select_modalities(["text_feat"])
    m = build(one, knn_k=3)
    m.train()
    users, pos, neg = batch(one, b=8)
    ours = m.loss(users, pos, neg)
    ref = micro_literal(m, one, users, pos, neg)[0]
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], atol=1e-6, rtol=1e-5, msg=k)
    views = [torch.randn(20, m.embedding_dim)]
    assert torch.equal(m.fuse(views), views[0])


# ------------------------------------------------------------------ initialisation
def test_initialisation():
    data = make_synthetic(n_users=400, n_items=300, seed=2)
    m = build(data, knn_k=3)
    d = m.embedding_dim
    for table, n in ((m.user_embedding, m.n_users), (m.item_embedding, m.n_items)):
        bound = math.sqrt(6.0 / (n + d))                          # xavier-uniform over the table
        assert table.abs().max() <= bound
        assert abs(table.std().item() - bound / math.sqrt(3)) < 0.03 * bound
        assert abs(table.mean().item()) < 0.02 * bound
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 2 + 2                                  # projections, query network
    for lin in linears:                                           # PyTorch's default
        b = 1.0 / math.sqrt(lin.in_features)
        assert lin.weight.abs().max() <= b and lin.weight.std().item() > 0.4 * b
        if lin.bias is not None:
            assert lin.bias.abs().max() <= b
    assert m.query[2].bias is None and m.query[2].out_features == 1
    assert isinstance(m.query[1], torch.nn.Tanh)
    for k, x in data.features.items():                            # trainable, as loaded
        t = m.feature_table(k)
        assert t.requires_grad and torch.equal(t.detach(), torch.from_numpy(x))
    frozen = build(data, knn_k=3, train_features=False)
    assert not any("raw_feature" in k for k, _ in frozen.named_parameters())


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("kw,match", [
    ({"cf_model": "ngcf"}, "ngcf"), ({"knn_k": 0}, "knn_k"), ({"lambda_coeff": 1.5}, "lambda"),
    ({"temperature": 0.0}, "temperature"), ({"n_item_layers": -1}, "n_item_layers"),
    ({"cl_chunk_size": 0}, "chunk"),
])
def test_bad_configuration_is_refused(kw, match, data):
    with pytest.raises(ValueError, match=match):
        MICRO(data, None, **kw)


def test_features_are_required():
    bare = make_synthetic(n_users=20, n_items=20, seed=1).select_modalities([])
    with pytest.raises(ValueError, match="needs item modality features"):
        MICRO(bare)


def test_defaults_are_the_authors_parser():
    cls = get_model_class("micro")
    assert cls is MICRO and cls.requires_features
    assert cls.search_space == {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3],
                                "lr": [1e-5, 1e-4, 5e-4, 1e-3, 5e-3]}
    cfg = resolve_config(cls, "baby")
    assert cfg["preset"] == "none" and not cls.presets
    for key, values in cls.search_space.items():
        assert cfg[key] in values                                 # the defaults are in the grid
    expect = {"embedding_dim": 64, "n_layers": 2, "n_item_layers": 1, "knn_k": 10,
              "lambda_coeff": 0.9, "reg_weight": 1e-5, "cl_weight": 0.03, "temperature": 0.5,
              "cf_model": "lightgcn", "lr": 5e-4, "batch_size": 1024, "lr_scheduler": [0.96, 50],
              "eval_step": 5, "patience": 10, "seed": 123, "sampler": "users",
              "negatives_from": "all_items", "valid_metrics": ["recall@20"], "valid_round": None,
              "mask_valid_at_test": False, "neg_exclude_heldout": False}
    for k, v in expect.items():
        assert cfg[k] == v, k
    # the code's own names
    cfg = resolve_config(cls, "x", overrides={"embed_size": 32, "layers": 2, "loss_ratio": 0.1,
                                              "tau": 0.2})
    assert (cfg["embedding_dim"], cfg["n_item_layers"], cfg["cl_weight"], cfg["temperature"]) \
        == (32, 2, 0.1, 0.2)
    with pytest.raises(ConfigError):
        resolve_config(cls, "x", overrides={"feat_embed_dim": 32})


def test_configuration_reaches_the_model(data):
    cfg = resolve_config(MICRO, "x", overrides={"knn_k": 3, "loss_ratio": 0.2, "embed_size": 8})
    torch.manual_seed(0)
    m = MICRO(data, None, **model_kwargs(MICRO, cfg))
    assert (m.knn_k, m.cl_weight, m.embedding_dim) == (3, 0.2, 8)
    assert m.projection[m._keys[0]].out_features == 8


# ------------------------------------------------------------------ the command line
def test_cli_train_reports_the_metrics_of_its_written_ranking(tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    d = write_synthetic(tmp_path / "syn", 80, 50, seed=4)
    run = tmp_path / "run"
    args = ["train", "--model", "micro", "--data", str(d), "--out", str(run), "--device", "cpu",
            "--quiet", "--set", "epochs=2", "--set", "eval_step=1", "--set", "batch_size=64",
            "--set", "knn_k=5", "--set", "embedding_dim=16", "--set", "topk=[5,10,20]"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "micro" and metrics["epochs_run"] == 2
    again = recompute_from_topk(run, load_dataset(d), [5, 10, 20])
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
    assert any(k.startswith("knn-sym") for k in metrics["graph_seconds"])
