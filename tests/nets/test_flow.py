from __future__ import annotations

import socket

import pytest
import torch

from genlab.errors import ConfigError
from genlab.nets.flow import ActNorm, Glow, squeeze, unsqueeze


def _glow(**kwargs) -> Glow:
    torch.manual_seed(0)
    return Glow(
        **{"in_channels": 1, "image_size": 4, "num_levels": 2, "steps_per_level": 2, "hidden_channels": 8, **kwargs}
    )


def _trained_like(flow: Glow, size: int = 4) -> Glow:
    """Zero-initialised last layers make couplings and split priors the identity: perturb every
    parameter so the tests see real scales and shifts, and initialise ActNorm from data."""
    flow.train()
    flow(torch.rand(16, 1, size, size))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return flow.eval().double()


def test_squeeze_round_trip() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert squeeze(x).shape == (2, 12, 4, 4)
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_inverse_of_forward_is_the_identity() -> None:
    flow = _trained_like(_glow(image_size=8, num_levels=2, steps_per_level=3), 8).float()
    y = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        latents, _ = flow(y)
        assert [z.shape[1:] for z in latents] == [torch.Size(s) for s in flow.latent_shapes]
        assert (flow.inverse(latents) - y).abs().max() < 1e-4


def test_summed_log_det_equals_autograd_jacobian() -> None:
    flow = _trained_like(_glow())  # 1x4x4: 16 dims, two levels, every layer kind

    def to_latents(flat: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in flow(flat.view(1, 1, 4, 4))[0]])

    y = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    jacobian = torch.autograd.functional.jacobian(to_latents, y)  # (16, 16)
    _, log_det = flow(y.view(1, 1, 4, 4))
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jacobian)[1], atol=1e-8)


def test_actnorm_initialises_from_the_first_training_batch_only() -> None:
    norm = ActNorm(3)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([2.0, 0.5, 5.0]).view(1, 3, 1, 1) + 3
    y, _ = norm(x)
    assert bool(norm.initialized)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    restored = ActNorm(3)
    restored.load_state_dict(norm.state_dict())  # what a resume or load_from_checkpoint does
    before = [p.clone() for p in restored.parameters()]
    restored(torch.randn(64, 3, 4, 4) * 9)
    assert all(torch.equal(a, b) for a, b in zip(before, restored.parameters(), strict=True))


def test_an_image_size_the_squeezes_cannot_divide_is_one_line() -> None:
    with pytest.raises(ConfigError, match="data.image_size=12 cannot be squeezed") as err:
        Glow(1, image_size=12, num_levels=3)
    assert "model.flow.num_levels=3" in str(err.value) and "\n" not in str(err.value)


def test_samples_have_the_image_shape_and_temperature_scales_them() -> None:
    flow = _trained_like(_glow(image_size=8), 8).float()
    torch.manual_seed(1)
    hot = flow.sample(64, temperature=1.0)
    torch.manual_seed(1)
    cold = flow.sample(64, temperature=0.1)
    assert hot.shape == cold.shape == (64, 1, 8, 8)
    assert torch.logit(cold.clamp(1e-3, 1 - 1e-3)).std() < torch.logit(hot.clamp(1e-3, 1 - 1e-3)).std()


def _init_on_rank(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each rank sees its own batch, as under DDP
    norm = ActNorm(2)
    norm(torch.randn(8, 2, 4, 4) * (rank + 1) + rank)
    torch.save({k: v.clone() for k, v in norm.state_dict().items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two fresh processes: ~10 s idle, over a minute on a busy machine
def test_actnorm_initialisation_is_the_same_on_every_ddp_rank(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_init_on_rank, args=(port, str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("bias", "log_scale"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.allclose(a["bias"], torch.zeros_like(a["bias"]))  # initialised from data, not left at zero
