"""LightningModules, one per family: objective, optimizers, logging and `sample(n)`."""

from genlab.models.vae import VAEModule

__all__ = ["VAEModule"]
