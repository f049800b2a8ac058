"""The invisible watermark (genlab.watermark) on small images: read back from marked ones, absent from
real ones and from files written with watermark=false, on every writer of model images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from genlab import watermark
from genlab.callbacks import SampleLogger
from genlab.errors import ConfigError
from genlab.sample import export_folder, parse_args, save_grid


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:6] * 255 / 16).round().astype(np.uint8)  # (6, 8, 8) real 8x8 digits


def test_a_marked_digit_reads_back_the_payload_and_a_real_one_does_not(digits: np.ndarray) -> None:
    for digit in digits:
        marked = watermark.embed(digit)
        assert marked.shape == (watermark.MIN_SIDE, watermark.MIN_SIDE, 3)  # enlarged: 8x8 cannot carry 48 bits
        assert watermark.is_marked(marked)
        assert not watermark.is_marked(watermark.enlarge(digit))  # the same digit, same size, unmarked
    assert not watermark.is_marked(watermark.embed(digits[0], payload=b"other!"))


def test_save_writes_the_mark_only_when_asked(digits: np.ndarray, tmp_path: Path) -> None:
    marked = watermark.save(digits[0][..., None], tmp_path / "marked.png")
    plain = watermark.save(digits[0][..., None], tmp_path / "plain.png", mark=False)
    assert watermark.is_marked(watermark.load(marked))
    with Image.open(plain) as image:
        assert (image.mode, image.size) == ("L", (8, 8))  # untouched: the data's size and channels
    assert not watermark.is_marked(watermark.load(plain))


def test_grids_exports_and_the_sample_logger_follow_the_option(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    for mark in (True, False):
        save_grid(images, tmp_path / f"grid-{mark}.png", mark)
        paths = export_folder(images, tmp_path / f"export-{mark}", None, classes=0, mark=mark)
        trainer = SimpleNamespace(loggers=[], global_step=0)
        SampleLogger._log_images(trainer, "samples", images, tmp_path / f"logged-{mark}.png", mark)
        written = [tmp_path / f"grid-{mark}.png", tmp_path / f"logged-{mark}.png", *paths]
        assert [watermark.is_marked(watermark.load(p)) for p in written] == [mark] * len(written)


def test_the_sample_option_takes_true_or_false() -> None:
    assert parse_args(["run", "watermark=false"])["watermark"] is False
    with pytest.raises(ConfigError, match="watermark: expected boolean"):
        parse_args(["run", "watermark=maybe"])
