"""A folder of your own images: flat (one class) or one subfolder per class, any sizes and modes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from genlab.data.images import ImageDataModule, to_model_range
from genlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFiles(Dataset):
    """Decodes, converts and resizes on access, a batch (list of indices) at a time."""

    def __init__(self, files: list[Path], labels: list[int], channels: int, image_size: int, levels: int) -> None:
        self.files, self.labels = files, torch.tensor(labels, dtype=torch.long)
        self.mode, self.channels, self.image_size = ("L" if channels == 1 else "RGB"), channels, image_size
        self.levels = levels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self._read(self.files[i]) for i in index])
        return images, self.labels[torch.as_tensor(index)]

    def _read(self, path: Path) -> torch.Tensor:
        try:
            return read_image(path, self.channels, self.image_size, self.levels)
        except READ_ERRORS as err:  # the file changed after setup checked it
            raise DataError(f"cannot read image '{path}' ({err})") from None


# What a broken, truncated, non-image or unconvertible file raises while decoding.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
HIGH_BIT_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1}


def read_image(path: Path, channels: int, image_size: int, levels: int = 256) -> torch.Tensor:
    """One file as `(channels, image_size, image_size)` in [-1, 1] on the grid of `levels` intensity
    levels, whatever its mode and size (8-bit files must match `levels`: 256)."""
    with Image.open(path) as image:
        ImageOps.exif_transpose(image, in_place=True)  # phone photos store their rotation in EXIF
        if image.mode in HIGH_BIT_DEPTH:
            # 16-bit (and 32-bit int, float) grey: scale to [0, 1]; PIL's convert("L") would clip to 255 (all white)
            grey = np.asarray(image, dtype=np.float32) / HIGH_BIT_DEPTH[image.mode]
            grey = np.round(np.clip(grey, 0, 1) * (levels - 1)) / (levels - 1)  # quantised to the declared levels
            return to_model_range(torch.from_numpy(grey)[None, None], channels, image_size, levels)[0]
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # what a viewer shows: transparent pixels on white, not the arbitrary colours stored under them
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, -1)
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return to_model_range(pixels, channels, image_size, levels)[0]


class ImageFolderDataModule(ImageDataModule):
    """Every image under `path`; subfolder names become class labels (sorted), else label 0.

    Each file is decoded once at setup: a truncated or non-image file, or one whose class folder's
    label is not below `num_classes`, stops the run with its name (`on_bad_file: error`) or is left
    out with a warning naming it (`on_bad_file: skip`). Any size and mode loads: RGBA/LA/P with
    transparency over white, 16-bit grey scaled (not clipped), then converted and resized.
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
        label_of = {f: classes.index(f.parent.relative_to(self.path).as_posix()) for f in files}
        good = [f for f in files if self._label_fits(f, label_of[f], classes) and self._readable(f)]
        if not good:
            raise DataError(f"none of the {len(files)} images under '{self.path}' could be used")
        self.num_classes = self.num_classes or len(classes)
        return {"all": ImageFiles(good, [label_of[f] for f in good], self.channels, self.image_size, self.levels)}

    def _label_fits(self, path: Path, label: int, classes: list[str]) -> bool:
        if not self.num_classes or label < self.num_classes:
            return True
        problem = (
            f"image '{path}' has label {label} (class folder '{classes[label]}', one of {len(classes)}) "
            f"but data.num_classes={self.num_classes}"
        )
        if self.on_bad_file == "error":
            raise DataError(f"{problem}. Raise data.num_classes, move the folder out, or set data.on_bad_file=skip.")
        log.warning("skipping %s", problem)
        return False

    def _readable(self, path: Path) -> bool:
        try:  # decodes and converts fully, as training will: catches truncated files that verify() lets through
            read_image(path, self.channels, self.image_size, self.levels)
            return True
        except READ_ERRORS as err:
            if self.on_bad_file == "error":
                raise DataError(
                    f"cannot read image '{path}' ({err}). Remove or fix the file, or set "
                    "data.on_bad_file=skip to leave unreadable files out."
                ) from None
            log.warning("skipping unreadable image %s (%s)", path, err)
            return False
