"""FREEDOM: Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023 (arXiv:2211.06924), Sec. 3 (Eqs. 1–13), as in MMRec
(``enoche/MMRec`` ``src/models/freedom.py``, grid ``src/configs/model/FREEDOM.yaml``; the same
file as the authors' ``enoche/FREEDOM``). Where paper and code differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim``, k = ``knn_k``, R the binary (U, I) training
matrix with edge set E, X_m the raw features of modality m.

Frozen item–item graph (Eqs. 1–4; the code's ``get_knn_adj_mat``), built once from the raw
features: per modality the k most cosine-similar items of every item (itself included, since
its similarity is 1), as a binary directed adjacency S_m normalised by its row sums,
D^{-1/2} S_m D^{-1/2} with D = k, so every kept entry is 1/k; then

.. math::
    S = w\\,S_{image} + (1 - w)\\,S_{text}, \\qquad w = \\texttt{mm\\_image\\_weight}

(with M modalities: the first, ``image_feat``, weighted w, the others (1 − w)/(M − 1)).

Degree-sensitive edge pruning (Eqs. 5–6; the code's ``pre_epoch_processing``), before every
training epoch: each edge (u, i) ∈ E gets the weight π_ui = (d_u + 1e-7)^{-1/2}(d_i + 1e-7)^{-1/2};
⌊|E|(1 − p)⌋ edges are drawn without replacement with probability ∝ π (``torch.multinomial``),
and the kept subgraph R' is normalised with its own degrees,
Ã = D'^{-1/2} [[0, R'], [R'ᵀ, 0]] D'^{-1/2}, D' = deg' + 1e-7. Evaluation uses the full Â (same
formula on R).

Forward (Eqs. 7–10; the code's ``forward``):

.. math::
    h = S^{L_m} E_I,\\qquad
    [\\bar E_U; \\bar E_I] = \\frac1{L+1}\\sum_{l=0}^{L} \\tilde A^l [E_U; E_I],\\qquad
    e_u = \\bar e_u,\\quad e_i = \\bar e_i + h_i

Loss (Eqs. 11–13; the code's ``calculate_loss``), for a batch B of triples (u, i, j):

.. math::
    \\mathcal L = \\mathrm{BPR}(e_u, e_i, e_j)
      + \\lambda \\sum_m \\mathrm{BPR}(e_u, T_m[i], T_m[j]),\\qquad T_m = X_m W_m + b_m,

    \\mathrm{BPR}(u, a, b) = -\\frac1{|B|}\\sum \\log\\sigma(u^\\top a - u^\\top b)

The projected features T_m enter only this auxiliary loss, never the score
:math:`\\hat s_{ui} = e_u^\\top e_i` (computed with Â). λ = ``reg_weight`` weighs the modality
BPR terms; there is no L2 term.

Reproduced quirks of the code: the raw features are trainable (``nn.Embedding.from_pretrained(
freeze=False)``; ``finetune_features=False`` freezes them) while the item graph stays the one
built from the raw features; the projections keep torch's Linear initialisation; E_U, E_I are
xavier-uniform over the whole tables; ``lambda_coeff`` and ``cf_model`` of the yaml are unused
by the code and are not keys here.

Sparse and bounded: the kNN graphs come from the package's chunked exact top-k
(:func:`~mmrecsys.graphs.knn_adjacency` with binary values, full rows, so ties resolve as the
code's ``torch.topk`` over the dense cosine matrix; an all-zero feature row has cosine 0 to
every item here, NaN in the code) and are cached; the code builds the dense I × I cosine matrix.
The pruned graph is sampled and normalised with vectorised sparse operations.

Exact reformulations for speed: the projections are row-wise, so a step projects only the
distinct items of its batch (the code projects every item at every step), their feature rows
gathered block by block (:meth:`~mmrecsys.models.layers.FeatureTable.project`); with λ = 0 the
modality terms are skipped (their gradients are exactly 0, so Adam leaves those parameters
unchanged, as in the code).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..graphs import SparseGraph, binarize, inv_power, knn_adjacency, normalized_adjacency
from ..graphs.cooccurrence import weighted_sum
from .base import Recommender
from .layers import FeatureTable, bpr_logsigmoid, modality_weights, power, propagate

_EPS_DEG = 1e-7
BUILDER_VERSION = 2  # 2: knn_adjacency (binary, sym with eps 1e-7)


def freedom_item_graph(features: list, k: int, image_weight: float,
                       chunk_size: int = 2048) -> sp.csr_matrix:
    """S = Σ_m w_m D^{-1/2} S_m D^{-1/2}: the weighted kNN graphs of the modalities (module
    docstring), float32 CSR (I, I), directed (row i holds the neighbours of item i)."""
    weights = modality_weights(len(features), image_weight)
    return weighted_sum([(w, knn_adjacency(x, k, normalization="sym", values="binary", eps=_EPS_DEG,
                                           chunk_size=chunk_size) if w != 0 else None)
                         for w, x in zip(weights, features)])


def degree_sensitive_sample(users: torch.Tensor, items: torch.Tensor, weights: torch.Tensor,
                            keep: int, n_users: int, n_items: int) -> sp.csr_matrix:
    """R': ``keep`` edges (users[e], items[e]) drawn without replacement with probability ∝
    ``weights`` (``torch.multinomial``, torch's global RNG), as a binary (U, I) CSR matrix."""
    idx = torch.multinomial(weights, keep, replacement=False).cpu().numpy()
    u, i = users[idx].numpy(), items[idx].numpy()
    return sp.csr_matrix((np.ones(len(idx), dtype=np.float32), (u, i)), shape=(n_users, n_items))


class FREEDOM(Recommender):
    """FREEDOM: a frozen item–item kNN graph and a degree-sensitively pruned user–item graph.

    No tuned values of the grid are published (MMRec's yaml, the authors' repository and the
    paper give the grid only), so ``dropout`` and ``reg_weight`` default to the first values of
    the yaml's grid, the configuration MMRec's grid search trains first.

    Args:
        embedding_dim: d, width of the ID embeddings and of the projected features (MMRec's
            ``embedding_size`` = ``feat_embed_dim``). (default: ``64``)
        n_layers: L, LightGCN layers on the (pruned) user–item graph (the code's
            ``n_ui_layers``). (default: ``2``)
        n_mm_layers: L_m, propagation layers on the frozen item–item graph. (default: ``1``)
        knn_k: k, neighbours per item in each modality's kNN graph (itself included).
            (default: ``10``)
        mm_image_weight: w, weight of the first modality's (image) kNN graph; the others share
            1 − w. (default: ``0.1``)
        dropout: p, ratio of training edges pruned at every epoch; 0 trains on the full graph
            (grid {0.8, 0.9}). (default: ``0.8``)
        reg_weight: λ, weight of the modality BPR terms (grid {0.0, 1e-5, 1e-4, 1e-3}).
            (default: ``0.0``)
        finetune_features: True, as the code: the raw feature matrices are parameters trained
            by the optimiser (through the modality BPR terms); False keeps them fixed.
            (default: ``True``)
    """

    name = "freedom"
    aliases = {"embedding_size": "embedding_dim", "feat_embed_dim": "embedding_dim",
               "n_ui_layers": "n_layers"}
    requires_features = True
    search_space = {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]}
    notes = ("The user-item graph is pruned degree-sensitively before every training epoch "
             "(pre_epoch); evaluation uses the full graph. The raw features are fine-tuned, as in "
             "MMRec (finetune_features=false freezes them).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 n_mm_layers: int = 1, knn_k: int = 10, mm_image_weight: float = 0.1,
                 dropout: float = 0.8, reg_weight: float = 0.0, finetune_features: bool = True):
        super().__init__(data, cache)
        if embedding_dim < 1 or n_layers < 0 or n_mm_layers < 0 or knn_k < 1:
            raise ValueError("embedding_dim and knn_k must be ≥ 1, n_layers and n_mm_layers ≥ 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: the ratio of pruned edges, in [0, 1)")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_mm_layers = n_mm_layers
        self.knn_k = knn_k
        self.mm_image_weight = mm_image_weight
        self.dropout = dropout
        self.reg_weight = reg_weight
        self.finetune_features = finetune_features
        self.modalities = list(data.features)

        fp_train = data.fingerprint(with_features=False)
        g = self.cached_graph(cache, "freedom-ui-graph", {"data": fp_train, "eps": _EPS_DEG,
                                                          "version": BUILDER_VERSION},
                              lambda: self._ui_graph(data.train))
        self.norm_adj = SparseGraph(g["norm_adj"], symmetric=True)
        self.register_buffer("edge_users", torch.from_numpy(g["edge_users"]), persistent=False)
        self.register_buffer("edge_items", torch.from_numpy(g["edge_items"]), persistent=False)
        self.register_buffer("edge_weights", torch.from_numpy(g["edge_weights"]), persistent=False)
        feats = [data.features[m] for m in self.modalities]
        item_graph = self.cached_graph(
            cache, "freedom-item-graph",
            {"data": data.fingerprint(with_features=True), "modalities": self.modalities,
             "k": knn_k, "image_weight": mm_image_weight, "version": BUILDER_VERSION},
            lambda: freedom_item_graph(feats, knn_k, mm_image_weight))
        self.item_graph = SparseGraph(item_graph, symmetric=False)
        self.masked_adj = None

        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.features = nn.ModuleList(FeatureTable(x, trainable=finetune_features) for x in feats)
        self.projections = nn.ModuleList(nn.Linear(x.shape[1], embedding_dim) for x in feats)
        self._init_embeddings()

    @staticmethod
    def _ui_graph(train) -> dict:
        """Â, and the training edges with their pruning weights π (float32, as the code)."""
        r = binarize(train)
        c = r.tocoo()
        du = inv_power(np.diff(r.indptr).astype(np.float32), 0.5, _EPS_DEG)
        di = inv_power(np.bincount(r.indices, minlength=r.shape[1]).astype(np.float32), 0.5, _EPS_DEG)
        return {"norm_adj": normalized_adjacency(r, eps=_EPS_DEG),
                "edge_users": c.row.astype(np.int64), "edge_items": c.col.astype(np.int64),
                "edge_weights": (du[c.row] * di[c.col]).astype(np.float32)}

    def _init_embeddings(self):
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)

    def reset_parameters(self, data=None):
        """Re-draw every parameter in the constructor's order (the projections: torch's Linear
        default). With ``data`` (the dataset the model was built on) the feature tables return
        to the raw features; without it they keep their values."""
        for proj in self.projections:
            proj.reset_parameters()
        self._init_embeddings()
        if data is not None:
            for table, m in zip(self.features, self.modalities):
                table.reset(data.features[m])

    # ------------------------------------------------------------------ graphs
    def sample_adjacency(self) -> SparseGraph:
        """Ã: the degree-sensitively pruned, renormalised user–item graph (Â if dropout = 0)."""
        if self.dropout <= 0.0:
            return self.norm_adj
        n_edges = int(self.edge_weights.shape[0])
        keep = int(n_edges * (1.0 - self.dropout))          # the code's int(|E| · (1 − p))
        kept = degree_sensitive_sample(self.edge_users.cpu(), self.edge_items.cpu(),
                                       self.edge_weights, keep, self.n_users, self.n_items)
        return SparseGraph(normalized_adjacency(kept, eps=_EPS_DEG), symmetric=True).to(
            self.user_embedding.device)

    def pre_epoch(self, epoch: int) -> None:
        self.masked_adj = self.sample_adjacency()

    # ------------------------------------------------------------------ forward
    def forward(self, adj=None):
        """(e_U, e_I) on the user–item operator ``adj`` (default: the full Â)."""
        adj = self.norm_adj if adj is None else adj
        h = power(self.item_graph, self.item_embedding, self.n_mm_layers)
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        out = propagate(adj, ego, self.n_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def loss(self, users, pos, neg):
        if self.masked_adj is None:  # loss before any pre_epoch: draw a pruned graph now
            self.masked_adj = self.sample_adjacency()
        e_u, e_i = self.forward(self.masked_adj)
        u = e_u[users]
        out = {"bpr": bpr_logsigmoid((u * e_i[pos]).sum(1), (u * e_i[neg]).sum(1))}
        if self.reg_weight != 0 and self.modalities:
            uniq, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
            b = len(pos)
            mm = u.new_zeros(())
            for table, proj in zip(self.features, self.projections):
                t = table.project(proj, uniq)[inv]
                mm = mm + bpr_logsigmoid((u * t[:b]).sum(1), (u * t[b:]).sum(1))
            out["mm_bpr"] = self.reg_weight * mm
        return out

    def representations(self):
        return self.forward(self.norm_adj)
