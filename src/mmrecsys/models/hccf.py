"""HCCF: Xia, Huang, Xu, Zhao, Yin and Huang, "Hypergraph Contrastive Collaborative Filtering",
SIGIR 2022 (Sec. 3: Eqs. 1–3 the local graph encoder, Eqs. 4–8 the learnable hypergraph encoder
with its hyperedge-mixing layers, Eq. 9 the hypergraph–graph contrast, Eq. 10 the joint loss), as
in the authors' TensorFlow code ``akaxlh/HCCF`` (``labcode_efficient.py``, ``Params.py``), which
is followed where the paper, the authors' later ``torchVersion/`` and HKUDS/SSLRec's ``hccf.py``
differ (see the end).

Notation: U users, I items, d = ``embedding_dim``, H = ``n_hyperedges``, L = ``n_layers``,
R̂ = D_U^{-1/2} R D_I^{-1/2} (R the binary (U, I) training matrix; the code adds 1e-8 to each
degree and to its square root), δ(x) = max(s·x, x) with s = ``leaky_slope`` (LeakyReLU), κ = ``keep_rate``,
drop_κ(·) dropout keeping each entry with probability κ and scaling it by 1/κ, drawn afresh at
every use in every training step (κ = 1, no dropout, when scoring).

Learnable hypergraph (Eq. 4): user–hyperedge and item–hyperedge weights from the embeddings,
Λ_U = E_U W_U (U, H) and Λ_I = E_I W_I (I, H), W_U, W_I (d, H).

Layer l = 1..L, with E⁰ = (E_U, E_I) and the user side shown (items alike with R̂ᵀ, Λ_I and their
own weights):

.. math::
    Z_U^l = δ\\big(\\mathrm{drop}_κ(\\hat R)\\, E_I^{l-1}\\big)                    \\quad\\text{(local GCN)}

    Γ_0 = δ(\\tilde Λ^\\top E_U^{l-1}),\\; Γ_k = δ(V_k^{l\\top} Γ_{k-1}) + Γ_{k-1}\\ (k = 1..3),\\;
    Y_U^l = δ(\\tilde Λ\\, Γ_3),\\; \\tilde Λ = \\mathrm{drop}_κ(Λ_U)                \\quad\\text{(hypergraph)}

    E_U^l = Z_U^l + Y_U^l + E_U^{l-1}, \\qquad h_u = \\sum_{l=0}^{L} E_U^l[u]

with V_k^l (H, H) the three hyperedge-mixing layers (the code's ``FC(·, hyperNum)`` on the
transposed hyperedge embeddings), separate per layer and side.

Loss per batch of B triples (u_b, i_b, j_b):

.. math::
    \\mathcal L = \\frac{\\bar s}{B}\\sum_b \\max\\big(0, 1 - h_{u_b}^\\top h_{i_b} + h_{u_b}^\\top h_{j_b}\\big)
      + λ_1 \\sum_{l=1}^{L}\\big(\\mathcal C(Z_U^l, Y_U^l; \\mathcal U_B) + \\mathcal C(Z_I^l, Y_I^l; \\mathcal I_B)\\big)
      + λ_2\\big(\\lVert E_U\\rVert^2 + \\lVert E_I\\rVert^2 + \\lVert W_U\\rVert^2 + \\lVert W_I\\rVert^2\\big)

    \\mathcal C(Z, Y; S) = \\sum_{k\\in S} -\\log\\Big(\\frac{e^{z_k^\\top y_k/τ}}{\\sum_{k'\\in S} e^{z_k^\\top y_{k'}/τ} + 10^{-8}} + 10^{-8}\\Big),
    \\quad z_k = \\frac{Z[k]}{\\lVert Z[k]\\rVert},\\; y_k = \\frac{Y[k]}{\\lVert Y[k]\\rVert} M^l

where 𝒰_B are the batch's distinct users and ℐ_B its distinct items, positives *and* negatives
(the code's ``tf.unique(iids)``), M^l a (d, d) projection per layer shared by both sides, and the
regulariser is the sum of squares of the whole tables (the code's ``Regularize()``), not of the
batch rows. The ranking loss is the hinge, not BPR (the code's ``preLoss``). All weights are
xavier-uniform; the code draws every weight so.

The code divides the hinge sum by its batch of 256 *users*, each with min(40, deg(u)) sampled
pairs (``sampNum``); here a batch is B training pairs, so the sum is divided by the number of users
such a batch stands for, B / s̄ with s̄ the mean of min(``samples_per_user``, deg(u)) over the
training users: the hinge keeps the code's scale. The contrast does not: it sums over the
batch's *distinct* users and items, and 2,048 random pairs hold far more distinct users than the
code's 256 (about 1,600 against 256 on 6,000 Baby users, items 2,760 against 2,330), so under
MMRec's sampler the contrast term is about 2.8 times the code's at initialisation (λ₁ weighs
that much more); ``sampler: user_pairs`` (below) gives the code's batches and scale.

Defaults are ``Params.py``'s (d 32, H 128, L 2, κ 0.5, τ 1, λ₁ 1e-4, λ₂ 1e-5, slope 0.5; Adam,
lr 1e-3 decayed by 0.96 every ``trnNum // batch`` = 39 steps, about one epoch of the code's
10,000 sampled users: here 0.96 per epoch). The LGMRec paper trains every baseline with batch
2048 and lr 1e-3 and gives no HCCF setting; the trainer's batch here is 2048 pairs (about the
code's 256 users × their sampled pairs on Amazon data). Search space: the README's grids (λ₂ ∈
{1e-2, 1e-3, 1e-4, 1e-5}, λ₁ from 1e-2 to 1e-8, τ ∈ {10, 3, 1, 0.3, 0.1}, κ ∈ {0.25, 0.5, 0.75, 1},
slope ∈ {1, 0.5, 0.1}); its Amazon command is λ₂ 1e-2, λ₁ 1e-7, τ 0.1.

Where the authors' TensorFlow code differs from their later PyTorch version (and from SSLRec,
which follows it), the TensorFlow code is followed: it has the LeakyReLU activations, the three
residual hyperedge-mixing layers, the residual E^{l-1} in each layer, the projection M^l in the
contrast, the hinge loss and the full-table regulariser; the PyTorch version drops the
activations, the mixing layers and M^l, uses BPR and stops the gradient of the GCN view.

Exact reformulations for speed: the contrast's K × K block is one product and one exponential
(shifted by the bound max‖z‖·max‖y‖, :func:`~.layers.bounded_logsumexp`) with no autograd passes
over it; the dropout masks come from ``torch.rand`` (the same distribution as ``tf.nn.dropout``);
δ is ``F.leaky_relu`` (its gradient at 0 is the slope, as TensorFlow's ``Maximum`` gives it).

Protocol differences (model maths and loss kept): the code samples 10,000 users per epoch and
up to 40 (positive, negative) pairs per user (``sampler: user_pairs`` with ``batch_size: 256``
reproduces the code's batches: every user once per epoch, 256 users a step with min(40, deg)
pairs each, the hinge sum divided by 256, the contrast over those users and their items); by
default an epoch passes every training pair once with one uniform negative (MMRec's sampler,
the same negative distribution). The code has no validation split and reports its last epoch's
test metrics; here early stopping on validation Recall@20 selects the epoch (MMRec's protocol).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import EdgeList, SparseGraph
from .base import Recommender
from .layers import bounded_logsumexp

#: the code's hyperedge-mixing layers per hypergraph pass (``hyperPropagate``)
N_MIXING = 3


def reference_normalized(train: sp.spmatrix) -> sp.csr_matrix:
    """R̂ = D_U^{-1/2} R D_I^{-1/2} with the code's ε: 1 / (√(deg + 1e-8) + 1e-8) (``transToLsts``)."""
    r = sp.csr_matrix(train, dtype=np.float64)
    r.data[:] = 1.0
    du = 1.0 / (np.sqrt(np.asarray(r.sum(1)).ravel() + 1e-8) + 1e-8)
    di = 1.0 / (np.sqrt(np.asarray(r.sum(0)).ravel() + 1e-8) + 1e-8)
    return sp.csr_matrix(sp.diags(du) @ r @ sp.diags(di), dtype=np.float32)


def mean_sampled_pairs(train: sp.spmatrix, per_user: int) -> float:
    """s̄: the mean over users with training items of min(per_user, deg(u)) (the pairs the
    authors' samplers draw per user)."""
    deg = np.diff(sp.csr_matrix(train).indptr)
    deg = deg[deg > 0]
    return float(np.minimum(deg, per_user).mean()) if len(deg) else 1.0


def leaky(x: torch.Tensor, slope: float) -> torch.Tensor:
    """max(slope · x, x), the code's ``leakyRelu`` (``tf.maximum(leaky * x, x)``): for slope ≤ 1
    ``F.leaky_relu`` (one pass each way instead of the maximum's compare-and-select passes), whose
    gradient at x = 0 is the slope, as TensorFlow's ``Maximum`` gradient gives it (ties go to its
    first argument); for slope > 1 the same selection written out."""
    if slope <= 1.0:
        return F.leaky_relu(x, slope)
    sx = slope * x
    return torch.where(sx >= x, sx, x)


def dropout(x: torch.Tensor, keep: float) -> torch.Tensor:
    """Each entry kept with probability ``keep`` and scaled by 1/keep (``tf.nn.dropout``), the
    mask drawn from ``torch.rand`` (the same distribution as ``F.dropout``, 3× faster on CPU)."""
    return x * ((torch.rand(x.shape, device=x.device) < keep).to(x.dtype) / keep)


def hinge_scale(model, rows: int) -> float:
    """The factor of the hinge sum: the code divides by its batch of users (``args.batch``, also
    for a smaller last batch). Under the authors' sampler (``sampler: user_pairs``, batches of
    ``batch_size`` users) that is 1 / batch_size; under MMRec's (B training pairs) the batch
    stands for B / s̄ users, so s̄ / B (s̄: the model's ``hinge_pairs_per_user``)."""
    if model.train_sampler == "user_pairs" and model.train_batch_size:
        return 1.0 / model.train_batch_size
    return model.hinge_pairs_per_user / rows


def hinge_loss(pos: torch.Tensor, neg: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · Σ max(0, 1 − (pos − neg)) (the authors' ``preLoss`` of HCCF and SHT)."""
    return scale * torch.clamp(1.0 - (pos - neg), min=0.0).sum()


#: the contrast's K × K blocks are padded to multiples of this many rows and columns (a few
#: shapes, so the whole training step's products may go to oneDNN: ``fixed_shape_step``)
CONTRAST_PAD = 512


def contrast_with_eps(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ_k −log(e^{z_k·y_k/τ} / (Σ_k' e^{z_k·y_k'/τ} + 1e-8) + 1e-8) over the rows (HCCF's
    ``calcSSL``), computed in log space (no overflow at small τ), the two 1e-8 included; the
    K × K block is one product and one exponential (:func:`~.layers.bounded_logsumexp`)."""
    pos = (z * y).sum(1) / temperature
    lse = bounded_logsumexp(z, y, temperature, pad=CONTRAST_PAD)
    log_denom = torch.logaddexp(lse, lse.new_tensor(math.log(1e-8)))
    return -torch.log(torch.exp(pos - log_denom) + 1e-8).sum()


class HCCF(Recommender):
    """HCCF: local GCN and learnable-hypergraph encoders with a hypergraph–graph contrast.

    Args:
        embedding_dim: d, width of the embeddings (``latdim``). (default: ``32``)
        n_hyperedges: H, learnable hyperedges per side (``hyperNum``). (default: ``128``)
        n_layers: L, layers of both encoders (``gnn_layer``). (default: ``2``)
        keep_rate: κ, the share of graph edges and of hyperedge weights kept by dropout in
            training (``keepRate``), in (0, 1]. (default: ``0.5``)
        temperature: τ of the contrast (``temp``). (default: ``1.0``)
        ssl_reg: λ₁, weight of the contrast. (default: ``0.0001``)
        reg_weight: λ₂, weight of the squared norms of the embedding and hyperedge tables
            (``reg``). (default: ``1e-05``)
        leaky_slope: slope of the LeakyReLU δ (``leaky``). (default: ``0.5``)
        samples_per_user: the code's pairs sampled per user (``sampNum``), which sets the
            hinge loss's scale s̄ / B. (default: ``40``)
    """

    name = "hccf"
    fixed_shape_step = True     # full-table products, padded contrast blocks
    aliases = {"latdim": "embedding_dim", "hyperNum": "n_hyperedges", "gnn_layer": "n_layers",
               "keepRate": "keep_rate", "temp": "temperature", "reg": "reg_weight",
               "leaky": "leaky_slope", "sampNum": "samples_per_user"}
    train_defaults = {"lr": 1e-3, "batch_size": 2048, "lr_scheduler": [0.96, 1]}
    search_space = {"reg_weight": [1e-2, 1e-3, 1e-4, 1e-5],
                    "ssl_reg": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
                    "temperature": [10.0, 3.0, 1.0, 0.3, 0.1],
                    "keep_rate": [0.25, 0.5, 0.75, 1.0],
                    "leaky_slope": [1.0, 0.5, 0.1]}
    notes = ("The authors' TensorFlow HCCF (LeakyReLU, three hyperedge-mixing layers, hinge loss, "
             "full-table L2), not their later PyTorch simplification; the contrast runs over the "
             "batch's distinct users and items.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 32, n_hyperedges: int = 128,
                 n_layers: int = 2, keep_rate: float = 0.5, temperature: float = 1.0,
                 ssl_reg: float = 1e-4, reg_weight: float = 1e-5, leaky_slope: float = 0.5,
                 samples_per_user: int = 40):
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim}: must be ≥ 1")
        if n_hyperedges < 1:
            raise ValueError(f"n_hyperedges={n_hyperedges}: HCCF needs at least one hyperedge")
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers}: HCCF needs at least one layer")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate={keep_rate}: the share kept by dropout, in (0, 1]")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        if ssl_reg < 0 or reg_weight < 0 or leaky_slope < 0:
            raise ValueError("ssl_reg, reg_weight and leaky_slope must be ≥ 0")
        if samples_per_user < 1:
            raise ValueError(f"samples_per_user={samples_per_user}: must be ≥ 1")
        super().__init__(data, cache)
        self.embedding_dim = embedding_dim
        self.n_hyperedges = n_hyperedges
        self.n_layers = n_layers
        self.keep_rate = float(keep_rate)
        self.temperature = float(temperature)
        self.ssl_reg = float(ssl_reg)
        self.reg_weight = float(reg_weight)
        self.leaky_slope = float(leaky_slope)
        self.samples_per_user = int(samples_per_user)
        self.hinge_pairs_per_user = mean_sampled_pairs(data.train, self.samples_per_user)
        d, h = embedding_dim, n_hyperedges
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, d))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, d))
        self.user_hyper = nn.Parameter(torch.empty(d, h))
        self.item_hyper = nn.Parameter(torch.empty(d, h))
        # mixing[side, layer, k]: V_k^l (H, H); side 0 users, 1 items
        self.mixing = nn.Parameter(torch.empty(2, n_layers, N_MIXING, h, h))
        self.projection = nn.Parameter(torch.empty(n_layers, d, d))     # M^l
        r = reference_normalized(data.train)
        self.adj = SparseGraph(r, symmetric=False)
        e = EdgeList.from_scipy(r)
        self.register_buffer("edge_users", e.rows, persistent=False)
        self.register_buffer("edge_items", e.cols, persistent=False)
        self.register_buffer("edge_values", e.values, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        for p in (self.user_embedding, self.item_embedding, self.user_hyper, self.item_hyper):
            nn.init.xavier_uniform_(p)
        with torch.no_grad():
            for w in self.mixing.view(-1, self.n_hyperedges, self.n_hyperedges):
                nn.init.xavier_uniform_(w)
            for w in self.projection:
                nn.init.xavier_uniform_(w)

    def _edge_list(self, transpose: bool) -> EdgeList:
        """R̂ (or R̂ᵀ) as an edge list, for per-step edge dropout."""
        if transpose:
            return EdgeList(self.edge_items, self.edge_users, self.edge_values,
                            (self.n_items, self.n_users))
        return EdgeList(self.edge_users, self.edge_items, self.edge_values,
                        (self.n_users, self.n_items))

    # ------------------------------------------------------------------ encoders
    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """δ(x) = max(slope · x, x) (the code's ``leakyRelu``); see :func:`leaky`."""
        return leaky(x, self.leaky_slope)

    def _hypergraph(self, x: torch.Tensor, lam: torch.Tensor, side: int, layer: int) -> torch.Tensor:
        """Y = δ(Λ Γ₃) with Γ₀ = δ(Λᵀ x), Γ_k = δ(V_kᵀ Γ_{k−1}) + Γ_{k−1} (``hyperPropagate``)."""
        g = self._act(lam.T @ x)                                  # (H, d)
        for v in self.mixing[side, layer]:
            g = self._act(v.T @ g) + g
        return self._act(lam @ g)

    def _encode(self, train: bool):
        """(h_U, h_I, [Z_U^l], [Z_I^l], [Y_U^l], [Y_I^l]); dropout only when ``train``."""
        keep = self.keep_rate if train else 1.0
        eu, ei = self.user_embedding, self.item_embedding
        lam_u, lam_i = eu @ self.user_hyper, ei @ self.item_hyper
        ulat, ilat = eu, ei
        sum_u, sum_i = eu, ei
        zs_u, zs_i, ys_u, ys_i = [], [], [], []
        for layer in range(self.n_layers):
            if keep < 1.0:
                zu = self._act(self._edge_list(False).dropout(keep)(ilat))
                zi = self._act(self._edge_list(True).dropout(keep)(ulat))
                yu = self._hypergraph(ulat, dropout(lam_u, keep), 0, layer)
                yi = self._hypergraph(ilat, dropout(lam_i, keep), 1, layer)
            else:
                zu, zi = self._act(self.adj(ilat)), self._act(self.adj.t(ulat))
                yu = self._hypergraph(ulat, lam_u, 0, layer)
                yi = self._hypergraph(ilat, lam_i, 1, layer)
            ulat, ilat = zu + yu + ulat, zi + yi + ilat
            sum_u, sum_i = sum_u + ulat, sum_i + ilat
            zs_u.append(zu), zs_i.append(zi), ys_u.append(yu), ys_i.append(yi)
        return sum_u, sum_i, zs_u, zs_i, ys_u, ys_i

    # ------------------------------------------------------------------ training
    def loss(self, users, pos, neg):
        hu, hi, zs_u, zs_i, ys_u, ys_i = self._encode(train=True)
        u = hu[users]
        scale = hinge_scale(self, len(users))
        out = {"hinge": hinge_loss((u * hi[pos]).sum(1), (u * hi[neg]).sum(1), scale)}
        if self.ssl_reg:
            uniq_u = torch.unique(users)
            uniq_i = torch.unique(torch.cat([pos, neg]))
            ssl = hu.new_zeros(())
            for layer, m in enumerate(self.projection):
                for z, y, rows in ((zs_u[layer], ys_u[layer], uniq_u), (zs_i[layer], ys_i[layer], uniq_i)):
                    # normalise and project every row (a product of the table's fixed shape; the
                    # same values row by row), then take the batch's
                    y_all = F.normalize(y, dim=1) @ m
                    ssl = ssl + contrast_with_eps(F.normalize(z[rows], dim=1), y_all[rows],
                                                  self.temperature)
            out["ssl"] = self.ssl_reg * ssl
        reg = sum(p.pow(2).sum() for p in (self.user_embedding, self.item_embedding,
                                           self.user_hyper, self.item_hyper))
        out["reg"] = self.reg_weight * reg
        return out

    def representations(self):
        hu, hi, *_ = self._encode(train=False)
        return hu, hi
