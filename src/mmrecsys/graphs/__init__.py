"""Sparse graph construction shared by the models: bipartite adjacency, kNN, caching."""
from .adjacency import SparseGraph, bipartite_adjacency, row_normalize, sym_normalize, to_torch_sparse
from .knn import knn_graph
from .cache import GraphCache

__all__ = ["SparseGraph", "row_normalize", "bipartite_adjacency", "sym_normalize", "to_torch_sparse", "knn_graph", "GraphCache"]
