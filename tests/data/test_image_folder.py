"""A folder of the user's own images, written by the test: mixed sizes and modes, classes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data import ImageFolderDataModule
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
    return ImageFolderDataModule(
        path=str(path), image_size=16, batch_size=4, val_fraction=0.2, test_fraction=0.1, num_workers=0, **kwargs
    )


def test_mixed_images_load_at_the_configured_size_with_class_labels(tmp_path: Path) -> None:
    _write_images(tmp_path)
    dm = _module(tmp_path)
    dm.setup("fit")
    assert dm.num_classes == 2 and sum(len(s) for s in dm.splits.values()) == 18
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) <= {0, 1}


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    _write_images(tmp_path)
    (tmp_path / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    with pytest.raises(DataError, match=r"broken\.png.*on_bad_file=skip"):
        _module(tmp_path).setup("fit")
    dm = _module(tmp_path, on_bad_file="skip")
    dm.setup("fit")
    assert sum(len(s) for s in dm.splits.values()) == 18


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist: set data.path"):
        _module(tmp_path / "nowhere").setup("fit")
