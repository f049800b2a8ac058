"""Text-to-image diffusion (experiment=text_to_image) at tiny sizes: text guidance, the empty caption,
bad prompts, a short real run, and a checkpoint that samples for a prompt in a new process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHORT_RUN, column, read_metrics

from genlab import sample as sample_command
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.diffusion import DiffusionModule
from genlab.train import train

TINY = (
    "experiment=text_to_image",
    "data.image_size=16",
    "model.net.base_channels=8",
    "model.net.num_heads=2",
    "model.net.conditioning.n_embd=16",
    "model.net.conditioning.n_layer=1",
    "model.net.conditioning.n_head=2",
)
PROMPTS = ["a 3 above a 7", "two fives"]


@pytest.fixture(scope="module")
def model() -> DiffusionModule:
    torch.manual_seed(0)
    model = instantiate(compose(list(TINY)).model)
    with torch.no_grad():  # weights in the zero-initialised output layers: samples depend on the caption
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _draw(model: DiffusionModule, **kwargs) -> torch.Tensor:
    torch.manual_seed(3)
    return model.sample(2, steps=3, **kwargs)


def test_guidance_one_is_conditional_sampling(model: DiffusionModule) -> None:
    net, ids = model.ema.shadow, model.conditioning.encode(PROMPTS)
    torch.manual_seed(3)
    noise = torch.randn(2, 1, 16, 16)
    plain = model.process.sample(lambda x, t: net(x, model.process.net_time(t), ids), noise, sampler="ddim", steps=3)
    torch.testing.assert_close(_draw(model, prompts=PROMPTS, guidance=1.0), plain)
    assert not torch.allclose(_draw(model, prompts=PROMPTS, guidance=3.0), plain)  # guidance mixes in the null


def test_empty_caption_is_unconditional(model: DiffusionModule) -> None:
    unconditional = _draw(model, prompts=PROMPTS, guidance=0.0)  # the null condition alone
    torch.testing.assert_close(_draw(model, prompts=["", ""], guidance=1.0), unconditional)
    torch.testing.assert_close(_draw(model, prompts=["", ""], guidance=3.0), unconditional, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_draw(model, prompts=PROMPTS, guidance=1.0), unconditional)


def test_dit_text_model_empty_caption_is_unconditional() -> None:
    torch.manual_seed(0)
    dit = ("model.net.hidden_size=16", "model.net.depth=1", "model.net.num_heads=2", *TINY[-3:])
    model = instantiate(compose(["experiment=text_to_image_dit", *dit]).model).eval()
    with torch.no_grad():
        for p in model.ema.shadow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unconditional = _draw(model, prompts=PROMPTS, guidance=0.0)
    torch.testing.assert_close(_draw(model, prompts=["", ""], guidance=1.0), unconditional)
    assert not torch.allclose(_draw(model, prompts=PROMPTS, guidance=1.0), _draw(model, prompts=["", ""]))


def test_bad_prompts_one_line_each(model: DiffusionModule) -> None:
    with pytest.raises(ConfigError, match=r"has 60 characters; the text encoder holds 48 \(data.context"):
        model.sample(1, steps=1, prompts=["a" * 60])
    with pytest.raises(ConfigError, match=r"character\(s\) '!' are not in the model's alphabet"):
        model.sample(1, steps=1, prompts=["a 3!"])
    with pytest.raises(ConfigError, match=r"give a list of 2 prompts"):
        model.sample(2, steps=1, prompts=["a 3"])
    labelled = instantiate(compose(["model=diffusion", "model.net.base_channels=8", "model.net.num_heads=2"]).model)
    with pytest.raises(ConfigError, match=r"no text encoder"):
        labelled.sample(1, steps=1, prompts=["a 3"])
    with pytest.raises(ConfigError, match=r"no text encoder.*experiment=text_to_image"):  # PROMPT= to make sample
        sample_command.generate_text(labelled, 1, 0, prompt="a 3")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    overrides = [*TINY, f"log_dir={log_dir}", "run_name=t2i", *SHORT_RUN, "data.batch_size=32"]
    overrides += ["data.train_scenes=640", "data.val_scenes=64", "trainer.max_epochs=2", "model.sample_steps=2"]
    overrides += ["callbacks.samples.num_samples=4", "model.optimizer.lr=3e-3"]
    train(compose(overrides))
    return log_dir / "diffusion" / "t2i"


def test_short_run_lowers_val_loss(run: Path) -> None:
    val_loss = column(read_metrics(run), "val/loss")
    assert len(val_loss) == 2 and val_loss[1] < val_loss[0]


def test_checkpoint_alone_samples_for_a_prompt_in_a_new_process(run: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "alone.ckpt"  # the checkpoint, away from its run folder
    ckpt.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "genlab.sample", str(ckpt), "n=4", "steps=2", "guidance=3", f"out={tmp_path}"]
    result = subprocess.run([*command, "prompt=a 3 above a 7"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = torch.load(next(tmp_path.glob("*a_3_above_a_7.pt")), weights_only=True)
    assert record["samples"].shape == (4, 1, 16, 16) and record["prompt"] == "a 3 above a 7"
    assert record["samples"].min() >= -1 and record["samples"].max() <= 1
