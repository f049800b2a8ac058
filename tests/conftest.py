"""Shared fixtures: runs write into a temporary log folder, without a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from genlab.config import compose

os.environ.setdefault("WANDB_SILENT", "true")

# A short, complete run: every hook fires (train, validation, checkpoint, samples) in seconds.
SHORT_RUN = (
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress.refresh_rate=0",
)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Tests train tiny models, which gain nothing from a second thread; and two threads stall
    badly when other jobs share the cores (10-20x slowdowns measured on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def make_config(log_dir: Path) -> Callable[..., DictConfig]:
    """compose() with the test's log folder and the short-run settings; later arguments win."""

    def _make(*overrides: str) -> DictConfig:
        return compose([f"log_dir={log_dir}", *SHORT_RUN, *overrides])

    return _make


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]
