"""A small HTTP service answering top-K recommendations from a run directory."""
from .app import Recommender as RunRecommender, create_app

__all__ = ["RunRecommender", "create_app"]
