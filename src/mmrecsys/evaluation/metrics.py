"""Ranking metrics of MMRec (``enoche/MMRec`` ``src/utils/metrics.py``: recall, NDCG, precision,
MAP at k), vectorised over users.

Inputs for a block of B users: ``hits`` (B, K_max) — 1 where rank p holds a held-out item —
and ``n_pos`` (B,) — the number of held-out items of the user (n_u). All metrics are per user;
averaging is done by the caller (user-averaged "macro" means, as MMRec).

* Recall@k    = Σ_{p≤k} h_p / n_u                       (denominator n_u, not min(k, n_u))
* Precision@k = Σ_{p≤k} h_p / k
* NDCG@k      = Σ_{p≤k} h_p / log2(p+1)  /  Σ_{p=1}^{min(k,n_u)} 1/log2(p+1)
* MAP@k       = Σ_{p≤k} h_p · Prec@p / min(k, n_u)
"""
from __future__ import annotations

import torch

METRICS = ("recall", "ndcg", "precision", "map")


def per_user_metrics(hits: torch.Tensor, n_pos: torch.Tensor, topk, metrics=METRICS,
                     extra=()) -> dict[str, torch.Tensor]:
    """Per-user metric values for every cutoff in ``topk``: {"recall@20": (B,) tensor, ...}."""
    hits = hits.to(torch.float64)
    n_pos = n_pos.to(torch.float64)
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    cum_dcg = (hits * discount).cumsum(1)
    ideal = discount.cumsum(0)  # ideal[m-1] = Σ_{p≤m} 1/log2(p+1)
    cum_ap = (hits * cum_hits / ranks).cumsum(1)
    out = {}
    for k in topk:
        if k > k_max:
            raise ValueError(f"cutoff {k} exceeds the ranked list length {k_max}")
        h = cum_hits[:, k - 1]
        denom = torch.clamp(torch.minimum(n_pos, torch.tensor(float(k), dtype=torch.float64)), min=1)
        for m in metrics:
            if m == "recall":
                out[f"recall@{k}"] = h / n_pos.clamp(min=1)
            elif m == "precision":
                out[f"precision@{k}"] = h / k
            elif m == "ndcg":
                out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / ideal[denom.long() - 1]
            elif m == "map":
                out[f"map@{k}"] = cum_ap[:, k - 1] / denom
            else:
                raise ValueError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
        for name in extra:
            out[f"{name}@{k}"] = extra_metric(name)(hits, n_pos, k).to(torch.float64)
    return out


def extra_metric(name: str):
    """Optional non-standard metrics, by name (e.g. ``ndcg_mmhcl``: MMHCL's own NDCG)."""
    if name == "ndcg_mmhcl":
        from .metrics_mmhcl import ndcg_mmhcl
        return ndcg_mmhcl
    raise ValueError(f"unknown extra metric {name!r}; known: ndcg_mmhcl")
