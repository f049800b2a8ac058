"""A folder of the user's own images, written by the test: mixed sizes and modes, classes, bad files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data import ImageFolderDataModule, image_folder
from genlab.errors import DataError


def _write_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, mode, size in (("cats", "RGB", (40, 30)), ("dogs", "L", (17, 17)), ("dogs", "RGBA", (64, 64))):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
            pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8).squeeze()
            Image.fromarray(pixels, mode=mode).save(folder / f"{mode}_{i}.png")


def _module(path: Path, **kwargs) -> ImageFolderDataModule:
    settings = {"image_size": 16, "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.1, "num_workers": 0}
    return ImageFolderDataModule(path=str(path), **{**settings, **kwargs})


def test_mixed_images_load_at_the_configured_size_with_class_labels(tmp_path: Path) -> None:
    _write_images(tmp_path)
    dm = _module(tmp_path)
    dm.setup("fit")
    assert dm.num_classes == 2 and sum(len(s) for s in dm.splits.values()) == 18
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) <= {0, 1}


def test_corrupt_file_is_named_when_its_batch_is_read(tmp_path: Path) -> None:
    _write_images(tmp_path)
    (tmp_path / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    dm = _module(tmp_path, batch_size=19, val_fraction=0, test_fraction=0)
    dm.setup("fit")  # lists the files, decodes none
    assert len(dm.splits["train"]) == 19
    with pytest.raises(DataError, match=r"broken\.png.*on_bad_file=skip"):
        next(iter(dm.train_dataloader()))
    dm = _module(tmp_path, on_bad_file="skip", batch_size=19, val_fraction=0, test_fraction=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (18, 3, 16, 16) and y.shape == (18,)  # left out of its batch


def test_decoding_happens_in_the_loader_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_images(tmp_path / "images")
    original = image_folder.decode_image

    def decode_image(*args, **kwargs):
        (tmp_path / f"decoded_in_{os.getpid()}").touch()  # a file: the worker process's memory is its own
        return original(*args, **kwargs)

    monkeypatch.setattr(image_folder, "decode_image", decode_image)
    dm = _module(tmp_path / "images", num_workers=1)
    dm.setup("fit")
    probed = list(tmp_path.glob("decoded_in_*"))  # set-up decodes one image per split: does any read?
    for marker in probed:
        marker.unlink()
    assert len(probed) <= 1
    assert len(list(dm.train_dataloader())) == 3
    decoded_in = [p.name for p in tmp_path.glob("decoded_in_*")]
    assert decoded_in and f"decoded_in_{os.getpid()}" not in decoded_in  # the worker did, not this process


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist: set data.path"):
        _module(tmp_path / "nowhere").setup("fit")


def test_a_very_large_folder_points_to_make_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _write_images(tmp_path)
    monkeypatch.setattr(image_folder, "LARGE_FOLDER", 10)  # 18 images stand in for a few hundred thousand
    with caplog.at_level(logging.WARNING, logger="genlab.data.image_folder"):
        _module(tmp_path).setup("fit")
    assert f"make prepare SRC={tmp_path} OUT=<dir>" in caplog.text and "data=streaming" in caplog.text


@pytest.mark.parametrize("on_bad_file", ["error", "skip"])
def test_a_folder_whose_only_file_is_not_an_image_is_refused_at_set_up(tmp_path: Path, on_bad_file: str) -> None:
    (tmp_path / "notes.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"image folder '.*': 1 images split into train 1, val 0, test 0: too few"):
        _module(tmp_path, on_bad_file=on_bad_file).setup("fit")  # val and test asked for, none there


def test_a_folder_whose_images_are_all_unreadable_is_refused_at_set_up(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"none of the \d+ images of the train split could be read"):
        _module(tmp_path, on_bad_file="skip").setup("fit")
    with pytest.raises(DataError, match=r"cannot read image '.*\.png'"):  # the first file read, named
        _module(tmp_path).setup("fit")


def test_a_split_smaller_than_a_batch_still_gives_one(tmp_path: Path) -> None:
    _write_images(tmp_path)  # 18 images: train 13
    dm = _module(tmp_path, batch_size=64)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert len(x) == len(dm.splits["train"])  # one partial batch, not none (the last partial one is dropped)


def test_a_run_on_a_folder_without_a_readable_image_stops_before_training(tmp_path: Path, capsys) -> None:
    from genlab.train import main

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.png").write_bytes(b"not an image")
    argv = ["model=vae", "data=image_folder", f"data.path={tmp_path / 'images'}", "data.num_workers=0"]
    assert main([*argv, "trainer=debug", f"log_dir={tmp_path / 'logs'}", "callbacks.progress.refresh_rate=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("genlab: error: image folder") and "train 1, val 0, test 0" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not list((tmp_path / "logs").rglob("*.ckpt"))
