"""The W&B logger, offline: what a run records (config, media, checkpoints), the run id kept across
a resume and taken from `wandb agent`, and the environment left as it was found."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from wandb_offline import isolate_wandb, offline_runs, reset_wandb

from genlab.callbacks import SampleLogger
from genlab.loggers import WANDB_ID_FILE, wandb_logger, wandb_mode, wandb_run_id
from genlab.train import main

SHORT_RUN = [
    "model=vae",
    "trainer=debug",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "callbacks.samples.num_samples=4",
]


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolate_wandb(monkeypatch, tmp_path)
    yield
    reset_wandb()


def test_offline_run_records_the_config_media_and_checkpoints(tmp_path: Path) -> None:
    argv = [*SHORT_RUN, "logger=csv,wandb", f"log_dir={tmp_path}", "run_name=a", "logger.wandb.log_model=true"]
    assert main(argv) == 0
    run_dir = tmp_path / "vae" / "a"
    (run,) = offline_runs(run_dir)

    assert run.run.run_id == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert (run.run.display_name, run.run.run_group, list(run.run.tags)) == ("vae/a", "vae", ["vae", "digits"])
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert {key: run.config[key] for key in saved} == saved  # the whole resolved config
    assert run.summary["val/loss"] > 0 and "train/loss" in run.summary

    names = [path.name for path in run.media]
    assert any(n.startswith("samples_") and n.endswith(".png") for n in names), names
    assert any(n.startswith("reconstructions_") and n.endswith(".png") for n in names), names
    assert run.summary["samples._type"] == "images/separated"

    models = [a for a in run.artifacts if a.type == "model"]  # uploaded by `wandb sync` with the run
    assert models and {a.name for a in models} == {f"model-{run.run.run_id}"}
    assert any("best" in a.aliases for a in models)
    assert run.exit_code == 0  # finished when training ended, not left open


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    argv = [*SHORT_RUN, "logger=wandb", f"log_dir={tmp_path}", "run_name=r"]
    assert main(argv) == 0
    run_dir = tmp_path / "vae" / "r"
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert main([*argv, "ckpt_path=last", "trainer.max_epochs=2"]) == 0

    first, resumed = offline_runs(run_dir)
    assert first.run.run_id == resumed.run.run_id == run_id
    assert resumed.summary["trainer/global_step"] > first.summary["trainer/global_step"]


def test_text_samples_land_as_a_table_and_wandb_mode_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")  # offline=True alone: Lightning's own flag would set WANDB_MODE for good
    logger = wandb_logger(save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(loggers=[logger], global_step=7)
    SampleLogger._log_text(trainer, ["a tiny story", "another one"], tmp_path / "samples.txt")
    logger.finalize("success")

    (run,) = offline_runs(tmp_path)
    (table,) = [p for p in run.media if p.name.endswith(".table.json")]
    assert '"a tiny story"' in table.read_text() and '"another one"' in table.read_text()
    assert "WANDB_MODE" not in os.environ


def test_mode_follows_the_flag_then_wandb_mode_then_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert wandb_mode(True) == "offline" and wandb_mode(False) == "online"
    assert wandb_mode(None) is None  # WANDB_MODE=offline is set: wandb reads it itself
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(None) == "offline"  # no credentials
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode(None) is None  # `wandb login` was run: online
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert wandb_mode(None) == "offline"  # that key is for another host


def test_run_id_is_the_agents_under_wandb_agent_and_kept_for_a_later_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = wandb_run_id(tmp_path / "a")
    assert len(new) == 8 and wandb_run_id(tmp_path / "a") == new  # stored, then read back
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    assert wandb_run_id(tmp_path / "b") == "agentrun"
    monkeypatch.delenv("WANDB_RUN_ID")
    assert wandb_run_id(tmp_path / "b") == "agentrun"  # resuming the folder outside the agent


def test_offline_run_joins_the_agents_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    logger = wandb_logger(save_dir=str(tmp_path), project="genlab")
    logger.log_metrics({"val/loss": 1.0}, step=0)
    logger.finalize("success")
    (run,) = offline_runs(tmp_path)
    assert (run.run.run_id, run.run.sweep_id) == ("agentrun", "sweep123")
