from __future__ import annotations

import math

import torch

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.models.likelihoods import (
    Bernoulli,
    DiscretizedGaussian,
    bits_per_dim,
    dequantize,
    dequantized_nll,
    quantize,
)


def test_discretized_gaussian_is_a_distribution_over_the_256_levels() -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255 * 2 - 1  # every 8-bit value, in [-1, 1]
    for mean in (-1.0, -0.3, 0.0, 0.77, 1.0):
        for sigma in (0.02, 0.1, 0.5):
            log_p = DiscretizedGaussian(sigma).log_prob(torch.full((256, 1), mean), levels.view(256, 1))
            assert math.isclose(log_p.exp().sum().item(), 1.0, abs_tol=1e-4), (mean, sigma)


def test_discretized_gaussian_prefers_the_mean_and_stays_finite_far_away() -> None:
    lik = DiscretizedGaussian(0.05)
    x = torch.tensor([[0.2]])
    near, far = lik.log_prob(torch.tensor([[0.2]]), x), lik.log_prob(torch.tensor([[-0.9]]), x)
    assert near > far and torch.isfinite(far).all()


def test_bernoulli_matches_binary_cross_entropy() -> None:
    logits, x = torch.randn(4, 1, 3, 3), torch.rand(4, 1, 3, 3) * 2 - 1
    p, target = torch.sigmoid(logits), (x + 1) / 2
    expected = (target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(Bernoulli().log_prob(logits, x), expected, atol=1e-5)
    assert Bernoulli().mean(torch.zeros(1)).item() == 0.0  # p = 0.5 is the middle of [-1, 1]


def test_bits_per_dim_of_a_uniform_density_is_log2_levels_exactly() -> None:
    """The convention: a uniform density on the dequantized [0, 1)^dims scores log2(levels)."""
    for levels in (2, 17, 256):
        x = level_grid(levels).view(1, 1, 1, levels)
        y = dequantize(x, levels)
        assert y.min() >= 0 and y.max() < 1
        assert torch.equal(quantize(y, levels), x)  # each value stays in its own bin
        log_density = torch.zeros(1, dtype=torch.float64)  # uniform on [0, 1)^dims
        bpd = bits_per_dim(dequantized_nll(log_density, levels, levels), levels)
        assert math.isclose(bpd.item(), math.log2(levels), rel_tol=1e-12)  # exact up to float64 rounding


def test_discretized_gaussian_on_the_digits_17_levels_is_a_distribution() -> None:
    x = level_grid(17).view(17, 1)
    log_p = DiscretizedGaussian(0.2, bins=17).log_prob(torch.full((17, 1), 0.1), x)
    assert math.isclose(log_p.exp().sum().item(), 1.0, abs_tol=1e-5)


def test_vae_bpd_follows_the_data_levels() -> None:
    """The VAE's val/bpd is measured on the data's grid: 17 levels for the digits, 256 for MNIST."""
    digits = instantiate(compose(["model=vae", "model.likelihood=discretized_gaussian"]).model)
    mnist = instantiate(compose(["model=vae", "data=mnist", "model.likelihood=discretized_gaussian"]).model)
    assert digits.likelihood.bins == 17 and mnist.likelihood.bins == 256
    # A distribution over the 17 digit levels: the mass of every level sums to one, so -log2 of it per
    # pixel is bits/dim on the convention's grid (a 256-bin likelihood would leave most mass between levels).
    x = level_grid(17).view(17, 1)
    log_p = digits.likelihood.log_prob(torch.full((17, 1), -0.4), x)
    assert math.isclose(log_p.exp().sum().item(), 1.0, abs_tol=1e-5)
    assert mnist.likelihood.log_prob(torch.full((17, 1), -0.4), x).exp().sum() < 0.5


def level_grid(levels: int) -> torch.Tensor:
    return torch.arange(levels, dtype=torch.float32) / (levels - 1) * 2 - 1
