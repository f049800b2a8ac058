from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import PoolFeatures

from genlab import evaluate
from genlab.config import compose
from genlab.evaluate import main
from genlab.instantiate import instantiate
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
    balance = report["class_balance"]  # unconditional: the classifier's label mix, samples vs data
    assert 0 <= metrics["class_tv"] == balance["tv"] <= 1 and sum(balance["samples"]) == pytest.approx(1)
    assert 0 < metrics["real_test/class_tv"] < 0.2  # training vs test digits: about 10% each, finite-N noise
    assert "class balance: TV" in table and "least generated: class" in table


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


VAE = ("model=vae", "model.encoder.hidden_features=[64,32]", "trainer=debug")
TINY_DIFFUSION = ("model.net.base_channels=8", "model.net.channel_mults=[1,2]", "model.net.num_heads=2")


def test_conditional_model_with_inception_like_features_samples_on_the_requested_device(
    tmp_path_factory, cache: Path, monkeypatch, capsys
) -> None:
    """D1: the default (conditional) diffusion model scored with features that have no classifier head:
    FID and the rest are written, per-label accuracy is skipped with a note. D3: trainer.validate()'s
    teardown moves the module to the CPU; evaluate moves it back to the requested device before it
    samples (on a CPU-only machine every device is the CPU, so the moves themselves are recorded)."""
    run = _run(tmp_path_factory, "model=diffusion", *TINY_DIFFUSION, "model.sample_steps=4", "trainer=debug")
    moves: list[str] = []
    at_draw: list[tuple[list[str], torch.device]] = []
    real_load, real_draw = evaluate.load, evaluate.draw

    def recording_load(*args, **kwargs):
        model, ckpt, config = real_load(*args, **kwargs)
        to, cpu = model.to, model.cpu
        model.cpu = lambda: (moves.append("cpu"), cpu())[1]  # what Lightning's teardown calls
        model.to = lambda *a, **k: (moves.append(f"to {torch.device(*a)}"), to(*a, **k))[1]
        return model, ckpt, config

    def recording_draw(model, *args, **kwargs):
        at_draw.append((list(moves), model.device))
        return real_draw(model, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load", recording_load)
    monkeypatch.setattr(evaluate, "draw", recording_draw)
    monkeypatch.setattr(evaluate, "make_features", lambda *args: PoolFeatures("pool-features-eval-test"))
    assert main([str(run), "n=100", "device=cpu", f"cache_dir={cache}"]) == 0
    ((moves_before_draw, device),) = at_draw
    assert "cpu" in moves_before_draw  # validate() did move it (the premise)
    after_validate = moves_before_draw[len(moves_before_draw) - moves_before_draw[::-1].index("cpu") :]
    assert "to cpu" in after_validate and device == torch.device("cpu")  # moved back to the requested device
    report = json.loads((run / "eval.json").read_text())
    assert math.isfinite(report["metrics"]["fid"]) and math.isfinite(report["metrics"]["real_test/fid"])
    assert not any(key.startswith("accuracy") for key in report["metrics"])
    assert "per-label accuracy skipped" in report["skipped"]
    assert "per-label accuracy skipped" in capsys.readouterr().out


def test_test_figures_cover_the_whole_test_split_whatever_the_runs_limit_val_batches(tmp_path_factory) -> None:
    """trainer=debug validates 2 batches while training; the reported test/... figures use them all."""
    run = _run(tmp_path_factory, *VAE, "data.batch_size=32")
    model, _, config = evaluate.load(run, "cpu")
    assert config["trainer"]["limit_val_batches"] == 2
    datamodule = instantiate(config["data"])
    datamodule.setup("fit")
    scored: list[int] = []
    step = model.validation_step
    model.validation_step = lambda batch, batch_idx: (scored.append(len(batch[0])), step(batch, batch_idx))[1]
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    figures, split = evaluate.family_figures(model, datamodule, config, seed=0)
    assert split == "test" and sum(scored) == len(datamodule.splits["test"]) > 2 * 32
    assert math.isfinite(figures["test/nll"])
    # Quiet while it validates, then as it was: a train() later in the process still says its run folder.
    assert lightning_log.level == level


def test_a_too_small_test_split_is_refused_before_any_work(tmp_path_factory, cache: Path, monkeypatch, capsys) -> None:
    run = _run(tmp_path_factory, *VAE, "data.test_fraction=0.05")  # 90 of the 1,797 digits
    work: list[str] = []
    monkeypatch.setattr(evaluate, "draw", lambda *a, **k: work.append("draw"))
    monkeypatch.setattr(evaluate, "family_figures", lambda *a, **k: work.append("validate"))
    assert main([str(run), "n=100", f"cache_dir={cache}"]) == 2
    err = capsys.readouterr().err
    assert "90 test images" in err and "data.test_fraction=0.05" in err and "number of samples" not in err
    assert err.count("\n") == 1 and not work and not (run / "eval.json").exists()


def test_class_balance_of_a_model_that_draws_one_class(cache: Path) -> None:
    from genlab.data.digits import DigitsDataModule
    from genlab.metrics import digits_features, split_tensors

    features = digits_features(8, 1, cache_dir=cache)
    images, labels = split_tensors(DigitsDataModule(image_size=8, channels=1), "test")
    threes = images[labels == 3]  # a stand-in model that only ever draws 3s (real ones: the classifier reads them)
    balance = evaluate.class_balance(features, threes.repeat(3, 1, 1, 1), images)
    assert balance["tv"] == pytest.approx(0.9, abs=0.05)  # digits are ~10% each: 1 - 0.1
    assert balance["least_generated_share"] == 0 and balance["least_generated"] != 3
    assert len(balance["missing"]) >= 8 and 3 not in balance["missing"]  # (a 3 misread as an 8 is allowed)
    same = evaluate.class_balance(features, images, images)
    assert same["tv"] == 0 and same["missing"] == []


def test_autoencoder_eval_reports_rfid_of_test_reconstructions(tmp_path_factory, cache: Path) -> None:
    """A first stage's rFID: its reconstructions of the test split against those images; a 2-step
    autoencoder reconstructs badly, so both its rFID and its pixel error sit clearly above zero."""
    run = _run(tmp_path_factory, "model=autoencoder", "trainer=debug")
    assert main([str(run), "n=200", f"cache_dir={cache}"]) == 0
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert metrics["rfid"] > 0 and metrics["test/rec_mse"] > 0.01
    assert math.isfinite(metrics["fid"])  # its samples (random latents decoded) are scored as before
