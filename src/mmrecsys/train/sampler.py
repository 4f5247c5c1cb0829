"""Vectorised training samplers: MMRec's (``enoche/MMRec`` ``src/utils/dataloader.py``
``TrainDataLoader``: every training interaction once per epoch, one negative each), MMHCL's
(``Xu107/MMHCL`` ``codes/utility/load_data.py`` ``Data.sample``: users drawn per batch) and
HCCF's and SHT's (``akaxlh/HCCF`` ``labcode_efficient.py``, ``akaxlh/SHT`` ``labcode_hop.py``
``sampleTrainBatch``: batches of users, each with up to ``per_user`` pairs).

Negatives are drawn in bulk and only the collisions with the user's history are redrawn; the
membership test is a binary search in the sorted keys u·n_items + i of the history.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..data import Dataset
from ..errors import SamplingError


class _History:
    """Sorted keys u·n_items + i for a vectorised 'is item i in u's history' test."""

    def __init__(self, m: sp.csr_matrix):
        c = m.tocoo()
        self.n_items = m.shape[1]
        self.keys = np.sort(c.row.astype(np.int64) * self.n_items + c.col.astype(np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q


class NegativeSampler:
    """One negative per row, uniform over the candidates, rejecting the user's history.

    ``negatives_from``: "train_items" (items with ≥1 training interaction, MMRec) or
    "all_items" (the whole id range, MMHCL). ``exclude_heldout`` (a compatibility option that
    leaks held-out data into training) also rejects the user's validation and test items.
    """

    def __init__(self, data: Dataset, negatives_from: str = "train_items",
                 exclude_heldout: bool = False):
        if negatives_from == "train_items":
            self.candidates = np.flatnonzero(data.item_train_degree() > 0)
        elif negatives_from == "all_items":
            self.candidates = np.arange(data.n_items)
        else:
            raise ValueError(f"negatives_from={negatives_from!r}: use 'train_items' or 'all_items'")
        hist = data.train if not exclude_heldout else (data.train + data.valid + data.test).tocsr()
        self.history = _History(hist)

    def sample(self, users: np.ndarray, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
        neg = self.candidates[rng.integers(0, len(self.candidates), size=len(users))]
        bad = np.flatnonzero(self.history.contains(users, neg))
        rounds = 0
        while len(bad):
            neg[bad] = self.candidates[rng.integers(0, len(self.candidates), size=len(bad))]
            bad = bad[self.history.contains(users[bad], neg[bad])]
            rounds += 1
            if rounds > max_rounds:
                raise SamplingError(f"{len(bad)} users (e.g. user {int(users[bad[0]])}) have "
                                    f"interacted with (almost) every candidate item; no negative "
                                    f"can be sampled for them. Remove such users from the data or "
                                    f"use --set negatives_from=all_items.")
        return neg


class InteractionSampler:
    """MMRec: each epoch is one shuffled pass over all training pairs (last batch kept)."""

    def __init__(self, data: Dataset, batch_size: int, negatives: NegativeSampler):
        self.users, self.items = data.train_pairs()
        self.batch_size = batch_size
        self.negatives = negatives

    def __len__(self):
        return -(-len(self.users) // self.batch_size)

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(len(self.users))
        users, items = self.users[order], self.items[order]
        negs = self.negatives.sample(users, rng)  # drawn for the whole epoch at once
        for s in range(0, len(users), self.batch_size):
            yield users[s:s + self.batch_size], items[s:s + self.batch_size], negs[s:s + self.batch_size]


class UserSampler:
    """MMHCL: n_train // B + 1 steps; each step B distinct users, one random positive each."""

    def __init__(self, data: Dataset, batch_size: int, negatives: NegativeSampler):
        self.indptr = data.train.indptr.astype(np.int64)
        self.indices = data.train.indices.astype(np.int64)
        deg = np.diff(self.indptr)
        self.exist_users = np.flatnonzero(deg > 0)
        self.batch_size = min(batch_size, len(self.exist_users))
        self.steps = data.train.nnz // batch_size + 1
        self.negatives = negatives

    def __len__(self):
        return self.steps

    def epoch(self, rng: np.random.Generator):
        for _ in range(self.steps):
            users = rng.choice(self.exist_users, size=self.batch_size, replace=False)
            deg = self.indptr[users + 1] - self.indptr[users]
            pos = self.indices[self.indptr[users] + (rng.random(len(users)) * deg).astype(np.int64)]
            yield users, pos, self.negatives.sample(users, rng)


class UserPairsSampler:
    """HCCF's and SHT's authors: each epoch a shuffled pass over the users with training items,
    ``batch_size`` users per step; a user u brings min(``per_user``, deg u) pairs, its positives
    drawn uniformly *with* replacement from its training items (``np.random.choice(posset, n)``)
    and one negative each (the code's ``negSamp``: uniform, rejecting the user's items). The
    rows of a step are grouped by user (u's pairs side by side)."""

    def __init__(self, data: Dataset, batch_size: int, negatives: NegativeSampler, per_user: int):
        if per_user < 1:
            raise ValueError(f"per_user={per_user}: must be ≥ 1")
        self.indptr = data.train.indptr.astype(np.int64)
        self.indices = data.train.indices.astype(np.int64)
        self.exist_users = np.flatnonzero(np.diff(self.indptr) > 0)
        self.batch_size = batch_size
        self.per_user = int(per_user)
        self.negatives = negatives

    def __len__(self):
        return -(-len(self.exist_users) // self.batch_size)

    def epoch(self, rng: np.random.Generator):
        order = rng.permutation(self.exist_users)
        for s in range(0, len(order), self.batch_size):
            users = order[s:s + self.batch_size]
            deg = self.indptr[users + 1] - self.indptr[users]
            counts = np.minimum(deg, self.per_user)
            rows = np.repeat(users, counts)
            offsets = (rng.random(len(rows)) * np.repeat(deg, counts)).astype(np.int64)
            pos = self.indices[np.repeat(self.indptr[users], counts) + offsets]
            yield rows, pos, self.negatives.sample(rows, rng)


SAMPLERS = ("interactions", "users", "user_pairs")


def make_sampler(data: Dataset, sampler: str, batch_size: int, negatives_from: str,
                 exclude_heldout: bool, per_user: int = 40):
    neg = NegativeSampler(data, negatives_from, exclude_heldout)
    if sampler == "interactions":
        return InteractionSampler(data, batch_size, neg)
    if sampler == "users":
        return UserSampler(data, batch_size, neg)
    if sampler == "user_pairs":
        return UserPairsSampler(data, batch_size, neg, per_user)
    raise ValueError(f"sampler={sampler!r}: use 'interactions' (MMRec), 'users' (MMHCL) or "
                     "'user_pairs' (HCCF, SHT)")
