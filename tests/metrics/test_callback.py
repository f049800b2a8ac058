from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pytest
from conftest import PoolFeatures

from genlab.errors import ConfigError
from genlab.metrics import SampleMetrics, callback
from genlab.train import train

TINY_DIFFUSION = (
    "model.net.base_channels=8",
    "model.net.channel_mults=[1,2]",
    "model.net.num_heads=2",
    "model.sample_steps=4",
)


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


def test_a_conditional_model_on_features_without_a_classifier_head_logs_fid_without_accuracy(
    make_config, log_dir: Path, cache_dir: Path, monkeypatch
) -> None:
    """The default diffusion model is conditional; with Inception features (given by path) the run
    used to die at its first scoring epoch asking for classifier logits."""
    asked = []

    def inception_like(datamodule, weights_path, cache_dir):
        asked.append(weights_path)
        return PoolFeatures("pool-features-callback-test")

    monkeypatch.setattr(callback, "make_features", inception_like)
    cfg = make_config(
        "model=diffusion",
        *TINY_DIFFUSION,
        "trainer=debug",
        "trainer.max_epochs=1",
        "run_name=inception",
        "callbacks.sample_metrics.every_n_epochs=1",
        "callbacks.sample_metrics.num_samples=100",
        "callbacks.sample_metrics.feature_extractor_weights_path=/weights/inception.pth",
        f"callbacks.sample_metrics.cache_dir={cache_dir}",
    )
    with pytest.warns(UserWarning, match="per-label accuracy skipped"):
        metrics = train(cfg)
    assert asked == ["/weights/inception.pth"]
    assert math.isfinite(metrics["val/fid"]) and math.isfinite(metrics["val/coverage"])
    assert "val/accuracy" not in metrics


def test_metrics_import_no_command() -> None:
    """Layers: a metric may use the sampling loop (genlab.sampling), never a command or tool above it."""
    tools = {"genlab.sample", "genlab.evaluate", "genlab.results", "genlab.prepare", "genlab.train", "genlab.apps"}
    for path in Path(callback.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            up = [name for name in names if ".".join(name.split(".")[:2]) in tools]
            assert not up, f"{path.name} imports {up}: move what it needs below the tools (genlab.sampling)"
