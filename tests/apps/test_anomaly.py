from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genlab.apps.anomaly import anomaly, main, max_time
from genlab.apps.common import model_families
from genlab.apps.scores import anomaly_scores, has_score, method
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate

from .conftest import TINY, TINY_VAE


def test_anomaly_trains_without_the_class_scores_and_writes_every_field(tmp_path: Path, capsys) -> None:
    log_dir = tmp_path / "logs"
    argv = ["model=vae", "holdout=3", f"log_dir={log_dir}", "k=4", *TINY_VAE[1:], *TINY]
    assert main(argv) == 0
    run = log_dir / "vae" / "anomaly-holdout3"
    report = json.loads((run / "anomaly.json").read_text())
    for key in (
        "checkpoint",
        "model",
        "family",
        "holdout",
        "score",
        "baseline",
        "k",
        "seed",
        "positives",
        "positives_in_test_split",
        "negatives",
        "train_images",
        "auroc",
        "auroc_nearest_neighbour",
        "figures",
        "train_s",
        "score_s",
        "wall_s",
        "threads",
    ):
        assert key in report, key
    assert report["family"] == "vae" and report["holdout"] == 3 and "importance-weighted" in report["score"]
    assert report["score_name"] == "IWAE bound on the NLL"
    assert report["positives"] == 183  # every 3 of the digits: never in training
    for figures in report["figures"].values():
        for name in ("auroc", "auroc_test_split_only"):
            assert 0 <= figures[name] <= 1
    assert report["auroc"] == report["figures"]["model"]["auroc"]
    config = json.loads(
        json.dumps(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["genlab"]["config"])
    )
    assert config["data"]["exclude_labels"] == [3]
    assert "AUROC" in capsys.readouterr().out

    # a trained run is scored again without training; a holdout that does not match it is one line
    again = anomaly({"run": str(run), "holdout": 3, "k": 4, "out": str(tmp_path / "again.json")})
    assert again["train_s"] is None and again["auroc_nearest_neighbour"] == report["auroc_nearest_neighbour"]
    with pytest.raises(ConfigError, match=r"data.exclude_labels=\[3\], not \[4\]"):
        anomaly({"run": str(run), "holdout": 4})

    # The same command again: refused before any work, with advice in options this command takes
    # (it used to pass on genlab.train's "continue it with resume=auto", an option it refused).
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"score it with run={run}" in err and "resume=auto" in err and err.count("\n") == 1
    advised = [word.rstrip(",") for word in err.split() if "=" in word and not word.startswith("log_dir=<")]
    assert sorted(advised) == sorted([f"run={run}", "resume=auto"])
    assert main([*argv, "resume=auto", f"out={tmp_path / 'resumed.json'}"]) == 0  # continues the run, then scores
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["checkpoint"] == report["checkpoint"] and resumed["train_s"] is not None
    assert main([f"run={run}", "holdout=3", "k=4", f"out={tmp_path / 'advised.json'}"]) == 0  # the other advice
    with pytest.raises(ConfigError, match="resume=auto: applies to training"):
        anomaly({"run": str(run), "holdout": 3, "resume": "auto"})


def test_nearest_neighbour_baseline_ranks_the_unseen_class_higher() -> None:
    """The baseline with no model: a digit class absent from training is farther from every training image."""
    from genlab.apps.common import auroc
    from genlab.data import DigitsDataModule
    from genlab.metrics import nearest_distance, split_tensors

    dm = DigitsDataModule(exclude_labels=[7])
    train_x, _ = split_tensors(dm, "train")
    test_x, test_y = split_tensors(dm, "test")
    distance = nearest_distance(test_x, train_x)
    assert auroc(distance[test_y == 7], distance[test_y != 7]) > 0.9


SMALL = {  # tiny nets for the families with a score; a family not named here is built at its config's size
    "flow": ["model.flow.steps_per_level=1", "model.flow.hidden_channels=8"],
    "diffusion": ["model.net.base_channels=8", "model.net.num_groups=4"],
    "flow_matching": ["model.net.base_channels=8", "model.net.num_groups=4"],
}
SCORED = [name for name, (module, _) in model_families().items() if has_score(module)]


def test_the_shipped_image_families_declare_a_score() -> None:
    assert {"vae", "flow", "diffusion", "flow_matching", "gan"} <= set(SCORED) and "gpt" not in SCORED


@pytest.mark.parametrize("family", SCORED)
def test_every_family_with_a_score_scores_each_image_once_finite_seeded_and_batch_free(family: str) -> None:
    torch.manual_seed(0)
    model = instantiate(compose([f"model={family}", *SMALL.get(family, [])]).model, "model")
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    scores = anomaly_scores(model, images, k=3, seed=0)  # (also sets the flow's data-dependent ActNorm)
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    assert torch.equal(scores, anomaly_scores(model, images, k=3, seed=0))
    # one image's score does not depend on the others in its batch (the same draws for every image)
    assert anomaly_scores(model, images[2:3], k=3, seed=0)[0] == pytest.approx(scores[2].item(), rel=1e-4)
    name, description = method(model)
    assert name and description.startswith(f"{name}:")  # the report's label, from the docstring


def test_families_without_a_score_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["model=gpt", f"log_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "model=gpt: GPTModule has no anomaly score" in err and err.count("\n") == 1


def test_max_time_format() -> None:
    assert max_time(10) == "00:00:10:00" and max_time(1.5) == "00:00:01:30" and max_time(90) == "00:01:30:00"
    assert max_time(0.001) == "00:00:00:01"  # at least a second
