"""BM3: Zhou et al., "Bootstrap Latent Representations for Multi-modal Recommendation",
WWW 2023 (arXiv:2207.05969), Sec. 3 (Eqs. 1–9), as in MMRec (``enoche/MMRec``
``src/models/bm3.py``, ``EmbLoss`` of ``src/common/loss.py``, grid
``src/configs/model/BM3.yaml``; the same file as the authors' ``enoche/BM3``). Where paper and
code differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim``, p = ``dropout``, R the binary (U, I)
training matrix, Â = D^{-1/2} [[0, R], [Rᵀ, 0]] D^{-1/2} with D = deg + 1e-7, X_m the raw
features of modality m, cos the cosine similarity (eps 1e-8). A batch is B pairs (u_b, i_b):
BM3 uses no negative items (MMRec's ``use_neg_sampling: False``; the trainer's negatives are
ignored).

Online representations (Eqs. 1–3): a LightGCN encoder with a residual ID connection for items
and one linear projection per modality,

.. math::
    [\\bar H_U; \\bar H_I] = \\frac1{L+1}\\sum_{l=0}^{L} \\hat A^l [E_U; E_I],\\qquad
    H_U = \\bar H_U,\\quad H_I = \\bar H_I + E_I,\\qquad T_m = X_m W_m + b_m

Targets (Eq. 4): the same representations under dropout with a stop-gradient,
:math:`\\tilde H = \\mathrm{sg}(\\mathrm{Dropout}_p(H))`, :math:`\\tilde T_m =
\\mathrm{sg}(\\mathrm{Dropout}_p(T_m))` (dropout scales the kept entries by 1/(1 − p)). One
predictor g(x) = x W_g + b_g (d → d) is shared by every online branch.

Losses (Eqs. 5–9; the code's ``calculate_loss``), means over the batch rows:

.. math::
    \\mathcal L_{rec} = (1 - \\overline{\\cos}(g(H_U[u]), \\tilde H_I[i]))
                     + (1 - \\overline{\\cos}(g(H_I[i]), \\tilde H_U[u]))

    \\mathcal L_{align} = \\sum_m (1 - \\overline{\\cos}(g(T_m[i]), \\tilde H_I[i]))
                       + (1 - \\overline{\\cos}(g(T_m[i]), \\tilde T_m[i]))

    \\mathcal L = \\mathcal L_{rec} + \\lambda\\,\\frac{\\lVert H_U\\rVert_F + \\lVert H_I\\rVert_F}{I}
                + \\lambda_{cl}\\,\\mathcal L_{align}

The regulariser is MMRec's EmbLoss on the FULL online tables (every user and item, not the
batch), divided by the number of items. Score: :math:`\\hat s_{ui} = g(H_U)_u^\\top g(H_I)_i`.

Reproduced quirks of the code: the raw features are trainable (the code wraps them in
``nn.Embedding.from_pretrained(freeze=False)``, so Adam fine-tunes them;
``finetune_features=False`` freezes them); the target dropout is drawn at every step in train
mode (``F.dropout`` with its default ``training=True``); E_U, E_I xavier-uniform over the whole
tables; W_g and W_m xavier-normal, their biases torch's Linear default U(±1/√fan_in).

Exact reformulations for speed (the loss and every gradient are the same): the predictor and the
projections are row-wise, so a step applies them only to the rows its batch reads (the code
applies them to every user and item), the projection to each distinct batch item once (its
feature rows gathered block by block, :meth:`~mmrecsys.models.layers.FeatureTable.project`); the
target dropout is drawn for the distinct users and items of the batch only (the code draws it
on the full tables, then reads the batch rows: the same distribution, repeated rows sharing one
mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, normalized_adjacency
from .base import Recommender
from .layers import FeatureTable, emb_loss, propagate

_EPS_DEG = 1e-7


def cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean cos(online, target) (the target is detached: no gradient flows to it)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(Recommender):
    """BM3: self-supervised bootstrapping of user, item and modality representations.

    Defaults are the authors' tuned Baby setting (``enoche/BM3`` README, "best hyper-parameters"
    for the paper's Table III); presets hold the published Baby, Sports and Elec settings
    (none is published for Clothing).

    Args:
        embedding_dim: d, width of the ID embeddings, the projected features and the
            predictor (MMRec's ``embedding_size`` = ``feat_embed_dim``). (default: ``64``)
        n_layers: L, LightGCN layers of the online encoder (grid {1, 2}). (default: ``1``)
        dropout: p, dropout ratio of the target branch (grid {0.3, 0.5}). (default: ``0.5``)
        reg_weight: λ of the EmbLoss on the full online tables (grid {0.1, 0.01}).
            (default: ``0.1``)
        cl_weight: λ_cl, weight of the multimodal alignment losses (fixed 2.0 in the yaml).
            (default: ``2.0``)
        finetune_features: True, as the code: the raw feature matrices are parameters trained
            by the optimiser; False keeps them fixed. (default: ``True``)
    """

    name = "bm3"
    aliases = {"embedding_size": "embedding_dim", "feat_embed_dim": "embedding_dim"}
    requires_features = True
    search_space = {"n_layers": [1, 2], "reg_weight": [0.1, 0.01], "dropout": [0.3, 0.5]}
    presets = {  # enoche/BM3 README, "Best hyper-parameters for reproducibility"
        "baby": {"n_layers": 1, "dropout": 0.5, "reg_weight": 0.1},
        "sports": {"n_layers": 1, "dropout": 0.5, "reg_weight": 0.01},
        "elec": {"n_layers": 2, "dropout": 0.3, "reg_weight": 0.1},
    }
    notes = ("No negative items: the loss reads only the (user, positive item) pairs of a batch. "
             "The raw features are fine-tuned, as in MMRec (finetune_features=false freezes them).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 1,
                 dropout: float = 0.5, reg_weight: float = 0.1, cl_weight: float = 2.0,
                 finetune_features: bool = True):
        super().__init__(data, cache)
        if embedding_dim < 1 or n_layers < 0:
            raise ValueError("embedding_dim must be ≥ 1 and n_layers ≥ 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: the ratio of dropped entries, in [0, 1)")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.dropout = dropout
        self.reg_weight = reg_weight
        self.cl_weight = cl_weight
        self.finetune_features = finetune_features
        self.modalities = list(data.features)

        norm_adj = self.cached_graph(cache, "bm3-norm-adj",
                                     {"data": data.fingerprint(with_features=False),
                                      "eps": _EPS_DEG, "version": 1},
                                     lambda: normalized_adjacency(data.train, eps=_EPS_DEG))
        self.norm_adj = SparseGraph(norm_adj, symmetric=True)
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.predictor = nn.Linear(embedding_dim, embedding_dim)
        self.features = nn.ModuleList(
            FeatureTable(data.features[m], trainable=finetune_features) for m in self.modalities)
        self.projections = nn.ModuleList(
            nn.Linear(data.features[m].shape[1], embedding_dim) for m in self.modalities)
        self._init_weights()

    def _init_weights(self):
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        nn.init.xavier_normal_(self.predictor.weight)
        for proj in self.projections:
            nn.init.xavier_normal_(proj.weight)

    def reset_parameters(self, data=None):
        """Re-draw every parameter in the constructor's order (Linear biases: torch's default).
        With ``data`` (the dataset the model was built on) the feature tables return to the raw
        features; without it they keep their values."""
        self.predictor.reset_parameters()
        for proj in self.projections:
            proj.reset_parameters()
        self._init_weights()
        if data is not None:
            for table, m in zip(self.features, self.modalities):
                table.reset(data.features[m])

    # ------------------------------------------------------------------ forward
    def forward(self):
        """Online (H_U, H_I): LightGCN mean over layers, items plus their ID embedding."""
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        out = propagate(self.norm_adj, ego, self.n_layers)
        return out[: self.n_users], out[self.n_users:] + self.item_embedding

    def loss(self, users, pos, neg):
        h_u, h_i = self.forward()
        p = self.dropout
        uniq_u, inv_u = torch.unique(users, return_inverse=True)
        uniq_i, inv_i = torch.unique(pos, return_inverse=True)
        with torch.no_grad():  # targets: one dropout mask per distinct row, as on the full tables
            t_u = F.dropout(h_u[uniq_u], p)[inv_u]
            t_i = F.dropout(h_i[uniq_i], p)[inv_i]
        u_on = self.predictor(h_u[users])
        i_on = self.predictor(h_i[pos])
        rec = cosine_loss(u_on, t_i) + cosine_loss(i_on, t_u)
        align = h_u.new_zeros(())
        for table, proj in zip(self.features, self.projections):
            t = table.project(proj, uniq_i)                       # T_m of the distinct items
            with torch.no_grad():
                t_tgt = F.dropout(t, p)[inv_i]
            t_on = self.predictor(t)[inv_i]
            align = align + cosine_loss(t_on, t_i) + cosine_loss(t_on, t_tgt)
        return {"rec": rec, "reg": self.reg_weight * emb_loss(h_u, h_i),
                "align": self.cl_weight * align}

    def representations(self):
        h_u, h_i = self.forward()
        return self.predictor(h_u), self.predictor(h_i)
