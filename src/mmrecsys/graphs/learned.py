"""Sparse graphs whose edge weights are differentiable functions of the parameters.

LATTICE (Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021,
Eqs. 1–5) learns its item–item graph from projected item features: a top-k cosine kNN graph of
the *learned* features, normalised and mixed with the fixed kNN graph of the raw features,
with gradients flowing into the projections through the kept similarities. The reference codes
(``CRIPAC-DIG/LATTICE`` ``codes/Models.py``; ``enoche/MMRec`` ``src/models/lattice.py``) hold it as
a dense N×N matrix (``torch.topk`` + ``scatter_`` into ``zeros_like``, ``torch.diagflat`` degree
scaling, ``torch.mm``), which does not fit in memory for large catalogues.

:class:`EdgeList` holds such a graph as (rows, cols, values) with ``values`` a tensor that may
require grad; every operation the reference applies to its dense matrix has an exact sparse
counterpart here, with the same gradients (the dense matrix's zeros carry no gradient):

* :meth:`EdgeList.knn`: the top-k selection runs without gradient in bounded memory
  (:func:`~mmrecsys.graphs.knn.knn_graph`, one (chunk, N) block of similarities at a time, the
  reference's ``torch.topk`` neighbour sets and tie order); the kept similarities are then
  recomputed as row-wise dot products of the normalised features, so gradients flow through
  them exactly as through ``torch.topk``'s values;
* :meth:`EdgeList.add` (weighted sums of graphs, union of the patterns), :meth:`scale`,
  :meth:`sym_normalize` (D^{-1/2} A D^{-1/2} with row sums, gradient through the degrees too);
* :meth:`EdgeList.dropout` (edge dropout, a fresh mask per call);
* :meth:`EdgeList.__call__`: A x, differentiable in the values and in x, in bounded memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .knn import knn_graph

#: entries × width processed at a time by the products (bounds their temporary memory)
_CHUNK_ELEMS = 1 << 22


class _EdgeSpMM(torch.autograd.Function):
    """y = A x for A given by (rows, cols, values): gradients to the values and to x."""

    @staticmethod
    def forward(ctx, values, x, rows, cols, n_rows):
        out = x.new_zeros((n_rows, x.shape[1]))
        step = max(1, _CHUNK_ELEMS // max(1, x.shape[1]))
        for s in range(0, len(values), step):
            e = s + step
            out.index_add_(0, rows[s:e], x[cols[s:e]] * values[s:e, None])
        ctx.save_for_backward(values, x, rows, cols)
        return out

    @staticmethod
    def backward(ctx, grad):
        values, x, rows, cols = ctx.saved_tensors
        grad = grad.contiguous()
        step = max(1, _CHUNK_ELEMS // max(1, x.shape[1]))
        g_values = g_x = None
        if ctx.needs_input_grad[0]:
            g_values = torch.empty_like(values)
            for s in range(0, len(values), step):
                e = s + step
                g_values[s:e] = (grad[rows[s:e]] * x[cols[s:e]]).sum(1)
        if ctx.needs_input_grad[1]:
            g_x = torch.zeros_like(x)
            for s in range(0, len(values), step):
                e = s + step
                g_x.index_add_(0, cols[s:e], grad[rows[s:e]] * values[s:e, None])
        return g_values, g_x, None, None, None


@dataclass
class EdgeList:
    """A sparse (n_rows, n_cols) matrix as edge lists; ``values`` may require grad.

    ``rows``/``cols``: int64 (nnz,) tensors; ``values``: float (nnz,). Results of :meth:`add`
    are coalesced (each (row, col) once, sorted by row then column).
    """
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scipy(cls, m: sp.spmatrix, device=None) -> "EdgeList":
        c = m.tocoo()
        return cls(torch.as_tensor(c.row.astype(np.int64), device=device),
                   torch.as_tensor(c.col.astype(np.int64), device=device),
                   torch.as_tensor(c.data.astype(np.float32), device=device), tuple(m.shape))

    @classmethod
    def knn(cls, features: torch.Tensor, k: int, chunk_size: int = 2048) -> "EdgeList":
        """Top-k cosine neighbours of every row (itself included), weighted by the similarity,
        differentiable in ``features`` through the kept similarities (the reference's
        ``build_knn_neighbourhood(build_sim(f), k)``: X̃ = X / ‖X‖ row-wise, no epsilon)."""
        n = features.shape[0]
        with torch.no_grad():
            idx, _ = knn_graph(features.detach(), k, chunk_size=chunk_size, metric="cosine",
                               backend="torch")
        xn = features / torch.linalg.vector_norm(features, dim=1, keepdim=True)
        vals = torch.bmm(xn[idx], xn.unsqueeze(2)).reshape(-1)        # (n·k,) = x̃_i · x̃_j
        rows = torch.arange(n, device=features.device).repeat_interleave(idx.shape[1])
        return cls(rows, idx.reshape(-1), vals, (n, n))

    # ------------------------------------------------------------------ algebra on the values
    def scale(self, w) -> "EdgeList":
        return EdgeList(self.rows, self.cols, self.values * w, self.shape)

    @staticmethod
    def add(*graphs: "EdgeList") -> "EdgeList":
        """Σ graphs: the union of the patterns, values summed where they share an entry."""
        shape = graphs[0].shape
        rows = torch.cat([g.rows for g in graphs])
        cols = torch.cat([g.cols for g in graphs])
        vals = torch.cat([g.values for g in graphs])
        keys, inv = torch.unique(rows * shape[1] + cols, sorted=True, return_inverse=True)
        out = vals.new_zeros(len(keys)).index_add(0, inv, vals)
        return EdgeList(keys // shape[1], keys % shape[1], out, shape)

    def sym_normalize(self) -> "EdgeList":
        """D^{-1/2} A D^{-1/2}, D = diag(row sums); rows with a sum ≤ 0 scale to 0 (the reference's
        ``compute_normalized_laplacian``: inf → 0; it gives NaN for a negative sum)."""
        deg = self.values.new_zeros(self.shape[0]).index_add(0, self.rows, self.values)
        pos = deg > 0
        d = torch.where(pos, deg.clamp_min(torch.finfo(deg.dtype).tiny).pow(-0.5),
                        torch.zeros_like(deg))
        return EdgeList(self.rows, self.cols, d[self.rows] * self.values * d[self.cols], self.shape)

    def dropout(self, keep: float, generator: torch.Generator | None = None) -> "EdgeList":
        """Edge dropout: each entry kept with probability ``keep`` and scaled by 1/keep, the
        rest removed (TensorFlow's ``tf.nn.dropout`` on a sparse matrix's values, as HCCF's
        code applies it to its normalised adjacency); ``keep = 1`` returns ``self``."""
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep={keep}: the share of edges kept, in (0, 1]")
        if keep == 1.0:
            return self
        mask = torch.rand(self.nnz, generator=generator, device=self.values.device) < keep
        return EdgeList(self.rows[mask], self.cols[mask], self.values[mask] / keep, self.shape)

    # ------------------------------------------------------------------ use
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A x (differentiable in the values and in x)."""
        return _EdgeSpMM.apply(self.values, x, self.rows, self.cols, self.shape[0])

    def detach(self) -> "EdgeList":
        return EdgeList(self.rows, self.cols, self.values.detach(), self.shape)

    def to_scipy(self) -> sp.csr_matrix:
        """The (detached) matrix as float32 CSR."""
        m = sp.csr_matrix((self.values.detach().cpu().numpy().astype(np.float32),
                           (self.rows.cpu().numpy(), self.cols.cpu().numpy())), shape=self.shape)
        m.sort_indices()
        return m

    def to_dense(self) -> torch.Tensor:
        """Dense copy (for tests on small graphs), differentiable in the values."""
        out = self.values.new_zeros(self.shape)
        return out.index_put((self.rows, self.cols), self.values, accumulate=True)
