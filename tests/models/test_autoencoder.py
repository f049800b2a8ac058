"""The first-stage autoencoder: it learns (kl and vq), its public face (encode/decode, indices,
scale_factor, sample), checkpoints, the discriminator's warm-up under manual optimization, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import column, read_metrics

from genlab import load_model
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.autoencoder import AutoencoderModule
from genlab.train import main

# Narrow nets and small batches: every path runs in seconds on one core.
TINY = (
    "model=autoencoder",
    "model.encoder.hidden_channels=[8,16,16]",
    "model.encoder.mid_attention=false",
    "model.quantizer.num_codes=16",
    "model.discriminator.hidden_channels=[8,8]",
    "data.batch_size=32",
)


def _model(*overrides: str) -> AutoencoderModule:
    torch.manual_seed(0)
    return instantiate(compose([*TINY, *overrides]).model)


def _fit(model: AutoencoderModule, steps: int, val_batches: int = 0) -> L.Trainer:
    datamodule = instantiate(compose(list(TINY)).data)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=steps, limit_val_batches=val_batches, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return trainer


def _images(split: str = "val", n: int = 64) -> torch.Tensor:
    datamodule = instantiate(compose(list(TINY)).data)
    datamodule.setup("fit")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
    return torch.cat([batch[0] for batch in loader])[:n]


def _recon_error(model: AutoencoderModule, x: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        error = (model.reconstruct(x) - x).abs().mean().item()
    model.train(was_training)  # Lightning would otherwise train it in eval mode (a frozen codebook)
    return error


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_loss_falls_in_30_steps_and_shapes_round_trip(regularizer: str) -> None:
    model = _model(f"model.regularizer={regularizer}")
    x = _images()
    before = _recon_error(model, x)
    _fit(model, steps=30)
    after = _recon_error(model, x)
    assert after < 0.75 * before, (before, after)
    z = model.encode(x)
    assert z.shape == (len(x), 4, 2, 2) and model.latent_shape == (4, 2, 2)
    samples = model.sample(5)
    assert samples.shape == (5, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    assert int(model.ae_steps) == 30


def test_vq_indices_round_trip_and_codebook_figures_are_logged() -> None:
    model = _model("model.regularizer=vq")
    trainer = _fit(model, steps=10, val_batches=2)
    x = _images(n=16)
    with torch.no_grad():
        indices = model.encode_indices(x)
        assert indices.shape == (16, 2, 2) and indices.dtype == torch.long
        assert indices.min() >= 0 and indices.max() < 16
        assert torch.equal(model.decode_indices(indices), model.decode(model.encode(x)))
    metrics = trainer.callback_metrics
    assert 0 < metrics["val/codebook_usage"] <= 1 and 1 <= metrics["val/perplexity"] <= 16
    for key in ("val/loss", "val/recon", "val/rec_mse", "val/vq_loss"):
        assert torch.isfinite(metrics[key]), key
    with pytest.raises(ConfigError, match="regularizer=vq"):
        _model().encode_indices(x)  # a kl autoencoder has no codes


def test_scale_factor_gives_the_training_latents_unit_std() -> None:
    model = _model("model.scale_batches=4")
    assert model.scale_factor.item() == 1.0
    _fit(model, steps=40)
    with torch.no_grad():
        z = model.encode(_images("train", n=2000))  # the whole training split
    assert model.scale_factor.item() != 1.0
    assert (z * model.scale_factor).std().item() == pytest.approx(1.0, abs=0.1)
    # what sample() draws: N(0, 1 / scale^2), the spread of the real latents
    assert "scale_factor" in model.state_dict()  # so it travels in checkpoints


def test_a_checkpoint_rebuilds_the_same_encoder_in_a_fresh_object(tmp_path: Path) -> None:
    model = _model("model.regularizer=vq")
    trainer = _fit(model, steps=5)
    trainer.save_checkpoint(tmp_path / "ae.ckpt", weights_only=True)
    loaded = AutoencoderModule.load_from_checkpoint(tmp_path / "ae.ckpt", weights_only=True).eval()
    x = _images(n=8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_indices(x), model.encode_indices(x))
        assert torch.equal(loaded.encode(x), model.encode(x))
    assert loaded.scale_factor.item() == model.scale_factor.item() != 1.0


def test_the_discriminator_joins_after_its_warm_up_and_only_trains_then() -> None:
    model = _model("model.disc_start=2")
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = _fit(model, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))
    assert not model.automatic_optimization and trainer.global_step == 2  # autoencoder steps only
    trainer = _fit(model, steps=2)  # a new Trainer on the same module: ae_steps goes on from 2
    assert int(model.ae_steps) == 4 and trainer.global_step == 4  # now both optimizers step
    assert not all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))


def _cli(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GENLAB_RUN_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "genlab.train", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow  # 15-25 s: two processes / a discriminator run; make test-all runs it
def test_entrypoint_run_with_the_discriminator_on_after_one_step(log_dir: Path) -> None:
    result = _cli(
        *TINY, f"log_dir={log_dir}", "run_name=ae", "trainer=debug", "model.disc_start=1",
        "callbacks.progress.refresh_rate=0", "callbacks.samples.num_samples=8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = log_dir / "autoencoder" / "ae"
    rows = read_metrics(run)
    assert len(column(rows, "val/loss")) == 2 and len(column(rows, "train/d_loss")) > 0
    for name in ("samples_final", "reconstructions_final"):
        assert (run / "samples" / f"{name}.png").is_file()
    checkpoint = run / "checkpoints" / "last.ckpt"
    model = load_model(checkpoint)  # the checkpoint alone rebuilds the model, in this other process
    lightning_way = AutoencoderModule.load_from_checkpoint(checkpoint).eval()
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value) and torch.equal(lightning_way.state_dict()[key], value), key
    x = _images(n=8)
    with torch.no_grad():
        assert torch.equal(model.encode(x), lightning_way.encode(x))
    assert model.scale_factor.item() != 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.downsample_factor=3"], "model.downsample_factor must be a power of 2"),
        (["data.image_size=28", "model.downsample_factor=8"], "downsample_factor=8 does not divide data.image_size=28"),
        (["model.downsample_factor=2"], "model.encoder.hidden_channels has 3 widths but model.downsample_factor=2"),
        (["model.regularizer=gauss"], "'model.regularizer' = 'gauss' has the wrong type"),
        (["model.disc_start=-1"], "model.disc_start=-1 needs"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert main([*TINY, "trainer=debug", f"log_dir={tmp_path}", "callbacks.progress.refresh_rate=0", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)


def test_regularizer_outside_kl_and_vq_is_refused_when_built_directly() -> None:
    hparams = dict(compose(list(TINY)).model)
    with pytest.raises(ConfigError, match="model.regularizer must be kl or vq, got 'gauss'"):
        instantiate({**hparams, "regularizer": "gauss"})
