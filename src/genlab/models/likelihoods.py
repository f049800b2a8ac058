"""Likelihoods of images in [-1, 1] and the project's one bits/dim convention.

The convention (docs/evaluation.md, "Bits per dimension"): an image data module declares `levels`, the number
of intensity levels its data has (digits 17, 8-bit images 256), and pixel values sit on the grid
x = k / (levels - 1) * 2 - 1, k = 0..levels-1. Every family reports

    bits/dim = -log2 P(x) / dims

for that discrete P. A discrete likelihood (`DiscretizedGaussian`) gives P directly. A continuous
density (a flow) is trained on uniformly dequantized data y = (k + u) / levels, u ~ U[0, 1)^dims, in
[0, 1)^dims (Theis et al. 2016, sec. 3.1; Ho et al. 2019, eq. 2): each level is a bin of width
1 / levels, so

    -log P(x) <= E_u[-log p(y)] + dims * log(levels)          (`dequantized_nll`)

and the flow's bits/dim is an upper bound on the discrete one, in the same units. A uniform density
on [0, 1)^dims gives exactly log2(levels) bits/dim. The decoder likelihoods p(x | z) below are
kept apart from the VAE so other families (and tests) can use the same, checked math.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bits_per_dim(nll_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """-log P(x) in nats (any shape) to bits per dimension."""
    return nll_nats / (dims * math.log(2))


def level_index(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Images in [-1, 1] on the grid of `levels` to their integer levels k in 0..levels-1 (same shape)."""
    return ((x + 1) / 2 * (levels - 1)).round().clamp(0, levels - 1)


def dequantize(x: torch.Tensor, levels: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1] on the `levels` grid to y = (k + u) / levels in [0, 1), u ~ U[0, 1) (or the
    given `noise` in [0, 1), e.g. from a variational dequantizer)."""
    u = torch.rand_like(x) if noise is None else noise
    return (level_index(x, levels) + u) / levels


def quantize(y: torch.Tensor, levels: int) -> torch.Tensor:
    """The inverse of `dequantize`: y in [0, 1) (clamped) to the image on the grid, in [-1, 1]."""
    k = (y * levels).floor().clamp(0, levels - 1)
    return k / (levels - 1) * 2 - 1


def dequantized_nll(log_density: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """-log P(x) in nats (an upper bound, see the module docstring) from the log density of the
    dequantized y in [0, 1)^dims: each of the dims values lies in a bin of width 1 / levels."""
    return -log_density + dims * math.log(levels)


class Bernoulli:
    """Pixel intensity in [0, 1] as a Bernoulli probability; the decoder gives logits.

    The classic VAE choice: crisp samples. A true likelihood only for binary images, so its NLL is
    reported in nats and not as bits/dim.
    """

    discrete = False

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example log p(x | z), summed over pixels: `(B,)`."""
        target = (x + 1) / 2
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) * 2 - 1


class DiscretizedGaussian:
    """A Gaussian with fixed `sigma` integrated over each of `bins` intensity bins (Ho et al. 2020,
    eq. 13): a proper distribution over images with that many levels (the data's `levels`: 17 for
    the digits, 256 for 8-bit images), so -log p in bits/dim follows the project's convention."""

    discrete = True

    def __init__(self, sigma: float = 0.1, bins: int = 256) -> None:
        self.log_sigma, self.half_bin, self.bins = math.log(sigma), 1.0 / (bins - 1), bins

    def log_prob(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = torch.round((x + 1) / 2 * (self.bins - 1)) / (self.bins - 1) * 2 - 1  # snap to the bin centre
        inv_sigma = math.exp(-self.log_sigma)
        upper = (x - mean + self.half_bin) * inv_sigma
        lower = (x - mean - self.half_bin) * inv_sigma
        # Bin mass CDF(a) - CDF(b), computed in the tail where both CDFs are small (no cancellation):
        # log CDF(a) + log(1 - exp(log CDF(b) - log CDF(a))).
        flip = (upper + lower) > 0
        a, b = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
        log_cdf_a = torch.special.log_ndtr(a)
        log_mid = log_cdf_a + torch.log1p(-torch.exp(torch.special.log_ndtr(b) - log_cdf_a).clamp(max=1 - 1e-7))
        first_bin, last_bin = x < -1 + self.half_bin, x > 1 - self.half_bin  # open-ended edge bins
        log_p = torch.where(
            first_bin, torch.special.log_ndtr(upper), torch.where(last_bin, torch.special.log_ndtr(-lower), log_mid)
        )
        return log_p.flatten(1).sum(1)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clamp(-1, 1)


LIKELIHOODS = {"bernoulli": Bernoulli, "discretized_gaussian": DiscretizedGaussian}


def make_likelihood(name: str, **kwargs: float) -> Bernoulli | DiscretizedGaussian:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{name}': choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](**kwargs)
