"""The convolutional encoder and decoder of a latent-diffusion first stage (Rombach et al. 2022, LDM,
arXiv:2112.10752, sec. 3 and app. G; the layout of CompVis/latent-diffusion's `Encoder`/`Decoder`).

An image `(B, C, H, W)` becomes a latent `(B, c, H/f, W/f)` with a downsampling factor `f` (a power
of 2) and `c` latent channels, e.g. 28x28x1 -> 7x7x4 with f=4, or 8x8x1 -> 2x2x4.

- Encoder: 3x3 conv -> per resolution level: `num_res_blocks` ResNet blocks, then a stride-2 conv
  (all levels but the last) -> middle: ResNet block, self-attention, ResNet block -> GroupNorm,
  SiLU, 3x3 conv to `c` channels (2c with `double_latent`: the mean and log-variance of the KL
  regulariser's Gaussian).
- Decoder: the mirror, with `num_res_blocks + 1` blocks per level and nearest-neighbour x2
  upsampling followed by a 3x3 conv (no transposed convs: no checkerboard artefacts).

`hidden_channels` gives one width per resolution level, so it has log2(f) + 1 entries.
GroupNorm (32 groups in LDM, fewer when 32 does not divide a width) and SiLU throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_downsampling(image_size: int, downsample_factor: int, levels: int) -> int:
    """The latent's side, `image_size // downsample_factor`; a ValueError naming the argument when f is
    not a power of 2, does not divide the image size, or does not match the number of widths."""
    f = downsample_factor
    if f < 1 or f & (f - 1):
        raise ValueError(f"downsample_factor must be a power of 2 (1, 2, 4, 8...), got {f}")
    if image_size % f:
        raise ValueError(f"downsample_factor {f} does not divide image_size {image_size}")
    if levels != int(math.log2(f)) + 1:
        raise ValueError(
            f"hidden_channels has {levels} widths but downsample_factor {f} needs {int(math.log2(f)) + 1} "
            "(one per resolution: log2(f) + 1)"
        )
    return image_size // f


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)  # LDM: 32 groups, eps 1e-6


class ResNetBlock(nn.Module):
    """Norm, SiLU, 3x3 conv, twice, plus the input (1x1 conv when the width changes); `(B, C_in, h, w)`
    -> `(B, C_out, h, w)`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the h*w positions, with a residual; `(B, C, h, w)` kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # each (B, h*w, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h*w, C)
        return x + self.out(y.transpose(1, 2).reshape(b, c, h, w))


def _middle(channels: int, attention: bool) -> nn.Sequential:
    return nn.Sequential(
        ResNetBlock(channels, channels),
        SelfAttention(channels) if attention else nn.Identity(),
        ResNetBlock(channels, channels),
    )


class ResNetEncoder(nn.Module):
    """Image `(B, in_channels, H, W)` -> latent `(B, latent_channels, H/f, W/f)` (2x the channels with
    `double_latent`: mean and log-variance, stacked along channels)."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        latent_channels: int,
        downsample_factor: int,
        hidden_channels: list[int],
        num_res_blocks: int = 1,
        mid_attention: bool = True,
        double_latent: bool = False,
    ) -> None:
        """`double_latent` is set by the autoencoder module for the KL regulariser."""
        super().__init__()
        check_downsampling(image_size, downsample_factor, len(hidden_channels))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden_channels[0], 3, padding=1)]
        width = hidden_channels[0]
        for level, level_width in enumerate(hidden_channels):
            for _ in range(num_res_blocks):
                layers.append(ResNetBlock(width, level_width))
                width = level_width
            if level < len(hidden_channels) - 1:
                # LDM pads right and bottom by one, then a 3x3 stride-2 conv: (B, C, s, s) -> (B, C, s/2, s/2)
                layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(width, width, 3, stride=2)]
        layers += [_middle(width, mid_attention), _norm(width), nn.SiLU()]
        layers.append(nn.Conv2d(width, latent_channels * (2 if double_latent else 1), 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResNetDecoder(nn.Module):
    """Latent `(B, latent_channels, H/f, W/f)` -> image-shaped output `(B, out_channels, H, W)`
    (unbounded: the autoencoder clamps to [-1, 1] when it decodes for use)."""

    def __init__(
        self,
        out_channels: int,
        image_size: int,
        latent_channels: int,
        downsample_factor: int,
        hidden_channels: list[int],
        num_res_blocks: int = 1,
        mid_attention: bool = True,
    ) -> None:
        """`hidden_channels` as the encoder's (from the image down): the decoder runs them in reverse."""
        super().__init__()
        check_downsampling(image_size, downsample_factor, len(hidden_channels))
        width = hidden_channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), _middle(width, mid_attention)]
        for level in reversed(range(len(hidden_channels))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResNetBlock(width, hidden_channels[level]))
                width = hidden_channels[level]
            if level > 0:  # (B, C, s, s) -> (B, C, 2s, 2s)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
        layers += [_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """The output conv's weight: VQGAN's adaptive GAN weight compares gradients here."""
        return self.body[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class DiagonalGaussian:
    """The KL regulariser's posterior q(z|x) = N(mean, diag(exp(logvar))) from the encoder's `(B, 2c, h, w)`
    output (LDM's `DiagonalGaussianDistribution`), and its KL to N(0, I)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.float().chunk(2, dim=1)  # each (B, c, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)  # LDM's clamp: exp() stays finite in fp32

    def sample(self) -> torch.Tensor:
        return self.mean + (0.5 * self.logvar).exp() * torch.randn_like(self.mean)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over the latent's elements: `(B,)` nats."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)
