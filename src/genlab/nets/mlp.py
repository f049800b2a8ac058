"""Fully connected encoder and decoder for small images (the 8x8 digits): a flattened image through
hidden layers. On 64 pixels an MLP learns as well as a convolutional net at a fraction of the cost
per step (measured in docs/vae.md, "VAE vs pytorch/examples"); use `ConvEncoder`/`ConvDecoder` from
28x28 up, where weight sharing pays.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _stack(widths: list[int]) -> list[nn.Module]:
    """Linear + SiLU for each consecutive pair of `widths` (SiLU: smooth, no dead units)."""
    layers: list[nn.Module] = []
    for w_in, w_out in itertools.pairwise(widths):
        layers += [nn.Linear(w_in, w_out), nn.SiLU()]
    return layers


class MLPEncoder(nn.Module):
    """Image `(B, C, H, W)` -> features `(B, out_features)`."""

    def __init__(self, in_channels: int, image_size: int, hidden_features: list[int], out_features: int) -> None:
        super().__init__()
        if not hidden_features:
            raise ValueError("hidden_features needs at least one width, e.g. [400]")
        pixels = in_channels * image_size * image_size
        self.body = nn.Sequential(nn.Flatten(), *_stack([pixels, *hidden_features]))
        self.head = nn.Linear(hidden_features[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class MLPDecoder(nn.Module):
    """Vector `(B, in_features)` -> image-shaped output `(B, out_channels, H, W)` (unbounded)."""

    def __init__(self, in_features: int, out_channels: int, image_size: int, hidden_features: list[int]) -> None:
        super().__init__()
        if not hidden_features:
            raise ValueError("hidden_features needs at least one width, e.g. [400]")
        widths = list(reversed(hidden_features))
        self.shape = (out_channels, image_size, image_size)
        self.body = nn.Sequential(*_stack([in_features, *widths]))
        self.head = nn.Linear(widths[-1], out_channels * image_size * image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z)).view(z.shape[0], *self.shape)
