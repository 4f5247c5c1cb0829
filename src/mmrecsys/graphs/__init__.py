"""Sparse graphs shared by the models: adjacency and normalisation, kNN, hypergraphs, caching."""
from .adjacency import (SparseGraph, binarize, bipartite_adjacency, elementwise_max, inv_power,
                        normalized_adjacency, row_normalize, sym_normalize, to_torch_sparse)
from .cache import GraphCache
from .knn import (current_knn_settings, faiss_available, kmeans, knn_adjacency, knn_graph,
                  knn_recall, knn_settings, knn_to_csr)
from .learned import EdgeList

__all__ = ["SparseGraph", "binarize", "bipartite_adjacency", "inv_power", "normalized_adjacency",
           "row_normalize", "sym_normalize", "to_torch_sparse", "knn_graph", "knn_to_csr",
           "knn_adjacency", "elementwise_max", "EdgeList",
           "knn_settings", "current_knn_settings", "kmeans", "knn_recall", "faiss_available", "GraphCache"]
