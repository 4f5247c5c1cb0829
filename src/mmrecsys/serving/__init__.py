"""HTTP serving of a trained model (FastAPI), a thin layer over :class:`mmrecsys.TrainedModel`."""
from .app import create_app

__all__ = ["create_app"]
