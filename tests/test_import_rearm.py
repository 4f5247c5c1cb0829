"""The REARM-layout importer on a tiny dataset written by the test."""
import numpy as np
import pytest

from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.import_rearm import import_rearm


def _write_rearm(d, with_feats=True):
    d.mkdir(parents=True, exist_ok=True)
    # 3 users, 5 items; item 4 only in test (a cold item)
    train = np.array([[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2, 1, 2, 3, 0, 3, 1]], dtype=np.int64)
    valid = np.array([[0, 1, 2], [3, 0, 2]], dtype=np.int64)
    test = np.array([[0, 1, 2], [4, 4, 4]], dtype=np.int64)
    np.save(d / "train.npy", train)
    np.save(d / "valid.npy", valid)
    np.save(d / "test.npy", test)
    if with_feats:
        np.save(d / "image_feat.npy", np.arange(5 * 4, dtype=np.float64).reshape(5, 4))
        np.save(d / "text_feat.npy", np.ones((5, 3), dtype=np.float32))
    return train, valid, test


def test_import_roundtrip(tmp_path):
    train, valid, test = _write_rearm(tmp_path / "src")
    path = import_rearm(tmp_path / "src", tmp_path / "toy")
    assert path.name == "toy.inter"
    ds = load_dataset(tmp_path / "toy")
    assert (ds.n_users, ds.n_items) == (3, 5)
    for m, arr in ((ds.train, train), (ds.valid, valid), (ds.test, test)):
        got = set(zip(*m.nonzero()))
        assert got == set(zip(arr[0].tolist(), arr[1].tolist()))
    assert list(ds.features) == ["image_feat", "text_feat"]
    np.testing.assert_array_equal(ds.features["image_feat"], np.arange(20).reshape(5, 4))
    assert ds.features["image_feat"].dtype == np.float32
    assert ds.features["text_feat"].shape == (5, 3)


def test_import_name_and_no_features(tmp_path):
    _write_rearm(tmp_path / "src", with_feats=False)
    with pytest.warns(UserWarning, match="no \\*_feat.npy"):
        path = import_rearm(tmp_path / "src", tmp_path / "out", name="baby")
    assert path.name == "baby.inter"
    assert load_dataset(tmp_path / "out").features == {}


def test_import_errors(tmp_path):
    src = tmp_path / "src"
    _write_rearm(src)
    (src / "valid.npy").unlink()
    with pytest.raises(DataError, match="valid.npy: file missing"):
        import_rearm(src, tmp_path / "o")
    _write_rearm(src)
    np.save(src / "test.npy", np.array([[0, 4], [1, 4], [2, 4]]))  # (n, 2): transposed
    with pytest.raises(DataError, match="test.npy: expected shape \\(2, n\\).*transposed"):
        import_rearm(src, tmp_path / "o")
    _write_rearm(src)
    np.save(src / "test.npy", np.array([[0, 1], [1, 4]]))  # (0, 1) is also in train
    with pytest.raises(DataError, match="user 0, item 1\\) occurs 2 times \\(in train.npy, test.npy"):
        import_rearm(src, tmp_path / "o")
    _write_rearm(src)
    np.save(src / "image_feat.npy", np.zeros((4, 2)))
    with pytest.raises(DataError, match="image_feat.npy: has 4 rows but the dataset has 5 items"):
        import_rearm(src, tmp_path / "o")
    _write_rearm(src)
    bad = np.zeros((5, 2))
    bad[3, 1] = np.nan
    np.save(src / "image_feat.npy", bad)
    with pytest.raises(DataError, match="row 3 \\(item 3\\), column .* is (nan|inf)"):
        import_rearm(src, tmp_path / "o")
    _write_rearm(src)
    np.save(src / "train.npy", np.array([[0, -1], [1, 2]]))
    with pytest.raises(DataError, match="negative user id -1"):
        import_rearm(src, tmp_path / "o")
    np.save(src / "train.npy", np.array([[0, 1], [1.5, 2]]))
    with pytest.raises(DataError, match="ids must be integers"):
        import_rearm(src, tmp_path / "o")
    np.save(src / "train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled Python objects"):
        import_rearm(src, tmp_path / "o")
    with pytest.raises(DataError, match="not a directory"):
        import_rearm(tmp_path / "nope", tmp_path / "o")


def test_cli_import(tmp_path):
    from click.testing import CliRunner
    from mmrecsys.cli import main
    _write_rearm(tmp_path / "src")
    r = CliRunner().invoke(main, ["data", "import", "--format", "rearm", str(tmp_path / "src"),
                                  str(tmp_path / "toy")])
    assert r.exit_code == 0, r.output
    assert load_dataset(tmp_path / "toy").n_items == 5
