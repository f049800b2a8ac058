"""scikit-learn's 8x8 handwritten digits: the embedded default, no download, 1,797 images."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from genlab.data.images import ImageDataModule, TensorImages, to_model_range


class DigitsDataModule(ImageDataModule):
    """Digits 0-9 (grey levels 0..16, so `levels=17`), split by seed; `image_size` other than 8 resizes
    them (then rounded back to the 17 levels)."""

    def __init__(
        self, image_size: int = 8, channels: int = 1, num_classes: int = 10, levels: int = 17, **kwargs
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, levels=levels, **kwargs)

    def load(self) -> dict[str, Dataset]:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        return {"all": TensorImages(to_model_range(images, self.channels, self.image_size, self.levels), labels)}
