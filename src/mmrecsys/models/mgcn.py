"""MGCN: Yu, Tan, Lu and Bao, "Multi-View Graph Convolutional Network for Multimedia
Recommendation", ACM MM 2023 (arXiv:2308.03588), Sec. 3 (behaviour-guided purifier, multi-view
information encoder, behaviour-aware fuser, self-supervised auxiliary task, optimisation), as in
MMRec (``enoche/MMRec`` ``src/models/mgcn.py``, ``src/configs/model/MGCN.yaml``,
``src/utils/utils.py`` ``build_knn_normalized_graph``), a copy of the authors' code
(``demonph10/MGCN`` ``src/models/mgcn.py``) with the fuser's softmax taken over the modalities
(``dim=-1``; the authors' file normalises over all nodes, ``dim=0``).

Notation: U users, I items, N = U + I, d = ``embedding_dim``, M modalities X_m (raw features),
A = [[0, R], [Rᵀ, 0]], Â = D^{-1/2} A D^{-1/2} (binary degrees, 0^{-1/2} = 0: isolated nodes
get zero rows), R̂ = Â[:U, U:] (the *normalised* user–item block), S_m the fixed weighted
sym-normalised top-k cosine graph of X_m (self included), σ the logistic function.

.. math::
    E_c = \\frac{1}{L+1} \\sum_{l=0}^{L} \\hat A^l [E_U; E_I]
        \\quad (\\text{user–item view, ``content\\_embeds''})

    x^m = E_I \\odot \\sigma(W^g_m (X_m W_m + b_m) + b^g_m)
        \\quad (\\text{behaviour-guided purifier})

    x^m_I = S_m^{L_i} x^m, \\quad x^m_U = \\hat R\\, x^m_I, \\quad x^m = [x^m_U; x^m_I]
        \\quad (\\text{item–item view})

    a^m = q(x^m) = W_2 \\tanh(W_1 x^m + b_1), \\quad \\beta = \\mathrm{softmax}_m(a^1, …, a^M)

    c = \\sum_m \\beta_m x^m, \\quad s^m = \\sigma(W^p_m E_c + b^p_m) \\odot (x^m - c),
    \\quad E_s = \\frac{1}{M+1}\\Big(\\sum_m s^m + c\\Big)

    E^* = E_c + E_s, \\qquad \\hat y_{ui} = E^*_u \\cdot E^*_i

    \\mathcal L = \\mathrm{BPR} + \\lambda_{reg} \\frac{\\sum_b \\tfrac12(\\lVert e_u\\rVert^2
        + \\lVert e_i\\rVert^2 + \\lVert e_j\\rVert^2)}{B_{cfg}}
        + \\lambda_{cl} \\big[\\mathrm{NCE}(E_s[i_b], E_c[i_b]) + \\mathrm{NCE}(E_s[u_b], E_c[u_b])\\big]

BPR = mean −log σ(ŷ_ui − ŷ_uj); NCE is the in-batch InfoNCE at τ = ``temperature`` over the
batch's positive items and its users (:func:`mmrecsys.models.layers.info_nce`); B_cfg is the
configured batch size (the code divides by ``train_batch_size``). With two modalities (image,
text) this is the code's ``(sep_image + sep_text + common) / 3``.

Reference behaviour reproduced: the raw features are trainable tables fine-tuned by Adam
(``nn.Embedding.from_pretrained(freeze=False)``; ``train_features=False`` freezes them); the
full graph forward runs at every batch and at evaluation; xavier-uniform user and item tables,
PyTorch's default initialisation for every linear layer; modalities in the dataset's order.
Exact shortcuts: the fuser is row-wise, so a training step fuses only the distinct nodes its
batch reads (users, positive and negative items; :func:`batch_loss`), and the InfoNCE terms run
over the distinct nodes weighted by their multiplicity; the propagation on Â, S_m and R̂ stays
over all nodes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graphs import SparseGraph, normalized_adjacency
from .base import Recommender
from .lattice import _TRAIN, skip_init_linear
from .layers import bpr_logsigmoid, half_squared_l2, info_nce, power, propagate


def batch_loss(model, users, pos, neg) -> dict[str, torch.Tensor]:
    """BPR + regulariser + InfoNCE of MGCN and SMORE for a batch, fusing each distinct node once.

    The fuser is row-wise, so its output for the batch's rows is the reference's full-graph
    output at those rows. A node repeated in the batch (a user with several rows, an item both
    positive and negative) is fused once and its row reused, as in the reference, where the
    fusion (and SMORE's dropout mask) is per node; the InfoNCE terms weight the distinct nodes
    by their multiplicity (:func:`~mmrecsys.models.layers.info_nce`), which is exactly the
    reference's loss over the repeated rows. ``model`` provides ``views()``, ``fuse()``,
    ``n_users``, ``temperature``, ``reg_weight``, ``cl_weight``, ``train_batch_size``.
    """
    content, v_users, v_items = model.views()
    b = len(pos)
    u_ids, u_inv, u_cnt = torch.unique(users, return_inverse=True, return_counts=True)
    i_ids, i_inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
    c_u, c_i = content[u_ids], content[model.n_users + i_ids]
    e_u, side_u = model.fuse(c_u, [v[u_ids] for v in v_users])
    e_i, side_i = model.fuse(c_i, [v[i_ids] for v in v_items])
    u, it = e_u[u_inv], e_i[i_inv]
    i, j = it[:b], it[b:]
    reg = half_squared_l2(u, i, j, divisor=model.train_batch_size or len(users))
    p_ids, p_cnt = torch.unique(pos, return_counts=True)
    p_rows = torch.searchsorted(i_ids, p_ids)                       # positives among i_ids
    cl = info_nce(side_i[p_rows], c_i[p_rows], model.temperature, p_cnt) + \
        info_nce(side_u, c_u, model.temperature, u_cnt)
    return {"bpr": bpr_logsigmoid((u * i).sum(1), (u * j).sum(1)),
            "reg": model.reg_weight * reg, "cl": model.cl_weight * cl}


class ViewFusionRecommender(Recommender):
    """A content view fused with item–item views, row by row (MGCN, SMORE): the subclass
    gives ``views()`` → (content (N, d), user views, item views) and ``fuse(content, views)``
    → (representation, side); the batch loss is :func:`batch_loss`."""

    def loss(self, users, pos, neg):
        return batch_loss(self, users, pos, neg)

    def representations(self):
        content, v_users, v_items = self.views()
        user_repr, _ = self.fuse(content[: self.n_users], v_users)
        item_repr, _ = self.fuse(content[self.n_users:], v_items)
        return user_repr, item_repr


class MGCN(ViewFusionRecommender):
    """MGCN (purified item–item views fused with the user–item view) as in MMRec's ``mgcn.py``.

    Defaults: MMRec's ``MGCN.yaml``; its one grid, ``cl_loss`` ∈ {0.001, 0.01, 0.1}
    (:attr:`search_space`), defaults to 0.01, the authors' own ``MGCN.yaml``
    (``demonph10/MGCN``, one setting for every dataset, hence no per-dataset presets).

    Args:
        embedding_dim: d, width of the ID embeddings and of the projected features (MMRec's
            ``embedding_size``). (default: ``64``)
        n_layers: L, LightGCN layers of the user–item view (MMRec's ``n_ui_layers``).
            (default: ``2``)
        n_item_layers: L_i, propagation layers on the item–item graphs S_m (the yaml's
            ``n_layers``, a different quantity from ours). (default: ``1``)
        knn_k: k, neighbours per item in the modality graphs S_m. (default: ``10``)
        reg_weight: λ_reg of the half-squared L2 of the batch's final embeddings divided by the
            configured batch size. (default: ``0.0001``)
        cl_weight: λ_cl, weight of the two InfoNCE terms (MMRec's ``cl_loss``; grid
            {0.001, 0.01, 0.1}). (default: ``0.01``)
        temperature: τ of the InfoNCE terms (hard-coded 0.2 in the code; its ``self.tau = 0.5``
            is unused). (default: ``0.2``)
        train_features: fine-tune the raw feature tables as the code does; False keeps them
            fixed (less memory, faster). (default: ``True``)
        knn_chunk_size: rows of similarities computed at a time when building S_m (memory
            only). (default: ``2048``)
    """

    name = "mgcn"
    aliases = {"embedding_size": "embedding_dim", "n_ui_layers": "n_layers",
               "cl_loss": "cl_weight"}
    requires_features = True
    train_defaults = {**_TRAIN, "lr": 1e-3, "lr_scheduler": [0.96, 50]}
    search_space = {"cl_weight": [0.001, 0.01, 0.1]}
    notes = ("The raw features are fine-tuned, as MMRec (train_features=false freezes them). The "
             "official yaml's n_layers (item-item layers) is n_item_layers here; n_layers counts "
             "user-item layers (the yaml's n_ui_layers).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 n_item_layers: int = 1, knn_k: int = 10, reg_weight: float = 1e-4,
                 cl_weight: float = 0.01, temperature: float = 0.2, train_features: bool = True,
                 knn_chunk_size: int = 2048):
        super().__init__(data, cache)
        if knn_k < 1:
            raise ValueError(f"knn_k={knn_k}: need at least 1 neighbour")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be positive")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_item_layers = n_item_layers
        self.knn_k = knn_k
        self.reg_weight = reg_weight
        self.cl_weight = cl_weight
        self.temperature = temperature
        self.train_features = train_features
        self.knn_chunk_size = knn_chunk_size

        norm = normalized_adjacency(data.train, eps=0.0)              # Â, 0^{-1/2} = 0
        self.norm_adj = SparseGraph(norm, symmetric=True)
        self.user_item = SparseGraph(norm[: self.n_users, self.n_users:], symmetric=False)  # R̂
        graphs = self.modality_knn_graphs(data, cache, [knn_k] * len(data.features),
                                          chunk_size=knn_chunk_size)
        self.item_graphs = nn.ModuleList([SparseGraph(g, symmetric=False) for g in graphs])

        d = embedding_dim
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, d))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, d))
        self._keys = self.register_features(data, trainable=train_features)
        self.projection = nn.ModuleList([skip_init_linear(data.features[m].shape[1], d)
                                         for m in data.features])                # image_trs, text_trs
        self.query_common = nn.Sequential(skip_init_linear(d, d), nn.Tanh(),
                                          skip_init_linear(d, 1, bias=False))
        self.gate = nn.ModuleList([skip_init_linear(d, d) for _ in self._keys])        # gate_v, gate_t
        self.gate_prefer = nn.ModuleList([skip_init_linear(d, d) for _ in self._keys])  # gate_*_prefer
        self.reset_parameters()

    def reset_parameters(self):
        """Re-draw every weight in the reference's construction order; restore the features."""
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        for lin in self.projection:
            lin.reset_parameters()
        self.query_common[0].reset_parameters()
        self.query_common[2].reset_parameters()
        for lin in [*self.gate, *self.gate_prefer]:
            lin.reset_parameters()
        self.reset_feature_tables()

    # ------------------------------------------------------------------ forward
    def views(self):
        """E_c (N, d) and per modality the item–item view's user and item parts."""
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        content = propagate(self.norm_adj, ego, self.n_layers)
        users, items = [], []
        for m, key in enumerate(self._keys):
            f = self.project_features(key, self.projection[m])
            x = self.item_embedding * torch.sigmoid(self.gate[m](f))
            x = power(self.item_graphs[m], x, self.n_item_layers)
            items.append(x)
            users.append(self.user_item(x))
        return content, users, items

    def fuse(self, content: torch.Tensor, views: list[torch.Tensor]):
        """(E*, E_s) of the given rows (row-wise: any subset of nodes)."""
        att = torch.cat([self.query_common(v) for v in views], dim=-1)     # (n, M)
        beta = torch.softmax(att, dim=-1)
        common = sum(beta[:, m:m + 1] * v for m, v in enumerate(views))
        side = common
        for m, v in enumerate(views):
            side = side + torch.sigmoid(self.gate_prefer[m](content)) * (v - common)
        side = side / (len(views) + 1)
        return content + side, side
