"""MMGCN: Wei, Wang, Nie, He, Hong & Chua, "MMGCN: Multi-modal Graph Convolution Network for
Personalized Recommendation of Micro-video", ACM MM 2019 (Sec. 3: aggregation layer, combination
layer, prediction), as in MMRec (``enoche/MMRec`` ``src/models/mmgcn.py``, grid
``src/configs/model/MMGCN.yaml``). Where paper and code differ, the code is followed.

Notation: U users, I items, N = U + I nodes (users first), d = ``embedding_dim``, M modalities
with raw features X_m (I × f_m), E_id (N × d) the ID embeddings, P_m (U × w_m) the users'
modality preferences, A the symmetric user–item adjacency of the training interactions (both
directions, no self loops), D its degrees, σ = LeakyReLU (slope 0.01), nrm = row-wise L2
normalisation (``F.normalize``, eps 1e-12).

One graph network per modality m (the code's ``GCN``), all on the same graph:

.. math::
    x^{(0)} = \\mathrm{nrm}\\big([P_m;\\ \\tilde X_m]\\big),\\qquad
    \\tilde X_m = X_m W^{mlp} + b^{mlp}\\ \\text{(first modality)},\\ X_m\\ \\text{(the others)}

    h^{(l)} = \\sigma\\big(D^{-1} A\\, x^{(l-1)} W_1^{(l)}\\big)
        \\quad\\text{(aggregation layer; the code's comment: Eq. 1; ``aggr='mean'``)}

    \\hat x^{(l)} = \\sigma\\big(x^{(l-1)} W_2^{(l)\\top} + b_2^{(l)}\\big) + E_{id}
        \\quad\\text{(combination layer; the code's comment: Eq. 5)}

    x^{(l)} = \\sigma\\big([h^{(l)};\\ \\hat x^{(l)}]\\, W_3^{(l)\\top} + b_3^{(l)}\\big)
        \\quad\\text{(the concatenation combiner)}

for l = 1..L, and the final representation of every node is the mean over modalities,
r = (1/M) Σ_m x_m^{(L)} (the code's sum of the two GCNs divided by ``num_modal``); the score is
ŝ_ui = r_uᵀ r_i. Nodes without training interactions receive h = 0 (an empty mean).

Loss (the code's ``calculate_loss``), for a batch B of triples (u, i, j):

.. math::
    \\mathcal L = -\\frac1{|B|}\\sum \\log\\sigma_{sig}(r_u^\\top r_i - r_u^\\top r_j)
      + \\lambda\\Big(\\mathrm{mean}_{2|B|\\times d}\\big(E_{id}[\\mathbf u]^2 + E_{id}[\\mathbf v]^2\\big)
      + \\mathrm{mean}_{U\\times w_1}(P_1^2)\\Big)

with **u** every batch user twice and **v** the positive and negative items interleaved (the
code's ``repeat_interleave``); the log is ``torch.log(torch.sigmoid(.))`` as written (no
epsilon, no log-sigmoid), and λ = ``reg_weight`` (with λ = 0 the term, exactly 0 in the code,
is not computed). Equation numbers are those the code's comments cite; the paper's other
formulas (combiner, prediction, BPR) are referred to by name.

Quirks of the code reproduced by default (each has a switch where one is useful):

* ``self.concate = 'False'`` is a non-empty string, hence true: the combiner concatenates
  [h; x̂] (``concat=True``); ``concat=False`` gives the element-wise combiner σ(h W_3ᵀ + b_3 + x̂).
* The yaml's ``n_layers: 2`` is never used: the code always runs three layers
  (``n_layers=3`` here; any L ≥ 1 is accepted).
* Only the first GCN (the image one, ``v_gcn``) projects its features (to ``dim_latent`` =
  256 through an MLP with torch's Linear initialisation); the others run on the raw features,
  with a raw-width preference table and first-layer weight.
* E_id and every P_m are plain tensors moved with ``.to(device)``, not ``nn.Parameter``: the
  optimiser never updates them, so they stay at their random initialisation (gradients reach
  them but are discarded), and the λ term, which involves only them, is a constant that changes
  no parameter. ``trainable_embeddings=True`` makes them parameters.
* The λ term holds the preference table of the first modality only (``v_gcn.preference``), over
  all users, not the batch's.
* Initialisation: E_id, P_m and the stored result ``xavier_normal_`` (drawn after a discarded
  ``torch.rand`` of the same shape, as the code, so the random stream matches); the aggregation
  weights W_1 PyG's ``uniform`` then ``xavier_normal_``; W_2 and the first layer's W_3
  ``xavier_normal_`` over torch's Linear initialisation; W_3 of the later layers and the MLP
  keep torch's Linear initialisation; biases torch's default.
* ``full_sort_predict`` ranks with ``self.result``, the representation computed by the *last
  training forward* (before that batch's optimiser step), not a fresh one; before any training
  it is a random xavier-normal (N × d) tensor. Reproduced by a persistent buffer ``result``
  written at every training loss (so ``best.pt`` holds the representation that was ranked);
  ``reuse_training_result=False`` ranks with a fresh forward of the current weights.
* The raw features are fixed (not trained). The code has no dropout.

Generalisation to any number of modalities: one GCN per modality of ``data.features`` in its
order (default: by file name, so ``image_feat`` then ``text_feat``, the code's v then t); the
first plays the code's image GCN (MLP to ``dim_latent``, its preferences in the λ term), every
further one the text GCN (raw features). The mean over modalities is the code's
``representation /= num_modal``. With one modality, r is its GCN's output. ``dim_latent=0`` runs
the first modality on raw features too.

Sparse and bounded: the mean aggregation D⁻¹A is a fixed sparse operator (built once from the
binarised training matrix, cached); no N × N matrix is formed. Memory is that of the code's
full forward (every node, every step): O(N · (w_m + d)) activations per modality.

Protocol differences: none in the model. The training edges come from the training split only
(valid/test interactions never enter the graph).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import SparseGraph, binarize
from .base import Recommender

BUILDER_VERSION = 1


def mean_aggregation(train: sp.spmatrix) -> sp.csr_matrix:
    """D⁻¹A: row i averages the neighbours of node i in the symmetric (U + I) user–item graph
    of the binarised ``train`` (PyG ``aggr='mean'`` over both edge directions); rows of nodes
    without neighbours are empty. float32 CSR."""
    r = binarize(train)
    n_users, n_items = r.shape
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(a.sum(1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = 1.0 / deg[deg > 0]
    out = sp.diags(inv.astype(np.float32)) @ a
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


def _xavier_normal_after_rand(t: torch.Tensor) -> None:
    """The code's ``nn.init.xavier_normal_(torch.rand(shape))``, in place (same random stream)."""
    with torch.no_grad():
        t.copy_(nn.init.xavier_normal_(torch.rand(t.shape)))


class ModalityGCN(nn.Module):
    """The GCN of one modality (the code's ``GCN``): parameters only; :meth:`MMGCN.forward`
    runs it."""

    def __init__(self, n_users: int, dim_feat: int, dim_id: int, dim_latent: int, n_layers: int,
                 concat: bool, trainable_preference: bool):
        super().__init__()
        self.dim_latent = dim_latent
        width = dim_latent if dim_latent else dim_feat
        self.width = width
        pref = torch.empty(n_users, width)
        if trainable_preference:
            self.preference = nn.Parameter(pref)
        else:
            self.register_buffer("preference", pref)
        self.mlp = nn.utils.skip_init(nn.Linear, dim_feat, dim_latent) if dim_latent else None
        self.conv = nn.ParameterList()
        self.linear = nn.ModuleList()
        self.gate = nn.ModuleList()
        for layer in range(n_layers):
            w_in = width if layer == 0 else dim_id
            self.conv.append(nn.Parameter(torch.empty(w_in, w_in)))
            self.linear.append(nn.utils.skip_init(nn.Linear, w_in, dim_id))
            self.gate.append(nn.utils.skip_init(nn.Linear, w_in + dim_id if concat else w_in,
                                                dim_id))

    def reset_parameters(self) -> None:
        """The code's constructor order: preference, MLP, then per layer conv, linear, gate."""
        _xavier_normal_after_rand(self.preference)
        if self.mlp is not None:
            self.mlp.reset_parameters()                      # torch's Linear default
        with torch.no_grad():
            for layer, (w, lin, gate) in enumerate(zip(self.conv, self.linear, self.gate)):
                bound = 1.0 / math.sqrt(w.shape[0])          # torch_geometric.nn.inits.uniform
                w.uniform_(-bound, bound)
                nn.init.xavier_normal_(w)
                lin.reset_parameters()
                nn.init.xavier_normal_(lin.weight)
                gate.reset_parameters()
                if layer == 0:                               # only g_layer1 is re-initialised
                    nn.init.xavier_normal_(gate.weight)


class MMGCN(Recommender):
    """MMGCN as in MMRec: one graph network per modality on the user–item graph, averaged.

    Defaults: MMRec's ``MMGCN.yaml`` (``embedding_size: 64``) and the code's fixed choices. Its
    grid is ``reg_weight`` ∈ {0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1} and ``lr`` ∈ {1e-4, 5e-4, 1e-3,
    5e-3, 1e-2} (:attr:`search_space`). MMRec publishes no tuned value, so ``reg_weight``
    defaults to the grid's first value (the configuration MMRec's grid search trains first;
    with the code's frozen embeddings the λ term changes no parameter anyway) and ``lr`` to
    MMRec's ``overall.yaml`` 1e-3 (the trainer's default).

    Args:
        embedding_dim: d, width of the ID embeddings and of every layer's output (MMRec's
            ``embedding_size``). (default: ``64``)
        n_layers: L, graph layers of every modality's network; the code always runs 3 (it
            ignores the yaml's ``n_layers: 2``). (default: ``3``)
        dim_latent: width the first modality's features are projected to by the MLP (the
            code's ``dim_latent=256`` of the image GCN); further modalities run on their raw
            features; 0 runs the first on raw features too. (default: ``256``)
        concat: combiner of each layer: True concatenates [h; x̂] (the code, whose
            ``concate = 'False'`` is a true string); False adds them element-wise.
            (default: ``True``)
        reg_weight: λ of the squared-value regulariser of the batch's ID embeddings and the
            first modality's user preferences (grid {0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1}).
            (default: ``0.0``)
        trainable_embeddings: False, as the code: the ID embeddings and user preferences are
            not parameters and keep their initial values; True trains them. (default: ``False``)
        reuse_training_result: True, as the code: evaluation ranks with the representation of
            the last training forward (stored in the ``result`` buffer); False computes a fresh
            one from the current weights. (default: ``True``)
    """

    name = "mmgcn"
    aliases = {"embedding_size": "embedding_dim"}
    requires_features = True
    search_space = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
                    "lr": [1e-4, 5e-4, 1e-3, 5e-3, 1e-2]}
    notes = ("As MMRec's code: three layers whatever the yaml's n_layers, the concatenation "
             "combiner, ID embeddings and user preferences that are never trained "
             "(trainable_embeddings=true trains them), and evaluation with the representation of "
             "the last training batch (reuse_training_result=false recomputes it).")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 3,
                 dim_latent: int = 256, concat: bool = True, reg_weight: float = 0.0,
                 trainable_embeddings: bool = False, reuse_training_result: bool = True):
        super().__init__(data, cache)
        if int(embedding_dim) != embedding_dim or embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim}: must be an integer ≥ 1")
        if int(n_layers) != n_layers or n_layers < 1:
            raise ValueError(f"n_layers={n_layers}: MMGCN needs at least one layer")
        if int(dim_latent) != dim_latent or dim_latent < 0:
            raise ValueError(f"dim_latent={dim_latent}: must be an integer ≥ 0 (0: raw features)")
        if not (reg_weight >= 0 and math.isfinite(reg_weight)):
            raise ValueError(f"reg_weight={reg_weight}: must be a finite value ≥ 0")
        self.embedding_dim = int(embedding_dim)
        self.n_layers = int(n_layers)
        self.dim_latent = int(dim_latent)
        self.concat = bool(concat)
        self.reg_weight = float(reg_weight)
        self.trainable_embeddings = bool(trainable_embeddings)
        self.reuse_training_result = bool(reuse_training_result)
        self.modalities = list(data.features)

        g = self.cached_graph(cache, "mmgcn-mean-graph",
                              {"data": data.fingerprint(with_features=False),
                               "version": BUILDER_VERSION},
                              lambda: mean_aggregation(data.train))
        self.mean_graph = SparseGraph(g, symmetric=False)
        self._keys = self.register_features(data, trainable=False)

        n = self.n_users + self.n_items
        self.gcns = nn.ModuleList(
            ModalityGCN(self.n_users, x.shape[1], self.embedding_dim,
                        self.dim_latent if m == 0 else 0, self.n_layers, self.concat,
                        self.trainable_embeddings)
            for m, x in enumerate(data.features.values()))
        if self.trainable_embeddings:
            self.id_embedding = nn.Parameter(torch.empty(n, self.embedding_dim))
        else:
            self.register_buffer("id_embedding", torch.empty(n, self.embedding_dim))
        self.register_buffer("result", torch.empty(n, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw everything in the code's constructor order: each modality's network, then
        E_id, then the stored result."""
        for gcn in self.gcns:
            gcn.reset_parameters()
        _xavier_normal_after_rand(self.id_embedding)
        _xavier_normal_after_rand(self.result)

    # ------------------------------------------------------------------ forward
    def modality_forward(self, m: int) -> torch.Tensor:
        """x_m^{(L)} (N × d) of modality ``m``."""
        gcn = self.gcns[m]
        feat = self.feature_table(self._keys[m])
        if gcn.mlp is not None:
            feat = gcn.mlp(feat)
        x = F.normalize(torch.cat([gcn.preference, feat], 0))
        for w, lin, gate in zip(gcn.conv, gcn.linear, gcn.gate):
            h = F.leaky_relu(self.mean_graph(x @ w))
            x_hat = F.leaky_relu(lin(x)) + self.id_embedding
            if self.concat:
                x = F.leaky_relu(gate(torch.cat([h, x_hat], 1)))
            else:
                x = F.leaky_relu(gate(h) + x_hat)
        return x

    def forward(self) -> torch.Tensor:
        """r (N × d): the mean of the modalities' outputs (users first)."""
        rep = None
        for m in range(len(self.gcns)):
            x = self.modality_forward(m)
            rep = x if rep is None else rep + x
        return rep / len(self.gcns)

    def loss(self, users, pos, neg):
        out = self.forward()
        if self.training:
            with torch.no_grad():
                self.result.copy_(out)
        u_idx = users.repeat_interleave(2)
        i_idx = torch.stack([pos, neg]).t().reshape(-1) + self.n_users
        score = (out[u_idx] * out[i_idx]).sum(1).view(-1, 2)
        diff = score[:, 0] - score[:, 1]                     # score @ [[1], [-1]]
        terms = {"bpr": -torch.mean(torch.log(torch.sigmoid(diff)))}
        if self.reg_weight != 0:
            reg = (self.id_embedding[u_idx] ** 2 + self.id_embedding[i_idx] ** 2).mean()
            reg = reg + (self.gcns[0].preference ** 2).mean()
            terms["reg"] = self.reg_weight * reg
        return terms

    def representations(self):
        rep = self.result if self.reuse_training_result else self.forward()
        return rep[: self.n_users], rep[self.n_users:]
