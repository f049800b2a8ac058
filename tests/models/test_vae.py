from __future__ import annotations

import torch

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.models import VAEModule


def _vae(*overrides: str) -> VAEModule:
    return instantiate(compose(["model=vae", *overrides]).model)


def test_sample_shape_and_range() -> None:
    for likelihood in ("bernoulli", "discretized_gaussian"):
        samples = _vae(f"model.likelihood={likelihood}").sample(16)
        assert samples.shape == (16, 1, 8, 8)
        assert samples.min() >= -1 and samples.max() <= 1


def test_importance_weighted_nll_is_tighter_than_the_elbo() -> None:
    torch.manual_seed(0)
    vae = _vae()
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    recon, kl = vae.loss_terms(x)
    nll = vae.importance_weighted_nll(x, k=64)
    assert nll.mean() < (recon + kl).mean()


def test_kl_warmup_ramps_to_beta() -> None:
    vae = _vae("model.kl_warmup_steps=100", "model.beta=2.0")
    assert vae.kl_weight() == 2.0 * 1 / 100  # global_step is 0 before training
