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

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """MMRec BPRLoss: −mean log(1e-10 + σ(ŝ_ui − ŝ_uj))."""
    return -torch.log(1e-10 + torch.sigmoid(pos_scores - neg_scores)).mean()


def bpr_logsigmoid(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """−mean logsigmoid(ŝ_ui − ŝ_uj) (FREEDOM/LATTICE/MGCN/MMHCL style)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


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
    candidate). Written as logsumexp − positive (the same value without exp overflow).
    ``counts``: the rows are the *distinct* nodes of the batch and ``counts`` their
    multiplicities; then the result is exactly the loss over the batch with its repeats,
    Σ_k n_k [log Σ_j n_j exp(c_kj/τ) − c_kk/τ] / Σ_k n_k, at K² instead of B² cost."""
    a = F.normalize(view1, dim=1)
    b = F.normalize(view2, dim=1)
    pos = (a * b).sum(1) / temperature
    logits = a @ b.T / temperature
    if counts is None:
        return (torch.logsumexp(logits, dim=1) - pos).mean()
    w = counts.to(logits.dtype)
    lse = torch.logsumexp(logits + w.log()[None, :], dim=1)
    return (w * (lse - pos)).sum() / w.sum()


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec EmbLoss [quirk]: sum of *un-squared* Frobenius norms / rows of the last argument."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]


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
