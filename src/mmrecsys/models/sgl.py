"""SGL: Wu, Wang, Feng, He, Chen, Lian and Xie, "Self-supervised Graph Learning for
Recommendation", SIGIR 2021 (Sec. 3: Eqs. 5–7 the three augmentations, Eq. 10 InfoNCE, Eq. 11
the joint loss), as in the authors' ``wujcan/SGL-Torch`` (``model/general_recommender/SGL.py``,
settings ``conf/SGL.ini``). Where paper and code differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim``, L = ``n_layers``, R the binary (U, I)
training matrix, ρ = ``ssl_ratio``, τ = ``temperature``, λ₁ = ``ssl_reg``, λ₂ = ``reg_weight``.
For a bipartite edge set S, Â(S) = D^{-1/2} A(S) D^{-1/2} with A(S) = [[0, R_S], [R_Sᵀ, 0]] and
0^{-1/2} = 0 (isolated nodes get zero rows).

Encoder (LightGCN; the main view on the full graph, the two augmented views on sampled ones):

.. math::
    H(\\hat A_1, …, \\hat A_L) = \\frac1{L+1}\\Big(E^0 + \\sum_{l=1}^{L} \\hat A_l \\cdots \\hat A_1 E^0\\Big),
    \\qquad E^0 = [E_U; E_I]

Augmentations (``aug_type``), drawn afresh before every epoch, two independent views s′, s″:

* ``ed`` (edge dropout, Eq. 6; the default, as LGMRec's Table 2 runs it): keep ⌊|R|(1 − ρ)⌋
  edges drawn uniformly without replacement; one graph for every layer.
* ``nd`` (node dropout, Eq. 5): drop ⌊Uρ⌋ users and ⌊Iρ⌋ items uniformly without replacement
  with all their edges (their layer-0 embeddings stay); one graph for every layer. (The code's
  ``nd`` passes the float Uρ as a sample size and stops with a TypeError; the floor is ours.)
* ``rw`` (random walk, Eq. 7): edge dropout drawn independently for each layer (L graphs per view).

With ρ = 0 both views are the full graph (the code's ``ssl_ratio > 0`` test).

Loss per batch of B triples (u_b, i_b, j_b) (Eq. 11; the code's sums, not means). With
z′, z″ the L2-normalised view embeddings,

.. math::
    \\mathcal L = -\\sum_b \\log\\sigma(h_{u_b}^\\top h_{i_b} - h_{u_b}^\\top h_{j_b})
      + λ_1 \\sum_b \\Big[\\log\\sum_{v\\in U} e^{z'^\\top_{u_b} z''_v/τ} - z'^\\top_{u_b} z''_{u_b}/τ\\Big]
      + λ_1 \\sum_b \\Big[\\log\\sum_{k\\in I} e^{z'^\\top_{i_b} z''_k/τ} - z'^\\top_{i_b} z''_{i_b}/τ\\Big]
      + \\frac{λ_2}2 \\big(\\lVert E^0_{u}\\rVert^2 + \\lVert E^0_{i}\\rVert^2 + \\lVert E^0_{j}\\rVert^2\\big)

The contrast runs over every user (every item) as candidates, not the batch (the code's
``torch.matmul(user_embs1, user_embeddings2ᵀ)``); the item side uses the positive items. The
regulariser is ½‖·‖² summed over the batch's layer-0 rows (the code's ``l2_loss``). Scores:
hᵤᵀhᵢ of the main view. E_U and E_I are each xavier-uniform (two tables, as the code's two
``nn.Embedding``).

Defaults are ``conf/SGL.ini``: d 64, L 3, ρ 0.1, τ 0.2, λ₁ 0.1, λ₂ 1e-4, lr 1e-3, batch 2048
(also LGMRec's common setting of every baseline: batch 2048, lr 1e-3, d 64). Search space: the
paper's Sec. 4.1.3 grid (λ₁ ∈ {0.005, 0.01, 0.05, 0.1, 0.5, 1.0}, τ ∈ {0.1, 0.2, 0.5, 1.0},
ρ ∈ {0, 0.1, …, 0.5}).

Not reproduced, and why: the code's ``ssl_mode`` setting is read but never used (both sides
always contrast), so it is not an option; an unused ``nn.Dropout(0.1)`` has no effect.

Exact reformulations for speed: the InfoNCE is computed once per *distinct* batch user (item)
and weighted by its multiplicity (the code repeats the row); its B × N block is one product
and one exponential forward and two products backward (no autograd passes over it), in a
buffer reused from step to step; the propagation uses CSR products.

Protocol differences from SGL-Torch (the model maths and loss are kept): SGL-Torch has no
validation split and stops on test metrics after 10 evaluations without improvement (test data
in selection); here MMRec's protocol applies (train/valid/test split, full ranking, early
stopping on validation Recall@20 with the trainer's patience). Its sampler
(``data/sampler.py`` ``_pairwise_sampling_v2``) draws |R| users uniformly *with* replacement per
epoch, a positive uniformly from each drawn user's items and a negative over all items; here an
epoch passes every training pair once with one negative from the items with training
interactions (MMRec's sampler; ``negatives_from: all_items`` widens the negatives). Its
subgraphs come from reckit's C++ generator, seeded with the constant 2020 and never reseeded,
so every run of the code draws the same subgraphs whatever its seed; here they come from the
trainer's seeded generator. RecBole's ``SGL`` implements the same model with other defaults
(``RUCAIBox/RecBole`` ``recbole/properties/model/SGL.yaml``); those are not used.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..graphs import SparseGraph, bipartite_adjacency, sym_normalize
from .base import Recommender
from .layers import info_nce_rows, propagate, sum_over_rows

AUG_TYPES = ("ed", "nd", "rw")


class SGL(Recommender):
    """SGL: LightGCN with two stochastically augmented graph views and an all-node InfoNCE.

    Args:
        embedding_dim: d, width of the layer-0 embeddings (SGL-Torch ``embed_size``).
            (default: ``64``)
        n_layers: L, LightGCN layers (all three views). (default: ``3``)
        aug_type: the augmentation of both views: ``ed`` edge dropout, ``nd`` node dropout,
            ``rw`` random walk (edge dropout drawn per layer). (default: ``'ed'``)
        ssl_ratio: ρ, the share of edges (``ed``, ``rw``) or of users and of items (``nd``)
            dropped in each view, in [0, 1). (default: ``0.1``)
        temperature: τ of the InfoNCE (SGL-Torch ``ssl_temp``). (default: ``0.2``)
        ssl_reg: λ₁, weight of the InfoNCE terms. (default: ``0.1``)
        reg_weight: λ₂, weight of ½‖·‖² on the batch's layer-0 rows (SGL-Torch ``reg``).
            (default: ``0.0001``)
    """

    name = "sgl"
    aliases = {"embed_size": "embedding_dim", "ssl_temp": "temperature", "reg": "reg_weight"}
    train_defaults = {"lr": 1e-3, "batch_size": 2048}   # conf/SGL.ini
    search_space = {"ssl_reg": [0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
                    "temperature": [0.1, 0.2, 0.5, 1.0],
                    "ssl_ratio": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}
    notes = ("Losses are sums over the batch (SGL-Torch), not means; the InfoNCE contrasts each "
             "batch node with every user / item of the other view.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 3,
                 aug_type: str = "ed", ssl_ratio: float = 0.1, temperature: float = 0.2,
                 ssl_reg: float = 0.1, reg_weight: float = 1e-4):
        aug = str(aug_type).lower()
        if aug not in AUG_TYPES:
            raise ValueError(f"aug_type={aug_type!r}: use one of {', '.join(AUG_TYPES)} "
                             "(edge dropout, node dropout, random walk)")
        if embedding_dim < 1 or n_layers < 0:
            raise ValueError("embedding_dim must be ≥ 1 and n_layers ≥ 0")
        if aug == "rw" and n_layers < 1:
            raise ValueError("aug_type='rw' draws one graph per layer: n_layers must be ≥ 1")
        if not 0.0 <= ssl_ratio < 1.0:
            raise ValueError(f"ssl_ratio={ssl_ratio}: the share dropped per view, in [0, 1)")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        if ssl_reg < 0 or reg_weight < 0:
            raise ValueError("ssl_reg and reg_weight must be ≥ 0")
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.aug_type = aug
        self.ssl_ratio = float(ssl_ratio)
        self.temperature = float(temperature)
        self.ssl_reg = float(ssl_reg)
        self.reg_weight = float(reg_weight)
        train = data.train.tocoo()
        self._users = np.asarray(train.row, dtype=np.int64)
        self._items = np.asarray(train.col, dtype=np.int64)
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.norm_adj = SparseGraph(self._graph(self._users, self._items), symmetric=True)
        self.views: list | None = None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)

    # ------------------------------------------------------------------ graphs
    def _graph(self, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
        r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                          shape=(self.n_users, self.n_items))
        return sym_normalize(bipartite_adjacency(r), eps=0.0)

    def _augmented(self) -> SparseGraph:
        """One augmented graph Â(S) (the code's ``create_adj_mat(is_subgraph=True)``)."""
        n = len(self._users)
        if self.aug_type == "nd":
            keep_u = torch.ones(self.n_users, dtype=torch.bool)
            keep_i = torch.ones(self.n_items, dtype=torch.bool)
            keep_u[torch.randperm(self.n_users)[: int(self.n_users * self.ssl_ratio)]] = False
            keep_i[torch.randperm(self.n_items)[: int(self.n_items * self.ssl_ratio)]] = False
            keep = (keep_u.numpy()[self._users] & keep_i.numpy()[self._items]).nonzero()[0]
        else:
            keep = torch.randperm(n)[: int(n * (1 - self.ssl_ratio))].numpy()
        return SparseGraph(self._graph(self._users[keep], self._items[keep]), symmetric=True)

    def _draw_views(self) -> list:
        """[view 1, view 2], each a list of per-layer operators (one shared operator unless rw)."""
        if self.ssl_ratio == 0:
            return [[self.norm_adj] * self.n_layers] * 2
        views = []
        for _ in range(2):
            if self.aug_type == "rw":
                views.append([self._augmented() for _ in range(self.n_layers)])
            else:
                views.append([self._augmented()] * self.n_layers)
        return views

    def pre_epoch(self, epoch: int) -> None:
        self.views = self._draw_views()

    # ------------------------------------------------------------------ forward
    def _encode(self, ops) -> torch.Tensor:
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        if isinstance(ops, SparseGraph):
            return propagate(ops, ego, self.n_layers)
        out, h = ego, ego
        for op in ops:
            h = op(h)
            out = out + h
        return out / (len(ops) + 1)

    def forward(self):
        out = self._encode(self.norm_adj)
        return out[: self.n_users], out[self.n_users:]

    def loss(self, users, pos, neg):
        if self.views is None:     # a loss before any pre_epoch: draw the views now
            self.views = self._draw_views()
        user_all, item_all = self.forward()
        u = user_all[users]
        bpr = -torch.nn.functional.logsigmoid((u * item_all[pos]).sum(1)
                                             - (u * item_all[neg]).sum(1)).sum()
        reg = 0.5 * (self.user_embedding[users].pow(2).sum() + self.item_embedding[pos].pow(2).sum()
                     + self.item_embedding[neg].pow(2).sum())
        out = {"bpr": bpr, "reg": self.reg_weight * reg}
        if self.ssl_reg:
            v1, v2 = self._encode(self.views[0]), self._encode(self.views[1])
            u1, i1 = v1[: self.n_users], v1[self.n_users:]
            u2, i2 = v2[: self.n_users], v2[self.n_users:]
            # the code normalises the whole view tables; info_nce_rows normalises the rows it reads
            u2n = torch.nn.functional.normalize(u2, dim=1)
            i2n = torch.nn.functional.normalize(i2, dim=1)
            tau = self.temperature
            ssl_u = sum_over_rows(users, lambda r: info_nce_rows(u1[r], u2n[r], u2n, tau, False))
            ssl_i = sum_over_rows(pos, lambda r: info_nce_rows(i1[r], i2n[r], i2n, tau, False))
            out["ssl"] = self.ssl_reg * (ssl_u + ssl_i)
        return out

    def representations(self):
        return self.forward()
