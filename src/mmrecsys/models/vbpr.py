"""VBPR: He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback",
AAAI 2016 (Eq. 2: the preference model; Eq. 4: the BPR-Opt criterion), as in MMRec
(``enoche/MMRec`` ``src/models/vbpr.py``, "recommended version"; losses ``BPRLoss`` and
``EmbLoss`` of ``src/common/loss.py``; grid ``src/configs/model/VBPR.yaml``).

MMRec's version, followed here, differs from the paper's Eq. 2: there are no bias terms (no
β_i, no visual bias β′), the content part is a linear layer with a bias on the concatenated
features of every modality, and the regulariser is MMRec's EmbLoss on the batch's vectors.

.. math::
    f_i = [x^{(M)}_i; \\dots; x^{(1)}_i] \\ \\text{(text, then image on MMRec data)},\\qquad
    q_i = [\\gamma_i;\\ W f_i + b] \\in \\mathbb R^{2d},\\qquad p_u \\in \\mathbb R^{2d}

    \\hat s_{ui} = p_u^\\top q_i

    \\mathcal L = -\\frac1{|B|}\\sum_{(u,i,j)\\in B}\\log(10^{-10} + \\sigma(\\hat s_{ui} - \\hat s_{uj}))
      + \\lambda\\,\\frac{\\lVert P[B]\\rVert_F + \\lVert Q[B^+]\\rVert_F + \\lVert Q[B^-]\\rVert_F}{|B|}

The regulariser includes the content half W f + b of q. The raw features are fixed (not
trained). Initialisation as the code: P (U × 2d) and Γ (I × d) xavier-uniform over the whole
tables, W xavier-normal, b = 0.

Modalities are concatenated in the reverse order of ``data.features`` (whose default order is by
file name, ``image_feat`` then ``text_feat``), which gives the code's ``torch.cat((t_feat,
v_feat))``; with one modality f_i is its features.

Exact reformulation for speed: a training step projects only the distinct items of its batch
(the code projects every item at every step), gathering their feature rows block by block
(:meth:`~mmrecsys.models.layers.FeatureTable.project`); the scores, the loss and every gradient
are the same, since the projection is row-wise.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Recommender
from .layers import FeatureTable, bpr_loss, emb_loss


class VBPR(Recommender):
    """VBPR as in MMRec: ID embedding and projected content features side by side, no biases.

    Args:
        embedding_dim: d, width of the item ID embedding γ_i and of the projected features;
            users have 2d (MMRec's ``embedding_size``). (default: ``64``)
        reg_weight: λ of the EmbLoss regulariser. MMRec's grid is {2.0, 1.0, 0.1, 0.01, 1e-3,
            1e-4, 1e-5} and no tuned value is published (neither in MMRec nor for the paper's
            SGD version), so the default is the grid's first value, the one MMRec's grid search
            trains first. (default: ``2.0``)
    """

    name = "vbpr"
    aliases = {"embedding_size": "embedding_dim"}
    requires_features = True
    search_space = {"reg_weight": [2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5]}

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, reg_weight: float = 2.0):
        super().__init__(data, cache)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim}: must be ≥ 1")
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.modalities = list(data.features)
        feats = [np.asarray(data.features[m], dtype=np.float32) for m in reversed(self.modalities)]
        self.item_features = FeatureTable(np.concatenate(feats, 1), trainable=False)   # f_i, fixed
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, 2 * embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        # built without drawing (skip_init): reset_parameters draws every initial value
        self.item_linear = nn.utils.skip_init(nn.Linear, self.item_features.shape[1], embedding_dim)
        self.reset_parameters()

    def reset_parameters(self):
        """The code's order: P and Γ xavier-uniform, then W xavier-normal and b = 0 (the code
        also draws torch's Linear default for W and b first, then overwrites it)."""
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """q_i = [γ_i; W f_i + b] for ``items`` (default: all), (·, 2d)."""
        content = self.item_features.project(self.item_linear, items)          # W f_i + b
        return torch.cat([self.item_embedding if items is None else self.item_embedding[items],
                          content], 1)

    def loss(self, users, pos, neg):
        uniq, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        q = self.item_vectors(uniq)[inv]
        i, j = q[: len(pos)], q[len(pos):]
        u = self.user_embedding[users]
        return {"bpr": bpr_loss((u * i).sum(1), (u * j).sum(1)),
                "reg": self.reg_weight * emb_loss(u, i, j)}

    def representations(self):
        return self.user_embedding, self.item_vectors()
