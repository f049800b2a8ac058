"""LightningModules, one per family: objective, optimizers, logging and `sample(n)`."""

from genlab.models.diffusion import DiffusionModule
from genlab.models.flow import FlowModule
from genlab.models.gan import GANModule
from genlab.models.vae import VAEModule

__all__ = ["DiffusionModule", "FlowModule", "GANModule", "VAEModule"]
