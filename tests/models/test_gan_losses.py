"""GAN losses and penalties against values worked out by hand on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.gan_losses import gan_loss, gradient_penalty, r1_penalty

REAL = torch.tensor([1.0, -1.0])
FAKE = torch.tensor([0.0, 2.0])
# softplus(x) = ln(1 + e^x): softplus(-1) = 0.313262, softplus(1) = 1.313262, softplus(0) = 0.693147,
# softplus(2) = 2.126928, softplus(-2) = 0.126928


def test_nonsaturating_loss() -> None:
    loss = gan_loss("nonsaturating")
    # D: mean(softplus(-real)) + mean(softplus(fake)) = (0.313262 + 1.313262) / 2 + (0.693147 + 2.126928) / 2
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(2.223300, abs=1e-5)
    # G: mean(softplus(-fake)) = (0.693147 + 0.126928) / 2
    assert loss.generator(FAKE).item() == pytest.approx(0.410038, abs=1e-5)


def test_hinge_loss() -> None:
    loss = gan_loss("hinge")
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # D: mean(relu(1 - [2, 0.5])) + mean(relu(1 + [-2, 0.5])) = mean(0, 0.5) + mean(0, 1.5) = 0.25 + 0.75
    assert loss.discriminator(real, fake).item() == pytest.approx(1.0)
    assert loss.generator(fake).item() == pytest.approx(0.75)  # -mean(fake)


def test_wasserstein_loss() -> None:
    loss = gan_loss("wgan")
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert loss.discriminator(real, fake).item() == pytest.approx(-0.75 - 1.25)  # mean(fake) - mean(real)
    assert loss.generator(fake).item() == pytest.approx(0.75)


def test_losses_are_fp32_for_low_precision_logits() -> None:
    for name in ("nonsaturating", "hinge", "wgan"):
        assert gan_loss(name).discriminator(REAL.bfloat16(), FAKE.bfloat16()).dtype == torch.float32


def test_unknown_loss_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.loss.*'minimax'.*nonsaturating, hinge, wgan"):
        gan_loss("minimax")


def _linear_critic(scale: float):
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4)
    w = scale * w / w.norm()  # ||grad_x (w . x)|| = scale everywhere
    return lambda x: (x * w).flatten(1).sum(1)


def test_gradient_penalty_is_zero_for_a_unit_gradient_linear_critic() -> None:
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    assert gradient_penalty(_linear_critic(1.0), real, fake).item() == pytest.approx(0.0, abs=1e-10)
    assert gradient_penalty(_linear_critic(3.0), real, fake).item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2


def test_r1_is_zero_for_a_constant_critic_and_the_squared_slope_for_a_linear_one() -> None:
    real = torch.randn(8, 1, 4, 4)
    constant = lambda x: x.flatten(1).sum(1) * 0 + 5.0  # noqa: E731
    assert r1_penalty(constant, real).item() == 0.0
    assert r1_penalty(_linear_critic(3.0), real).item() == pytest.approx(9.0, rel=1e-5)


def test_penalties_run_in_fp32_under_autocast_and_train_the_critic() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    critic = lambda x: net(x).squeeze(1)  # noqa: E731
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    torch.manual_seed(1)
    reference = gradient_penalty(critic, real, fake)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        under_autocast = gradient_penalty(critic, real, fake)
        r1 = r1_penalty(critic, real)
    assert under_autocast.dtype == r1.dtype == torch.float32
    assert under_autocast.item() == reference.item()  # not a bf16 approximation
    r1.backward()  # create_graph: the penalty's gradient reaches the critic's weights
    assert net[1].weight.grad is not None and net[1].weight.grad.abs().sum() > 0
