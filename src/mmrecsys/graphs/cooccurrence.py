"""Co-occurrence and similarity graphs, sparse and chunked (the building blocks of REARM's
homographs; REARM assembles them in :mod:`mmrecsys.models.rearm`).

Ma et al., "Refining Contrastive Learning and Homography Relations for Multi-Modal
Recommendation", ACM MM 2025 (arXiv:2508.13745), Sec. 4.2; official code ``MrShouxingMa/REARM``
``utils/helper.py`` (``creat_co_occur_matrix``, ``creat_dict_graph``, ``topk_sample``,
``get_knn_adj_mat``) and ``utils/data_loader.py`` (``Load_dataset``).

Never a dense users×users or items×items matrix, never a Python loop over pairs:

* co-occurrence counts C = X Xᵀ (X = R for users, Rᵀ for items) are sparse products of a
  block of rows against Xᵀ; the diagonal is dropped and each row keeps its top-k at once
  (vectorised sort by (row, −count, column)), so at most one (chunk, n) sparse block lives;
* similarity graphs use the package's one exact top-k search,
  :func:`mmrecsys.graphs.knn.knn_graph`, on symmetric tiles (half the products).

Per-row rules of the sparsified co-occurrence graph Ĉ (the code's ``topk_sample``), nb(a) =
{b ≠ a : C_ab > 0} sorted by count descending, ties by ascending index:

* case A, |nb(a)| ≥ k: the first k neighbours, raw value C_ab;
* case B, 0 < |nb(a)| < k: all of nb(a) plus k − |nb(a)| slots drawn uniformly WITH replacement
  from nb(a) (numpy Generator seeded by ``seed``; the draws are taken in row order, so they do
  not depend on the chunk size), each carrying its neighbour's count; repeated columns add up;
* case C, nb(a) = ∅: the k most popular nodes of the same type (stable descending sort of the
  popularity), raw value popularity / (sum over the k slots);

and the weights are the softmax of the raw values over the row's k slots: every row sums to 1.

The similarity graph of a modality keeps the k largest cosine values of every row (itself
included) scaled by 1/k (the code's D^{-1/2} S_k D^{-1/2} with D = k, ``get_knn_adj_mat``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .adjacency import binarize, inv_power
from .knn import knn_graph, knn_to_csr



# ----------------------------------------------------------------------------- co-occurrence
def cooccurrence_topk(x: sp.spmatrix, k: int, popularity: np.ndarray, seed: int = 2025,
                      chunk_size: int = 4096, max_neighbours: int = 200):
    """Slots of the sparsified co-occurrence graph of the rows of ``x`` (rules above).

    Args:
        x: (n, m) binary sparse matrix; C = x xᵀ with its diagonal dropped.
        k: slots per row.
        popularity: (n,) counts ranking the fallback nodes of empty rows (case C).
        seed: seed of the padding draws (case B).
        chunk_size: rows of C computed at a time.
        max_neighbours: the code keeps at most this many neighbours (no effect while k ≤ it).
    Returns:
        (cols, raw, case): int64 (n, k) slot columns, float64 (n, k) raw values, and int8 (n,)
        the case of each row (0 = A, 1 = B, 2 = C). With k > n (tiny inputs) empty rows get
        only n slots; their extra slots repeat the most popular node with raw value −inf
        (zero weight).
    """
    x = binarize(x)
    n = x.shape[0]
    xt = x.T.tocsr()
    rng = np.random.default_rng(seed)
    cols = np.empty((n, k), dtype=np.int64)
    raw = np.empty((n, k), dtype=np.float64)
    case = np.empty(n, dtype=np.int8)
    popularity = np.asarray(popularity, dtype=np.float64)
    popular = np.argsort(-popularity, kind="stable")[:k]
    pop_raw = popularity[popular]
    pop_raw = pop_raw / pop_raw.sum() if pop_raw.sum() > 0 else np.full(len(popular), 1.0 / len(popular))
    if len(popular) < k:  # only with k > n
        popular = np.concatenate([popular, np.full(k - len(popular), popular[0])])
        pop_raw = np.concatenate([pop_raw, np.full(k - len(pop_raw), -np.inf)])
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        blk = (x[s:e] @ xt).tocoo()
        r, c, v = blk.row.astype(np.int64), blk.col.astype(np.int64), blk.data.astype(np.float64)
        keep = (r + s != c) & (v > 0)
        r, c, v = r[keep], c[keep], v[keep]
        order = np.lexsort((c, -v, r))                    # by row, count desc, column asc
        r, c, v = r[order], c[order], v[order]
        nnz = np.minimum(np.bincount(r, minlength=e - s), max_neighbours)
        first = np.zeros(e - s + 1, dtype=np.int64)
        first[1:] = np.cumsum(np.bincount(r, minlength=e - s))
        rank = np.arange(len(r)) - first[r]
        take = rank < np.minimum(nnz[r], k)
        rows = r[take] + s
        cols[rows, rank[take]] = c[take]
        raw[rows, rank[take]] = v[take]
        # case B: pad with draws (with replacement) among the row's neighbours
        part = np.flatnonzero((nnz > 0) & (nnz < k))
        if len(part):
            n_pad = k - nnz[part]
            prow = np.repeat(part, n_pad)                 # chunk-local row of every pad slot
            slot = np.arange(n_pad.sum()) - np.repeat(np.cumsum(n_pad) - n_pad, n_pad) \
                + np.repeat(nnz[part], n_pad)
            pick = first[prow] + (rng.random(len(prow)) * nnz[prow]).astype(np.int64)
            cols[prow + s, slot] = c[pick]
            raw[prow + s, slot] = v[pick]
        empty = np.flatnonzero(nnz == 0)
        cols[empty + s] = popular
        raw[empty + s] = pop_raw
        case[s:e] = np.where(nnz >= k, 0, np.where(nnz > 0, 1, 2))
    return cols, raw, case


def softmax_rows(raw: np.ndarray) -> np.ndarray:
    z = raw - raw.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def slots_to_csr(cols: np.ndarray, weights: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """(n, k) slots -> CSR (n, n_cols); repeated columns of a row are summed."""
    n, k = cols.shape
    m = sp.csr_matrix((weights.ravel().astype(np.float32), cols.ravel(),
                       np.arange(0, n * k + 1, k, dtype=np.int64)), shape=(n, n_cols))
    m.sum_duplicates()
    m.sort_indices()
    return m


def cooccurrence_graph(x: sp.spmatrix, k: int, popularity: np.ndarray, seed: int = 2025,
                       chunk_size: int = 4096) -> sp.csr_matrix:
    """Ĉ: row-stochastic (n, n) CSR, softmax over each row's k slots."""
    cols, raw, _ = cooccurrence_topk(x, k, popularity, seed, chunk_size)
    return slots_to_csr(cols, softmax_rows(raw), x.shape[0])


def user_cooccurrence_graph(train: sp.spmatrix, k: int, seed: int = 2025,
                            popularity: np.ndarray | None = None, chunk_size: int = 4096):
    """Ĉ^U from C^U = R Rᵀ; fallback popularity = training interactions per user by default."""
    r = sp.csr_matrix(train)
    if popularity is None:
        popularity = np.diff(r.indptr)
    return cooccurrence_graph(r, k, popularity, seed, chunk_size)


def item_cooccurrence_graph(train: sp.spmatrix, k: int, seed: int = 2025, chunk_size: int = 4096):
    """Ĉ^I from C^I = Rᵀ R; fallback popularity = training users per item."""
    rt = sp.csr_matrix(train).T.tocsr()
    return cooccurrence_graph(rt, k, np.diff(rt.indptr), seed, chunk_size)


# ----------------------------------------------------------------------------- similarity
def user_interest_features(train: sp.spmatrix, features: np.ndarray) -> np.ndarray:
    """x_u = (1/deg(u)) Σ_i R_ui x_i (users without training items get 0), float32 (U, D)."""
    r = binarize(train)
    inv = inv_power(np.diff(r.indptr).astype(np.float32))
    return np.asarray(sp.diags(inv) @ (r @ np.asarray(features, dtype=np.float32)), dtype=np.float32)


def similarity_graph(features, k: int, chunk_size: int = 4096, device=None) -> sp.csr_matrix:
    """S_k / k: the k largest cosine values of every row (itself included), scaled by 1/k.

    Computed on symmetric tiles (:func:`~mmrecsys.graphs.knn.knn_graph` with ``tiles=True``).
    """
    idx, val = knn_graph(features, k, chunk_size=chunk_size, metric="cosine", tiles=True,
                         device=device)
    kk = idx.shape[1]
    return knn_to_csr(idx.cpu().numpy(), (val / kk).cpu().numpy(), n_cols=idx.shape[0])


def weighted_sum(terms) -> sp.csr_matrix:
    """Σ w·G over ``terms`` = [(w, G), ...] as float32 CSR, left to right; terms with weight 0
    are skipped (their graph may be None). At least one weight must be nonzero."""
    parts = [w * g for w, g in terms if w != 0]
    if not parts:
        raise ValueError("every graph in the weighted sum has weight 0")
    g = parts[0]
    for p in parts[1:]:
        g = g + p
    g = sp.csr_matrix(g, dtype=np.float32)
    g.sum_duplicates()
    g.sort_indices()
    return g
