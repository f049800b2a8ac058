from __future__ import annotations

import json
from pathlib import Path

import pytest

from genlab.apps.detect import detect, main
from genlab.errors import ConfigError

from .conftest import TINY, TINY_VAE

FIELDS = ("checkpoint", "model", "train_s", "sample_s", "nn_dist_ratio", "auroc_dedicated", "auroc_pooled", "watermark")


def test_detect_on_given_runs_writes_every_field(app_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "detect.json"
    runs = f"{app_runs['vae']},{app_runs['gan_cond']}/checkpoints/last.ckpt"
    assert main([f"runs={runs}", "n_train=100", "train_steps=20", f"out={out}", "watermark_n=6"]) == 0
    report = json.loads(out.read_text())
    assert set(report["families"]) == {"vae", "gan"}
    for name, family in report["families"].items():
        for key in FIELDS:
            assert key in family, (name, key)
        assert 0 <= family["auroc_dedicated"] <= 1 and 0 <= family["auroc_pooled"] <= 1
        assert family["train_s"] is None  # given, not trained here
        mark = family["watermark"]  # every written sample carries the mark, no real image falsely does
        assert (mark["n"], mark["marked"], mark["real_falsely_marked"], mark["grid_marked"]) == (6, 1.0, 0.0, True)
        assert mark["data_size"] == [8, 8] and min(mark["written_size"]) >= 256
    assert report["hardest_to_detect"] in report["families"] and report["trained_here"] is False
    assert report["real_test_images"] == report["n_test_per_family"] == 180
    assert report["pooled_share_per_family"] == 50
    out = capsys.readouterr().out
    assert "hardest to tell from real" in out and "watermark (b'genlab', DWT-DCT)" in out


def test_detect_trains_each_family_when_no_runs_are_given(tmp_path: Path, monkeypatch) -> None:
    args = {"families": "vae", "log_dir": str(tmp_path), "n_train": 50, "train_steps": 10, "watermark_n": 2}
    report = detect(args, [*TINY_VAE[1:], *TINY])
    assert report["trained_here"] and report["families"]["vae"]["train_s"] > 0
    run = tmp_path / "vae" / "detect"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(report["written"]) == tmp_path / "detect.json"

    # The same command again is refused before any family trains (here gan, listed first), with advice
    # in options this command takes (it used to pass on genlab.train's resume=auto, which it refused).
    trained = []
    monkeypatch.setattr("genlab.train.train", lambda cfg: trained.append(cfg))
    with pytest.raises(ConfigError, match=rf"score it with runs={tmp_path / 'gan' / 'detect'},{run}, .*resume=auto"):
        detect({**args, "families": "gan,vae"}, [*TINY_VAE[1:], *TINY])
    assert trained == []
    monkeypatch.undo()
    again = detect({**args, "resume": "auto"}, [*TINY_VAE[1:], *TINY])  # continues the run
    assert again["families"]["vae"]["checkpoint"] == report["families"]["vae"]["checkpoint"]
    given = detect(
        {"runs": str(run), "n_train": 50, "train_steps": 10, "out": str(tmp_path / "given.json"), "watermark_n": 2}
    )
    assert given["families"]["vae"]["auroc_dedicated"] == report["families"]["vae"]["auroc_dedicated"]


def test_detect_refuses_unknown_families_in_one_line(capsys) -> None:
    assert main(["families=vae,gpt"]) == 2
    err = capsys.readouterr().err
    assert "gpt is not an image family (choose from " in err
    choices = set(err.split("(choose from ")[1].split(")")[0].split(", "))  # every image config, forks' too
    assert {"diffusion", "flow", "flow_matching", "gan", "vae"} <= choices and "gpt" not in choices
    assert err.count("\n") == 1
    with pytest.raises(ConfigError, match="trainer.max_epochs=1: applies to training"):
        detect({"runs": "logs/x"}, ["trainer.max_epochs=1"])
    with pytest.raises(ConfigError, match="resume=auto: applies to training"):
        detect({"runs": "logs/x", "resume": "auto"})


def test_detect_refuses_runs_on_different_splits(app_runs: dict[str, Path], tmp_path: Path) -> None:
    from .conftest import tiny_run

    other = tiny_run(tmp_path, "other_seed", *TINY_VAE, "seed=1")  # seed 1: another split of the digits
    with pytest.raises(ConfigError, match="other images"):
        detect({"runs": f"{app_runs['vae']},{other}", "n_train": 10, "train_steps": 2})
