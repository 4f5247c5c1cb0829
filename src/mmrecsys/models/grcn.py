"""GRCN: Wei, Wang, Nie, He & Chua, "Graph-Refined Convolutional Network for Multimedia
Recommendation with Implicit Feedback", ACM MM 2020 (arXiv:2111.02036; Sec. 3: graph refining
layer with prototypical routing and pruning, graph convolution layer, prediction layer), as in
MMRec (``enoche/MMRec`` ``src/models/grcn.py``, grid ``src/configs/model/GRCN.yaml``). Where
paper and code differ, the code is followed.

Notation: U users, I items, N = U + I nodes (users first), d = ``embedding_dim``, d_C =
``latent_dim``, M modalities with raw features X_m, E the training interactions (u, i) and E₂ the
directed edge list [u → i for (u, i) ∈ E; i → u for (u, i) ∈ E] (in that order), src(e)/tgt(e)
its endpoints; nrm = row-wise L2 normalisation (``F.normalize``, eps 1e-12), σ = LeakyReLU
(slope 0.01).

Content graph of modality m (the code's ``CGCN``):

.. math::
    F_m = \\mathrm{nrm}(\\sigma(X_m W_m^\\top + b_m)),\\qquad p_m = \\mathrm{nrm}(P_m),\\qquad
    x_m = [p_m;\\ F_m]

    \\alpha_{m,e} = \\mathrm{softmax}_{e' : tgt(e') = tgt(e)}\\big(x_{m,tgt(e')}^\\top x_{m,src(e')}\\big),
    \\qquad c_m = x_m + \\sum_{e:\\,tgt(e)=\\cdot} \\alpha_{m,e}\\, x_{m,src(e)}

(the softmax is PyG's: shifted by the group maximum, divided by the group sum + 1e-16).

Routing (the paper's prototypical routing): the code runs ``n_routing`` iterations of
p ← nrm(p + GAT(x, E)[:U]) on the *one-directional* list E (user → item). PyG aggregates at the
targets, the items, so the users' share is exactly zero and each iteration only re-normalises
p; this is reproduced exactly (p is normalised 1 + ``n_routing`` times; the discarded
item-side messages are not computed) and the paper's item-to-user routing is not offered.

Refined graph (pruning with the ``confid`` weight mode): with the model-specific confidences
C (N × M, a parameter),

.. math::
    w_e = \\mathrm{ReLU}\\big(\\max_m \\alpha_{m,e}\\, C_{src(e), m}\\big),\\qquad e \\in E_2

ID graph convolution (the code's ``EGCN``, sum aggregation, no activation):

.. math::
    x^{(0)} = \\mathrm{nrm}(E_{id}),\\quad x^{(l)}_v = \\sum_{e:\\,tgt(e)=v} w_e\\, x^{(l-1)}_{src(e)},
    \\quad r^{id} = \\sum_{l=0}^{L} x^{(l)}\\ (L = 2)

Representation (``concat`` fusion) and score: r = [r^{id}; c_1; …; c_M], ŝ_ui = r_uᵀ r_i.

Loss (the code's ``calculate_loss``), for a batch B, with **u** every batch user twice and **v**
the positive and negative items interleaved:

.. math::
    \\mathcal L = -\\frac1{|B|}\\sum \\log\\sigma_{sig}(r_u^\\top r_i - r_u^\\top r_j)
      + \\lambda\\Big(\\mathrm{mean}(E_{id}[\\mathbf u]^2 + E_{id}[\\mathbf v]^2)
      + \\mathrm{mean}_{U\\times d_C}(P_1^2) + \\sum_m \\mathrm{mean}(P_m[\\mathbf u]^2)\\Big)

(``torch.log(torch.sigmoid(.))`` as written; E_id and P_m the raw, un-normalised tables; with
λ = 0 the term, exactly 0 in the code, is not computed). The paper's formulas are referred to by
their section's names (the code cites no equation numbers).

Quirks of the code reproduced:

* the routing loop leaves the preferences unchanged up to re-normalisation (above);
* the first modality's preferences (``v_gcn.preference``) enter the regulariser twice: over all
  users, and over the batch's users with the others; the confidence regulariser the code
  computes (``reg_confid_loss``) is never added;
* ``has_act=False``, ``has_norm=True``, ``aggr_mode='add'``, ``weight_mode='confid'``,
  ``fusion_mode='concat'``, ``pruning=True`` are fixed in the code and here;
* the ID graph has two layers whatever the yaml's ``n_layers: 3``, which is the number of
  routing iterations (``n_routing`` here, ``n_layers`` counts the ID-graph layers);
* ``self.dropout = 0``: PyG's ``dropout_adj`` drops no edge; ``dropout`` > 0 drops each
  interaction (both directions) with that probability at every training forward (edges only;
  evaluation keeps them all);
* initialisation: E_id, every P_m and C ``xavier_normal_`` (after a discarded ``torch.rand`` of
  the same shape, as the code); the MLP weights ``xavier_normal_``, their biases torch's Linear
  default; the features are fixed (not trained);
* ``full_sort_predict`` ranks with ``self.result``, the representation of the *last training
  forward*: reproduced by the persistent buffer ``result`` (``reuse_training_result=False``
  recomputes it). Choice: before any training the buffer is a random xavier-normal
  N × (d + M·d_C) tensor (the code's is N × d, which cannot be scored against the full width).

Generalisation to any number of modalities: one content graph per modality of
``data.features`` in its order (default by file name: ``image_feat`` then ``text_feat``, the
code's v then t); the ``confid`` weight takes the maximum over all M modalities (C has M
columns, as the code's ``num_model``), the content blocks are concatenated in that order, and
the first modality plays ``v_gcn`` in the regulariser. With one modality, r = [r^{id}; c_1] (the
code crashes for a text-only dataset through a typo, ``conetent_rep``).

Choice: ``latent_dim=0`` (the default) means d_C = d; the yaml's ``latent_embedding: 64`` equals
its ``embedding_size: 64``, so the defaults are the yaml's.

Sparse and bounded: every graph operation runs on the 2|E| directed edges (gathers, a segment
softmax with ``scatter_reduce``/``index_add``, and :class:`~mmrecsys.graphs.EdgeList` products,
differentiable in the edge weights); no N × N matrix is formed.

Protocol differences: none in the model. The edges come from the training split only.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import binarize
from ..graphs.learned import EdgeList
from .base import Recommender
from .mmgcn import _xavier_normal_after_rand


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """PyG's ``softmax(scores, index, num_nodes=n)``: per group of equal ``index``,
    exp(s − max) / (Σ exp(s − max) + 1e-16)."""
    smax = scores.new_full((n,), -math.inf).scatter_reduce(
        0, index, scores.detach(), reduce="amax", include_self=True)
    out = torch.exp(scores - smax[index])
    total = out.new_zeros(n).index_add(0, index, out)
    return out / (total[index] + 1e-16)


class GRCN(Recommender):
    """GRCN as in MMRec: content graphs refine (re-weight and prune) the user–item graph on
    which the ID embeddings are convolved; ID and content representations are concatenated.

    Defaults: MMRec's ``GRCN.yaml`` and the code's fixed choices. Its grid is ``reg_weight`` ∈
    {0.1, 0.01, 1e-3, 1e-4, 1e-5} and ``lr`` ∈ {1, 0.1, 0.01, 1e-3, 1e-4} (:attr:`search_space`).
    MMRec publishes no tuned value, so ``reg_weight`` defaults to the grid's first value (the
    configuration MMRec's grid search trains first) and ``lr`` to MMRec's ``overall.yaml`` 1e-3
    (the trainer's default).

    Args:
        embedding_dim: d, width of the ID embeddings (MMRec's ``embedding_size``).
            (default: ``64``)
        latent_dim: d_C, width of every modality's projected features and user preferences
            (MMRec's ``latent_embedding``); 0 means d_C = d (the yaml's 64 = 64). (default: ``0``)
        n_layers: L, convolution layers of the ID embeddings on the refined graph (fixed to 2
            in the code). (default: ``2``)
        n_routing: routing iterations of the user preferences (the yaml's ``n_layers: 3``, the
            code's ``num_routing``). (default: ``3``)
        reg_weight: λ of the squared-value regulariser of ID embeddings and preferences (grid
            {0.1, 0.01, 1e-3, 1e-4, 1e-5}). (default: ``0.1``)
        dropout: probability of dropping each training interaction from the graph at every
            training forward (the code's ``dropout_adj`` with its fixed p = 0).
            (default: ``0.0``)
        reuse_training_result: True, as the code: evaluation ranks with the representation of
            the last training forward (the ``result`` buffer); False computes a fresh one.
            (default: ``True``)
    """

    name = "grcn"
    aliases = {"embedding_size": "embedding_dim", "latent_embedding": "latent_dim",
               "num_routing": "n_routing"}
    requires_features = True
    search_space = {"reg_weight": [0.1, 0.01, 1e-3, 1e-4, 1e-5],
                    "lr": [1.0, 0.1, 0.01, 1e-3, 1e-4]}
    notes = ("As MMRec's code: the routing loop only re-normalises the user preferences, the ID "
             "graph has two layers (the yaml's n_layers is n_routing here), and evaluation uses "
             "the representation of the last training batch (reuse_training_result=false "
             "recomputes it).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, latent_dim: int = 0,
                 n_layers: int = 2, n_routing: int = 3, reg_weight: float = 0.1,
                 dropout: float = 0.0, reuse_training_result: bool = True):
        super().__init__(data, cache)
        for key, v, low in (("embedding_dim", embedding_dim, 1), ("latent_dim", latent_dim, 0),
                            ("n_layers", n_layers, 0), ("n_routing", n_routing, 0)):
            if int(v) != v or v < low:
                raise ValueError(f"{key}={v}: must be an integer ≥ {low}")
        if not (reg_weight >= 0 and math.isfinite(reg_weight)):
            raise ValueError(f"reg_weight={reg_weight}: must be a finite value ≥ 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: the share of dropped interactions, in [0, 1)")
        self.embedding_dim = int(embedding_dim)
        self.latent_dim = int(latent_dim)
        self.dim_c = self.latent_dim or self.embedding_dim
        self.n_layers = int(n_layers)
        self.n_routing = int(n_routing)
        self.reg_weight = float(reg_weight)
        self.dropout = float(dropout)
        self.reuse_training_result = bool(reuse_training_result)
        self.modalities = list(data.features)

        c = binarize(data.train).tocoo()
        self.register_buffer("edge_users", torch.from_numpy(c.row.astype(np.int64)),
                             persistent=False)
        self.register_buffer("edge_items", torch.from_numpy(c.col.astype(np.int64) + self.n_users),
                             persistent=False)
        self._keys = self.register_features(data, trainable=False)

        n, n_mod = self.n_users + self.n_items, len(self._keys)
        self.id_embedding = nn.Parameter(torch.empty(n, self.embedding_dim))
        self.preferences = nn.ParameterList()
        self.mlps = nn.ModuleList()
        for x in data.features.values():
            self.preferences.append(nn.Parameter(torch.empty(self.n_users, self.dim_c)))
            self.mlps.append(nn.utils.skip_init(nn.Linear, x.shape[1], self.dim_c))
        self.confidence = nn.Parameter(torch.empty(n, n_mod))
        self.register_buffer("result", torch.empty(n, self.embedding_dim + n_mod * self.dim_c))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw everything in the code's constructor order: E_id, then per modality P_m and
        its MLP, then C, then the stored result."""
        _xavier_normal_after_rand(self.id_embedding)
        for pref, mlp in zip(self.preferences, self.mlps):
            _xavier_normal_after_rand(pref)
            mlp.reset_parameters()
            with torch.no_grad():
                nn.init.xavier_normal_(mlp.weight)
        _xavier_normal_after_rand(self.confidence)
        _xavier_normal_after_rand(self.result)

    # ------------------------------------------------------------------ forward
    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items + U) of the interactions in this forward's graph (``dropout``)."""
        u, i = self.edge_users, self.edge_items
        if self.training and self.dropout > 0:
            keep = torch.rand(len(u), device=u.device) >= self.dropout
            u, i = u[keep], i[keep]
        return u, i

    def content(self, m: int, tgt: torch.Tensor, src: torch.Tensor):
        """(c_m (N × d_C), α_m over the directed edges (tgt, src))."""
        n = self.n_users + self.n_items
        feat = F.normalize(F.leaky_relu(self.mlps[m](self.feature_table(self._keys[m]))))
        pref = F.normalize(self.preferences[m])
        for _ in range(self.n_routing):   # users receive no message on user → item edges
            pref = F.normalize(pref)
        x = torch.cat([pref, feat], 0)
        alpha = segment_softmax((x[tgt] * x[src]).sum(1), tgt, n)
        return x + EdgeList(tgt, src, alpha, (n, n))(x), alpha

    def forward(self) -> torch.Tensor:
        """r = [r^{id}; c_1; …; c_M] (N × (d + M·d_C), users first)."""
        n = self.n_users + self.n_items
        u, i = self.edges()
        tgt, src = torch.cat([i, u]), torch.cat([u, i])
        contents, weights = [], []
        for m in range(len(self._keys)):
            c, alpha = self.content(m, tgt, src)
            contents.append(c)
            weights.append(alpha * self.confidence[src, m])
        w = torch.relu(torch.stack(weights, 1).max(1).values)
        graph = EdgeList(tgt, src, w, (n, n))
        x = F.normalize(self.id_embedding)
        rep, h = x, x
        for _ in range(self.n_layers):
            h = graph(h)
            rep = rep + h
        return torch.cat([rep] + contents, 1)

    def loss(self, users, pos, neg):
        out = self.forward()
        if self.training:
            with torch.no_grad():
                self.result.copy_(out)
        u_idx = users.repeat_interleave(2)
        i_idx = torch.stack([pos, neg]).t().reshape(-1) + self.n_users
        score = (out[u_idx] * out[i_idx]).sum(1).view(-1, 2)
        terms = {"bpr": -torch.mean(torch.log(torch.sigmoid(score[:, 0] - score[:, 1])))}
        if self.reg_weight != 0:
            reg = (self.id_embedding[u_idx] ** 2 + self.id_embedding[i_idx] ** 2).mean()
            reg = reg + (self.preferences[0] ** 2).mean()
            for pref in self.preferences:
                reg = reg + (pref[u_idx] ** 2).mean()
            terms["reg"] = self.reg_weight * reg
        return terms

    def representations(self):
        rep = self.result if self.reuse_training_result else self.forward()
        return rep[: self.n_users], rep[self.n_users:]
