"""MNIST through torchvision: downloaded once into `data_dir` when online, read from there after."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from genlab.data.images import ImageDataModule, TensorImages, to_model_range
from genlab.errors import DataError


class MNISTDataModule(ImageDataModule):
    """60k train (val carved out by seed) and 10k test digits, 28x28 grey."""

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, **kwargs)
        self.data_dir, self.download = Path(data_dir), download

    def prepare_data(self) -> None:
        for train in (True, False):
            self._read(train)

    def load(self) -> dict[str, Dataset]:
        return {"train": self._read(True), "test": self._read(False)}

    def _read(self, train: bool) -> TensorImages:
        raw = self.data_dir / "MNIST" / "raw"
        try:
            mnist = MNIST(str(self.data_dir), train=train, download=self.download)
        except (RuntimeError, OSError) as err:  # not there, and no network to fetch it
            raise DataError(
                f"MNIST is not in {raw} and could not be downloaded ({err}). Put the four IDX files "
                "(train-images-idx3-ubyte, ...) there, or train on the embedded data with data=digits."
            ) from None
        images = to_model_range(mnist.data.unsqueeze(1), self.channels, self.image_size, self.levels)
        return TensorImages(images, mnist.targets.long())
