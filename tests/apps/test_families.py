"""A family a fork adds (a config in the config folder and a module) reaches the applications without
an edit to them: what a family offers is what its module declares (`anomaly_score`) and what its
config says (its data); a family without a score is refused by name before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from genlab.apps.anomaly import anomaly, main
from genlab.apps.common import model_families
from genlab.apps.detect import image_families
from genlab.apps.scores import anomaly_scores, method
from genlab.config import config_dir
from genlab.errors import ConfigError

from .conftest import TINY


class TinyFamily(L.LightningModule):
    """The smallest image family: every pixel is N(center, 1); it learns `center`."""

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.center = torch.nn.Parameter(torch.zeros(()))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - self.center).square().flatten(1).sum(1)  # (B,), up to a constant

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.nll(batch[0]).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.nll(batch[0]).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        size = self.hparams.image_size
        return (self.center + torch.randn(n, self.hparams.channels, size, size, device=self.device)).clamp(-1, 1)


class ScoredFamily(TinyFamily):
    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """distance to the mean: the Gaussian NLL up to a constant."""
        return self.nll(x)


def target(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"  # importable: the test module is loaded


@pytest.fixture
def fork_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped configs plus three new families, read through GENLAB_CONFIG_DIR: `scored` and
    `unscored` on the digits, `textual` (a scored module on text data)."""
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    sizes = "channels: ${data.channels}\nimage_size: ${data.image_size}\n"
    for name, cls, data in (
        ("scored", ScoredFamily, "digits"),
        ("unscored", TinyFamily, "digits"),
        ("textual", ScoredFamily, "text"),
    ):
        node = sizes if data == "digits" else "channels: 1\nimage_size: 8\n"
        (root / "model" / f"{name}.yaml").write_text(f"defaults:\n  - data: {data}\n_target_: {target(cls)}\n{node}")
    monkeypatch.setenv("GENLAB_CONFIG_DIR", str(root))
    return root


def test_the_apps_find_every_family_in_the_config_folder(fork_configs: Path) -> None:
    families = model_families()
    assert families["scored"] == (ScoredFamily, families["vae"][1])
    assert {"scored", "unscored", "vae", "gan"} <= set(image_families())
    assert "textual" not in image_families() and "gpt" not in image_families()  # text data


def test_a_declared_score_is_used_and_labels_the_report() -> None:
    model = ScoredFamily(1, 8)
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    assert torch.equal(anomaly_scores(model, images, k=2), model.nll(images))
    assert method(model) == ("distance to the mean", "distance to the mean: the Gaussian NLL up to a constant.")
    with pytest.raises(ConfigError, match="TinyFamily has no anomaly score"):
        anomaly_scores(TinyFamily(1, 8), images)


def test_a_new_family_with_a_score_is_trained_and_scored_by_make_anomaly(fork_configs: Path, tmp_path: Path) -> None:
    report = anomaly({"model": "scored", "holdout": 3, "log_dir": str(tmp_path / "logs"), "k": 2}, list(TINY))
    assert report["model"] == "ScoredFamily" and report["family"] == "scored"
    assert report["score_name"] == "distance to the mean" and 0 <= report["auroc"] <= 1
    written = json.loads(Path(report["written"]).read_text())
    assert written["positives"] == report["positives"] > 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["model=unscored"], "model=unscored: TinyFamily has no anomaly score"),
        (["model=gpt"], "model=gpt: GPTModule has no anomaly score"),
        (["model=gan", "model.conditional=true"], "model.conditional=true"),  # refused by the score itself
        (["model=textual"], "unknown key 'data.exclude_labels': TextDataModule"),  # scored, but no labelled images
    ],
)
def test_what_cannot_be_scored_is_refused_before_any_work(
    argv: list[str], expected: str, fork_configs: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The reviewer's case: make anomaly MODEL=<family without a score> trained every epoch first."""

    def no_training(cfg) -> None:
        raise AssertionError("trained before refusing")

    monkeypatch.setattr("genlab.train.train", no_training)
    assert main([*argv, f"log_dir={tmp_path / 'logs'}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    if "no anomaly score" in expected:
        listed = set(err.split("families with one: ")[1].strip().split(", "))  # the shipped ones and the fork's
        assert {"diffusion", "flow", "flow_matching", "gan", "scored", "textual", "vae"} <= listed
        assert not {"gpt", "unscored"} & listed
    assert not (tmp_path / "logs").exists()  # no run folder either
