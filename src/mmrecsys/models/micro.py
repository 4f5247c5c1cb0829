"""MICRO: Zhang et al., "Latent Structure Mining with Contrastive Modality Fusion for Multimedia
Recommendation", IEEE TKDE 2022 (the journal extension of LATTICE): one learned item–item graph
per modality, attention fusion of the modality-specific item embeddings, and a contrastive loss
between each modality's embedding and the fused one.

Reproduces the released code, ``CRIPAC-DIG/MICRO`` (``codes/Models.py`` class ``MICRO``,
``codes/main.py`` ``Trainer``, ``codes/utility/norm.py``, ``codes/utility/load_data.py``,
``codes/utility/parser.py`` defaults; the code is built on the authors' LATTICE code). Where
the paper and the code differ, the code is followed.

Notation: U users, I items, d = ``embedding_dim``, M modalities X_m (I × D_m, raw features),
k = ``knn_k``, λ = ``lambda_coeff``, L_i = ``n_item_layers``, L = ``n_layers``, τ =
``temperature``, R the binary training matrix, A = [[0, R], [Rᵀ, 0]], nrm(x) = x / max(‖x‖₂,
1e-12) row-wise, kNN_k(F) the top-k cosine graph of the rows of F **with the similarity values
kept** (the row itself included), sym(G) = D^{-1/2} G D^{-1/2} with D = diag(row sums of G),
c(a, b) the cosine similarity.

.. math::
    \\bar A = D^{-1}(A + I) \\quad (\\text{row-normalised, with self-loops: } ``get_adj_mat``)

    S^o_m = \\mathrm{sym}(\\mathrm{kNN}_k(X_m)) \\quad (\\text{fixed, from the raw features})

    F_m = X_m W_m + b_m \\ (I \\times d), \\qquad
    S_m = (1-\\lambda)\\, \\mathrm{sym}(\\mathrm{kNN}_k(F_m)) + \\lambda S^o_m

    h_m = S_m^{L_i} E_I, \\qquad
    \\beta_{\\cdot m} = \\mathrm{softmax}_m\\big(q^\\top \\tanh(W_a h_m + b_a)\\big), \\qquad
    h = \\sum_m \\beta_{\\cdot m} \\odot h_m

    [\\bar E_U; \\bar E_I] = \\frac{1}{L+1} \\sum_{l=0}^{L} \\bar A^l [E_U; E_I], \\qquad
    e_u = \\bar E_U[u], \\quad e_i = \\bar E_I[i] + \\mathrm{nrm}(h_i)

    \\mathcal L = \\frac1B \\sum_b -\\log\\sigma(e_u\\cdot e_i - e_u\\cdot e_j)
        + \\lambda_{reg} \\frac{\\tfrac12\\lVert e_u\\rVert^2 + \\tfrac12\\lVert e_i\\rVert^2
        + \\tfrac12\\lVert e_j\\rVert^2}{B_{cfg}}
        + \\alpha \\sum_m CL(h_m, h)

    CL(Z_1, Z_2) = \\frac1I \\sum_n -\\log
      \\frac{e^{c(z_{1n}, z_{2n})/\\tau}}{\\sum_{n' \\ne n} e^{c(z_{1n}, z_{1n'})/\\tau}
      + \\sum_{n'} e^{c(z_{1n}, z_{2n'})/\\tau}}

(batch sums in the regulariser; B_cfg the *configured* batch size, ``train_batch_size``, as
the code divides by ``args.batch_size``; α = ``cl_weight``, the code's ``loss_ratio``). The
contrastive loss is the code's ``batched_contrastive_loss``: one-directional (the modality view
is the anchor, the fused view the positive), over **all** I items at every step, the anchor's
other items in both views as negatives; its anchor blocks of 4,096 only bound memory. It is
:func:`mmrecsys.models.mmhcl.all_node_infonce` (the same GRACE-style loss, exact, O(chunk · I)
memory, imported from MMHCL).

Behaviour of the reference reproduced (quirks):

* the learned graphs S_m are rebuilt **once per epoch, at its first batch, with gradient**
  (``build_item_graph = True`` for the first batch only); the epoch's other batches propagate
  on those graphs detached, so W_m, b_m and the raw features receive gradient (from the BPR
  *and* the contrastive terms) only at the first batch of each epoch; evaluation rebuilds them
  from the current weights;
* the raw feature tables X_m are trainable (``nn.Embedding.from_pretrained(freeze=False)``)
  and fine-tuned by Adam through the learned graphs (``train_features=False`` freezes them);
* unlike LATTICE, no learned modality weights: each modality has its own graph S_m and its own
  h_m, and the modalities meet only in the attention fusion; the fixed graph S^o_m is mixed
  into its own modality's graph only;
* one shared query network (Linear(d, d) → tanh → Linear(d, 1, no bias)) scores every
  modality; the projections map the features to width d = ``embed_size`` (no separate
  feature width);
* the contrastive terms use the unnormalised propagated h_m and h (cosines inside), τ = 0.5
  hard-coded in the code (``self.tau``); the fused h enters the scores normalised;
* the regulariser divides by the configured batch size; the sampler draws ``batch_size``
  distinct users per step with one random positive and one negative over *all* item ids not in
  the user's training items, n_train // B + 1 steps per epoch (``load_data.py`` ``sample``;
  ``sampler: users``, ``negatives_from: all_items``);
* learning rate × 0.96^(epoch / 50) (``LambdaLR``, stepped per epoch); evaluation every 5
  epochs (``verbose``); an evaluation improves when validation Recall@20 beats the best so far
  (raw floats); stop after more than 10 evaluations without improvement; seed 123; the ranking
  masks training items only (validation items are candidates at test time, as in
  ``batch_test.py``); held-out users with no training row are evaluated too;
* initialisation: xavier-uniform over the whole user and item tables, PyTorch's defaults for
  the projections and the query network.

Protocol: the code selects on validation Recall@20 and reports the test metrics of the best
validation evaluation, which is what the trainer does; no test data reaches training or
selection. The code's NDCG is the hit-based one of the LATTICE family (ideal DCG from the
list's own hits), reported here as ``ndcg_mmhcl``; the standard ``ndcg`` is reported as well.

Differences that do not change the computation on ordinary data: an all-zero feature row has
cosine 0 to every item here (NaN, which spreads through the graph, in the code); with
``batch_size`` above the number of users the code draws users with replacement, the sampler here
takes each user once per step.

Any number of modalities (the code hard-codes image and text, in that order): one projection,
one fixed and one learned graph per modality of the dataset, in its order, and a softmax over
M attention scores; M = 1 gives h = h_1. Not implemented: ``cf_model: ngcf`` (the code's default
and its published results use ``lightgcn``).

Sparse and bounded (the code builds every similarity matrix densely, I × I, before taking the
top k, and with ``sparse = 1`` keeps the graphs as sparse tensors): the kNN searches run in
(chunk, I) blocks (:func:`mmrecsys.graphs.knn_graph`, ``torch.topk``'s neighbour sets), S^o_m
are cached sparse graphs, and each S_m is an :class:`~mmrecsys.graphs.EdgeList` with at most
2k entries per row whose values carry the gradient (exactly the gradients of the dense
computation: the zeros carry none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graphs import EdgeList, SparseGraph
from .base import Recommender
from .lattice import register_lattice_graphs, skip_init_linear
from .layers import bpr_logsigmoid, half_squared_l2, power, propagate
from .mmhcl import all_node_infonce


class MICRO(Recommender):
    """MICRO (per-modality learned item graphs, attention fusion, contrastive fusion loss,
    LightGCN) as the authors' ``codes/Models.py``.

    Defaults: the authors' ``codes/utility/parser.py`` (their README runs
    ``python main.py --dataset {DATASET}`` with these for every dataset, hence no presets; the
    cold-start command changes only the data and ``lr`` to 1e-5). They publish no grid:
    :attr:`search_space` is the grid MMRec gives the LATTICE code MICRO is built on
    (``reg_weight`` ∈ {0, 1e-5, 1e-4, 1e-3}, ``lr`` ∈ {1e-4, 5e-4, 1e-3, 5e-3}), with the
    README's cold-start ``lr`` 1e-5 added; the defaults are in it.

    Args:
        embedding_dim: d, width of the user and item ID embeddings and of the projected
            features F_m (the code's ``embed_size``). (default: ``64``)
        n_layers: L, propagation layers on the user–item graph D⁻¹(A + I), averaged with
            layer 0 (the code's ``len(weight_size)``, ``weight_size: [64, 64]``).
            (default: ``2``)
        n_item_layers: L_i, applications of each modality's item–item graph S_m to the item
            ID embeddings (the code's ``layers``). (default: ``1``)
        knn_k: k, neighbours per item in every kNN graph, learned and fixed (the code's
            ``topk``, renamed because ``topk`` is the evaluator's list of cutoffs).
            (default: ``10``)
        lambda_coeff: λ, weight of the fixed raw-feature graph S^o_m in S_m (the skip
            connection). (default: ``0.9``)
        reg_weight: λ_reg of the half-squared L2 of the batch's final embeddings divided by the
            configured batch size (the code's ``regs[0]``). (default: ``1e-05``)
        cl_weight: α, weight of the summed contrastive losses Σ_m CL(h_m, h) (the code's
            ``loss_ratio``). (default: ``0.03``)
        temperature: τ of the contrastive loss (hard-coded ``self.tau`` in the code).
            (default: ``0.5``)
        cf_model: ``"lightgcn"`` (the code's default), or ``"mf"``: e_u = E_U[u],
            e_i = E_I[i] + nrm(h_i) without propagation. (default: ``'lightgcn'``)
        train_features: fine-tune the raw feature tables X_m as the code does (trainable
            embeddings); False keeps them fixed (less memory, faster). (default: ``True``)
        cl_chunk_size: anchors per block of the all-item contrastive loss; memory only (about
            4 · 2I · chunk bytes), not the result (the code's 4,096). (default: ``4096``)
        knn_chunk_size: rows of similarities computed at a time by the kNN searches (memory
            only; the neighbours do not depend on it). (default: ``2048``)
    """

    name = "micro"
    aliases = {"embed_size": "embedding_dim", "embedding_size": "embedding_dim",
               "layers": "n_item_layers", "loss_ratio": "cl_weight", "tau": "temperature"}
    requires_features = True
    train_defaults = {
        "sampler": "users", "negatives_from": "all_items", "batch_size": 1024, "lr": 5e-4,
        "lr_scheduler": [0.96, 50], "eval_step": 5, "patience": 10, "epochs": 1000,
        "seed": 123, "optimizer": "adam", "weight_decay": 0.0,
        "valid_metrics": ["recall@20"], "valid_round": None, "extra_metrics": ["ndcg_mmhcl"],
        "keep_users_without_train": True,
    }
    search_space = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3],
                    "lr": [1e-5, 1e-4, 5e-4, 1e-3, 5e-3]}
    notes = ("As the official main.py: users sampler, evaluation every 5 epochs, selection on "
             "validation Recall@20 (raw floats), patience 10. The learned item graphs are "
             "rebuilt at the first batch of every epoch (with gradient) and at every evaluation; "
             "the raw features are fine-tuned (train_features=false freezes them). The "
             "contrastive loss covers all items at every step.")

    def __init__(self, data, cache=None, *, embedding_dim: int = 64, n_layers: int = 2,
                 n_item_layers: int = 1, knn_k: int = 10, lambda_coeff: float = 0.9,
                 reg_weight: float = 1e-5, cl_weight: float = 0.03, temperature: float = 0.5,
                 cf_model: str = "lightgcn", train_features: bool = True,
                 cl_chunk_size: int = 4096, knn_chunk_size: int = 2048):
        super().__init__(data, cache)
        if cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"cf_model={cf_model!r}: use 'lightgcn' or 'mf' (ngcf is not implemented)")
        if knn_k < 1:
            raise ValueError(f"knn_k={knn_k}: need at least 1 neighbour")
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff={lambda_coeff}: must be in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be positive")
        if n_layers < 0 or n_item_layers < 0:
            raise ValueError(f"n_layers={n_layers}, n_item_layers={n_item_layers}: must be >= 0")
        if cl_chunk_size < 1 or knn_chunk_size < 1:
            raise ValueError("cl_chunk_size and knn_chunk_size must be positive")
        self.embedding_dim = embedding_dim
        self.n_layers = n_layers
        self.n_item_layers = n_item_layers
        self.knn_k = knn_k
        self.lambda_coeff = lambda_coeff
        self.reg_weight = reg_weight
        self.cl_weight = cl_weight
        self.temperature = temperature
        self.cf_model = cf_model
        self.train_features = train_features
        self.cl_chunk_size = cl_chunk_size
        self.knn_chunk_size = knn_chunk_size

        # D^{-1}(A + I) and the fixed raw-feature graphs S^o_m: LATTICE's (cached, edge lists)
        register_lattice_graphs(self, data, cache, knn_k, knn_chunk_size)

        self.user_embedding = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self._keys = self.register_features(data, trainable=train_features)
        self.projection = nn.ModuleDict({k: skip_init_linear(data.features[m].shape[1], embedding_dim)
                                         for k, m in zip(self._keys, data.features)})
        self.query = nn.Sequential(skip_init_linear(embedding_dim, embedding_dim), nn.Tanh(),
                                   skip_init_linear(embedding_dim, 1, bias=False))
        # training state: rebuild the S_m (with gradient) at the next batch; the epoch's
        # detached S_m
        self._epoch_graph: dict = {"rebuild": True, "graphs": None}
        self.reset_parameters()

    def reset_parameters(self):
        """Re-draw every weight in the reference's construction order (xavier user and item
        tables, the projections', then the query network's defaults) and restore the raw
        features."""
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)
        for k in self._keys:
            self.projection[k].reset_parameters()
        self.query[0].reset_parameters()
        self.query[2].reset_parameters()
        self.reset_feature_tables()
        self._epoch_graph.update(rebuild=True, graphs=None)

    def original_graph(self, m: int) -> EdgeList:
        """S^o_m, the fixed sym-normalised kNN graph of modality m's raw features."""
        return EdgeList(getattr(self, f"original_rows_{m}"), getattr(self, f"original_cols_{m}"),
                        getattr(self, f"original_values_{m}"), (self.n_items, self.n_items))

    # ------------------------------------------------------------------ graphs
    def item_graphs(self) -> list[EdgeList]:
        """[S_1, …, S_M] from the current weights (differentiable when grad is enabled)."""
        lam = self.lambda_coeff
        out = []
        for m, k in enumerate(self._keys):
            f = self.project_features(k, self.projection[k])                 # F_m (I, d)
            learned = EdgeList.knn(f, self.knn_k, self.knn_chunk_size).sym_normalize()
            out.append(EdgeList.add(learned.scale(1.0 - lam), self.original_graph(m).scale(lam)))
        return out

    def pre_epoch(self, epoch: int) -> None:
        self._epoch_graph["rebuild"] = True

    def _fixed(self, graph: EdgeList) -> SparseGraph:
        return SparseGraph(graph.to_scipy(), symmetric=False).to(self.user_embedding.device)

    # ------------------------------------------------------------------ forward
    def fuse(self, views: list[torch.Tensor]) -> torch.Tensor:
        """h = Σ_m β_m ⊙ h_m with β = softmax over m of the shared query's scores."""
        scores = torch.cat([self.query(v) for v in views], dim=-1)        # (I, M)
        beta = torch.softmax(scores, dim=-1)
        h = beta[:, 0:1] * views[0]
        for m in range(1, len(views)):
            h = h + beta[:, m:m + 1] * views[m]
        return h

    def forward(self, graphs):
        """(e_u for all users, Ē_I for all items, [h_1, …, h_M], h)."""
        views = [power(g, self.item_embedding, self.n_item_layers) for g in graphs]
        h = self.fuse(views)
        if self.cf_model == "lightgcn":
            ego = torch.cat([self.user_embedding, self.item_embedding], 0)
            out = propagate(self.norm_adj, ego, self.n_layers)
            return out[: self.n_users], out[self.n_users:], views, h
        return self.user_embedding, self.item_embedding, views, h

    def loss(self, users, pos, neg):
        state = self._epoch_graph
        if state["rebuild"] or state["graphs"] is None:
            graphs = self.item_graphs()              # with gradient (first batch of the epoch)
            state.update(rebuild=False, graphs=[self._fixed(g) for g in graphs])
        else:
            graphs = state["graphs"]                 # the epoch's graphs, detached
        user_all, item_all, views, h = self.forward(graphs)
        items = torch.cat([pos, neg])
        u = user_all[users]
        it = item_all[items] + F.normalize(h[items], dim=1)
        i, j = it[: len(pos)], it[len(pos):]
        reg = half_squared_l2(u, i, j, divisor=self.train_batch_size or len(users))
        if self.cl_weight != 0:
            cl = sum(all_node_infonce(v, h, self.temperature, self.cl_chunk_size) for v in views)
        else:                                        # the same value, without the I × I work
            cl = h.new_zeros(())
        return {"bpr": bpr_logsigmoid((u * i).sum(1), (u * j).sum(1)),
                "reg": self.reg_weight * reg, "cl": self.cl_weight * cl}

    def representations(self):
        graphs = [self._fixed(g) for g in self.item_graphs()]
        user_all, item_all, _, h = self.forward(graphs)
        return user_all, item_all + F.normalize(h, dim=1)
