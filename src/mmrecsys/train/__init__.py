"""Training: samplers, the trainer loop with early stopping, run directories."""
from .trainer import fit, build_model, resolve_device, seed_everything

__all__ = ["fit", "build_model", "resolve_device", "seed_everything"]
