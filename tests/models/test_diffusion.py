"""DiffusionModule with both processes: sampling contract, guidance, EMA, bad input. Short real
runs (learning, resume, checkpoints) are in tests/test_train.py."""

from __future__ import annotations

import pytest
import torch
from conftest import column, read_metrics

from genlab import load_model
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.diffusion import DiffusionModule
from genlab.train import train

# A net small enough that sampling a few steps takes milliseconds.
TINY = ("model.net.base_channels=8", "model.net.channel_mults=[1,2]", "model.net.num_heads=2")


def _model(family: str, *overrides: str) -> DiffusionModule:
    torch.manual_seed(0)
    return instantiate(compose([f"model={family}", *TINY, *overrides]).model)


def _perturb(model: DiffusionModule) -> None:
    """Give the zero-initialised output layers weights, so samples depend on labels and guidance."""
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_sample_shape_range_and_labels(family: str) -> None:
    model = _model(family)
    _perturb(model)
    samples = model.sample(6, steps=4)
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    torch.manual_seed(1)
    sevens = model.sample(3, steps=4, labels=[7, 7, 7])
    torch.manual_seed(1)
    ones = model.sample(3, steps=4, labels=torch.tensor([1, 1, 1]))
    assert sevens.shape == (3, 1, 8, 8) and not torch.equal(sevens, ones)  # the label reaches the net


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_guidance_one_is_plain_conditional_and_zero_is_unconditional(family: str) -> None:
    model = _model(family)
    _perturb(model)
    labels = [3, 5]

    def draw(**kwargs) -> torch.Tensor:
        torch.manual_seed(2)
        return model.sample(2, steps=3, **kwargs)

    plain = draw(guidance=1.0, labels=labels)
    torch.testing.assert_close(draw(guidance=1.0, labels=labels), plain)
    null = [model.conditioning.null_label] * 2  # the learned null label, asked for directly
    model.conditioning.num_classes += 1  # (let the null label past the range check for this comparison)
    unconditional = draw(guidance=1.0, labels=null)
    model.conditioning.num_classes -= 1
    torch.testing.assert_close(draw(guidance=0.0, labels=labels), unconditional, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(draw(guidance=3.0, labels=labels), plain)


def test_ddpm_runs_every_training_step_and_ddim_the_configured_ones() -> None:
    model = _model("diffusion", "model.process.num_timesteps=20", "model.sample_steps=5")
    calls: list[int] = []
    model.ema.shadow.register_forward_hook(lambda *args: calls.append(1))
    assert model.sample(2, sampler="ddpm").shape == (2, 1, 8, 8)
    assert len(calls) == 20  # ancestral DDPM: all training timesteps (guidance doubles the batch, not the calls)
    calls.clear()
    model.sample(2)
    assert len(calls) == 5


def test_ema_lags_the_online_weights() -> None:
    model = _model("diffusion", "model.ema_decay=0.9", "model.ema_warmup=false")
    optimizer = model.configure_optimizers()
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (16,))
    start = [p.clone() for p in model.net.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(model.net, x, y).mean().backward()
        optimizer.step()
        model.ema.update(model.net)
    moved = [(o - s).abs().sum() for o, s in zip(model.net.parameters(), start, strict=True)]
    lagged = [(e - s).abs().sum() for e, s in zip(model.ema.shadow.parameters(), start, strict=True)]
    assert sum(lagged) > 0 and sum(lagged) < 0.5 * sum(moved)
    assert not any(p.requires_grad for p in model.ema.shadow.parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.net.parameters()}
    assert optimizer.param_groups[1]["weight_decay"] == 0  # norms and biases


def test_the_ema_exports_alone_as_a_plain_unet() -> None:
    model = _model("flow_matching")
    exported = model.ema.shadow.state_dict()
    net = instantiate(compose(["model=flow_matching", *TINY]).model.net)
    net.load_state_dict(exported)  # no prefix, no unexpected keys
    assert all(torch.equal(net.state_dict()[k], v) for k, v in exported.items())


@pytest.mark.parametrize(
    ("family", "overrides", "call", "message"),
    [
        ("diffusion", ("model.sample_steps=1001",), None, "model.sample_steps must be in 1..1000"),
        ("diffusion", ("model.process.schedule=quadratic",), None, "model.process.schedule"),
        ("diffusion", ("model.process.prediction=score",), None, "model.process.prediction"),
        ("diffusion", ("model.sampler=euler",), None, "model.sampler"),
        ("flow_matching", ("model.sampler=ddim",), None, "model.sampler"),
        ("flow_matching", ("model.process.t_sampler=beta",), None, "model.process.t_sampler"),
        ("diffusion", ("model.net.conditioning=null",), None, "model.guidance=2.0: guidance needs a conditional"),
        ("diffusion", ("model.net.conditioning.drop_prob=0.0",), None, "model.net.conditioning.drop_prob=0"),
        ("diffusion", ("model.net.conditioning=null", "model.guidance=1.0"), {"labels": [1, 2]}, "unconditional"),
        ("diffusion", ("model.net.conditioning=null", "model.guidance=1.0"), {"guidance": 3.0}, "sample(guidance"),
        ("diffusion", (), {"labels": [3, 10]}, "label 10 is outside the data's classes 0..9 (data.num_classes=10)"),
        ("diffusion", (), {"steps": 2000}, "sample(steps=...) must be in 1..1000"),
        ("diffusion", (), {"steps": 0}, "sample(steps=...) must be in 1..1000"),  # not silently the 50 configured
        ("diffusion", (), {"steps": 0, "sampler": "ddpm"}, "sample(steps=...): ancestral DDPM runs all 1000"),
        ("flow_matching", (), {"steps": 0}, "sample(steps=...) must be at least 1, got 0"),
    ],
)
def test_bad_input_is_a_config_error_naming_the_key(family, overrides, call, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        model = _model(family, *overrides)
        if call is not None:
            model.sample(2, **call)


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_clip_x0_false_leaves_samples_unclipped_and_true_clips_them(family: str) -> None:
    """model.process.clip_x0=false (latents) is honoured by sample(), not undone by a clamp of its own."""
    outputs = {}
    target = ("model.process.prediction=x0",) if family == "diffusion" else ()  # flow: the velocity
    for clip in (True, False):
        model = _model(family, *target, f"model.process.clip_x0={clip}")
        with torch.no_grad():  # the net outputs 3 everywhere: x0 = 3 (diffusion), or x0 = noise - 3 (flow)
            model.ema.shadow.out[-1].bias.fill_(3.0)
        torch.manual_seed(0)
        outputs[clip] = model.sample(4, steps=3)
    assert outputs[True].abs().max() <= 1
    assert outputs[False].abs().max() > 2  # far outside [-1, 1]: nothing clamped it


# Short real runs through the entrypoint, with the tiny net and a few steps per epoch.
RUN = (*TINY, "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "model.sample_steps=4")


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_short_run_lowers_val_loss_and_the_checkpoint_alone_samples_with_ema(family: str, make_config, log_dir) -> None:
    train(make_config(f"model={family}", *RUN, "trainer.max_epochs=4", "callbacks.samples.num_samples=16"))
    (run,) = (log_dir / family).iterdir()
    val_loss = column(read_metrics(run), "val/loss")
    assert len(val_loss) == 4 and val_loss == sorted(val_loss, reverse=True) and val_loss[-1] < 0.9 * val_loss[0]
    assert (run / "samples" / "samples_final.png").is_file()

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    model = load_model(run / "checkpoints" / "last.ckpt")
    for key, value in model.ema.shadow.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][f"ema.shadow.{key}"], value), key
    assert int(model.ema.num_updates) == checkpoint["global_step"] == 16
    torch.manual_seed(0)
    samples = model.sample(4)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    model.ema.shadow.load_state_dict(model.net.state_dict())  # the online weights in the EMA's place...
    torch.manual_seed(0)
    assert not torch.allclose(model.sample(4), samples)  # ...sample differently: sample() used the EMA weights
    lightning_way = DiffusionModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    assert torch.equal(lightning_way.eval().sample(4), samples)


def test_resumed_run_restores_ema_exactly(make_config, log_dir) -> None:
    common = ("model=diffusion", *RUN)
    train(make_config(*common, "run_name=unbroken", "trainer.max_epochs=2"))
    train(make_config(*common, "run_name=stopped", "trainer.max_epochs=1"))
    train(make_config(*common, "run_name=stopped", "trainer.max_epochs=2", "ckpt_path=last"))
    unbroken = torch.load(log_dir / "diffusion/unbroken/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    resumed = torch.load(log_dir / "diffusion/stopped/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    ema_keys = [key for key in unbroken if key.startswith("ema.")]
    assert ema_keys and int(resumed["ema.num_updates"]) == 8
    for key in ema_keys:
        torch.testing.assert_close(resumed[key], unbroken[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_folder_without_a_class_count_asks_for_one() -> None:
    with pytest.raises(ConfigError, match=r"model\.net\.conditioning\.num_classes' = None"):  # checked by instantiate
        _model("diffusion", "data=image_folder", "data.path=/tmp")
