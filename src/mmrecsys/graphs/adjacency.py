"""User–item bipartite adjacency and its normalisations (protocol §5.0)."""
from __future__ import annotations

import warnings

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


def _csr_tensor(m: sp.spmatrix) -> torch.Tensor:
    m = m.tocsr().astype(np.float32)
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data), m.shape, check_invariants=False)


class _SpMM(torch.autograd.Function):
    """y = A x with a precomputed CSR Aᵀ for the backward pass (grad_x = Aᵀ grad_y)."""

    @staticmethod
    def forward(ctx, a, a_t, x):
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.a_t @ grad.contiguous()


class SparseGraph(torch.nn.Module):
    """A fixed sparse operator (e.g. a normalised adjacency) stored as CSR for fast products.

    ``graph(x)`` computes A x, differentiable in x; moves with ``.to(device)``; not saved in
    state dicts (it is rebuilt from the data). CSR products are several times faster than
    ``torch.sparse.mm`` on COO tensors on CPU.
    """

    def __init__(self, m: sp.spmatrix, symmetric: bool | None = None):
        super().__init__()
        m = m.tocsr()
        if symmetric is None:
            symmetric = m.shape[0] == m.shape[1] and abs(m - m.T).sum() < 1e-6 * max(1.0, abs(m).sum())
        self.symmetric = bool(symmetric)
        self.shape = m.shape
        self.nnz = m.nnz
        self.register_buffer("a", _csr_tensor(m), persistent=False)
        if not self.symmetric:
            self.register_buffer("a_t", _csr_tensor(m.T), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_t = self.a if self.symmetric else self.a_t
        if x.requires_grad:
            return _SpMM.apply(self.a, a_t, x)
        return self.a @ x

    def t(self, x: torch.Tensor) -> torch.Tensor:
        """Aᵀ x, differentiable in x."""
        a_t = self.a if self.symmetric else self.a_t
        if x.requires_grad:
            return _SpMM.apply(a_t, self.a, x)
        return a_t @ x

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, nnz={self.nnz}, symmetric={self.symmetric}"
