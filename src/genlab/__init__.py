"""genlab: a PyTorch Lightning template for generative models."""

from genlab.checkpoints import load_model

__all__ = ["load_model"]
