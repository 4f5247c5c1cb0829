"""Loading and validating a dataset folder in the standard (MMRec) format."""
from __future__ import annotations

import pathlib
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import DataError, load_dataset

# user, item, label: 3 users, 5 items; every user has train rows, user 2 has a valid and test row
ROWS = [
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 4, 0), (1, 0, 2),
    (2, 3, 0), (2, 2, 0), (2, 4, 1), (2, 1, 2),
]
N_USERS, N_ITEMS = 3, 5


def write_inter(folder: pathlib.Path, rows, header=("userID", "itemID", "x_label"),
                name=None) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or folder.name}.inter"
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_feats(folder: pathlib.Path, widths=None, n_items=N_ITEMS, seed=0):
    rng = np.random.default_rng(seed)
    widths = widths or {"image_feat": 6, "text_feat": 4, "audio_feat": 3}
    out = {}
    for name, w in widths.items():
        x = rng.standard_normal((n_items, w)).astype(np.float32)
        np.save(folder / f"{name}.npy", x)
        out[name] = x
    return out


def load_quiet(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder must load without any warning
        return load_dataset(folder)


def dense(m):
    return np.asarray(m.todense())


# ------------------------------------------------------------------ valid folders
def test_load_required_columns_and_three_modalities(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, ROWS)
    feats = write_feats(folder)
    ds = load_quiet(folder)
    assert ds.name == "toy"
    assert (ds.n_users, ds.n_items) == (N_USERS, N_ITEMS)
    for m in (ds.train, ds.valid, ds.test):
        assert m.shape == (N_USERS, N_ITEMS)
        assert m.format == "csr"
        assert m.dtype == np.float32
    expect = {lab: np.zeros((N_USERS, N_ITEMS), np.float32) for lab in (0, 1, 2)}
    for u, i, lab in ROWS:
        expect[lab][u, i] = 1.0
    np.testing.assert_array_equal(dense(ds.train), expect[0])
    np.testing.assert_array_equal(dense(ds.valid), expect[1])
    np.testing.assert_array_equal(dense(ds.test), expect[2])
    assert sorted(ds.modalities) == ["audio_feat", "image_feat", "text_feat"]
    for name, x in feats.items():
        assert ds.features[name].dtype == np.float32
        np.testing.assert_array_equal(ds.features[name], x)
    # with_features=False skips the modality files
    assert load_dataset(folder, with_features=False).features == {}


def test_optional_rating_timestamp_columns_in_any_order(tmp_path):
    folder = tmp_path / "tiktokish"
    header = ("timestamp", "itemID", "rating", "userID", "x_label")
    rows = [(1600000000 + k, i, 4.5, u, lab) for k, (u, i, lab) in enumerate(ROWS)]
    write_inter(folder, rows, header=header)
    ds = load_quiet(folder)
    ref_folder = tmp_path / "ref"
    write_inter(ref_folder, ROWS)
    ref = load_quiet(ref_folder)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(dense(ds.split(s)), dense(ref.split(s)))
    assert ds.features == {}


def test_ids_span_all_splits(tmp_path):
    # item 7 and user 4 appear only in held-out rows: n_items/n_users still cover them (as MMRec)
    folder = tmp_path / "span"
    rows = ROWS + [(4, 0, 0), (4, 7, 2)]
    write_inter(folder, rows)
    ds = load_quiet(folder)
    assert (ds.n_users, ds.n_items) == (5, 8)
    assert ds.test[4, 7] == 1.0
    assert ds.item_train_degree()[7] == 0


# ------------------------------------------------------------------ validation errors
def _err(folder) -> str:
    with pytest.raises(DataError) as ei:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset(folder)
    return str(ei.value)


def test_missing_required_column(tmp_path):
    folder = tmp_path / "d"
    inter = write_inter(folder, [(u, i) for u, i, _ in ROWS], header=("userID", "itemID"))
    msg = _err(folder)
    assert str(inter) in msg and "x_label" in msg
    assert "userID" not in msg.split("lacks column(s)")[1].split("(")[0]  # only the missing one


@pytest.mark.parametrize("bad_value", ["abc", "1.5", "nan"])
@pytest.mark.parametrize("column", ["userID", "itemID"])
def test_non_integer_id(tmp_path, column, bad_value):
    folder = tmp_path / "d"
    rows = [list(r) for r in ROWS]
    rows[4][0 if column == "userID" else 1] = bad_value  # file line 6 (header is line 1)
    inter = write_inter(folder, rows)
    msg = _err(folder)
    assert str(inter) in msg
    assert "line 6" in msg and column in msg and "integer" in msg


@pytest.mark.parametrize("column", ["userID", "itemID"])
def test_negative_id(tmp_path, column):
    folder = tmp_path / "d"
    rows = [list(r) for r in ROWS]
    rows[2][0 if column == "userID" else 1] = -3  # file line 4
    inter = write_inter(folder, rows)
    msg = _err(folder)
    assert str(inter) in msg and "line 4" in msg and column in msg and "negative" in msg


@pytest.mark.parametrize("label", [3, -1, 7])
def test_label_outside_0_1_2(tmp_path, label):
    folder = tmp_path / "d"
    rows = [list(r) for r in ROWS]
    rows[9][2] = label  # file line 11
    inter = write_inter(folder, rows)
    msg = _err(folder)
    assert str(inter) in msg and "line 11" in msg and "x_label" in msg
    assert str(label) in msg


@pytest.mark.parametrize("n_rows", [N_ITEMS - 1, N_ITEMS + 2])
def test_feature_row_count_mismatch(tmp_path, n_rows):
    folder = tmp_path / "d"
    write_inter(folder, ROWS)
    write_feats(folder, {"image_feat": 4})
    np.save(folder / "audio_feat.npy", np.zeros((n_rows, 3), np.float32))
    msg = _err(folder)
    assert str(folder / "audio_feat.npy") in msg
    assert f"{n_rows} rows" in msg and f"{N_ITEMS} items" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_feature(tmp_path, bad):
    folder = tmp_path / "d"
    write_inter(folder, ROWS)
    x = np.ones((N_ITEMS, 4), np.float64)  # float64 on disk, like MMRec's image_feat
    x[3, 2] = bad
    np.save(folder / "text_feat.npy", x)
    msg = _err(folder)
    assert str(folder / "text_feat.npy") in msg
    assert "row 3" in msg and "column 2" in msg


def test_empty_training_split(tmp_path):
    folder = tmp_path / "d"
    inter = write_inter(folder, [(u, i, 1 if k % 2 else 2) for k, (u, i, _) in enumerate(ROWS)])
    msg = _err(folder)
    assert str(inter) in msg and "training split is empty" in msg


def test_missing_folder_and_missing_inter(tmp_path):
    msg = _err(tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "not a directory" in msg
    (tmp_path / "empty").mkdir()
    msg = _err(tmp_path / "empty")
    assert "no .inter file" in msg


def test_each_error_is_a_single_data_error(tmp_path):
    # the error is DataError (a ValueError) with a one-paragraph message, not a traceback chain
    folder = tmp_path / "d"
    rows = [list(r) for r in ROWS]
    rows[0][1] = "x"
    write_inter(folder, rows)
    with pytest.raises(DataError) as ei:
        load_dataset(folder)
    assert isinstance(ei.value, ValueError)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


# ------------------------------------------------------------------ cleaning with warnings
def test_duplicate_pairs_dropped_with_warning(tmp_path):
    folder = tmp_path / "d"
    rows = ROWS + [(0, 1, 0), (1, 4, 0), (1, 4, 0)]  # three duplicate rows of two pairs
    write_inter(folder, rows)
    with pytest.warns(UserWarning, match=r"dropped 3 duplicate"):
        ds = load_dataset(folder)
    assert ds.train.nnz == sum(1 for r in ROWS if r[2] == 0)
    assert set(ds.train.data.tolist()) == {1.0}


def test_duplicate_across_splits_keeps_first_occurrence(tmp_path):
    folder = tmp_path / "d"
    rows = ROWS + [(0, 0, 2)]  # (0, 0) is a train pair; a later test copy is dropped
    write_inter(folder, rows)
    with pytest.warns(UserWarning, match="duplicate"):
        ds = load_dataset(folder)
    assert ds.train[0, 0] == 1.0 and ds.test[0, 0] == 0.0


def test_heldout_rows_of_users_without_training_dropped(tmp_path):
    folder = tmp_path / "d"
    rows = ROWS + [(3, 0, 1), (3, 2, 2), (4, 1, 2)]  # users 3 and 4 have no training row
    write_inter(folder, rows)
    with pytest.warns(UserWarning, match=r"left 3 validation/test rows of 2 users.*keep_users_without_train"):
        ds = load_dataset(folder)
    assert ds.n_users == 5  # the id range still counts them (as MMRec)
    assert ds.valid[3].nnz == 0 and ds.test[3].nnz == 0 and ds.test[4].nnz == 0
    assert ds.valid.nnz == 2 and ds.test.nnz == 3
    # MMHCL's population: the option (or config key) puts them back, and only them
    full = ds.with_users_without_train()
    assert full.valid[3, 0] == 1 and full.test[3, 2] == 1 and full.test[4, 1] == 1
    assert full.valid.nnz == 3 and full.test.nnz == 5 and (full.train != ds.train).nnz == 0
    with pytest.warns(UserWarning):
        loaded = load_dataset(folder, keep_users_without_train=True)
    assert (loaded.test != full.test).nnz == 0 and (loaded.valid != full.valid).nnz == 0


# ------------------------------------------------------------------ CLI
def test_cli_data_stats(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, ROWS)
    write_feats(folder)
    res = CliRunner().invoke(main, ["data", "stats", str(folder)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert re.search(r"users\s+3\b", out)
    assert re.search(r"items\s+5\b", out)
    assert re.search(r"train\s+6 interactions, 3 users", out)
    assert re.search(r"valid\s+2 interactions, 2 users", out)
    assert re.search(r"test\s+3 interactions, 3 users", out)
    assert re.search(r"total\s+11 interactions", out)
    assert f"{100 * (1 - 11 / 15):.4f}%" in out
    for m, w in (("image_feat", 6), ("text_feat", 4), ("audio_feat", 3)):
        assert f"{m} ({w}-d)" in out


def test_cli_data_stats_reports_data_error(tmp_path):
    folder = tmp_path / "bad"
    rows = [list(r) for r in ROWS]
    rows[1][2] = 5
    write_inter(folder, rows)
    res = CliRunner().invoke(main, ["data", "stats", str(folder)])
    assert res.exit_code == 2
    assert "error:" in res.output and "x_label" in res.output and "line 3" in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------ more malformed files
def test_short_line(tmp_path):
    folder = tmp_path / "d"
    inter = write_inter(folder, ROWS)
    lines = inter.read_text().splitlines()
    lines[5] = "1\t4"  # file line 6 lacks x_label
    inter.write_text("\n".join(lines) + "\n")
    msg = _err(folder)
    assert str(inter) in msg and "line 6" in msg and "2 fields" in msg


def test_header_only_and_several_inter_files(tmp_path):
    folder = tmp_path / "d"
    inter = write_inter(folder, [])
    msg = _err(folder)
    assert str(inter) in msg and "no interaction rows" in msg
    write_inter(folder, ROWS, name="other")
    write_inter(folder, ROWS, name="third")
    (folder / "d.inter").unlink()
    msg = _err(folder)
    assert "several .inter files" in msg and "other.inter" in msg and "third.inter" in msg


def test_one_dimensional_feature_file(tmp_path):
    folder = tmp_path / "d"
    write_inter(folder, ROWS)
    np.save(folder / "image_feat.npy", np.zeros(N_ITEMS, np.float32))
    msg = _err(folder)
    assert str(folder / "image_feat.npy") in msg and "2-d" in msg


def test_recbole_style_header_and_crlf(tmp_path):
    folder = tmp_path / "d"
    inter = write_inter(folder, ROWS, header=("userID:token", "itemID:token", "x_label:token"))
    inter.write_text(inter.read_text().replace("\n", "\r\n"))
    ds = load_quiet(folder)
    assert ds.train.nnz == 6 and ds.valid.nnz == 2 and ds.test.nnz == 3


def test_fingerprint(tmp_path):
    folder = tmp_path / "d"
    write_inter(folder, ROWS)
    feats = write_feats(folder)
    a = load_quiet(folder)
    assert load_quiet(folder).fingerprint() == a.fingerprint()
    # held-out rows do not enter the fingerprint (graphs are built from training data only)
    write_inter(folder, [r for r in ROWS if r != (0, 3, 2)])
    b = load_quiet(folder)
    assert b.fingerprint() == a.fingerprint()
    # a training pair or a feature value does
    write_inter(folder, [r for r in ROWS if r != (1, 1, 0)])
    assert load_quiet(folder).fingerprint() != a.fingerprint()
    write_inter(folder, ROWS)
    x = feats["audio_feat"].copy()
    x[2, 1] += 1e-3
    np.save(folder / "audio_feat.npy", x)
    c = load_quiet(folder)
    assert c.fingerprint() != a.fingerprint()
    assert c.fingerprint(with_features=False) == a.fingerprint(with_features=False)
