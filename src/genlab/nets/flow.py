"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039): a multi-scale normalizing flow for images.

Every layer is a bijection with the same two-way interface, and the log-determinant bookkeeping
lives in it, so the whole flow's log|det J| is the sum of its layers' (the tests check the sum
against autograd's Jacobian):

    forward(x) -> (y, log_det)    data side to latent side, log_det `(B,)` = log|det dy/dx|
    inverse(y) -> x

`Glow` maps y in [0, 1)^(C x H x W) (dequantized images, see genlab.models.likelihoods) to latents
that are N(0, I) under the model:

    logit (RealNVP, Dinh et al. 2017, sec. 4.1)
    for each of num_levels levels:
        squeeze 2x2 -> steps_per_level x [ActNorm -> InvConv1x1 -> AffineCoupling]   (Glow, fig. 2)
        all but the last level: factor out half the channels (RealNVP sec. 3.6), standardised
        by a Gaussian whose mean and scale are predicted from the kept half (Glow's split prior)
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, 4C, H/2, W/2)`: each 2x2 patch becomes 4 channels (RealNVP sec. 3.6)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C/4, H, 2, W, 2)
    return x.reshape(b, c // 4, h * 2, w * 2)


class LogitTransform(nn.Module):
    """y in [0, 1) -> logit(alpha + (1 - 2 alpha) y): an unbounded space for the flow; alpha keeps the
    dequantized edge values (y near 0) away from -inf."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * y
        log_det = (math.log(1 - 2 * self.alpha) - s.log() - (-s).log1p()).flatten(1).sum(1)
        return s.log() - (-s).log1p(), log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from the first training batch
    so that y has zero mean and unit variance per channel (Glow sec. 3.1).

    The initialisation happens once: the `initialized` buffer is saved in every checkpoint, so a
    resumed run or a loaded model keeps its trained values; under DDP the batch statistics are
    averaged over the ranks first, so every rank starts from the same parameters.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        stats = torch.stack([x.mean((0, 2, 3)), x.square().mean((0, 2, 3))])  # (2, C): E[x], E[x^2]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
        mean, std = stats[0], (stats[1] - stats[0].square()).clamp_min(0).sqrt()
        self.bias.copy_(-mean.view_as(self.bias))
        self.log_scale.copy_(-(std + 1e-6).log().view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            self.initialize(x)
        log_det = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x + self.bias) * self.log_scale.exp(), log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvConv1x1(nn.Module):
    """An invertible 1x1 convolution, a learned channel mix, with weight W = P L (U + diag(sign * exp(log_s)))
    (Glow sec. 3.2, LU form): log|det W| = sum(log_s), no O(C^3) determinant per step."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation to start from
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("p", p)
        self.register_buffer("sign_s", diag.sign())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(diag.abs().log())

    def weight(self) -> torch.Tensor:
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ lower @ upper  # (C, C)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.shape[2] * x.shape[3] * self.log_s.sum()
        return F.conv2d(x, self.weight()[:, :, None, None]), log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class AffineCoupling(nn.Module):
    """y_b = (x_b + t(x_a)) * scale, scale = sigmoid(s(x_a) + 2), y_a = x_a (Glow sec. 3.3, the scale as
    in the official code): it starts near 0.88 and cannot blow up as exp(s) can. It is kept in
    [1e-4, 1) so the inverse divides by at most 1e4: an unlucky latent at temperature 1 then gives an
    odd sample, never inf/NaN. The last convolution starts at zero: every coupling starts near the identity."""

    def __init__(self, channels: int, hidden_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.split = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.split, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden_channels, 2 * (channels - self.split), 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x_a)
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2) * (1 - 1e-4) + 1e-4  # shift, scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, scale = self._shift_scale(x_a)
        return torch.cat([x_a, (x_b + shift) * scale], 1), scale.log().flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, scale = self._shift_scale(y_a)
        return torch.cat([y_a, y_b / scale - shift], 1)


class FlowStep(nn.Sequential):
    """One step of flow: ActNorm -> InvConv1x1 -> AffineCoupling (Glow fig. 2a)."""

    def __init__(self, channels: int, hidden_channels: int, dropout: float) -> None:
        super().__init__(ActNorm(channels), InvConv1x1(channels), AffineCoupling(channels, hidden_channels, dropout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self):
            y = layer.inverse(y)
        return y


class SplitPrior(nn.Module):
    """Factors out half the channels z and standardises them, (z - mean(h)) * exp(-log_std(h)), with
    mean and log_std predicted from the kept half h by a zero-initialised convolution (Glow's split
    prior): an affine bijection, so the factored-out latents are N(0, I) under the model."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keep = channels - channels // 2
        self.conv = nn.Conv2d(self.keep, 2 * (channels // 2), 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (kept h, standardised z, log_det `(B,)`)."""
        h, z = x[:, : self.keep], x[:, self.keep :]
        mean, log_std = self._mean_log_std(h)
        return h, (z - mean) * (-log_std).exp(), -log_std.flatten(1).sum(1)

    def inverse(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._mean_log_std(h)
        return torch.cat([h, mean + eps * log_std.exp()], 1)

    def _mean_log_std(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.conv(h).chunk(2, 1)
        return mean, log_std.clamp(-9, 9)  # std within [1e-4, 1e4], both ways: no overflow when sampling


class Glow(nn.Module):
    """The multi-scale flow (module docstring). `log_prob(y)` is the exact log density of y in
    [0, 1)^(C x H x W); `sample(n, temperature)` draws y with latents scaled by `temperature`."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_levels: int = 2,
        steps_per_level: int = 8,
        hidden_channels: int = 128,
        dropout: float = 0.0,
        logit_alpha: float = 0.05,
    ) -> None:
        super().__init__()
        if num_levels < 1 or image_size % 2**num_levels:
            raise ConfigError(
                f"data.image_size={image_size} cannot be squeezed (halved) model.flow.num_levels={num_levels} times: "
                f"use an image_size divisible by {2**num_levels} or fewer levels"
            )
        self.logit = LogitTransform(logit_alpha)
        self.levels, self.splits, self.latent_shapes = nn.ModuleList(), nn.ModuleList(), []
        channels, size = in_channels, image_size
        for level in range(num_levels):
            channels, size = channels * 4, size // 2
            self.levels.append(
                nn.ModuleList([FlowStep(channels, hidden_channels, dropout) for _ in range(steps_per_level)])
            )
            if level < num_levels - 1:
                self.splits.append(SplitPrior(channels))
                self.latent_shapes.append((channels // 2, size, size))
                channels -= channels // 2
        self.latent_shapes.append((channels, size, size))
        self.dims = in_channels * image_size * image_size

    def forward(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """y `(B, C, H, W)` in [0, 1) -> (latents, one per level, shapes `latent_shapes`; log_det `(B,)`)."""
        x, log_det = self.logit(y)
        latents = []
        for level, steps in enumerate(self.levels):
            x = squeeze(x)
            for step in steps:
                x, ld = step(x)
                log_det = log_det + ld
            if level < len(self.splits):
                x, z, ld = self.splits[level](x)
                latents.append(z)
                log_det = log_det + ld
        latents.append(x)
        return latents, log_det

    def inverse(self, latents: list[torch.Tensor]) -> torch.Tensor:
        x = latents[-1]
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                x = self.splits[level].inverse(x, latents[level])
            for step in reversed(self.levels[level]):
                x = step.inverse(x)
            x = unsqueeze(x)
        return self.logit.inverse(x)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log density of y, `(B,)` in nats: log N(latents; 0, I) + log|det J| (change of variables)."""
        latents, log_det = self(y)
        log_normal = sum((-0.5 * (z.square() + LOG_2PI)).flatten(1).sum(1) for z in latents)
        return log_normal + log_det

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """`n` values y `(n, C, H, W)` (in [0, 1) up to the logit margin), latents ~ N(0, temperature^2 I)."""
        device = next(self.parameters()).device
        latents = [torch.randn(n, *shape, device=device) * temperature for shape in self.latent_shapes]
        return self.inverse(latents)
