"""Metrics (MMRec src/utils/metrics.py) and full-ranking evaluation (src/common/trainer.py) against direct loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrecsys.data import Dataset
from mmrecsys.evaluation import evaluate, per_user_metrics, user_group_report
from mmrecsys.models import Recommender


# ------------------------------------------------------------------ direct reference
def ref_metrics(ranked, relevant, n_u, k):
    """Loop-based per-user metrics for one cutoff, straight from MMRec's definitions."""
    h = [1.0 if ranked[p] in relevant else 0.0 for p in range(k)]
    hits = sum(h)
    dcg = sum(h[p] / math.log2(p + 2) for p in range(k))
    idcg = sum(1.0 / math.log2(p + 2) for p in range(min(k, n_u)))
    ap = 0.0
    for p in range(k):
        if h[p]:
            ap += sum(h[: p + 1]) / (p + 1)
    return {"recall": hits / n_u, "precision": hits / k, "ndcg": dcg / idcg,
            "map": ap / min(k, n_u)}


def hits_to_lists(hits_row):
    """A ranked list 0..K-1 and the relevant set {p : h_p = 1} (for ref_metrics)."""
    return list(range(len(hits_row))), {p for p, h in enumerate(hits_row) if h}


def test_per_user_metrics_hand_case():
    hits = torch.tensor([[1, 0, 1, 0, 0],
                         [0, 0, 0, 0, 1],
                         [0, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1]], dtype=torch.bool)
    n_pos = torch.tensor([3, 1, 2, 8])
    out = {k: v.numpy() for k, v in per_user_metrics(hits, n_pos, (2, 5)).items()}
    l2, l3 = 1 / math.log2(3), 1 / math.log2(4)
    # user 0: hits at ranks 1 and 3, n_u = 3
    assert out["recall@5"][0] == pytest.approx(2 / 3)            # n_u, not min(k, n_u)
    assert out["recall@2"][0] == pytest.approx(1 / 3)
    assert out["precision@5"][0] == pytest.approx(2 / 5)
    assert out["precision@2"][0] == pytest.approx(1 / 2)
    assert out["ndcg@5"][0] == pytest.approx((1 + l3) / (1 + l2 + l3))  # ideal list has 3 hits
    assert out["ndcg@2"][0] == pytest.approx(1 / (1 + l2))           # ideal truncated at k=2
    assert out["map@5"][0] == pytest.approx((1 + 2 / 3) / 3)         # normaliser min(5, 3)
    assert out["map@2"][0] == pytest.approx(1 / 2)                   # normaliser min(2, 3)
    # user 1: one hit at rank 5, n_u = 1
    assert out["recall@5"][1] == pytest.approx(1.0)
    assert out["recall@2"][1] == 0.0
    assert out["ndcg@5"][1] == pytest.approx(1 / math.log2(6))
    assert out["map@5"][1] == pytest.approx(1 / 5)
    # user 2: no hit
    for key in out:
        assert out[key][2] == 0.0
    # user 3: all hits, n_u = 8 > k
    assert out["recall@5"][3] == pytest.approx(5 / 8)
    assert out["ndcg@5"][3] == pytest.approx(1.0)
    assert out["map@5"][3] == pytest.approx(1.0)
    assert out["precision@5"][3] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_per_user_metrics_random_against_loops(seed):
    rng = np.random.default_rng(seed)
    b, k_max = 40, 20
    hits = rng.random((b, k_max)) < rng.uniform(0.05, 0.5)
    # n_u >= number of hits in the list; sometimes much larger, sometimes exactly equal
    n_pos = hits.sum(1) + rng.integers(0, 6, size=b) * (rng.random(b) < 0.7)
    n_pos = np.maximum(n_pos, 1)
    topk = (1, 3, 5, 10, 20)
    out = per_user_metrics(torch.from_numpy(hits), torch.from_numpy(n_pos), topk)
    assert set(out) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in topk}
    for u in range(b):
        ranked, rel = hits_to_lists(hits[u])
        for k in topk:
            ref = ref_metrics(ranked, rel, int(n_pos[u]), k)
            for m, v in ref.items():
                assert out[f"{m}@{k}"][u].item() == pytest.approx(v, abs=1e-12), (u, m, k)


def test_per_user_metrics_rejects_cutoff_beyond_list():
    with pytest.raises(ValueError, match="exceeds"):
        per_user_metrics(torch.zeros(2, 5, dtype=torch.bool), torch.ones(2), (10,))


# ------------------------------------------------------------------ evaluate() with a fixed model
class FixedScores(Recommender):
    """Scores are a given (n_users, n_items) matrix: user repr = rows, item repr = identity."""

    def __init__(self, data, scores=None):
        super().__init__(data)
        self.register_buffer("s", torch.as_tensor(scores, dtype=torch.float32))
        self.calls = 0

    def representations(self):
        self.calls += 1
        return self.s, torch.eye(self.n_items)


def ref_evaluate(data, scores, split, topk, mask_valid=False, item_subset=None):
    """Per-user loop: mask, rank, keep users with held-out items, metrics."""
    target = data.split(split).tolil().rows
    train = data.train.tolil().rows
    valid = data.valid.tolil().rows
    subset = None if item_subset is None else set(int(i) for i in item_subset)
    users, per = [], {}
    for u in range(data.n_users):
        rel = set(target[u]) if subset is None else set(target[u]) & subset
        if not rel:
            continue
        s = scores[u].astype(np.float64).copy()
        s[list(train[u])] = -np.inf
        if split == "test" and mask_valid:
            s[list(valid[u])] = -np.inf
        ranked = list(np.argsort(-s, kind="stable")[: max(topk)])
        users.append(u)
        for k in topk:
            for m, v in ref_metrics(ranked, rel, len(rel), k).items():
                per.setdefault(f"{m}@{k}", []).append(v)
    return np.array(users), {k: np.array(v) for k, v in per.items()}


def random_dataset(rng, n_users=30, n_items=40):
    """Disjoint train/valid/test with every user having ≥2 train items; some users lack test."""
    users, items, labels = [], [], []
    for u in range(n_users):
        n = rng.integers(4, 12)
        its = rng.choice(n_items, size=n, replace=False)
        lab = np.zeros(n, dtype=np.int64)
        lab[-1] = 2 if rng.random() < 0.85 else 0
        n_valid = rng.integers(0, 3)
        lab[2:2 + n_valid] = 1
        if rng.random() < 0.5:
            lab[-3:-1] = 2  # several test items for some users
        users += [u] * n
        items += list(its)
        labels += list(lab)
    return Dataset.from_arrays(users, items, labels, n_users, n_items)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("mask_valid", [False, True])
def test_evaluate_matches_loop_reference(seed, split, mask_valid):
    rng = np.random.default_rng(seed)
    data = random_dataset(rng)
    scores = rng.standard_normal((data.n_users, data.n_items))  # distinct: no ties
    topk = (5, 10, 20)
    res = evaluate(FixedScores(data, scores), data, split, topk, mask_valid_at_test=mask_valid,
                   chunk_size=7)
    users, per = ref_evaluate(data, scores, split, topk, mask_valid)
    np.testing.assert_array_equal(res.users, users)
    assert set(res.per_user) == set(per)
    for key in per:
        np.testing.assert_allclose(res.per_user[key], per[key], rtol=0, atol=1e-9, err_msg=key)
        assert res.metrics[key] == pytest.approx(per[key].mean(), abs=1e-12)
        assert res[key] == res.metrics[key]


def _tiny():
    # 3 users, 6 items
    # user 0: train {0}, valid {1}, test {2}
    # user 1: train {3, 4}, test {0, 5}
    # user 2: train {0}, valid {5}  (no test row: not evaluated at test)
    users = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    items = [0, 1, 2, 3, 4, 0, 5, 0, 5]
    labels = [0, 1, 2, 0, 0, 2, 2, 0, 1]
    return Dataset.from_arrays(users, items, labels, 3, 6)


# item:                         0    1    2    3    4    5
TINY_SCORES = np.array([[9.0, 8.0, 7.0, 1.0, 2.0, 3.0],
                        [9.0, 1.0, 2.0, 8.0, 7.0, 3.0],
                        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])


def test_evaluate_masks_training_items_not_validation_by_default():
    data = _tiny()
    model = FixedScores(data, TINY_SCORES)
    res = evaluate(model, data, "test", topk=(1, 2), keep_topk=True)
    np.testing.assert_array_equal(res.users, [0, 1])
    # user 0: train item 0 masked, valid item 1 stays a candidate and takes rank 1 (a miss)
    # user 1: train items 3, 4 masked → ranking 0, 5, ...
    np.testing.assert_array_equal(res.topk[:, :2], [[1, 2], [0, 5]])
    np.testing.assert_allclose(res.per_user["recall@1"], [0.0, 0.5])
    np.testing.assert_allclose(res.per_user["recall@2"], [1.0, 1.0])
    np.testing.assert_allclose(res.per_user["ndcg@1"], [0.0, 1.0])
    np.testing.assert_allclose(res.per_user["ndcg@2"], [1 / math.log2(3), 1.0])
    assert res.metrics["recall@1"] == pytest.approx(0.25)
    assert model.calls == 1  # representations computed once per pass
    # with mask_valid_at_test the validation item is masked and the test item comes first
    res2 = evaluate(model, data, "test", topk=(1, 2), mask_valid_at_test=True, keep_topk=True)
    np.testing.assert_array_equal(res2.topk[0, :1], [2])
    np.testing.assert_allclose(res2.per_user["recall@1"], [1.0, 0.5])
    # the validation pass never masks test items (user 0's test item 2 ranks after 1)
    rv = evaluate(model, data, "valid", topk=(1, 2), keep_topk=True)
    np.testing.assert_array_equal(rv.users, [0, 2])
    np.testing.assert_array_equal(rv.topk[:, 0], [1, 5])
    np.testing.assert_allclose(rv.per_user["recall@1"], [1.0, 1.0])
    rv2 = evaluate(model, data, "valid", topk=(1, 2), mask_valid_at_test=True)
    np.testing.assert_allclose(rv2.per_user["recall@1"], rv.per_user["recall@1"])


def test_evaluate_keeps_training_items_out_of_topk():
    rng = np.random.default_rng(7)
    data = random_dataset(rng)
    # the model loves training items: they would fill the top if not masked
    scores = rng.random((data.n_users, data.n_items)) + 10 * data.train.toarray()
    res = evaluate(FixedScores(data, scores), data, "test", topk=(5,), keep_topk=True)
    for u, top in zip(res.users, res.topk):
        assert not set(top.tolist()) & set(data.train[u].indices.tolist())


def test_item_subset_restricts_hits_and_n_u():
    data = _tiny()
    model = FixedScores(data, TINY_SCORES)
    # subset {5, 2}: user 0 keeps test item 2 (n_u 1); user 1 keeps only item 5 (n_u 1)
    res = evaluate(model, data, "test", topk=(1, 2), item_subset=np.array([5, 2]))
    np.testing.assert_array_equal(res.users, [0, 1])
    np.testing.assert_allclose(res.per_user["recall@1"], [0.0, 0.0])  # item 0 is no longer a hit
    np.testing.assert_allclose(res.per_user["recall@2"], [1.0, 1.0])  # n_u = 1 each
    np.testing.assert_allclose(res.per_user["precision@2"], [0.5, 0.5])
    # subset {5}: user 0 has no test item in it and is skipped
    res = evaluate(model, data, "test", topk=(1, 2), item_subset=[5])
    np.testing.assert_array_equal(res.users, [1])
    # random cases against the loop reference
    rng = np.random.default_rng(11)
    data = random_dataset(rng)
    scores = rng.standard_normal((data.n_users, data.n_items))
    subset = rng.choice(data.n_items, size=15, replace=False)
    res = evaluate(FixedScores(data, scores), data, "test", (5, 10), item_subset=subset)
    users, per = ref_evaluate(data, scores, "test", (5, 10), item_subset=subset)
    np.testing.assert_array_equal(res.users, users)
    for key in per:
        np.testing.assert_allclose(res.per_user[key], per[key], atol=1e-9)


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(3)
    data = random_dataset(rng, n_users=50, n_items=60)
    model = FixedScores(data, rng.standard_normal((data.n_users, data.n_items)))
    a = evaluate(model, data, "test", (5, 10, 50), chunk_size=1, keep_topk=True)
    b = evaluate(model, data, "test", (5, 10, 50), chunk_size=1000, keep_topk=True)
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.topk, b.topk)
    for key in a.per_user:
        np.testing.assert_array_equal(a.per_user[key], b.per_user[key])


def test_users_argument_and_train_mode_restored():
    rng = np.random.default_rng(5)
    data = random_dataset(rng)
    scores = rng.standard_normal((data.n_users, data.n_items))
    model = FixedScores(data, scores)
    model.train()
    full = evaluate(model, data, "test", (5,))
    assert model.training
    some = full.users[::3]
    part = evaluate(model, data, "test", (5,), users=np.concatenate([some, [10_000 % data.n_users]]))
    expect_users = np.unique(np.concatenate([some, [10_000 % data.n_users]]))
    expect_users = expect_users[np.isin(expect_users, full.users)]
    assert set(part.users.tolist()) == set(expect_users.tolist())
    pos = {u: p for p, u in enumerate(full.users)}
    for u, v in zip(part.users, part.per_user["recall@5"]):
        assert v == full.per_user["recall@5"][pos[u]]


def test_user_group_report():
    rng = np.random.default_rng(2)
    data = random_dataset(rng, n_users=60)
    scores = rng.standard_normal((data.n_users, data.n_items))
    res = evaluate(FixedScores(data, scores), data, "test", (10, 20))
    bins = ((0, 4), (5, 6), (7, None))
    rows = user_group_report(res, data, bins=bins, keys=("recall@20", "ndcg@10"))
    deg = np.diff(data.train.indptr)[res.users]
    assert [r["group"] for r in rows] == ["0-4", "5-6", "7+"]
    assert sum(r["users"] for r in rows) == len(res.users)
    for row, (lo, hi) in zip(rows, bins):
        sel = (deg >= lo) & (deg <= (hi if hi is not None else 10 ** 9))
        assert row["users"] == int(sel.sum())
        for key in ("recall@20", "ndcg@10"):
            if sel.any():
                assert row[key] == pytest.approx(res.per_user[key][sel].mean())
            else:
                assert row[key] is None
    # an empty group reports None
    rows = user_group_report(res, data, bins=((100, None),), keys=("recall@20",))
    assert rows == [{"group": "100+", "users": 0, "recall@20": None}]


def _unsorted_copy(m: sp.csr_matrix) -> sp.csr_matrix:
    """The same matrix with the column indices of every row in reversed order."""
    m = m.copy()
    for u in range(m.shape[0]):
        a, b = m.indptr[u], m.indptr[u + 1]
        m.indices[a:b] = m.indices[a:b][::-1].copy()
        m.data[a:b] = m.data[a:b][::-1].copy()
    m.has_sorted_indices = False
    return m


def test_evaluate_with_unsorted_csr_indices():
    # regression: hits were looked up by binary search assuming sorted columns within each row,
    # which item_subset (a sparse product) and hand-built datasets do not guarantee
    rng = np.random.default_rng(13)
    data = random_dataset(rng)
    scores = rng.standard_normal((data.n_users, data.n_items))
    expect = evaluate(FixedScores(data, scores), data, "test", (5, 10))
    shuffled = Dataset(data.name, data.n_users, data.n_items, _unsorted_copy(data.train),
                       _unsorted_copy(data.valid), _unsorted_copy(data.test))
    got = evaluate(FixedScores(shuffled, scores), shuffled, "test", (5, 10))
    np.testing.assert_array_equal(got.users, expect.users)
    for key in expect.per_user:
        np.testing.assert_array_equal(got.per_user[key], expect.per_user[key])
    users, per = ref_evaluate(data, scores, "test", (5, 10))
    for key in per:
        np.testing.assert_allclose(got.per_user[key], per[key], atol=1e-9)


def test_item_blocks_give_the_one_block_lists():
    """A large catalogue is ranked in item blocks merged top-k by top-k: same lists (no ties)."""
    import scipy.sparse as sp

    from mmrecsys.evaluation.ranking import rank_topk
    g = torch.Generator().manual_seed(0)
    ur, ir = torch.randn(130, 8, generator=g), torch.randn(500, 8, generator=g)
    mask = sp.random(130, 500, density=0.05, format="csr", random_state=1)
    users = np.arange(130)

    def full(u):
        return ur[u] @ ir.T

    def blocks(u, items=None):
        return ur[u] @ (ir if items is None else ir[items]).T

    ref = list(rank_topk(full, users, 500, mask, 40, chunk_size=50, with_scores=True))
    for chunk in (7, 40, 499):
        got = list(rank_topk(blocks, users, 500, mask, 40, chunk_size=50, with_scores=True,
                             item_chunk=chunk))
        for (_, _, ti, tv), (_, _, gi, gv) in zip(ref, got):
            assert torch.equal(ti, gi) and torch.allclose(tv, gv)
    # the automatic switch: a block budget smaller than users x items streams the items
    import mmrecsys.evaluation.ranking as ranking
    old = ranking.SCORE_BLOCK_ELEMENTS
    ranking.SCORE_BLOCK_ELEMENTS = 50 * 64
    try:
        got = list(rank_topk(blocks, users, 500, mask, 40, chunk_size=50))
    finally:
        ranking.SCORE_BLOCK_ELEMENTS = old
    assert all(torch.equal(a[2], b[2]) for a, b in zip(ref, got))


def test_scoring_blocks_share_item_reads_only_for_huge_catalogues():
    from mmrecsys.evaluation.ranking import scoring_blocks, scoring_rows
    for n in (500, 7050, 23033, 65536):       # the standard datasets keep one block of items
        assert scoring_blocks(n, "cpu", streams=True) == (scoring_rows(n, "cpu"), None)
    assert scoring_blocks(1_000_000, "cpu", streams=False) == (1, None)
    assert scoring_blocks(1_000_000, "cpu", streams=True) == (256, 1 << 14)


def test_rank_users_on_a_huge_catalogue_streams_item_blocks(monkeypatch):
    """rank_users over 70,000 items (users share each item block) gives the lists of a dense
    ranking (no ties in random scores)."""
    import scipy.sparse as sp

    from mmrecsys.evaluation import ranking

    class Tiny(torch.nn.Module):
        def __init__(self, ur, ir):
            super().__init__()
            self.ur, self.ir = ur, ir

        def representations(self):
            return self.ur, self.ir

        def score(self, users, reps, items=None):
            u, i = reps
            return u[users] @ (i if items is None else i[items]).T

    class Data:
        n_items = 70_000

    g = torch.Generator().manual_seed(0)
    ur, ir = torch.randn(300, 4, dtype=torch.float64, generator=g), torch.randn(70_000, 4, dtype=torch.float64, generator=g)
    Data.train = sp.random(300, 70_000, density=0.001, format="csr", random_state=2)
    calls = []
    real = ranking.rank_topk

    def spy(*a, **kw):
        calls.append(kw.get("item_chunk"))
        return real(*a, **kw)

    monkeypatch.setattr(ranking, "rank_topk", spy)
    got = ranking.rank_users(Tiny(ur, ir), Data, np.arange(300), 20, "train", device="cpu")
    assert calls == [1 << 14]
    dense = (ur @ ir.T).float()     # the ranking's float32 scores (float64 products: exact)
    r, c = Data.train.nonzero()
    dense[r, c] = -torch.inf
    assert torch.equal(got.top, torch.topk(dense, 20, dim=1).indices)
