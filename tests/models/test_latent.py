"""Generators on latents: diffusion and flow matching with `model.first_stage` (a frozen autoencoder).
The first stage stays frozen (bit-identical weights, outside the optimizer and the EMA), samples decode
to the data's shape, a checkpoint alone samples in a new process, `make sample` / `make eval` work
unchanged, and bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import LATENT, TINY_AE, TINY_UNET
from omegaconf import OmegaConf

from genlab import evaluate, sample
from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.models.diffusion import DiffusionModule
from genlab.train import main

SHORT = ("trainer=debug", "callbacks.progress.refresh_rate=0", "callbacks.samples.num_samples=4")


def _train(log_dir: Path, name: str, *argv: str) -> Path:
    assert main([f"log_dir={log_dir}", f"run_name={name}", *SHORT, *argv]) == 0
    (run,) = log_dir.glob(f"*/{name}")
    return run


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("logs"), "ae", *TINY_AE, "trainer.max_steps=3")


@pytest.fixture(scope="module")
def vq_ae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vq = ("model.regularizer=vq", "model.quantizer.num_codes=16")
    return _train(tmp_path_factory.mktemp("logs"), "vq", *TINY_AE, *vq, "trainer.max_steps=3")


def _latent_model(family: str, ae_run: Path, *overrides: str) -> DiffusionModule:
    torch.manual_seed(0)
    return instantiate(
        compose([f"model={family}", *TINY_UNET, *LATENT[family], f"model.first_stage={ae_run}", *overrides]).model
    )


@pytest.mark.parametrize(
    ("family", "first_stage"), [("diffusion", "ae_run"), ("flow_matching", "ae_run"), ("diffusion", "vq_ae_run")]
)
def test_the_first_stage_stays_frozen_outside_the_optimizer_and_the_ema(family: str, first_stage: str, request) -> None:
    # vq: a codebook moved by EMA in training mode, so only eval mode keeps it bit-identical (no gradient needed)
    model = _latent_model(family, request.getfixturevalue(first_stage))
    frozen = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    net_before = [p.detach().clone() for p in model.net.parameters()]
    datamodule = instantiate(compose([f"model={family}", *TINY_UNET]).data)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    assert not all(torch.equal(a, b) for a, b in zip(net_before, model.net.parameters(), strict=True))  # it trained
    for key, value in model.first_stage.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # bit-identical, buffers (scale_factor, codebook) too
    assert not model.first_stage.training and not any(p.requires_grad for p in model.first_stage.parameters())
    assert not model.train().first_stage.training  # model.train() (a user's, or a loop's) leaves it frozen
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.first_stage.parameters()}
    assert optimized == {id(p) for p in model.net.parameters()}
    shadow = sum(p.numel() for p in model.ema.shadow.parameters())
    assert shadow == sum(p.numel() for p in model.net.parameters())  # the EMA copies the denoiser only
    assert model.net.in_channels == 4 and model.net.image_size == 2  # built for the 2x2x4 latents


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_sample_decodes_to_the_datas_shape_in_range(family: str, ae_run: Path) -> None:
    model = _latent_model(family, ae_run).eval()
    images = model.sample(6, labels=[0, 1, 2, 3, 4, 5])
    assert images.shape == (6, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert model.to_latent(x).shape == (3, 4, 2, 2)
    assert model.anomaly_score(x, k=2).shape == (3,)


def _images_of(model: DiffusionModule, n: int = 4) -> torch.Tensor:
    torch.manual_seed(1)
    return model.sample(n, steps=2)


def test_the_checkpoint_alone_samples_in_a_new_process_and_sample_and_eval_work(
    ae_run: Path, tmp_path: Path, monkeypatch
) -> None:
    first_stage = tmp_path / "ae"  # a copy, deleted once the latent model is trained
    shutil.copytree(ae_run, first_stage)
    run = _train(
        tmp_path / "logs",
        "latent",
        "model=diffusion",
        *TINY_UNET,
        *LATENT["diffusion"],
        f"model.first_stage={first_stage}",
    )
    shutil.rmtree(first_stage)
    ckpt = run / "checkpoints" / "last.ckpt"
    code = (
        "import sys, torch; from genlab import load_model; from genlab.models.diffusion import DiffusionModule\n"
        "model = load_model(sys.argv[1]); torch.manual_seed(1); a = model.sample(4, steps=2)\n"
        "other = DiffusionModule.load_from_checkpoint(sys.argv[1]).eval(); torch.manual_seed(1)\n"
        "assert torch.equal(a, other.sample(4, steps=2))\n"
        "torch.save(a, sys.argv[2])"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(ckpt), str(tmp_path / "a.pt")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = torch.load(tmp_path / "a.pt", weights_only=True)
    assert images.shape == (4, 1, 8, 8) and images.min() >= -1 and images.max() <= 1

    # make sample / make eval on the latent run, through their functions, the autoencoder's folder gone
    (written, *_) = sample.sample({"run": str(run), "n": 4, "steps": 2, "out": str(tmp_path / "out")})
    assert Path(written).is_file()
    monkeypatch.setattr(evaluate, "make_features", lambda *args: _Features())
    report = evaluate.evaluate({"run": str(run), "n": 100, "device": "cpu", "batch_size": 100})
    assert "fid" in report["metrics"] and "test/loss" in json.dumps(report["metrics"])


class _Features(torch.nn.Module):
    """A fixed projection standing for the FID features (no classifier to train here)."""

    num_features, key = 8, "latent-test-features"

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1).float())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.first_stage=nowhere/at/all"], "model.first_stage='nowhere/at/all': no autoencoder checkpoint there"),
        (
            ["model.first_stage={ae}", "data=mnist5k"],
            "the autoencoder was trained on 1x8x8 images, the data are 1x28x28",
        ),
        (["model.first_stage={ae}", "model.process.clip_x0=true"], "set model.process.clip_x0=false"),
        (["model.first_stage={ae}", "model.process.prediction=epsilon"], "use model.process.prediction=v"),
        (["model.first_stage={latent}"], "is not an autoencoder run (DiffusionModule)"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, ae_run: Path, tmp_path: Path, capsys) -> None:
    latent = ae_run.parent.parent / "diffusion" / "not-an-ae"
    if "{latent}" in " ".join(argv) and not latent.exists():  # a diffusion run (pixels) as a first stage
        _train(ae_run.parent.parent, "not-an-ae", "model=diffusion", *TINY_UNET, "model.net.channel_mults=[1,2]")
    argv = [a.format(ae=ae_run, latent=latent) for a in argv]
    assert main([f"log_dir={tmp_path}", *SHORT, "model=diffusion", *TINY_UNET, *LATENT["diffusion"], *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)


@pytest.mark.parametrize("experiment", ["latent_diffusion", "latent_flow_matching"])
def test_a_latent_experiment_without_a_first_stage_says_to_train_one(experiment: str, tmp_path: Path, capsys) -> None:
    assert main([f"log_dir={tmp_path}", f"experiment={experiment}", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert 'make train MODEL=autoencoder ARGS="data=mnist5k"' in err[-1] and "model.first_stage=" in err[-1]


@pytest.mark.parametrize("experiment", ["latent_diffusion", "latent_flow_matching"])
def test_a_latent_experiment_builds_for_7x7x4_latents(experiment: str, tmp_path: Path) -> None:
    # an untrained mnist5k autoencoder checkpoint: the experiment's net must fit its 7x7x4 latents
    config = OmegaConf.to_container(compose(["model=autoencoder", "data=mnist5k"]), resolve=True)
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"genlab": {"config": config}, "state_dict": instantiate(config["model"]).state_dict()}, ckpt)
    model = instantiate(compose([f"experiment={experiment}", f"model.first_stage={ckpt}"]).model)
    assert (model.net.in_channels, model.net.image_size) == (4, 7)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert model.to_latent(x).shape == (2, 4, 7, 7)
    latents = []
    decode = model.first_stage.decode
    model.first_stage.decode = lambda z: (latents.append(z * model.first_stage.scale_factor), decode(z))[1]
    assert model.sample(2, steps=3).shape == (2, 1, 28, 28)
    assert latents[0].abs().max() < 10  # an untrained net's latents stay near the noise's scale, not ~1e3
