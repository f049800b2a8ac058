from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import column, read_metrics

from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models import FlowModule
from genlab.nets.flow import ActNorm
from genlab.train import main, train

SMALL_FLOW = ("model=flow", "model.flow.steps_per_level=2", "model.flow.hidden_channels=16", "model.warmup_steps=5")


def _only_run(log_dir: Path) -> Path:
    (run,) = sorted((log_dir / "flow").iterdir())
    return run


def test_uniform_density_scores_log2_levels() -> None:
    """The module's bits/dim with a density that is uniform on the dequantized [0, 1)^dims (log p = 0):
    exactly log2(17) on the digits, for one dequantization draw or the mean of several."""
    model = instantiate(compose([*SMALL_FLOW]).model)
    model.flow.log_prob = lambda y: torch.zeros(len(y), dtype=torch.float64)
    x = torch.rand(8, 1, 8, 8).mul(16).round().div(16).mul(2).sub(1)
    expected = torch.full((8,), math.log2(17), dtype=torch.float64)
    assert torch.allclose(model.bpd(x), expected, rtol=1e-12, atol=0)
    assert torch.allclose(-model.log_prob(x, samples=4) / (64 * math.log(2)), expected, rtol=1e-12, atol=0)


def test_short_run_lowers_val_bpd_and_keeps_the_best(make_config, log_dir: Path) -> None:
    train(make_config(*SMALL_FLOW, "trainer.max_epochs=4", "callbacks.samples.every_n_epochs=4"))
    run = _only_run(log_dir)
    bpd = column(read_metrics(run), "val/bpd")
    assert len(bpd) == 4 and bpd[-1] < bpd[0] - 0.3 and bpd[0] < math.log2(17)
    assert column(read_metrics(run), "val/loss") == bpd  # the best checkpoint (on val/loss) is the best on bpd
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert (run / "samples" / "samples_final.png").is_file()
    model = FlowModule.load_from_checkpoint(best)
    samples = model.sample(16, temperature=0.7)
    assert samples.shape == (16, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    k = (samples + 1) / 2 * 16
    assert torch.equal(k, k.round())  # samples are images on the data's 17 levels


def test_resume_does_not_reinitialise_actnorm(make_config, log_dir: Path, monkeypatch) -> None:
    calls = []
    original = ActNorm.initialize
    monkeypatch.setattr(ActNorm, "initialize", lambda self, x: (calls.append(1), original(self, x)))
    short = (*SMALL_FLOW, "run_name=a", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    train(make_config(*short, "trainer.max_epochs=1"))
    assert len(calls) == 2 * 2  # two levels x two steps, once each
    checkpoint = torch.load(_only_run(log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    train(make_config(*short, "trainer.max_epochs=2", "ckpt_path=last"))
    assert len(calls) == 4  # none on resume: the `initialized` buffers came back with the checkpoint
    resumed = torch.load(_only_run(log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(bool(v) for k, v in resumed["state_dict"].items() if k.endswith("initialized"))
    assert checkpoint["global_step"] == 2 and resumed["global_step"] == 4


def test_bad_input_is_one_line(log_dir: Path, capsys) -> None:
    model = instantiate(compose([*SMALL_FLOW]).model)
    for temperature in (0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature must be > 0"):
            model.sample(2, temperature=temperature)
    for argv, message in (
        (["model.sample_temperature=0"], "model.sample_temperature must be > 0"),
        (["data.image_size=12", "model.flow.num_levels=3"], "data.image_size=12 cannot be squeezed"),
        (["data.levels=256"], "data.levels=256 does not match the data"),
    ):
        assert main([f"log_dir={log_dir}", "trainer=debug", *SMALL_FLOW, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
