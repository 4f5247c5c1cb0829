"""NCL: Lin, Tian, Hou and Zhao, "Improving Graph Collaborative Filtering with
Neighborhood-enriched Contrastive Learning", WWW 2022 (Sec. 3: Eq. 7 the LightGCN backbone,
Eqs. 8–9 structural contrast, Eqs. 10–12 prototypes and the EM view of k-means, Eq. 13 the
joint loss), as in the authors' ``RUCAIBox/NCL`` (``ncl.py``, ``trainer.py``, settings
``properties/NCL.yaml``, ``properties/overall.yaml``; on RecBole 1.0.0). Where paper and code
differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim``, L = ``n_layers``, Â = D^{-1/2} A D^{-1/2}
the normalised user–item graph (D = deg + 1e-7), E^l = Â^l E^0 with E^0 = [E_U; E_I],
h = ``hyper_layers``, τ = ``temperature``, K = ``num_clusters``.

Backbone: :math:`H = \\frac1{L+1}\\sum_{l=0}^{L} E^l` (the code propagates max(L, 2h) layers and
averages the first L + 1). Scores: hᵤᵀhᵢ.

Structural neighbours (Eq. 9): a node's layer-2h embedding (its even-hop neighbourhood) against
its own layer-0 embedding, every layer-0 user (item) as a candidate; with ẑ the L2-normalised rows,

.. math::
    \\mathcal L_S = \\sum_b ℓ(\\hat e^{2h}_{u_b}; \\hat e^0_{u_b}; \\hat E^0_U)
      + α \\sum_b ℓ(\\hat e^{2h}_{i_b}; \\hat e^0_{i_b}; \\hat E^0_I),\\qquad
    ℓ(a; p; C) = \\log\\sum_{c\\in C} e^{a^\\top c/τ} - a^\\top p/τ

Semantic neighbours (Eq. 12): K prototypes per side, the k-means centroids of the layer-0
embeddings (FAISS ``Kmeans``, L2, 25 iterations, seed 1234; centroids then L2-normalised), each
node's positive its own cluster's centroid c(·):

.. math::
    \\mathcal L_P = \\sum_b ℓ(\\hat e^0_{u_b}; c_U(u_b); C_U) + \\sum_b ℓ(\\hat e^0_{i_b}; c_I(i_b); C_I)

Joint loss per batch (Eq. 13, the code's three terms):

.. math::
    \\mathcal L = \\mathrm{BPRLoss} + λ\\,\\mathrm{EmbLoss}(E^0_u, E^0_i, E^0_j)
      + λ_1 \\mathcal L_S + λ_2 \\mathcal L_P

BPRLoss is RecBole's −mean log(1e-10 + σ(·)); EmbLoss the sum of un-squared Frobenius norms of
the batch's layer-0 rows over B; ℒ_S and ℒ_P are sums over the batch (the positive items on the
item side). The E-step (k-means) runs before every ``m_step``-th epoch on the current E⁰ (the
code's ``NCLTrainer.fit``); ℒ_P is left out in the first ``warm_up_step`` epochs (the trainer
drops the last loss term while ``epoch < warm_up_step``). A k-means whose prototypes no epoch
would use (all within the warm-up) is skipped: it draws no random numbers, so the run is the
same. E_U and E_I are each xavier-uniform (RecBole's ``xavier_uniform_initialization``).
The prototypes are kept in the state dict, so a resumed run continues with the same ones.

Defaults are ``properties/NCL.yaml`` and ``overall.yaml`` (the authors' ml-1m setting): d 64,
L 3, λ 1e-4, τ 0.1, λ₁ 1e-7, h 1, α 1, λ₂ 8e-8, K 1000, m_step 1, warm-up 20, batch 4096,
lr 1e-3 (RecBole's default). LGMRec's Table 2 ran every baseline at batch 2048 (set
``batch_size`` to compare so). Search space: the values of the authors' five tuned dataset
settings (``properties/{ml-1m,yelp,amazon-books,gowalla-merged,alibaba}.yaml``), except
K = 10000 (alibaba), more prototypes than Baby has items, plus the learning rates they use
(1e-3, and 2e-3 for gowalla-merged).

Exact reformulations for speed: both contrastive terms are computed once per *distinct* batch
user (item), weighted by multiplicity; their B × N blocks are one product and one exponential
forward and two products backward, in a buffer reused from step to step.

Protocol differences from the reference (the model maths and loss are kept): RecBole splits
each user's interactions 8:1:1 at random, selects on validation NDCG@10 and stops after 10
evaluations without improvement; here MMRec's protocol applies (its split, full ranking, early
stopping on validation Recall@20 with the trainer's patience). RecBole draws one negative per
training pair uniformly over *all* item ids, rejecting the user's training items (items seen only
in validation or test included); the trainer draws over the items with training interactions
(MMRec's sampler), and ``negatives_from: all_items`` gives RecBole's candidates. RecBole also
adds a ``[PAD]`` user and item (id 0): isolated rows that sit among the InfoNCE candidates and
the k-means points; there is no such row here (an effect of one row in thousands).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, kmeans, normalized_adjacency
from .base import Recommender
from .layers import bpr_loss, emb_loss, info_nce_rows, sum_over_rows


class NCL(Recommender):
    """NCL: LightGCN with structural-neighbour and prototype (k-means) contrastive terms.

    Args:
        embedding_dim: d, width of the layer-0 embeddings (``embedding_size``).
            (default: ``64``)
        n_layers: L, LightGCN layers averaged for scoring. (default: ``3``)
        reg_weight: λ, weight of EmbLoss on the batch's layer-0 rows. (default: ``0.0001``)
        temperature: τ of both contrastive terms (``ssl_temp``). (default: ``0.1``)
        ssl_reg: λ₁, weight of the structural-neighbour term. (default: ``1e-07``)
        hyper_layers: h: the structural view is layer 2h. (default: ``1``)
        alpha: α, weight of the item side in the structural term. (default: ``1.0``)
        proto_reg: λ₂, weight of the prototype term. (default: ``8e-08``)
        num_clusters: K, prototypes per side (k-means clusters of users and of items); at
            most the number of users and of items. (default: ``1000``)
        m_step: epochs between two E-steps (k-means runs). (default: ``1``)
        warm_up_step: epochs trained without the prototype term. (default: ``20``)
    """

    name = "ncl"
    aliases = {"embedding_size": "embedding_dim", "ssl_temp": "temperature"}
    train_defaults = {"lr": 1e-3, "batch_size": 4096}   # properties/overall.yaml; RecBole's lr
    search_space = {"reg_weight": [1e-4, 1e-6], "temperature": [0.05, 0.1],
                    "ssl_reg": [1e-9, 1e-7, 1e-6], "alpha": [0.5, 0.8, 1.0, 1.5],
                    "proto_reg": [1e-10, 5e-8, 8e-8, 1e-7], "num_clusters": [10, 1000, 2000],
                    "lr": [1e-3, 2e-3]}
    notes = ("Prototypes are refreshed by FAISS k-means before every m_step-th epoch; the "
             "prototype term starts after warm_up_step epochs.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 3,
                 reg_weight: float = 1e-4, temperature: float = 0.1, ssl_reg: float = 1e-7,
                 hyper_layers: int = 1, alpha: float = 1.0, proto_reg: float = 8e-8,
                 num_clusters: int = 1000, m_step: int = 1, warm_up_step: int = 20):
        if embedding_dim < 1 or n_layers < 0:
            raise ValueError("embedding_dim must be ≥ 1 and n_layers ≥ 0")
        if hyper_layers < 1:
            raise ValueError(f"hyper_layers={hyper_layers}: the structural view is layer 2h, h ≥ 1")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        if min(reg_weight, ssl_reg, proto_reg, alpha) < 0:
            raise ValueError("reg_weight, ssl_reg, proto_reg and alpha must be ≥ 0")
        if m_step < 1 or warm_up_step < 0:
            raise ValueError("m_step must be ≥ 1 and warm_up_step ≥ 0")
        fewest = min(data.n_users, data.n_items)
        if not 1 <= num_clusters <= fewest:
            raise ValueError(f"num_clusters={num_clusters}: k-means needs 1 ≤ K ≤ {fewest} (the "
                             f"dataset has {data.n_users} users and {data.n_items} items)")
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.reg_weight = float(reg_weight)
        self.temperature = float(temperature)
        self.ssl_reg = float(ssl_reg)
        self.hyper_layers = hyper_layers
        self.alpha = float(alpha)
        self.proto_reg = float(proto_reg)
        self.num_clusters = int(num_clusters)
        self.m_step = m_step
        self.warm_up_step = warm_up_step
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.norm_adj = SparseGraph(normalized_adjacency(data.train), symmetric=True)
        k = self.num_clusters
        self.register_buffer("user_centroids", torch.zeros(k, embedding_dim))
        self.register_buffer("item_centroids", torch.zeros(k, embedding_dim))
        self.register_buffer("user_2cluster", torch.zeros(self.n_users, dtype=torch.long))
        self.register_buffer("item_2cluster", torch.zeros(self.n_items, dtype=torch.long))
        self.register_buffer("prototypes_ready", torch.zeros((), dtype=torch.bool))
        self.epoch = 0
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        self.prototypes_ready.fill_(False)

    # ------------------------------------------------------------------ E-step
    def e_step(self) -> None:
        """k-means of the current layer-0 users and items (the code's ``e_step``)."""
        for table, cents, assign in ((self.user_embedding, self.user_centroids, self.user_2cluster),
                                     (self.item_embedding, self.item_centroids, self.item_2cluster)):
            c, a = kmeans(table.detach(), self.num_clusters)
            cents.copy_(F.normalize(torch.from_numpy(c), dim=1))
            assign.copy_(torch.from_numpy(a))
        self.prototypes_ready.fill_(True)

    def pre_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # an E-step at epoch e serves epochs e .. e + m_step − 1: run it when one of them uses it
        if epoch % self.m_step == 0 and epoch + self.m_step - 1 >= self.warm_up_step:
            self.e_step()

    # ------------------------------------------------------------------ forward
    def _layers(self):
        """(mean of layers 0..L, layer 0, layer 2h)."""
        e0 = torch.cat([self.user_embedding, self.item_embedding], 0)
        acc, h, ctx = e0, e0, None
        for layer in range(1, max(self.n_layers, 2 * self.hyper_layers) + 1):
            h = self.norm_adj(h)
            if layer <= self.n_layers:
                acc = acc + h
            if layer == 2 * self.hyper_layers:
                ctx = h
        return acc / (self.n_layers + 1), e0, ctx

    def forward(self):
        out, _, _ = self._layers()
        return out[: self.n_users], out[self.n_users:]

    def loss(self, users, pos, neg):
        mean, e0, ctx = self._layers()
        nu = self.n_users
        user_all, item_all = mean[:nu], mean[nu:]
        u = user_all[users]
        out = {"bpr": bpr_loss((u * item_all[pos]).sum(1), (u * item_all[neg]).sum(1)),
               "reg": self.reg_weight * emb_loss(self.user_embedding[users],
                                                 self.item_embedding[pos],
                                                 self.item_embedding[neg])}
        tau = self.temperature
        cu, ci = e0[:nu], e0[nu:]
        cun, cin = F.normalize(cu, dim=1), F.normalize(ci, dim=1)
        xu, xi = ctx[:nu], ctx[nu:]
        ssl_u = sum_over_rows(users, lambda r: info_nce_rows(xu[r], cun[r], cun, tau, False))
        ssl_i = sum_over_rows(pos, lambda r: info_nce_rows(xi[r], cin[r], cin, tau, False))
        out["ssl"] = self.ssl_reg * (ssl_u + self.alpha * ssl_i)
        out["proto"] = mean.new_zeros(())
        if self.epoch >= self.warm_up_step:
            if not bool(self.prototypes_ready):   # e.g. a loss called without pre_epoch
                self.e_step()
            cu_, ci_ = self.user_centroids, self.item_centroids
            pu = sum_over_rows(users, lambda r: info_nce_rows(
                cu[r], cu_[self.user_2cluster[r]], cu_, tau, False))
            pi = sum_over_rows(pos, lambda r: info_nce_rows(
                ci[r], ci_[self.item_2cluster[r]], ci_, tau, False))
            out["proto"] = self.proto_reg * (pu + pi)
        return out

    def representations(self):
        return self.forward()
