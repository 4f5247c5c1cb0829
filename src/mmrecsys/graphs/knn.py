"""Exact top-k similarity neighbourhoods in bounded memory: never an N×N matrix.

The one top-k search of the package (MMHCL's item kNN hypergraph, REARM's user and item
similarity graphs, the synthetic data checks), in two schedules with the same neighbour sets:

* rows (default): a (chunk, N) block of full similarity rows at a time, each row through one
  ``torch.topk``: exactly the reference codes' ``torch.topk`` over the dense similarity matrix,
  ties included (``Xu107/MMHCL`` ``codes/utility/load_data.py``, ``build_knn_normalized_graph``;
  ``MrShouxingMa/REARM`` ``utils/helper.py``, ``get_knn_adj_mat``). Memory chunk·N floats.
* tiles: both similarities offered are symmetric, so only the (chunk × chunk) tiles on and
  above the diagonal are computed; each tile updates the running top-k of its rows and,
  transposed, of its columns. Half the products, memory O(chunk² + N·k); exactly tied
  similarities may resolve to other neighbours than a single ``torch.topk`` would pick.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def knn_graph(features, k: int, *, chunk_size: int = 2048, metric: str = "cosine",
              exclude_self: bool = False, tiles: bool = False, device=None):
    """Top-k neighbours of every row of ``features`` by cosine (or dot) similarity.

    Args:
        features: (N, d) array or tensor.
        k: neighbours per row (clipped to N, or N − 1 with ``exclude_self``).
        chunk_size: rows (or tile side, with ``tiles``) of the similarity matrix computed at a
            time; it bounds memory and does not change the neighbours.
        metric: ``"cosine"`` (rows L2-normalised first, all-zero rows have similarity 0 to
            everything) or ``"dot"``.
        exclude_self: drop the row itself from its candidates.
        tiles: compute only the tiles on and above the diagonal (half the products; see the
            module docstring for ties). Default ``False``.
        device: where to compute (default: where ``features`` are, CPU for arrays).
    Returns:
        (indices, values): int64 (N, k) and float32 (N, k) tensors, neighbours by decreasing
        similarity.
    """
    x = features if torch.is_tensor(features) else torch.as_tensor(np.asarray(features))
    x = x.to(device=device, dtype=torch.float32)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    elif metric != "dot":
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'dot'")
    n = x.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    block = max(1, int(chunk_size))
    if not tiles:
        idx_out = torch.empty((n, k), dtype=torch.int64, device=x.device)
        val_out = torch.empty((n, k), dtype=torch.float32, device=x.device)
        with torch.no_grad():
            for start in range(0, n, block):
                stop = min(start + block, n)
                sim = x[start:stop] @ x.T                               # (chunk, N)
                if exclude_self:
                    r = torch.arange(stop - start, device=x.device)
                    sim[r, r + start] = -float("inf")
                val_out[start:stop], idx_out[start:stop] = torch.topk(sim, k, dim=1)
        return idx_out, val_out
    best_v = torch.full((n, k), -float("inf"), device=x.device)
    best_i = torch.zeros((n, k), dtype=torch.int64, device=x.device)

    def merge(r0, r1, sims, c0):
        cand_v = torch.cat([best_v[r0:r1], sims], 1)
        cand_i = torch.cat([best_i[r0:r1],
                            torch.arange(c0, c0 + sims.shape[1], device=x.device).expand(r1 - r0, -1)], 1)
        v, j = torch.topk(cand_v, k, dim=1)
        best_v[r0:r1] = v
        best_i[r0:r1] = torch.gather(cand_i, 1, j)

    with torch.no_grad():
        for a0 in range(0, n, block):
            a1 = min(a0 + block, n)
            for b0 in range(a0, n, block):
                b1 = min(b0 + block, n)
                sims = x[a0:a1] @ x[b0:b1].T
                if b0 == a0 and exclude_self:
                    r = torch.arange(a1 - a0, device=x.device)
                    sims[r, r] = -float("inf")
                merge(a0, a1, sims, b0)
                if b0 != a0:
                    merge(b0, b1, sims.T.contiguous(), a0)
    return best_i, best_v


def knn_to_csr(indices, values, n_cols: int | None = None) -> sp.csr_matrix:
    """(N, k) neighbour lists -> CSR (N, n_cols) with the given values."""
    indices = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
    values = np.asarray(values.cpu() if torch.is_tensor(values) else values, dtype=np.float32)
    n, k = indices.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    m = sp.csr_matrix((values.ravel(), indices.ravel(), indptr), shape=(n, n_cols or n))
    m.sort_indices()
    return m
