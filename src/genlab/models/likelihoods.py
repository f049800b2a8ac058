"""Decoder likelihoods p(x | z) for images in [-1, 1]: the decoder's output parameterises them.

Kept apart from the VAE so other families (and tests) can use the same, checked math.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    """A Gaussian with fixed `sigma` integrated over each of 256 intensity bins (Ho et al. 2020,
    eq. 13): a proper distribution over 8-bit images, so -log p in bits/dim compares with the
    literature."""

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
