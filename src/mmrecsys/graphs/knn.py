"""Exact top-k similarity neighbourhoods in bounded memory: never an N×N matrix.

The one top-k search of the package (MMHCL's item kNN hypergraph, REARM's user and item
similarity graphs, the synthetic data checks), in two schedules with the same neighbour sets:

* rows (default): a (chunk, N) block of full similarity rows at a time, each row through one
  ``torch.topk``: exactly the reference codes' ``torch.topk`` over the dense similarity matrix,
  ties included (``Xu107/MMHCL`` ``codes/utility/load_data.py``, ``build_knn_normalized_graph``;
  ``MrShouxingMa/REARM`` ``utils/helper.py``, ``get_knn_adj_mat``). Memory chunk·N floats.
* tiles: both similarities offered are symmetric, so only the (chunk × chunk) tiles on and
  above the diagonal are computed; each tile updates the running top-(k+1) of its rows and,
  transposed, of its columns. Half the products, memory O(chunk² + N·k). A tile's product
  rounds differently from a full row's, so rows near a tie at the k-th place are decided again
  by the rows schedule (below): the neighbour sets are the rows schedule's, ties included.

Backends. ``faiss`` (the default; package ``faiss-cpu``, or its GPU build where present) or
``torch`` (the schedules above). ``index="flat"`` is exact inner-product search on the normalised
rows (``IndexFlatIP``), **checked against the torch path's tie order**: FAISS returns k + 1
candidates per row, and a row whose k-th and (k+1)-th similarities lie within
:data:`TIE_TOLERANCE` (× √d × the rows' norms) of each other, where FAISS's and torch's roundings
could rank them differently (exact ties: duplicated feature rows, all-zero rows), is decided again
by the torch path itself (its full similarity row through ``torch.topk``). So the neighbour sets
are the torch path's, ties included; the similarity values of the other rows are FAISS's, equal
to torch's to float rounding. ``"ivf"`` (``IndexIVFFlat``, ``nprobe`` lists probed) and
``"hnsw"`` (``IndexHNSWFlat``, ``ef_search``) are approximate, for catalogues where exact search
is too slow; :func:`knn_recall` measures them against exact lists. The configuration keys
``knn_backend`` and ``knn_index`` choose, through :func:`knn_settings`, for every graph a model
builds (and enter the graph cache's keys). The torch path is used instead of ``faiss`` when FAISS
is not installed (with a warning, once) and, for the flat index, when the features are on a GPU
and FAISS has no GPU support (the GPU's own product is faster than a copy to the CPU).
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings

import numpy as np
import scipy.sparse as sp
import torch

#: the backend used when knn_graph is not told one (set by the trainer from the configuration)
_SETTINGS: contextvars.ContextVar = contextvars.ContextVar(
    "knn_settings", default={"backend": "faiss", "index": "flat"})
BACKENDS = ("torch", "faiss")
INDEXES = ("flat", "ivf", "hnsw")
#: a flat FAISS row is re-decided by the torch path when its k-th and (k+1)-th similarities are
#: closer than TIE_TOLERANCE · √d · ‖x_i‖ · max‖x‖: float32 dot products of d terms summed in two
#: orders typically differ by about √d units of 2^-24 of that scale, and this is 16 times that
#: (6.1e-5 at d = 4096; the largest difference between FAISS's and torch's similarities measured
#: on Amazon-sized 4096-d and 384-d features was 4.8e-7)
TIE_TOLERANCE = 2.0 ** -20
_warned_no_faiss = False


@contextlib.contextmanager
def knn_settings(backend: str = "faiss", index: str = "flat", **params):
    """Within the block, :func:`knn_graph` uses this backend/index by default.

    ``params``: index parameters (``nlist``, ``nprobe`` for ivf; ``m``, ``ef_search`` for hnsw).
    """
    if backend not in BACKENDS:
        raise ValueError(f"knn backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if index not in INDEXES:
        raise ValueError(f"knn index {index!r}: use one of {', '.join(INDEXES)}")
    if backend == "torch" and index != "flat":
        raise ValueError(f"knn index {index!r} needs knn_backend faiss (the torch path is exact)")
    token = _SETTINGS.set({"backend": backend, "index": index, **params})
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def current_knn_settings() -> dict:
    """The backend, index and parameters :func:`knn_graph` uses by default here."""
    return dict(_SETTINGS.get())


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn_graph(features, k: int, *, chunk_size: int = 2048, metric: str = "cosine",
              exclude_self: bool = False, tiles: bool = False, device=None,
              backend: str | None = None, index: str | None = None, **index_params):
    """Top-k neighbours of every row of ``features`` by cosine (or dot) similarity.

    Args:
        features: (N, d) array or tensor.
        k: neighbours per row (clipped to N, or N − 1 with ``exclude_self``).
        chunk_size: rows (or tile side, with ``tiles``) of the similarity matrix computed at a
            time; it bounds memory and does not change the neighbours.
        metric: ``"cosine"`` (rows L2-normalised first, all-zero rows have similarity 0 to
            everything) or ``"dot"``.
        exclude_self: drop the row itself from its candidates.
        tiles: compute only the tiles on and above the diagonal (half the products, the same
            neighbour sets; module docstring). Default ``False``.
        device: where to compute (default: where ``features`` are, CPU for arrays).
        backend, index, index_params: ``torch`` or ``faiss`` and its index (module docstring);
            default: :func:`current_knn_settings`.
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
    settings = current_knn_settings()
    backend = backend or settings.pop("backend")
    index = index or settings.pop("index", "flat")
    params = {**{k2: v for k2, v in settings.items() if k2 not in ("backend", "index")},
              **index_params}
    global _warned_no_faiss
    if backend == "faiss":
        on_gpu_only = (index == "flat" and x.device.type != "cpu" and not _faiss_gpus())
        if faiss_available() and not on_gpu_only:
            return _faiss_knn(x, k, exclude_self, index, chunk_size=chunk_size, **params)
        if not faiss_available() and not _warned_no_faiss:
            _warned_no_faiss = True
            warnings.warn("knn_backend faiss: FAISS is not installed (pip install faiss-cpu); "
                          "using the exact torch path", stacklevel=2)
    elif backend != "torch":
        raise ValueError(f"knn backend {backend!r}: use one of {', '.join(BACKENDS)}")
    block = max(1, int(chunk_size))
    if not tiles:
        return _torch_rows(x, k, exclude_self, block)
    check = _has_next(n, k, exclude_self)
    kk = k + int(check)                      # one more, to see how close the k-th place is
    best_v = torch.full((n, kk), -float("inf"), device=x.device)
    best_i = torch.zeros((n, kk), dtype=torch.int64, device=x.device)

    def merge(r0, r1, sims, c0):
        cand_v = torch.cat([best_v[r0:r1], sims], 1)
        cand_i = torch.cat([best_i[r0:r1],
                            torch.arange(c0, c0 + sims.shape[1], device=x.device).expand(r1 - r0, -1)], 1)
        v, j = torch.topk(cand_v, min(kk, cand_v.shape[1]), dim=1)
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
    return _settle_near_ties(x, best_i, best_v, k, exclude_self, block) if check else (best_i, best_v)


def _has_next(n: int, k: int, exclude_self: bool) -> bool:
    """Whether a row has a (k+1)-th candidate, i.e. a k-th place that could be contested."""
    return k < (n - 1 if exclude_self else n)


def _settle_near_ties(x: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor, k: int,
                      exclude_self: bool, block: int):
    """(N, k+1) candidate lists by decreasing similarity, computed in another order than the
    rows schedule (FAISS, or the tiles) -> (N, k) lists with the rows schedule's neighbour sets:
    rows whose k-th and (k+1)-th similarities are within the rounding tolerance
    (:data:`TIE_TOLERANCE`) are decided again by the rows schedule itself."""
    redo = near_ties(x, vals, k)
    ids, vals = ids[:, :k].contiguous(), vals[:, :k].contiguous()
    if len(redo):
        ids[redo], vals[redo] = _torch_rows(x, k, exclude_self, block, rows=redo)
    return ids, vals


def near_ties(x: torch.Tensor, vals: torch.Tensor, k: int, rows=None) -> torch.Tensor:
    """Positions in ``vals`` ((R, k+1) similarities by decreasing value of the rows ``rows`` of
    ``x``, default all) whose k-th and (k+1)-th values are closer than the rounding tolerance
    TIE_TOLERANCE · √d · ‖x_i‖ · max‖x‖ (NaN counts as near)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    scale = norms.max() if x.shape[0] else norms.new_zeros(())
    own = norms if rows is None else norms[torch.as_tensor(rows, device=norms.device)]
    tol = TIE_TOLERANCE * float(np.sqrt(x.shape[1])) * own * scale
    return torch.nonzero(~(vals[:, k - 1] - vals[:, k] > tol)).flatten()


def _torch_rows(x: torch.Tensor, k: int, exclude_self: bool, block: int, rows=None):
    """The rows schedule: full similarity rows ``x[r] @ x.T``, ``block`` rows at a time, each
    through one ``torch.topk``; for every row (``rows=None``) or the given row indices."""
    n = x.shape[0]
    rows = torch.arange(n, device=x.device) if rows is None else rows.to(x.device)
    m = rows.shape[0]
    idx_out = torch.empty((m, k), dtype=torch.int64, device=x.device)
    val_out = torch.empty((m, k), dtype=torch.float32, device=x.device)
    contiguous = m == n
    with torch.no_grad():
        for start in range(0, m, block):
            stop = min(start + block, m)
            q = x[start:stop] if contiguous else x[rows[start:stop]]
            sim = q @ x.T                                               # (chunk, N)
            if exclude_self:
                r = torch.arange(stop - start, device=x.device)
                sim[r, rows[start:stop]] = -float("inf")
            val_out[start:stop], idx_out[start:stop] = torch.topk(sim, k, dim=1)
    return idx_out, val_out


def _faiss_gpus() -> bool:
    try:
        import faiss
        return faiss.get_num_gpus() > 0
    except (ImportError, AttributeError):
        return False


def _faiss_knn(x: torch.Tensor, k: int, exclude_self: bool, index: str = "flat", *,
               chunk_size: int = 2048, nlist: int | None = None, nprobe: int = 16, m: int = 32,
               ef_search: int = 128, ef_construction: int = 200):
    """Top-k by inner product of the (already normalised, for cosine) rows with FAISS; for the
    flat index, rows near a tie at the k-th place are decided by the torch path (module
    docstring)."""
    dev = x.device
    xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    n, d = xs.shape
    idx = faiss_index(xs, index, nlist=nlist, nprobe=nprobe, m=m,
                      ef_search=max(ef_search, k + 2), ef_construction=ef_construction,
                      gpu=True)
    check = index == "flat" and _has_next(n, k, exclude_self)
    want = min(n, k + int(exclude_self) + int(check))
    vals, ids = idx.search(xs, want)
    if exclude_self:
        self_hit = ids == np.arange(n)[:, None]
        # drop the row itself where found, else the last (weakest) candidate
        drop = np.where(self_hit.any(1), self_hit.argmax(1), want - 1)
        keep = np.ones_like(ids, dtype=bool)
        keep[np.arange(n), drop] = False
        ids = ids[keep].reshape(n, want - 1)
        vals = vals[keep].reshape(n, want - 1)
    ids = np.where(ids < 0, 0, ids)  # an approximate index may return fewer than k (-1)
    out_i = torch.as_tensor(ids, dtype=torch.int64, device=dev)
    out_v = torch.as_tensor(vals, dtype=torch.float32, device=dev)
    if check:
        return _settle_near_ties(x, out_i, out_v, k, exclude_self, max(1, int(chunk_size)))
    return out_i, out_v


def faiss_index(xs: np.ndarray, index: str = "flat", *, nlist: int | None = None,
                nprobe: int = 16, m: int = 32, ef_search: int = 128,
                ef_construction: int | None = None, gpu: bool = False):
    """A FAISS inner-product index over the rows of ``xs`` (float32, C-contiguous), trained
    (``ivf``) and filled: ``flat`` (exact), ``ivf`` (``nlist`` lists, default
    min(N / 39, 4 √N); ``nprobe`` probed) or ``hnsw`` (``m`` links; ``ef_search``;
    ``ef_construction``, default FAISS's). ``gpu``: a flat index moves to every GPU of a FAISS
    GPU build. Used by the kNN graphs and by :meth:`mmrecsys.api.TrainedModel.use_ann`."""
    import faiss
    # FAISS's OpenMP pool follows torch's thread count (set by --threads, one per process in a
    # data-parallel run), instead of taking every core
    faiss.omp_set_num_threads(torch.get_num_threads())
    n, d = xs.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(xs)
        idx.nprobe = min(nprobe, nlist)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        if ef_construction is not None:
            idx.hnsw.efConstruction = ef_construction
        idx.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"knn index {index!r}: use one of {', '.join(INDEXES)}")
    if gpu and index == "flat" and faiss.get_num_gpus() > 0:  # pragma: no cover (GPU build only)
        idx = faiss.index_cpu_to_all_gpus(idx)
    idx.add(xs)
    return idx


def knn_recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Recall@k of approximate neighbour lists against exact ones (mean share of exact
    neighbours found), for :func:`knn_graph`'s approximate indexes."""
    a = np.asarray(approx.cpu() if torch.is_tensor(approx) else approx)
    e = np.asarray(exact.cpu() if torch.is_tensor(exact) else exact)
    n, k = e.shape
    hits = (a[:, :, None] == e[:, None, :]).any(1).sum()
    return float(hits / (n * k))


def knn_to_csr(indices, values, n_cols: int | None = None) -> sp.csr_matrix:
    """(N, k) neighbour lists -> CSR (N, n_cols) with the given values."""
    indices = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
    values = np.asarray(values.cpu() if torch.is_tensor(values) else values, dtype=np.float32)
    n, k = indices.shape
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    m = sp.csr_matrix((values.ravel(), indices.ravel(), indptr), shape=(n, n_cols or n))
    m.sort_indices()
    return m


def knn_adjacency(features, k: int, *, normalization: str = "sym", chunk_size: int = 2048,
                  device=None, values: str = "similarity", eps: float = 0.0,
                  **knn_kwargs) -> sp.csr_matrix:
    """The weighted top-k cosine graph of the rows of ``features``, normalised, as CSR.

    Row i keeps the ``k`` largest cosine similarities of i over all rows, the row itself
    included (its similarity 1 normally ranks first; ``torch.topk``'s tie order), **with the
    similarity values as weights** (``values="binary"``: with weight 1); then

    * ``"sym"``: D^{-1/2} A D^{-1/2}, D = diag(row sums of A + ``eps``) (A is not symmetric:
      row sums);
    * ``"rw"``: D^{-1} A;  ``"none"``: A.

    This is MMRec's ``build_knn_normalized_graph(build_sim(X), k, norm_type)`` and LATTICE's
    ``compute_normalized_laplacian(build_knn_neighbourhood(build_sim(X), k))`` (``enoche/MMRec``
    ``src/utils/utils.py``); with ``values="binary"``, ``eps=1e-7`` it is FREEDOM's
    ``get_knn_adj_mat`` + ``compute_normalized_laplacian`` (``src/models/freedom.py``: every
    row sums to k, so every entry is 1/k). Built without the dense N×N similarity matrix: one
    (chunk, N) block at a time (:func:`knn_graph`). Rows with a non-positive sum get a zero
    scale (the reference codes give 0 for a zero sum, NaN for a negative one; all-zero feature
    rows, NaN there, have similarity 0 here).
    """
    if values not in ("similarity", "binary"):
        raise ValueError(f"values={values!r}: use 'similarity' or 'binary'")
    idx, val = knn_graph(features, k, chunk_size=chunk_size, metric="cosine", device=device,
                         **knn_kwargs)
    if values == "binary":
        val = torch.ones_like(val)
    a = knn_to_csr(idx, val, n_cols=idx.shape[0])
    if normalization == "sym":
        from .adjacency import sym_normalize
        return sym_normalize(a, eps=eps)
    if normalization == "rw":
        from .adjacency import row_normalize
        return row_normalize(a, eps=eps)
    if normalization == "none":
        return a
    raise ValueError(f"normalization={normalization!r}: use 'sym', 'rw' or 'none'")


def kmeans(x, k: int, *, niter: int = 25, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of the rows of ``x`` with FAISS (``faiss.Kmeans``, L2, its defaults:
    ``niter`` 25, ``seed`` 1234, at most 256 points per centroid sampled for training):
    (centroids (k, d) float32, the nearest centroid of each row (n,) int64). The clustering of
    NCL's prototypes (``RUCAIBox/NCL`` ``ncl.py``, ``run_kmeans``). FAISS's threads follow
    torch's thread count."""
    import faiss
    xs = np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x,
                              dtype=np.float32)
    n, d = xs.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k={k} clusters over {n} points: need 1 ≤ k ≤ {n}")
    faiss.omp_set_num_threads(torch.get_num_threads())
    # min_points_per_centroid only decides FAISS's "please provide at least …" warning
    km = faiss.Kmeans(d, int(k), niter=int(niter), seed=int(seed), min_points_per_centroid=1)
    km.train(xs)
    _, assign = km.index.search(xs, 1)
    return np.asarray(km.centroids, dtype=np.float32), assign[:, 0].astype(np.int64)
