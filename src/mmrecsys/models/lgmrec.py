"""LGMRec: local and global graph learning for multimodal recommendation.

Guo et al., "LGMRec: Local and Global Graph Learning for Multimodal Recommendation",
AAAI 2024 (arXiv:2312.16400), Eqs. 2–15 (numbers below). Official code ``georgeguo-cn/LGMRec``
``models/lgmrec.py`` as fixed on 2024-07-18 (commit d918d5a), identical to the copy in MMRec
(``enoche/MMRec`` ``src/models/lgmrec.py``); where paper and code differ, the code is followed.

Notation: U users, I items, N = U + I nodes, d = ``embedding_dim``, A = ``hyper_num``,
τ = ``temperature``, R the binary (U, I) training matrix, nrm(x) = x / max(‖x‖₂, 1e-12) row-wise.

Local graph embedding (Eqs. 2–6; the code's ``cge`` and ``mge``).

.. math::
    A = \\begin{bmatrix}0 & R\\\\ R^\\top & 0\\end{bmatrix},\\quad
    \\hat A = D^{-1/2} A D^{-1/2},\\ D = \\mathrm{diag}(\\deg + 10^{-7})

    E_c = \\frac{1}{L_c+1}\\sum_{l=0}^{L_c} \\hat A^l [E_u^0; E_i^0]
        \\qquad (\\texttt{cf\\_model=mf}: E_c = [E_u^0; E_i^0])

    F_i^m = X_m W_m,\\quad F_u^m = \\mathrm{diag}(1/(\\deg_u + 10^{-7}))\\, R F_i^m,\\quad
    F^m = \\hat A^{L_m} [F_u^m; F_i^m]

    E_{loc} = E_c + \\sum_m \\mathrm{nrm}(F^m)

Global hypergraph embedding (Eqs. 7–11; the code's ``forward`` and ``HGNNLayer``), per
modality m:

.. math::
    S_i^m = X_m V_m,\\quad S_u^m = R S_i^m \\ \\text{(plain sum, no normalisation)}

    H_x^m = \\mathrm{softmax}((S_x^m + g)/\\tau) \\ \\text{row-wise},\\ g \\sim \\mathrm{Gumbel}(0,1)
    \\ \\text{i.i.d., fresh at every forward (also at inference by default)}

    \\bar H = \\mathrm{Dropout}_{1-\\texttt{keep\\_rate}}(H) \\ \\text{(training only)}

    G_i^{(0)} = E_c[U{:}],\\quad Z^{(h)} = \\bar H_i^\\top G_i^{(h-1)},\\quad
    G_i^{(h)} = \\bar H_i Z^{(h)},\\quad G_u^{(h)} = \\bar H_u Z^{(h)},\\quad h = 1..L_h

    E_{glob} = \\sum_m [G_u^{m,(L_h)}; G_i^{m,(L_h)}]

Fusion and prediction (Eq. 13): :math:`E^* = E_{loc} + \\alpha\\,\\mathrm{nrm}(E_{glob})`,
:math:`\\hat y_{ui} = \\langle E^*_u, E^*_i\\rangle`.

Losses (Eqs. 12, 14, 15; the code's ``ssl_triple_loss``, ``bpr_loss``, ``reg_loss`` and
``calculate_loss``), for a batch of B triples (u_b, p_b, n_b):

.. math::
    \\ell(P, Q, Q_{all}) = \\sum_{b=1}^{B} -\\log
        \\frac{\\exp(c(P_b, Q_b)/\\tau)}{\\sum_k \\exp(c(P_b, Q_{all,k})/\\tau)}
    \\quad (c = \\text{cosine; a SUM over the batch; denominators over all rows})

    L_{HCL} = \\ell(G_u^v[u_b], G_u^t[u_b], G_u^t) + \\ell(G_i^v[p_b], G_i^t[p_b], G_i^t)

    L = \\underbrace{\\tfrac1B \\textstyle\\sum_b -\\log\\sigma(\\hat y_{u_b p_b} - \\hat y_{u_b n_b})}_{bpr}
      + \\lambda_{cl} L_{HCL}
      + \\lambda_{reg} \\frac{\\lVert E^*_u[u]\\rVert_F + \\lVert E^*_i[p]\\rVert_F + \\lVert E^*_i[n]\\rVert_F}{B}

Modalities. They are taken from ``data.features`` in their order (MMRec data: image_feat,
text_feat, i.e. visual then textual, as in the paper). Any number ≥ 1 works: the local and
global terms sum over all modalities; the contrastive loss sums ℓ over every ordered pair
(a, b) with a before b in that order (anchors from a, candidates from b), which is exactly the
paper's single visual→text term for two modalities; with a single modality it is 0.

Exact reformulations used for speed (the math is unchanged, only float rounding differs):

* ``X_m [W_m | V_m]`` is one product (projection and hyperedge logits), and ``R [F_i | S_i]``
  one sparse product (user mean and user logits);
* Â, R, Rᵀ and the inverse user degrees are built once (cached) as CSR tensors; Â is
  symmetric, so its backward pass is Â itself (one CSR SpMM per 64-wide block);
* the fusion E* is row-wise, so a training step fuses only the rows its batch reads;
* the HCL denominators: rows of the batch that share a user (item) share their term, so each
  distinct row is computed once and weighted by its multiplicity; when A < d the cosine matrix
  is computed in the A-dimensional hyperedge space, since
  nrm(P) nrm(H̄Z)ᵀ = (nrm(P) Zᵀ) (diag(1/‖H̄Z‖) H̄)ᵀ; the log-sum-exp over all users/items
  runs in row blocks that never form the B×U matrix, with its gradient accumulated in the same
  sweep (the term is a scalar, so its gradient is a multiple of the gradient at 1).

Everything else (the full-graph forward with fresh noise and dropout at every step, float32,
the sum-reduced one-directional HCL) is as in the official code.

Inference, as the official ``full_sort_predict``: dropout off, Gumbel noise on; the evaluator
re-runs the forward pass for every block of ``eval_batch_size`` (4096) users, each with its own
draw, and validation and test are separate passes with independent draws. The draws come from
a seed per pass (``mmrecsys.evaluation.eval_seed(seed, epoch, split)``) instead of the global
RNG stream, so ``mmrecsys evaluate`` replays the reported test pass exactly and ``recommend`` /
``serve`` answer the same request identically every time (they use the best epoch's test-pass
seed, one draw for all users). ``deterministic_inference=True`` removes the noise at inference
(plain softmax(S/τ)); training is unchanged either way.
"""
from __future__ import annotations

import contextlib
import itertools
import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, binarize, inv_power, normalized_adjacency
from .base import Recommender
from .layers import bpr_logsigmoid, emb_loss, power, propagate

_EPS_NORM = 1e-12   # F.normalize's eps
_EPS_DEG = 1e-7     # degree epsilon of Â and of the user mean (the code's get_norm_adj_mat, mge)




# ----------------------------------------------------------------------------- HCL helper
class _WeightedLogSumExpMatmul(torch.autograd.Function):
    """Σ_r w_r · log Σ_k exp(a_r · b_k), in row chunks; never holds the full (n_a, n_b) matrix.

    The output is a scalar, so its gradient is a scalar multiple of the gradient at 1, which is
    accumulated during the forward sweep while each block is in cache (no recomputation):
    with P = softmax(a bᵀ) row-wise, ∂/∂a = diag(w) P b and ∂/∂b = Pᵀ diag(w) a.
    ``bound`` ≥ max |a_r · b_k| (|cosine/τ| ≤ 1/τ) is the shift that keeps exp in range, folded
    into the product as an extra column; ``bound=None`` shifts each row by its maximum.
    """

    @staticmethod
    def forward(ctx, a, b, w, bound, chunk_elems):
        rows = max(1, int(chunk_elems) // max(1, b.shape[0]))
        want_grad = any(ctx.needs_input_grad[:2])
        b1 = torch.cat([b, torch.ones_like(b[:, :1])], 1)                   # (n_b, k+1)
        a1 = torch.cat([a, torch.full_like(a[:, :1], -(bound or 0.0))], 1)  # (n_a, k+1)
        b_t = b.T.contiguous()                                               # (k, n_b)
        a_t = a.T.contiguous()                                               # (k, n_a)
        lse = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
        grad_a_t = torch.empty_like(a_t) if want_grad else None
        grad_b_t = torch.zeros_like(b_t) if want_grad else None
        for s in range(0, a.shape[0], rows):
            blk = a1[s:s + rows] @ b1.T                                      # a·b − bound
            if bound is None:
                shift = blk.amax(1)
                blk.sub_(shift[:, None])
            else:
                shift = bound
            blk.exp_()
            sums = blk.sum(1)
            lse[s:s + rows] = sums.log() + shift
            if want_grad:  # skinny products in their wide (transposed) form: faster on CPU BLAS
                coef = w[s:s + rows] / sums                                  # w_r / Σ_k exp(·)
                grad_a_t[:, s:s + rows] = (b_t @ blk.T).mul_(coef)
                grad_b_t.addmm_(a_t[:, s:s + rows] * coef, blk)
        if want_grad:
            ctx.save_for_backward(grad_a_t, grad_b_t)
        return (w * lse).sum()

    @staticmethod
    def backward(ctx, grad):
        grad_a_t, grad_b_t = ctx.saved_tensors
        return grad_a_t.T * grad, grad_b_t.T * grad, None, None, None


def hcl_chunk_elems(device) -> int:
    """Elements of one block of the HCL log-sum-exp: cache-sized on a CPU (2^19 floats, 2 MB),
    large on a GPU (2^27), where each block is a few kernel launches."""
    return 1 << 27 if torch.device(device).type != "cpu" else 1 << 19


def hcl_term(anchor_all: torch.Tensor, cand_all: torch.Tensor, rows: torch.Tensor, tau: float,
             cand_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
             chunk_elems: int | None = None) -> torch.Tensor:
    """ℓ(P, Q, Q_all) of Eq. 12 as the code's ``ssl_triple_loss``: P = anchor_all[rows],
    Q = cand_all[rows], Q_all = cand_all.

    Σ_b [ logsumexp_k(c(P_b, Q_all,k)/τ) − c(P_b, Q_b)/τ ], c the cosine similarity. Rows that
    repeat in ``rows`` are computed once and weighted by their count (same value, same gradient).
    ``cand_factors`` = (H, Z) with cand_all = H Z: the similarities are then formed in the
    hyperedge space (cheaper when H has fewer columns than Z has). ``chunk_elems``: elements
    per block of the log-sum-exp (default :func:`hcl_chunk_elems` of the device); it changes
    speed and memory, not the result.
    """
    if chunk_elems is None:
        chunk_elems = hcl_chunk_elems(anchor_all.device)
    uniq, counts = torch.unique(rows, return_counts=True)
    p = F.normalize(anchor_all[uniq], dim=1, eps=_EPS_NORM)
    q = F.normalize(cand_all[uniq], dim=1, eps=_EPS_NORM)
    pos = (p * q).sum(1) / tau
    if cand_factors is not None and cand_factors[0].shape[1] < cand_all.shape[1]:
        h, z = cand_factors
        norm = cand_all.norm(dim=1, keepdim=True).clamp_min(_EPS_NORM)
        left, right = (p / tau) @ z.T, h / norm             # (n, A), (n_all, A)
    else:
        left, right = p / tau, F.normalize(cand_all, dim=1, eps=_EPS_NORM)
    bound = 1.0 / tau  # |cosine| ≤ 1; for a tiny τ (exp(−2/τ) may underflow) shift by row maxima
    bound = bound if 2.0 * bound < 80.0 else None
    w = counts.to(pos.dtype)
    return _WeightedLogSumExpMatmul.apply(left, right, w, bound, chunk_elems) - (w * pos).sum()


# ----------------------------------------------------------------------------- the model
class ModalInputs(NamedTuple):
    """One modality's inputs of a forward pass (paper Eqs. 4, 5 and 7)."""
    features: torch.Tensor      # [F_u; F_i] (N, d): the MGE input, user rows the mean of their items
    item_logits: torch.Tensor   # S_i = X V (I, A)
    user_logits: torch.Tensor   # S_u = R S_i (U, A), a plain sum


class GlobalParts(NamedTuple):
    """One modality's global hypergraph embedding of a forward pass (paper Eqs. 8–10)."""
    user_deps: torch.Tensor     # H̄_u (U, A), after dropout
    item_deps: torch.Tensor     # H̄_i (I, A), after dropout
    hyperedges: torch.Tensor    # Z (A, d) of the last hypergraph layer
    users: torch.Tensor         # G_u = H̄_u Z (U, d)
    items: torch.Tensor         # G_i = H̄_i Z (I, d)


class LGMRec(Recommender):
    """LGMRec (local + global graph learning) as in the official code, fixed version.

    Defaults are the official Baby settings (``configs/model/LGMREC.yaml`` and
    ``configs/dataset/baby.yaml``); the grids are those of the yaml comments.

    Args:
        embedding_dim: d, width of the ID embeddings and of the projected modal features (the
            code's ``embedding_size`` = ``feat_embed_dim``). (default: ``64``)
        n_layers: L_c, LightGCN layers of the collaborative graph embedding, Eqs. 2–3 (the
            code's ``n_ui_layers``; grid {1..4}). (default: ``2``)
        n_mm_layers: L_m, propagation layers of the modality graph embedding, Eq. 6; only the
            last layer is used, 0 keeps the initial features (grid {0..4}). (default: ``2``)
        n_hyper_layer: L_h ≥ 1, hypergraph message-passing layers, Eq. 9 (grid {1..4}).
            (default: ``1``)
        hyper_num: A, hyperedges (implicit attributes) per modality, Eq. 7 (grid 2..256).
            (default: ``4``)
        keep_rate: probability of keeping an entry of the dependency matrices in the dropout of
            Eq. 9, training only (the paper's "ρ"; grid 0.1..1). (default: ``0.5``)
        alpha: weight α of the normalised global embedding in the fusion, Eq. 13.
            (default: ``0.3``)
        cl_weight: λ_cl, weight of the (batch-summed) hypergraph contrastive loss, Eq. 15.
            (default: ``0.0001``)
        reg_weight: λ_reg, weight of the non-squared Frobenius norms of the batch's final
            embeddings divided by the batch size (the code's ``reg_loss``, not the paper's
            weight decay). (default: ``1e-06``)
        temperature: τ of both the Gumbel-softmax (Eq. 8) and the contrastive loss (Eq. 12),
            hard-coded ``tau = 0.2`` in the code. (default: ``0.2``)
        cf_model: ``"lightgcn"``, or ``"mf"`` for E_c = E⁰ without propagation.
            (default: ``'lightgcn'``)
        deterministic_inference: False, as the code's ``full_sort_predict``: the Gumbel noise
            is also drawn at inference, so evaluation is random; True: plain softmax(S/τ) at
            inference (training is unchanged). (default: ``False``)
        legacy_user_hyperedges: reproduce the bug of the first published ``models/lgmrec.py``
            (Aug 2023, before commit d918d5a), which produced the official logs: the visual
            user dependency matrix is the Gumbel-softmax of the TEXT user logits, and the text
            user matrix is the raw text user logits. Needs exactly two modalities.
            (default: ``False``)
    """

    name = "lgmrec"
    data_parallel = "split"  # batch terms through layers.batch_mean / emb_loss / row sums
    aliases = {"embedding_size": "embedding_dim", "n_ui_layers": "n_layers", "tau": "temperature"}
    requires_features = True
    notes = ("Inference draws Gumbel noise, as the official full_sort_predict: one forward pass "
             "per block of eval_batch_size users, each with its own draw; validation and test "
             "are separate passes. The noise is seeded per (seed, epoch, split), so `evaluate` "
             "replays the reported test pass and `recommend`/`serve` answer repeatably (the best "
             "epoch's test seed). deterministic_inference=true removes the noise at inference.")
    train_defaults = {
        "epochs": 1000, "batch_size": 2048, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam",
        "lr_scheduler": [1.0, 50], "eval_step": 1, "patience": 20, "seed": 999,
        "sampler": "interactions", "negatives_from": "train_items", "valid_metrics": ["recall@20"],
    }
    presets = {  # the official configs/dataset/{baby,sports,clothing}.yaml at HEAD (= paper Table 4,
                 # but for Clothing's n_layers: 3 in the paper, 2 in the yaml, log and MMRec)
        "baby": {"n_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4,
                 "keep_rate": 0.5, "alpha": 0.3},
        "sports": {"n_layers": 4, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4,
                   "keep_rate": 0.4, "alpha": 0.6},
        "clothing": {"n_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 2, "hyper_num": 64,
                     "keep_rate": 0.2, "alpha": 0.2},
    }
    search_space = {  # official configs/model/LGMREC.yaml (commented grid)
        "n_ui_layers": [1, 2, 3, 4], "n_mm_layers": [1, 2, 3, 4], "n_hyper_layer": [1, 2, 3, 4],
        "hyper_num": [2, 4, 8, 16, 32, 64, 128, 256],
        "keep_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "alpha": [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "cl_weight": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
        "reg_weight": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
    }

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 n_mm_layers: int = 2, n_hyper_layer: int = 1, hyper_num: int = 4,
                 keep_rate: float = 0.5, alpha: float = 0.3, cl_weight: float = 1e-4,
                 reg_weight: float = 1e-6, temperature: float = 0.2, cf_model: str = "lightgcn",
                 deterministic_inference: bool = False, legacy_user_hyperedges: bool = False):
        super().__init__(data, cache)
        if cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"cf_model={cf_model!r}: use 'lightgcn' or 'mf'")
        if n_hyper_layer < 1:
            raise ValueError(f"n_hyper_layer={n_hyper_layer}: LGMRec needs at least 1 hypergraph layer")
        if n_layers < 0 or n_mm_layers < 0:
            raise ValueError("n_layers and n_mm_layers must be ≥ 0")
        if hyper_num < 1 or embedding_dim < 1:
            raise ValueError("hyper_num and embedding_dim must be ≥ 1")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate={keep_rate}: the probability of keeping an entry, in (0, 1]")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        if legacy_user_hyperedges and len(data.features) != 2:
            raise ValueError("legacy_user_hyperedges reproduces a two-modality bug (visual, text); "
                             f"dataset {data.name!r} has {len(data.features)} modalities")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_mm_layers = n_mm_layers
        self.n_hyper_layer = n_hyper_layer
        self.hyper_num = hyper_num
        self.keep_rate = keep_rate
        self.alpha = alpha
        self.cl_weight = cl_weight
        self.reg_weight = reg_weight
        self.temperature = temperature
        self.cf_model = cf_model
        self.deterministic_inference = deterministic_inference
        self.legacy_user_hyperedges = legacy_user_hyperedges
        self.modalities = list(data.features)

        # constant graphs: Â (symmetric), R and Rᵀ, 1/(deg_u + 1e-7)
        def build():
            r = binarize(data.train)
            return {"norm_adj": normalized_adjacency(r, eps=_EPS_DEG), "inter": r,
                    "inv_user_degree": inv_power(np.diff(r.indptr).astype(np.float32), 1.0, _EPS_DEG)}
        g = self.cached_graph(cache, "lgmrec-graphs", {"data": data.fingerprint(with_features=False),
                                                       "eps": _EPS_DEG, "version": 1}, build)
        self.norm_adj = SparseGraph(g["norm_adj"], symmetric=True)   # Â, (U+I)²
        self.inter = SparseGraph(g["inter"], symmetric=False)        # R, (U, I)
        self.register_buffer("inv_user_degree", torch.from_numpy(g["inv_user_degree"])[:, None],
                             persistent=False)

        # frozen raw features and trainable parameters
        self._keys = []
        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.projection = nn.ParameterDict()     # W_m (D_m, d)
        self.hyperedges = nn.ParameterDict()     # V_m (D_m, A)
        for i, (mod, x) in enumerate(data.features.items()):
            key = re.sub(r"\W", "_", mod) or f"m{i}"
            if key in self.projection:
                key = f"{key}_{i}"
            self._keys.append(key)
            self.register_buffer(f"feat_{key}", torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)),
                                 persistent=False)
            self.projection[key] = nn.Parameter(torch.empty(x.shape[1], embedding_dim))
            self.hyperedges[key] = nn.Parameter(torch.empty(x.shape[1], hyper_num))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        for k in self._keys:
            nn.init.xavier_uniform_(self.projection[k])
        for k in self._keys:
            nn.init.xavier_uniform_(self.hyperedges[k])

    def features(self, key: str) -> torch.Tensor:
        return getattr(self, f"feat_{key}")

    # ------------------------------------------------------------------ forward pieces
    def modal_inputs(self) -> list[ModalInputs]:
        """Per modality: initial MGE input [F_u; F_i] (N, d), item and user hyperedge logits."""
        d = self.embedding_dim
        out = []
        for k in self._keys:
            y = self.features(k) @ torch.cat([self.projection[k], self.hyperedges[k]], 1)  # (I, d+A)
            ry = self.inter(y)                                        # (U, d+A)
            f0 = torch.cat([ry[:, :d] * self.inv_user_degree, y[:, :d]], 0)               # (N, d)
            out.append(ModalInputs(f0, y[:, d:], ry[:, d:]))
        return out

    def dependency(self, logits: torch.Tensor) -> torch.Tensor:
        """Row-wise soft Gumbel-softmax at temperature τ (plain softmax when deterministic)."""
        if not self.training and self.deterministic_inference:
            return torch.softmax(logits / self.temperature, dim=1)
        return F.gumbel_softmax(logits, tau=self.temperature, hard=False, dim=1)

    def local_propagation(self, ego: torch.Tensor, modal: list[torch.Tensor]):
        """E_c = mean_{l≤L_c} Â^l E⁰ (E⁰ for mf) and F^m = Â^{L_m} F^m_0 (one SpMM per block)."""
        e_c = propagate(self.norm_adj, ego, self.n_layers) if self.cf_model == "lightgcn" else ego
        return e_c, [power(self.norm_adj, f, self.n_mm_layers) for f in modal]

    def hypergraph(self, h_item: torch.Tensor, h_user: torch.Tensor, g_item0: torch.Tensor):
        """L_h layers of Z = H̄_iᵀ G_i, G_i = H̄_i Z; users read G_u = H̄_u Z of the last layer."""
        g_item = g_item0
        for _ in range(self.n_hyper_layer):
            z = h_item.T @ g_item          # (A, d)
            g_item = h_item @ z            # (I, d)
        return h_user @ z, g_item, z

    def _noise_free_parts(self):
        """(modal inputs, E_c, [F^m]): the part of the forward pass that draws no noise, reused
        by every forward pass inside :meth:`inference_session` (computed once there)."""
        cache = self.__dict__.get("_session")
        if cache is not None and (torch.is_grad_enabled() or self.training):
            cache = None
        if cache:
            return cache["parts"]
        ego = torch.cat([self.user_embedding, self.item_embedding], 0)
        inputs = self.modal_inputs()
        e_c, modal = self.local_propagation(ego, [x.features for x in inputs])
        if cache is not None:
            cache["parts"] = (inputs, e_c, modal)
        return inputs, e_c, modal

    @contextlib.contextmanager
    def inference_session(self):
        """Within this block the weights are taken as fixed: the noise-free part of the forward
        pass (projections, user means, the local graph embedding) is computed once, by the
        first forward pass in eval mode without gradients, and reused by the following ones,
        which only draw their Gumbel noise and run the hypergraph and the fusion. The
        evaluator ranks a stochastic model's user blocks inside one session; results are
        identical to recomputing everything (the same operations, the same draws)."""
        outer = self.__dict__.get("_session")
        if outer is not None:              # nested: the outer session owns the cache
            yield
            return
        self.__dict__["_session"] = {}
        try:
            yield
        finally:
            self.__dict__.pop("_session", None)

    def forward(self, users: torch.Tensor | None = None, items: torch.Tensor | None = None):
        """Full-graph pass; the fused E* (Eq. 13) only for the requested rows (default: all).

        Returns (E*_u[users] (·, d), E*_i[items] (·, d), a :class:`GlobalParts` per modality).
        The fusion is row-wise, so fusing only the rows a batch reads is exact.
        """
        inputs, e_c, modal = self._noise_free_parts()
        # dependency matrices: Gumbel draws in the official order (iv, uv, it, ut)
        deps = []
        for x in inputs:
            deps.append([self.dependency(x.item_logits), self.dependency(x.user_logits)])
        if self.legacy_user_hyperedges:  # first published code: the text block overwrote the visual user matrix
            deps[0][1] = deps[1][1]
            deps[1][1] = inputs[1].user_logits
        p_drop = 1.0 - self.keep_rate
        parts = []
        item_c = e_c[self.n_users:]
        for h_item, h_user in deps:  # dropout masks in the official order (iv, uv, it, ut)
            h_item = F.dropout(h_item, p_drop, self.training)
            h_user = F.dropout(h_user, p_drop, self.training)
            g_user, g_item, z = self.hypergraph(h_item, h_user, item_c)
            parts.append(GlobalParts(h_user, h_item, z, g_user, g_item))

        def fuse(rows, nodes: slice, glob_parts: list[torch.Tensor]):
            """E_loc + α nrm(Σ_m G^m) (Eq. 13) for ``rows`` of the node range ``nodes``."""
            pick = (lambda t: t) if rows is None else (lambda t: t[rows])
            out = pick(e_c[nodes])
            for f in modal:
                out = out + F.normalize(pick(f[nodes]), dim=1, eps=_EPS_NORM)
            glob = pick(glob_parts[0])
            for g in glob_parts[1:]:
                glob = glob + pick(g)
            return out + self.alpha * F.normalize(glob, dim=1, eps=_EPS_NORM)

        return (fuse(users, slice(0, self.n_users), [p.users for p in parts]),
                fuse(items, slice(self.n_users, None), [p.items for p in parts]), parts)

    # ------------------------------------------------------------------ trainer hooks
    def hcl_loss(self, global_parts: list[GlobalParts], users, pos) -> torch.Tensor:
        """Σ over modality pairs (a < b) of ℓ_user + ℓ_item (Eq. 12; 0 with one modality)."""
        total = None
        for a, b in itertools.combinations(global_parts, 2):
            t = hcl_term(a.users, b.users, users, self.temperature, (b.user_deps, b.hyperedges)) + \
                hcl_term(a.items, b.items, pos, self.temperature, (b.item_deps, b.hyperedges))
            total = t if total is None else total + t
        if total is None:
            total = self.user_embedding.new_zeros(())
        return total

    def loss(self, users, pos, neg):
        u, items, global_parts = self.forward(users, torch.cat([pos, neg]))
        i, j = items[: len(pos)], items[len(pos):]
        bpr = bpr_logsigmoid((u * i).sum(1), (u * j).sum(1))
        return {"bpr": bpr,
                "hcl": self.cl_weight * self.hcl_loss(global_parts, users, pos),
                "reg": self.reg_weight * emb_loss(u, i, j)}

    @property
    def stochastic_inference(self) -> bool:
        """Inference draws Gumbel noise (the official behaviour) unless deterministic_inference."""
        return not self.deterministic_inference

    def representations(self):
        user_repr, item_repr, _ = self.forward()
        return user_repr, item_repr
