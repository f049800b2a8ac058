"""Tiny trained runs the application tests share (a few steps each, made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlab.config import compose
from genlab.train import train

TINY = ("trainer=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "callbacks.progress.refresh_rate=0")
TINY_VAE = ("model=vae", "model.latent_dim=8")


def tiny_run(log_dir: Path, name: str, *argv: str) -> Path:
    train(compose([f"log_dir={log_dir}", f"run_name={name}", *TINY, *argv]))
    return next(log_dir.glob(f"*/{name}"))


@pytest.fixture(scope="session")
def app_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"vae": an unconditional VAE, "gan_cond": a class-conditional GAN}, 3 steps each."""
    log_dir = tmp_path_factory.mktemp("app-runs")
    return {
        "vae": tiny_run(log_dir, "vae", *TINY_VAE),
        "gan_cond": tiny_run(log_dir, "gan_cond", "model=gan", "model.conditional=true"),
    }
