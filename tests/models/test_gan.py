"""The GAN family: manual optimization with two optimizers, EMA, resume, DDP, precision, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import column, read_metrics
from lightning.pytorch.strategies import DDPStrategy
from PIL import Image

from genlab import load_model
from genlab.config import compose
from genlab.errors import ConfigError, DivergenceError
from genlab.faults import NaNGuard
from genlab.instantiate import instantiate
from genlab.models import GANModule
from genlab.models.gan_losses import GANLoss, d_nonsaturating, g_nonsaturating
from genlab.train import main, train

# Narrow nets and small batches: every hook runs, in seconds.
SMALL = (
    "model=gan",
    "model.generator.hidden_channels=[16,8]",
    "model.discriminator.hidden_channels=[8,16]",
    "model.latent_dim=8",
    "data.batch_size=32",
)


def _gan(*overrides: str) -> GANModule:
    return instantiate(compose([*SMALL, *overrides]).model)


def _fit(model: GANModule, steps: int, *overrides: str, callbacks: list | None = None) -> L.Trainer:
    datamodule = instantiate(compose([*SMALL, *overrides]).data)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return trainer


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_short_run_changes_both_nets_and_the_ema_generator_lags() -> None:
    torch.manual_seed(0)
    model = _gan("model.ema_half_life=20")
    g0, d0 = _flat(model.generator), _flat(model.discriminator)
    trainer = _fit(model, steps=6)
    g, d, ema = _flat(model.generator), _flat(model.discriminator), _flat(model.generator_ema.shadow)
    assert not torch.equal(g, g0) and not torch.equal(d, d0)
    assert 0 < (ema - g0).norm() < (g - g0).norm()  # the average moved, less far than G
    assert int(model.d_steps) == int(model.g_steps) == 6
    assert trainer.global_step == 12  # Lightning counts both optimizers' steps: why lengths are in G steps
    assert model.sample(5).shape == (5, 1, 8, 8)


def test_n_critic_steps_d_more_often_and_max_g_steps_stops() -> None:
    model = _gan("model.n_critic=3", "model.max_g_steps=2")
    _fit(model, steps=20)
    assert (int(model.d_steps), int(model.g_steps)) == (6, 2)


def test_entrypoint_run_conditional_in_bf16_with_penalties_and_clipping(make_config, log_dir: Path) -> None:
    """The paths a user switches on, in one short run: labels, bf16-mixed autocast, both fp32
    penalties, hand-made gradient clipping, an LR schedule. It finishes with finite losses, writes
    samples and checkpoints, and both ways of loading give the same model."""
    cfg = make_config(
        *SMALL, "trainer=debug", "trainer.precision=bf16-mixed", "model.conditional=true", "model.loss=hinge",
        "model.gp_weight=1.0", "model.r1_gamma=1.0", "model.gradient_clip_val=1.0",
        "model.scheduler={_target_: torch.optim.lr_scheduler.LinearLR, _partial_: true, start_factor: 1.0, "
        "end_factor: 0.5, total_iters: 10}",
    )  # fmt: skip
    metrics = train(cfg)
    for key in ("train/d_loss", "train/g_loss", "train/gp", "train/r1", "train/d_real", "train/d_fake", "val/loss"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    (run,) = (log_dir / "gan").iterdir()
    assert len(column(read_metrics(run), "val/loss")) == 2
    assert (run / "samples" / "samples_final.png").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["lr_schedulers"][1]["last_epoch"] == 10  # stepped per G step
    model, lightning_way = load_model(ckpt), GANModule.load_from_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(lightning_way.state_dict()[key], value), key
    torch.manual_seed(0)
    samples = model.sample(20)
    assert samples.shape == (20, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1


def test_gradient_clipping_bounds_each_nets_gradient_norm() -> None:
    model = _gan("model.gradient_clip_val=0.01")
    norms = []
    original = model.on_before_optimizer_step

    def clip_then_measure(optimizer) -> None:
        original(optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.nn.utils.get_total_norm(grads).item())

    model.on_before_optimizer_step = clip_then_measure
    _fit(model, steps=3)
    assert len(norms) == 6 and max(norms) <= 0.01 + 1e-6


@pytest.mark.parametrize("net", ["discriminator", "generator"])
def test_nan_guard_sees_each_optimizer_and_skips_only_the_bad_update(net: str) -> None:
    model = _gan()
    bad = GANLoss(
        lambda real, fake: d_nonsaturating(real, fake) * (float("nan") if net == "discriminator" else 1.0),
        lambda fake: g_nonsaturating(fake) * (float("nan") if net == "generator" else 1.0),
    )
    model.loss = bad
    step = 0 if net == "discriminator" else 1  # Lightning's global_step: D's step is 0, G's 1
    with pytest.raises(DivergenceError, match=f"at step {step} .*before updating the weights"):
        _fit(model, steps=2, callbacks=[NaNGuard(action="stop")])
    model = _gan()
    model.loss = bad
    other = model.generator if net == "discriminator" else model.discriminator
    frozen, other_before = _flat(getattr(model, net)), _flat(other)
    _fit(model, steps=2, callbacks=[NaNGuard(action="skip")])
    assert torch.equal(_flat(getattr(model, net)), frozen)  # its updates were dropped
    assert not torch.equal(_flat(other), other_before)  # the other net trained on


def test_resume_restores_both_optimizers_the_schedulers_and_the_ema_exactly(make_config, log_dir: Path) -> None:
    run = (
        *SMALL, "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "callbacks.samples.every_n_epochs=100",
        "model.ema_half_life=5",
        "model.scheduler={_target_: torch.optim.lr_scheduler.LinearLR, _partial_: true, start_factor: 1.0, "
        "end_factor: 0.1, total_iters: 20}",
    )  # fmt: skip
    train(make_config(*run, "run_name=unbroken", "trainer.max_epochs=4"))
    train(make_config(*run, "run_name=stopped", "trainer.max_epochs=2"))
    train(make_config(*run, "run_name=stopped", "trainer.max_epochs=4", "ckpt_path=last"))

    unbroken = torch.load(log_dir / "gan/unbroken/checkpoints/last.ckpt", weights_only=False)
    resumed = torch.load(log_dir / "gan/stopped/checkpoints/last.ckpt", weights_only=False)
    assert resumed["global_step"] == unbroken["global_step"] == 2 * 4 * 3
    assert int(resumed["state_dict"]["g_steps"]) == 12
    assert any(key.startswith("generator_ema.shadow.") for key in resumed["state_dict"])
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert len(resumed["optimizer_states"]) == 2
    for ours, theirs in zip(resumed["optimizer_states"], unbroken["optimizer_states"], strict=True):
        for p, state in theirs["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(ours["state"][p][name], value, rtol=0, atol=0)
    assert resumed["lr_schedulers"] == unbroken["lr_schedulers"]


# slow: two processes for ~20 s; make test-all runs it (plain DDP stays in make test: test_train.py)
@pytest.mark.slow
def test_ddp_with_two_cpu_processes(log_dir: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GENLAB_RUN_DIR", None)
    argv = [f"log_dir={log_dir}", *SMALL, "trainer=ddp", "trainer.strategy=ddp_find_unused_parameters_true"]
    argv += ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    argv += ["trainer.limit_val_batches=1", "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false"]
    argv += ["trainer.num_sanity_val_steps=0", "callbacks.samples.num_samples=4", "model.gradient_clip_val=1.0"]
    result = subprocess.run(
        [sys.executable, "-m", "genlab.train", *argv], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (log_dir / "gan").iterdir()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and int(ckpt["state_dict"]["g_steps"]) == 3
    assert len(column(read_metrics(run), "val/loss")) == 1


def test_plain_ddp_is_refused_with_the_strategy_to_use() -> None:
    model = _gan()
    model._trainer = SimpleNamespace(strategy=DDPStrategy(), datamodule=None)
    with pytest.raises(ConfigError, match="trainer.strategy=ddp_find_unused_parameters_true"):
        model.setup("fit")
    model._trainer = SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True), datamodule=None)
    model.setup("fit")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.n_critic=0"], "model.n_critic must be at least 1"),
        (["model.loss=minimax"], "model.loss: unknown GAN loss 'minimax'"),
        (["trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val is ignored"),
        (["trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches must be 1"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, log_dir: Path, capsys) -> None:
    assert main([f"log_dir={log_dir}", *SMALL, "trainer=debug", "callbacks.progress.refresh_rate=0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_conditional_gan_on_unlabelled_images_is_one_line(tmp_path: Path, log_dir: Path, capsys) -> None:
    folder = tmp_path / "flat"  # no class subfolders: no labels
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=i * 60).save(folder / f"{i}.png")
    argv = [f"log_dir={log_dir}", *SMALL, "data=image_folder", f"data.path={folder}", "data.channels=1"]
    argv += ["data.image_size=8", "model.conditional=true", "trainer=debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.conditional=true needs labelled data" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("overrides", "labels", "message"),
    [
        (("model.conditional=true",), [3, 10], "label 10 is outside the data's classes 0..9"),
        (("model.conditional=true",), [-1, 2], "label -1 is outside the data's classes 0..9"),
        (("model.conditional=true",), [1, 2, 3], "got 3 labels for n=2 samples"),
        ((), [3, 3], "the model is unconditional (model.conditional=false)"),  # not silently ignored
    ],
)
def test_sample_labels_are_checked_as_the_diffusion_family_does(overrides, labels, message: str) -> None:
    model = _gan(*overrides).eval()
    with pytest.raises(ConfigError) as err:
        model.sample(2, labels=torch.tensor(labels))
    assert message in str(err.value) and "sample(labels=...)" in str(err.value)


def test_conditional_sample_honours_valid_labels() -> None:
    torch.manual_seed(0)
    model = _gan("model.conditional=true").eval()
    torch.manual_seed(1)
    sevens = model.sample(3, labels=[7, 7, 7])
    torch.manual_seed(1)
    ones = model.sample(3, labels=torch.tensor([1, 1, 1]))
    assert sevens.shape == (3, 1, 8, 8) and not torch.equal(sevens, ones)  # the label reaches G
