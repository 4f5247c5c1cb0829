"""User–item bipartite adjacency and its normalisations (protocol §5.0)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """A = [[0, R], [Rᵀ, 0]], binary, no self-loops; shape (n_users + n_items)²."""
    r = train.tocsr().astype(np.float32)
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def sym_normalize(adj: sp.spmatrix, eps: float = 1e-7, add_self_loops: bool = False) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2} with D_vv = rowsum(A)_v + eps (MMRec's LightGCN normalisation)."""
    a = adj.tocsr().astype(np.float32)
    if add_self_loops:
        a = a + sp.identity(a.shape[0], dtype=np.float32, format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel() + eps
    d = sp.diags(np.power(deg, -0.5).astype(np.float32))
    out = (d @ a @ d).tocsr()
    out.sort_indices()
    return out


def row_normalize(adj: sp.spmatrix, eps: float = 0.0) -> sp.csr_matrix:
    """D^{-1} A (rows with zero sum stay zero)."""
    a = adj.tocsr().astype(np.float32)
    deg = np.asarray(a.sum(axis=1)).ravel() + eps
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    return (sp.diags(inv.astype(np.float32)) @ a).tocsr()


def to_torch_sparse(m: sp.spmatrix, device=None) -> torch.Tensor:
    """scipy sparse -> coalesced torch sparse COO float32 tensor."""
    c = m.tocoo()
    idx = torch.from_numpy(np.vstack([c.row, c.col]).astype(np.int64))
    val = torch.from_numpy(c.data.astype(np.float32))
    t = torch.sparse_coo_tensor(idx, val, c.shape, check_invariants=False).coalesce()
    return t.to(device) if device is not None else t
