"""genlab: a PyTorch Lightning template for generative models."""

from genlab.run import load_model

__all__ = ["load_model"]
