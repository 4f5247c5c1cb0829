"""MMHCL's own NDCG, offered as the extra metric ``ndcg_mmhcl@k``.

The reference code (``Xu107/MMHCL`` ``codes/utility/metrics.py`` ``ndcg_at_k``, copied from
``CRIPAC-DIG/LATTICE``; called by ``codes/utility/batch_test.py`` ``get_performance``) divides the DCG of the ranked list by the
DCG of the *retrieved* list re-sorted, not by the ideal DCG over the held-out items:

    DCG@k  = Σ_{p≤k} r_p / log2(p+1)
    IDCG@k = Σ_{j=1}^{min(k, hits@L)} 1 / log2(j+1),   L = the retrieved list length

with L = max(Ks) = 20 in all of MMHCL's runs, and 0 when nothing is retrieved. It is never lower
than the standard NDCG and equals it when every user has one held-out item (TikTok).
Example: two held-out items, one hit at rank 3 → 0.5 (standard: ≈ 0.307).
"""
from __future__ import annotations

import torch

#: MMHCL's retrieved-list length (max of its Ks = [10, 20])
MMHCL_LIST_LENGTH = 20


def ndcg_mmhcl(hits: torch.Tensor, n_pos: torch.Tensor | None, k: int,
               list_length: int = MMHCL_LIST_LENGTH) -> torch.Tensor:
    """Per-user MMHCL NDCG@k.

    Args:
        hits: (B, K_max) bool/float, 1 where rank p (1-based column p−1) holds a held-out item.
        n_pos: (B,) number of held-out items per user (unused by this variant; kept for the
            common metric signature).
        k: cutoff.
        list_length: length L of the retrieved list whose hits define the IDCG (MMHCL: 20).
            For k > L the list is taken as k long. Clipped to K_max.
    Returns:
        (B,) float64 tensor.
    """
    hits = hits.to(torch.float64)
    k_max = hits.shape[1]
    if k > k_max:
        raise ValueError(f"cutoff {k} exceeds the ranked list length {k_max}")
    length = min(max(list_length, k), k_max)
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    dcg = (hits[:, :k] * discount[:k]).sum(1)
    n_ret = hits[:, :length].sum(1).clamp(max=k).long()       # min(k, hits@L)
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64, device=hits.device),
                       discount.cumsum(0)])                   # ideal[m] = Σ_{j≤m} 1/log2(j+1)
    idcg = ideal[n_ret]
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
