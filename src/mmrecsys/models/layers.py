"""Building blocks shared by the models: losses and propagation.

Losses follow MMRec (``enoche/MMRec`` ``src/common/loss.py``: ``BPRLoss``, ``EmbLoss``) or the
LATTICE family (``CRIPAC-DIG/LATTICE`` ``codes/main.py``, ``bpr_loss``). Propagation is written
once for every model, as PyG's ``LGConv`` serves all of its LightGCN-style models:

* :func:`power` applies a fixed operator L times, Â^L x (MMHCL's hypergraph branches, REARM's
  homographs, LGMRec's modality graph embedding);
* :func:`propagate` is LightGCN's layer combination, the mean of Â^l x over l = 0..L (He et al.,
  "LightGCN", SIGIR 2020, Eq. 4 with α_l = 1/(L+1); LightGCN, LGMRec, MMHCL, REARM).

An operator is a :class:`~mmrecsys.graphs.SparseGraph` or any callable computing A x (e.g. a
:class:`~mmrecsys.graphs.hypergraph.TorchHypergraph`, or an :class:`~mmrecsys.graphs.EdgeList`
whose weights are learned), or a torch sparse tensor.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..matmul import fixed_shape_products


# ----------------------------------------------------------------------- data parallelism
@dataclass(frozen=True)
class DataParallel:
    """A training step split across ``world`` processes: each holds a share of a global batch
    of ``global_batch`` rows. The batch losses below then return this process's share of the
    global value, so that the shares add up (over processes) to the single-process loss."""
    world: int
    global_batch: int


_DP: contextvars.ContextVar = contextvars.ContextVar("data_parallel", default=None)


@contextlib.contextmanager
def data_parallel(world: int, global_batch: int):
    """Within the block the batch losses are data-parallel shares (see :class:`DataParallel`)."""
    token = _DP.set(DataParallel(int(world), int(global_batch)))
    try:
        yield
    finally:
        _DP.reset(token)


def batch_size(rows: torch.Tensor) -> int:
    """The batch size a per-batch mean divides by: the global batch under data parallelism."""
    dp = _DP.get()
    return rows.shape[0] if dp is None else dp.global_batch


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch rows (under data parallelism: this share's sum / global batch)."""
    dp = _DP.get()
    return x.mean() if dp is None else x.sum() / dp.global_batch


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """MMRec BPRLoss: −mean log(1e-10 + σ(ŝ_ui − ŝ_uj))."""
    return batch_mean(-torch.log(1e-10 + torch.sigmoid(pos_scores - neg_scores)))


def bpr_logsigmoid(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """−mean logsigmoid(ŝ_ui − ŝ_uj) (FREEDOM/LATTICE/MGCN/MMHCL style)."""
    return batch_mean(-F.logsigmoid(pos_scores - neg_scores))


def half_squared_l2(*embeddings: torch.Tensor, divisor: float | None = None) -> torch.Tensor:
    """(Σ_k ½‖X_k‖²_F) / divisor: the regulariser of LATTICE, MGCN and SMORE (``bpr_loss`` in
    ``enoche/MMRec`` ``src/models/{lattice,mgcn}.py``, ``kennethorq/SMORE`` ``src/models/smore.py``),
    whose divisor is the *configured* batch size (``train_batch_size``), not the batch's rows.
    ``divisor=None``: the rows of the first argument."""
    total = sum(0.5 * e.pow(2).sum() for e in embeddings)
    return total / (embeddings[0].shape[0] if divisor is None else divisor)


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float,
             counts: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch InfoNCE of MGCN and SMORE (their ``InfoNCE``): with cosine c,
    mean_b −log( exp(c(v1_b, v2_b)/τ) / Σ_b' exp(c(v1_b, v2_b')/τ) ).

    Candidates are the batch's own rows, repeats included (a user twice in the batch is twice a
    candidate). Written as log-sum-exp − positive (the same value without exp overflow).
    ``counts``: the rows are the *distinct* nodes of the batch and ``counts`` their
    multiplicities; then the result is exactly the loss over the batch with its repeats,
    Σ_k n_k [log Σ_j n_j exp(c_kj/τ) − c_kk/τ] / Σ_k n_k, at K² instead of B² cost.

    For τ > :data:`SHIFTED_LSE_MIN_TAU` the log-sum-exp is :class:`_ShiftedLogSumExp`: cosines
    are at most 1, so exp(c/τ − 1/τ) neither overflows nor, with c ≥ −1, underflows, and the
    K × K block takes one product, one exponential and one weighted row sum forward and two
    products backward, instead of autograd's dozen elementwise passes over it."""
    a = F.normalize(view1, dim=1)
    b = F.normalize(view2, dim=1)
    pos = (a * b).sum(1) / temperature
    if temperature > SHIFTED_LSE_MIN_TAU:
        w = None if counts is None else counts.to(a.dtype)
        lse = _ShiftedLogSumExp.apply(a, b, w, float(temperature))
        return (lse - pos).mean() if w is None else (w * (lse - pos)).sum() / w.sum()
    logits = a @ b.T / temperature
    if counts is None:
        return (torch.logsumexp(logits, dim=1) - pos).mean()
    w = counts.to(logits.dtype)
    lse = torch.logsumexp(logits + w.log()[None, :], dim=1)
    return (w * (lse - pos)).sum() / w.sum()


def info_nce_rows(anchors: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor,
                  temperature: float, normalize_candidates: bool = True) -> torch.Tensor:
    """Per-row InfoNCE against a fixed candidate set (SGL's and NCL's all-node contrast): with
    a, p the L2-normalised rows of ``anchors`` and ``positives`` and c those of ``candidates``
    (every user, every item or every prototype),
    ℓ_b = log Σ_n exp(a_b·c_n / τ) − a_b·p_b / τ, for b = 1..B, a (B,) vector.

    ``positives`` is usually ``candidates[rows]`` (the same node in the other view). A model
    reduces it itself (a sum, or a mean); passing the batch's *distinct* anchors and weighting
    each ℓ_b by its multiplicity gives exactly the loss over the batch with its repeats. The
    log-sum-exp is :class:`_ShiftedLogSumExp` for τ > :data:`SHIFTED_LSE_MIN_TAU` (no B × N
    autograd passes), else the max-shifted ``torch.logsumexp``; gradients reach all three
    inputs. ``normalize_candidates=False`` for rows that already have unit norm."""
    a = F.normalize(anchors, dim=1)
    p = F.normalize(positives, dim=1)
    c = F.normalize(candidates, dim=1) if normalize_candidates else candidates
    pos = (a * p).sum(1) / temperature
    if temperature > SHIFTED_LSE_MIN_TAU:
        # zero anchor rows up to a multiple of ANCHOR_ROWS: every product then has one of a few
        # shapes (oneDNN where cpu_matmul allows it); the padded rows' values are dropped
        lse = _ShiftedLogSumExp.apply(_pad_rows(a, ANCHOR_ROWS), c, None, float(temperature),
                                      1.0, True)
        return lse[: len(a)] - pos
    return torch.logsumexp(a @ c.T / temperature, dim=1) - pos


def sum_over_rows(rows: torch.Tensor, loss_of_rows) -> torch.Tensor:
    """Σ_b ℓ(rows_b) for a per-row loss ``loss_of_rows`` (distinct rows -> (K,) losses), computed
    once per distinct row and weighted by its multiplicity: exactly the sum over the batch with
    its repeats (a user with several pairs in the batch is one anchor row, not several)."""
    uniq, counts = torch.unique(rows, return_counts=True)
    losses = loss_of_rows(uniq)
    return (counts.to(losses.dtype) * losses).sum()


#: below this temperature exp(−2/τ) underflows float32 (e^−87), and :func:`info_nce` takes the
#: max-shifted ``torch.logsumexp``
SHIFTED_LSE_MIN_TAU = 2.0 / 80.0


class _ShiftedLogSumExp(torch.autograd.Function):
    """lse_k = log Σ_j w_j exp(a_k·b_j / τ) where every |a_k·b_j| ≤ s (rows of norm ≤ 1: s = 1;
    w = 1 when None), computed as s/τ + log Σ_j w_j E_kj with E = exp((a bᵀ − s)/τ) ∈ (0, 1].
    Backward, with P = diag(g / r) E diag(w) (r = E w): ∂a = P b / τ, ∂b = Pᵀ a / τ, each one
    product with the saved E and no further K × K pass."""

    @staticmethod
    def forward(ctx, a, b, w, tau, shift=1.0, fixed=False):
        keep = any(ctx.needs_input_grad[:2])       # a backward pass will read the block
        e = _BLOCKS.take(len(a), len(b), a)
        with fixed_shape_products() if fixed else contextlib.nullcontext():
            # (a/τ, −s/τ)·(b, 1) = (a·b − s)/τ: the shift rides in the product (no pass of its own)
            torch.mm(torch.cat([a * (1.0 / tau), a.new_full((len(a), 1), -shift / tau)], 1),
                     torch.cat([b, b.new_ones((len(b), 1))], 1).T, out=e)
            e.exp_()
            r = e.sum(1) if w is None else e @ w
        if keep:
            ctx.save_for_backward(a, b, e, r, w)
        else:
            _BLOCKS.give(e)
        ctx.tau, ctx.fixed, ctx.block = tau, fixed, e if keep else None
        return r.log() + shift / tau

    @staticmethod
    def backward(ctx, g):
        a, b, e, r, w = ctx.saved_tensors
        coef = g / (r * ctx.tau)
        ga = gb = None
        with fixed_shape_products() if ctx.fixed else contextlib.nullcontext():
            if ctx.needs_input_grad[0]:
                ga = coef[:, None] * (e @ (b if w is None else w[:, None] * b))
            if ctx.needs_input_grad[1]:
                gb = e.T @ (coef[:, None] * a)
                if w is not None:
                    gb = w[:, None] * gb
        if ctx.block is not None:      # the block is free again (a second backward would need
            _BLOCKS.give(ctx.block)    # retain_graph, which no loss here uses: then drop it)
            ctx.block = None
        return ga, gb, None, None, None, None


class _BlockPool:
    """Reused buffers for the K × N blocks of the contrastive losses. A fresh block of
    ~150 MB (2,048 × 19,445 floats) costs tens of milliseconds of page faults each time it is
    allocated, more than the product written into it; a block taken here is handed back when its
    backward pass has run (or at once when no backward will), and blocks never handed back are
    simply freed with their autograd context. A few blocks at most are alive at a time."""

    def __init__(self, keep: int = 4):
        self.free: list[torch.Tensor] = []
        self.keep = keep

    def take(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        n = rows * cols
        for i, buf in enumerate(self.free):
            if buf.numel() >= n and buf.device == like.device and buf.dtype == like.dtype:
                return self.free.pop(i)[:n].view(rows, cols)
        return like.new_empty((rows, cols))

    def give(self, block: torch.Tensor) -> None:
        base = block._base if block._base is not None else block
        if base.device.type != "cpu":   # the CUDA caching allocator already reuses memory
            return
        self.free.append(base.view(-1))
        self.free.sort(key=lambda t: t.numel())
        del self.free[: max(0, len(self.free) - self.keep)]


_BLOCKS = _BlockPool()


#: anchors of an all-node contrast are padded to a multiple of this many rows, so that its
#: products take a few shapes only and may go to oneDNN (:func:`~mmrecsys.matmul.fixed_shape_products`)
ANCHOR_ROWS = 256


def _pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = -len(x) % multiple
    return x if extra == 0 else torch.cat([x, x.new_zeros((extra,) + tuple(x.shape[1:]))])


def bounded_logsumexp(a: torch.Tensor, b: torch.Tensor, temperature: float,
                      pad: int = 0) -> torch.Tensor:
    """lse_k = log Σ_j exp(a_k·b_j / τ) over the rows of ``b``, a (K,) vector, for rows of any
    norm: the products are bounded by s = max‖a_k‖ · max‖b_j‖, so :class:`_ShiftedLogSumExp`
    with that shift neither overflows nor, while 2s/τ stays below 80, underflows (one product,
    one exponential, one row sum forward; two products backward); otherwise the max-shifted
    ``torch.logsumexp``. The same value and gradients either way, to float32 rounding.

    ``pad``: the rows of ``a`` and of ``b`` are padded with zeros to multiples of ``pad`` (the
    padded columns weighted 0, the padded rows dropped), so that batch-shaped blocks take a few
    shapes only and their products are marked fixed-shape (oneDNN under ``cpu_matmul``)."""
    with torch.no_grad():
        s = float(a.norm(dim=1).max() * b.norm(dim=1).max()) if len(a) and len(b) else 0.0
    if s > 0 and 2.0 * s / temperature < 80.0:
        if pad:
            k, n = len(a), len(b)
            bp = _pad_rows(b, pad)
            w = None if len(bp) == n else torch.cat([b.new_ones(n), b.new_zeros(len(bp) - n)])
            return _ShiftedLogSumExp.apply(_pad_rows(a, pad), bp, w, float(temperature), s,
                                           True)[:k]
        return _ShiftedLogSumExp.apply(a, b, None, float(temperature), s)
    return torch.logsumexp(a @ b.T / temperature, dim=1)


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec EmbLoss [quirk]: sum of *un-squared* Frobenius norms / rows of the last argument.

    Under data parallelism the norms are of the global batch (squared sums all-reduced with
    gradients), and this process returns its 1/world share of the value.
    """
    dp = _DP.get()
    if dp is None:
        total = sum(torch.linalg.norm(e) for e in embeddings)
        return total / embeddings[-1].shape[0]
    import torch.distributed.nn.functional as dist_nn
    squares = torch.stack([e.pow(2).sum() for e in embeddings])
    squares = dist_nn.all_reduce(squares)
    return squares.sqrt().sum() / dp.global_batch / dp.world


def modality_weights(n_modalities: int, image_weight: float) -> list[float]:
    """Weights of the modalities' item graphs: β for the first modality (the image features in
    MMRec data: ``image_feat`` sorts before ``text_feat``), the rest (1 − β) shared equally;
    one modality gets 1. The reference codes have two modalities, weighted (β, 1 − β)
    (REARM's ``u/i_mm_image_weight``, FREEDOM's ``mm_image_weight``)."""
    if n_modalities == 1:
        return [1.0]
    rest = (1.0 - image_weight) / (n_modalities - 1)
    return [float(image_weight)] + [rest] * (n_modalities - 1)


def _apply(op, x: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(op, x) if torch.is_tensor(op) else op(x)


def power(op, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Â^L x: ``n_layers`` applications of the operator (``n_layers = 0`` returns ``x``)."""
    for _ in range(n_layers):
        x = _apply(op, x)
    return x


def propagate(op, x: torch.Tensor, n_layers: int, mean: bool = True,
              include_input: bool = True) -> torch.Tensor:
    """LightGCN propagation: mean (or sum) of Â^l x over l = 0..L (l = 0 iff ``include_input``).

    Accumulated layer by layer ((x + Âx) + Â²x …, then divided by the number of terms), so no
    (L+1)-fold stack is held; the result equals ``torch.stack(layers).mean(0)`` exactly.
    """
    out = x if include_input else None
    h = x
    for _ in range(n_layers):
        h = _apply(op, h)
        out = h if out is None else out + h
    if out is None:
        return torch.zeros_like(x)
    terms = n_layers + int(include_input)
    return out / terms if mean else out


class _GatherRows(torch.autograd.Function):
    """X[rows] whose backward adds the rows' gradient into the table's reusable buffer."""

    @staticmethod
    def forward(ctx, weight, rows, table):
        ctx.table = table
        ctx.save_for_backward(rows)
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        ctx.table._accumulate_grad(rows, grad)
        return None, None, None


#: bytes of feature rows gathered at a time by :meth:`FeatureTable.project` (below glibc's
#: largest mmap threshold, 32 MB, so the blocks are reused heap memory, not fresh pages)
PROJECT_BLOCK_BYTES = 4 << 20


class _ProjectRows(torch.autograd.Function):
    """Y = X[rows] Wᵀ + b, X[rows] gathered block by block (never all at once); the backward
    pass gathers the blocks again for ∂W = Gᵀ X[rows] and, for a trainable table, writes
    ∂X[rows] = G W into the table's gradient buffer."""

    @staticmethod
    def forward(ctx, weight, bias, table_weight, rows, table, block):
        out = table_weight.new_empty((len(rows), weight.shape[0]))
        w_t = weight.t()
        for s in range(0, len(rows), block):
            x = table_weight.index_select(0, rows[s:s + block])
            # full blocks have one shape; the last one's size changes with every batch
            with fixed_shape_products() if len(x) == block else contextlib.nullcontext():
                if bias is None:
                    torch.mm(x, w_t, out=out[s:s + block])
                else:
                    torch.addmm(bias, x, w_t, out=out[s:s + block])
        ctx.table, ctx.block, ctx.has_bias = table, block, bias is not None
        ctx.save_for_backward(weight, table_weight, rows)
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, table_weight, rows = ctx.saved_tensors
        need_w, need_b, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad = grad.contiguous()
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        if need_w or need_x:
            for s in range(0, len(rows), ctx.block):
                r, g = rows[s:s + ctx.block], grad[s:s + ctx.block]
                with fixed_shape_products() if len(r) == ctx.block else contextlib.nullcontext():
                    if need_w:
                        grad_w.addmm_(g.t(), table_weight.index_select(0, r))
                    if need_x:
                        ctx.table._accumulate_grad(r, g @ weight)
        return grad_w, grad_b, None, None, None, None


#: parameter -> the callable that applies the optimiser to it one block of rows at a time,
#: ``step(blocks)`` with ``blocks`` an iterable of (start, stop, gradient of rows start:stop);
#: filled by the trainer (:func:`mmrecsys.train.trainer.step_in_backward`), read by
#: :func:`project_table`
ROW_STEPS = torch.utils.weak.WeakTensorKeyDictionary()


class _TableProjection(torch.autograd.Function):
    """y = X Wᵀ + b for a trainable table X read whole; see :func:`project_table`."""

    @staticmethod
    def forward(ctx, x, weight, bias, buffers, key, row_step):
        ctx.save_for_backward(x, weight)
        ctx.buffers, ctx.key, ctx.row_step = buffers, key, row_step
        ctx.has_bias = bias is not None
        with fixed_shape_products():
            return torch.addmm(bias, x, weight.T) if bias is not None else x @ weight.T

    @staticmethod
    def backward(ctx, grad):
        with fixed_shape_products():
            return _TableProjection._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        g_w = grad.T @ x if ctx.needs_input_grad[1] else None   # before X changes
        g_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        g_x = None
        if ctx.needs_input_grad[0]:
            if ctx.row_step is not None:            # G W block by block, into the optimiser
                block = max(1, PROJECT_BLOCK_BYTES // (4 * max(1, x.shape[1])))
                buf = x.new_empty((min(block, len(x)), x.shape[1]))  # one block, reused

                def blocks():
                    for s in range(0, len(x), block):
                        e = min(s + block, len(x))
                        yield s, e, torch.mm(grad[s:e], weight, out=buf[:e - s])
                ctx.row_step(blocks())
            elif ctx.buffers is None:
                g_x = grad @ weight
            elif x.grad is None:
                buf = ctx.buffers.get(ctx.key)
                if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
                    buf = ctx.buffers[ctx.key] = torch.empty_like(x, memory_format=torch.contiguous_format)
                torch.mm(grad, weight, out=buf)
                x.grad = buf
            else:                                   # accumulating over several backward passes
                x.grad.add_(grad @ weight)
        return g_x, g_w, g_b, None, None, None


def project_table(x: torch.Tensor, linear: nn.Linear, buffers: dict | None = None,
                  key=None) -> torch.Tensor:
    """``linear(x)``, X Wᵀ + b, for a trainable table X read whole (MMRec's fine-tuned raw
    features, REARM's user and item feature tables): the same value and gradients, with X's
    gradient G W (as large as the table: 645 MB for REARM's Clothing user image table) never
    allocated afresh per step.

    - When the trainer applies the optimiser in backward (``step_in_backward``, the default),
      G W is computed a block of rows at a time and each block goes straight into the
      optimiser's update of those rows (:data:`ROW_STEPS`): the whole gradient never exists.
      X must then be read only here, once per step (checked). Once that optimiser is gone
      (the run is over), X's gradient goes back to the paths below.
    - Otherwise, with ``buffers`` (a dict owned by the model) G W is written into a buffer kept
      across steps under ``key`` and handed to ``X.grad`` (added to it when it already holds a
      gradient); without, it is returned to autograd as usual.
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return linear(x)
    row_step = ROW_STEPS.get(x)
    if row_step is not None and not row_step.read():  # its optimiser is gone (run over)
        row_step = None
    return _TableProjection.apply(x, linear.weight, linear.bias, buffers, key, row_step)


class FeatureTable(nn.Module):
    """An item feature matrix X (N, D) read by rows: fixed, or a trainable parameter.

    ``trainable=True`` is MMRec's ``nn.Embedding.from_pretrained(X, freeze=False)`` (BM3,
    FREEDOM, LATTICE, …: the optimiser fine-tunes the raw features); the parameter is a copy,
    so the dataset's arrays are never modified, and it is saved in the state dict. A fixed
    table shares the dataset's memory and is not saved (it is rebuilt from the data).

    Gradient of a trainable table read by rows (``table(rows)``): it is the dense (N, D) matrix
    autograd would produce (zero outside the rows read), but written into one buffer kept
    between steps instead of a freshly allocated one per step. On a 4096-wide table of a few
    thousand items that allocation (page faults of a ~100 MB block) costs as much as the rows'
    products. When ``weight.grad`` is None (``zero_grad(set_to_none=True)``, the trainer's)
    the buffer becomes the gradient again after the rows written since are zeroed (all of it
    if anything else modified it in place); an existing gradient is accumulated into, as
    autograd does. Reading the whole table (``table()``) uses plain autograd.

    Args:
        x: the (N, D) features (array or tensor), stored as float32.
        trainable: whether the optimiser trains the table. (default: ``True``)
    """

    def __init__(self, x, trainable: bool = True):
        super().__init__()
        t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        self.trainable = bool(trainable)
        if self.trainable:
            self.weight = nn.Parameter(t.clone())
        else:
            self.register_buffer("weight", t, persistent=False)
        self._grad: torch.Tensor | None = None   # the reusable gradient buffer
        self._grad_version = -1                  # its version after our last write
        self._written: list[torch.Tensor] = []   # rows written since it was last cleared
        self._dirty = False                      # modified by others: clear all of it

    @property
    def shape(self):
        return self.weight.shape

    def forward(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """X[rows] (all rows when ``rows`` is None)."""
        if rows is None:
            return self.weight
        if self.trainable and torch.is_grad_enabled() and self.weight.requires_grad:
            return _GatherRows.apply(self.weight, rows, self)
        return self.weight.index_select(0, rows)

    def project(self, linear: nn.Linear, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``linear(X[rows])`` (all rows when ``rows`` is None), with the gathered rows taken
        :data:`PROJECT_BLOCK_BYTES` at a time: no (len(rows), D) copy of the features is held,
        in the forward pass or for the backward one (which gathers the blocks again). The
        gradients are those of ``linear(X[rows])``: to the layer, and to X's rows when the
        table is trainable (into its gradient buffer)."""
        if rows is None:
            rows = torch.arange(self.weight.shape[0], device=self.weight.device)
        block = max(1, PROJECT_BLOCK_BYTES // (4 * max(1, self.weight.shape[1])))
        return _ProjectRows.apply(linear.weight, linear.bias, self.weight, rows, self, block)

    def _accumulate_grad(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        w, buf = self.weight, self._grad
        if w.grad is None:
            if buf is None or buf.shape != w.shape or buf.device != w.device or buf.dtype != w.dtype:
                buf = self._grad = torch.zeros_like(w)
            elif self._dirty or buf._version != self._grad_version:
                buf.zero_()
            elif self._written:
                buf.index_fill_(0, torch.unique(torch.cat(self._written)), 0.0)
            self._written, self._dirty = [], False
            w.grad = buf
        elif w.grad is buf and buf._version != self._grad_version:
            self._dirty = True                   # e.g. zero_grad(set_to_none=False), clipping
        w.grad.index_add_(0, rows, grad.to(w.grad.dtype))
        if w.grad is buf:
            self._written.append(rows)
            self._grad_version = buf._version

    def reset(self, x) -> None:
        """Restore the table to the features ``x``."""
        with torch.no_grad():
            self.weight.copy_(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)))

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, trainable={self.trainable}"
