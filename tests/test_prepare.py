"""`make prepare` / genlab-prepare on inputs the tests write: an image folder, MNIST's IDX files, a text
file, and the bad inputs a user gives (each one line, no traceback)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data.streaming import StreamingDataModule
from genlab.prepare import main, prepare


def write_idx(folder: Path, prefix: str, n: int, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def test_image_folder_with_a_bad_file_and_resizing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(10):
        path = tmp_path / "images" / ("cats" if i < 6 else "dogs") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(path, quality=95)
    (tmp_path / "images" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    out = tmp_path / "chunks"
    assert main([str(tmp_path / "images"), str(out), "--workers=2", "--image-size=16", "--val-fraction=0.2"]) == 0
    meta = json.loads((out / "genlab.json").read_text())
    assert meta["num_classes"] == 2 and meta["image_size"] == 16
    assert sum(meta["samples"].values()) == 10  # the broken file left out (with a warning naming it)
    assert "prepared images" in capsys.readouterr().out
    data = StreamingDataModule(str(out), batch_size=4, num_workers=0, image_size=16, channels=3)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.max() <= 1


def test_mnist_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw, "train", 40, rng)
    write_idx(raw, "t10k", 10, rng)
    meta = prepare("mnist", str(tmp_path / "chunks"), workers=2, val_fraction=0.25, data_dir=str(tmp_path / "data"))
    assert meta["samples"] == {"train": 30, "val": 10, "test": 10} and meta["num_classes"] == 10
    data = StreamingDataModule(str(tmp_path / "chunks"), batch_size=8, num_workers=0, image_size=28, channels=1)
    data.setup("fit")
    x, _ = next(iter(data.test_dataloader()))
    pixels = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(10, 28, 28)
    assert x.shape == (8, 1, 28, 28)
    assert ((x[0, 0] + 1) * 127.5).round().byte().numpy().tolist() == pixels[0].tolist()  # lossless, in order


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("", "SRC is empty: give an image folder, mnist, cifar10 or a text file"),
        ("{tmp}/empty_folder", "no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) under"),
        ("{tmp}/empty.txt", "is an empty file: give a text file with some text"),
        ("{tmp}/nothing_here", "is not a folder of images, a text file, mnist or cifar10"),
        ("imagenet", "is not a folder of images, a text file, mnist or cifar10"),
    ],
)
def test_bad_sources_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], src: str, message: str) -> None:
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty.txt").write_text("")
    assert main([src.format(tmp=tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab-prepare: error: ") and message in err[0], err


def test_an_existing_output_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "book.txt").write_text("some text " * 50)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main([str(tmp_path / "book.txt"), str(tmp_path / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
