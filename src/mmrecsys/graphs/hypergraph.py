"""Hypergraph operators built sparse and in bounded memory (MMHCL's u2u and i2i hypergraphs).

Xu et al., "MMHCL: Multi-Modal Hypergraph Contrastive Learning for Recommendation", ACM TOMM
2025 (arXiv:2504.16576), Sec. 3 (hypergraph construction); official code ``Xu107/MMHCL``
``codes/utility/load_data.py`` (``get_U2U_mat``, ``get_I2I_Hypergrah_mat``,
``get_I2I_Hypergraph_mul_mat``, ``build_sim``, ``build_knn_normalized_graph``), which builds both
operators as dense matrices.

Two node-to-node operators of MMHCL, both of the form "incidence times its transpose, then a
degree normalisation", are kept in *factored* form: the incidence matrix ``H`` (nodes ×
hyperedges) is stored, never the node×node product. Applying the operator costs two sparse
products with nnz(H) entries each, and no N×N matrix (dense or sparse) is ever formed.

u2u (users are nodes, items are hyperedges; R the binary train matrix):
    C = R Rᵀ with the diagonal set to 0,   G_uu = D_C⁻¹ C,   (D_C)_u = Σ_{i∈N(u)} deg(i) − |N(u)|
    G_uu h = D_C⁻¹ (R (Rᵀ h) − diag(|N(u)|) h)                     (row-stochastic, inf → 0)

i2i (items are nodes, a hyperedge is a (modality m, anchor item j) pair):
    Ĩ_m[i, j] = 1  iff  j is among the K largest cosine similarities of row i (self included,
                       torch.topk order on ties) and S_m[i, j] > 0
    H = [Ĩ_1 | … | Ĩ_M]  (n_i × M·n_i),   P = H Hᵀ (diagonal kept),   D_P = H (Hᵀ 1)
    G_ii h = D_P^{-1/2} H (Hᵀ (D_P^{-1/2} h))                       (symmetric, inf → 0)

The top-K search (:func:`mmrecsys.graphs.knn.knn_graph`) computes one (chunk, chunk) tile of
similarities at a time, so peak extra memory is chunk² floats. ``*_matrix`` functions materialise the operators as scipy
sparse matrices for tests and for other models that want them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .adjacency import SparseGraph, binarize, inv_power
from .knn import knn_graph

HYPERGRAPH_VERSION = 1


# ---------------------------------------------------------------------------- incidence
def knn_incidence(features, k: int, *, chunk_size: int = 2048, positive_only: bool = True,
                  device=None) -> sp.csr_matrix:
    """Binary top-K cosine neighbourhood Ĩ (n × n) of the rows of ``features``.

    Row i marks the K items with the largest cosine similarity to i over the whole row, the
    diagonal included (so i is normally its own neighbour; exact duplicates can tie with it,
    and ``torch.topk`` decides the tie). With ``positive_only`` entries with similarity ≤ 0 are
    dropped (the code's ``adj[adj > 0] = 1`` after its top-K scatter). All-zero
    feature rows have similarity 0 to everything (eps-guarded normalisation) and get no
    neighbour at all. Memory: one (chunk_size, chunk_size) tile of similarities at a time.
    """
    idx, val = knn_graph(features, k, chunk_size=chunk_size, metric="cosine",
                         exclude_self=False, device=device)
    idx = idx.cpu().numpy()
    val = val.cpu().numpy()
    n, kk = idx.shape
    keep = val > 0 if positive_only else np.ones_like(val, dtype=bool)
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)[keep.ravel()]
    cols = idx.ravel()[keep.ravel()]
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
    m.sort_indices()
    return m


def multimodal_knn_incidence(features: list, k: int, *, chunk_size: int = 2048,
                             device=None) -> sp.csr_matrix:
    """H = [Ĩ_1 | … | Ĩ_M], shape (n, M·n): one block of columns per modality."""
    if not features:
        raise ValueError("multimodal_knn_incidence needs at least one feature matrix")
    n = features[0].shape[0]
    for x in features:
        if x.shape[0] != n:
            raise ValueError(f"feature matrices disagree on the number of rows: {x.shape[0]} vs {n}")
    blocks = [knn_incidence(x, k, chunk_size=chunk_size, device=device) for x in features]
    return sp.hstack(blocks, format="csr", dtype=np.float32)


# ---------------------------------------------------------------------------- operators
@dataclass
class FactoredHypergraph:
    """``G x = left ⊙ (H (Hᵀ (right ⊙ x)) − self_weight ⊙ (right ⊙ x))`` (vectors per row).

    ``incidence`` is H (n_nodes × n_edges, scipy CSR); ``left``/``right`` are per-node scales
    (``right=None``: 1); ``self_weight`` removes the diagonal of H Hᵀ (``None``: kept).
    """
    incidence: sp.csr_matrix
    left: np.ndarray
    right: np.ndarray | None = None
    self_weight: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return self.incidence.shape[0]

    def matrix(self) -> sp.csr_matrix:
        """The operator as a sparse node×node matrix (for tests and small graphs)."""
        h = self.incidence
        p = (h @ h.T).tocsr().astype(np.float32)
        if self.self_weight is not None:
            p = p - sp.diags(self.self_weight.astype(np.float32))
            p = sp.csr_matrix(p)
            p.eliminate_zeros()
        right = self.right if self.right is not None else np.ones(self.n_nodes, np.float32)
        out = (sp.diags(self.left) @ p @ sp.diags(right)).tocsr()
        out.eliminate_zeros()
        out.sort_indices()
        return out

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        y = x if self.right is None else self.right[:, None] * x
        z = self.incidence @ (self.incidence.T @ y)
        if self.self_weight is not None:
            z = z - self.self_weight[:, None] * y
        return self.left[:, None] * z


def u2u_hypergraph(train: sp.spmatrix) -> FactoredHypergraph:
    """u2u operator G_uu = D_C⁻¹ (R Rᵀ − diag) in factored form (``get_U2U_mat``, norm 'rw').

    (D_C)_u = Σ_{i∈N(u)} deg(i) − |N(u)| is the row sum of C with its diagonal removed; a user
    sharing no item with anyone gets an all-zero row.
    """
    r = binarize(train)
    user_deg = np.asarray(r.sum(axis=1)).ravel()
    item_deg = np.asarray(r.sum(axis=0)).ravel()
    rowsum = r @ item_deg - user_deg
    return FactoredHypergraph(r, left=inv_power(rowsum), right=None,
                              self_weight=user_deg.astype(np.float32))


def i2i_hypergraph(incidence: sp.spmatrix) -> FactoredHypergraph:
    """i2i operator G_ii = D_P^{-1/2} H Hᵀ D_P^{-1/2} with D_P = H (Hᵀ 1) (norm 'sym' of
    ``get_I2I_Hypergraph_mul_mat``; the inverse square root computed in float64)."""
    h = binarize(incidence)
    d_p = h @ np.asarray(h.sum(axis=0)).ravel()
    dinv = inv_power(d_p.astype(np.float64), 0.5).astype(np.float32)
    return FactoredHypergraph(h, left=dinv, right=dinv, self_weight=None)


def u2u_matrix(train: sp.spmatrix) -> sp.csr_matrix:
    """G_uu as a sparse (n_u × n_u) matrix (for tests; use the factored form to train)."""
    return u2u_hypergraph(train).matrix()


def i2i_matrix(features: list, k: int, chunk_size: int = 2048) -> sp.csr_matrix:
    """G_ii as a sparse (n_i × n_i) matrix from the modality feature matrices."""
    return i2i_hypergraph(multimodal_knn_incidence(features, k, chunk_size=chunk_size)).matrix()


# ---------------------------------------------------------------------------- torch side
class TorchHypergraph(torch.nn.Module):
    """A :class:`FactoredHypergraph` as torch buffers; ``self(x)`` applies it (its powers:
    :func:`mmrecsys.models.layers.power`). Buffers are non-persistent so ``.to(device)`` moves
    them and state dicts stay small.

    Args:
        g: the operator in factored form. No default.
    """

    def __init__(self, g: FactoredHypergraph):
        super().__init__()
        self.incidence = SparseGraph(g.incidence, symmetric=False)  # H, with Hᵀ kept for .t()
        self.register_buffer("left", torch.from_numpy(np.asarray(g.left, np.float32))[:, None],
                             persistent=False)
        self.has_right = g.right is not None
        self.has_self = g.self_weight is not None
        right = g.right if g.right is not None else np.ones(1, np.float32)
        sw = g.self_weight if g.self_weight is not None else np.zeros(1, np.float32)
        self.register_buffer("right", torch.from_numpy(np.asarray(right, np.float32))[:, None],
                             persistent=False)
        self.register_buffer("self_weight", torch.from_numpy(np.asarray(sw, np.float32))[:, None],
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.right * x if self.has_right else x
        z = self.incidence(self.incidence.t(y))
        if self.has_self:
            z = z - self.self_weight * y
        return self.left * z
