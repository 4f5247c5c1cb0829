"""Models: one module per model; importing this package registers them all."""
from .base import MODELS, Recommender, available_models, get_model_class

__all__ = ["MODELS", "Recommender", "available_models", "get_model_class"]
