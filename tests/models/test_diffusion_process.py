"""The processes and samplers alone, with oracle denoisers that know the answer."""

from __future__ import annotations

import pytest
import torch

from genlab.errors import ConfigError
from genlab.models.diffusion_process import GaussianDiffusion, RectifiedFlow, make_betas


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_decrease_in_the_unit_interval(schedule: str) -> None:
    ab = GaussianDiffusion(schedule=schedule, num_timesteps=1000).alphas_cumprod
    assert ab.shape == (1000,)
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.999 and ab[-1] < 1e-3  # nearly clean at the first step, nearly pure noise at the last


def test_noise_at_the_first_step_leaves_the_input_almost_unchanged() -> None:
    process = GaussianDiffusion(schedule="linear")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    x1 = process.noisy(x0, torch.randn_like(x0), torch.zeros(4, dtype=torch.long))
    assert (x1 - x0).abs().max() < 0.05
    assert torch.allclose(make_betas("linear", 1000)[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_each_target_inverts_to_x0_and_noise(prediction: str) -> None:
    process = GaussianDiffusion(prediction=prediction, clip_x0=False)
    x0, noise = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    x_t = process.noisy(x0, noise, t)
    x0_hat, eps_hat = process.x0_and_eps(x_t, process.target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat[:5], x0[:5], atol=1e-4, rtol=1e-4)  # at t=999 x0 is barely in x_t
    torch.testing.assert_close(eps_hat[1:], noise[1:], atol=1e-4, rtol=1e-4)  # at t=0 eps is barely in x_t
    assert process.loss(process.target(x0, noise, t), x0, noise, t).abs().max() == 0


def test_min_snr_weights_epsilon_loss_by_min_snr_over_snr() -> None:
    process = GaussianDiffusion(min_snr_gamma=5.0)
    t = torch.tensor([0, 999])
    x0, noise = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    loss = process.loss(torch.ones(2, 1, 2, 2), x0, noise, t)  # unit squared error
    snr = process.snr(t)
    torch.testing.assert_close(loss, torch.stack([5.0 / snr[0], torch.tensor(1.0)]))  # high SNR down-weighted


def _oracle_noise(process: GaussianDiffusion, x0: torch.Tensor):
    """A perfect epsilon denoiser for a single known x0: the noise that makes x_t from x0."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = process.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return denoise


@pytest.mark.parametrize("steps", [2, 10, 50])  # one step from t=T-1 divides by sqrt(alpha_bar) ~ 1e-3: fp32 noise
def test_ddim_with_an_oracle_denoiser_recovers_x0(steps: int) -> None:
    process = GaussianDiffusion(clip_x0=False)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    out = process.sample(_oracle_noise(process, x0), torch.randn(3, 1, 8, 8), sampler="ddim", steps=steps)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_the_ddpm_posterior() -> None:
    process = GaussianDiffusion(num_timesteps=50)
    denoise = lambda x, t: 0.3 * x  # noqa: E731  any fixed function of x: the samplers' arithmetic is what counts
    noise = torch.randn(2, 1, 8, 8)
    torch.manual_seed(1)
    a = process.sample(denoise, noise, "ddim", steps=20, eta=0.0)
    torch.manual_seed(2)
    b = process.sample(denoise, noise, "ddim", steps=20, eta=0.0)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    ddim = process.sample(denoise, noise, "ddim", steps=50, eta=1.0)  # DDIM eq. 16 with eta=1 on the full grid...
    torch.manual_seed(3)
    ddpm = process.sample(denoise, noise, "ddpm")  # ...is the DDPM posterior, draw for draw
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)


def test_sampler_grid_ends_on_the_data() -> None:
    process = GaussianDiffusion()
    grid = process.timesteps(50)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 50 and (grid[1:] < grid[:-1]).all()
    calls: list[int] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    out = process.sample(denoise, torch.randn(1, 1, 4, 4), "ddim", steps=7)
    assert len(calls) == 7 and calls[-1] == 0
    # the last step returns the predicted x0 (alpha_bar_prev = 1): no residual noise
    ab = float(process.alphas_cumprod[0])
    assert out.abs().max() <= 1.0 and torch.isfinite(out).all() and ab > 0.999


def test_flow_convention_t0_is_data_t1_is_noise_and_the_target_is_the_path_velocity() -> None:
    flow = RectifiedFlow()
    x0, noise = torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, 1, 8, 8)
    ones, zeros = torch.ones(2), torch.zeros(2)
    assert torch.equal(flow.noisy(x0, noise, zeros), x0) and torch.equal(flow.noisy(x0, noise, ones), noise)
    t, dt = torch.full((2,), 0.4), 1e-3
    finite_difference = (flow.noisy(x0, noise, t + dt) - flow.noisy(x0, noise, t)) / dt
    torch.testing.assert_close(flow.target(x0, noise, t), finite_difference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(("sampler", "calls"), [("euler", 1), ("heun", 1)])
def test_flow_oracle_velocity_recovers_x0_in_one_step(sampler: str, calls: int) -> None:
    flow = RectifiedFlow(clip_x0=False)
    x0, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    count = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        count.append(1)
        return noise - x0  # the exact conditional velocity of the straight path through (x0, noise)

    torch.testing.assert_close(flow.sample(velocity, noise, sampler, steps=1), x0)
    assert len(count) == calls


def test_flow_sampler_steps_sum_to_one_and_count_net_calls() -> None:
    flow = RectifiedFlow()
    times = flow.times(7)
    assert (
        times[0] == 1
        and times[-1] == 0
        and torch.isclose((times[:-1] - times[1:]).sum(), torch.tensor(1.0, dtype=torch.float64))
    )
    seen: list[float] = []
    flow.sample(lambda x, t: (seen.append(float(t[0])), torch.zeros_like(x))[1], torch.randn(1, 1, 2, 2), "heun", 5)
    assert len(seen) == 2 * 5 - 1 and seen[0] == 1.0 and min(seen) > 0


def test_flow_t_samplers() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform = RectifiedFlow(t_sampler="uniform").draw_t(20000, torch.device("cpu"), generator)
    logit = RectifiedFlow(t_sampler="logit_normal").draw_t(20000, torch.device("cpu"), generator)
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.quantile(0.25) - 0.25) < 0.01
    # logit-normal(0, 1): median 0.5, quartiles sigmoid(-+0.674) = 0.338, 0.662 (Esser et al. 2024 eq. 19)
    assert abs(logit.median() - 0.5) < 0.01 and abs(logit.quantile(0.25) - 0.3376) < 0.01


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: GaussianDiffusion(schedule="quadratic"), "model.process.schedule"),
        (lambda: GaussianDiffusion(prediction="score"), "model.process.prediction"),
        (lambda: GaussianDiffusion().check_sampler("dpm", 10), "model.sampler"),
        (lambda: GaussianDiffusion(num_timesteps=100).check_sampler("ddim", 101), "model.sample_steps"),
        (lambda: GaussianDiffusion(num_timesteps=100).check_sampler("ddpm", 50), "model.sample_steps"),
        (lambda: RectifiedFlow(t_sampler="mode"), "model.process.t_sampler"),
        (lambda: RectifiedFlow(loss_weight="snr"), "model.process.loss_weight"),
        (lambda: RectifiedFlow().check_sampler("ddim", 10), "model.sampler"),
    ],
)
def test_bad_settings_name_the_key(build, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build()


@pytest.mark.parametrize(
    ("process", "sampler"), [(GaussianDiffusion(num_timesteps=10), "ddim"), (RectifiedFlow(), "euler")]
)
def test_zero_steps_are_refused_not_read_as_the_default(process, sampler: str) -> None:
    calls = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.zeros_like(x)

    with pytest.raises(ConfigError, match="got 0"):
        process.sample(denoise, torch.randn(1, 1, 2, 2), sampler, steps=0)
    assert not calls
