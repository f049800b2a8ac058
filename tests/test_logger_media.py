"""What the loggers receive from SampleLogger, offline: image grids as W&B images and TensorBoard images
(the file as written, watermark included), text samples as a W&B table and TensorBoard text."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_offline import isolate_wandb, offline_runs, reset_wandb

from genlab import watermark
from genlab.callbacks import SampleLogger
from genlab.loggers import wandb_logger


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolate_wandb(monkeypatch, tmp_path)
    yield
    reset_wandb()


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(4, 1, 8, 8) * 2 - 1


def test_wandb_gets_the_marked_grid_as_an_image_and_texts_as_a_table(tmp_path: Path) -> None:
    logger = wandb_logger(save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(loggers=[logger], global_step=3)
    SampleLogger._log_images(trainer, "samples", _images(), tmp_path / "grid.png")
    SampleLogger._log_text(trainer, ["first text", "second"], tmp_path / "samples.txt")
    logger.finalize("success")

    (run,) = offline_runs(tmp_path)
    (image,) = [p for p in run.media if p.suffix == ".png"]
    assert image.parent.name == "images" and image.name.startswith("samples_")  # a wandb.Image
    assert watermark.is_marked(watermark.load(image))  # W&B shows the file as written
    (table,) = [p for p in run.media if p.name.endswith(".table.json")]
    content = json.loads(table.read_text())
    assert run.summary["samples._type"] == "table-file"  # the text, logged last under the same key
    assert content["columns"] == ["step", "sample"] and content["data"] == [[3, "first text"], [3, "second"]]


def test_tensorboard_gets_the_marked_grid_as_an_image_and_texts_as_text(tmp_path: Path) -> None:
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    trainer = SimpleNamespace(loggers=[logger], global_step=3)
    SampleLogger._log_images(trainer, "samples", _images(), tmp_path / "grid.png")
    SampleLogger._log_text(trainer, ["first text"], tmp_path / "samples.txt")
    logger.experiment.flush()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0}).Reload()
    (image,) = events.Images("samples")
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    assert image.step == 3 and watermark.is_marked(pixels)
    (text,) = events.Tensors("samples/text_summary")
    assert b"first text" in text.tensor_proto.string_val[0]


def test_a_text_to_image_grid_comes_with_its_prompts_as_a_wandb_table(tmp_path: Path) -> None:
    """The prompts a text-to-image grid was drawn for, in grid order, as a wandb.Table beside the image."""
    logger = wandb_logger(save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(loggers=[logger], global_step=5, is_global_zero=True, default_root_dir=str(tmp_path))
    trainer.strategy = None  # not FSDP: the weights are whole

    class TextModel(torch.nn.Module):
        text_conditional = True
        device = torch.device("cpu")

        def sample(self, n: int) -> torch.Tensor:
            return _images()[:n]

        def default_prompts(self, n: int) -> list[str]:
            return ["a seven", "two threes"][:n]

    callback = SampleLogger(num_samples=2)
    callback.log_samples(trainer, TextModel(), "final")
    logger.finalize("success")
    assert (tmp_path / "samples" / "prompts_final.txt").read_text().startswith("a seven")
    (run,) = offline_runs(tmp_path)
    (table,) = [p for p in run.media if p.name.endswith(".table.json")]
    content = json.loads(table.read_text())
    assert content["columns"] == ["step", "prompt"] and content["data"] == [[5, "a seven"], [5, "two threes"]]
