"""DualGNN: Wang et al., "DualGNN: Dual Graph Neural Network for Multimedia Recommendation",
IEEE Transactions on Multimedia 25 (2021), as in MMRec (``enoche/MMRec`` ``src/models/dualgnn.py``,
grid ``src/configs/model/DualGNN.yaml``, user–user graph from
``preprocessing/dualgnn-gen-u-u-matrix.py``, the ``user_graph_dict.npy`` file). Where the paper
and the code differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim`` (the code's hard-coded ``dim_latent = 64``),
M modalities X_m (I × D_m, raw features, in the dataset's order: MMRec's image then text),
R the binary (U, I) training matrix, A = [[0, R], [Rᵀ, 0]], Â = D^{-1/2} A D^{-1/2} (D the
degrees, isolated nodes 0: PyG's ``degree(row)^{-1/2}`` on the two-way edge list),
nrm(x) = x / max(‖x‖₂, 1e-12) row-wise, k = ``user_knn_k``.

Per modality m (the code's ``GCN``), with a user preference table P_m (U × d) and a two-layer
MLP on the raw features:

.. math::
    T_m = W_{m,2}\\,\\mathrm{leaky\\_relu}(W_{m,1} X_m + b_{m,1}) + b_{m,2}
      \\quad (D_m \\to 4d \\to d,\\ \\text{slope } 0.01)

    x_m = \\mathrm{nrm}([P_m; T_m]), \\qquad
    r_m = \\sum_{l=0}^{L} \\hat A^l x_m \\quad (L = \\texttt{n\\_layers} = 2:\\
      x + \\hat A x + \\hat A^2 x, \\text{ the code's two hard-coded convolutions})

Fusion (``construction = 'weighted_sum'``), with per-user modality weights w_u ∈ R^M:

.. math::
    \\bar e_i = \\sum_m r_m[i], \\qquad
    \\bar e_u = \\sum_m w_{u,m}\\, \\tilde r_m[u],\\quad
    \\tilde r_1 = \\sum_m r_m,\\ \\tilde r_m = r_m\\ (m \\ge 2)

(the first modality's user block is the sum of all modalities: the code's
``representation = self.v_rep; representation += self.t_rep`` adds in place into ``v_rep``,
which the fusion then reads; ``inplace_sum=False`` gives the paper's Σ_m w_{u,m} r_m[u]). One
modality: ē_u = r_1[u], unweighted, as the code.

User co-occurrence graph (the preprocessing script): C = R Rᵀ with zero diagonal; each user
keeps its nonzero co-users ranked by count (at most 200, ``torch.topk`` over the dense row).
Before every epoch (the code's ``topk_sample``) each user u takes the first k of them; a user
with 0 < n_u < k co-users pads its list to k slots by drawing, for slot t = n_u, …, k − 1, an
index uniformly among the t slots already filled (``np.random.randint(0, len(list))`` on the
growing list, duplicates included) and repeating that slot. The slot weights are the softmax
of the counts over the k slots (``user_aggr='mean'``: 1/k each); a user without co-users gets
no neighbours (the code: k slots of user 0 with weight 0). G_u is the (U, U) matrix of these
weights (repeated neighbours summed):

.. math::
    e_u = \\bar e_u + (G_u \\bar e)_u, \\qquad e_i = \\bar e_i, \\qquad \\hat s_{ui} = e_u^\\top e_i

Loss (``calculate_loss``), a batch B of triples (u, i, j), λ = ``reg_weight``:

.. math::
    \\mathcal L = -\\frac1{|B|}\\sum \\log_2 \\sigma(e_u^\\top e_i - e_u^\\top e_j)
      + \\lambda \\sum_m \\mathrm{mean}(P_m[u_B]^2)
      + \\lambda\\,\\mathrm{mean}(W_U^2) + \\lambda\\,\\mathrm{mean}(W_I^2)

(``mean`` over all entries; P_m[u_B] holds the batch users with repetitions; W_U (U, M, 1) are
the user fusion weights, W_I (I, M, 1) the item weights, which the code creates and regularises
but never uses otherwise, so they only decay).

Quirks of the code reproduced: ``log2`` in the BPR term (computed as logsigmoid / ln 2, which
stays finite where the code's ``log2(sigmoid(·))`` reaches −inf); P_m xavier-normal (gain 1),
W_U and W_I xavier-normal over the (n, M, 1) tensors (fan_in M, fan_out n) and then softmaxed
over the modalities (once, at initialisation); the MLPs keep torch's Linear initialisation;
the raw features are fixed (the code feeds ``self.v_feat``, not a trainable table); the padding
draws of the user graph are renewed every epoch; the user–user graph aggregates the fused user
representation.

Not reproduced (no effect on any output): the item-dropping edge lists ``edge_index_dropv/t``
(built from ``drop_rate = 0.1`` but never read by the convolutions), ``MLP_v``, ``MLP_t``,
``MLP_user`` and ``result_embed`` *as a parameter* (the forward replaces it by a plain tensor;
that tensor is the ``result`` buffer below). ``aggr_mode`` other than ``'add'``
(the yaml's only value) is refused.

Stale evaluation, reproduced by default: the code's ``full_sort_predict`` ranks with
``result_embed``, the representations computed by the *last training forward* (before that
batch's optimiser step), not a fresh forward of the current weights. Here a persistent buffer
``result`` ((U + I) × width, users first) is written at every training loss, so it is part of
the state dict and ``best.pt`` ranks with the representations that were ranked;
``reuse_training_result=False`` ranks with a fresh forward (current weights, the epoch's user
graph). Before any training the code ranks with a random xavier-normal ``result_embed``; here
the buffer is likewise xavier-normal, drawn from torch's RNG *after* every parameter (so the
parameters' draws are unchanged; the code draws it between the branches and the user graph,
over a numpy tensor that the xavier draw overwrites).

Choices: ties among equal co-occurrence counts are broken by ascending user id (``torch.topk``
leaves their order unspecified); the padding draws come from a numpy Generator seeded from
torch's global RNG at each epoch (same distribution as the code's ``np.random``, not the same
stream); the user lists are built from the training split only, as the script does
(``x_label == 0``).

Sparse and bounded: C is computed as sparse products of row blocks of R against Rᵀ and each
row keeps its top counts at once (no U × U matrix; the script fills a dense U × U tensor by a
Python loop over user pairs). A block holds at most 2048 rows and about 2·10⁷ product terms
(Σ over its rows' items of the item degrees, a bound of its nonzeros), so very popular items
shrink the blocks instead of the memory growing. The ranked lists are cached
(:meth:`cached_graph`, keyed by the training split, min(k, 200) and a builder version) and each
epoch's G_u is a CSR matrix with at most k entries per row. Â is built once from the
deduplicated training matrix (the code's edge list would count a repeated interaction twice)
and cached.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, binarize, bipartite_adjacency, sym_normalize
from .base import Recommender
from .layers import FeatureTable

BUILDER_VERSION = 1
#: the preprocessing script keeps at most this many co-users per user
MAX_USER_NEIGHBOURS = 200
_LN2 = math.log(2.0)
_TRAIN = {"epochs": 1000, "batch_size": 2048, "weight_decay": 0.0, "optimizer": "adam",
          "eval_step": 1, "patience": 20, "seed": 999, "sampler": "interactions",
          "negatives_from": "train_items", "valid_metrics": ["recall@20"], "lr": 1e-3,
          "lr_scheduler": [1.0, 50]}
_GRID = [0.1, 0.01, 0.001, 0.0001, 0.00001]


# ------------------------------------------------------------------------ user–user graph
def _row_blocks(r: sp.csr_matrix, chunk_size: int, max_products: int):
    """Row ranges of at most ``chunk_size`` rows whose products R[rows] Rᵀ hold at most
    ``max_products`` terms (Σ over a row's items of the items' degrees, an upper bound of the
    row's nonzeros in C), a single row at least: memory stays bounded with very popular items."""
    deg = np.bincount(r.indices, minlength=r.shape[1]).astype(np.int64)
    per_entry = np.concatenate([[0], np.cumsum(deg[r.indices])])
    cum = per_entry[r.indptr]                 # cum[u] = work of the rows before u
    n, s = r.shape[0], 0
    while s < n:
        e = int(np.searchsorted(cum, cum[s] + max_products, side="right")) - 1
        e = min(max(e, s + 1), s + chunk_size, n)
        yield s, e
        s = e


def user_cooccurrence_lists(train: sp.spmatrix, k: int, max_neighbours: int = MAX_USER_NEIGHBOURS,
                            chunk_size: int = 2048, max_products: int = 20_000_000) -> dict:
    """The first min(k, max_neighbours) co-users of every user, ranked by co-occurrence count
    (C = R Rᵀ, diagonal dropped; ties by ascending id), computed block by block (at most
    ``chunk_size`` rows and about ``max_products`` product terms per block).

    Returns ``{"cols": int64 (U, K) (−1 past a user's list), "counts": float32 (U, K),
    "n": int64 (U,)}`` with K = min(k, max_neighbours) and n_u = min(#co-users, max_neighbours).
    """
    r = binarize(train)
    n = r.shape[0]
    kk = int(min(k, max_neighbours))
    rt = r.T.tocsr()
    cols = np.full((n, kk), -1, dtype=np.int64)
    counts = np.zeros((n, kk), dtype=np.float32)
    n_nb = np.zeros(n, dtype=np.int64)
    for s, e in _row_blocks(r, chunk_size, max_products):
        blk = (r[s:e] @ rt).tocoo()
        row, col, val = blk.row.astype(np.int64), blk.col.astype(np.int64), blk.data
        keep = (row + s != col) & (val > 0)
        row, col, val = row[keep], col[keep], val[keep]
        order = np.lexsort((col, -val, row))              # by row, count desc, id asc
        row, col, val = row[order], col[order], val[order]
        per_row = np.bincount(row, minlength=e - s)
        first = np.concatenate([[0], np.cumsum(per_row)[:-1]])
        rank = np.arange(len(row)) - first[row]
        take = rank < kk
        cols[row[take] + s, rank[take]] = col[take]
        counts[row[take] + s, rank[take]] = val[take]
        n_nb[s:e] = np.minimum(per_row, max_neighbours)
    return {"cols": cols, "counts": counts, "n": n_nb}


def sample_user_slots(lists: dict, k: int, rng: np.random.Generator):
    """One epoch's k slots per user (the code's ``topk_sample``): the first k co-users, lists
    shorter than k padded by repeating a slot drawn uniformly among those already filled.
    Returns (cols int64 (U, k), counts float32 (U, k), n (U,)); rows with n = 0 are unused."""
    cols0, counts0, n = lists["cols"], lists["counts"], lists["n"]
    u, kk = cols0.shape
    cols = np.zeros((u, k), dtype=np.int64)
    counts = np.zeros((u, k), dtype=np.float32)
    w = min(kk, k)
    cols[:, :w] = np.maximum(cols0[:, :w], 0)
    counts[:, :w] = counts0[:, :w]
    for t in range(1, k):
        rows = np.flatnonzero((n > 0) & (n <= t))     # slot t is a padding slot of these rows
        if len(rows):
            src = (rng.random(len(rows)) * t).astype(np.int64)   # randint(0, t)
            cols[rows, t] = cols[rows, src]
            counts[rows, t] = counts[rows, src]
    return cols, counts, n


def user_graph_matrix(cols: np.ndarray, counts: np.ndarray, n: np.ndarray,
                      aggregation: str = "softmax") -> sp.csr_matrix:
    """G_u: row u holds the weights of its k slots (softmax of the counts, or 1/k), repeated
    neighbours summed; users without co-users have an empty row."""
    u, k = cols.shape
    if aggregation == "softmax":
        w = torch.softmax(torch.from_numpy(counts), dim=1).numpy()
    else:
        w = np.full((u, k), 1.0 / k, dtype=np.float32)
    w = np.where((n > 0)[:, None], w, 0.0).astype(np.float32)
    m = sp.csr_matrix((w.ravel(), cols.ravel(), np.arange(0, u * k + 1, k, dtype=np.int64)),
                      shape=(u, u))
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


# ------------------------------------------------------------------------ shared pieces
class ModalityBranch(nn.Module):
    """One modality's ``GCN`` of the code: user preferences P (U × d) and the MLP D → 4d → d."""

    def __init__(self, n_users: int, in_dim: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(torch.empty(n_users, dim))
        self.mlp = nn.Linear(in_dim, 4 * dim)
        self.mlp_1 = nn.Linear(4 * dim, dim)

    def forward(self, table: FeatureTable, adj: SparseGraph, n_layers: int) -> torch.Tensor:
        t = self.mlp_1(F.leaky_relu(self.mlp(table())))
        x = F.normalize(torch.cat([self.preference, t], 0))
        out, h = x, x
        for _ in range(n_layers):
            h = adj(h)
            out = out + h
        return out


class UserGraphMixin:
    """The user–item graph, the ranked co-user lists, the per-epoch user graph, the modality
    branches and the weights W_U, W_I shared by DualGNN and DRAGON."""

    def _check_common(self, embedding_dim, n_layers, user_knn_k, reg_weight, aggr_mode, user_aggr):
        if embedding_dim < 1 or n_layers < 0 or user_knn_k < 1:
            raise ValueError(f"embedding_dim={embedding_dim} and user_knn_k={user_knn_k} must be "
                             f"≥ 1, n_layers={n_layers} ≥ 0")
        if reg_weight < 0:
            raise ValueError(f"reg_weight={reg_weight}: must be ≥ 0")
        if aggr_mode != "add":
            raise ValueError(f"aggr_mode={aggr_mode!r}: only 'add' (the normalised sum of MMRec's "
                             f"Base_gcn, the yaml's only value) is implemented")
        if user_aggr not in ("softmax", "mean"):
            raise ValueError(f"user_aggr={user_aggr!r}: 'softmax' or 'mean'")

    def _build_common(self, data, cache, tag: str):
        fp = data.fingerprint(with_features=False)
        adj = self.cached_graph(cache, f"{tag}-ui-graph", {"data": fp, "eps": 0.0,
                                                          "version": BUILDER_VERSION},
                                lambda: sym_normalize(bipartite_adjacency(data.train), eps=0.0))
        self.adj = SparseGraph(adj, symmetric=True)
        key = {"data": fp, "k": min(self.user_knn_k, MAX_USER_NEIGHBOURS),
               "max_neighbours": MAX_USER_NEIGHBOURS, "version": BUILDER_VERSION}
        self.user_lists = self.cached_graph(
            cache, f"{tag}-user-lists", key,
            lambda: user_cooccurrence_lists(data.train, self.user_knn_k))
        self.user_graph = None
        self.modalities = list(data.features)
        feats = [data.features[m] for m in self.modalities]
        self.features = nn.ModuleList(FeatureTable(x, trainable=False) for x in feats)
        self.branches = nn.ModuleList(ModalityBranch(self.n_users, x.shape[1], self.embedding_dim)
                                      for x in feats)
        m = len(feats)
        self.weight_u = nn.Parameter(torch.empty(self.n_users, m, 1))

    def _init_common(self):
        with torch.no_grad():
            for b in self.branches:
                nn.init.xavier_normal_(b.preference, gain=1)
            nn.init.xavier_normal_(self.weight_u)
            self.weight_u.copy_(torch.softmax(self.weight_u, dim=1))

    def _reset_linears(self):
        for b in self.branches:
            b.mlp.reset_parameters()
            b.mlp_1.reset_parameters()

    def sample_user_graph(self, seed: int | None = None) -> SparseGraph:
        """G_u for one epoch (padding draws seeded by ``seed``, else drawn from torch's RNG)."""
        if seed is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        cols, counts, n = sample_user_slots(self.user_lists, self.user_knn_k,
                                            np.random.default_rng(seed))
        g = user_graph_matrix(cols, counts, n, self.user_aggr)
        return SparseGraph(g, symmetric=False).to(self.weight_u.device)

    def pre_epoch(self, epoch: int) -> None:
        self.user_graph = self.sample_user_graph()

    def _user_graph(self) -> SparseGraph:
        if self.user_graph is None:
            self.user_graph = self.sample_user_graph()
        return self.user_graph

    def _modality_reps(self) -> list:
        return [b(t, self.adj, self.n_layers) for b, t in zip(self.branches, self.features)]

    def _bpr_and_preferences(self, u, i, j, users) -> dict:
        pos, neg = (u * i).sum(1), (u * j).sum(1)
        out = {"bpr": -(F.logsigmoid(pos - neg) / _LN2).mean()}
        reg = u.new_zeros(())
        for b in self.branches:
            reg = reg + (b.preference[users] ** 2).mean()
        out["reg"] = self.reg_weight * reg
        return out

    def _register_result(self, width: int) -> None:
        """The persistent ``result`` buffer ((U + I) × width): the code's ``result_embed``."""
        self.register_buffer("result", torch.empty(self.n_users + self.n_items, width))

    def _init_result(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.result)

    def _store_result(self, e_u: torch.Tensor, e_i: torch.Tensor) -> None:
        if self.training:
            with torch.no_grad():
                self.result[: self.n_users].copy_(e_u)
                self.result[self.n_users:].copy_(e_i)

    def _scores_representations(self):
        if self.reuse_training_result:
            return self.result[: self.n_users], self.result[self.n_users:]
        return self.forward()

    def representations(self):
        return self._scores_representations()


class DualGNN(UserGraphMixin, Recommender):
    """DualGNN: per-modality graph convolutions on the user–item graph, a per-user weighted sum
    of the modalities, and a sampled user co-occurrence graph.

    No tuned values of the grid are published (MMRec's yaml and README give the grid only), so
    ``reg_weight`` defaults to 1e-3, the middle of the yaml's grid, and the learning rate to
    MMRec's ``overall.yaml`` default 1e-3 (a value of the grid).

    Args:
        embedding_dim: d, width of the preferences, of the MLP outputs and of every
            representation (the code's hard-coded ``dim_latent = 64``; MMRec's
            ``embedding_size`` only sizes an unused table). (default: ``64``)
        n_layers: L, graph convolutions on the user–item graph, summed with their input (the
            code's two hard-coded ``conv_embed_1`` calls). (default: ``2``)
        user_knn_k: k, neighbour slots per user in the user co-occurrence graph (the code's
            hard-coded ``self.k = 40``). (default: ``40``)
        reg_weight: λ, weight of the preference and fusion-weight regularisers (grid
            {0.1, 0.01, 0.001, 0.0001, 0.00001}). (default: ``0.001``)
        aggr_mode: aggregation of the convolutions; only ``'add'`` (normalised sum), the yaml's
            only value. (default: ``'add'``)
        user_aggr: weights of a user's k slots: ``'softmax'`` of the co-occurrence counts (the
            code's ``user_aggr_mode``) or ``'mean'`` (1/k). (default: ``'softmax'``)
        inplace_sum: True, as the code: the first modality's user block is the sum of all
            modalities before the weighted fusion (its in-place ``+=``); False gives
            Σ_m w_{u,m} r_m[u]. (default: ``True``)
        reuse_training_result: True, as the code's ``full_sort_predict``: evaluation ranks with
            the representations of the last training forward (the persistent ``result``
            buffer; random before any training); False computes fresh ones from the current
            weights. (default: ``True``)
    """

    name = "dualgnn"
    aliases = {"embedding_size": "embedding_dim"}
    requires_features = True
    train_defaults = dict(_TRAIN)
    search_space = {"aggr_mode": ["add"], "lr": list(_GRID), "reg_weight": list(_GRID)}
    notes = ("The user co-occurrence graph (top-40 co-users per user, short lists padded by "
             "random repeats) is resampled before every training epoch (pre_epoch). The BPR term "
             "uses log2, as MMRec. Raw features are fixed inputs of per-modality MLPs. Evaluation "
             "ranks with the representations of the last training batch, as MMRec "
             "(reuse_training_result=false recomputes them).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 user_knn_k: int = 40, reg_weight: float = 0.001, aggr_mode: str = "add",
                 user_aggr: str = "softmax", inplace_sum: bool = True,
                 reuse_training_result: bool = True):
        super().__init__(data, cache)
        self._check_common(embedding_dim, n_layers, user_knn_k, reg_weight, aggr_mode, user_aggr)
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.user_knn_k = user_knn_k
        self.reg_weight = reg_weight
        self.aggr_mode = aggr_mode
        self.user_aggr = user_aggr
        self.inplace_sum = inplace_sum
        self.reuse_training_result = bool(reuse_training_result)
        self._build_common(data, cache, "dualgnn")
        self.weight_i = nn.Parameter(torch.empty(self.n_items, len(self.modalities), 1))
        self._register_result(embedding_dim)
        self._init_parameters()

    def _init_parameters(self):
        self._init_common()
        with torch.no_grad():
            nn.init.xavier_normal_(self.weight_i)
            self.weight_i.copy_(torch.softmax(self.weight_i, dim=1))
        self._init_result()

    def reset_parameters(self):
        """Re-draw every parameter in the constructor's order (MLPs: torch's Linear default),
        then the stored ``result``."""
        self._reset_linears()
        self._init_parameters()

    def fused(self, reps: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(ē_U, ē_I) from the modality representations r_m (module docstring)."""
        nu = self.n_users
        item = reps[0][nu:]
        for r in reps[1:]:
            item = item + r[nu:]
        ureps = [r[:nu] for r in reps]
        if len(ureps) == 1:
            return ureps[0], item
        if self.inplace_sum:
            total = ureps[0]
            for r in ureps[1:]:
                total = total + r
            ureps[0] = total
        user = ureps[0] * self.weight_u[:, 0]
        for m in range(1, len(ureps)):
            user = user + ureps[m] * self.weight_u[:, m]
        return user, item

    def forward(self):
        user, item = self.fused(self._modality_reps())
        user = user + self._user_graph()(user)
        return user, item

    def loss(self, users, pos, neg):
        e_u, e_i = self.forward()
        self._store_result(e_u, e_i)
        out = self._bpr_and_preferences(e_u[users], e_i[pos], e_i[neg], users)
        out["reg"] = out["reg"] + self.reg_weight * ((self.weight_u ** 2).mean()
                                                     + (self.weight_i ** 2).mean())
        return out
