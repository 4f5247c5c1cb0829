"""SMORE: Ong and Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional
Network for Multimodal Recommendation", ACM WSDM 2025 (arXiv:2412.14978), Sec. 3 (spectrum
modality fusion, multi-modal graph learning, modality-aware preference module, optimisation), as
in the authors' code (``kennethorq/SMORE`` ``src/models/smore.py``, ``src/configs/model/SMORE.yaml``,
built on MMRec; the tuned settings of its README).

Notation: U users, I items, d = ``embedding_dim``, X_v, X_t the raw image and text features,
Â = D^{-1/2} A D^{-1/2} (binary degrees, 0^{-1/2} = 0), R̂ = Â[:U, U:],
S_v, S_t the fixed weighted sym-normalised top-k cosine graphs of X_v (k = ``image_knn_k``) and
X_t (k = ``text_knn_k``), self included; S_f = maxpool(S_v, S_t) their union with the larger
value where both have an entry; 𝓕 / 𝓕⁻¹ the orthonormal real FFT along the embedding
dimension (``torch.fft.rfft/irfft(norm='ortho')``), W_v, W_t, W_f ∈ ℂ^{d/2+1} learnable filters.

.. math::
    F_v = X_v P_v + p_v, \\quad F_t = X_t P_t + p_t

    \\tilde F_v = 𝓕^{-1}(𝓕 F_v \\odot W_v), \\quad \\tilde F_t = 𝓕^{-1}(𝓕 F_t \\odot W_t),
    \\quad \\tilde F_f = 𝓕^{-1}(𝓕 F_t \\odot 𝓕 F_v \\odot W_f)

    x^m = E_I \\odot \\sigma(G_m \\tilde F_m + g_m), \\quad x^m_I = S_m^{L_i} x^m,
    \\quad x^m = [\\hat R x^m_I;\\ x^m_I] \\qquad (m \\in \\{v, t, f\\})

    E_c = \\frac{1}{L+1} \\sum_{l=0}^{L} \\hat A^l [E_U; E_I]

    a_v = \\mathrm{softmax}_{dim}(Q_v(x^f)) \\odot x^v, \\quad
    a_t = \\mathrm{softmax}_{dim}(Q_t(x^f)) \\odot x^t, \\qquad
    Q(x) = W_2 \\tanh(W_1 x + b_1)

    p_m = \\mathrm{Dropout}_\\rho(\\sigma(H_m E_c + h_m)), \\quad
    E_s = \\tfrac13 (p_v \\odot a_v + p_t \\odot a_t + p_f \\odot x^f), \\quad E^* = E_c + E_s

    \\mathcal L = \\mathrm{BPR} + \\lambda_{reg} \\frac{\\sum_b \\tfrac12(\\lVert e_u\\rVert^2
        + \\lVert e_i\\rVert^2 + \\lVert e_j\\rVert^2)}{B_{cfg}}
        + \\lambda_{cl} \\big[\\mathrm{NCE}(E_s[i_b], E_c[i_b]) + \\mathrm{NCE}(E_s[u_b], E_c[u_b])\\big]

softmax_dim is over the d coordinates of each row (the code's ``nn.Softmax(dim=-1)``), ρ =
``dropout`` (training only), BPR = mean −log σ(ŷ_ui − ŷ_uj), NCE the in-batch InfoNCE at
τ = ``temperature`` (:func:`mmrecsys.models.layers.info_nce`), B_cfg the configured batch size.

Reference behaviour reproduced: trainable raw feature tables (``train_features=False`` freezes
them), the full graph forward at every batch and at evaluation (dropout off), xavier-uniform
user and item tables, PyTorch's default linear layers, standard-normal filters W (real and
imaginary parts), dropout masks drawn per step. Two modalities, the first the image (visual)
one: the dataset's order, image_feat before text_feat. Exact shortcuts: the preference module is
row-wise, so a training step evaluates it only on the rows its batch reads (the dropout masks of
the other rows, which the code draws and discards, are not drawn); as in the code, the mask is
per node: a node repeated in the batch is fused once, with one mask
(:func:`mmrecsys.models.mgcn.batch_loss`).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, elementwise_max, normalized_adjacency
from .lattice import _TRAIN, skip_init_linear
from .layers import power, propagate
from .mgcn import ViewFusionRecommender


def _gate(d: int) -> nn.Linear:
    return skip_init_linear(d, d)


class SMORE(ViewFusionRecommender):
    """SMORE (spectral fusion of the modalities + MGCN-style views) as in the authors' code.

    Defaults: the README's Baby row (``n_ui_layers`` 4, ``n_layers`` 1, ``image_knn_k`` 40,
    ``text_knn_k`` 15, ``cl_loss`` 0.01, ``reg_weight`` 1e-4, ``dropout_rate`` 0.1), a point of
    the yaml's grid (:attr:`search_space`); :attr:`presets` hold the README's rows for Baby,
    Sports and Clothing.

    Args:
        embedding_dim: d, width of the ID embeddings, of the projected features and of the
            spectral filters (d/2 + 1 complex weights; the code's ``embedding_size``).
            (default: ``64``)
        n_layers: L, LightGCN layers of the user–item view (the code's ``n_ui_layers``; grid
            {3, 4}). (default: ``4``)
        n_item_layers: L_i, propagation layers on the item–item graphs (the code's
            ``n_layers``, a different quantity from ours). (default: ``1``)
        image_knn_k: neighbours per item in the image graph S_v (grid {10, 15, 20, 40}).
            (default: ``40``)
        text_knn_k: neighbours per item in the text graph S_t (grid {10, 15, 20, 40}).
            (default: ``15``)
        reg_weight: λ_reg of the half-squared L2 of the batch's final embeddings divided by the
            configured batch size (grid {1e-5, 1e-4}). (default: ``0.0001``)
        cl_weight: λ_cl, weight of the two InfoNCE terms (the code's ``cl_loss``).
            (default: ``0.01``)
        temperature: τ of the InfoNCE terms (hard-coded 0.2 in the code, also the yaml's
            unused ``temperature``). (default: ``0.2``)
        dropout: ρ, dropout rate on the three preference gates, training only (the code's
            ``dropout_rate``; grid {0, 0.1}). (default: ``0.1``)
        train_features: fine-tune the raw feature tables as the code does; False keeps them
            fixed (less memory, faster). (default: ``True``)
        knn_chunk_size: rows of similarities computed at a time when building the kNN graphs
            (memory only). (default: ``2048``)
    """

    name = "smore"
    aliases = {"embedding_size": "embedding_dim", "n_ui_layers": "n_layers",
               "cl_loss": "cl_weight", "dropout_rate": "dropout"}
    requires_features = True
    train_defaults = {**_TRAIN, "lr": 1e-3, "lr_scheduler": [0.96, 50]}
    search_space = {"n_layers": [3, 4], "image_knn_k": [10, 15, 20, 40],
                    "text_knn_k": [10, 15, 20, 40], "reg_weight": [1e-5, 1e-4], "dropout": [0.0, 0.1]}
    presets = {  # kennethorq/SMORE README, "Best hyperparameters for reproducibility" (Table 2)
        "baby": {"n_layers": 4, "n_item_layers": 1, "image_knn_k": 40, "text_knn_k": 15,
                 "cl_weight": 0.01, "reg_weight": 1e-4, "dropout": 0.1},
        "sports": {"n_layers": 3, "n_item_layers": 1, "image_knn_k": 10, "text_knn_k": 10,
                   "cl_weight": 0.03, "reg_weight": 1e-4, "dropout": 0.0},
        "clothing": {"n_layers": 3, "n_item_layers": 1, "image_knn_k": 40, "text_knn_k": 10,
                     "cl_weight": 0.01, "reg_weight": 1e-5, "dropout": 0.0},
    }
    notes = ("Needs exactly two modalities, image first (the dataset's order: image_feat, "
             "text_feat; reorder with --set modalities=[...]). The raw features are fine-tuned, "
             "as the official code (train_features=false freezes them). The official n_layers "
             "(item-item layers) is n_item_layers here; n_layers is the official n_ui_layers.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 4,
                 n_item_layers: int = 1, image_knn_k: int = 40, text_knn_k: int = 15,
                 reg_weight: float = 1e-4, cl_weight: float = 0.01, temperature: float = 0.2,
                 dropout: float = 0.1, train_features: bool = True, knn_chunk_size: int = 2048):
        super().__init__(data, cache)
        if len(data.features) != 2:
            raise ValueError(f"SMORE fuses exactly two modalities (image, then text); dataset "
                             f"{data.name!r} has {len(data.features)} ({', '.join(data.features)}). "
                             f"Choose two with --set modalities=[image_feat,text_feat]")
        if min(image_knn_k, text_knn_k) < 1:
            raise ValueError("image_knn_k and text_knn_k must be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be in [0, 1)")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be positive")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_item_layers = n_item_layers
        self.image_knn_k = image_knn_k
        self.text_knn_k = text_knn_k
        self.reg_weight = reg_weight
        self.cl_weight = cl_weight
        self.temperature = temperature
        self.dropout = dropout
        self.train_features = train_features
        self.knn_chunk_size = knn_chunk_size

        norm = normalized_adjacency(data.train, eps=0.0)
        self.norm_adj = SparseGraph(norm, symmetric=True)
        self.user_item = SparseGraph(norm[: self.n_users, self.n_users:], symmetric=False)  # R̂
        s_v, s_t = self.modality_knn_graphs(data, cache, [image_knn_k, text_knn_k],
                                            chunk_size=knn_chunk_size)
        t0 = time.perf_counter()
        s_f = elementwise_max(s_v, s_t)                                   # max_pool_fusion
        self.graph_seconds["smore-fusion"] = time.perf_counter() - t0
        self.item_graphs = nn.ModuleList([SparseGraph(g, symmetric=False) for g in (s_v, s_t, s_f)])

        d = embedding_dim
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, d))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, d))
        self._keys = self.register_features(data, trainable=train_features)
        self.projection = nn.ModuleList([skip_init_linear(data.features[m].shape[1], d)
                                         for m in data.features])                 # image_trs, text_trs
        self.query_v = nn.Sequential(_gate(d), nn.Tanh(), skip_init_linear(d, d, bias=False))
        self.query_t = nn.Sequential(_gate(d), nn.Tanh(), skip_init_linear(d, d, bias=False))
        self.gate = nn.ModuleList([_gate(d) for _ in range(3)])           # gate_v, gate_t, gate_f
        self.gate_prefer = nn.ModuleList([_gate(d) for _ in range(3)])    # gate_{image,text,fusion}_prefer
        self.spectral_filter = nn.ParameterList(                          # image, text, fusion
            [nn.Parameter(torch.empty(1, d // 2 + 1, 2)) for _ in range(3)])
        self.reset_parameters()

    def reset_parameters(self):
        """Re-draw every weight in the reference's construction order; restore the features."""
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        for lin in self.projection:
            lin.reset_parameters()
        for q in (self.query_v, self.query_t):
            q[0].reset_parameters()
            q[2].reset_parameters()
        for lin in [*self.gate, *self.gate_prefer]:
            lin.reset_parameters()
        with torch.no_grad():
            for w in self.spectral_filter:
                w.normal_()
        self.reset_feature_tables()

    # ------------------------------------------------------------------ forward
    def spectrum(self, f_v: torch.Tensor, f_t: torch.Tensor):
        """Uni-modal denoising and cross-modal fusion in the frequency domain."""
        d = f_v.shape[1]
        fv = torch.fft.rfft(f_v, dim=1, norm="ortho")
        ft = torch.fft.rfft(f_t, dim=1, norm="ortho")
        w_v, w_t, w_f = (torch.view_as_complex(w) for w in self.spectral_filter)
        conv_v = torch.fft.irfft(fv * w_v, n=d, dim=1, norm="ortho")
        conv_t = torch.fft.irfft(ft * w_t, n=d, dim=1, norm="ortho")
        conv_f = torch.fft.irfft(ft * fv * w_f, n=d, dim=1, norm="ortho")
        return conv_v, conv_t, conv_f

    def views(self):
        """E_c (N, d) and, for the image, text and fusion views, their user and item parts."""
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        content = propagate(self.norm_adj, ego, self.n_layers)
        f_v, f_t = (self.project_features(k, self.projection[m]) for m, k in enumerate(self._keys))
        users, items = [], []
        for m, conv in enumerate(self.spectrum(f_v, f_t)):
            x = self.item_embedding * torch.sigmoid(self.gate[m](conv))
            x = power(self.item_graphs[m], x, self.n_item_layers)
            items.append(x)
            users.append(self.user_item(x))
        return content, users, items

    def fuse(self, content: torch.Tensor, views: list[torch.Tensor]):
        """(E*, E_s) of the given rows; ``views`` = [image, text, fusion] rows."""
        x_v, x_t, x_f = views
        agg_v = torch.softmax(self.query_v(x_f), dim=-1) * x_v
        agg_t = torch.softmax(self.query_t(x_f), dim=-1) * x_t
        p_v, p_t, p_f = (F.dropout(torch.sigmoid(g(content)), self.dropout, self.training)
                         for g in self.gate_prefer)
        side = torch.stack([p_v * agg_v, p_t * agg_t, p_f * x_f]).mean(0)
        return content + side, side
