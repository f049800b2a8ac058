"""The noising processes and their samplers, apart from the network (the diffusers split): no
parameters, no Lightning; `DiffusionModule` owns one and hands it the net as a function.

Two processes share one small interface (`draw_t`, `net_time`, `noisy`, `loss`, `sample`):

- `GaussianDiffusion`: DDPM (Ho et al. 2020, arXiv:2006.11239) with integer t in [0, T), a linear
  or cosine schedule, an epsilon / v / x0 prediction target and optional min-SNR-gamma weighting;
  ancestral DDPM sampling over all T steps and DDIM (Song et al. 2021, arXiv:2010.02502) over any
  number of steps with `eta`.
- `RectifiedFlow`: flow matching on straight paths (Liu et al. 2022, arXiv:2209.03003; Lipman et al.
  2023, arXiv:2210.02747), the SD3 objective (Esser et al. 2024, arXiv:2403.03206). ONE convention
  (SD3's, tested in tests/models/test_diffusion_process.py): t in [0, 1], t = 0 is data and t = 1 is
  noise, x_t = (1 - t) x0 + t noise, the net predicts the velocity dx_t/dt = noise - x0, and
  sampling integrates from t = 1 down to t = 0 with Euler or Heun steps.

A `denoise(x, t) -> output` function stands for the net (with guidance already mixed in); `t` is
what the process draws (ints for DDPM, floats for the flow); the process turns it into the net's
time input with `net_time`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from genlab.errors import ConfigError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example `(B,)` tensor as `(B, 1, 1, 1)` in `like`'s dtype, to broadcast over an image batch."""
    return values.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def _choice(value: str, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t `(T,)` in float64.
    linear: Ho et al. 2020 §4 (1e-4 to 0.02 over T = 1000; rescaled by 1000 / T for other T so the
        total noise stays the same, as in Nichol & Dhariwal 2021's code).
    cosine: Nichol & Dhariwal 2021 (arXiv:2102.09672) eq. 17, alpha_bar(t) = f(t) / f(0) with
        f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), s = 0.008; betas clipped at 0.999 (§3.2)."""
    _choice(schedule, ("linear", "cosine"), "model.process.schedule")
    if num_timesteps < 1:
        raise ConfigError(f"model.process.num_timesteps must be at least 1, got {num_timesteps}")
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), num_timesteps, dtype=torch.float64)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class GaussianDiffusion:
    """q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I) (Ho et al. 2020 eq. 4) on t = 0..T-1."""

    samplers = ("ddpm", "ddim")

    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        prediction: str = "epsilon",
        min_snr_gamma: float | None = None,
        clip_x0: bool = True,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        """`prediction`: what the net outputs: epsilon (the noise, Ho et al.), v (Salimans & Ho 2022,
        arXiv:2202.00512 §4: v = sqrt(ab) eps - sqrt(1 - ab) x0) or x0. `min_snr_gamma`: weight the loss
        by min(SNR, gamma) (Hang et al. 2023, arXiv:2303.09556; 5 is their choice), null for the plain
        loss of the target. `clip_x0`: clip predicted x0 to [-1, 1] while sampling (pixel data only;
        off for latents, FIELD_NOTES §3.4)."""
        self.prediction = _choice(prediction, ("epsilon", "v", "x0"), "model.process.prediction")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ConfigError(f"model.process.min_snr_gamma must be positive or null, got {min_snr_gamma}")
        self.num_timesteps, self.min_snr_gamma, self.clip_x0 = num_timesteps, min_snr_gamma, clip_x0
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # alpha_bar_t (T,), float64, decreasing

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _expand(self.alphas_cumprod.to(t.device)[t], like)

    def draw_t(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, uniform over 0..T-1 (Ho et al. 2020, Algorithm 1)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator).to(device)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise (Ho et al. 2020 eq. 4)."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        ab = self._ab(t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0  # v (Salimans & Ho 2022 §4)

    def x0_and_eps(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the net's output: the one place each parameterisation is inverted."""
        ab = self._ab(t, x_t)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if self.prediction == "epsilon":
            x0 = (x_t - s * output) / a
        elif self.prediction == "x0":
            x0 = output
        else:
            x0 = a * x_t - s * output  # from x_t = a x0 + s eps and v = a eps - s x0
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        if self.prediction == "epsilon" and not self.clip_x0:
            return x0, output
        return x0, (x_t - a * x0) / s  # eps consistent with the (clipped) x0

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(t.device)[t]
        return (ab / (1 - ab)).float()

    def loss(self, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-example mean squared error to the target, `(B,)`, in fp32; with min-SNR-gamma the
        weight makes every target equivalent to an x0 loss weighted by min(SNR, gamma) (Hang et al.
        2023 §3.3): epsilon min(SNR, g) / SNR, v min(SNR, g) / (SNR + 1), x0 min(SNR, g)."""
        mse = (output.float() - self.target(x0, noise, t).float()).square().flatten(1).mean(1)
        if self.min_snr_gamma is None:
            return mse
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        weight = {"epsilon": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[self.prediction]
        return weight * mse

    def check_sampler(self, sampler: str, steps: int, key: str = "model.sample_steps") -> None:
        _choice(sampler, self.samplers, "model.sampler")
        if sampler == "ddpm" and steps != self.num_timesteps:
            raise ConfigError(
                f"{key}: ancestral DDPM runs all {self.num_timesteps} training timesteps, got {steps}; "
                "use sampler=ddim for fewer steps"
            )
        if not 1 <= steps <= self.num_timesteps:
            raise ConfigError(
                f"{key} must be in 1..{self.num_timesteps} (model.process.num_timesteps, the training timesteps), "
                f"got {steps}"
            )

    def timesteps(self, steps: int) -> torch.Tensor:
        """`steps` timesteps from T-1 down to 0, evenly spaced and both ends included (the last step
        lands on alpha_bar_prev = 1 and returns x0, FIELD_NOTES §3.3)."""
        return torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().unique_consecutive()

    @torch.no_grad()
    def sample(
        self, denoise: Denoiser, noise: torch.Tensor, sampler: str = "ddim", steps: int | None = None, eta: float = 0.0
    ) -> torch.Tensor:
        """From x_T = `noise` to x0. ddpm: Ho et al. 2020 Algorithm 2 with the posterior of eq. 6-7
        (variance beta-tilde); ddim: Song et al. 2021 eq. 12 with sigma of eq. 16 (eta = 0
        deterministic, eta = 1 the DDPM posterior on the same grid)."""
        steps = self.num_timesteps if steps is None else steps  # 0 is refused, not read as "the default"
        self.check_sampler(sampler, steps)
        grid = self.timesteps(steps).tolist()
        ab = self.alphas_cumprod
        x = noise
        for i, t in enumerate(grid):
            prev = grid[i + 1] if i + 1 < len(grid) else -1  # prev-t from the grid itself
            ab_t = float(ab[t])
            ab_prev = float(ab[prev]) if prev >= 0 else 1.0
            tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
            x0, eps = self.x0_and_eps(x, denoise(x, tt), tt)
            if prev < 0:
                return x0  # alpha_bar_prev = 1: the last step is the predicted x0, no residual noise
            if sampler == "ddpm":
                # posterior q(x_{t-1} | x_t, x0), Ho et al. eq. 7: mean = c0 x0 + ct x_t, variance beta-tilde
                beta = 1 - ab_t / ab_prev
                c0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
                ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
                var = beta * (1 - ab_prev) / (1 - ab_t)
                x = c0 * x0 + ct * x + math.sqrt(var) * torch.randn_like(x)
            else:
                # Song et al. 2021 eq. 16 then eq. 12
                sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
                direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
                x = math.sqrt(ab_prev) * x0 + direction
                if sigma > 0:
                    x = x + sigma * torch.randn_like(x)
        return x


class RectifiedFlow:
    """x_t = (1 - t) x0 + t noise, t in [0, 1] (t = 0 data, t = 1 noise); target velocity noise - x0
    (Liu et al. 2022 eq. 1; Esser et al. 2024 §2 and eq. 3 with a_t = 1 - t, b_t = t)."""

    samplers = ("euler", "heun")

    def __init__(
        self,
        t_sampler: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        loss_weight: str = "uniform",
        min_snr_gamma: float = 5.0,
        time_scale: float = 1000.0,
        clip_x0: bool = True,
    ) -> None:
        """`t_sampler`: uniform, or logit_normal(logit_mean, logit_std) which puts more training on
        the middle of the path (Esser et al. 2024 eq. 19; their best with mean 0, std 1).
        `loss_weight`, separate from the t-sampler (FIELD_NOTES §2.1): uniform (the plain velocity
        loss), or min_snr: min(SNR, gamma) on the implied x0 loss as for DDPM, with SNR = ((1-t)/t)^2.
        `time_scale`: t is fed to the net as t * time_scale, the range the sinusoidal embedding
        was made for. `clip_x0`: clip the last step's x0 to [-1, 1] (pixel data only)."""
        self.t_sampler = _choice(t_sampler, ("uniform", "logit_normal"), "model.process.t_sampler")
        self.loss_weight = _choice(loss_weight, ("uniform", "min_snr"), "model.process.loss_weight")
        if logit_std <= 0:
            raise ConfigError(f"model.process.logit_std must be positive, got {logit_std}")
        self.logit_mean, self.logit_std, self.min_snr_gamma = logit_mean, logit_std, min_snr_gamma
        self.time_scale, self.clip_x0 = time_scale, clip_x0

    def draw_t(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.t_sampler == "uniform":
            t = torch.rand(batch_size, generator=generator)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch_size, generator=generator))
        return t.to(device)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * self.time_scale

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _expand(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0  # d x_t / dt

    def loss(self, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mse = (output.float() - self.target(x0, noise, t).float()).square().flatten(1).mean(1)
        if self.loss_weight == "uniform":
            return mse
        # x0 = x_t - t v, so the x0 error is t times the velocity error; weight it by min(SNR, gamma)
        t = t.float().clamp(min=1e-4)
        snr = ((1 - t) / t).square()
        return t.square() * snr.clamp(max=self.min_snr_gamma) * mse

    def check_sampler(self, sampler: str, steps: int, key: str = "model.sample_steps") -> None:
        _choice(sampler, self.samplers, "model.sampler")
        if steps < 1:
            raise ConfigError(f"{key} must be at least 1, got {steps}")

    def times(self, steps: int) -> torch.Tensor:
        """`steps + 1` times from 1 to 0, float64: the steps' dt sum to exactly 1 and end on the data."""
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)

    @torch.no_grad()
    def sample(
        self, denoise: Denoiser, noise: torch.Tensor, sampler: str = "euler", steps: int | None = None, eta: float = 0.0
    ) -> torch.Tensor:
        """Integrate dx/dt = v(x, t) from t = 1 (`noise`) to t = 0 with `steps` steps: Euler, or Heun
        (Karras et al. 2022, arXiv:2206.00364, Algorithm 1: a trapezoid correction on every step but
        one landing on t = 0, so 2 * steps - 1 net calls). `eta` is unused (no stochastic flow sampler)."""
        steps = 50 if steps is None else steps  # 0 is refused, not read as "the default"
        self.check_sampler(sampler, steps)
        times = self.times(steps).tolist()
        x = noise
        for t, t_next in itertools.pairwise(times):
            v = denoise(x, torch.full((len(x),), t, device=x.device))
            x_next = x + (t_next - t) * v  # dt < 0: towards the data
            if sampler == "heun" and t_next > 0:
                v_next = denoise(x_next, torch.full((len(x),), t_next, device=x.device))
                x_next = x + (t_next - t) * 0.5 * (v + v_next)
            x = x_next
        return x.clamp(-1, 1) if self.clip_x0 else x
