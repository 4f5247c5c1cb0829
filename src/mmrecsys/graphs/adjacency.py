"""Sparse matrices shared by every model: binarising, zero-safe inverses, the user–item
bipartite adjacency and its normalisations, and :class:`SparseGraph`, the fixed operator every
model propagates with.

One implementation of each, as PyG's ``gcn_norm`` serves all of its convolutions: LightGCN's
normalised adjacency (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network
for Recommendation", SIGIR 2020, Eq. 7 in matrix form) is ``sym_normalize(bipartite_adjacency(R))``
for BPR-style models, LightGCN, LGMRec and REARM (MMRec's ``get_norm_adj_mat``, degrees + 1e-7,
``enoche/MMRec`` ``src/models/lightgcn.py``), and with ``eps=0`` for MMHCL (``Xu107/MMHCL``
``codes/utility/load_data.py``, ``get_UI_mat``: isolated nodes get zero rows).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def binarize(m: sp.spmatrix) -> sp.csr_matrix:
    """A float32 CSR copy of ``m`` with every stored nonzero set to 1 (explicit zeros dropped,
    indices sorted). Never modifies ``m``."""
    out = sp.csr_matrix(m, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    out.sort_indices()
    return out


def inv_power(x, power: float = 1.0, eps: float = 0.0) -> np.ndarray:
    """(x + eps)^(−power) elementwise, with 0 where x + eps ≤ 0 (the reference codes' inf → 0).

    Computed in the floating dtype of ``x`` (integers become float32): float32 and float64
    powers differ in the last bit, and each caller keeps the precision of the code it follows.
    ``power=1`` is a true division.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if eps:
        x = x + x.dtype.type(eps)
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = 1.0 / x[pos] if power == 1 else x[pos] ** -power
    return out


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """A = [[0, R], [Rᵀ, 0]], binary, no self-loops; shape (n_users + n_items)²."""
    r = binarize(train)
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def sym_normalize(adj: sp.spmatrix, eps: float = 1e-7, add_self_loops: bool = False) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2} with D_vv = rowsum(A)_v + eps, float32.

    ``eps=1e-7`` is MMRec's LightGCN normalisation (isolated nodes stay finite); ``eps=0``
    gives isolated nodes (degree 0) all-zero rows and columns (0^{-1/2} = 0, as MMHCL).
    """
    a = adj.tocsr().astype(np.float32)
    if add_self_loops:
        a = a + sp.identity(a.shape[0], dtype=np.float32, format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel()
    d = sp.diags(inv_power(deg, 0.5, eps).astype(np.float32))
    out = (d @ a @ d).tocsr()
    out.sort_indices()
    return out


def normalized_adjacency(train: sp.spmatrix, eps: float = 1e-7) -> sp.csr_matrix:
    """LightGCN's Â = D^{-1/2} [[0, R], [Rᵀ, 0]] D^{-1/2} of a (n_users, n_items) matrix R."""
    return sym_normalize(bipartite_adjacency(train), eps=eps)


def row_normalize(adj: sp.spmatrix, eps: float = 0.0) -> sp.csr_matrix:
    """D^{-1} A (rows with zero sum stay zero)."""
    a = adj.tocsr().astype(np.float32)
    deg = np.asarray(a.sum(axis=1)).ravel()
    return (sp.diags(inv_power(deg, 1.0, eps)) @ a).tocsr()


def elementwise_max(*mats: sp.spmatrix) -> sp.csr_matrix:
    """Max-pooled union of sparse matrices of one shape, float32 CSR.

    An entry stored in several matrices takes the largest of their values; an entry stored in
    only one keeps its value, *even when negative* (absent entries count as −∞, not 0; scipy's
    ``maximum`` would turn a lone negative entry into 0). SMORE's ``max_pool_fusion``
    (``kennethorq/SMORE`` ``src/models/smore.py``) of its image and text kNN graphs.
    """
    if not mats:
        raise ValueError("elementwise_max needs at least one matrix")
    shape = mats[0].shape
    if any(m.shape != shape for m in mats):
        raise ValueError(f"elementwise_max: shapes differ ({[m.shape for m in mats]})")
    coo = [m.tocoo() for m in mats]
    for c in coo:
        c.sum_duplicates()
    rows = np.concatenate([c.row.astype(np.int64) for c in coo])
    cols = np.concatenate([c.col.astype(np.int64) for c in coo])
    vals = np.concatenate([c.data.astype(np.float32) for c in coo])
    keys = rows * shape[1] + cols
    order = np.lexsort((-vals, keys))              # by key, the largest value first
    keys, vals = keys[order], vals[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, vals = keys[first], vals[first]
    out = sp.csr_matrix((vals, (keys // shape[1], keys % shape[1])), shape=shape, dtype=np.float32)
    out.sort_indices()
    return out


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


def csr_matmul(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A x for a CSR ``a`` and a dense ``x``, written straight into a fresh output.

    ``torch.addmm(empty, A, x, beta=0)`` (the input is ignored, NaNs included) is ``A @ x``
    without the zero-filled result and the copy that ``@`` adds on CPU (about 20% of a
    26,495 × 192 product); the same values.
    """
    return torch.addmm(x.new_empty((a.shape[0], x.shape[1])), a, x, beta=0)


class _SpMM(torch.autograd.Function):
    """y = A x with a precomputed CSR Aᵀ for the backward pass (grad_x = Aᵀ grad_y)."""

    @staticmethod
    def forward(ctx, a, a_t, x):
        ctx.a_t = a_t
        return csr_matmul(a, x)

    @staticmethod
    def backward(ctx, grad):
        return None, None, csr_matmul(ctx.a_t, grad.contiguous())


class SparseGraph(torch.nn.Module):
    """A fixed sparse operator (e.g. a normalised adjacency) stored as CSR for fast products.

    ``graph(x)`` computes A x, differentiable in x; moves with ``.to(device)``; not saved in
    state dicts (it is rebuilt from the data). CSR products are several times faster than
    ``torch.sparse.mm`` on COO tensors on CPU.

    Args:
        m: the operator, any scipy sparse matrix (stored as float32 CSR).
        symmetric: whether A = Aᵀ, so the backward pass reuses A instead of storing Aᵀ;
            ``None`` checks it. (default: ``None``)
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
        return csr_matmul(self.a, x)

    def t(self, x: torch.Tensor) -> torch.Tensor:
        """Aᵀ x, differentiable in x."""
        a_t = self.a if self.symmetric else self.a_t
        if x.requires_grad:
            return _SpMM.apply(a_t, self.a, x)
        return csr_matmul(a_t, x)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, nnz={self.nnz}, symmetric={self.symmetric}"
