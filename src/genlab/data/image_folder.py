"""A folder of your own images: flat (one class) or one subfolder per class, any sizes and modes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from genlab.data.images import ImageDataModule, to_model_range
from genlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFiles(Dataset):
    """Decodes, converts and resizes on access, a batch (list of indices) at a time."""

    def __init__(self, files: list[Path], labels: list[int], channels: int, image_size: int) -> None:
        self.files, self.labels = files, torch.tensor(labels, dtype=torch.long)
        self.mode, self.channels, self.image_size = ("L" if channels == 1 else "RGB"), channels, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self._read(self.files[i]) for i in index])
        return images, self.labels[torch.as_tensor(index)]

    def _read(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            image = image.convert(self.mode).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8).reshape(self.image_size, self.image_size, -1)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
        return to_model_range(pixels, self.channels, self.image_size)[0]


class ImageFolderDataModule(ImageDataModule):
    """Every image under `path`; subfolder names become class labels (sorted), else label 0.

    Each file is checked once at setup: a truncated or non-image file stops the run with its name
    (`on_bad_file: error`) or is left out with a warning (`on_bad_file: skip`).
    """

    def __init__(
        self,
        path: str,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int | None = None,
        on_bad_file: Literal["error", "skip"] = "error",
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes or 0, **kwargs)
        self.path, self.on_bad_file = Path(path), on_bad_file

    def load(self) -> dict[str, Dataset]:
        if not self.path.is_dir():
            raise DataError(f"image folder '{self.path}' does not exist: set data.path to a folder of images")
        files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{self.path}'")
        classes = sorted({f.parent.relative_to(self.path).as_posix() for f in files})
        good = [f for f in files if self._readable(f)]
        if not good:
            raise DataError(f"none of the {len(files)} images under '{self.path}' could be read")
        labels = [classes.index(f.parent.relative_to(self.path).as_posix()) for f in good]
        if self.num_classes and len(classes) > self.num_classes:
            raise DataError(f"'{self.path}' has {len(classes)} class folders but data.num_classes={self.num_classes}")
        self.num_classes = self.num_classes or len(classes)
        return {"all": ImageFiles(good, labels, self.channels, self.image_size)}

    def _readable(self, path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.load()  # decodes fully: catches truncated files that verify() lets through
            return True
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            if self.on_bad_file == "error":
                raise DataError(
                    f"cannot read image '{path}' ({err}). Remove or fix the file, or set "
                    "data.on_bad_file=skip to leave unreadable files out."
                ) from None
            log.warning("skipping unreadable image %s (%s)", path, err)
            return False
