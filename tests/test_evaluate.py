from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from genlab.config import compose
from genlab.evaluate import main
from genlab.train import train


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "metrics-cache"  # shared with tests/metrics: one classifier
    path.mkdir(exist_ok=True)
    return path


def _run(tmp_path_factory, *argv: str) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    train(compose([f"log_dir={log_dir}", "run_name=r", "callbacks.progress.refresh_rate=0", *argv]))
    return next(log_dir.glob("*/r"))


def test_vae_eval_writes_json_and_prints_a_table(tmp_path_factory, cache: Path, capsys) -> None:
    run = _run(tmp_path_factory, "model=vae", "model.encoder.hidden_features=[64,32]", "trainer=debug")
    assert main([str(run), "n=200", f"cache_dir={cache}"]) == 0
    report = json.loads((run / "eval.json").read_text())
    metrics = report["metrics"]
    assert report["n"] == 200 and report["seed"] == 0 and report["split"] == "test"
    for key in ("test/loss", "test/nll", "fid", "kid", "precision", "recall", "density", "coverage", "near_copies"):
        assert math.isfinite(metrics[key]), key
    assert metrics["real_test/fid"] < metrics["fid"]  # a 10-step VAE is far from the held-out digits
    assert "test accuracy" in report["features"]
    table = capsys.readouterr().out
    assert "fid" in table and "real_test" in table and "importance-weighted" in table


def test_too_few_samples_refused_before_sampling(tmp_path_factory, cache: Path, capsys) -> None:
    run = _run(tmp_path_factory, "model=vae", "model.encoder.hidden_features=[64,32]", "trainer=debug")
    assert main([str(run), "n=20", f"cache_dir={cache}"]) == 2
    err = capsys.readouterr().err
    assert "20 samples (n=) are too few" in err and err.count("\n") == 1
    assert not (run / "eval.json").exists()


def test_gpt_eval_reports_loss_bits_per_char_and_perplexity(tmp_path_factory, capsys) -> None:
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text("the cat sat on the mat. a dog ran to the sun.\n" * 200, encoding="utf-8")
    gpt = ("model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=32", "data.block_size=16")
    run = _run(tmp_path_factory, "model=gpt", f"data.path={corpus}", *gpt, "trainer=debug", "trainer.max_steps=4")
    assert main([str(run)]) == 0
    report = json.loads((run / "eval.json").read_text())
    metrics = report["metrics"]
    assert report["split"] == "val"  # text data has no test split, and the table says so
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert "fid" not in metrics
    assert "no test split" in capsys.readouterr().out
