"""Building blocks shared by the models: losses and propagation.

Losses follow MMRec (``enoche/MMRec`` ``src/common/loss.py``: ``BPRLoss``, ``EmbLoss``) or the
LATTICE family (``CRIPAC-DIG/LATTICE`` ``codes/main.py``, ``bpr_loss``). Propagation is written
once for every model, as PyG's ``LGConv`` serves all of its LightGCN-style models:

* :func:`power` applies a fixed operator L times, Â^L x (MMHCL's hypergraph branches, REARM's
  homographs, LGMRec's modality graph embedding);
* :func:`propagate` is LightGCN's layer combination, the mean of Â^l x over l = 0..L (He et al.,
  "LightGCN", SIGIR 2020, Eq. 4 with α_l = 1/(L+1); LightGCN, LGMRec, MMHCL, REARM).

An operator is a :class:`~mmrecsys.graphs.SparseGraph` or any module computing A x (e.g. a
:class:`~mmrecsys.graphs.hypergraph.TorchHypergraph`), or a torch sparse tensor.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def _apply(op, x: torch.Tensor) -> torch.Tensor:
    return op(x) if isinstance(op, torch.nn.Module) else torch.sparse.mm(op, x)


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
