"""The VQ-GPT (`experiment=vq_gpt`): a GPT over the codes of a frozen VQ autoencoder. It samples only
valid code indices and decodes them to images, a short run lowers val/loss, the first stage stays
frozen (bit-identical, outside the optimizer), its checkpoint alone samples in a new process,
`make sample` / `make eval` treat it as an image model, and bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_AE, PoolFeatures
from omegaconf import OmegaConf

from genlab import evaluate, sample
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.vq_gpt import VQGPTModule
from genlab.train import main

TINY_VQ = (*TINY_AE, "model.quantizer.num_codes=16")  # 8x8x1 -> 2x2x4, 16 codes: each digit is 4 codes
# The experiment's module on the digits with a two-layer GPT.
TINY_GPT = (
    "experiment=vq_gpt",
    "data=digits",
    "data.batch_size=32",
    "model.net.n_layer=2",
    "model.net.n_head=2",
    "model.net.n_embd=32",
    "model.net.dropout=0.0",
    "model.warmup_steps=2",
    "model.optimizer.lr=3.0e-3",
)
SHORT = ("trainer=debug", "callbacks.progress.refresh_rate=0", "callbacks.samples.num_samples=4")


def _first_stage(path: Path, *overrides: str, steps: int = 3) -> Path:
    """A genlab checkpoint of a tiny autoencoder trained `steps` steps (k-means codes, then EMA moves)."""
    config = OmegaConf.to_container(compose([*TINY_VQ, *overrides]), resolve=True)
    torch.manual_seed(0)
    model = instantiate(config["model"])
    if steps:
        trainer = L.Trainer(
            accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(model, datamodule=instantiate(config["data"]))
    torch.save({"genlab": {"config": config}, "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _first_stage(tmp_path_factory.mktemp("ae") / "vq.ckpt", "model.regularizer=vq")


def _model(first_stage: Path, *overrides: str) -> VQGPTModule:
    torch.manual_seed(0)
    return instantiate(compose([*TINY_GPT, f"model.first_stage={first_stage}", *overrides]).model)


def test_it_samples_only_code_indices_and_decodes_them(vq_ckpt: Path) -> None:
    model = _model(vq_ckpt).eval()
    assert (model.net.vocab_size, model.net.block_size) == (16 + 10, 4)  # 16 codes + 10 class tokens; 2x2 codes
    with torch.no_grad():  # make the class tokens the likeliest by far: only the mask keeps them out
        model.net.tok_emb.weight[16:] = 10 * model.net.tok_emb.weight[16:].sign()
        model.net.ln_f.weight.fill_(10.0)
    logits = model.net(torch.full((1, 1), 16))[0, -1]
    assert logits.argmax() >= 16  # unmasked, a class token would be drawn
    codes = model.sample_codes(64, labels=torch.arange(64) % 10, temperature=2.0)
    assert codes.shape == (64, 2, 2) and codes.min() >= 0 and codes.max() < 16
    images = model.sample(6, labels=[0, 1, 2, 3, 4, 5])
    assert images.shape == (6, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert model.conditional and not _model(vq_ckpt, "model.num_classes=0").conditional
    unconditional = _model(vq_ckpt, "model.num_classes=0")
    assert unconditional.net.vocab_size == 17 and unconditional.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="model.num_classes=0"):
        unconditional.sample(2, labels=[0, 1])


def test_a_short_run_lowers_val_loss_and_the_first_stage_stays_frozen(vq_ckpt: Path) -> None:
    model = _model(vq_ckpt)
    frozen = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    datamodule = instantiate(compose([*TINY_GPT, f"model.first_stage={vq_ckpt}"]).data)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=30, limit_val_batches=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    (before,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.fit(model, datamodule=datamodule)
    (after,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    assert after["val/loss"] < before["val/loss"] - 0.1, (before, after)
    for key, value in model.first_stage.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # bit-identical, the codebook and scale_factor too
    assert not model.first_stage.training and not any(p.requires_grad for p in model.first_stage.parameters())
    assert not model.train().first_stage.training  # model.train() leaves it frozen
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.net.parameters()}


def test_the_checkpoint_alone_samples_in_a_new_process_and_sample_and_eval_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_stage = _first_stage(tmp_path / "vq.ckpt", "model.regularizer=vq")  # deleted once the GPT is trained
    logs = tmp_path / "logs"
    argv = [f"log_dir={logs}", "run_name=vqgpt", *SHORT, *TINY_GPT, f"model.first_stage={first_stage}"]
    assert main(argv) == 0
    first_stage.unlink()
    (run,) = logs.glob("*/vqgpt")
    code = (
        "import sys, torch; from genlab import load_model; from genlab.models.vq_gpt import VQGPTModule\n"
        "model = load_model(sys.argv[1]); torch.manual_seed(1); a = model.sample(4)\n"
        "other = VQGPTModule.load_from_checkpoint(sys.argv[1]).eval(); torch.manual_seed(1)\n"
        "assert torch.equal(a, other.sample(4))\n"
        "torch.save(a, sys.argv[2])"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-c", code, str(ckpt), str(tmp_path / "a.pt")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = torch.load(tmp_path / "a.pt", weights_only=True)
    assert images.shape == (4, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert (run / "samples" / "samples_final.png").is_file()  # the sample logger drew images

    # make sample / make eval on the run, through their functions, the autoencoder's file gone
    written = sample.sample({"run": str(run), "n": 4, "label": 3, "temperature": 0.5, "out": str(tmp_path / "out")})
    assert written[0].suffix == ".png" and written[0].is_file()
    monkeypatch.setattr(evaluate, "make_features", lambda *args: PoolFeatures("vq-gpt-test-features"))
    report = evaluate.evaluate(
        {"run": str(run), "n": 100, "device": "cpu", "batch_size": 100, "cache_dir": str(tmp_path / "cache")}
    )
    assert {"fid", "precision", "recall", "test/loss"} <= set(report["metrics"]), json.dumps(report["metrics"])


def test_the_anomaly_score_is_the_code_nll_marginal_over_classes(vq_ckpt: Path) -> None:
    model = _model(vq_ckpt).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    score = model.anomaly_score(x)
    codes = model.to_codes(x)  # (3, 4)
    per_class = torch.stack([model.code_nll(codes, torch.full((3,), y)) for y in range(10)])  # nats per image
    expected = -torch.log(torch.exp(-per_class.double()).mean(0)) / 4  # -log of the mean likelihood, per code
    assert score.shape == (3,) and torch.allclose(score.double(), expected, rtol=1e-4)
    unconditional = _model(vq_ckpt, "model.num_classes=0").eval()
    assert torch.allclose(unconditional.anomaly_score(x), unconditional.code_nll(codes, None) / 4)


def test_the_experiment_builds_for_7x7_codes_of_mnist5k(tmp_path: Path) -> None:
    argv = ["model=autoencoder", "data=mnist5k", "model.regularizer=vq"]
    config = OmegaConf.to_container(compose(argv), resolve=True)
    ckpt = tmp_path / "vq.ckpt"
    torch.save({"genlab": {"config": config}, "state_dict": instantiate(config["model"]).state_dict()}, ckpt)
    model = instantiate(compose(["experiment=vq_gpt", f"model.first_stage={ckpt}"]).model)
    assert (model.net.vocab_size, model.net.block_size) == (128 + 10, 49)
    assert model.to_codes(torch.rand(2, 1, 28, 28) * 2 - 1).shape == (2, 49)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.first_stage={kl}"], "is a KL autoencoder: the VQ-GPT models code indices"),
        (["model.first_stage={vae}"], "is not an autoencoder run (VAEModule)"),
        (["model.first_stage={vq}", "model.vocab_size=20"], "model.vocab_size=20 does not match the first stage"),
        (["model.first_stage={vq}", "data=mnist5k"], "trained on 1x8x8 images, the data are 1x28x28"),
        (["model.first_stage=nowhere/at/all"], "model.first_stage='nowhere/at/all': no autoencoder checkpoint there"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, vq_ckpt: Path, tmp_path: Path, capsys) -> None:
    kl = _first_stage(tmp_path / "kl.ckpt", steps=0) if "{kl}" in argv[0] else None
    vae = tmp_path / "vae.ckpt"
    if "{vae}" in argv[0]:  # a genlab checkpoint of another family
        torch.save({"genlab": {"config": OmegaConf.to_container(compose(["model=vae"]), resolve=True)}}, vae)
    argv = [a.format(kl=kl, vae=vae, vq=vq_ckpt) for a in argv]
    assert main([f"log_dir={tmp_path}", *SHORT, *TINY_GPT, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)


def test_a_checkpoint_with_another_vocabulary_is_refused_in_one_line(vq_ckpt: Path, tmp_path: Path) -> None:
    trained = _model(vq_ckpt)
    checkpoint = {"state_dict": trained.state_dict()}
    other = _first_stage(tmp_path / "vq32.ckpt", "model.regularizer=vq", "model.quantizer.num_codes=32", steps=0)
    with pytest.raises(ConfigError, match="vocabulary of 26 tokens, but model.first_stage \\(32 codes\\)"):
        _model(other).on_load_checkpoint(checkpoint)


def test_a_vq_gpt_experiment_without_a_first_stage_says_to_train_one(tmp_path: Path, capsys) -> None:
    assert main([f"log_dir={tmp_path}", "experiment=vq_gpt", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "make train MODEL=autoencoder" in err[-1] and "model.first_stage=" in err[-1]
