"""The embedded synthetic dataset: seeded, MMRec-split, long-tailed, new items whose held-out
interactions follow taste, content features that carry the latent clusters."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.synthetic import make_synthetic, oracle_model, true_scores, write_synthetic
from mmrecsys.evaluation import evaluate
from mmrecsys.graphs.knn import knn_graph


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(600, 300, seed=3)


def _same(a, b):
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    for s in ("train", "valid", "test"):
        x, y = a.split(s), b.split(s)
        np.testing.assert_array_equal(x.indptr, y.indptr)
        np.testing.assert_array_equal(x.indices, y.indices)
    assert list(a.features) == list(b.features)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])
    np.testing.assert_array_equal(a.new_items, b.new_items)
    assert a.new_items.dtype == np.int64


def _held_out_counts(ds, items):
    """(valid, test) rows per item of ``items``."""
    return tuple(np.asarray(ds.split(s).sum(axis=0)).ravel()[items].astype(int)
                 for s in ("valid", "test"))


def _chance_recall20(ds, result):
    """Expected recall@20 of a random ranking of the unmasked items, for result's users."""
    return float(np.mean(20 / (ds.n_items - ds.user_train_degree()[result.users])))


def test_deterministic_under_seed(ds):
    again = make_synthetic(600, 300, seed=3)
    _same(ds, again)
    np.testing.assert_array_equal(ds.item_clusters, again.item_clusters)
    np.testing.assert_array_equal(true_scores(ds), true_scores(again))
    other = make_synthetic(600, 300, seed=4)
    assert not np.array_equal(other.features["image_feat"], ds.features["image_feat"])
    assert (other.train != ds.train).nnz > 0
    assert not np.array_equal(other.new_items, ds.new_items)


def test_shapes_and_modalities(ds):
    assert (ds.n_users, ds.n_items) == (600, 300)
    for s in ("train", "valid", "test"):
        m = ds.split(s)
        assert m.shape == (600, 300) and m.dtype == np.float32
        assert set(np.unique(m.data).tolist()) <= {1.0}
    assert list(ds.features) == ["image_feat", "text_feat"]
    img, txt = ds.features["image_feat"], ds.features["text_feat"]
    assert img.shape == (300, 256) and txt.shape == (300, 128)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    assert (img >= 0).all() and (img > 0).mean() > 0.2  # CNN-like (ReLU), not all zero
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-4)  # sentence-like
    # splits are disjoint
    assert ds.train.multiply(ds.valid).nnz == 0
    assert ds.train.multiply(ds.test).nnz == 0
    assert ds.valid.multiply(ds.test).nnz == 0
    assert ds.item_clusters.shape == (300,)
    assert true_scores(ds).shape == (600, 300) and true_scores(ds, [0, 5]).shape == (2, 300)


def test_mmrec_split_rule_per_user_on_old_items(ds):
    old = np.setdiff1d(np.arange(ds.n_items), ds.new_items)
    tr, va, te = (np.diff(ds.split(s)[:, old].indptr) for s in ("train", "valid", "test"))
    n = tr + va + te
    assert n.min() >= 5  # every user has at least 5 old-item interactions
    small = n < 10
    assert small.any() and (~small).any()  # both branches of the rule are exercised
    np.testing.assert_array_equal(tr[small], n[small] - 2)
    assert (va[small] == 1).all() and (te[small] == 1).all()
    m = n[~small] // 5
    v = m // 2
    np.testing.assert_array_equal(va[~small], v)
    np.testing.assert_array_equal(te[~small], m - v)
    np.testing.assert_array_equal(tr[~small], n[~small] - m)


def test_new_items_have_few_training_rows_and_held_out_rows(ds):
    new = ds.new_items
    assert len(new) == round(0.15 * ds.n_items)
    assert np.all(np.diff(new) > 0) and new.min() >= 0 and new.max() < ds.n_items
    deg = ds.item_train_degree()[new]
    assert deg.max() <= 2 and set(np.unique(deg).tolist()) == {0, 1, 2}
    va, te = _held_out_counts(ds, new)
    held = va + te
    assert (held > 0).mean() > 0.9  # nearly every new item is interacted with, out of training
    assert held.sum() > 5 * deg.sum()  # most of their interactions are held out
    assert np.abs(va - te).max() <= 1  # half to validation, half to test, per item
    # new items weigh in the held-out splits without swamping them
    assert 0.1 < held.sum() / (ds.valid.nnz + ds.test.nnz) < 0.6


def test_no_new_items_when_share_is_zero(tmp_path):
    d = make_synthetic(100, 50, seed=0, new_item_share=0.0)
    assert d.new_items.dtype == np.int64 and len(d.new_items) == 0
    out = write_synthetic(tmp_path / "plain", 100, 50, seed=0, new_item_share=0.0)
    assert not (out / "new_items.txt").exists() and load_dataset(out).new_items is None


def test_oracle_ranks_new_items_well_above_chance(ds):
    oracle = oracle_model(ds)
    r = evaluate(oracle, ds, "test", topk=(20,), item_subset=ds.new_items)
    assert len(r.users) > 100
    chance = _chance_recall20(ds, r)
    assert r.metrics["recall@20"] > 4 * chance, (r.metrics, chance)
    # the module scores as true_scores does
    u = torch.arange(7)
    np.testing.assert_allclose(oracle.score(u).numpy(), true_scores(ds, np.arange(7)), rtol=1e-5,
                               atol=1e-5)


def test_content_alone_ranks_new_items_above_chance(ds):
    # a user profile = mean feature vector of the user's training items, scored by cosine:
    # the features carry the taste that decides new items' held-out interactions
    class Content(torch.nn.Module):
        def __init__(self, x):
            super().__init__()
            x = x - x.mean(0)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            prof = (ds.train @ x) / np.maximum(ds.user_train_degree(), 1)[:, None]
            self.u = torch.as_tensor(prof, dtype=torch.float32)
            self.i = torch.as_tensor(x, dtype=torch.float32)

        def representations(self):
            return None

        def score(self, users, reps=None):
            return self.u[users] @ self.i.T

    for modality in ("image_feat", "text_feat"):
        r = evaluate(Content(ds.features[modality]), ds, "test", topk=(20,),
                     item_subset=ds.new_items)
        chance = _chance_recall20(ds, r)
        assert r.metrics["recall@20"] > 3 * chance, (modality, r.metrics, chance)


def test_old_items_keep_a_long_tail(ds):
    old = np.setdiff1d(np.arange(ds.n_items), ds.new_items)
    deg = ds.item_train_degree()[old]
    assert 0.02 <= (deg <= 2).mean() <= 0.6
    # the top 10% of items carry a large share of training interactions (≈ 0.29 here,
    # ≈ 0.37 at the default size)
    top = np.sort(deg)[::-1][: len(deg) // 10].sum() / deg.sum()
    assert top > 0.25, top


def _cluster_share(x, c, k=10):
    idx, _ = knn_graph(x, k, exclude_self=True)
    share = (c[idx.numpy()] == c[:, None]).mean()
    counts = np.bincount(c)
    chance = ((counts * (counts - 1)).sum()) / (len(c) * (len(c) - 1))  # a random other item
    return share, chance


@pytest.mark.parametrize("modality", ["image_feat", "text_feat"])
def test_planted_signal_feature_neighbours_share_cluster(ds, modality):
    share, chance = _cluster_share(ds.features[modality], ds.item_clusters)
    assert share > 4 * chance and share > 0.5, (share, chance)
    # new items' features come from the same maps: their neighbours share their cluster too
    idx, _ = knn_graph(ds.features[modality], 10, exclude_self=True)
    c = ds.item_clusters
    new = ds.new_items
    assert (c[idx.numpy()[new]] == c[new][:, None]).mean() > 4 * chance


def test_feature_signal_is_absent_after_shuffling(ds):
    # the check above is meaningful: shuffled rows lose the cluster agreement
    rng = np.random.default_rng(0)
    x = ds.features["text_feat"][rng.permutation(ds.n_items)]
    share, chance = _cluster_share(x, ds.item_clusters)
    assert share < 2.5 * chance + 0.05


def test_write_synthetic_roundtrip(tmp_path):
    out = write_synthetic(tmp_path / "syn", 120, 60, seed=1)
    ids = [int(v) for v in (out / "new_items.txt").read_text().split()]
    loaded = load_dataset(out)
    assert loaded.name == "syn" and ids == loaded.new_items.tolist()
    _same(loaded, make_synthetic(120, 60, seed=1))


def test_load_rejects_new_item_ids_out_of_range(tmp_path):
    out = write_synthetic(tmp_path / "bad", 120, 60, seed=1)
    (out / "new_items.txt").write_text("3\n60\n")
    with pytest.raises(DataError, match="new_items.txt: item ids must lie in 0..59"):
        load_dataset(out)


def test_default_size_is_fast_and_has_sparse_items():
    t0 = time.perf_counter()
    d = make_synthetic()  # the embedded default: 2000 users, 1000 items
    seconds = time.perf_counter() - t0
    assert seconds < 1.5, seconds  # ≈ 0.15 s; loose for a busy machine
    assert (d.n_users, d.n_items) == (2000, 1000) and len(d.new_items) == 150
    deg = d.item_train_degree()
    assert 0.1 <= (deg <= 2).mean() <= 0.5
    assert (deg == 0).any() and ((deg >= 1) & (deg <= 2)).any()
    assert deg[d.new_items].max() <= 2


def test_cli_data_synth(tmp_path):
    from click.testing import CliRunner

    from mmrecsys.cli import main
    out = tmp_path / "mini"
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--users", "100",
                                    "--items", "50", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "mini.inter").exists() and (out / "image_feat.npy").exists()
    assert (out / "new_items.txt").exists()
    _same(load_dataset(out), make_synthetic(100, 50, seed=2))
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "m2"), "--users",
                                    "100", "--items", "50", "--new-item-share", "0.3"])
    assert res.exit_code == 0, res.output
    assert len(load_dataset(tmp_path / "m2").new_items) == 15


def test_scale_generator_writes_a_loadable_dataset_in_chunks(tmp_path):
    """The bounded-memory generator: chunked users and items give a valid dataset with a long
    tail, MMRec's per-user split and the requested feature widths."""
    import warnings

    from mmrecsys.data import load_dataset
    from mmrecsys.data.synthetic_scale import write_synthetic_scale
    out = write_synthetic_scale(tmp_path / "big", n_users=600, n_items=400, n_interactions=6000,
                                seed=1, modalities=(("image_feat", 12, "relu"), ("text_feat", 8, "l2")),
                                user_chunk=128, item_chunk=97)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(out)
    assert data.n_items <= 400 and data.train.nnz > 3000
    assert data.features["image_feat"].shape == (400, 12) and data.features["image_feat"].min() >= 0
    assert np.allclose(np.linalg.norm(data.features["text_feat"], axis=1), 1, atol=1e-4)
    deg = data.item_train_degree()
    assert deg.max() > 10 * max(1, np.median(deg))            # a long tail
    n_tr = np.diff(data.train.indptr)
    n_all = n_tr + np.diff(data.valid.indptr) + np.diff(data.test.indptr)
    big = n_all >= 10
    assert np.all(n_all[big] - n_tr[big] == n_all[big] // 5)   # m = floor(0.2 n) held out
