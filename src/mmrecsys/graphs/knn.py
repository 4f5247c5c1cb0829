"""Memory-bounded top-k similarity graphs: never an N×N matrix.

Rows are processed in chunks: a (chunk, N) block of similarities lives at a time, and only
its top-k survives. Peak extra memory is chunk × N floats.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def knn_graph(features, k: int, *, chunk_size: int = 2048, metric: str = "cosine",
              exclude_self: bool = False, device=None):
    """Top-k neighbours of every row of ``features`` by cosine (or dot) similarity.

    Args:
        features: (N, d) array or tensor.
        k: neighbours per row (clipped to N, or N-1 with ``exclude_self``).
        metric: ``"cosine"`` (rows L2-normalised first) or ``"dot"``.
        exclude_self: drop the row itself from its candidates.
    Returns:
        (indices, values): int64 (N, k) and float32 (N, k) tensors, neighbours by decreasing
        similarity (ties in torch.topk's order).
    """
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    x = x.to(device=device, dtype=torch.float32)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    elif metric != "dot":
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'dot'")
    n = x.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    idx_out = torch.empty((n, k), dtype=torch.int64, device=x.device)
    val_out = torch.empty((n, k), dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            sim = x[start:stop] @ x.T  # (chunk, N)
            if exclude_self:
                r = torch.arange(stop - start, device=x.device)
                sim[r, r + start] = -float("inf")
            v, i = torch.topk(sim, k, dim=1)
            idx_out[start:stop] = i
            val_out[start:stop] = v
    return idx_out, val_out


def knn_to_csr(indices, values, n_cols: int | None = None) -> sp.csr_matrix:
    """(N, k) neighbour lists -> CSR (N, n_cols) with the given values."""
    indices = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
    values = np.asarray(values.cpu() if torch.is_tensor(values) else values, dtype=np.float32)
    n, k = indices.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    m = sp.csr_matrix((values.ravel(), indices.ravel(), indptr), shape=(n, n_cols or n))
    m.sort_indices()
    return m
