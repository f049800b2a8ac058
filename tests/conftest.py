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
# A tiny autoencoder on the 8x8 digits: 8x8x1 -> 2x2x4 latents (its weights only need to be its own, not good).
TINY_AE = (
    "model=autoencoder",
    "model.encoder.hidden_channels=[8,8,8]",
    "model.encoder.mid_attention=false",
    "data.batch_size=32",
)
# A one-level UNet for the 8x8 digits or 2x2 latents, two sampling steps.
TINY_UNET = (
    "model.net.base_channels=8",
    "model.net.channel_mults=[1]",
    "model.net.attention_resolutions=[]",
    "model.net.num_heads=2",
    "model.sample_steps=2",
    "data.batch_size=32",
)
# What a first stage needs of the process: no clip to the pixel range; for diffusion a prediction whose x0
# does not divide by sqrt(alpha_bar_T) ~ 5e-5 (the cosine schedule's last step).
LATENT = {
    "diffusion": ("model.process.clip_x0=false", "model.process.prediction=v"),
    "flow_matching": ("model.process.clip_x0=false",),
}
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
    badly when other jobs share the cores (10-20x slowdowns measured on 2 busy cores). A run takes
    OMP_NUM_THREADS over the cores it may use (genlab.train.choose_threads), as do the processes tests start."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


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


TINY_GPT_WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "saw", "one", "big", "red", "dog", "run", "to")


@pytest.fixture(scope="session")
def tiny_gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a tiny GPT trained for a few steps on short English-like sentences (written
    to `corpus.txt` beside it): a base to fine-tune (model=gpt_feedback) in a few seconds. Its data
    arguments are `tiny_gpt_data_args(run)`."""
    import random

    from genlab.train import train

    root = tmp_path_factory.mktemp("tiny_gpt")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(TINY_GPT_WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(600)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    overrides = ["model=gpt", f"log_dir={root}", "run_name=base", *tiny_gpt_data_args(root / "gpt" / "base")]
    overrides += ["model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=32", "model.warmup_steps=5"]
    overrides += ["model.optimizer.lr=3e-3", "model.sample_length=16", "callbacks.samples.num_samples=2"]
    overrides += ["trainer.max_steps=30", "trainer.limit_train_batches=30", "trainer.limit_val_batches=2"]
    train(compose([*overrides, *SHORT_RUN]))
    return root / "gpt" / "base"


def tiny_gpt_data_args(run_dir: Path) -> list[str]:
    """The data settings `tiny_gpt_run` was trained with (a fine-tuning run must use the same)."""
    return [f"data.path={run_dir.parent.parent / 'corpus.txt'}", "data.block_size=32", "data.batch_size=8"]


class PoolFeatures(torch.nn.Module):
    """Stands for Inception's pool features (no weights file here): a fixed projection of 8x8 images,
    a cache key, and no classifier head. Every instance is the same net (two writers, one cache key)."""

    num_features = 16

    def __init__(self, key: str = "pool-features-test") -> None:
        super().__init__()
        self.key = key
        self.proj = torch.nn.Linear(64, 16)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1).float())
