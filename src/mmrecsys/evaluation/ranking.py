"""Full-ranking evaluation (protocol §4.1), chunked over users, with no per-user Python loop.

For each block of users: scores against all items (B, n_items) → masked items set to −∞ →
``torch.topk`` → hits gathered from a dense (B, n_items) boolean block of the held-out items →
metrics. Peak memory is a few (B, n_items) blocks, whatever the number of users.

Masking (protocol §4.1): the user's *training* items are always masked. With
``mask_valid_at_test`` the validation items are masked too when the test split is evaluated (off
by default, as MMRec).
"""
from __future__ import annotations

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


def mask_matrix(data: Dataset, split: str, mask_valid_at_test: bool = False) -> sp.csr_matrix:
    mask = data.train
    if split == "test" and mask_valid_at_test:
        mask = (data.train + data.valid).tocsr()
    return mask


@torch.no_grad()
def rank_topk(score_fn, users: np.ndarray, n_items: int, mask: sp.csr_matrix, k: int,
              chunk_size: int = 4096, device="cpu"):
    """Yield (start, stop, topk (B, k) tensor, block_scores) for consecutive user blocks."""
    for start in range(0, len(users), chunk_size):
        rows = users[start:start + chunk_size]
        u = torch.as_tensor(rows, dtype=torch.long, device=device)
        scores = score_fn(u).float()
        r, c = _block_rows(mask, rows)
        if len(r):
            scores[torch.as_tensor(r, device=scores.device), torch.as_tensor(c, dtype=torch.long, device=scores.device)] = -torch.inf
        top = torch.topk(scores, min(k, n_items), dim=1).indices
        yield start, start + len(rows), top


@torch.no_grad()
def evaluate(model, data: Dataset, split: str = "test", topk=DEFAULT_TOPK, *,
             mask_valid_at_test: bool = False, item_subset=None, users=None, reps=None,
             chunk_size: int = 4096, metrics=METRICS, extra_metrics=(), keep_topk: bool = False,
             device=None) -> EvalResult:
    """Evaluate ``model`` on ``split`` by full ranking over all items.

    Args:
        item_subset: optional item ids; only held-out interactions with these items count
            (hits and n_u), and users with none are skipped. Used for long-tail and cold items.
        users: optional subset of user ids to evaluate (default: every user with a held-out row).
        reps: precomputed ``model.representations()`` (computed once here otherwise).
        keep_topk: keep the (n_eval, K_max) ranked lists in the result.
    """
    target = data.split(split)
    if item_subset is not None:
        keep = np.zeros(data.n_items, dtype=np.float32)
        keep[np.asarray(item_subset, dtype=np.int64)] = 1.0
        target = (target @ sp.diags(keep)).tocsr()
        target.eliminate_zeros()
    n_pos_all = np.diff(target.indptr)
    eval_users = np.flatnonzero(n_pos_all > 0) if users is None else np.asarray(users, dtype=np.int64)
    eval_users = eval_users[n_pos_all[eval_users] > 0]
    topk = sorted(set(int(k) for k in topk))
    k_max = max(topk)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        if reps is None:
            reps = model.representations()
        per_user: dict[str, list] = {}
        tops = []
        mask = mask_matrix(data, split, mask_valid_at_test)
        for start, stop, top in rank_topk(lambda u: model.score(u, reps), eval_users, data.n_items,
                                          mask, k_max, chunk_size, device):
            rows = eval_users[start:stop]
            hits = _hits(target, rows, top, data.n_items)
            n_pos = torch.as_tensor(n_pos_all[rows], device=top.device)
            for key, v in per_user_metrics(hits, n_pos, topk, metrics, extra_metrics).items():
                per_user.setdefault(key, []).append(v.cpu().numpy())
            if keep_topk:
                tops.append(top.cpu().numpy())
    finally:
        model.train(was_training)
    per_user_arr = {k: np.concatenate(v) for k, v in per_user.items()}
    means = {k: float(v.mean()) if len(v) else 0.0 for k, v in per_user_arr.items()}
    return EvalResult(means, eval_users, per_user_arr,
                      np.concatenate(tops) if keep_topk and tops else None)


# ------------------------------------------------------------------ reports by group
DEFAULT_USER_BINS = ((0, 3), (4, 5), (6, 10), (11, 20), (21, None))


def user_group_report(result: EvalResult, data: Dataset, bins=DEFAULT_USER_BINS,
                      keys=("recall@20", "ndcg@20")) -> list[dict]:
    """Metrics averaged per group of users by their number of training interactions."""
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
