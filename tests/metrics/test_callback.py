from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from genlab.errors import ConfigError
from genlab.metrics import SampleMetrics
from genlab.train import train


def _logged(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return [float(row[key]) for row in csv.DictReader(file) if row.get(key)]


def test_logs_val_fid_every_n_epochs(make_config, log_dir: Path, cache_dir: Path) -> None:
    cfg = make_config(
        "model=vae",
        "model.encoder.hidden_features=[64,32]",
        "trainer=debug",
        "trainer.max_epochs=2",
        "run_name=fid",
        "callbacks.sample_metrics.every_n_epochs=1",
        "callbacks.sample_metrics.num_samples=100",
        f"callbacks.sample_metrics.cache_dir={cache_dir}",
    )
    metrics = train(cfg)
    fids = _logged(log_dir / "vae" / "fid", "val/fid")
    assert len(fids) == 2 and all(math.isfinite(f) and f > 0 for f in fids)
    for key in ("val/fid", "val/kid", "val/precision", "val/recall", "val/coverage", "val/near_copies"):
        assert key in metrics, key


def test_off_by_default(make_config, log_dir: Path) -> None:
    cfg = make_config("model=vae", "model.encoder.hidden_features=[64,32]", "trainer=debug", "trainer.max_epochs=1")
    assert cfg.callbacks.sample_metrics.every_n_epochs is None
    assert "val/fid" not in train(cfg)


def test_bad_settings_are_one_line() -> None:
    with pytest.raises(ConfigError, match="every_n_epochs must be >= 1"):
        SampleMetrics(every_n_epochs=0)
    with pytest.raises(Exception, match="10 samples .* are too few"):
        SampleMetrics(every_n_epochs=1, num_samples=10)
