"""Item cold-start split: cold items keep no training row; their rows go half to valid/test."""
import numpy as np
import pytest

from mmrecsys.data import Dataset, dataset_to_arrays, load_dataset
from mmrecsys.data.cold import cold_split, write_cold_split


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


def test_cold_split_properties():
    data = random_data()
    new, cold = cold_split(data, share=0.2, seed=0)
    n_with = len(np.unique(dataset_to_arrays(data)[1]))
    assert len(cold) == round(0.2 * n_with) and len(np.unique(cold)) == len(cold)
    np.testing.assert_array_equal(new.cold_items, cold)
    assert new.item_train_degree()[cold].sum() == 0                  # no training row left
    before, after = rows(data), rows(new)
    assert set(before) == set(after)                                 # nothing lost (0 users lost)
    assert new.cold_split_report["users_lost"] == 0
    is_cold = np.zeros(data.n_items, bool)
    is_cold[cold] = True
    for (u, i), lab in before.items():
        if not is_cold[i]:
            assert after[(u, i)] == lab                              # warm items untouched
    for i in cold:                                                   # half each, per item
        labs = [after[k] for k in after if k[1] == i]
        n_valid, n_test = labs.count(1), labs.count(2)
        assert n_valid + n_test == len(labs) and abs(n_valid - n_test) <= 1
    assert (new.n_users, new.n_items) == (data.n_users, data.n_items)
    assert new.features["image_feat"] is data.features["image_feat"]


def test_cold_split_is_seeded():
    data = random_data()
    a = cold_split(data, 0.2, seed=1)
    b = cold_split(data, 0.2, seed=1)
    c = cold_split(data, 0.2, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert rows(a[0]) == rows(b[0])
    assert not np.array_equal(a[1], c[1])


def test_cold_split_avoids_removing_a_users_last_training_item():
    # user 0's only training item is item 0; users 1-3 train on items 1-3
    users = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    items = [0, 1, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    labels = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    data = Dataset.from_arrays(users, items, labels, 4, 4, name="t")
    for seed in range(10):
        new, cold = cold_split(data, share=0.5, seed=seed)
        assert 0 not in cold and len(cold) == 2
        assert new.cold_split_report["users_lost"] == 0


def test_cold_split_reports_lost_users_when_unavoidable():
    users, items, labels = [0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 2]     # one train item each
    data = Dataset.from_arrays(users, items, labels, 2, 2, name="t")
    with pytest.warns(UserWarning, match="1 users lost all their training rows"):
        new, cold = cold_split(data, share=0.5, seed=0)
    assert new.cold_split_report["users_lost"] == 1
    lost = 0 if cold[0] == 0 else 1
    assert new.valid[lost].nnz + new.test[lost].nnz == 0             # dropped from evaluation


def test_write_and_reload(tmp_path):
    data = random_data()
    new, cold = cold_split(data, 0.2, seed=0)
    path = write_cold_split(new, cold, tmp_path / "rand-cold")
    assert path.name == "rand.inter"
    txt = (tmp_path / "rand-cold" / "cold_items.txt").read_text().split()
    assert [int(x) for x in txt] == cold.tolist()
    back = load_dataset(tmp_path / "rand-cold")
    assert rows(back) == rows(new)
    np.testing.assert_array_equal(back.features["image_feat"], data.features["image_feat"])
