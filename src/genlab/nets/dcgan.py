"""DCGAN-style generator and discriminator (Radford et al. 2016) for small images, optionally
class-conditional.

Each stage doubles (G) or halves (D) the resolution, so `image_size` must be divisible by
2 ** len(hidden_channels): 8x8 digits with two stages (2 -> 4 -> 8), 28x28 with two (7 -> 14 -> 28),
32x32 with three (4 -> 8 -> 16 -> 32).

- G: latent `(B, latent_dim)` (concatenated with a label embedding when conditional) -> linear to
  the bottom feature map -> [norm, ReLU, 4x4 transposed conv] per stage -> 3x3 conv -> tanh.
- D: image -> 3x3 conv -> [LeakyReLU(0.2), 4x4 stride-2 conv] per stage -> flatten to h -> linear,
  plus, when conditional, the projection <embed(y), h> (Miyato & Koyama 2018, eq. 3). No batch
  norm in D: it couples the examples of a batch, which breaks the per-example gradient penalties
  (Gulrajani et al. 2017, sec. 4) and differs between real and fake halves.
- `patch=True` makes D a PatchGAN (Isola et al. 2017, sec. 3.2.2; the autoencoder's discriminator as
  in VQGAN): a 3x3 conv on the last feature map instead of flatten + linear, one logit per patch
  `(B, H / 2**stages, W / 2**stages)`. The GAN losses average whatever shape they get. Unconditional.
- `spectral_norm` (Miyato et al. 2018) divides each weight by its largest singular value, keeping
  D close to 1-Lipschitz: the cheap stabiliser for small data.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from genlab.nets.conditioning import LabelEmbedding


def _bottom(image_size: int, stages: int) -> int:
    if image_size % 2**stages:
        raise ValueError(f"image_size {image_size} is not divisible by 2**{stages}: use fewer hidden_channels")
    return image_size // 2**stages


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind is None:
        return nn.Identity()
    raise ValueError(f"norm must be batch, group or null, got {kind!r}")


class DCGANGenerator(nn.Module):
    """Latent `(B, latent_dim)` (and labels `(B,)` when conditional) -> images `(B, C, H, W)` in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        image_size: int,
        hidden_channels: list[int],
        num_classes: int | None = None,
        embed_dim: int = 32,
        norm: Literal["batch", "group"] | None = "batch",
    ) -> None:
        """`hidden_channels`: widths from the bottom up (widest first). `num_classes`: None for an
        unconditional G, else the label embedding's size (set by the GAN module)."""
        super().__init__()
        self.bottom = _bottom(image_size, len(hidden_channels))
        self.embed = LabelEmbedding(num_classes, embed_dim) if num_classes else None
        in_features = latent_dim + (embed_dim if self.embed is not None else 0)
        self.stem = nn.Linear(in_features, hidden_channels[0] * self.bottom**2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(hidden_channels, [*hidden_channels[1:], hidden_channels[-1]], strict=True):
            layers += [_norm(norm, c_in), nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        layers += [
            _norm(norm, hidden_channels[-1]),
            nn.ReLU(),
            nn.Conv2d(hidden_channels[-1], out_channels, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers, nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (B, latent_dim + embed_dim)
        h = self.stem(z).view(z.shape[0], -1, self.bottom, self.bottom)  # (B, C_bottom, b, b)
        return self.body(h)


class DCGANDiscriminator(nn.Module):
    """Images `(B, C, H, W)` (and labels `(B,)` when conditional) -> one logit per image `(B,)`, or
    with `patch=True` one per patch `(B, H / 2**stages, W / 2**stages)`."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        hidden_channels: list[int],
        num_classes: int | None = None,
        spectral_norm: bool = False,
        patch: bool = False,
    ) -> None:
        """`hidden_channels`: widths from the input down (narrowest first)."""
        super().__init__()
        bottom = _bottom(image_size, len(hidden_channels))
        if patch and num_classes:
            raise ValueError("a patch discriminator (patch=true) is unconditional: set num_classes=null")
        self.patch = patch
        sn = apply_spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, hidden_channels[0], 3, padding=1))]
        widths = [hidden_channels[0], *hidden_channels]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.LeakyReLU(0.2), sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))]
        if patch:  # (B, C_last, b, b) -> (B, 1, b, b): each logit sees one receptive field
            self.features = nn.Sequential(*layers, nn.LeakyReLU(0.2))
            self.head = sn(nn.Conv2d(widths[-1], 1, 3, padding=1))
            self.embed = None
            return
        self.features = nn.Sequential(*layers, nn.LeakyReLU(0.2), nn.Flatten())
        num_features = widths[-1] * bottom * bottom
        self.head = sn(nn.Linear(num_features, 1))
        # Projection: the label's row of the table is dotted with h. The null row stays unused here.
        self.embed = LabelEmbedding(num_classes, num_features) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.table.weight, std=num_features**-0.5)  # projection starts near 0
            if spectral_norm:
                apply_spectral_norm(self.embed.table)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, num_features), or (B, C_last, b, b) for patches
        out = self.head(h).squeeze(1)  # (B,), or (B, b, b) for patches
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            out = out + (self.embed(labels).to(h.dtype) * h).sum(1)
        return out
