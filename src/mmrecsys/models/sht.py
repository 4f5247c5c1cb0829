"""SHT: Xia, Huang and Zhang, "Self-Supervised Hypergraph Transformer for Recommender Systems",
KDD 2022 (Sec. 3.1 the local GCN, Eqs. 1–4 the hypergraph transformer, Eqs. 5–7 the
self-augmentation, Eq. 8 the joint loss), as in the authors' TensorFlow code ``akaxlh/SHT``
(``labcode_hop.py``, ``Params.py``), which is followed where the paper, the authors' later
``torchVersion/`` and HKUDS/SSLRec's ``sht.py`` differ (see the end).

Notation: U users, I items, d = ``embedding_dim``, h = ``n_heads`` (d' = d / h), H =
``n_hyperedges``, L = ``n_layers``, R̂ = D_U^{-1/2} R D_I^{-1/2} (R the binary training matrix, the
code's 1e-8 in the degrees), δ(x) = max(s·x, x) with s = ``leaky_slope`` (LeakyReLU).

Local encoder (``GCN``, ``gcn_hops`` = G hops of alternating propagation, layer 0 excluded):

.. math::
    \\bar E_U = E_U + \\sum_{g=1}^{G} X_U^g,\\; X_U^g = \\hat R X_I^{g-1},\\;
    X_I^g = \\hat R^\\top X_U^{g-1},\\; X^0 = E

Hypergraph transformer (``propagate``; users shown, items alike with their own hyperedges),
keys K_U = Ē_U W_K and values from W_V, both (d, d) and shared by the two sides, split into h
heads; per head c, with S_c the (d', H) head slice of the hyperedge embeddings Ψ_U (H, d):

.. math::
    T = \\big[ (E_U^{l-1} W_V)_c^\\top (K_U)_c\\, S_c \\big]_{c=1..h} \\in \\mathbb R^{d\\times H},\\;
    T_k = δ(T_{k-1} V_k^l) + T_{k-1}\\ (k = 1, 2)

    E_U^l = \\big[ (K_U)_c\\, S_c\\, (T_2^\\top W_V)_c \\big]_{c=1..h}, \\qquad
    h_u = \\sum_{l=0}^{L} E_U^l[u],\\; E^0 = \\bar E

with V_k^l (H, H) separate per layer and side (no attention softmax: the code's products are
linear in the keys).

Self-augmentation (``label``, ``meta``): for a sample of n = ⌊ρ|R|⌋ training edges (u, i) drawn
uniformly with replacement (n made even), a meta-network generates from the mean hyperedge
embedding ψ̄ of each side a mapping φ(k) = δ(k W(ψ̄) + b(ψ̄)) (W(ψ̄) = reshape(ψ̄ G_W + g_W) (d, d),
b(ψ̄) = ψ̄ G_b + g_b; one generator for both sides), and scores the edge with

.. math::
    a = φ_U(K_U[u]),\\; c = φ_I(K_I[i]),\\; q = δ([a, c] F_1 + f_1) + a + c,\\;
    s_{ui} = σ(q F_2 + f_2)

The sampled edges are paired (first half against second half) and the local embeddings are
asked to order each pair as the scores do:

.. math::
    \\mathcal L_{sa} = \\sum_{k=1}^{n/2} \\max\\big(0, 1 - μ\\,(p_k - p'_k)(s_k - s'_k)\\big),\\quad
    p_k = \\bar E_U[u_k]^\\top \\bar E_I[i_k]

with μ = ``mult``; gradients reach both the scores and the embeddings (as in the code).

Loss per batch of B triples (the code's ``loss``):

.. math::
    \\mathcal L = \\frac{\\bar s}{B}\\sum_b \\max(0, 1 - h_{u_b}^\\top h_{i_b} + h_{u_b}^\\top h_{j_b})
      + λ_1 \\mathcal L_{sa} + λ_2 \\sum_{θ\\in Θ_{reg}} \\lVert θ\\rVert^2

with Θ_reg the embedding tables, Ψ_U, Ψ_I, W_K, W_V and the weights (not biases) of the
meta-network and of the scorer (the code's ``reg=True`` parameters; the mixing layers V are not
regularised), whole tables, not batch rows. s̄ / B rescales the hinge sum to the code's division
by its batch of 256 users, each with min(40, deg(u)) pairs (see
:func:`mmrecsys.models.hccf.mean_sampled_pairs`). All weights xavier-uniform, biases zero.

Defaults are ``Params.py``'s (d 32, h 2, H 128, L 2, G 2, slope 0.5, μ 100, ρ 0.5, λ₁ 1e-4,
λ₂ 3e-2; Adam, lr 1e-3, decayed 0.96 every ``trnNum // batch`` = 39 steps, here 0.96 per epoch;
batch 2048 pairs as LGMRec's common setting). Search space: the values of the README's commands
(λ₂ ∈ {3e-2, 1e-2}, λ₁ ∈ {1e-4, 1e-5}, μ ∈ {10, 100}, ρ ∈ {0.1, 0.5}); the LGMRec paper gives no
SHT setting.

Where the authors' TensorFlow code differs from their later PyTorch version (and SSLRec), the
TensorFlow code is followed: the PyTorch version (``torchVersion/Model.py``) replaces the hinge
losses with BPR-style ones, replaces the meta-network self-augmentation by a prediction-alignment
cross-entropy between its two views on random user–item pairs (``ssl1``/``ssl2``, each target
detached), drops the key/value transformer, detaches the embeddings fed to the hypergraph, and
uses another regulariser.

Protocol differences (model maths and loss kept): the code samples 10,000 users per epoch and
up to 40 pairs per user (``sampler: user_pairs`` with ``batch_size: 256`` reproduces the code's
batches: every user once per epoch, 256 users a step with min(40, deg) pairs each, the hinge
sum divided by 256, the contrast over those users and their items); by default an epoch passes
every training pair once with one uniform negative (MMRec's sampler). The code has no
validation split and reports its last epoch's test metrics; here early stopping on validation
Recall@20 selects the epoch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graphs import SparseGraph
from .base import Recommender
from .hccf import hinge_loss, hinge_scale, leaky, mean_sampled_pairs, reference_normalized

#: hyperedge-mixing layers per transformer layer (the code's two ``FC(·, hyperNum)``)
N_MIXING = 2


class SHT(Recommender):
    """SHT: a hypergraph transformer on local GCN embeddings, with meta-network self-augmentation.

    Args:
        embedding_dim: d, width of the embeddings (``latdim``); a multiple of ``n_heads``.
            (default: ``32``)
        n_heads: h, heads of the transformer (``att_head``). (default: ``2``)
        n_hyperedges: H, learnable hyperedges per side (``hyperNum``). (default: ``128``)
        n_layers: L, hypergraph transformer layers (``gnn_layer``). (default: ``2``)
        gcn_hops: G, hops of the local encoder (``gcn_hops``). (default: ``2``)
        leaky_slope: slope of the LeakyReLU δ (``leaky``). (default: ``0.5``)
        mult: μ, the multiplier in the self-augmentation hinge (``mult``). (default: ``100.0``)
        edge_sample_rate: ρ, the share of training edges sampled (with replacement) for the
            self-augmentation in each step (``edgeSampRate``), in (0, 1]. (default: ``0.5``)
        ssl_reg: λ₁, weight of the self-augmentation term. (default: ``0.0001``)
        reg_weight: λ₂, weight of the squared norms of the regularised weights (``reg``).
            (default: ``0.03``)
        samples_per_user: the code's pairs sampled per user (``sampNum``), which sets the
            hinge loss's scale s̄ / B. (default: ``40``)
    """

    name = "sht"
    fixed_shape_step = True     # full-table products and a fixed number of sampled edges
    aliases = {"latdim": "embedding_dim", "att_head": "n_heads", "hyperNum": "n_hyperedges",
               "gnn_layer": "n_layers", "leaky": "leaky_slope", "edgeSampRate": "edge_sample_rate",
               "reg": "reg_weight", "sampNum": "samples_per_user"}
    train_defaults = {"lr": 1e-3, "batch_size": 2048, "lr_scheduler": [0.96, 1]}
    search_space = {"reg_weight": [3e-2, 1e-2], "ssl_reg": [1e-4, 1e-5], "mult": [10.0, 100.0],
                    "edge_sample_rate": [0.1, 0.5]}
    notes = ("The authors' TensorFlow SHT (hinge losses, meta-network edge scorer, full-table L2), "
             "not their later PyTorch version; the self-augmentation samples edges each step.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 32, n_heads: int = 2,
                 n_hyperedges: int = 128, n_layers: int = 2, gcn_hops: int = 2,
                 leaky_slope: float = 0.5, mult: float = 100.0, edge_sample_rate: float = 0.5,
                 ssl_reg: float = 1e-4, reg_weight: float = 3e-2, samples_per_user: int = 40):
        if embedding_dim < 1 or n_heads < 1 or embedding_dim % n_heads:
            raise ValueError(f"embedding_dim={embedding_dim}, n_heads={n_heads}: both ≥ 1 and "
                             "embedding_dim a multiple of n_heads")
        if n_hyperedges < 1:
            raise ValueError(f"n_hyperedges={n_hyperedges}: SHT needs at least one hyperedge")
        if n_layers < 0 or gcn_hops < 0:
            raise ValueError("n_layers and gcn_hops must be ≥ 0")
        if not 0.0 < edge_sample_rate <= 1.0:
            raise ValueError(f"edge_sample_rate={edge_sample_rate}: the share of edges sampled, "
                             "in (0, 1]")
        if ssl_reg < 0 or reg_weight < 0 or leaky_slope < 0:
            raise ValueError("ssl_reg, reg_weight and leaky_slope must be ≥ 0")
        if samples_per_user < 1:
            raise ValueError(f"samples_per_user={samples_per_user}: must be ≥ 1")
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.n_heads = n_heads
        self.n_hyperedges = n_hyperedges
        self.n_layers = n_layers
        self.gcn_hops = gcn_hops
        self.leaky_slope = float(leaky_slope)
        self.mult = float(mult)
        self.edge_sample_rate = float(edge_sample_rate)
        self.ssl_reg = float(ssl_reg)
        self.reg_weight = float(reg_weight)
        self.samples_per_user = int(samples_per_user)
        self.hinge_pairs_per_user = mean_sampled_pairs(data.train, self.samples_per_user)
        d, h = embedding_dim, n_hyperedges
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, d))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, d))
        self.user_hyper = nn.Parameter(torch.empty(h, d))
        self.item_hyper = nn.Parameter(torch.empty(h, d))
        self.key = nn.Parameter(torch.empty(d, d))
        self.value = nn.Parameter(torch.empty(d, d))
        self.mixing = nn.Parameter(torch.empty(2, n_layers, N_MIXING, h, h))
        # meta-network (one generator for both sides) and edge scorer
        self.gen_w = nn.Parameter(torch.empty(d, d * d))
        self.gen_w_bias = nn.Parameter(torch.empty(d * d))
        self.gen_b = nn.Parameter(torch.empty(d, d))
        self.gen_b_bias = nn.Parameter(torch.empty(d))
        self.score1 = nn.Parameter(torch.empty(2 * d, d))
        self.score1_bias = nn.Parameter(torch.empty(d))
        self.score2 = nn.Parameter(torch.empty(d, 1))
        self.score2_bias = nn.Parameter(torch.empty(1))
        r = reference_normalized(data.train)
        self.adj = SparseGraph(r, symmetric=False)
        coo = r.tocoo()
        self.register_buffer("edge_users", torch.as_tensor(coo.row.astype(np.int64)), persistent=False)
        self.register_buffer("edge_items", torch.as_tensor(coo.col.astype(np.int64)), persistent=False)
        self.reset_parameters()

    #: the code's ``reg=True`` weights
    REGULARISED = ("user_embedding", "item_embedding", "user_hyper", "item_hyper", "key", "value",
                   "gen_w", "gen_b", "score1", "score2")

    def reset_parameters(self):
        for name in self.REGULARISED:
            nn.init.xavier_uniform_(getattr(self, name))
        with torch.no_grad():
            for w in self.mixing.view(-1, self.n_hyperedges, self.n_hyperedges):
                nn.init.xavier_uniform_(w)
        for b in (self.gen_w_bias, self.gen_b_bias, self.score1_bias, self.score2_bias):
            nn.init.zeros_(b)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """δ(x) = max(slope · x, x) (the code's ``leakyRelu``); see :func:`leaky`."""
        return leaky(x, self.leaky_slope)

    # ------------------------------------------------------------------ encoders
    def _local(self):
        """Ē = E + Σ_{g=1..G} X^g (``GCN``: alternating hops on R̂, hop 0 excluded)."""
        xu, xi = self.user_embedding, self.item_embedding
        gu = gi = None
        for _ in range(self.gcn_hops):
            xu, xi = self.adj(xi), self.adj.t(xu)
            gu = xu if gu is None else gu + xu
            gi = xi if gi is None else gi + xi
        if gu is None:
            return self.user_embedding, self.item_embedding
        return self.user_embedding + gu, self.item_embedding + gi

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (h, N, d')."""
        return x.reshape(x.shape[0], self.n_heads, -1).transpose(0, 1)

    def _transformer_layer(self, x, key, hyper, side: int, layer: int) -> torch.Tensor:
        """One ``propagate`` step: keys (h, N, d'), hyperedges Ψ (H, d) -> the next (N, d)."""
        d, h = self.embedding_dim, self.n_hyperedges
        v = self._heads(x @ self.value).transpose(1, 2)          # (h, d', N)
        s = self._heads(hyper).transpose(1, 2)                   # (h, d', H)
        t = ((v @ key) @ s).reshape(d, h)                        # (d, H)
        for w in self.mixing[side, layer]:
            t = self._act(t @ w) + t
        p = self._heads(t.T @ self.value)                        # (h, H, d')
        new = key @ (s @ p)                                      # (h, N, d')
        return new.transpose(0, 1).reshape(-1, d)

    def _encode(self):
        """(h_U, h_I, Ē_U, Ē_I, K_U, K_I) with K the (N, d) keys Ē W_K."""
        eu, ei = self._local()
        ku, ki = eu @ self.key, ei @ self.key
        hku, hki = self._heads(ku), self._heads(ki)
        lu, li = eu, ei
        su, si = eu, ei
        for layer in range(self.n_layers):
            lu = self._transformer_layer(lu, hku, self.user_hyper, 0, layer)
            li = self._transformer_layer(li, hki, self.item_hyper, 1, layer)
            su, si = su + lu, si + li
        return su, si, eu, ei, ku, ki

    # ------------------------------------------------------------------ self-augmentation
    def _meta(self, hyper: torch.Tensor):
        mean = hyper.mean(0, keepdim=True)                       # (1, d)
        d = self.embedding_dim
        w = (mean @ self.gen_w + self.gen_w_bias).reshape(d, d)
        b = mean @ self.gen_b + self.gen_b_bias                  # (1, d)
        return lambda k: self._act(k @ w + b)

    def edge_scores(self, user_keys: torch.Tensor, item_keys: torch.Tensor) -> torch.Tensor:
        """s_ui = σ(q F₂ + f₂) for the edges' keys (``label``)."""
        a = self._meta(self.user_hyper)(user_keys)
        c = self._meta(self.item_hyper)(item_keys)
        q = self._act(torch.cat([a, c], 1) @ self.score1 + self.score1_bias) + a + c
        return torch.sigmoid(q @ self.score2 + self.score2_bias).reshape(-1)

    def sample_edges(self) -> torch.Tensor:
        """⌊ρ|R|⌋ rounded up to even edge ids, uniform with replacement (the code's
        ``int(edgeSampRate · edgeNum)``, +1 when odd)."""
        n = int(self.edge_sample_rate * len(self.edge_users))
        n += n % 2
        return torch.randint(len(self.edge_users), (n,), device=self.edge_users.device)

    def self_augmentation(self, eu, ei, ku, ki, edges: torch.Tensor) -> torch.Tensor:
        users, items = self.edge_users[edges], self.edge_items[edges]
        scores = self.edge_scores(ku[users], ki[items])
        preds = (eu[users] * ei[items]).sum(1)
        half = len(edges) // 2
        return torch.clamp(1.0 - (preds[:half] - preds[half:]) * self.mult
                           * (scores[:half] - scores[half:]), min=0.0).sum()

    # ------------------------------------------------------------------ training
    def loss(self, users, pos, neg):
        hu, hi, eu, ei, ku, ki = self._encode()
        u = hu[users]
        scale = hinge_scale(self, len(users))
        out = {"hinge": hinge_loss((u * hi[pos]).sum(1), (u * hi[neg]).sum(1), scale)}
        if self.ssl_reg:
            out["ssl"] = self.ssl_reg * self.self_augmentation(eu, ei, ku, ki, self.sample_edges())
        out["reg"] = self.reg_weight * sum(getattr(self, n).pow(2).sum() for n in self.REGULARISED)
        return out

    def representations(self):
        hu, hi, *_ = self._encode()
        return hu, hi
