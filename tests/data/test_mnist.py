"""MNIST read from IDX files the test writes (no download)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from genlab.data import MNISTDataModule
from genlab.errors import DataError


def _write_idx(folder: Path, prefix: str, n: int, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def test_reads_idx_files_into_splits(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw, "train", 60, rng)
    _write_idx(raw, "t10k", 20, rng)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, batch_size=8, val_fraction=0.25)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [45, 15, 20]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert y.max() <= 9


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="MNIST is not in .*data=digits"):
        dm.setup("fit")
