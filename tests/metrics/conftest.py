"""One feature classifier for the whole session, trained into a temporary cache (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genlab.data import DigitsDataModule
from genlab.metrics import ClassifierFeatures, digits_features, split_tensors


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def features(cache_dir: Path) -> ClassifierFeatures:
    return digits_features(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    datamodule = DigitsDataModule()
    return {split: split_tensors(datamodule, split) for split in ("train", "val", "test")}
