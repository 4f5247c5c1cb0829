"""BPR-MF: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009
(the BPR-Opt criterion, Sec. 4.1), as in MMRec (``enoche/MMRec`` ``src/models/bpr.py``, losses
``BPRLoss`` and ``EmbLoss`` of ``src/common/loss.py``, grid ``src/configs/model/BPR.yaml``).

.. math::
    \\hat s_{ui} = e_u^\\top e_i, \\qquad
    \\mathcal L = -\\frac1{|B|}\\sum_{(u,i,j)\\in B} \\log(10^{-10} + \\sigma(\\hat s_{ui} - \\hat s_{uj}))
      + \\lambda\\,\\frac{\\lVert E_U[B]\\rVert_F + \\lVert E_I[B^+]\\rVert_F + \\lVert E_I[B^-]\\rVert_F}{|B|}

Embeddings are xavier-normal initialised over the whole table. The regulariser is MMRec's
EmbLoss (un-squared Frobenius norms divided by the batch size).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Recommender
from .layers import bpr_loss, emb_loss


class BPR(Recommender):
    """Matrix factorisation trained with the BPR loss.

    Args:
        embedding_dim: d, width of the user and item embeddings (MMRec's ``embedding_size``).
            (default: ``64``)
        reg_weight: λ of the EmbLoss regulariser (MMRec grid {2, 1, 0.1, 1e-2, 1e-3, 1e-4,
            1e-5}). (default: ``0.0001``)
    """

    name = "bpr"
    data_parallel = "split"  # batch terms through layers.batch_mean / emb_loss / row sums
    aliases = {"embedding_size": "embedding_dim"}
    # MMRec src/configs/model/BPR.yaml
    search_space = {"reg_weight": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, reg_weight: float = 1e-4):
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_normal_(self.user_embedding)
        nn.init.xavier_normal_(self.item_embedding)

    def loss(self, users, pos, neg):
        u = self.user_embedding[users]
        i = self.item_embedding[pos]
        j = self.item_embedding[neg]
        return {"bpr": bpr_loss((u * i).sum(1), (u * j).sum(1)),
                "reg": self.reg_weight * emb_loss(u, i, j)}

    def representations(self):
        return self.user_embedding, self.item_embedding
