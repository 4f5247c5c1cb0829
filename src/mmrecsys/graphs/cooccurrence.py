"""Co-occurrence and similarity homographs (REARM, spec/rearm.md §2), sparse and chunked.

Never a dense users×users or items×items matrix, never a Python loop over pairs:

* co-occurrence counts C = X Xᵀ (X = R for users, Rᵀ for items) are sparse products of a
  block of rows against Xᵀ; the diagonal is dropped and each row keeps its top-k at once
  (vectorised sort by (row, −count, column)), so at most one (chunk, n) sparse block lives;
* cosine kNN graphs are computed by blocks of the symmetric cosine matrix on and above the
  diagonal (:func:`cosine_topk`), each updating a running per-row top-k.

Per-row rules of the sparsified co-occurrence graph Ĉ (spec §2.2), nb(a) = {b ≠ a : C_ab > 0}
sorted by count descending, ties by ascending index:

* case A, |nb(a)| ≥ k: the first k neighbours, raw value C_ab;
* case B, 0 < |nb(a)| < k: all of nb(a) plus k − |nb(a)| slots drawn uniformly WITH replacement
  from nb(a) (numpy Generator seeded by ``seed``; the draws are taken in row order, so they do
  not depend on the chunk size), each carrying its neighbour's count; repeated columns add up;
* case C, nb(a) = ∅: the k most popular nodes of the same type (stable descending sort of the
  popularity), raw value popularity / (sum over the k slots);

and the weights are the softmax of the raw values over the row's k slots: every row sums to 1.

The similarity graph of a modality keeps the k largest cosine values of every row (itself
included) scaled by 1/k (the code's D^{-1/2} S_k D^{-1/2} with D = k). The homograph is
G = α Ĉ + (1 − α) Σ_m w_m S_k^m / k (spec §2.3–2.4), directed, never symmetrised.
"""
from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from .knn import knn_to_csr

BUILDER_VERSION = 1


# ----------------------------------------------------------------------------- co-occurrence
def cooccurrence_topk(x: sp.spmatrix, k: int, popularity: np.ndarray, seed: int = 2025,
                      chunk_size: int = 4096, max_neighbours: int = 200):
    """Slots of the sparsified co-occurrence graph of the rows of ``x`` (spec §2.2).

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
    x = sp.csr_matrix(x, dtype=np.float32)
    x.data[:] = 1.0
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
    """Ĉ: row-stochastic (n, n) CSR, softmax over each row's k slots (spec §2.2)."""
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
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    deg = np.diff(r.indptr).astype(np.float32)
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    return np.asarray(sp.diags(inv) @ (r @ np.asarray(features, dtype=np.float32)), dtype=np.float32)


def cosine_topk(features, k: int, block: int = 4096, device=None):
    """Top-k cosine neighbours of every row (itself included): (indices, values), each (n, k).

    Exact, and half the work of a row-chunked product: the cosine matrix is symmetric, so
    only the blocks on and above the diagonal are computed; each block updates the running
    top-k of its rows and (transposed) of its columns. Memory is O(block² + n·k); the order
    of tied values is torch.topk's.
    """
    import torch

    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    x = torch.nn.functional.normalize(x, dim=1)
    n = x.shape[0]
    k = min(k, n)
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
                merge(a0, a1, sims, b0)
                if b0 != a0:
                    merge(b0, b1, sims.T.contiguous(), a0)
    return best_i, best_v


def similarity_graph(features, k: int, chunk_size: int = 4096, device=None) -> sp.csr_matrix:
    """S_k / k: the k largest cosine values of every row (itself included), scaled by 1/k."""
    idx, val = cosine_topk(features, k, block=chunk_size, device=device)
    kk = idx.shape[1]
    return knn_to_csr(idx.cpu().numpy(), (val / kk).cpu().numpy(), n_cols=idx.shape[0])


def mixed_homograph(cooc: sp.spmatrix | None, sims: list, weights: list, alpha: float) -> sp.csr_matrix:
    """G = α Ĉ + (1 − α) Σ_m w_m S̄^m (graphs with weight 0 are skipped and may be None)."""
    parts = []
    if alpha != 0:
        parts.append(alpha * cooc)
    for s, w in zip(sims, weights):
        if (1 - alpha) * w != 0:
            parts.append(((1 - alpha) * w) * s)
    if not parts:
        raise ValueError("every homograph component has weight 0")
    g = parts[0]
    for p in parts[1:]:
        g = g + p
    g = sp.csr_matrix(g, dtype=np.float32)
    g.sum_duplicates()
    g.sort_indices()
    return g


def modality_weights(n_modalities: int, image_weight: float) -> list[float]:
    """β for the first modality (image), the rest (1 − β) shared equally (spec: two modalities)."""
    if n_modalities == 1:
        return [1.0]
    rest = (1.0 - image_weight) / (n_modalities - 1)
    return [float(image_weight)] + [rest] * (n_modalities - 1)


# ----------------------------------------------------------------------------- REARM homographs
def _array_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def rearm_homographs(data, *, user_k: int, item_k: int, uu_co_weight: float, ii_co_weight: float,
                     u_image_weight: float, i_image_weight: float, seed: int = 2025,
                     user_popularity: np.ndarray | None = None, cache=None,
                     user_interest: dict | None = None, knn_chunk: int = 4096):
    """(G^U, G^I) of spec §2.4 as CSR, components cached by everything they depend on.

    ``user_popularity``: fallback ranking of users with no co-occurring user (default: their
    training interactions). ``user_interest``: precomputed user interest vectors per modality
    (computed here when missing). Returns ``(G_U, G_I, timings)``.
    """
    import time

    fp_train = data.fingerprint(with_features=False)
    train = data.train
    mods = list(data.features)
    times = {}

    def get(name, key, build):
        t0 = time.perf_counter()
        key = {"data": fp_train, "version": BUILDER_VERSION, **key}
        out = cache.get_or_build(name, key, build) if cache is not None else build()
        times[name] = time.perf_counter() - t0
        return out

    pop_key = "train" if user_popularity is None else _array_hash(np.asarray(user_popularity))
    wu = modality_weights(len(mods), u_image_weight)
    wi = modality_weights(len(mods), i_image_weight)

    cu = ci = None
    if uu_co_weight != 0:
        cu = get("rearm-user-cooc", {"k": user_k, "seed": seed, "popularity": pop_key},
                 lambda: user_cooccurrence_graph(train, user_k, seed, user_popularity))
    if ii_co_weight != 0:
        ci = get("rearm-item-cooc", {"k": item_k, "seed": seed},
                 lambda: item_cooccurrence_graph(train, item_k, seed))
    su, si = [], []
    for m, name in enumerate(mods):
        feat = data.features[name]
        fkey = {"modality": name, "features": _array_hash(feat)}
        if (1 - ii_co_weight) * wi[m] != 0:
            si.append(get(f"rearm-item-knn-{name}", {"k": item_k, **fkey},
                          lambda f=feat: similarity_graph(f, item_k, knn_chunk)))
        else:
            si.append(None)
        if (1 - uu_co_weight) * wu[m] != 0:
            def build_user(f=feat, name=name):
                xu = user_interest[name] if user_interest is not None else user_interest_features(train, f)
                return similarity_graph(xu, user_k, knn_chunk)
            su.append(get(f"rearm-user-knn-{name}", {"k": user_k, **fkey}, build_user))
        else:
            su.append(None)
    g_u = mixed_homograph(cu, su, wu, uu_co_weight)
    g_i = mixed_homograph(ci, si, wi, ii_co_weight)
    return g_u, g_i, times
