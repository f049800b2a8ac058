"""scikit-learn's 8x8 handwritten digits: the embedded default, no download, 1,797 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, Subset

from genlab.data.images import ImageDataModule, TensorImages, to_model_range
from genlab.errors import ConfigError


class DigitsDataModule(ImageDataModule):
    """Digits 0-9 (grey levels 0..16, so `levels=17`), split by seed; `image_size` other than 8 resizes
    them (then rounded back to the 17 levels)."""

    def __init__(
        self,
        image_size: int = 8,
        channels: int = 1,
        num_classes: int = 10,
        levels: int = 17,
        exclude_labels: Sequence[int] = (),
        **kwargs,
    ) -> None:
        """`exclude_labels`: classes taken out of the train and val splits (after the seeded split, so
        the other images stay where they were) and kept in test: a model never sees them, as in
        anomaly detection with a held-out class (genlab.apps.anomaly). The removed train/val images
        are `splits["excluded"]`."""
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, levels=levels, **kwargs)
        self.exclude_labels = tuple(int(k) for k in exclude_labels or ())
        for k in self.exclude_labels:
            if not 0 <= k < num_classes:
                raise ConfigError(f"data.exclude_labels: {k} is not one of the classes 0..{num_classes - 1}")
        if len(set(self.exclude_labels)) >= num_classes:
            raise ConfigError("data.exclude_labels: excludes every class, nothing is left to train on")

    def load(self) -> dict[str, Dataset]:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        return {"all": TensorImages(to_model_range(images, self.channels, self.image_size, self.levels), labels)}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        if not self.exclude_labels:
            return
        excluded_classes, removed = torch.tensor(self.exclude_labels), []
        for split in ("train", "val"):
            subset = self.splits[split]  # a Subset of the "all" TensorImages (random_split)
            indices = torch.as_tensor(subset.indices)
            out = torch.isin(subset.dataset.labels[indices], excluded_classes)
            self.splits[split] = Subset(subset.dataset, indices[~out].tolist())
            removed += indices[out].tolist()
        self.splits["excluded"] = Subset(self.splits["test"].dataset, removed)
