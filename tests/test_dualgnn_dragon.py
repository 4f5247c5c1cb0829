"""DualGNN and DRAGON against dense, literal re-computations of their reference code
(``enoche/MMRec`` ``src/models/{dualgnn,dragon}.py``, ``preprocessing/dualgnn-gen-u-u-matrix.py``):
the user–user graph and its per-epoch sampling, the item kNN graph, representations, loss terms
and gradients on tiny inputs; initialisation; configuration; the command line and the written
ranking."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from topk_recompute import recompute_from_topk

from mmrecsys.cli import main
from mmrecsys.config import resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
from mmrecsys.graphs import GraphCache
from mmrecsys.models import get_model_class
from mmrecsys.models.dualgnn import (
    sample_user_slots,
    user_cooccurrence_lists,
    user_graph_matrix,
)

NAMES = ["dualgnn", "dragon"]
MODS2 = (("image_feat", 16, 0.6, "relu"), ("text_feat", 12, 0.9, "l2"))
MODS3 = MODS2 + (("audio_feat", 10, 0.8, "relu"),)
K_USER = 20


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=40, n_items=30, seed=5, modalities=MODS2)


@pytest.fixture(scope="module")
def data3():
    return make_synthetic(n_users=40, n_items=30, seed=6, modalities=MODS3)


def build(name, data, **kw):
    torch.manual_seed(0)
    kw = {"user_knn_k": K_USER, **kw}
    if name == "dragon":
        kw.setdefault("knn_k", 4)
    return get_model_class(name)(data, None, **kw)


def batch(data, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, data.n_users, (b,), generator=g),
            torch.randint(0, data.n_items, (b,), generator=g),
            torch.randint(0, data.n_items, (b,), generator=g))


# ------------------------------------------------------------------ the reference, literally (dense)
def ref_user_graph_dict(train):
    """The preprocessing script: pairwise intersections, then topk of every dense row."""
    r = sp.csr_matrix(train)
    n = r.shape[0]
    edge = {u: set(r.indices[r.indptr[u]:r.indptr[u + 1]].tolist()) for u in range(n)
            if r.indptr[u + 1] > r.indptr[u]}
    keys = sorted(edge)
    g = torch.zeros(n, n)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            c = len(edge[keys[a]] & edge[keys[b]])
            if c > 0:
                g[keys[a], keys[b]] = c
                g[keys[b], keys[a]] = c
    out = {}
    for i in range(n):
        cnt = len(torch.nonzero(g[i]))
        top = torch.topk(g[i], min(cnt, 200))
        # ties: torch.topk leaves their order unspecified; the port orders them by id
        pairs = sorted(zip(top.indices.tolist(), top.values.tolist()), key=lambda p: (-p[1], p[0]))
        out[i] = [[p[0] for p in pairs], [p[1] for p in pairs]]
        assert sorted(top.values.tolist(), reverse=True) == [p[1] for p in pairs]
    return out


def port_draws(lists, k, seed):
    """The uniform numbers the port draws (slot-major), as a (U, k) table the literal
    ``topk_sample`` reads in its own (user-major) order."""
    rng = np.random.default_rng(seed)
    n = lists["n"]
    draws = np.full((len(n), k), np.nan)
    for t in range(1, k):
        rows = np.flatnonzero((n > 0) & (n <= t))
        if len(rows):
            draws[rows, t] = rng.random(len(rows))
    return draws


def ref_topk_sample(user_graph_dict, k, draws, mode="softmax"):
    """The code's ``topk_sample``, ``np.random.randint(0, len)`` replaced by the port's draws."""
    index, weights = [], torch.zeros(len(user_graph_dict), k)
    for i in range(len(user_graph_dict)):
        if len(user_graph_dict[i][0]) < k:
            if len(user_graph_dict[i][0]) == 0:
                index.append([0] * k)
                continue
            sample = user_graph_dict[i][0][:k]
            weight = user_graph_dict[i][1][:k]
            while len(sample) < k:
                rand_index = int(draws[i, len(sample)] * len(sample))
                sample.append(sample[rand_index])
                weight.append(weight[rand_index])
            index.append(sample)
        else:
            sample = user_graph_dict[i][0][:k]
            weight = user_graph_dict[i][1][:k]
            index.append(sample)
        weights[i] = F.softmax(torch.tensor(weight), dim=0) if mode == "softmax" else torch.ones(k) / k
    return index, weights


def ref_user_aggregate(features, index, weights):
    return torch.matmul(weights.unsqueeze(1), features[torch.tensor(index)]).squeeze()


def ref_conv(x, edge_index):
    row, col = edge_index
    deg = torch.bincount(row, minlength=x.shape[0]).to(x.dtype)
    norm = deg.pow(-0.5)[row] * deg.pow(-0.5)[col]
    return torch.zeros_like(x).index_add_(0, col, norm.view(-1, 1) * x[row])


def ref_gcn(pref, mlp, mlp_1, feat, edge_index):
    temp = F.linear(F.leaky_relu(F.linear(feat, *mlp)), *mlp_1)
    x = F.normalize(torch.cat((pref, temp), dim=0))
    h = ref_conv(x, edge_index)
    h_1 = ref_conv(h, edge_index)
    return h + x + h_1


def edge_index_of(data):
    c = sp.coo_matrix(data.train)
    e = torch.tensor(np.column_stack((c.row, c.col + data.n_users)), dtype=torch.long).t()
    return torch.cat((e, e[[1, 0]]), dim=1)


def ref_knn_adj(x, k):
    xn = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    sim = xn @ xn.T
    _, ind = torch.topk(sim, k, dim=-1)
    rows = torch.arange(x.shape[0]).unsqueeze(1).expand(-1, k).flatten()
    adj = torch.zeros(x.shape[0], x.shape[0])
    adj[rows, ind.flatten()] = 1.0
    r = (1e-7 + adj.sum(-1)).pow(-0.5)
    return adj * r[:, None] * r[None, :]


def clone_params(model):
    return {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}


def ref_forward(name, model, p, data, index, weights, users, pos, neg, inplace_sum=True):
    """pos/neg scores and loss of the code's ``forward`` + ``calculate_loss`` (any M)."""
    nu = data.n_users
    feats = [torch.tensor(x, dtype=torch.float32) for x in data.features.values()]
    ei = edge_index_of(data)
    reps, prefs = [], []
    for m, x in enumerate(feats):
        pref = p[f"branches.{m}.preference"]
        mlp = (p[f"branches.{m}.mlp.weight"], p[f"branches.{m}.mlp.bias"])
        mlp_1 = (p[f"branches.{m}.mlp_1.weight"], p[f"branches.{m}.mlp_1.bias"])
        reps.append(ref_gcn(pref, mlp, mlp_1, x, ei))
        prefs.append(pref)
    wu = p["weight_u"]
    if name == "dualgnn":
        representation = reps[0]
        for r in reps[1:]:
            if inplace_sum:
                representation += r            # in place: reps[0] becomes the sum, as v_rep
            else:
                representation = representation + r
        cols = [torch.unsqueeze(r, 2) for r in reps]
        user_rep = reps[0][:nu] if len(reps) == 1 else torch.matmul(
            torch.cat([c[:nu] for c in cols], dim=2), wu)
        user_rep = torch.squeeze(user_rep)
        item_rep = representation[nu:]
    else:
        representation = torch.cat(reps, dim=1)
        if len(reps) == 1:
            user_rep = reps[0][:nu]
        else:
            u = torch.cat([torch.unsqueeze(r, 2)[:nu] for r in reps], dim=2)
            u = wu.transpose(1, 2) * u
            user_rep = torch.cat([u[:, :, m] for m in range(len(reps))], dim=1)
        item_rep = representation[nu:]
        mm_adj = sum(w * ref_knn_adj(x, model.knn_k) for w, x in
                     zip(_weights(len(feats), model.mm_image_weight), feats))
        h = item_rep
        for _ in range(model.n_mm_layers):
            h = mm_adj @ h
        item_rep = item_rep + h
    user_rep = user_rep + ref_user_aggregate(user_rep, index, weights)
    res = torch.cat((user_rep, item_rep), dim=0)
    ps = torch.sum(res[users] * res[pos + nu], dim=1)
    ns = torch.sum(res[users] * res[neg + nu], dim=1)
    loss = -torch.mean(torch.log2(torch.sigmoid(ps - ns)))
    reg = model.reg_weight * sum((pr[users] ** 2).mean() for pr in prefs)
    reg = reg + model.reg_weight * (wu ** 2).mean()
    if name == "dualgnn":
        reg = reg + model.reg_weight * (p["weight_i"] ** 2).mean()
    return res[:nu], res[nu:], loss + reg


def _weights(m, beta):
    return [1.0] if m == 1 else [beta] + [(1 - beta) / (m - 1)] * (m - 1)


def check_against_reference(name, data, seed=3, **kw):
    model = build(name, data, **kw)
    model.user_graph = model.sample_user_graph(seed=seed)
    draws = port_draws(model.user_lists, model.user_knn_k, seed)
    index, weights = ref_topk_sample(ref_user_graph_dict(data.train), model.user_knn_k, draws,
                                     model.user_aggr)
    users, pos, neg = batch(data)
    p = clone_params(model)
    ref_u, ref_i, ref_loss = ref_forward(name, model, p, data, index, weights, users, pos, neg,
                                         inplace_sum=getattr(model, "inplace_sum", True))
    out = model.loss(users, pos, neg)
    loss = sum(out.values())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    for k, q in model.named_parameters():
        torch.testing.assert_close(q.grad, p[k].grad, rtol=1e-4, atol=1e-7, msg=k)
    model.eval()
    with torch.no_grad():
        e_u, e_i = model.representations()
        scores = model.score(torch.arange(data.n_users), (e_u, e_i))
    torch.testing.assert_close(e_u, ref_u.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e_i, ref_i.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, ref_u.detach() @ ref_i.detach().T, rtol=1e-5, atol=1e-5)
    return model


# ------------------------------------------------------------------ graphs
def test_user_lists_equal_the_preprocessing_script(data):
    ref = ref_user_graph_dict(data.train)
    for k in (3, K_USER, 100):
        lists = user_cooccurrence_lists(data.train, k, chunk_size=7)   # several row blocks
        tiny = user_cooccurrence_lists(data.train, k, max_products=30)  # blocks bounded by work
        for key in lists:
            np.testing.assert_array_equal(lists[key], tiny[key])
        for u in range(data.n_users):
            n = lists["n"][u]
            assert n == len(ref[u][0])
            w = min(n, k)
            assert lists["cols"][u, :w].tolist() == ref[u][0][:w]
            assert lists["counts"][u, :w].tolist() == ref[u][1][:w]
            assert (lists["cols"][u, w:] == -1).all()


def test_user_lists_cap_and_empty_rows():
    # user 3 shares nothing; user 0 has 250 co-users (capped at 200 as the script's topk)
    rows = [0] * 1 + list(range(4, 254)) + [1, 2, 3, 1]
    cols = [0] * 1 + [0] * 250 + [1, 1, 9, 2]
    r = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(254, 10))
    lists = user_cooccurrence_lists(r, 300)
    assert lists["n"][0] == 200 and lists["n"][3] == 0 and lists["n"][1] == 1
    assert lists["cols"].shape[1] == 200
    cols_, counts, n = sample_user_slots(lists, 5, np.random.default_rng(0))
    g = user_graph_matrix(cols_, counts, n)
    assert g[3].nnz == 0                                  # no co-users: aggregates nothing
    assert g[1].toarray().ravel()[2] == pytest.approx(1.0)  # one co-user repeated 5 times
    np.testing.assert_allclose(np.asarray(g.sum(1)).ravel()[n > 0], 1.0, rtol=1e-6)


def test_epoch_user_graph_equals_literal_topk_sample(data):
    lists = user_cooccurrence_lists(data.train, K_USER)
    ref = ref_user_graph_dict(data.train)
    assert ((lists["n"] > 0) & (lists["n"] < K_USER)).any() and (lists["n"] >= K_USER).any()
    for mode in ("softmax", "mean"):
        for seed in (0, 1):
            cols, counts, n = sample_user_slots(lists, K_USER, np.random.default_rng(seed))
            g = user_graph_matrix(cols, counts, n, mode).toarray()
            index, weights = ref_topk_sample(ref, K_USER, port_draws(lists, K_USER, seed), mode)
            dense = np.zeros((data.n_users, data.n_users), dtype=np.float32)
            for u in range(data.n_users):
                if lists["n"][u]:
                    np.add.at(dense[u], index[u], weights[u].numpy())
            np.testing.assert_allclose(g, dense, rtol=1e-6, atol=1e-7)
    # the padding changes with the epoch's draws, the full rows do not
    a = user_graph_matrix(*sample_user_slots(lists, K_USER, np.random.default_rng(0))).toarray()
    b = user_graph_matrix(*sample_user_slots(lists, K_USER, np.random.default_rng(1))).toarray()
    full = lists["n"] >= K_USER
    np.testing.assert_array_equal(a[full], b[full])
    assert not np.array_equal(a[~full], b[~full])


def test_dragon_item_graph_equals_the_dense_knn(data):
    m = build("dragon", data, mm_image_weight=0.3)
    feats = [torch.tensor(x, dtype=torch.float32) for x in data.features.values()]
    ref = 0.3 * ref_knn_adj(feats[0], 4) + 0.7 * ref_knn_adj(feats[1], 4)
    got = m.item_graph(torch.eye(data.n_items))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ loss, gradients, scores
@pytest.mark.parametrize("name", NAMES)
def test_loss_gradients_and_scores_equal_the_reference(name, data):
    check_against_reference(name, data)


def test_dualgnn_paper_fusion_and_mean_aggregation(data):
    check_against_reference("dualgnn", data, inplace_sum=False, user_aggr="mean", reg_weight=0.1)


def test_dragon_other_settings(data):
    check_against_reference("dragon", data, n_mm_layers=2, mm_image_weight=0.6, reg_weight=0.01)


@pytest.mark.parametrize("name", NAMES)
def test_three_modalities(name, data3):
    model = check_against_reference(name, data3)
    assert model.weight_u.shape == (data3.n_users, 3, 1)
    width = model.representations()[0].shape[1]
    assert width == (3 * 64 if name == "dragon" else 64)


@pytest.mark.parametrize("name", NAMES)
def test_one_modality(name):
    d = make_synthetic(n_users=30, n_items=20, seed=1, modalities=MODS2[:1])
    check_against_reference(name, d)


# ------------------------------------------------------------------ initialisation and configuration
@pytest.mark.parametrize("name", NAMES)
def test_initialisation(name, data):
    m = build(name, data)
    torch.testing.assert_close(m.weight_u.sum(1), torch.ones(data.n_users, 1))
    assert (m.weight_u > 0).all()
    for b in m.branches:
        std = (2.0 / (data.n_users + m.embedding_dim)) ** 0.5     # xavier-normal, gain 1
        assert abs(b.preference.std().item() - std) < 0.25 * std
        bound = 1 / b.mlp.weight.shape[1] ** 0.5                  # torch's Linear default
        assert b.mlp.weight.abs().max() <= bound
    assert all(not t.trainable for t in m.features)
    if name == "dualgnn":
        torch.testing.assert_close(m.weight_i.sum(1), torch.ones(data.n_items, 1))
    else:
        assert not hasattr(m, "weight_i")


@pytest.mark.parametrize("name", NAMES)
def test_defaults_grid_and_trainer_settings(name):
    cls = get_model_class(name)
    hp = cls.hyperparameters()
    assert hp["embedding_dim"] == 64 and hp["n_layers"] == 2 and hp["user_knn_k"] == 40
    assert hp["reg_weight"] == 1e-3 and hp["aggr_mode"] == "add"
    grid = [0.1, 0.01, 0.001, 0.0001, 0.00001]
    assert cls.search_space == {"aggr_mode": ["add"], "lr": grid, "reg_weight": grid}
    cfg = resolve_config(cls, "x")
    assert cfg["lr"] == 1e-3 and cfg["batch_size"] == 2048 and cfg["lr_scheduler"] == [1.0, 50]
    assert cls.requires_features
    if name == "dragon":
        assert (hp["knn_k"], hp["n_mm_layers"], hp["mm_image_weight"]) == (10, 1, 0.1)
    assert resolve_config(cls, "x", overrides={"embedding_size": 32})["embedding_dim"] == 32


BAD = [({"aggr_mode": "mean"}, "aggr_mode"), ({"user_knn_k": 0}, "user_knn_k"),
       ({"reg_weight": -1.0}, "reg_weight"), ({"user_aggr": "max"}, "user_aggr"),
       ({"n_layers": -1}, "n_layers"), ({"embedding_dim": 0}, "embedding_dim")]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kw,match", BAD)
def test_bad_values_are_refused(name, data, kw, match):
    with pytest.raises(ValueError, match=match):
        build(name, data, **kw)


@pytest.mark.parametrize("kw,match", [({"knn_k": 0}, "knn_k"), ({"n_mm_layers": -1}, "n_mm_layers"),
                                      ({"mm_image_weight": 1.5}, "mm_image_weight")])
def test_bad_dragon_values_are_refused(data, kw, match):
    with pytest.raises(ValueError, match=match):
        build("dragon", data, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_no_features_is_refused_before_any_graph(name, tmp_path):
    d = make_synthetic(n_users=30, n_items=20, seed=1, modalities=())
    cache = GraphCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="needs item modality features"):
        get_model_class(name)(d, cache)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


@pytest.mark.parametrize("name", NAMES)
def test_graphs_are_cached(name, data, tmp_path):
    cache = GraphCache(tmp_path / "cache")
    a = get_model_class(name)(data, cache, user_knn_k=K_USER, **({"knn_k": 4} if name == "dragon" else {}))
    hits = cache.hits
    b = get_model_class(name)(data, cache, user_knn_k=K_USER, **({"knn_k": 4} if name == "dragon" else {}))
    assert cache.hits > hits
    for key in ("cols", "counts", "n"):
        np.testing.assert_array_equal(a.user_lists[key], b.user_lists[key])
    assert f"{name}-user-lists" in a.graph_seconds


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_uses_the_last_training_forward_unless_told_otherwise(name, data):
    m = build(name, data)
    assert m.reuse_training_result is True                 # the code's stale result_embed
    assert "result" in m.state_dict()                       # persistent: best.pt ranks the same
    width = m.result.shape[1]
    m.eval()
    with torch.no_grad():                                   # before training: the random buffer
        u0, i0 = m.representations()
    torch.testing.assert_close(torch.cat([u0, i0]), m.result)
    m.train()
    torch.manual_seed(1)
    m.pre_epoch(0)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    users, pos, neg = batch(data)
    loss = sum(m.loss(users, pos, neg).values())
    with torch.no_grad():
        before = torch.cat(m.forward())
    assert before.shape[1] == width
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        got = torch.cat(m.representations())
        torch.testing.assert_close(got, before)             # stale by one step, as the code
        m.reuse_training_result = False
        fresh = torch.cat(m.representations())
        torch.testing.assert_close(fresh, torch.cat(m.forward()))
        assert not torch.allclose(fresh, before)
    # a loss in eval mode does not overwrite the stored result
    m.reuse_training_result = True
    stored = m.result.clone()
    m.loss(users, pos, neg)
    assert torch.equal(m.result, stored)
    # the state dict carries it: a restored model ranks with the same representations
    other = build(name, data)
    other.load_state_dict(m.state_dict())
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(other.representations()), got)


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 120, 80, seed=4)


@pytest.mark.parametrize("name", NAMES)
def test_cli_train_reports_the_metrics_of_its_written_ranking(name, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMRECSYS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["train", "--model", name, "--data", str(data_dir), "--out", str(run), "--device", "cpu",
            "--quiet", "--set", "epochs=2", "--set", "batch_size=256", "--set", "topk=[5,10,20]",
            "--set", "user_knn_k=10"]
    if name == "dragon":
        args += ["--set", "knn_k=5"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["epochs_run"] == 2
    again = recompute_from_topk(run, load_dataset(data_dir), [5, 10, 20])
    for k, v in again.items():
        assert metrics["test"][k] == pytest.approx(v, abs=1e-6), k
    assert f"{name}-user-lists" in metrics["graph_seconds"]
