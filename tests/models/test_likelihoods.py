from __future__ import annotations

import math

import torch

from genlab.models.likelihoods import Bernoulli, DiscretizedGaussian


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
