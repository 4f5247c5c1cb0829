"""Item cold-start split = LATTICE's data/cold_start.py (the protocol MMHCL uses with --core 0)."""
import numpy as np
import pytest
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import Dataset, DataError, dataset_to_arrays, load_dataset, write_dataset
from mmrecsys.data.cold import cold_split, draw_cold_items, load_all_rows, write_cold_split


def random_data(seed=0, n_users=60, n_items=40):
    rng = np.random.default_rng(seed)
    users, items, labels = [], [], []
    for u in range(n_users):
        its = rng.choice(n_items, size=rng.integers(5, 10), replace=False)
        lab = np.zeros(len(its), dtype=int)
        lab[-1], lab[-2] = 1, 2
        users += [u] * len(its)
        items += list(its)
        labels += list(lab)
    feats = {"image_feat": rng.standard_normal((n_items, 4)).astype(np.float32)}
    return Dataset.from_arrays(users, items, labels, n_users, n_items, feats, name="rand")


def rows(data):
    u, i, l = dataset_to_arrays(data)
    return {(a, b): c for a, b, c in zip(u.tolist(), i.tolist(), l.tolist())}


def official(ui, share=0.2, seed=123):
    """The official script's computation, written out independently (global legacy generator)."""
    iu = {}
    for u, its in ui.items():
        for i in its:
            iu.setdefault(i, []).append(u)
    np.random.seed(seed)
    testval = np.random.choice(len(iu), int(share * len(iu)), replace=False).tolist()
    test, val = testval[:len(testval) // 2], testval[len(testval) // 2:]
    out = {}
    for u, its in ui.items():
        for i in its:
            out[(u, i)] = 2 if i in test else 1 if i in val else 0
    return out, test, val


@pytest.mark.parametrize("share,seed", [(0.2, 123), (0.3, 7), (0.5, 0)])
def test_equals_the_official_computation(share, seed):
    data = random_data()
    u, i, _ = dataset_to_arrays(data)
    ui = {}
    for a, b in zip(u.tolist(), i.tolist()):
        ui.setdefault(a, []).append(b)
    want, test, val = official(ui, share, seed)
    new, cold = cold_split(data, share=share, seed=seed)
    assert rows(new) == want
    assert cold.tolist() == sorted(test + val)
    v, t = draw_cold_items(i, share, seed)
    assert v.tolist() == val and t.tolist() == test


def test_defaults_are_the_official_ones():
    data = random_data()
    assert rows(cold_split(data)[0]) == rows(cold_split(data, 0.2, 123)[0])


def test_legacy_generator_equals_the_global_one():
    for n, k in [(40, 8), (7050, 1410), (5, 2)]:
        np.random.seed(123)
        a = np.random.choice(n, k, replace=False)
        b = np.random.RandomState(123).choice(n, k, replace=False)
        np.testing.assert_array_equal(a, b)


def test_cold_split_properties():
    data = random_data()
    new, cold = cold_split(data, share=0.2, seed=123)
    n = len(np.unique(dataset_to_arrays(data)[1]))
    assert len(cold) == int(0.2 * n) and len(np.unique(cold)) == len(cold)
    np.testing.assert_array_equal(new.cold_items, cold)
    assert new.item_train_degree()[cold].sum() == 0                  # all rows of a cold item left
    before, after = rows(data), rows(new)
    assert set(before) == set(after)                                 # no row lost or added
    is_cold = np.zeros(data.n_items, bool)
    is_cold[cold] = True
    for (u, i), lab in after.items():
        assert (lab != 0) == is_cold[i]                               # warm: every row in train
    moved_in = [k for k, lab in before.items() if lab != 0 and not is_cold[k[1]]]
    assert moved_in and all(after[k] == 0 for k in moved_in)         # former held-out rows → train
    # one split per cold item; first half of the drawn list is test, second half valid
    drawn = np.random.RandomState(123).choice(n, int(0.2 * n), replace=False)
    half = len(drawn) // 2
    for pos, i in enumerate(drawn):
        labs = {lab for (u, j), lab in after.items() if j == i}
        assert labs == {2 if pos < half else 1}
    r = new.cold_split_report
    assert (r["cold_items"], r["test_items"], r["valid_items"]) == (len(cold), half, len(drawn) - half)
    assert r["rows_moved_from_train"] == sum(before[k] == 0 and after[k] != 0 for k in before)
    assert r["rows_moved_to_train"] == len(moved_in)
    assert (new.n_users, new.n_items) == (data.n_users, data.n_items)
    assert new.features["image_feat"] is data.features["image_feat"]


def test_users_with_only_cold_items_keep_their_heldout_rows(tmp_path):
    # user 3 only has item 1; find a seed that makes item 1 cold
    users = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    items = [0, 1, 2, 2, 3, 4, 0, 3, 4, 1]
    labels = [0] * 10
    data = Dataset.from_arrays(users, items, labels, 4, 5, name="t")
    seed = next(s for s in range(100)
                if 1 in np.random.RandomState(s).choice(5, 2, replace=False))
    new, cold = cold_split(data, share=0.4, seed=seed)
    assert 1 in cold and new.train[3].nnz == 0
    assert new.valid[3].nnz + new.test[3].nnz == 1                   # kept, not dropped
    assert new.cold_split_report["users_without_train"] >= 1
    write_cold_split(new, cold, tmp_path / "t")
    back = load_all_rows(tmp_path / "t")
    assert rows(back) == rows(new)                                   # written, row for row


def test_non_contiguous_item_ids_warn_and_map_to_existing_items():
    data = random_data()
    u, i, l = dataset_to_arrays(data)
    gap = Dataset.from_arrays(u, np.where(i >= 10, i + 5, i), l, data.n_users, data.n_items + 5)
    with pytest.warns(UserWarning, match="not 0..39"):
        new, cold = cold_split(gap, 0.2, 123)
    assert len(cold) == 8 and np.isin(cold, np.unique(dataset_to_arrays(gap)[1])).all()
    # same items as the contiguous split, relabelled
    _, cold0 = cold_split(data, 0.2, 123)
    assert cold.tolist() == np.where(cold0 >= 10, cold0 + 5, cold0).tolist()


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, float("nan"), "0.2", True])
def test_bad_share(share):
    with pytest.raises(ValueError, match="share"):
        cold_split(random_data(), share=share)


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        cold_split(random_data(), seed=seed)


def test_too_few_items():
    data = Dataset.from_arrays([0, 0, 1], [0, 1, 2], [0, 0, 0], name="t")
    with pytest.raises(DataError, match="at least 2"):
        cold_split(data, share=0.5)


def test_write_and_reload(tmp_path):
    data = random_data()
    new, cold = cold_split(data)
    path = write_cold_split(new, cold, tmp_path / "rand-cold")
    assert path.name == "rand.inter"
    txt = (tmp_path / "rand-cold" / "cold_items.txt").read_text().split()
    assert [int(x) for x in txt] == cold.tolist()
    back = load_dataset(tmp_path / "rand-cold")
    np.testing.assert_array_equal(back.cold_items, cold)
    assert rows(back) == rows(new)                     # every user keeps a training row here
    np.testing.assert_array_equal(back.features["image_feat"], data.features["image_feat"])


def test_cli_splits_all_rows_of_the_file(tmp_path):
    # user 5's only training row is removed from the input's train split: load_dataset would
    # drop their held-out rows, the cold split must still use them (they may become train)
    data = random_data()
    u, i, l = dataset_to_arrays(data)
    l = l.copy()
    l[(u == 5) & (l == 0)] = 1
    write_dataset(tmp_path / "src", u, i, l, data.features, name="src")
    res = CliRunner().invoke(main, ["data", "cold-split", str(tmp_path / "src"),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "8 cold items of 40" in res.output
    out = load_all_rows(tmp_path / "out")
    ui = {}
    for a, b in zip(u.tolist(), i.tolist()):
        ui.setdefault(a, []).append(b)
    assert rows(out) == official(ui)[0]
    np.testing.assert_array_equal(out.features["image_feat"], data.features["image_feat"])


@pytest.mark.parametrize("args,msg", [(["--share", "0"], "share"), (["--share", "1.5"], "share"),
                                      (["--seed", "-3"], "seed")])
def test_cli_bad_arguments(tmp_path, args, msg):
    data = random_data()
    write_dataset(tmp_path / "src", *dataset_to_arrays(data), name="src")
    res = CliRunner().invoke(main, ["data", "cold-split", str(tmp_path / "src"),
                                    "--out", str(tmp_path / "out"), *args])
    assert res.exit_code != 0 and not isinstance(res.exception, (ValueError, TypeError))
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_cli_string_ids(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "src.inter").write_text("userID\titemID\tx_label\nu1\tA\t0\nu2\tB\t1\n")
    res = CliRunner().invoke(main, ["data", "cold-split", str(d), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not an integer" in lines[0]


def test_cli_refuses_to_overwrite_the_input(tmp_path):
    write_dataset(tmp_path / "src", *dataset_to_arrays(random_data()), name="src")
    res = CliRunner().invoke(main, ["data", "cold-split", str(tmp_path / "src"),
                                    "--out", str(tmp_path / "src")])
    assert res.exit_code != 0 and res.output.startswith("error: ")
