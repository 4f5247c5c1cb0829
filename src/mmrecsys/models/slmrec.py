"""SLMRec: Tao, Liu, Xia, Wang, Yang & He, "Self-supervised Learning for Multimedia
Recommendation", IEEE Transactions on Multimedia 2022 (Sec. III: graph encoders per modality,
multi-modal fusion, self-supervised tasks FD, FM and FAC), as in MMRec (``enoche/MMRec``
``src/models/slmrec.py``, grid ``src/configs/model/SLMRec.yaml``). Where paper and code
differ, the code is followed.

Notation: U users, I items, N = U + I nodes (users first), d = ``embedding_dim``, L =
``n_layers``, M modalities with raw features X_m (I × f_m), E_U (U × d) and E_I (I × d) the ID
embeddings, Â the fixed propagation matrix of the training interactions (``adj_type``; the
yaml's ``'pre'``: D^{-1/2} A D^{-1/2} with D = rowsum(A) + 1e-8, no self loops), nrm = row-wise
L2 normalisation, CE_τ(a, b) = mean_b −log softmax_b'(a_b · b_b' / τ) the in-batch cross
entropy with the diagonal as labels (the code's ``CrossEntropyLoss`` over ``arange`` labels).

Encoders. Component 0 is the ID component (item table E_I), component m = 1..M the modality
m (item table X̃_m = nrm(X_m) W_mᵀ + b_m). Each component runs LightGCN's mean propagation
with the *shared* user table:

.. math::
    H_c = \\frac1{L+1} \\sum_{l=0}^{L} \\hat A^l \\, [E_U;\\ T_c],\\qquad
    T_0 = E_I,\\ T_m = \\tilde X_m

Fusion (``mm_fusion_mode='concat'``):

.. math::
    z_u = W^U [H_0[u]; H_1[u]; \\dots; H_M[u]] + b^U,\\qquad
    z_i = W^I [H_0[i]; H_1[i]; \\dots; H_M[i]] + b^I

Loss, for a batch of (u, i) pairs (the sampled negative is not used):

.. math::
    \\mathcal L = \\mathrm{CE}_{\\tau}(\\mathrm{nrm}\\, z_{\\mathbf u},\\ \\mathrm{nrm}\\, z_{\\mathbf i})
        + \\alpha\\, \\mathcal L_{ssl}

with τ = ``temperature`` (the code's ``temp``), α = ``ssl_alpha``. The self-supervised task
(``ssl_task``):

* ``'FAC'`` (fine and coarse, the yaml's): a chain of linear heads over the batch's positive
  items' ID representation h = H_0[i]: x_1 = g_1(h) is contrasted with p_1(H_1[i]) (the code's
  ``g_i_iv``, ``g_v_iv``), then x_2 = g_2(x_1) (``g_iv_iva``), x_3 = g_3(x_2)
  (``g_iva_ivat``, width d/2) contrasted with p_M(H_M[i]) (``g_t_ivat``):
  L_ssl = CE_τs(x_1, p_1) + CE_τs(x_3, p_M), on *raw* dot products (no normalisation),
  τs = ``ssl_temp``.
* ``'FD'`` (feature dropout): two views of every component, dropout (rate ``dropout_rate``)
  after every propagation layer, fused as above; L_ssl = CE_τs(nrm z'_u, nrm z''_u) +
  CE_τs(nrm z'_i, nrm z''_i) over the batch's users and positive items.
* ``'FM'`` (feature masking): two distinct components are drawn; view 1 zeroes the item table
  of the first, view 2 that of the second, then as FD (without dropout). ``'FD+FM'``: masking
  and dropout.

Evaluation ranks users against all items with sigmoid(z_uᵀ z_i) (the code's
``full_sort_predict``) using the representations of the last training forward.

Quirks of the code reproduced by default (each has a switch where one is useful):

* Stale evaluation: ``full_sort_predict`` ranks with ``all_users``/``all_items``, computed by
  the *last training forward* (before that batch's optimiser step). Reproduced by a persistent
  buffer ``result`` written at every training loss (saved in the state dict, so ``best.pt``
  ranks with what was ranked); ``reuse_training_result=False`` ranks with a fresh forward.
  The code crashes when it evaluates before any training; here a fresh forward is used then.
* The scores are sigmoid(z_uᵀ z_i) (``sigmoid_scores=True``): float32 sigmoids of large scores
  round to 1 and tie, which can change the ranking; ``sigmoid_scores=False`` ranks the raw
  inner products.
* The FAC heads are applied to unnormalised representations (raw dot products / τs), and the
  audio link ``g_iv_iva`` stays in the chain although the audio loss is commented out (so the
  text contrast goes through three heads). The audio head ``g_a_iva`` is drawn at
  initialisation (consuming the random stream) but never used; here it is drawn and dropped.
* The yaml's ``reg`` (a grid axis) is read by nothing: ``reg_weight`` is accepted (alias
  ``reg``) and has no effect; the only L2 is the optimiser's ``weight_decay: 1e-4`` (Adam's
  coupled decay, :attr:`train_defaults`).
* Initialisation, in the code's order (the same random stream): E_U, E_I torch's
  ``Embedding`` normal, then both ``xavier_uniform_``; each modality's projection torch's
  Linear default then ``xavier_uniform_`` on the weight; the item then the user fusion layer
  (both created, then both weights ``xavier_uniform_``); the FAC links and heads (all six
  created in the code's order g_i_iv, g_v_iv, g_iv_iva, g_a_iva, g_iva_ivat, g_t_ivat, then
  all weights ``xavier_uniform_``); biases torch's default. The features are L2-normalised
  once (fixed, not trained).
* The negatives are sampled by the trainer but unused (the main loss is in-batch).

Not reproduced: the code's ``'FD'``, ``'FM'`` and ``'FD+FM'`` read ``config["data.input
.dataset"]`` (absent in MMRec, so not ``'kwai'``) and then an audio table that MMRec never
builds, which raises; and its ``mm_fusion_mode='mean'`` feeds a d-wide mean to a (M+1)·d-wide
layer, which raises. Here they run as the paper describes, on the components that exist: FD and
FM over the ID component and every modality, FM drawing two distinct components of M + 1 (the
code draws from 4, (v, a, t, id)); ``'mean'`` averages the components and fuses with d × d
layers. ``init='normal'`` (which fails in the code on a misspelled table) is not offered.

Choices: the FM draws come from torch's global RNG (the code's ``np.random.randint``, the second
redrawn until it differs from the first), component c ∈ {0 (ID), 1..M} drawn uniformly; the dropout masks come from torch's RNG in the code's
order (per component, per layer, view 1 then view 2).

Generalisation to any number of modalities: components in ``data.features`` order (default: by
file name, so ``image_feat`` then ``text_feat``, the code's v then t). The FAC chain's first
modality plays v, the last plays t (width d/2); every modality in between plays the audio
slot (its own link d → d and head d → d, contrasted at its level, as the code's commented audio
loss); with exactly two modalities the audio slot is empty but its link is kept (the code).
With one modality (the code's ``kwai`` branch) only the first contrast is computed, and only
its two heads are drawn (the code draws all six, four unused).

Sparse and bounded: Â is a fixed sparse operator (built once, cached); no N × N matrix is
formed. All components propagate together as one N × (M+1)·d product per layer (FAC/no
dropout); the contrastive terms are B × B in the batch.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, bipartite_adjacency
from ..graphs.adjacency import inv_power
from .base import Recommender
from .layers import info_nce, propagate

BUILDER_VERSION = 1
SSL_TASKS = ("FAC", "FD", "FM", "FD+FM")
ADJ_TYPES = ("pre", "plain", "norm", "gcmc", "mean")

_TRAIN = {"epochs": 1000, "batch_size": 2048, "weight_decay": 1e-4, "optimizer": "adam",
          "eval_step": 1, "patience": 20, "seed": 999, "sampler": "interactions",
          "negatives_from": "train_items", "valid_metrics": ["recall@20"], "lr": 1e-3,
          "lr_scheduler": [1.0, 50]}


def slmrec_adjacency(train: sp.spmatrix, adj_type: str = "pre") -> sp.csr_matrix:
    """The code's ``create_adj_mat`` on the binarised (U + I) bipartite graph A:
    ``'pre'`` D^{-1/2} A D^{-1/2} (D = rowsum + 1e-8), ``'plain'`` A, ``'norm'`` D^{-1}(A + I),
    ``'gcmc'`` D^{-1} A, ``'mean'`` D^{-1} A + I (D^{-1}: 0 on empty rows). float32 CSR."""
    a = bipartite_adjacency(train).astype(np.float32)
    eye = sp.identity(a.shape[0], dtype=np.float32, format="csr")
    if adj_type == "pre":
        d = sp.diags(inv_power(np.asarray(a.sum(1)).ravel(), 0.5, 1e-8).astype(np.float32))
        out = d @ a @ d
    elif adj_type == "plain":
        out = a
    elif adj_type == "norm":
        b = a + eye
        out = sp.diags(inv_power(np.asarray(b.sum(1)).ravel(), 1.0).astype(np.float32)) @ b
    elif adj_type in ("gcmc", "mean"):
        out = sp.diags(inv_power(np.asarray(a.sum(1)).ravel(), 1.0).astype(np.float32)) @ a
        if adj_type == "mean":
            out = out + eye
    else:
        raise ValueError(f"adj_type={adj_type!r}: one of {ADJ_TYPES}")
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


class SLMRec(Recommender):
    """SLMRec as in MMRec: LightGCN encoders of the ID embeddings and of every modality (shared
    user table), a linear fusion, an in-batch InfoNCE main loss and a self-supervised task.

    Defaults: MMRec's ``SLMRec.yaml`` (``recdim: 64``, ``layer_num: 3``, ``ssl_task: 'FAC'``,
    ``dropout_rate: 0.3``, ``mm_fusion_mode: 'concat'``, ``temp: 0.2``, ``adj_type: 'pre'``,
    ``weight_decay: 1e-4``). Its grid is ``learning_rate`` × ``ssl_temp`` × ``ssl_alpha`` ×
    ``reg`` (:attr:`search_space`). Neither MMRec nor the paper publishes the chosen grid
    values, so: ``lr`` 1e-3 (MMRec's ``overall.yaml`` default, a grid value), ``ssl_temp`` 0.2
    (the grid value equal to the main loss's ``temp``), ``ssl_alpha`` 0.1 (the grid's middle
    value), ``reg_weight`` 1e-4 (the grid's first; it has no effect, as in the code).

    Args:
        embedding_dim: d, width of the ID embeddings, the modality projections and the fused
            representations (the code's ``recdim``). (default: ``64``)
        n_layers: L, propagation layers of every component (the code's ``layer_num``).
            (default: ``3``)
        ssl_task: self-supervised task: ``'FAC'`` (fine and coarse), ``'FD'`` (feature
            dropout), ``'FM'`` (feature masking) or ``'FD+FM'``. (default: ``'FAC'``)
        ssl_alpha: α, weight of the self-supervised loss (grid {0.01, 0.05, 0.1, 0.5, 1.0}).
            (default: ``0.1``)
        ssl_temp: τs, temperature of the self-supervised loss (grid {0.1, 0.2, 0.5, 1.0}).
            (default: ``0.2``)
        temperature: τ, temperature of the main in-batch InfoNCE (the code's ``temp``).
            (default: ``0.2``)
        dropout_rate: dropout after every propagation layer in FD and FD+FM.
            (default: ``0.3``)
        mm_fusion_mode: ``'concat'`` the components before the fusion layers (the yaml's) or
            ``'mean'`` them (d × d fusion layers; raises in the code). (default: ``'concat'``)
        adj_type: propagation matrix: ``'pre'`` (symmetric normalisation, the yaml's),
            ``'plain'``, ``'norm'``, ``'gcmc'`` or ``'mean'`` (the code's ``create_adj_mat``).
            (default: ``'pre'``)
        reg_weight: the yaml's ``reg``, a grid axis the code never reads: no effect (grid
            {1e-4, 1e-3, 1e-2, 0.1}). (default: ``0.0001``)
        sigmoid_scores: True ranks by sigmoid(z_uᵀ z_i), as the code (float32 ties where
            the sigmoid saturates); False by the inner product. (default: ``True``)
        reuse_training_result: True, as the code: evaluation ranks with the representations
            of the last training forward (the persistent ``result`` buffer; a fresh forward
            before any training); False computes fresh ones from the current weights.
            (default: ``True``)
    """

    name = "slmrec"
    aliases = {"recdim": "embedding_dim", "embedding_size": "embedding_dim",
               "layer_num": "n_layers", "temp": "temperature", "reg": "reg_weight"}
    requires_features = True
    train_defaults = dict(_TRAIN)
    search_space = {"lr": [1e-4, 1e-3, 1e-2, 0.1], "ssl_temp": [0.1, 0.2, 0.5, 1.0],
                    "ssl_alpha": [0.01, 0.05, 0.1, 0.5, 1.0],
                    "reg_weight": [1e-4, 1e-3, 1e-2, 0.1]}
    notes = ("As MMRec's code: the sampled negatives are unused (in-batch InfoNCE), the yaml's "
             "reg has no effect (weight_decay 1e-4 is the only L2), scores are sigmoids, and "
             "evaluation ranks with the representations of the last training batch "
             "(reuse_training_result=false recomputes them). FD/FM/FD+FM, which raise in "
             "MMRec, run as the paper describes.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 3,
                 ssl_task: str = "FAC", ssl_alpha: float = 0.1, ssl_temp: float = 0.2,
                 temperature: float = 0.2, dropout_rate: float = 0.3,
                 mm_fusion_mode: str = "concat", adj_type: str = "pre",
                 reg_weight: float = 1e-4, sigmoid_scores: bool = True,
                 reuse_training_result: bool = True):
        super().__init__(data, cache)
        if int(embedding_dim) != embedding_dim or embedding_dim < 2:
            raise ValueError(f"embedding_dim={embedding_dim}: must be an integer ≥ 2")
        if int(n_layers) != n_layers or n_layers < 0:
            raise ValueError(f"n_layers={n_layers}: must be an integer ≥ 0")
        if ssl_task not in SSL_TASKS:
            raise ValueError(f"ssl_task={ssl_task!r}: one of {SSL_TASKS}")
        if mm_fusion_mode not in ("concat", "mean"):
            raise ValueError(f"mm_fusion_mode={mm_fusion_mode!r}: 'concat' or 'mean'")
        if adj_type not in ADJ_TYPES:
            raise ValueError(f"adj_type={adj_type!r}: one of {ADJ_TYPES}")
        for key, v in (("ssl_temp", ssl_temp), ("temperature", temperature)):
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{key}={v}: must be a finite value > 0")
        if not (ssl_alpha >= 0 and math.isfinite(ssl_alpha)):
            raise ValueError(f"ssl_alpha={ssl_alpha}: must be a finite value ≥ 0")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate}: must be in [0, 1)")
        if not (reg_weight >= 0 and math.isfinite(reg_weight)):
            raise ValueError(f"reg_weight={reg_weight}: must be a finite value ≥ 0")
        self.embedding_dim = d = int(embedding_dim)
        self.n_layers = int(n_layers)
        self.ssl_task = ssl_task
        self.ssl_alpha = float(ssl_alpha)
        self.ssl_temp = float(ssl_temp)
        self.temperature = float(temperature)
        self.dropout_rate = float(dropout_rate)
        self.mm_fusion_mode = mm_fusion_mode
        self.adj_type = adj_type
        self.reg_weight = float(reg_weight)
        self.sigmoid_scores = bool(sigmoid_scores)
        self.reuse_training_result = bool(reuse_training_result)
        self.modalities = list(data.features)
        n_mod = len(self.modalities)

        g = self.cached_graph(cache, f"slmrec-adj-{adj_type}",
                              {"data": data.fingerprint(with_features=False),
                               "adj_type": adj_type, "version": BUILDER_VERSION},
                              lambda: slmrec_adjacency(data.train, adj_type))
        self.adj = SparseGraph(g, symmetric=adj_type in ("pre", "plain"))
        self._keys = self.register_features(data, trainable=False)
        with torch.no_grad():                       # the code's F.normalize of v_feat, t_feat
            for k in self._keys:
                t = self.feature_table(k)
                t.copy_(F.normalize(t, dim=1))

        skip = nn.utils.skip_init                   # drawn in reset_parameters, the code's order
        self.embedding_user = skip(nn.Embedding, self.n_users, d)
        self.embedding_item = skip(nn.Embedding, self.n_items, d)
        self.dense = nn.ModuleList(skip(nn.Linear, x.shape[1], d) for x in data.features.values())
        width = d * (n_mod + 1) if mm_fusion_mode == "concat" else d
        self.item_fusion = skip(nn.Linear, width, d)
        self.user_fusion = skip(nn.Linear, width, d)
        # FAC chain: fac_links[k] maps the chain's level k to k + 1; the head of level k + 1
        # projects component fac_components[k] (None: the empty audio slot, no head, no loss)
        self.fac_links = nn.ModuleList()
        self.fac_heads = nn.ModuleList()
        self.fac_components: list[int | None] = []
        self._fac_layout: list[tuple[int, int | None]] = []
        if ssl_task == "FAC":
            layout = [(d, 1)]                                   # v: g_i_iv, g_v_iv
            if n_mod >= 2:
                middle = list(range(2, n_mod)) or [None]        # audio slot(s); empty with 2
                layout += [(d, m) for m in middle]              # g_iv_iva, g_a_iva
                layout += [(d // 2, n_mod)]                     # g_iva_ivat, g_t_ivat
            self._fac_layout = layout
            for width_out, comp in layout:
                self.fac_links.append(skip(nn.Linear, d, width_out))
                self.fac_components.append(comp)
                if comp is not None:
                    self.fac_heads.append(skip(nn.Linear, d, width_out))
        self._fac_head_of = {c: k for k, c in enumerate(c for c in self.fac_components
                                                        if c is not None)}
        n = self.n_users + self.n_items
        self.register_buffer("result", torch.zeros(n, d))
        self.register_buffer("result_set", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw everything in the code's order: both ID tables (torch's ``Embedding``
        normal, then both ``xavier_uniform_``), each projection (torch's Linear default, then
        ``xavier_uniform_``), the item then user fusion layers (both created, then both
        re-initialised), the FAC links and heads (all created in the code's order, the unused
        audio head included, then all re-initialised); the stored result is cleared."""
        with torch.no_grad():
            self.embedding_user.reset_parameters()
            self.embedding_item.reset_parameters()
            nn.init.xavier_uniform_(self.embedding_user.weight, gain=1)
            nn.init.xavier_uniform_(self.embedding_item.weight, gain=1)
            for lin in self.dense:
                lin.reset_parameters()
                nn.init.xavier_uniform_(lin.weight)
            self.item_fusion.reset_parameters()
            self.user_fusion.reset_parameters()
            nn.init.xavier_uniform_(self.item_fusion.weight)
            nn.init.xavier_uniform_(self.user_fusion.weight)
            created = []                          # link, head, link, head, ... (code's order)
            heads = iter(self.fac_heads)
            for link, (width_out, comp) in zip(self.fac_links, self._fac_layout):
                head = next(heads) if comp is not None else nn.utils.skip_init(
                    nn.Linear, link.in_features, width_out)     # g_a_iva: drawn, dropped
                link.reset_parameters()
                head.reset_parameters()
                created += [link, head]
            for lin in created:
                nn.init.xavier_uniform_(lin.weight)
            self.result.zero_()
            self.result_set.fill_(False)

    # ------------------------------------------------------------------ forward
    def item_tables(self) -> list[torch.Tensor]:
        """T_0 = E_I and T_m = nrm(X_m) W_mᵀ + b_m."""
        return [self.embedding_item.weight] + [
            lin(self.feature_table(k)) for lin, k in zip(self.dense, self._keys)]

    def components(self) -> list[torch.Tensor]:
        """H_c (N × d) of every component c = 0..M, one N × (M+1)·d propagation."""
        eu = self.embedding_user.weight
        tables = self.item_tables()
        x = torch.cat([torch.cat([eu] * len(tables), 1), torch.cat(tables, 1)], 0)
        h = propagate(self.adj, x, self.n_layers)
        return list(h.split(self.embedding_dim, 1))

    def fuse(self, parts: list[torch.Tensor], fusion: nn.Linear) -> torch.Tensor:
        z = torch.cat(parts, 1) if self.mm_fusion_mode == "concat" else torch.stack(parts).mean(0)
        return fusion(z)

    def forward(self):
        """(z_U, z_I, H): fused user and item representations and the components."""
        h = self.components()
        nu = self.n_users
        return (self.fuse([c[:nu] for c in h], self.user_fusion),
                self.fuse([c[nu:] for c in h], self.item_fusion), h)

    # ------------------------------------------------------------------ losses
    @staticmethod
    def _ce(a: torch.Tensor, b: torch.Tensor, temp: float) -> torch.Tensor:
        """CE over a bᵀ / τ with the diagonal as labels (no normalisation)."""
        logits = a @ b.T / temp
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))

    def fac_loss(self, h: list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        nu = self.n_users
        x = h[0][nu:][items]
        loss = None
        for link, comp in zip(self.fac_links, self.fac_components):
            x = link(x)
            if comp is None:
                continue
            y = self.fac_heads[self._fac_head_of[comp]](h[comp][nu:][items])
            term = self._ce(x, y, self.ssl_temp)
            loss = term if loss is None else loss + term
        return loss

    def _views(self, users, items, masked=(None, None), dropout=False):
        """Two views (users and items of the batch, fused) of FD / FM (module docstring)."""
        eu = self.embedding_user.weight
        nu = self.n_users
        p = self.dropout_rate
        parts = {1: ([], []), 2: ([], [])}
        for c, t in enumerate(self.item_tables()):
            x = []
            for v in (0, 1):
                tab = torch.zeros_like(t) if masked[v] == c else t
                x.append(torch.cat([eu, tab], 0))
            acc = [x[0], x[1]]
            ego = [x[0], x[1]]
            for _ in range(self.n_layers):
                for v in (0, 1):
                    ego[v] = self.adj(ego[v])
                    if dropout:
                        ego[v] = F.dropout(ego[v], p, training=True)
                # the code appends view 1's layer to view 2's list and vice versa
                acc[0] = acc[0] + ego[1]
                acc[1] = acc[1] + ego[0]
            for v, key in ((0, 1), (1, 2)):
                out = acc[v] / (self.n_layers + 1)
                parts[key][0].append(out[:nu][users])
                parts[key][1].append(out[nu:][items])
        return [(self.fuse(parts[k][0], self.user_fusion),
                 self.fuse(parts[k][1], self.item_fusion)) for k in (1, 2)]

    def view_loss(self, users, items) -> torch.Tensor:
        masked = (None, None)
        if self.ssl_task in ("FM", "FD+FM"):
            n_comp = len(self.modalities) + 1
            i1 = int(torch.randint(n_comp, ()))
            while True:
                i2 = int(torch.randint(n_comp, ()))
                if i2 != i1:
                    break
            masked = (i1, i2)
        (u1, i1_), (u2, i2_) = self._views(users, items, masked,
                                           dropout=self.ssl_task in ("FD", "FD+FM"))
        return (info_nce(u1, u2, self.ssl_temp) + info_nce(i1_, i2_, self.ssl_temp))

    def loss(self, users, pos, neg):
        z_u, z_i, h = self.forward()
        if self.training:
            with torch.no_grad():
                self.result[: self.n_users].copy_(z_u)
                self.result[self.n_users:].copy_(z_i)
                self.result_set.fill_(True)
        out = {"infonce": info_nce(z_u[users], z_i[pos], self.temperature)}
        if self.ssl_task == "FAC":
            if self.fac_links:
                out["ssl"] = self.ssl_alpha * self.fac_loss(h, pos)
        else:
            out["ssl"] = self.ssl_alpha * self.view_loss(users, pos)
        return out

    # ------------------------------------------------------------------ evaluation
    def representations(self):
        if self.reuse_training_result and bool(self.result_set):
            return self.result[: self.n_users], self.result[self.n_users:]
        z_u, z_i, _ = self.forward()
        return z_u, z_i

    def score(self, users, reps, items=None):
        s = super().score(users, reps, items)
        return torch.sigmoid(s) if self.sigmoid_scores else s
