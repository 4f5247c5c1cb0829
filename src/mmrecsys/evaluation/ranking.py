"""Full-ranking evaluation, chunked over users, with no per-user Python loop (MMRec's
``enoche/MMRec`` ``src/common/trainer.py`` ``evaluate`` and ``src/utils/topk_evaluator.py``).

For each block of users: scores against all items (B, n_items) → masked items set to −∞ →
``torch.topk`` → hits gathered from a dense (B, n_items) boolean block of the held-out items →
metrics. Scores are ranked in blocks of :func:`scoring_rows` users (about 4 MB of scores on a
CPU; above 65,536 items, blocks of users × items merged top-k by top-k: :func:`scoring_blocks`);
peak memory is a few such blocks, whatever the number of users.

Masking (MMRec sets their scores to −1e10 in ``Trainer.evaluate``): the user's *training*
items are always masked. With
``mask_valid_at_test`` the validation items are masked too when the test split is evaluated (off
by default, as MMRec).

Stochastic inference. A model whose ``stochastic_inference`` attribute is true (LGMRec draws
Gumbel noise at inference, as its official ``full_sort_predict``) is run once per block of
``chunk_size`` users, each block with its own draw, as the official code re-runs the forward
pass for every evaluation batch. The draws come from a private generator state seeded by
``seed`` (see :func:`eval_seed`), so a pass is repeatable and leaves the global RNG untouched.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ..data import Dataset
from .metrics import METRICS, per_user_metrics

DEFAULT_TOPK = (5, 10, 20, 50)


@dataclass
class EvalResult:
    """Averages plus per-user values and ranked lists of one evaluation pass."""
    metrics: dict[str, float]
    users: np.ndarray                       # (n_eval,) evaluated user ids
    per_user: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (n_eval,)
    topk: np.ndarray | None = None          # (n_eval, K_max) ranked item ids

    def __getitem__(self, key):
        return self.metrics[key]


def _block_rows(m: sp.csr_matrix, rows: np.ndarray):
    """(row positions within the block, column ids) of the nonzeros of ``m[rows]``."""
    sub = m[rows]
    r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
    return r, sub.indices


def _hits(target: sp.csr_matrix, rows: np.ndarray, top: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, K) bool: is top[b, p] a held-out item of user rows[b]? Binary search in sorted keys."""
    r, c = _block_rows(target, rows)
    # sorted explicitly: a CSR's columns need not be sorted within a row (e.g. after a product)
    keys = torch.as_tensor(np.sort(r.astype(np.int64) * n_items + c), device=top.device)
    if len(keys) == 0:
        return torch.zeros_like(top, dtype=torch.bool)
    q = torch.arange(len(rows), device=top.device)[:, None] * n_items + top
    pos = torch.searchsorted(keys, q.reshape(-1)).clamp_(max=len(keys) - 1)
    return (keys[pos] == q.reshape(-1)).reshape(top.shape)


def mask_name(split: str, mask_valid_at_test: bool = False) -> str:
    """Which interactions are masked when ``split`` is ranked: "train" or "train+valid"."""
    return "train+valid" if split == "test" and mask_valid_at_test else "train"


def mask_matrix(data: Dataset, split: str, mask_valid_at_test: bool = False) -> sp.csr_matrix:
    if mask_name(split, mask_valid_at_test) == "train+valid":
        return (data.train + data.valid).tocsr()
    return data.train


_SPLIT_CODES = {"valid": 1, "test": 2, "recommend": 3}


def eval_seed(seed: int, epoch: int, split: str) -> int:
    """The seed of the inference noise of one evaluation pass (``split`` at ``epoch``).

    Independent streams per (run seed, epoch, split), so validation and test draw independently
    (as the official LGMRec code's separate passes do) and any pass can be replayed exactly
    (``mmrecsys evaluate`` replays the best epoch's test pass).
    """
    state = np.random.SeedSequence([int(seed) % 2 ** 63, int(epoch) + 1, _SPLIT_CODES[split]])
    return int(state.generate_state(1, dtype=np.uint64)[0] % 2 ** 63)


def is_stochastic(model) -> bool:
    """Does ``model`` draw random numbers at inference (e.g. LGMRec's Gumbel noise)?"""
    return bool(getattr(model, "stochastic_inference", False))


@contextlib.contextmanager
def seeded(seed: int | None, device=None):
    """Run a block with torch's RNG seeded by ``seed`` and restore the previous state after.

    ``seed=None`` leaves the RNG alone. Forks the CUDA generator of ``device`` too.
    """
    if seed is None:
        yield
        return
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        ctx = torch.random.fork_rng(devices=[dev], device_type="cuda")
    else:
        ctx = torch.random.fork_rng(devices=[])
    with ctx:
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def representations(model, seed: int | None = None):
    """``model.representations()`` in eval mode, with inference noise (if any) drawn from ``seed``."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with seeded(seed if is_stochastic(model) else None, dev):
            return model.representations()
    finally:
        model.train(was_training)


#: most elements of one (users × items) block of scores; a larger catalogue is ranked in
#: blocks of items whose top-k lists are merged (so memory is bounded whatever the catalogue)
SCORE_BLOCK_ELEMENTS = 1 << 26


def scoring_rows(n_items: int, device=None) -> int:
    """Users scored at a time: a (rows, n_items) score block of about 2^20 floats (4 MB,
    cache-sized) on a CPU, 2^27 on a GPU. Rows are ranked independently, so this changes speed
    and memory, never a ranking."""
    budget = 1 << 27 if device is not None and torch.device(device).type != "cpu" else 1 << 20
    return max(1, budget // max(1, int(n_items)))


def scoring_blocks(n_items: int, device=None, streams: bool = False) -> tuple[int, int | None]:
    """(users per block, items per block or None) for ranking a catalogue of ``n_items``.

    :func:`scoring_rows` users against every item, unless that leaves fewer than 16 users per
    block (a CPU and more than 65,536 items) and the scorer can stream items: then 256 users
    against 16,384 items at a time, merged block by block. With one user per block each block
    is a matrix-vector product that reads every item representation again (256 MB per user at
    1M items × 64 dims: memory-bound, 13 ms per user here); 256 users share each read (2 ms).
    Scores of a block may then round differently from the matrix-vector ones, which can swap
    near-tied items; catalogues up to 65,536 items keep the one-block path.
    """
    rows = scoring_rows(n_items, device)
    if rows < 16 and streams:
        return 256, 1 << 14
    return rows, None


@torch.no_grad()
def rank_topk(score_fn, users: np.ndarray, n_items: int, mask: sp.csr_matrix, k: int,
              chunk_size: int = 4096, device="cpu", with_scores: bool = False,
              item_chunk: int | None = None):
    """Yield (start, stop, top (B, k) item ids[, their scores]) for consecutive user blocks.

    ``score_fn(u)`` gives the (B, n_items) scores of a block of users; when it also accepts
    ``items=slice`` (scores against that range of items) and the block would exceed
    :data:`SCORE_BLOCK_ELEMENTS` (or ``item_chunk`` is given), items are streamed in blocks and
    the running top-k is merged block by block: never a users × items matrix larger than one
    block. The lists equal the one-block lists, ties aside.
    """
    k = min(k, n_items)
    streams = accepts_items(score_fn)
    if item_chunk is None and streams and chunk_size * n_items > SCORE_BLOCK_ELEMENTS:
        item_chunk = max(k, SCORE_BLOCK_ELEMENTS // max(1, min(chunk_size, len(users) or 1)))
    if not streams or item_chunk is None or item_chunk >= n_items:
        item_chunk = None
    for start in range(0, len(users), chunk_size):
        rows = users[start:start + chunk_size]
        u = torch.as_tensor(rows, dtype=torch.long, device=device)
        r, c = _block_rows(mask, rows)
        if item_chunk is None:
            scores = score_fn(u).float()
            if len(r):
                scores[torch.as_tensor(r, device=scores.device),
                       torch.as_tensor(c, dtype=torch.long, device=scores.device)] = -torch.inf
            vals, idx = torch.topk(scores, k, dim=1)
        else:
            vals = idx = None
            order = np.argsort(c, kind="stable")
            r, c = r[order], c[order]
            for i0 in range(0, n_items, item_chunk):
                i1 = min(i0 + item_chunk, n_items)
                scores = score_fn(u, items=slice(i0, i1)).float()
                a, b = np.searchsorted(c, [i0, i1])
                if b > a:
                    scores[torch.as_tensor(r[a:b], device=scores.device),
                           torch.as_tensor(c[a:b] - i0, dtype=torch.long,
                                           device=scores.device)] = -torch.inf
                bv, bi = torch.topk(scores, min(k, i1 - i0), dim=1)
                bi = bi + i0
                if vals is not None:
                    bv, pos = torch.topk(torch.cat([vals, bv], 1), min(k, vals.shape[1] + bv.shape[1]), dim=1)
                    bi = torch.gather(torch.cat([idx, bi], 1), 1, pos)
                vals, idx = bv, bi
        if with_scores:
            yield start, start + len(rows), idx, vals
        else:
            yield start, start + len(rows), idx


def accepts_items(score_fn) -> bool:
    import inspect
    try:
        return "items" in inspect.signature(score_fn).parameters
    except (TypeError, ValueError):
        return False


def model_scorer(model, reps):
    """``score(u, items=None)`` of ``model`` on precomputed ``reps`` (item blocks when the model's
    ``score`` accepts ``items``)."""
    if accepts_items(model.score):
        return lambda u, items=None: model.score(u, reps, items=items)
    return lambda u: model.score(u, reps)


@dataclass
class Ranking:
    """Top-K lists of a set of users (sorted ids) under one mask; reusable across splits."""
    users: np.ndarray       # (n,) sorted user ids
    top: torch.Tensor       # (n, K) ranked item ids
    mask: str               # the mask it was ranked under (see :func:`mask_name`)

    def rows_of(self, users: np.ndarray) -> torch.Tensor | None:
        if len(users) == 0:
            return self.top[:0]
        idx = np.searchsorted(self.users, users)
        if idx.max() >= len(self.users) or not np.array_equal(self.users[idx], users):
            return None
        return self.top[torch.as_tensor(idx, device=self.top.device)]


@torch.no_grad()
def rank_users(model, data: Dataset, users: np.ndarray, k: int, mask: str = "train", *,
               reps=None, chunk_size: int = 4096, device=None, seed: int | None = None) -> Ranking:
    """Rank all items for ``users`` (items of ``mask`` excluded) once; keep the top ``k``.

    A stochastic model (see module docstring) is run once per block of ``chunk_size`` users,
    with noise drawn from ``seed``; ``reps`` is then ignored. Scores are formed and ranked in
    :func:`scoring_blocks` (users, items) at a time.
    """
    users = np.unique(np.asarray(users, dtype=np.int64))
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mask_m = data.train if mask == "train" else mask_matrix(data, "test", True)
    stochastic = is_stochastic(model)
    was_training = model.training
    model.eval()
    session = getattr(model, "inference_session", None)  # weights fixed for the whole pass
    try:
        with seeded(seed if stochastic else None, device), \
                (session() if session is not None else contextlib.nullcontext()):
            if reps is None and not stochastic:
                reps = model.representations()
            rows, item_chunk = scoring_blocks(data.n_items, device, accepts_items(model.score))
            # one preallocated output: per-block lists kept alive between the blocks' score
            # buffers fragment the heap (glibc), which grew by ~1.5 MB per block with 1 M items
            top = torch.empty((len(users), min(k, data.n_items)), dtype=torch.long, device=device)
            if stochastic:  # a fresh forward pass (fresh noise) for every block of users
                for start in range(0, len(users), chunk_size):
                    block_reps = model.representations()
                    for a, b, t in rank_topk(model_scorer(model, block_reps),
                                             users[start:start + chunk_size], data.n_items,
                                             mask_m, k, min(rows, chunk_size), device,
                                             item_chunk=item_chunk):
                        top[start + a:start + b] = t
            else:
                for a, b, t in rank_topk(model_scorer(model, reps), users, data.n_items, mask_m,
                                         k, rows, device, item_chunk=item_chunk):
                    top[a:b] = t
    finally:
        model.train(was_training)
    return Ranking(users, top, mask)


def heldout_users(data: Dataset, splits=("valid", "test")) -> np.ndarray:
    return np.unique(np.concatenate([np.flatnonzero(np.diff(data.split(s).indptr) > 0) for s in splits]))


@torch.no_grad()
def evaluate(model, data: Dataset, split: str = "test", topk=DEFAULT_TOPK, *,
             mask_valid_at_test: bool = False, item_subset=None, users=None, reps=None,
             ranking: Ranking | None = None, chunk_size: int = 4096, metrics=METRICS,
             extra_metrics=(), keep_topk: bool = False, device=None,
             seed: int | None = None) -> EvalResult:
    """Evaluate ``model`` on ``split`` by full ranking over all items.

    Args:
        item_subset: optional item ids; only held-out interactions with these items count
            (hits and n_u), and users with none are skipped. Used for long-tail and cold items.
        users: optional subset of user ids to evaluate (default: every user with a held-out row).
        reps: precomputed ``model.representations()`` (computed once here otherwise).
        ranking: a :class:`Ranking` computed under the same mask (e.g. shared by the validation
            and test passes, whose masks are equal by default); recomputed when it does not fit.
        keep_topk: keep the (n_eval, K_max) ranked lists in the result.
        seed: seed of the inference noise of a stochastic model (ignored by others).
    """
    target = data.split(split)
    if item_subset is not None:
        keep = np.zeros(data.n_items, dtype=np.float32)
        keep[np.asarray(item_subset, dtype=np.int64)] = 1.0
        target = (target @ sp.diags(keep)).tocsr()
        target.eliminate_zeros()
    n_pos_all = np.diff(target.indptr)
    eval_users = np.flatnonzero(n_pos_all > 0) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    eval_users = eval_users[n_pos_all[eval_users] > 0]
    topk = sorted(set(int(k) for k in topk))
    k_max = max(topk)
    mask = mask_name(split, mask_valid_at_test)
    top_all = None
    if ranking is not None and ranking.mask == mask and ranking.top.shape[1] >= k_max:
        top_all = ranking.rows_of(eval_users)
    if top_all is None:
        top_all = rank_users(model, data, eval_users, k_max, mask, reps=reps,
                             chunk_size=chunk_size, device=device, seed=seed).top
    top_all = top_all[:, :k_max]
    per_user: dict[str, list] = {}
    for start in range(0, len(eval_users), chunk_size):
        rows = eval_users[start:start + chunk_size]
        top = top_all[start:start + chunk_size]
        hits = _hits(target, rows, top, data.n_items)
        n_pos = torch.as_tensor(n_pos_all[rows], device=top.device)
        for key, v in per_user_metrics(hits, n_pos, topk, metrics, extra_metrics).items():
            per_user.setdefault(key, []).append(v.cpu().numpy())
    if not per_user:  # no user to evaluate: every metric is present, with no values
        empty = top_all.new_zeros((0, k_max), dtype=torch.bool)
        per_user = {k: [v.cpu().numpy()] for k, v in per_user_metrics(
            empty, empty.new_zeros(0, dtype=torch.long), topk, metrics, extra_metrics).items()}
    per_user_arr = {k: np.concatenate(v) for k, v in per_user.items()}
    means = {k: float(v.mean()) if len(v) else 0.0 for k, v in per_user_arr.items()}
    return EvalResult(means, eval_users, per_user_arr,
                      top_all.cpu().numpy() if keep_topk else None)


# ------------------------------------------------------------------ reports by group
DEFAULT_USER_BINS = ((0, 3), (4, 5), (6, 10), (11, 20), (21, None))


def user_group_report(result: EvalResult, data: Dataset, bins=DEFAULT_USER_BINS,
                      keys=("recall@20", "ndcg@20")) -> list[dict]:
    """Metrics averaged per group of users by their number of training interactions."""
    keys = [k for k in keys if k in result.per_user]  # e.g. topk without 20
    deg = data.user_train_degree()[result.users]
    rows = []
    for lo, hi in bins:
        sel = (deg >= lo) & (deg <= (hi if hi is not None else np.iinfo(np.int64).max))
        row = {"group": f"{lo}-{hi}" if hi is not None else f"{lo}+", "users": int(sel.sum())}
        for k in keys:
            row[k] = float(result.per_user[k][sel].mean()) if sel.any() else None
        rows.append(row)
    return rows


def items_with_train_degree(data: Dataset, lo: int, hi: int) -> np.ndarray:
    """Item ids with lo ≤ (number of training interactions) ≤ hi."""
    deg = data.item_train_degree()
    return np.flatnonzero((deg >= lo) & (deg <= hi))
