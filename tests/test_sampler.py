"""Negative sampling and batch samplers (MMRec's TrainDataLoader and MMHCL's user sampler)."""
from __future__ import annotations

import numpy as np
import pytest

from mmrecsys.data import Dataset
from mmrecsys.train.sampler import (InteractionSampler, NegativeSampler, UserSampler,
                                    make_sampler)

N_USERS, N_ITEMS = 25, 30
HELDOUT_ONLY = np.arange(24, 30)  # items that never appear in training


def dense_dataset(seed=0):
    """Dense histories (≈60% of items 0..23 per user) so that rejection is exercised."""
    rng = np.random.default_rng(seed)
    users, items, labels = [], [], []
    for u in range(N_USERS):
        tr = np.flatnonzero(rng.random(24) < 0.6)
        tr = tr if len(tr) else np.array([u % 24])
        rest = np.setdiff1d(np.arange(N_ITEMS), tr)
        held = rng.choice(rest, size=4, replace=False)
        users += [u] * (len(tr) + 4)
        items += list(tr) + list(held)
        labels += [0] * len(tr) + [1, 1, 2, 2]
    return Dataset.from_arrays(users, items, labels, N_USERS, N_ITEMS)


@pytest.fixture(scope="module")
def data():
    return dense_dataset()


def _train_sets(m):
    return [set(m[u].indices.tolist()) for u in range(m.shape[0])]


def test_negatives_avoid_train_items_and_come_from_train_items(data):
    neg = NegativeSampler(data)
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(N_USERS), 400)
    j = neg.sample(users, rng)
    train = _train_sets(data.train)
    assert not any(j_ in train[u] for u, j_ in zip(users, j))
    seen = np.flatnonzero(data.item_train_degree() > 0)
    assert set(np.unique(j).tolist()) <= set(seen.tolist())
    assert not np.isin(j, HELDOUT_ONLY).any()
    # uniform over the allowed candidates: every allowed (user, item) is hit
    for u in range(N_USERS):
        allowed = set(seen.tolist()) - train[u]
        assert set(j[users == u].tolist()) == allowed
    # by default held-out items may be drawn (MMRec samples them as negatives)
    heldout = _train_sets(data.valid + data.test)
    assert any(j_ in heldout[u] for u, j_ in zip(users, j))


def test_negatives_from_all_items(data):
    neg = NegativeSampler(data, negatives_from="all_items")
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(N_USERS), 400)
    j = neg.sample(users, rng)
    train = _train_sets(data.train)
    assert not any(j_ in train[u] for u, j_ in zip(users, j))
    assert np.isin(j, HELDOUT_ONLY).any()  # items without training interactions are candidates
    for u in range(N_USERS):
        assert set(j[users == u].tolist()) == set(range(N_ITEMS)) - train[u]


def test_neg_exclude_heldout(data):
    neg = NegativeSampler(data, negatives_from="all_items", exclude_heldout=True)
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(N_USERS), 300)
    j = neg.sample(users, rng)
    seen = _train_sets(data.train + data.valid + data.test)
    assert not any(j_ in seen[u] for u, j_ in zip(users, j))


def test_bad_negatives_from():
    with pytest.raises(ValueError, match="negatives_from"):
        NegativeSampler(dense_dataset(), negatives_from="popular")
    with pytest.raises(ValueError, match="sampler"):
        make_sampler(dense_dataset(), "pairs", 8, "train_items", False)


def test_user_with_every_candidate_raises():
    # user 0 has interacted with every item seen in training: no negative exists
    data = Dataset.from_arrays([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 3, 2], [0, 0, 0, 0, 1, 2], 2, 4)
    with pytest.raises(RuntimeError, match="no negative"):
        NegativeSampler(data).sample(np.array([0, 1]), np.random.default_rng(0), max_rounds=20)


@pytest.mark.parametrize("batch_size", [7, 16, 1000])
def test_interaction_sampler_covers_each_pair_once(data, batch_size):
    s = InteractionSampler(data, batch_size, NegativeSampler(data))
    n = data.train.nnz
    assert len(s) == -(-n // batch_size)
    rng = np.random.default_rng(0)
    train = _train_sets(data.train)
    orders = []
    for _ in range(2):  # two epochs
        batches = list(s.epoch(rng))
        assert len(batches) == len(s)
        sizes = [len(b[0]) for b in batches]
        assert all(sz == batch_size for sz in sizes[:-1])
        assert sizes[-1] == n - batch_size * (len(batches) - 1)  # last partial batch kept
        u = np.concatenate([b[0] for b in batches])
        i = np.concatenate([b[1] for b in batches])
        j = np.concatenate([b[2] for b in batches])
        assert len(u) == n
        pairs = u * N_ITEMS + i
        tu, ti = data.train_pairs()
        np.testing.assert_array_equal(np.sort(pairs), np.sort(tu * N_ITEMS + ti))
        assert not any(j_ in train[a] for a, j_ in zip(u, j))
        orders.append(pairs)
    if batch_size < n:
        assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_user_sampler(data):
    b = 10
    s = UserSampler(data, b, NegativeSampler(data, "all_items"))
    assert len(s) == data.train.nnz // b + 1
    rng = np.random.default_rng(0)
    train = _train_sets(data.train)
    batches = list(s.epoch(rng))
    assert len(batches) == data.train.nnz // b + 1
    all_users = []
    for users, pos, neg in batches:
        assert len(users) == b and len(np.unique(users)) == b  # distinct users per batch
        assert all(p in train[u] for u, p in zip(users, pos))
        assert not any(n in train[u] for u, n in zip(users, neg))
        all_users.append(users)
    assert len(np.unique(np.concatenate(all_users))) == N_USERS


def test_user_sampler_skips_users_without_training_and_caps_batch():
    # user 1 has no training rows; batch_size larger than the number of users with training
    data = Dataset.from_arrays([0, 0, 1, 2, 2, 3], [0, 1, 2, 3, 4, 1], [0, 0, 2, 0, 0, 0], 4, 6)
    s = UserSampler(data, 8, NegativeSampler(data, "all_items"))
    assert len(s) == 5 // 8 + 1
    for users, pos, _ in s.epoch(np.random.default_rng(0)):
        assert sorted(users.tolist()) == [0, 2, 3]
        assert all(data.train[u, p] == 1 for u, p in zip(users, pos))


@pytest.mark.parametrize("kind", ["interactions", "users"])
def test_determinism_under_seed(data, kind):
    def run(seed):
        s = make_sampler(data, kind, 16, "train_items", False)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(2):
            for batch in s.epoch(rng):
                out.append(np.concatenate(batch))
        return np.concatenate(out)

    a, b, c = run(5), run(5), run(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_negatives_are_uniform_over_allowed_items(data):
    neg = NegativeSampler(data)
    users = np.full(40_000, 3)
    j = neg.sample(users, np.random.default_rng(9))
    allowed = np.setdiff1d(np.flatnonzero(data.item_train_degree() > 0), data.train[3].indices)
    counts = np.bincount(j, minlength=N_ITEMS)[allowed]
    assert counts.sum() == len(users)
    expected = len(users) / len(allowed)
    assert np.abs(counts - expected).max() < 0.1 * expected  # ≥ 6 sigma for ~15 items
