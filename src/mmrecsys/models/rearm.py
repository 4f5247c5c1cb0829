"""REARM: refined contrastive learning and homography relations.

Ma, Zeng, Wu, Xu, "Refining Contrastive Learning and Homography Relations for Multi-Modal
Recommendation", ACM MM 2025 (arXiv:2508.13745): homography relations (Sec. 4.2), the
meta-network (Sec. 4.4.2) and the orthogonal constraint (Sec. 4.4.3). Official code
``MrShouxingMa/REARM`` at 6502a00: ``model.py`` (``REARM.forward``, ``loss``,
``meta_extra_share``, ``MLP``), ``utils/helper.py`` (graph builders, ``propgt_info``,
``ssl_loss``, ``cal_diff_loss``), ``utils/data_loader.py`` and ``utils/parser.py``. Where paper
and code differ, the code's behaviour is the default: the paper leaves the attention form open,
applies the meta-network to items only and writes the orthogonal loss as a squared Frobenius
norm; the code attends over the 64 coordinates of an item, builds meta-networks for users and
items on a detached random compressor, and averages the orthogonal loss over the d² entries.

Notation: U users, I items, N = U + I, d = ``embedding_dim``, modalities m = 1..M in the order of
``data.features`` (MMRec data: image_feat = v, text_feat = t), R the binary (U, I) training
matrix, ℓ2(x) = x / max(‖x‖₂, 1e-12) row-wise, ρ ONE shared PReLU (slope init 0.25), LN ONE
shared LayerNorm(d), sg = stop-gradient.

Homographs (built once from TRAIN data and raw features, :func:`rearm_homographs`)::

    G^I = α_i Ĉ^I + (1 − α_i) (β_i S_k^{I,v} + (1 − β_i) S_k^{I,t}) / k_i
    G^U = α_u Ĉ^U + (1 − α_u) (β_u S_k^{U,v} + (1 − β_u) S_k^{U,t}) / k_u
    Â   = D^{-1/2} [[0, R], [Rᵀ, 0]] D^{-1/2}

Forward over all N nodes (``REARM.forward`` and ``meta_extra_share``)::

    X_m = V′_m W_im + b,  Y_m = P_m W_um + b       (V′, P trainable, init raw / user-mean features)
    [Ẽ_I ‖ H_1 ‖ … ‖ H_M] = ℓ2((G^I)^{L_ii} [E_I ‖ X_1 ‖ … ‖ X_M])   (last hop, ONE joint norm)
    [Ẽ_U ‖ Q_1 ‖ … ‖ Q_M] = ℓ2((G^U)^{L_uu} [E_U ‖ Y_1 ‖ … ‖ Y_M])
    A_m = ρ(LN(H_m + Att_s,m(q=H_m, c=H_m)))                      (items only)
    C_v = ρ(LN(A_v + Att_c,v(q=A_t, c=A_v))),  C_t = ρ(LN(A_t + Att_c,t(q=A_v, c=A_t)))
    B_m = ρ(Q_m)                                                  (users: no attention)
    [E ‖ F] = (1/(L+1)) Σ_{l=0..L} Â^l [[Ẽ_U ‖ B]; [Ẽ_I ‖ C]]       (ID and modal channels)
    K = sg(F Φᵀ + φ)                      (per node type; Φ random, never trained)
    Ω1 = ℓ2(g1(K)) → (n, d, r),  Ω2 = ℓ2(g2(K)) → (n, r, d),  g(x) = W₂ PReLU(W₁ x + b₁) + b₂
    M1 = softmax_d(Ω1 + mean_n Ω1),  M2 = softmax_r(Ω2 + mean_n Ω2)
    S_n = (E_nᵀ M1_n) M2_n
    O = [ρ(F_1) + E ‖ … ‖ ρ(F_M) + E ‖ ρ(S) + E],   ŷ(u, i) = ⟨O_u, O_{U+i}⟩

Att(q, c) reads each d-vector as d tokens of width 1 (one head, embed_dim 1, scale 1):
π_ab = softmax_b((w_q q_a + b_q)(w_k c_b + b_k)), dropout on π in training (p = 1 gives 0),
out_a = w_o Σ_b π_ab (w_v c_b + b_v) + b_o — torch MultiheadAttention(1, 1) on x.unsqueeze(-1).

Losses (``REARM.loss``, ``ssl_loss``, ``cal_diff_loss``), batch of B triples (u, i⁺, i⁻)::

    L_bpr  = −mean log σ(ŷ(u, i⁺) − ŷ(u, i⁻))
    nce(B) = −(1/|B|) Σ_{a∈B} log softmax_b(ℓ2(F_v)_a · ℓ2(F_t)_b / τ)_a     (B unique nodes)
    L_cl   = λ_cl (nce(uniq(i⁺ ∪ i⁻)) + nce(uniq(u)))
    ort(B′) = mean_{64×64} ((X̃_vᵀ X̃_t)²),  X̃ = centred X / (sg‖row‖ + 1e-6)
    L_diff = λ_ort (ort(i⁺) + ort(u))
    L = L_bpr + L_cl + L_diff;  L2 = AdamW decoupled weight decay (the code's ``reg_weight``
    is the trainer's ``weight_decay``).

More than two modalities (an extension; the code has v and t, the paper says it extends,
Sec. 4.1): cross-attention queries the next modality cyclically (C_m: q = A_{m+1 mod M},
c = A_m, which is the code for M = 2), the
InfoNCE and orthogonal terms sum over consecutive pairs (m, m+1), and the graph weight β goes
to the first modality with (1 − β) shared equally by the others. With one modality there is no
cross-attention and L_cl = L_diff = 0.

Exact reformulations: E⁰ and F⁰ are propagated as one (M+1)·d-wide matrix (propagation is
column-wise); homographs and Â are CSR operators with their transpose for the backward pass;
the representations of an evaluation pass are computed once (the code recomputes them per
8192-user chunk: identical in eval mode).

Declared deviations (statistical only): attention dropout keeps an entry with probability
round((1 − p)·2^15)/2^15 (within 1.6e-5 of 1 − p; masks come from 15-bit random words, not
torch.bernoulli); co-occurrence ties are broken by ascending index and the padding draws use
numpy's Generator(``graph_seed``) (the code's order is torch.topk's and its draws the global
numpy RNG, ``utils/helper.py`` ``creat_dict_graph`` and ``topk_sample``).

Compatibility options (off by default because they let held-out data influence training):
``user_popularity_heldout`` (the fallback user popularity of empty rows, case C of
:mod:`mmrecsys.graphs.cooccurrence`, counts valid and test
interactions, as the code does; never triggers on Baby/Sports/Clothing) and the trainer's
``neg_exclude_heldout`` (negatives avoid valid/test items, as the code does).
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, normalized_adjacency
from ..graphs.cooccurrence import (item_cooccurrence_graph, similarity_graph,
                                   user_cooccurrence_graph, user_interest_features, weighted_sum)
from .base import Recommender
from .layers import modality_weights, power, project_table, propagate

_EPS_NORM = 1e-12
BUILDER_VERSION = 1


# ----------------------------------------------------------------------------- homographs
def _array_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def rearm_homographs(data, *, user_k: int, item_k: int, uu_co_weight: float, ii_co_weight: float,
                     u_image_weight: float, i_image_weight: float, seed: int = 2025,
                     user_popularity: np.ndarray | None = None, user_interest: dict | None = None,
                     knn_chunk: int = 4096, cached=None):
    """REARM's homographs (G^U, G^I) as CSR (``utils/data_loader.py`` ``Load_dataset`` and
    ``model.py`` ``REARM.__init__`` of ``MrShouxingMa/REARM``)::

        G = α Ĉ + (1 − α) Σ_m w_m S_k^m / k,   w = (β, (1 − β)/(M − 1), …)

    from the co-occurrence and similarity graphs of :mod:`mmrecsys.graphs.cooccurrence`;
    directed, never symmetrised. Components with weight 0 are not built.

    Args:
        user_popularity: fallback ranking of users with no co-occurring user (default: their
            training interactions).
        user_interest: precomputed user interest vectors per modality (computed when missing).
        cached: ``cached(name, key, build)`` returns each component (e.g. a
            :class:`~mmrecsys.graphs.GraphCache`'s ``get_or_build``); default: build it.
    """
    fp_train = data.fingerprint(with_features=False)
    train = data.train
    mods = list(data.features)

    def get(name, key, build):
        key = {"data": fp_train, "version": BUILDER_VERSION, **key}
        return cached(name, key, build) if cached is not None else build()

    pop_key = "train" if user_popularity is None else _array_hash(np.asarray(user_popularity))
    wu = modality_weights(len(mods), u_image_weight)
    wi = modality_weights(len(mods), i_image_weight)

    cu = ci = None
    if uu_co_weight != 0:
        cu = get("rearm-user-cooc", {"k": user_k, "seed": seed, "popularity": pop_key},
                 lambda: user_cooccurrence_graph(train, user_k, seed, user_popularity))
    if ii_co_weight != 0:
        ci = get("rearm-item-cooc", {"k": item_k, "seed": seed},
                 lambda: item_cooccurrence_graph(train, item_k, seed))
    su, si = [], []
    for m, name in enumerate(mods):
        feat = data.features[name]
        fkey = {"modality": name, "features": _array_hash(feat)}
        if (1 - ii_co_weight) * wi[m] != 0:
            si.append(get(f"rearm-item-knn-{name}", {"k": item_k, **fkey},
                          lambda f=feat: similarity_graph(f, item_k, knn_chunk)))
        else:
            si.append(None)
        if (1 - uu_co_weight) * wu[m] != 0:
            def build_user(f=feat, name=name):
                xu = user_interest[name] if user_interest is not None else user_interest_features(train, f)
                return similarity_graph(xu, user_k, knn_chunk)
            su.append(get(f"rearm-user-knn-{name}", {"k": user_k, **fkey}, build_user))
        else:
            su.append(None)
    g_u = weighted_sum([(uu_co_weight, cu)] + [((1 - uu_co_weight) * w, s) for w, s in zip(wu, su)])
    g_i = weighted_sum([(ii_co_weight, ci)] + [((1 - ii_co_weight) * w, s) for w, s in zip(wi, si)])
    return g_u, g_i


def _random_words(shape, device, generator=None) -> torch.Tensor:
    """Uniform 15-bit integers in [0, 2^15) as int16 (4 cut from every int64 draw), from
    ``generator`` (default: the global generator of ``device``)."""
    n = math.prod(shape)
    n4 = -(-n // 4)
    words = torch.empty(n4, dtype=torch.int64, device=device).random_(generator=generator)
    return (words & 0x7FFF7FFF7FFF7FFF).view(torch.int16)[:n].view(shape)


def _keep_from_words(words: torch.Tensor, keep: float) -> torch.Tensor:
    """float32 0/1 mask: 1 where word < round(keep·2^15) (probability keep, to within 1.6e-5)."""
    return (float(round(keep * 32768)) - words.float()).clamp_(0.0, 1.0)


def dropout_keep_mask(shape, keep: float, device) -> torch.Tensor:
    """float32 0/1 mask, each entry 1 with probability ``keep`` (to within 1.6e-5).

    Built from random 15-bit words (about 3× faster than ``torch.bernoulli``; float masks
    multiply much faster than boolean ones on CPU).
    """
    if keep >= 1:
        return torch.ones(shape, device=device)
    return _keep_from_words(_random_words(shape, device), keep)


def _rng_state(device) -> torch.Tensor:
    """The state of the global generator of ``device`` (CPU or CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _replay_generator(state: torch.Tensor, device) -> torch.Generator:
    """A private generator that replays the global stream of ``device`` from ``state``."""
    gen = torch.Generator(device=device)
    gen.set_state(state)
    return gen


def _unnormalised_attention(q, k):
    """X_ab = exp(q_a k_b − max_b q_a k_b) and Z_a = Σ_b X_ab: softmax = X / Z (no (n,d,d) divide)."""
    mx = torch.where(q >= 0, q * k.amax(1, keepdim=True), q * k.amin(1, keepdim=True))
    x = (q[:, :, None] * k[:, None, :]).sub_(mx[:, :, None]).exp_()
    return x, x.sum(2)


class _ScalarAttentionCore(torch.autograd.Function):
    """o_a = Σ_b Dropout_p(softmax_b(q_a k_b))_ab v_b for every row, in row chunks.

    The (rows, d, d) attention maps live one chunk at a time (cache-resident); backward
    recomputes them and needs only matrix–vector contractions, with P the softmax,
    Pm = P ∘ mask / (1 − p) and s = g ∘ o:
    dq = g ∘ Pm (v ∘ k) − s ∘ P k,  dk = v ∘ Pmᵀ (g ∘ q) − Pᵀ (s ∘ q),  dv = Pmᵀ g.
    No dropout mask is kept between forward and backward: the forward pass records the state
    of the global generator, and the backward pass replays the same random words from it with
    a private generator (the global stream is not touched again). Contractions are broadcast
    products + sums, which beat batched 64×64 mat-vec products on CPU.
    """

    @staticmethod
    def forward(ctx, q, k, v, p, training, chunk):
        n = q.shape[0]
        drop = bool(training) and p > 0
        keep = 1.0 - p
        if drop and keep <= 0:                                 # p = 1: every map is zero
            ctx.save_for_backward(q)
            ctx.zero = True
            return torch.zeros_like(q)
        ctx.zero = False
        out = torch.empty_like(q)
        ctx.rng_state = _rng_state(q.device) if drop else None
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            x, z = _unnormalised_attention(q[s:e], k[s:e])
            if drop:
                x.mul_(_keep_from_words(_random_words(x.shape, q.device), keep))
                z = z * keep
            out[s:e] = (x * v[s:e, None, :]).sum(2) / z
        ctx.save_for_backward(q, k, v)
        ctx.drop, ctx.keep, ctx.chunk = drop, keep, chunk
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.zero:
            (q,) = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q), None, None, None
        q, k, v = ctx.saved_tensors
        g = g.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        gen = _replay_generator(ctx.rng_state, q.device) if ctx.drop else None
        for s in range(0, q.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, q.shape[0])
            qs, ks, vs, gs = q[s:e], k[s:e], v[s:e], g[s:e]
            x, z = _unnormalised_attention(qs, ks)
            if ctx.drop:
                xm = x * _keep_from_words(_random_words(x.shape, q.device, gen), ctx.keep)
                zm = z * ctx.keep
            else:
                xm, zm = x, z
            o = (xm * vs[:, None, :]).sum(2) / zm
            sv = gs * o
            pk = (x * ks[:, None, :]).sum(2) / z
            gz = gs / zm
            dq[s:e] = gs * (xm * (vs * ks)[:, None, :]).sum(2) / zm - sv * pk
            dk[s:e] = vs * (xm * (gz * qs)[:, :, None]).sum(1) \
                - (x * (sv * qs / z)[:, :, None]).sum(1)
            dv[s:e] = (xm * gz[:, :, None]).sum(1)
        return dq, dk, dv, None, None, None


class ScalarAttention(nn.Module):
    """One-head attention over the d coordinates of each row (token width 1), the code's
    ``nn.MultiheadAttention(1, 1)`` blocks ``self_i_attn*`` and ``mutual_i_attn*``.

    Equal to ``nn.MultiheadAttention(1, 1, dropout=p, batch_first=True)`` applied to
    ``q.unsqueeze(-1)``, ``c.unsqueeze(-1)``: 8 scalar parameters.

    Args:
        dropout: probability of dropping an entry of the attention map, training only.
            (default: ``0.0``)
        chunk_size: rows processed at a time (the (rows, d, d) attention map is the memory
            cost; for an even d the result, dropout draws included, does not depend on
            it); ``None``: 256 on a CPU (a 4 MB map,
            cache-sized), 8192 on a GPU (few large kernels). (default: ``None``)
    """

    def __init__(self, dropout: float = 0.0, chunk_size: int | None = None):
        super().__init__()
        self.chunk_size = chunk_size
        self.in_proj_weight = nn.Parameter(torch.empty(3, 1))
        self.in_proj_bias = nn.Parameter(torch.zeros(3))
        self.out_weight = nn.Parameter(torch.empty(1))
        self.out_bias = nn.Parameter(torch.zeros(1))
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj_weight)          # U(±√(6/4)) = U(±√1.5)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.uniform_(self.out_weight, -1.0, 1.0)           # Linear(1, 1): U(±1/√1)
        nn.init.zeros_(self.out_bias)

    def forward(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w, b = self.in_proj_weight[:, 0], self.in_proj_bias
        qq = w[0] * q + b[0]                                   # (n, d)
        kk = w[1] * c + b[1]
        vv = w[2] * c + b[2]
        out = _ScalarAttentionCore.apply(qq, kk, vv, float(self.dropout), self.training,
                                         self.rows_per_chunk(q.device))    # (n, d)
        return self.out_weight * out + self.out_bias

    def rows_per_chunk(self, device) -> int:
        """``chunk_size``, or the device's default (256 on CPU, 8192 on GPU)."""
        if self.chunk_size is not None:
            return int(self.chunk_size)
        return 256 if torch.device(device).type == "cpu" else 8192

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


class LowRankGenerator(nn.Module):
    """g(x) = ℓ2(W₂ PReLU(W₁ x + b₁) + b₂): d → d·r, own PReLU slope (init 0.25): the code's
    ``MLP`` (``model.py``), the generator of the meta-network (paper Sec. 4.4.2).

    Args:
        d: input width (the embedding width). No default.
        rank: r; the output has d·r entries. No default.
    """

    def __init__(self, d: int, rank: int):
        super().__init__()
        self.lin1 = nn.Linear(d, d * rank)
        self.act = nn.PReLU(1, 0.25)
        self.lin2 = nn.Linear(d * rank, d * rank)

    def reset_parameters(self):
        """Re-draw both layers (torch's Linear default) and reset the slope, in build order."""
        self.lin1.reset_parameters()
        self.act.reset_parameters()
        self.lin2.reset_parameters()

    def forward(self, x):
        return F.normalize(self.lin2(self.act(self.lin1(x))), dim=1, eps=_EPS_NORM)


def meta_transform(e: torch.Tensor, omega1: torch.Tensor, omega2: torch.Tensor) -> torch.Tensor:
    """S_n = (E_nᵀ M1_n) M2_n with M1 = softmax_d(Ω1 + mean Ω1), M2 = softmax_r(Ω2 + mean Ω2).

    e: (n, d); omega1: (n, d, r); omega2: (n, r, d). Population means over the n rows.
    """
    m1 = torch.softmax(omega1 + omega1.mean(0, keepdim=True), dim=1)
    m2 = torch.softmax(omega2 + omega2.mean(0, keepdim=True), dim=1)
    low = torch.bmm(e.unsqueeze(1), m1)                       # (n, 1, r)
    return torch.bmm(low, m2).squeeze(1)                      # (n, d)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """−mean_a log softmax_b(ℓ2(z1)_a·ℓ2(z2)_b / τ)_a (one direction, positives in denominators)."""
    a = F.normalize(z1, dim=1, eps=_EPS_NORM)
    b = F.normalize(z2, dim=1, eps=_EPS_NORM)
    logits = a @ b.T / tau
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def orthogonal_loss(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """mean over the d×d entries of (X̃1ᵀ X̃2)², X̃ = centred X / (sg‖row‖₂ + 1e-6): the code's
    ``cal_diff_loss`` (paper Sec. 4.4.3 writes a squared Frobenius norm, i.e. d² times this)."""
    x1 = x1 - x1.mean(0, keepdim=True)
    x2 = x2 - x2.mean(0, keepdim=True)
    x1 = x1 / (x1.norm(dim=1, keepdim=True).detach() + 1e-6)
    x2 = x2 / (x2.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (x1.T @ x2).pow(2).mean()


class REARM(Recommender):
    """REARM (refined contrastive learning + homography relations), code-faithful.

    Defaults are ``utils/parser.py``'s; the presets are the README's command lines for Baby,
    Sports and Clothing. The code's ``reg_weight`` (5e-4) is AdamW's decoupled weight decay,
    i.e. the trainer's ``weight_decay`` (in ``train_defaults`` and the presets).

    Args:
        embedding_dim: d, width of the ID embeddings and of the projected modal features.
            (default: ``64``)
        n_layers: L, LightGCN layers on the user–item graph, mean of layers 0..L (the code's
            ``num_layer``). (default: ``4``)
        rank: r, rank of the meta-network's low-rank transformations. (default: ``3``)
        s_drop: dropout on the self-attention maps, training only (1.0 zeroes them).
            (default: ``0.4``)
        m_drop: dropout on the cross-attention maps, training only. (default: ``0.6``)
        u_mm_image_weight: β_u, weight of the image kNN graph in the user similarity mix.
            (default: ``0.2``)
        i_mm_image_weight: β_i, the same for items (0 removes the image item graph).
            (default: ``0.0``)
        uu_co_weight: α_u, weight of the user co-occurrence graph in G^U. (default: ``0.4``)
        ii_co_weight: α_i, weight of the item co-occurrence graph in G^I. (default: ``0.2``)
        user_knn_k: k_u, neighbours per user in the co-occurrence and kNN graphs.
            (default: ``40``)
        item_knn_k: k_i, neighbours per item. (default: ``10``)
        n_uu_layers: L_uu, hops on G^U, last hop only (0: none). (default: ``1``)
        n_ii_layers: L_ii, hops on G^I. (default: ``1``)
        temperature: τ of the inter-modal InfoNCE (the code's ``cl_tmp``). (default: ``0.6``)
        cl_loss_weight: λ_cl, weight of the InfoNCE terms. (default: ``5e-06``)
        diff_loss_weight: λ_ort, weight of the orthogonal constraint. (default: ``0.0001``)
        graph_seed: seed of the co-occurrence padding draws (case B of
            :mod:`mmrecsys.graphs.cooccurrence`). (default: ``2025``)
        trainable_compressor: ablation: no stop-gradient on the compressor K of the
            meta-network, so Φ is trained (the code detaches it). (default: ``False``)
        user_popularity_heldout: compatibility quirk: the fallback user popularity of users
            without co-occurring users (case C) counts valid and test interactions, as the
            official code does. (default: ``False``)
    """

    name = "rearm"
    aliases = {"num_layer": "n_layers", "cl_tmp": "temperature"}
    requires_features = True
    train_defaults = {
        "optimizer": "adamw", "lr": 5e-5, "weight_decay": 5e-4, "batch_size": 2048,
        "epochs": 2000, "seed": 2025, "patience": 20, "eval_step": 1,
        "lr_scheduler": [1.0, 50], "valid_metrics": ["recall@20"], "topk": [10, 20],
        "sampler": "interactions", "negatives_from": "all_items", "neg_exclude_heldout": False,
        "eval_batch_size": 8192,
    }
    presets = {
        "baby": {"n_layers": 4, "weight_decay": 5e-4, "rank": 3, "s_drop": 0.4, "m_drop": 0.6,
                 "u_mm_image_weight": 0.2, "i_mm_image_weight": 0.0, "uu_co_weight": 0.4,
                 "ii_co_weight": 0.2, "user_knn_k": 40, "item_knn_k": 10, "n_uu_layers": 1,
                 "n_ii_layers": 1, "temperature": 0.6, "cl_loss_weight": 5e-6,
                 "diff_loss_weight": 5e-5},
        "sports": {"n_layers": 5, "weight_decay": 0.05, "rank": 7, "s_drop": 1.0, "m_drop": 0.2,
                   "u_mm_image_weight": 0.0, "i_mm_image_weight": 0.2, "uu_co_weight": 0.9,
                   "ii_co_weight": 0.2, "user_knn_k": 25, "item_knn_k": 5, "n_uu_layers": 2,
                   "n_ii_layers": 2, "temperature": 1.5, "cl_loss_weight": 1e-3,
                   "diff_loss_weight": 5e-4},
        "clothing": {"n_layers": 4, "weight_decay": 1e-5, "rank": 3, "s_drop": 0.4,
                     "m_drop": 0.1, "u_mm_image_weight": 0.1, "i_mm_image_weight": 0.1,
                     "uu_co_weight": 0.7, "ii_co_weight": 0.1, "user_knn_k": 45,
                     "item_knn_k": 10, "n_uu_layers": 1, "n_ii_layers": 1, "temperature": 0.03,
                     "cl_loss_weight": 1e-6, "diff_loss_weight": 1e-5},
    }
    # the official README/parser state no grid: the values of the presets across datasets
    search_space = {
        "num_layer": [4, 5], "weight_decay": [1e-5, 5e-4, 0.05], "rank": [3, 7],
        "s_drop": [0.4, 1.0], "m_drop": [0.1, 0.2, 0.6], "u_mm_image_weight": [0.0, 0.1, 0.2],
        "i_mm_image_weight": [0.0, 0.1, 0.2], "uu_co_weight": [0.4, 0.7, 0.9],
        "ii_co_weight": [0.1, 0.2], "user_knn_k": [25, 40, 45], "item_knn_k": [5, 10],
        "n_uu_layers": [1, 2], "n_ii_layers": [1, 2], "cl_tmp": [0.03, 0.6, 1.5],
        "cl_loss_weight": [1e-6, 5e-6, 1e-3], "diff_loss_weight": [1e-5, 5e-5, 5e-4],
    }

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 4,
                 rank: int = 3, s_drop: float = 0.4, m_drop: float = 0.6,
                 u_mm_image_weight: float = 0.2, i_mm_image_weight: float = 0.0,
                 uu_co_weight: float = 0.4, ii_co_weight: float = 0.2, user_knn_k: int = 40,
                 item_knn_k: int = 10, n_uu_layers: int = 1, n_ii_layers: int = 1,
                 temperature: float = 0.6, cl_loss_weight: float = 5e-6, diff_loss_weight: float = 1e-4,
                 graph_seed: int = 2025, trainable_compressor: bool = False,
                 user_popularity_heldout: bool = False):
        super().__init__(data, cache)
        if rank < 1:
            raise ValueError(f"rank={rank}: the low-rank transformations need rank ≥ 1")
        if not (0 <= s_drop <= 1 and 0 <= m_drop <= 1):
            raise ValueError("s_drop and m_drop are dropout probabilities in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.rank = rank
        self.s_drop = s_drop
        self.m_drop = m_drop
        self.u_mm_image_weight = u_mm_image_weight
        self.i_mm_image_weight = i_mm_image_weight
        self.uu_co_weight = uu_co_weight
        self.ii_co_weight = ii_co_weight
        self.user_knn_k = user_knn_k
        self.item_knn_k = item_knn_k
        self.n_uu_layers = n_uu_layers
        self.n_ii_layers = n_ii_layers
        self.temperature = temperature
        self.cl_loss_weight = cl_loss_weight
        self.diff_loss_weight = diff_loss_weight
        self.graph_seed = graph_seed
        self.trainable_compressor = trainable_compressor
        self.user_popularity_heldout = user_popularity_heldout
        d = embedding_dim
        U, I = self.n_users, self.n_items
        self.modalities = list(data.features)
        M = self.n_modalities = len(self.modalities)

        # -- graphs ------------------------------------------------------------------
        user_interest = {m: user_interest_features(data.train, x) for m, x in data.features.items()}
        pop = None
        if user_popularity_heldout:
            pop = (np.diff(data.train.indptr) + np.diff(data.valid.indptr)
                   + np.diff(data.test.indptr))
        g_u, g_i = rearm_homographs(
            data, user_k=user_knn_k, item_k=item_knn_k, uu_co_weight=uu_co_weight,
            ii_co_weight=ii_co_weight, u_image_weight=u_mm_image_weight,
            i_image_weight=i_mm_image_weight, seed=graph_seed, user_popularity=pop,
            user_interest=user_interest, cached=functools.partial(self.cached_graph, cache))
        self.user_graph = SparseGraph(g_u, symmetric=False)
        self.item_graph = SparseGraph(g_i, symmetric=False)
        self.norm_adj = SparseGraph(normalized_adjacency(data.train), symmetric=True)

        # -- parameters ----------------------------------------------------------------
        self.user_embedding = nn.Parameter(torch.empty(U, d))
        self.item_embedding = nn.Parameter(torch.empty(I, d))
        self.item_raw = nn.ParameterList()
        self.user_raw = nn.ParameterList()
        self.item_proj = nn.ModuleList()
        self.user_proj = nn.ModuleList()
        for m in self.modalities:
            x = np.asarray(data.features[m], dtype=np.float32)
            self.item_raw.append(nn.Parameter(torch.from_numpy(x.copy())))
            self.user_raw.append(nn.Parameter(torch.from_numpy(user_interest[m])))
            self.item_proj.append(nn.Linear(x.shape[1], d))
            self.user_proj.append(nn.Linear(x.shape[1], d))
        self.self_att = nn.ModuleList(ScalarAttention(s_drop) for _ in range(M))
        self.cross_att = nn.ModuleList(ScalarAttention(m_drop) for _ in range(M if M > 1 else 0))
        self.layer_norm = nn.LayerNorm(d)
        self.act = nn.PReLU(1, 0.25)
        self.user_compress = nn.Linear(M * d, d)
        self.item_compress = nn.Linear(M * d, d)
        self.user_gen1, self.user_gen2 = LowRankGenerator(d, rank), LowRankGenerator(d, rank)
        self.item_gen1, self.item_gen2 = LowRankGenerator(d, rank), LowRankGenerator(d, rank)
        self._init_embeddings()   # the submodules above initialised themselves when built

    def _init_embeddings(self):
        """The code's ``_reset_parameters``: N(0, 0.1²) ID embeddings, xavier-normal projection
        weights (their biases keep torch's Linear default)."""
        nn.init.normal_(self.user_embedding, 0.0, 0.1)
        nn.init.normal_(self.item_embedding, 0.0, 0.1)
        for lin in list(self.item_proj) + list(self.user_proj):
            nn.init.xavier_normal_(lin.weight)

    def reset_parameters(self, data=None):
        """Re-initialise every parameter, drawing in the constructor's order: under the same
        torch seed the result equals a freshly built model. With ``data`` (the dataset the model
        was built on) the trainable feature tables return to the raw item features and the
        users' mean item features; without it they keep their values."""
        for item_proj, user_proj in zip(self.item_proj, self.user_proj):
            item_proj.reset_parameters()
            user_proj.reset_parameters()
        for att in list(self.self_att) + list(self.cross_att):
            att.reset_parameters()
        self.layer_norm.reset_parameters()
        self.act.reset_parameters()
        self.user_compress.reset_parameters()
        self.item_compress.reset_parameters()
        for gen in (self.user_gen1, self.user_gen2, self.item_gen1, self.item_gen2):
            gen.reset_parameters()
        self._init_embeddings()
        if data is not None:
            with torch.no_grad():
                for j, m in enumerate(self.modalities):
                    x = np.asarray(data.features[m], np.float32)
                    self.item_raw[j].copy_(torch.from_numpy(x))
                    self.user_raw[j].copy_(torch.from_numpy(user_interest_features(data.train, x)))

    # ------------------------------------------------------------------ forward
    def _homograph(self, graph, emb, feats, n_layers):
        z = power(graph, torch.cat([emb] + feats, dim=1), n_layers)   # (n, (M+1) d)
        z = F.normalize(z, dim=1, eps=_EPS_NORM)               # one joint norm per row
        return z.split(self.embedding_dim, dim=1)

    def forward(self):
        """(O (N, (M+1)d), F (N, M d), E (N, d)) for all nodes."""
        d, M, U = self.embedding_dim, self.n_modalities, self.n_users
        xs = [project_table(raw, proj) for proj, raw in zip(self.item_proj, self.item_raw)]  # (I, d)
        ys = [project_table(raw, proj) for proj, raw in zip(self.user_proj, self.user_raw)]  # (U, d)
        e_i, *h = self._homograph(self.item_graph, self.item_embedding, xs, self.n_ii_layers)
        e_u, *q = self._homograph(self.user_graph, self.user_embedding, ys, self.n_uu_layers)
        rho, ln = self.act, self.layer_norm
        a = [rho(ln(h[m] + self.self_att[m](h[m], h[m]))) for m in range(M)]
        if M > 1:
            c = [rho(ln(a[m] + self.cross_att[m](a[(m + 1) % M], a[m]))) for m in range(M)]
        else:
            c = a
        b = [rho(x) for x in q]
        x0 = torch.cat([torch.cat([e_u] + b, 1), torch.cat([e_i] + c, 1)], 0)   # (N, (M+1) d)
        out = propagate(self.norm_adj, x0, self.n_layers)
        e, f = out[:, :d], out[:, d:]
        s = torch.cat([self._meta(f[:U], e[:U], self.user_compress, self.user_gen1, self.user_gen2),
                       self._meta(f[U:], e[U:], self.item_compress, self.item_gen1, self.item_gen2)], 0)
        o = torch.cat([rho(f[:, m * d:(m + 1) * d]) + e for m in range(M)] + [rho(s) + e], 1)
        return o, f, e

    def _meta(self, f, e, compress, gen1, gen2):
        k = compress(f if self.trainable_compressor else f.detach())
        if not self.trainable_compressor:
            k = k.detach()
        n, d, r = e.shape[0], self.embedding_dim, self.rank
        return meta_transform(e, gen1(k).view(n, d, r), gen2(k).view(n, r, d))

    # ------------------------------------------------------------------ trainer hooks
    def loss(self, users, pos, neg):
        o, f, _ = self.forward()
        U, d, M = self.n_users, self.embedding_dim, self.n_modalities
        ou, op, on = o[users], o[U + pos], o[U + neg]
        bpr = -F.logsigmoid((ou * op).sum(1) - (ou * on).sum(1)).mean()
        out = {"bpr": bpr}
        if M > 1:
            items = U + torch.unique(torch.cat([pos, neg]))
            uniq_users = torch.unique(users)
            cl = f.new_zeros(())
            diff = f.new_zeros(())
            for m in range(M - 1):
                fa, fb = f[:, m * d:(m + 1) * d], f[:, (m + 1) * d:(m + 2) * d]
                cl = cl + info_nce(fa[items], fb[items], self.temperature) \
                    + info_nce(fa[uniq_users], fb[uniq_users], self.temperature)
                diff = diff + orthogonal_loss(fa[U + pos], fb[U + pos]) \
                    + orthogonal_loss(fa[users], fb[users])
            out["cl"] = self.cl_loss_weight * cl
            out["diff"] = self.diff_loss_weight * diff
        return out

    def representations(self):
        o, _, _ = self.forward()
        return o[: self.n_users], o[self.n_users:]
