"""A folder of your own images: flat (one class) or one subfolder per class, any sizes and modes.

Set-up only lists the files (paths and labels, every rank the same list); each image is decoded when
its batch is drawn, in the loader's workers (`data.num_workers`). A folder of hundreds of thousands of
files is better converted once into chunks (`make prepare SRC=<folder> OUT=<dir>`, then
`data=streaming data.path=<dir>`): listing and opening that many small files is slow on most storage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from genlab.data.images import ImageDataModule, to_model_range
from genlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


LARGE_FOLDER = 200_000  # files: past this, set-up suggests `make prepare`


class ImageFiles(Dataset):
    """Decodes, converts and resizes on access, a batch (list of indices) at a time (in a loader
    worker when `num_workers > 0`). A file that cannot be decoded stops the run naming it
    (`on_bad_file="error"`), or is left out of its batch with a warning (`"skip"`)."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        channels: int,
        image_size: int,
        levels: int,
        on_bad_file: Literal["error", "skip"] = "error",
    ) -> None:
        self.files, self.labels = files, torch.tensor(labels, dtype=torch.long)
        self.mode, self.channels, self.image_size = ("L" if channels == 1 else "RGB"), channels, image_size
        self.levels, self.on_bad_file = levels, on_bad_file

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        read = [(self._read(self.files[i]), i) for i in index]
        kept = [(image, i) for image, i in read if image is not None]
        if not kept:
            empty = torch.empty(0, self.channels, self.image_size, self.image_size)
            return empty, torch.empty(0, dtype=torch.long)
        images = images_in_model_range([image for image, _ in kept], self.channels, self.image_size, self.levels)
        return images, self.labels[torch.as_tensor([i for _, i in kept])]

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            return decode_image(path, self.channels, self.image_size, self.levels)
        except READ_ERRORS as err:
            if self.on_bad_file == "error":
                raise DataError(
                    f"cannot read image '{path}' ({err}). Remove or fix the file, or set "
                    "data.on_bad_file=skip to leave unreadable files out."
                ) from None
            log.warning("skipping unreadable image %s (%s)", path, err)
            return None


# What a broken, truncated, non-image or unconvertible file raises while decoding.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
HIGH_BIT_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1}


def decode_image(path: Path | BinaryIO, channels: int, image_size: int, levels: int = 256) -> torch.Tensor:
    """One file (a path, or an open binary file such as a chunk's encoded bytes) decoded, converted to
    `channels` and resized: uint8 `(channels, image_size, image_size)` for 8-bit files, float in [0, 1]
    on the grid of `levels` for 16-bit and float ones. `to_model_range` (once per batch: see
    `images_in_model_range`) then gives the model's [-1, 1]."""
    with Image.open(path) as image:
        ImageOps.exif_transpose(image, in_place=True)  # phone photos store their rotation in EXIF
        if image.mode in HIGH_BIT_DEPTH:
            # 16-bit (and 32-bit int, float) grey: scale to [0, 1]; PIL's convert("L") would clip to 255 (all white)
            grey = np.asarray(image, dtype=np.float32) / HIGH_BIT_DEPTH[image.mode]
            grey = np.round(np.clip(grey, 0, 1) * (levels - 1)) / (levels - 1)  # quantised to the declared levels
            return to_model_range(torch.from_numpy(grey)[None, None], channels, image_size, levels)[0].add(1).div(2)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # what a viewer shows: transparent pixels on white, not the arbitrary colours stored under them
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, -1)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def images_in_model_range(decoded: list[torch.Tensor], channels: int, image_size: int, levels: int) -> torch.Tensor:
    """Images from `decode_image` as one batch `(B, C, H, W)` in [-1, 1]: the conversion and the check
    of the levels run once for the batch (the same values as one by one: they are elementwise)."""
    if all(x.dtype == torch.uint8 for x in decoded):
        return to_model_range(torch.stack(decoded), channels, image_size, levels)
    batch = torch.stack([x.float().div(255) if x.dtype == torch.uint8 else x for x in decoded])
    return to_model_range(batch, channels, image_size, levels)


def read_image(path: Path | BinaryIO, channels: int, image_size: int, levels: int = 256) -> torch.Tensor:
    """One file as `(channels, image_size, image_size)` in [-1, 1] on the grid of `levels` intensity
    levels, whatever its mode and size (8-bit files must match `levels`: 256)."""
    return images_in_model_range([decode_image(path, channels, image_size, levels)], channels, image_size, levels)[0]


def index_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Every image file under `root` (sorted), its label and the class names: subfolder names, sorted
    (a flat folder is one class, ".")."""
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist: set data.path to a folder of images")
    files = []
    for folder, _, names in os.walk(root, followlinks=True):  # one listing per folder, no stat per file
        files += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    files.sort()
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{root}'")
    folders = [f.parent.relative_to(root).as_posix() for f in files]
    classes = sorted(set(folders))
    label_of = {name: i for i, name in enumerate(classes)}
    return files, [label_of[name] for name in folders], classes


class ImageFolderDataModule(ImageDataModule):
    """Every image under `path`; subfolder names become class labels (sorted), else label 0.

    Set-up lists the files once (no decoding): a file whose class folder's label is not below
    `num_classes` stops the run with its name (`on_bad_file: error`) or is left out with a warning
    (`on_bad_file: skip`). Images are decoded per batch in the loader's workers; a truncated or
    non-image file is then handled the same way (error naming it, or left out of its batch). Any size
    and mode loads: RGBA/LA/P with transparency over white, 16-bit grey scaled (not clipped), then
    converted and resized.
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
        files, labels, classes = index_folder(self.path)
        if len(files) > LARGE_FOLDER:
            log.warning(
                "%d images under %s: each run lists them and every batch opens its files one by one; convert "
                "them once with `make prepare SRC=%s OUT=<dir>` and train with data=streaming data.path=<dir>",
                len(files),
                self.path,
                self.path,
            )
        pairs = enumerate(zip(files, labels, strict=True))
        keep = [i for i, (f, label) in pairs if self._label_fits(f, label, classes)]
        if not keep:
            raise DataError(f"none of the {len(files)} images under '{self.path}' could be used")
        self.num_classes = self.num_classes or len(classes)
        return {
            "all": ImageFiles(
                [files[i] for i in keep],
                [labels[i] for i in keep],
                self.channels,
                self.image_size,
                self.levels,
                self.on_bad_file,
            )
        }

    def describe(self) -> str:
        return f"image folder '{self.path}'"

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            super().setup(stage)  # lists and splits the files; too few for a batch per split is refused there
            self._check_readable()

    def _check_readable(self) -> None:
        """Each split must hold a readable image before training starts: images are decoded per batch, so
        a folder of unreadable files would otherwise train on empty batches. Decodes files in split order
        until one reads (the first, unless files are broken): a few decodes, not a pass over the folder."""
        for name, split in self.splits.items():
            files: ImageFiles = split.dataset
            # on_bad_file=error: the first unreadable file raises, naming it; skip: each is warned about
            readable = (files._read(files.files[i]) is not None for i in split.indices)
            if len(split) and not any(readable):  # any() stops at the first image that reads
                raise DataError(
                    f"{self.describe()}: none of the {len(split)} images of the {name} split could be read "
                    f"({sum(len(s) for s in self.splits.values())} image files in all; the warnings above "
                    "name them): add readable images, or remove the broken files"
                )

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
