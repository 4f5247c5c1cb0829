"""The embedded synthetic dataset: seeded, MMRec-split, long-tailed, with a planted signal."""
from __future__ import annotations

import numpy as np
import pytest

from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import make_synthetic, write_synthetic
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


def test_deterministic_under_seed(ds):
    _same(ds, make_synthetic(600, 300, seed=3))
    other = make_synthetic(600, 300, seed=4)
    assert not np.array_equal(other.features["image_feat"], ds.features["image_feat"])
    assert (other.train != ds.train).nnz > 0


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
    assert (img >= 0).all()  # CNN-like (ReLU)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-4)  # sentence-like
    # splits are disjoint
    assert ds.train.multiply(ds.valid).nnz == 0
    assert ds.train.multiply(ds.test).nnz == 0
    assert ds.valid.multiply(ds.test).nnz == 0
    assert ds.item_clusters.shape == (300,)


def test_mmrec_split_rule_per_user(ds):
    tr = np.diff(ds.train.indptr)
    va = np.diff(ds.valid.indptr)
    te = np.diff(ds.test.indptr)
    n = tr + va + te
    assert n.min() >= 5  # every user has at least 5 interactions
    small = n < 10
    assert small.any() and (~small).any()  # both branches of the rule are exercised
    np.testing.assert_array_equal(tr[small], n[small] - 2)
    assert (va[small] == 1).all() and (te[small] == 1).all()
    m = n[~small] // 5
    v = m // 2
    np.testing.assert_array_equal(va[~small], v)
    np.testing.assert_array_equal(te[~small], m - v)
    np.testing.assert_array_equal(tr[~small], n[~small] - m)


def test_share_of_items_with_few_training_interactions(ds):
    deg = ds.item_train_degree()
    few = (deg <= 2).mean()
    assert 0.05 <= few <= 0.6, few
    # long tail: the top 10% of items carry a large share of training interactions
    top = np.sort(deg)[::-1][: len(deg) // 10].sum() / deg.sum()
    assert top > 0.3, top


@pytest.mark.parametrize("modality", ["image_feat", "text_feat"])
def test_planted_signal_feature_neighbours_share_cluster(ds, modality):
    k = 10
    idx, _ = knn_graph(ds.features[modality], k, exclude_self=True)
    c = ds.item_clusters
    share = (c[idx.numpy()] == c[:, None]).mean()
    # chance: probability that a random other item has the same cluster
    counts = np.bincount(c)
    chance = ((counts * (counts - 1)).sum()) / (len(c) * (len(c) - 1))
    assert share > 4 * chance and share > 0.5, (share, chance)


def test_feature_signal_is_absent_after_shuffling(ds):
    # the check above is meaningful: shuffled rows lose the cluster agreement
    rng = np.random.default_rng(0)
    x = ds.features["text_feat"][rng.permutation(ds.n_items)]
    idx, _ = knn_graph(x, 10, exclude_self=True)
    c = ds.item_clusters
    share = (c[idx.numpy()] == c[:, None]).mean()
    counts = np.bincount(c)
    chance = ((counts * (counts - 1)).sum()) / (len(c) * (len(c) - 1))
    assert share < 2.5 * chance + 0.05


def test_write_synthetic_roundtrip(tmp_path):
    out = write_synthetic(tmp_path / "syn", 120, 60, seed=1)
    loaded = load_dataset(out)
    assert loaded.name == "syn"
    _same(loaded, make_synthetic(120, 60, seed=1))


def test_default_size_has_long_tail_items():
    d = make_synthetic()  # the embedded default: 2000 users, 1000 items
    assert (d.n_users, d.n_items) == (2000, 1000)
    deg = d.item_train_degree()
    assert 0.1 <= (deg <= 2).mean() <= 0.5
    assert (deg == 0).any() and ((deg >= 1) & (deg <= 2)).any()


def test_cli_data_synth(tmp_path):
    from click.testing import CliRunner

    from mmrecsys.cli import main
    out = tmp_path / "mini"
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--users", "100",
                                    "--items", "50", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "mini.inter").exists() and (out / "image_feat.npy").exists()
    _same(load_dataset(out), make_synthetic(100, 50, seed=2))
