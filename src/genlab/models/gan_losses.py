"""GAN objectives and gradient penalties as small functions of the discriminator's outputs.

Every loss takes raw discriminator outputs (logits, or critic values for WGAN) `(B,)` and returns
a scalar, computed in fp32 whatever the autocast dtype. Names:

- `nonsaturating` (Goodfellow et al. 2014, sec. 3): D minimises softplus(-D(x)) + softplus(D(G(z))),
  the binary cross-entropy with logits; G minimises softplus(-D(G(z))) = -log sigmoid(D(G(z))),
  which keeps G's gradient alive when D rejects its samples.
- `hinge` (Lim & Ye 2017; Miyato et al. 2018): D minimises relu(1 - D(x)) + relu(1 + D(G(z)));
  G minimises -D(G(z)).
- `wgan` (Arjovsky et al. 2017): the critic minimises D(G(z)) - D(x); G minimises -D(G(z)). Needs a
  Lipschitz critic: pair it with `gradient_penalty` (WGAN-GP, Gulrajani et al. 2017, lambda = 10)
  or spectral normalisation.

Penalties run their own discriminator forward with autocast off: a gradient of a gradient in
bf16/fp16 loses most of its bits (Lightning-AI/pytorch-lightning#12600; FIELD_NOTES §4.4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from genlab.errors import ConfigError

Critic = Callable[[torch.Tensor], torch.Tensor]  # images (B, C, H, W) -> outputs (B,)


def d_nonsaturating(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()


def g_nonsaturating(fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake.float()).mean()


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()


def d_wasserstein(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return fake.float().mean() - real.float().mean()


def g_critic(fake: torch.Tensor) -> torch.Tensor:
    """G's loss for hinge and WGAN: raise the critic's value of its samples."""
    return -fake.float().mean()


class GANLoss(NamedTuple):
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (D(real), D(fake)) -> scalar
    generator: Callable[[torch.Tensor], torch.Tensor]  # D(fake) -> scalar


LOSSES = {
    "nonsaturating": GANLoss(d_nonsaturating, g_nonsaturating),
    "hinge": GANLoss(d_hinge, g_critic),
    "wgan": GANLoss(d_wasserstein, g_critic),
}


def gan_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ConfigError(f"model.loss: unknown GAN loss '{name}'; use one of {', '.join(LOSSES)}")
    return LOSSES[name]


def _input_gradient(critic: Critic, x: torch.Tensor) -> torch.Tensor:
    """d sum(critic(x)) / dx in fp32, kept in the graph so the penalty trains the critic; `(B, C*H*W)`."""
    x = x.detach().float().requires_grad_(True)
    device_type = x.device.type if x.device.type in ("cuda", "cpu", "mps", "xpu") else "cpu"
    with torch.autocast(device_type, enabled=False):
        out = critic(x).float()
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): E[(||grad D(x_hat)||_2 - 1)^2] at random points x_hat
    on the lines between real and fake samples. Multiply by lambda (10 in the paper)."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)
    x_hat = eps * real.detach().float() + (1 - eps) * fake.detach().float()
    grad = _input_gradient(critic, x_hat)
    return (grad.norm(2, dim=1) - 1).square().mean()


def r1_penalty(critic: Critic, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9): E[||grad D(x)||^2] on real data; the paper's term is
    gamma / 2 times this."""
    return _input_gradient(critic, real).square().sum(1).mean()
