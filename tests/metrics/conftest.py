"""One feature classifier for the whole session, trained into a temporary cache (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genlab.data import DigitsDataModule
from genlab.metrics import ClassifierFeatures, digits_features, split_tensors


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session, shared by every test module (the classifier trains once)."""
    path = tmp_path_factory.getbasetemp() / "metrics-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_cache(tmp_path_factory)


@pytest.fixture(scope="session")
def features(cache_dir: Path) -> ClassifierFeatures:
    return digits_features(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    datamodule = DigitsDataModule()
    return {split: split_tensors(datamodule, split) for split in ("train", "val", "test")}
