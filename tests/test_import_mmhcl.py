"""Importer of MMHCL's own layout (train/val/test JSON + *_feat.npy) into the standard format."""
import json
import warnings

import numpy as np
import pytest

from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.import_mmhcl import import_mmhcl


def write_mmhcl_layout(root, train=None, val=None, test=None, n_items=6, core="5-core"):
    train = train if train is not None else {"0": [0, 1, 2], "1": [2, 3], "2": [4, 1], "3": []}
    val = val if val is not None else {"0": [3], "1": [0], "2": [5], "3": []}
    test = test if test is not None else {"0": [4], "1": [1], "2": [], "3": []}
    d = root / core
    d.mkdir(parents=True)
    for name, obj in (("train", train), ("val", val), ("test", test)):
        (d / f"{name}.json").write_text(json.dumps(obj))
    rng = np.random.default_rng(0)
    np.save(root / "image_feat.npy", rng.standard_normal((n_items, 4)).astype(np.float64))
    np.save(root / "text_feat.npy", rng.standard_normal((n_items, 3)).astype(np.float32))
    return root


def test_import_tiny_dataset(tmp_path):
    src = write_mmhcl_layout(tmp_path / "Tiktok")
    path = import_mmhcl(src, tmp_path / "out" / "tiny")
    assert path.name == "tiny.inter"
    lines = path.read_text().splitlines()
    assert lines[0] == "userID\titemID\tx_label"
    rows = sorted(tuple(map(int, ln.split("\t"))) for ln in lines[1:])
    expected = sorted([(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 2, 0), (1, 3, 0), (2, 4, 0), (2, 1, 0),
                       (0, 3, 1), (1, 0, 1), (2, 5, 1), (0, 4, 2), (1, 1, 2)])
    assert rows == expected
    data = load_dataset(tmp_path / "out" / "tiny")
    assert (data.n_users, data.n_items) == (3, 6)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (7, 3, 2)
    assert data.train[2, 4] == 1 and data.valid[2, 5] == 1 and data.test[1, 1] == 1
    assert sorted(data.features) == ["image_feat", "text_feat"]
    np.testing.assert_allclose(data.features["image_feat"],
                               np.load(src / "image_feat.npy").astype(np.float32))
    assert data.features["image_feat"].dtype == np.float32


def test_import_from_core_folder_and_name(tmp_path):
    src = write_mmhcl_layout(tmp_path / "Clothing")
    path = import_mmhcl(src / "5-core", tmp_path / "o", name="mmhcl-clothing")
    assert path.name == "mmhcl-clothing.inter"
    assert (tmp_path / "o" / "text_feat.npy").exists()      # features found in the parent


def test_import_user_without_train_is_reported(tmp_path):
    src = write_mmhcl_layout(tmp_path / "d", val={"0": [3], "3": [5]}, test={"1": [1]})
    with pytest.warns(UserWarning, match="no training item"):
        import_mmhcl(src, tmp_path / "o")


@pytest.mark.parametrize("kind,match", [
    ("badjson", r"val\.json: not valid JSON"),
    ("badkey", r"train\.json: key 'u0' is not an integer"),
    ("baditem", r"test\.json: user '0' has item -1"),
    ("list", r"train\.json: the top level must be an object"),
    ("rows", r"image_feat\.npy: has 5 rows but the dataset has 6 items"),
    ("nan", r"text_feat\.npy: row 2 \(item 2\), column 1 is nan; 1 rows hold NaN"),
    ("missing", r"test\.json: file missing"),
])
def test_import_errors_name_file_and_fix(tmp_path, kind, match):
    src = write_mmhcl_layout(tmp_path / "d")
    core = src / "5-core"
    if kind == "badjson":
        (core / "val.json").write_text('{"0": [1,}')
    elif kind == "badkey":
        (core / "train.json").write_text('{"u0": [1]}')
    elif kind == "baditem":
        (core / "test.json").write_text('{"0": [-1]}')
    elif kind == "list":
        (core / "train.json").write_text('[[0, 1]]')
    elif kind == "rows":
        np.save(src / "image_feat.npy", np.zeros((5, 4)))
    elif kind == "nan":
        x = np.ones((6, 3), np.float32)
        x[2, 1] = np.nan
        np.save(src / "text_feat.npy", x)
    elif kind == "missing":
        (core / "test.json").unlink()
    with pytest.raises(DataError, match=match):
        import_mmhcl(src, tmp_path / "o")


def test_import_no_split_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MMHCL split files found"):
        import_mmhcl(tmp_path / "empty", tmp_path / "o")
