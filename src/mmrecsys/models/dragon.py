"""DRAGON: Zhou et al., "Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation", ECAI 2023 (arXiv:2301.12097), as in MMRec (``enoche/MMRec``
``src/models/dragon.py``, grid ``src/configs/model/DRAGON.yaml``; its user–user graph is
DualGNN's ``user_graph_dict.npy`` from ``preprocessing/dualgnn-gen-u-u-matrix.py``). Where the
paper and the code differ, the code is followed.

DRAGON is DualGNN's per-modality user–item convolutions and sampled user co-occurrence graph
(see :mod:`mmrecsys.models.dualgnn` for r_m, Â, G_u and their construction, shared here),
with attentive concatenation instead of a weighted sum and a frozen item–item kNN graph.

Notation: U users, I items, d = ``embedding_dim``, M modalities X_m (dataset order, MMRec's
image then text), r_m = Σ_{l=0}^{L} Â^l nrm([P_m; T_m]) the modality representation
((U + I) × d), w_u ∈ R^M the user's fusion weights (W_U, (U, M, 1)), k = ``knn_k``.

Item–item graph (the code's ``get_knn_adj_mat``, built once from the raw features): per
modality the k most cosine-similar items of every item (itself included), binary, normalised
D^{-1/2} S_m D^{-1/2} with D = row sums + 1e-7; then S = β S_1 + (1 − β)/(M − 1) Σ_{m≥2} S_m,
β = ``mm_image_weight`` (the first modality, image in MMRec data; one modality: S = S_1).
This is FREEDOM's graph (:func:`mmrecsys.models.freedom.freedom_item_graph`).

Fusion (``construction = 'cat'``) and homogeneous graphs:

.. math::
    \\bar e_i = [r_1[i] \\,\\|\\, \\dots \\,\\|\\, r_M[i]], \\qquad
    \\bar e_u = [w_{u,1} r_1[u] \\,\\|\\, \\dots \\,\\|\\, w_{u,M} r_M[u]]
      \\quad (\\text{one modality: } \\bar e_u = r_1[u])

    e_i = \\bar e_i + (S^{L_m} \\bar E_I)_i, \\qquad
    e_u = \\bar e_u + (G_u \\bar E_U)_u, \\qquad \\hat s_{ui} = e_u^\\top e_i

(width M·d; L_m = ``n_mm_layers``). Loss (``calculate_loss``), λ = ``reg_weight``:

.. math::
    \\mathcal L = -\\frac1{|B|}\\sum \\log_2 \\sigma(e_u^\\top e_i - e_u^\\top e_j)
      + \\lambda \\sum_m \\mathrm{mean}(P_m[u_B]^2) + \\lambda\\,\\mathrm{mean}(W_U^2)

Quirks of the code reproduced: ``log2`` in the BPR term (as logsigmoid / ln 2, finite where the
code's reaches −inf); the user co-occurrence lists (top counts, at most 200, of the training
split), resampled every epoch: the first k = ``user_knn_k`` (the code's hard-coded 40) co-users,
short lists padded by repeating slots drawn uniformly among those already filled, softmax of
the counts as weights, users without co-users aggregating nothing; P_m xavier-normal (gain 1),
W_U xavier-normal over (U, M, 1) and softmaxed over the modalities once at initialisation; the
MLPs keep torch's Linear initialisation; the convolutions read the raw features, which stay
fixed; the item graph is built from the raw features; the user graph aggregates the fused
(concatenated) user representation, the item graph the concatenated item representation.

Not reproduced (no effect on any output): ``image_embedding``/``text_embedding`` (trainable
copies of the features only read, detached, to build the kNN graph) and ``image_trs``/
``text_trs`` (unused), so ``feat_embed_dim`` is not a key; ``weight_i``, ``MLP_v``, ``MLP_t``,
``MLP_user``, ``result_embed`` as a parameter (replaced by a plain tensor in the forward: the
``result`` buffer below) and the item-dropping edge lists (created but unused; unlike
DualGNN, DRAGON does not regularise ``weight_i``); the yaml's ``n_layers: 2`` is read by the code
as nothing (``self.n_layers`` is overwritten by ``n_mm_layers``); here ``n_layers`` counts the
user–item convolutions, 2 as the code's hard-coded pair. ``aggr_mode`` other than ``'add'`` is
refused. The code caches the item graph in ``mm_adj_{knn_k}.pt`` keyed by k alone (a changed
``mm_image_weight`` or feature set would reuse a stale file); here the cache key holds the
features, k and β.

Stale evaluation, reproduced by default (as :mod:`mmrecsys.models.dualgnn`): ranking uses the
representations of the last training forward (the code's ``result_embed``), kept in the
persistent ``result`` buffer ((U + I) × M·d) written at every training loss and saved in the
state dict; ``reuse_training_result=False`` ranks with a fresh forward. Before any training the
buffer is xavier-normal, drawn after every parameter (the code's is (U + I) × d, narrower than
its M·d representations; here it has the representations' width).

Choices: as :mod:`mmrecsys.models.dualgnn` (co-occurrence ties by ascending id, padding draws
from a numpy Generator seeded from torch's RNG every epoch).

Sparse and bounded: the kNN graphs come from the package's chunked exact top-k
(:func:`~mmrecsys.graphs.knn_adjacency`, cached; the code builds the dense I × I cosine
matrix), the co-occurrence lists from row blocks of R Rᵀ (cached), G_u is CSR with ≤ k entries
per row.
"""
from __future__ import annotations

import torch

from ..graphs import SparseGraph
from .base import Recommender
from .dualgnn import _GRID, _TRAIN, UserGraphMixin
from .freedom import BUILDER_VERSION as _FREEDOM_GRAPH_VERSION
from .freedom import freedom_item_graph


class DRAGON(UserGraphMixin, Recommender):
    """DRAGON: DualGNN's modality convolutions and user co-occurrence graph, attentive
    concatenation of the modalities, and a frozen item–item kNN graph.

    No tuned values of the grid are published (MMRec's yaml and README give the grid only), so
    ``reg_weight`` defaults to 1e-3, the middle of the yaml's grid, and the learning rate to
    MMRec's ``overall.yaml`` default 1e-3 (a value of the grid).

    Args:
        embedding_dim: d, width of each modality's representation (the code's hard-coded
            ``dim_latent = 64``; the final representations are M·d wide). (default: ``64``)
        n_layers: L, graph convolutions on the user–item graph, summed with their input (the
            code's two hard-coded calls). (default: ``2``)
        n_mm_layers: L_m, propagation layers on the item–item graph. (default: ``1``)
        knn_k: k, neighbours per item in each modality's kNN graph (itself included).
            (default: ``10``)
        mm_image_weight: β, weight of the first modality's (image) kNN graph; the others share
            1 − β. (default: ``0.1``)
        user_knn_k: neighbour slots per user in the user co-occurrence graph (the code's
            hard-coded ``self.k = 40``). (default: ``40``)
        reg_weight: λ, weight of the preference and fusion-weight regularisers (grid
            {0.1, 0.01, 0.001, 0.0001, 0.00001}). (default: ``0.001``)
        aggr_mode: aggregation of the convolutions; only ``'add'`` (normalised sum), the yaml's
            only value. (default: ``'add'``)
        user_aggr: weights of a user's slots: ``'softmax'`` of the co-occurrence counts (the
            code's ``user_aggr_mode``) or ``'mean'`` (1/k). (default: ``'softmax'``)
        reuse_training_result: True, as the code's ``full_sort_predict``: evaluation ranks with
            the representations of the last training forward (the persistent ``result``
            buffer; random before any training); False computes fresh ones from the current
            weights. (default: ``True``)
    """

    name = "dragon"
    aliases = {"embedding_size": "embedding_dim"}
    requires_features = True
    train_defaults = dict(_TRAIN)
    search_space = {"aggr_mode": ["add"], "reg_weight": list(_GRID), "lr": list(_GRID)}
    notes = ("The user co-occurrence graph (top-40 co-users per user, short lists padded by "
             "random repeats) is resampled before every training epoch (pre_epoch). The BPR term "
             "uses log2, as MMRec. Representations are M·embedding_dim wide (concatenation). "
             "Evaluation ranks with the representations of the last training batch, as MMRec "
             "(reuse_training_result=false recomputes them).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 n_mm_layers: int = 1, knn_k: int = 10, mm_image_weight: float = 0.1,
                 user_knn_k: int = 40, reg_weight: float = 0.001, aggr_mode: str = "add",
                 user_aggr: str = "softmax", reuse_training_result: bool = True):
        super().__init__(data, cache)
        self._check_common(embedding_dim, n_layers, user_knn_k, reg_weight, aggr_mode, user_aggr)
        if n_mm_layers < 0 or knn_k < 1:
            raise ValueError(f"n_mm_layers={n_mm_layers} must be ≥ 0 and knn_k={knn_k} ≥ 1")
        if not 0.0 <= mm_image_weight <= 1.0:
            raise ValueError(f"mm_image_weight={mm_image_weight}: a weight in [0, 1]")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_mm_layers = n_mm_layers
        self.knn_k = knn_k
        self.mm_image_weight = mm_image_weight
        self.user_knn_k = user_knn_k
        self.reg_weight = reg_weight
        self.aggr_mode = aggr_mode
        self.user_aggr = user_aggr
        self.reuse_training_result = bool(reuse_training_result)
        self._build_common(data, cache, "dragon")
        feats = [data.features[m] for m in self.modalities]
        item_graph = self.cached_graph(
            cache, "dragon-item-graph",
            {"data": data.fingerprint(with_features=True), "modalities": self.modalities,
             "k": knn_k, "image_weight": mm_image_weight, "version": _FREEDOM_GRAPH_VERSION},
            lambda: freedom_item_graph(feats, knn_k, mm_image_weight))
        self.item_graph = SparseGraph(item_graph, symmetric=False)
        self._register_result(len(self.modalities) * embedding_dim)
        self._init_common()
        self._init_result()

    def reset_parameters(self):
        """Re-draw every parameter in the constructor's order (MLPs: torch's Linear default),
        then the stored ``result``."""
        self._reset_linears()
        self._init_common()
        self._init_result()

    def fused(self, reps: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ē_U, Ē_I): attentive concatenation of the modality representations."""
        nu = self.n_users
        item = torch.cat([r[nu:] for r in reps], 1)
        if len(reps) == 1:
            return reps[0][:nu], item
        user = torch.cat([r[:nu] * self.weight_u[:, m] for m, r in enumerate(reps)], 1)
        return user, item

    def forward(self):
        user, item = self.fused(self._modality_reps())
        h = item
        for _ in range(self.n_mm_layers):
            h = self.item_graph(h)
        return user + self._user_graph()(user), item + h

    def loss(self, users, pos, neg):
        e_u, e_i = self.forward()
        self._store_result(e_u, e_i)
        out = self._bpr_and_preferences(e_u[users], e_i[pos], e_i[neg], users)
        out["reg"] = out["reg"] + self.reg_weight * (self.weight_u ** 2).mean()
        return out
