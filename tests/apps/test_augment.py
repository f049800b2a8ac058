from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genlab.apps.augment import augment, main, scarce_subset
from genlab.data import DigitsDataModule


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scarce_subset_comes_from_the_training_split_and_never_from_test(seed: int) -> None:
    dm = DigitsDataModule(seed=3)
    dm.setup("fit")
    positions, global_indices = scarce_subset(dm, 10, seed)
    train, test, val = (set(dm.splits[s].indices) for s in ("train", "test", "val"))
    assert set(global_indices) <= train and not set(global_indices) & (test | val)
    everything = dm.splits["train"].dataset
    subset_x, subset_y = dm.splits["train"][positions.tolist()]
    assert torch.equal(subset_x, everything.images[global_indices])  # the positions are those images
    assert torch.bincount(subset_y, minlength=10).tolist() == [10] * 10
    test_x = everything.images[sorted(test)]
    same = (subset_x.flatten(1)[:, None] == test_x.flatten(1)[None]).all(-1)
    assert not same.any()  # not even a pixel-identical copy of a test image
    assert scarce_subset(dm, 10, seed)[1] == global_indices  # fixed by seed
    assert scarce_subset(dm, 10, seed + 1)[1] != global_indices


def test_augment_writes_every_field_and_prints_the_table(app_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "augment.json"
    argv = [str(app_runs["gan_cond"]), "per_class=2", "n=60", "seeds=2", "train_steps=15", f"out={out}"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    for key in (
        "checkpoint",
        "model",
        "per_class",
        "real_images",
        "n_synthetic",
        "seeds",
        "train_steps",
        "sampling",
        "test_images",
        "train_split_images",
        "accuracy",
        "gain",
        "sampling_s",
        "wall_s",
        "threads",
    ):
        assert key in report, key
    assert report["real_images"] == 20 and report["n_synthetic"] == 60 and report["test_images"] == 180
    for arm in ("real", "real+synthetic", "synthetic", "all_real"):
        values = report["accuracy"][arm]["values"]
        assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    acc = report["accuracy"]
    gains = [a - b for a, b in zip(acc["real+synthetic"]["values"], acc["real"]["values"], strict=True)]
    assert report["gain"]["values"] == pytest.approx(gains)
    table = capsys.readouterr().out
    assert "gain from synthetic data" in table and "synthetic only (60)" in table


def test_augment_refuses_an_unconditional_model_in_one_line(app_runs: dict[str, Path], capsys) -> None:
    assert main([str(app_runs["vae"]), "n=10"]) == 2
    err = capsys.readouterr().err
    assert "is not conditional" in err and err.count("\n") == 1


def test_augment_refuses_config_overrides(app_runs: dict[str, Path]) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="no config overrides"):
        augment({"run": str(app_runs["gan_cond"])}, ["trainer.max_epochs=1"])
