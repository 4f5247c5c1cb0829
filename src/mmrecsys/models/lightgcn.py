"""LightGCN: He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020 (Eqs. 3–5: light graph convolution, layer combination with
α_l = 1/(L+1), prediction; Eq. 7: the matrix form), as in MMRec (``enoche/MMRec``
``src/models/lightgcn.py``, grid ``src/configs/model/LightGCN.yaml``).

.. math::
    \\hat A = D^{-1/2} A D^{-1/2},\\ D_{vv} = \\deg(v) + 10^{-7}, \\qquad
    [E^*_U; E^*_I] = \\frac1{L+1} \\sum_{l=0}^{L} \\hat A^l [E_U; E_I]

    \\mathcal L = \\mathrm{BPRLoss}(e^*_u\\cdot e^*_i,\\ e^*_u\\cdot e^*_j)
      + \\lambda\\, \\mathrm{EmbLoss}(E_U[u], E_I[i], E_I[j])

The regulariser is on the layer-0 rows of the batch. E⁰ is xavier-uniform over the table.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graphs import SparseGraph, normalized_adjacency
from .base import Recommender
from .layers import bpr_loss, emb_loss, propagate


class LightGCN(Recommender):
    """LightGCN: linear propagation on the normalised user–item graph, mean over layers.

    Args:
        embedding_dim: d, width of the layer-0 embeddings E⁰ (MMRec's ``embedding_size``).
            (default: ``64``)
        n_layers: L, propagation layers averaged with layer 0 (MMRec grid {1, 2, 3, 4}).
            (default: ``2``)
        reg_weight: λ of the EmbLoss regulariser on the batch's layer-0 rows (MMRec grid
            {1e-2, …, 1e-6}). (default: ``0.0001``)
    """

    name = "lightgcn"
    data_parallel = "split"  # batch terms through layers.batch_mean / emb_loss / row sums
    aliases = {"embedding_size": "embedding_dim"}
    # MMRec src/configs/model/LightGCN.yaml
    search_space = {"n_layers": [1, 2, 3, 4], "reg_weight": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]}

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 reg_weight: float = 1e-4):
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.reg_weight = reg_weight
        self.embedding = nn.Parameter(torch.empty(self.n_users + self.n_items, embedding_dim))
        self.norm_adj = SparseGraph(normalized_adjacency(data.train), symmetric=True)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.embedding)

    def forward(self):
        out = propagate(self.norm_adj, self.embedding, self.n_layers)
        return out[: self.n_users], out[self.n_users:]

    def loss(self, users, pos, neg):
        user_all, item_all = self.forward()
        u, i, j = user_all[users], item_all[pos], item_all[neg]
        e0 = self.embedding
        reg = emb_loss(e0[users], e0[self.n_users + pos], e0[self.n_users + neg])
        return {"bpr": bpr_loss((u * i).sum(1), (u * j).sum(1)), "reg": self.reg_weight * reg}

    def representations(self):
        return self.forward()
