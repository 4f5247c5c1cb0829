"""`data prepare`: raw interactions → dataset folder (MMRec's preprocessing), on files the tests write."""
from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.dataset import read_inter
from mmrecsys.data.prepare import (first_occurrence, kcore, mmrec_split_labels, prepare,
                                   read_interactions, read_mapping, reindex_first_appearance,
                                   split_leave_last_out, split_random, split_sizes,
                                   split_temporal)


def long_tail_rows(n=3000, n_users=400, n_items=250, seed=0):
    """(user, item, rating, timestamp) rows with Zipf-like user and item popularity."""
    rng = np.random.default_rng(seed)
    pu = 1.0 / np.arange(1, n_users + 1) ** 0.9
    pi = 1.0 / np.arange(1, n_items + 1) ** 1.1
    u = rng.choice(n_users, n, p=pu / pu.sum())
    i = rng.choice(n_items, n, p=pi / pi.sum())
    t = rng.integers(1_300_000_000, 1_400_000_000, n)
    r = rng.integers(1, 6, n)
    keep = np.unique(u * n_items + i, return_index=True)[1]  # one row per (user, item) pair
    keep.sort()
    return [(f"A{a:05d}X", f"B00{b:05d}", float(c), int(d))
            for a, b, c, d in zip(u[keep], i[keep], r[keep], t[keep])]


def write_csv(path, rows, header=("user", "item", "rating", "timestamp"), sep=","):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=sep)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def naive_kcore(pairs, k):
    """Reference: remove users, then items, with fewer than k rows until nothing changes."""
    rows = list(pairs)
    while True:
        before = len(rows)
        for col in (0, 1):
            cnt = {}
            for r in rows:
                cnt[r[col]] = cnt.get(r[col], 0) + 1
            rows = [r for r in rows if cnt[r[col]] >= k]
        if len(rows) == before:
            return rows


# ------------------------------------------------------------------------------ steps
def test_kcore_reaches_the_fixed_point():
    rows = long_tail_rows()
    codes_u = reindex_first_appearance(np.array([r[0] for r in rows]))[0]
    codes_i = reindex_first_appearance(np.array([r[1] for r in rows]))[0]
    for k in (2, 5, 8):
        keep, rounds = kcore(codes_u, codes_i, k, k)
        u, i = codes_u[keep], codes_i[keep]
        assert keep.sum() > 0 and len(rounds) >= (2 if k > 2 else 1)
        assert np.bincount(u)[np.unique(u)].min() >= k
        assert np.bincount(i)[np.unique(i)].min() >= k
        # the same rows as the sequential reference (the k-core is unique)
        ref = naive_kcore([(a, b, n) for n, (a, b) in enumerate(zip(codes_u, codes_i))], k)
        assert sorted(n for _, _, n in ref) == np.flatnonzero(keep).tolist()
        # a second pass removes nothing: a fixed point
        again, more = kcore(u, i, k, k)
        assert again.all() and more == []


def test_split_sizes_follow_mmrec_rule():
    assert [tuple(int(v) for v in np.array(split_sizes([n])).ravel()) for n in (5, 10, 15, 20)] == \
        [(3, 1, 1), (8, 1, 1), (12, 1, 2), (16, 2, 2)]
    n = np.arange(3, 200)
    tr, va, te = split_sizes(n)
    assert (tr + va + te == n).all() and (va >= 1).all() and (te >= va).all()


def _loop_split_labels(users):
    """Reference: for each user in order of its rows, first n_train train, then valid, then test."""
    from collections import Counter
    total = Counter(users.tolist())
    seen = Counter()
    out = []
    for u in users.tolist():
        n = total[u]
        m = 2 if n < 10 else n // 5
        v = 1 if n < 10 else m // 2
        p = seen[u]
        seen[u] += 1
        out.append(0 if p < n - m else (1 if p < n - m + v else 2))
    return np.array(out)


def test_random_split_per_user_counts_and_seed():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(60), rng.integers(3, 40, 60))
    users = users[rng.permutation(len(users))]
    np.testing.assert_array_equal(mmrec_split_labels(users), _loop_split_labels(users))
    labels = split_random(users, seed=7)
    for u in np.unique(users):
        n = int((users == u).sum())
        got = [int(((users == u) & (labels == s)).sum()) for s in (0, 1, 2)]
        assert got == [int(v[0]) for v in split_sizes([n])]
    np.testing.assert_array_equal(labels, split_random(users, seed=7))
    assert (labels != split_random(users, seed=8)).any()


def test_temporal_splits():
    t = np.arange(100, dtype=float)
    lab = split_temporal(t)
    q1, q2 = np.quantile(t, [0.8, 0.9])
    assert (lab == 0).sum() == (t < q1).sum() and (lab == 2).sum() == (t >= q2).sum()
    users = np.array([0, 1, 0, 0, 1, 1, 0, 1])
    ts = np.array([5, 1, 3, 9, 2, 7, 1, 7], dtype=float)
    lab = split_leave_last_out(users, ts)
    # user 0: times 5,3,9,1 → 9 test, 5 valid; user 1: 1,2,7,7 → later 7 (row 7) test, row 5 valid
    assert lab.tolist() == [1, 0, 0, 2, 0, 1, 0, 2]


def test_reindex_first_appearance_and_first_occurrence():
    new, old = reindex_first_appearance(np.array([7, 3, 7, 9, 3, 1]))
    assert new.tolist() == [0, 1, 0, 2, 1, 3] and old.tolist() == [7, 3, 9, 1]
    keep = first_occurrence(np.array([1, 1, 2, 1]), np.array([5, 5, 5, 6]))
    assert keep.tolist() == [True, False, True, True]


# ------------------------------------------------------------------------------ pipeline
def test_prepare_csv_with_header(tmp_path):
    rows = long_tail_rows()
    rows.insert(10, ("", "B0000001", 5.0, 1_350_000_000))          # missing user
    rows.insert(20, ("A00001X", "B0000002", 4.0, ""))               # missing timestamp
    rows.insert(30, rows[40])                                       # duplicate triple
    src = write_csv(tmp_path / "raw.csv", rows)
    rep = prepare(src, tmp_path / "toy", kcore_k=5, seed=3)
    steps = {s["step"]: s["rows"] for s in rep["steps"]}
    assert steps["read"] == len(rows)
    assert steps["drop rows with missing fields"] == len(rows) - 2
    assert steps["drop duplicate (user, item, timestamp)"] == len(rows) - 3
    ds = load_dataset(tmp_path / "toy")
    assert ds.n_users == rep["result"]["users"] and ds.n_items == rep["result"]["items"]
    u, i, lab = read_inter(tmp_path / "toy" / "toy.inter")
    assert np.bincount(u).min() >= 5 and np.bincount(i).min() >= 5
    # ids re-indexed by first appearance in file order of the kept rows
    assert (np.maximum.accumulate(u) <= np.arange(len(u))).all()
    first_u = np.unique(u, return_index=True)[1]
    assert (np.diff(first_u) > 0).all()
    uids, iids = read_mapping(tmp_path / "toy" / "u_id_mapping.csv"), \
        read_mapping(tmp_path / "toy" / "i_id_mapping.csv")
    header = (tmp_path / "toy" / "toy.inter").read_text().splitlines()[0].split("\t")
    assert header == ["userID", "itemID", "rating", "timestamp", "x_label"]
    # the first data row maps back to a raw row of the file
    first = (tmp_path / "toy" / "toy.inter").read_text().splitlines()[1].split("\t")
    raw = (uids[int(first[0])], iids[int(first[1])], float(first[2]), int(first[3]))
    assert raw in rows
    meta = json.loads((tmp_path / "toy" / "prepare.json").read_text())
    assert meta["options"]["seed"] == 3 and len(meta["source"]["sha256"]) == 64


def test_prepare_is_reproducible(tmp_path):
    src = write_csv(tmp_path / "raw.csv", long_tail_rows())
    prepare(src, tmp_path / "a", seed=5)
    prepare(src, tmp_path / "b", seed=5, name="a")
    prepare(src, tmp_path / "c", seed=6, name="a")
    for f in ("a.inter", "u_id_mapping.csv", "i_id_mapping.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "a.inter").read_bytes() != (tmp_path / "c" / "a.inter").read_bytes()


def test_formats_are_recognised(tmp_path):
    rows = long_tail_rows(n=1500)
    # Amazon 2014 ratings CSV: no header; gzip
    with gzip.open(tmp_path / "ratings_Baby.csv.gz", "wt", newline="") as fh:
        csv.writer(fh).writerows(rows)
    # Amazon 2014 review JSON lines
    with open(tmp_path / "reviews.json", "w") as fh:
        for a, b, c, d in rows:
            fh.write(json.dumps({"reviewerID": a, "asin": b, "overall": c, "unixReviewTime": d,
                                 "reviewText": "fine"}) + "\n")
    # MMRec's header names, tab-separated
    write_csv(tmp_path / "mm.tsv", rows, header=("userID", "itemID", "rating", "timestamp"),
              sep="\t")
    outs = {}
    for name, fmt in (("ratings_Baby.csv.gz", "amazon-ratings"), ("reviews.json", "jsonl"),
                      ("mm.tsv", "tsv")):
        raw = read_interactions(tmp_path / name)
        assert raw.fmt == fmt and len(raw) == len(rows)
        prepare(tmp_path / name, tmp_path / f"o-{fmt}", name="x", seed=1)
        outs[fmt] = (tmp_path / f"o-{fmt}" / "x.inter").read_bytes()
    assert len(set(outs.values())) == 1


def test_columns_given_and_iso_dates(tmp_path):
    rows = [(f"u{k % 7}", f"i{k % 5}", f"2014-01-{1 + k % 28:02d}T00:00:{k % 60:02d}")
            for k in range(300)]
    write_csv(tmp_path / "raw.csv", rows, header=("who", "what", "when"))
    with pytest.raises(DataError, match="names no user and item column"):
        prepare(tmp_path / "raw.csv", tmp_path / "o")
    rep = prepare(tmp_path / "raw.csv", tmp_path / "o", user_col="who", item_col="what",
                  time_col="when", kcore_k=1, split="leave-last-out", dedup="pair")
    assert rep["result"]["interactions"] == 35 and rep["options"]["split"] == "leave-last-out"
    text = (tmp_path / "o" / "o.inter").read_text().splitlines()
    assert text[0] == "userID\titemID\ttimestamp\tx_label" and text[1].split("\t")[2] == "1388534400"


def test_errors_name_the_fix(tmp_path):
    src = write_csv(tmp_path / "raw.csv", long_tail_rows(n=400))
    with pytest.raises(DataError, match=r"no interaction is left.*50-core round 1: .*Lower --kcore"):
        prepare(src, tmp_path / "o", kcore_k=50)
    bad = write_csv(tmp_path / "bad.csv", [("a", "b", 1.0, 5), ("a", "c", 2.0, "yesterday")])
    with pytest.raises(DataError, match="line 3, column timestamp: 'yesterday'"):
        prepare(bad, tmp_path / "o")
    notime = write_csv(tmp_path / "nt.csv", [("a", "b")], header=("user", "item"))
    with pytest.raises(DataError, match="--split temporal needs timestamps"):
        prepare(notime, tmp_path / "o", split="temporal")
    with pytest.warns(UserWarning, match="users have no training interaction"):
        prepare(src, tmp_path / "ok", kcore_k=2)  # users with 2 rows: 0 / 1 / 1
    (tmp_path / "ok" / "text_feat.npy").write_bytes(b"")
    with pytest.raises(DataError, match="already holds feature files"):
        prepare(src, tmp_path / "ok", kcore_k=2)


def test_cli_prepare(tmp_path):
    src = write_csv(tmp_path / "raw.csv", long_tail_rows())
    r = CliRunner().invoke(main, ["data", "prepare", str(src), "--out", str(tmp_path / "d"),
                                  "--kcore", "5", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "5-core round 1" in r.output and "sparsity" in r.output and "users" in r.output
    r = CliRunner().invoke(main, ["data", "prepare", str(src), "--out", str(tmp_path / "e"),
                                  "--kcore", "500"])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


def test_jsonl_missing_and_numeric_ids(tmp_path):
    (tmp_path / "r.jsonl").write_text(
        '{"user": 1, "item": 2.0, "timestamp": 5}\n{"user": null, "item": 3, "timestamp": 6}\n'
        '\n{"user": NaN, "item": 3, "timestamp": 6}\n{"user": 2, "item": "3"}\n')
    raw = read_interactions(tmp_path / "r.jsonl")
    assert raw.user_ids == ["1", "2"] and raw.item_ids == ["2", "3"]
    assert raw.users.tolist() == [0, -1, -1, 1] and raw.lines.tolist() == [1, 2, 4, 5]
    np.testing.assert_array_equal(raw.timestamps, [5, 6, 6, np.nan])
    with pytest.warns(UserWarning, match="1 users have no training interaction"):
        rep = prepare(tmp_path / "r.jsonl", tmp_path / "o", kcore_k=0, split="leave-last-out")
    assert [s["rows"] for s in rep["steps"][:2]] == [4, 1]
