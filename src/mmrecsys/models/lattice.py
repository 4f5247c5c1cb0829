"""LATTICE: Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021
(arXiv:2104.09036), Sec. 3 (modality-aware structure learning, graph convolutions, combination
with a CF model, optimisation), as in MMRec (``enoche/MMRec`` ``src/models/lattice.py``,
``src/configs/model/LATTICE.yaml``, ``src/utils/utils.py``), the port of the authors' code
(``CRIPAC-DIG/LATTICE`` ``codes/Models.py``). Where the paper and the code differ, the code is
followed (e.g. the paper normalises each modality's learned graph, the code normalises their
weighted sum).

Notation: U users, I items, d = ``embedding_dim``, M modalities X_m (I × D_m, raw features),
k = ``knn_k``, λ = ``lambda_coeff``, R the binary training matrix,
A = [[0, R], [Rᵀ, 0]], nrm(x) = x / max(‖x‖₂, 1e-12) row-wise,
kNN_k(F) the top-k cosine graph of the rows of F **with the similarity values kept** (the row
itself included), sym(G) = D^{-1/2} G D^{-1/2} with D = diag(row sums of G).

.. math::
    \\bar A = D^{-1}(A + I) \\quad (\\text{row-normalised, with self-loops: the code's
    ``get_adj_mat``, not LightGCN's } D^{-1/2} A D^{-1/2})

    S^o_m = \\mathrm{sym}(\\mathrm{kNN}_k(X_m)) \\quad (\\text{fixed, from the raw features})

    F_m = X_m W_m + b_m \\ (I \\times d_f), \\quad \\alpha = \\mathrm{softmax}(w),\\ w^{(0)} = (0.5, …, 0.5)

    S = (1-\\lambda)\\, \\mathrm{sym}\\Big(\\sum_m \\alpha_m \\mathrm{kNN}_k(F_m)\\Big)
        + \\lambda \\sum_m \\alpha_m S^o_m

    h = S^{L_i} E_I, \\qquad [\\bar E_U; \\bar E_I] = \\frac{1}{L+1} \\sum_{l=0}^{L} \\bar A^l [E_U; E_I]

    e_u = \\bar E_U[u], \\qquad e_i = \\bar E_I[i] + \\mathrm{nrm}(h_i)

    \\mathcal L = \\frac1B \\sum_b -\\log\\sigma(e_u\\cdot e_i - e_u\\cdot e_j)
        + \\lambda_{reg} \\frac{\\tfrac12\\lVert e_u\\rVert^2 + \\tfrac12\\lVert e_i\\rVert^2
        + \\tfrac12\\lVert e_j\\rVert^2}{B_{cfg}}

(batch sums in the regulariser; B_cfg is the *configured* batch size, ``train_batch_size``, as the
code divides by ``config['train_batch_size']`` even for the smaller last batch).

Behaviour of the reference reproduced (quirks):

* the learned graph S is rebuilt **once per epoch, at its first batch, with gradient** (the
  code's ``build_item_graph`` flag, set by ``pre_epoch_processing``); the other batches of the
  epoch propagate on that graph detached, so W_m, b_m, w and the raw features receive gradient
  only from the first batch of each epoch; evaluation rebuilds S from the current weights;
* the raw feature tables X_m are trainable (``nn.Embedding.from_pretrained(freeze=False)``)
  and fine-tuned by Adam through the learned graph (``train_features=False`` freezes them);
* the learned kNN keeps the similarity values and the gradient flows through the kept
  similarities and through the degrees of the normalisation;
* initialisation: xavier-uniform over the whole user and item tables, PyTorch's default for
  the projections, w = 0.5 for every modality;
* modalities in the dataset's order (MMRec: image, then text).

Sparse and bounded (the reference holds S, kNN_k(F_m) and S^o_m as dense I × I matrices, which
fails on large catalogues: a 63,001² matrix on Elec, MMRec issues #10 and #22): the kNN searches run in (chunk, I) blocks
(:func:`mmrecsys.graphs.knn_graph`, the reference's ``torch.topk`` neighbour sets), S^o_m are
cached sparse graphs, and S is an :class:`~mmrecsys.graphs.EdgeList` with at most 2·M·k
entries per row whose values carry the gradient (the dense matrix's zeros carry none, so the
gradients are the reference's). Not implemented: ``cf_model: ngcf`` (MMRec's yaml default and
published results use ``lightgcn``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import EdgeList, SparseGraph, bipartite_adjacency, row_normalize
from .base import Recommender
from .layers import bpr_logsigmoid, half_squared_l2, power, propagate

#: MMRec's overall.yaml trainer settings, with LATTICE.yaml's learning-rate decay
_TRAIN = {"epochs": 1000, "batch_size": 2048, "weight_decay": 0.0, "optimizer": "adam",
          "eval_step": 1, "patience": 20, "seed": 999, "sampler": "interactions",
          "negatives_from": "train_items", "valid_metrics": ["recall@20"]}


def register_lattice_graphs(model: Recommender, data, cache, knn_k: int, chunk_size: int) -> None:
    """The fixed graphs of LATTICE's code (and of MICRO's, built on it): ``model.norm_adj``,
    D^{-1}(A + I) of the user–item graph (row-normalised, self-loops: the code's
    ``get_adj_mat``), and per modality m the raw-feature kNN graph S^o_m (cached) as the
    edge-list buffers ``original_{rows,cols,values}_{m}``."""
    a = bipartite_adjacency(data.train)
    a = a + sp.identity(a.shape[0], dtype=np.float32, format="csr")
    model.norm_adj = SparseGraph(row_normalize(a), symmetric=False)
    originals = model.modality_knn_graphs(data, cache, [knn_k] * len(data.features),
                                          chunk_size=chunk_size)
    for m, g in enumerate(originals):
        e = EdgeList.from_scipy(g)
        model.register_buffer(f"original_rows_{m}", e.rows, persistent=False)
        model.register_buffer(f"original_cols_{m}", e.cols, persistent=False)
        model.register_buffer(f"original_values_{m}", e.values, persistent=False)


def skip_init_linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """An ``nn.Linear`` whose construction draws no random numbers (the model's
    ``reset_parameters`` draws every weight, in construction order)."""
    return nn.utils.skip_init(nn.Linear, d_in, d_out, bias=bias)


class LATTICE(Recommender):
    """LATTICE (learned item–item graph + LightGCN) as in MMRec's ``lattice.py``.

    Defaults: MMRec's ``LATTICE.yaml`` where it fixes a value; its grids are
    ``reg_weight`` ∈ {0, 1e-5, 1e-4, 1e-3} and ``lr`` ∈ {1e-4, 5e-4, 1e-3, 5e-3}
    (:attr:`search_space`), of which the defaults are the authors' own defaults
    (``CRIPAC-DIG/LATTICE`` ``codes/utility/parser.py``: ``regs[0]`` = 1e-5, ``lr`` = 5e-4, used
    for every dataset by their README's command); hence no per-dataset presets.

    Args:
        embedding_dim: d, width of the user and item ID embeddings (MMRec's
            ``embedding_size``). (default: ``64``)
        feat_embed_dim: d_f, width of the projected features F_m the learned graph is built
            from. (default: ``64``)
        n_layers: L, propagation layers on the user–item graph D⁻¹(A + I), averaged with
            layer 0 (the code's ``len(weight_size)``, ``weight_size: [64, 64]``).
            (default: ``2``)
        n_item_layers: L_i, applications of the item–item graph S to the item embeddings
            (the yaml's ``n_layers``, a different quantity from ours). (default: ``1``)
        knn_k: k, neighbours per item in every kNN graph (learned and fixed). (default: ``10``)
        lambda_coeff: λ, weight of the fixed raw-feature graphs in S (the skip connection).
            (default: ``0.9``)
        reg_weight: λ_reg of the half-squared L2 of the batch's final embeddings divided by the
            configured batch size (grid {0, 1e-5, 1e-4, 1e-3}). (default: ``1e-05``)
        cf_model: ``"lightgcn"`` (the yaml's), or ``"mf"``: e_u = E_U[u], e_i = E_I[i] + nrm(h_i)
            without propagation. (default: ``'lightgcn'``)
        train_features: fine-tune the raw feature tables X_m as the code does (trainable
            embeddings); False keeps them fixed (less memory, faster). (default: ``True``)
        knn_chunk_size: rows of similarities computed at a time by the kNN searches (memory
            only; the neighbours do not depend on it). (default: ``2048``)
    """

    name = "lattice"
    aliases = {"embedding_size": "embedding_dim"}
    requires_features = True
    train_defaults = {**_TRAIN, "lr": 5e-4, "lr_scheduler": [0.96, 50]}
    search_space = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3], "lr": [1e-4, 5e-4, 1e-3, 5e-3]}
    notes = ("The learned item graph is rebuilt at the first batch of every epoch (with gradient) "
             "and at every evaluation, as MMRec; the raw features are fine-tuned "
             "(train_features=false freezes them). The official yaml's n_layers (item-graph "
             "layers) is n_item_layers here; n_layers counts user-item layers.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, feat_embed_dim: int = 64,
                 n_layers: int = 2, n_item_layers: int = 1, knn_k: int = 10,
                 lambda_coeff: float = 0.9, reg_weight: float = 1e-5, cf_model: str = "lightgcn",
                 train_features: bool = True, knn_chunk_size: int = 2048):
        super().__init__(data, cache)
        if cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"cf_model={cf_model!r}: use 'lightgcn' or 'mf' (ngcf is not implemented)")
        if knn_k < 1:
            raise ValueError(f"knn_k={knn_k}: need at least 1 neighbour")
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff={lambda_coeff}: must be in [0, 1]")
        self.embedding_dim = embedding_dim
        self.feat_embed_dim = feat_embed_dim
        self.n_layers = n_layers
        self.n_item_layers = n_item_layers
        self.knn_k = knn_k
        self.lambda_coeff = lambda_coeff
        self.reg_weight = reg_weight
        self.cf_model = cf_model
        self.train_features = train_features
        self.knn_chunk_size = knn_chunk_size

        register_lattice_graphs(self, data, cache, knn_k, knn_chunk_size)

        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self._keys = self.register_features(data, trainable=train_features)
        self.projection = nn.ModuleDict({k: skip_init_linear(data.features[m].shape[1], feat_embed_dim)
                                         for k, m in zip(self._keys, data.features)})
        self.modal_weight = nn.Parameter(torch.empty(len(self._keys)))
        # training state: rebuild S (with gradient) at the next batch; the epoch's detached S
        self._epoch_graph: dict = {"rebuild": True, "graph": None}
        self.reset_parameters()

    def reset_parameters(self):
        """Re-draw every weight in the reference's construction order and restore the raw
        features (xavier user and item tables, the projections' defaults, w = 0.5)."""
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        for k in self._keys:
            self.projection[k].reset_parameters()
        with torch.no_grad():
            self.modal_weight.fill_(0.5)
        self.reset_feature_tables()
        self._epoch_graph.update(rebuild=True, graph=None)

    def original_graph(self, m: int) -> EdgeList:
        """S^o_m, the fixed sym-normalised kNN graph of modality m's raw features."""
        return EdgeList(getattr(self, f"original_rows_{m}"), getattr(self, f"original_cols_{m}"),
                        getattr(self, f"original_values_{m}"), (self.n_items, self.n_items))

    # ------------------------------------------------------------------ graphs
    def item_graph(self) -> EdgeList:
        """S from the current weights (differentiable when grad is enabled)."""
        alpha = torch.softmax(self.modal_weight, dim=0)
        learned = []
        for m, k in enumerate(self._keys):
            f = self.project_features(k, self.projection[k])                 # F_m (I, d_f)
            learned.append(EdgeList.knn(f, self.knn_k, self.knn_chunk_size).scale(alpha[m]))
        lam = self.lambda_coeff
        parts = [EdgeList.add(*learned).sym_normalize().scale(1.0 - lam)]
        parts += [self.original_graph(m).scale(lam * alpha[m]) for m in range(len(self._keys))]
        return EdgeList.add(*parts)

    def pre_epoch(self, epoch: int) -> None:
        self._epoch_graph["rebuild"] = True

    def _fixed(self, graph: EdgeList) -> SparseGraph:
        return SparseGraph(graph.to_scipy(), symmetric=False).to(self.user_embedding.device)

    # ------------------------------------------------------------------ forward
    def forward(self, item_graph):
        """(e_u for all users, Ē_I for all items, h = S^{L_i} E_I)."""
        h = power(item_graph, self.item_embedding, self.n_item_layers)
        if self.cf_model == "lightgcn":
            ego = torch.cat([self.user_embedding, self.item_embedding], 0)
            out = propagate(self.norm_adj, ego, self.n_layers)
            return out[: self.n_users], out[self.n_users:], h
        return self.user_embedding, self.item_embedding, h

    def loss(self, users, pos, neg):
        state = self._epoch_graph
        if state["rebuild"] or state["graph"] is None:
            graph = self.item_graph()                       # with gradient (first batch of the epoch)
            state.update(rebuild=False, graph=self._fixed(graph))   # detached for the other batches
        else:
            graph = state["graph"]
        user_all, item_all, h = self.forward(graph)
        items = torch.cat([pos, neg])
        u = user_all[users]
        it = item_all[items] + F.normalize(h[items], dim=1)
        i, j = it[: len(pos)], it[len(pos):]
        reg = half_squared_l2(u, i, j, divisor=self.train_batch_size or len(users))
        return {"bpr": bpr_logsigmoid((u * i).sum(1), (u * j).sum(1)), "reg": self.reg_weight * reg}

    def representations(self):
        graph = self._fixed(self.item_graph())
        user_all, item_all, h = self.forward(graph)
        return user_all, item_all + F.normalize(h, dim=1)
