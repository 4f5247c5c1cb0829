"""Building blocks shared by the models: losses and propagation (protocol §5.0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """MMRec BPRLoss: −mean log(1e-10 + σ(ŝ_ui − ŝ_uj))."""
    return -torch.log(1e-10 + torch.sigmoid(pos_scores - neg_scores)).mean()


def bpr_logsigmoid(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """−mean logsigmoid(ŝ_ui − ŝ_uj) (FREEDOM/LATTICE/MGCN/MMHCL style)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def emb_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec EmbLoss [quirk]: sum of *un-squared* Frobenius norms / rows of the last argument."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]


def propagate(adj, x: torch.Tensor, n_layers: int, mean: bool = True,
              include_input: bool = True) -> torch.Tensor:
    """LightGCN propagation: mean (or sum) of Â^l x over l = 0..L (l = 0 iff include_input).

    ``adj`` is a :class:`~mmrecsys.graphs.SparseGraph` (fast) or a torch sparse tensor.
    """
    layers = [x] if include_input else []
    h = x
    for _ in range(n_layers):
        h = adj(h) if isinstance(adj, torch.nn.Module) else torch.sparse.mm(adj, h)
        layers.append(h)
    out = torch.stack(layers, 0)
    return out.mean(0) if mean else out.sum(0)
