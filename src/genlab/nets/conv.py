"""Convolutional encoder and decoder for small images (8x8 digits up to 64x64 folders).

Each stage halves (encoder) or doubles (decoder) the resolution, so `image_size` must be
divisible by 2 ** len(hidden_channels).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _check_size(image_size: int, stages: int) -> int:
    if image_size % 2**stages:
        raise ValueError(f"image_size {image_size} is not divisible by 2**{stages}: use fewer hidden_channels")
    return image_size // 2**stages


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)  # GroupNorm: batch-size independent, no DDP sync


class ConvEncoder(nn.Module):
    """Image `(B, C, H, W)` -> features `(B, out_features)`."""

    def __init__(self, in_channels: int, image_size: int, hidden_channels: list[int], out_features: int) -> None:
        super().__init__()
        bottom = _check_size(image_size, len(hidden_channels))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden_channels[0], 3, padding=1)]
        widths = [hidden_channels[0], *hidden_channels]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * bottom * bottom, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """Vector `(B, in_features)` -> image-shaped output `(B, out_channels, H, W)` (unbounded)."""

    def __init__(self, in_features: int, out_channels: int, image_size: int, hidden_channels: list[int]) -> None:
        super().__init__()
        self.bottom = _check_size(image_size, len(hidden_channels))
        widths = list(reversed(hidden_channels))
        self.stem = nn.Linear(in_features, widths[0] * self.bottom * self.bottom)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, [*widths[1:], widths[-1]], strict=True):
            layers += [_norm(c_in), nn.SiLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z).view(z.shape[0], -1, self.bottom, self.bottom)  # (B, C_bottom, h, w)
        return self.body(h)
