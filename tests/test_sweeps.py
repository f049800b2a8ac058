"""Every sweep in configs/sweep/ run the way W&B runs it, offline: W&B's own sweep engine (the
`sweeps` package its server uses) suggests parameter sets, W&B's own agent code turns each into
the command it would start, and that command trains for a few steps. The metric each run reports
goes back to the engine, so the bayes search sees finished runs as it would in a real sweep."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sweeps
import torch
from conftest import tiny_gpt_data_args
from omegaconf import OmegaConf
from wandb import wandb_agent
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args, load_sweep_config
from wandb_offline import isolate_wandb, offline_runs, reset_wandb

from genlab.config import compose, config_dir, parse_argv
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.train import main

SWEEP_FILES = sorted((config_dir() / "sweep").glob("*.yaml"))
SWEEP_ID = "sweep123"
ENTRYPOINT = "genlab.train"
# A few steps on CPU; a key the sweep itself sets is left to the sweep. No callbacks: sampling a
# text model token by token would take most of the time (samples reaching W&B: test_wandb_logger).
SHORT_RUN = {
    "trainer": "debug",
    "callbacks": "none",
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    isolate_wandb(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_SWEEP_ID", SWEEP_ID)  # what `wandb agent <id>` sets before starting runs
    yield
    reset_wandb()


def agent_command(sweep: dict[str, Any], suggestion: sweeps.SweepRun, run_id: str, monkeypatch) -> list[str]:
    """The command `wandb agent` starts for a suggested run, built by wandb's own `Agent` with only
    the process launch replaced. Like the real agent it sets WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH
    in this process (monkeypatch restores them after the test)."""
    launched: dict[str, list[str]] = {}

    class Launch:  # stands in for wandb_agent.AgentProcess
        def __init__(self, command: list[str] | None = None, **kwargs: Any) -> None:
            launched["command"] = command

    monkeypatch.setattr(wandb_agent, "AgentProcess", Launch)
    for name in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.setenv(name, "")
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id=SWEEP_ID)
    agent._sweep_command = list(sweep.get("command") or [])  # what Agent.run reads from the sweep's config
    agent._command_run({"type": "run", "run_id": run_id, "program": sweep.get("program"), "args": suggestion.config})
    return launched["command"]


def entrypoint_args(command: list[str]) -> list[str]:
    """The arguments our entrypoint receives from `... -m genlab.train <args>`."""
    assert ENTRYPOINT in command and command[command.index(ENTRYPOINT) - 1] == "-m", command
    return command[command.index(ENTRYPOINT) + 1 :]


def short(argv: list[str], params: dict[str, Any], log_dir: Path) -> list[str]:
    return [*argv, *(f"{k}={v}" for k, v in SHORT_RUN.items() if k not in params), f"log_dir={log_dir}"]


def run_sweep(path: Path, n: int, tmp_path: Path, monkeypatch, extra: tuple[str, ...] = ()) -> list[sweeps.SweepRun]:
    """`n` runs of the sweep in `path`, one after another, as one agent would run them; `extra`
    arguments after the agent's (a base run to start from)."""
    sweep = load_sweep_config(str(path))
    metric = sweep["metric"]["name"]
    random.seed(0)
    np.random.seed(0)  # the engine draws from both
    finished: list[sweeps.SweepRun] = []
    for i in range(n):
        suggestion = sweeps.next_run(sweep, finished, validate=True)
        # The server hands the suggestion to the agent as JSON: plain Python values, not NumPy's.
        suggestion.config = json.loads(json.dumps(suggestion.config, default=lambda x: x.item()))
        run_id = f"run{i:05d}"
        log_dir = tmp_path / run_id
        argv = short(entrypoint_args(agent_command(sweep, suggestion, run_id, monkeypatch)), suggestion.config, log_dir)
        argv += extra

        cfg = compose(argv)  # a misspelt key fails here, naming it
        for key, param in suggestion.config.items():
            assert OmegaConf.select(cfg, key) == param["value"], key  # arrived, with its type
        assert main(argv) == 0

        (run_dir,) = log_dir.glob("*/*/")
        (run,) = offline_runs(run_dir)
        assert (run.run.run_id, run.run.sweep_id) == (run_id, SWEEP_ID)  # the agent's run, not a new one
        assert {key: run.config[key] for key in suggestion.config} == {
            k: p["value"] for k, p in suggestion.config.items()
        }
        assert math.isfinite(run.summary[metric]), f"the sweep's metric {metric} was not logged"
        finished.append(
            sweeps.SweepRun(name=run_id, state="finished", config=suggestion.config, summary_metrics=run.summary)
        )
    return finished


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_sweep_file_is_valid_and_runs_our_entrypoint_with_wandb(path: Path) -> None:
    sweep = load_sweep_config(str(path))
    assert sweeps.schema_violations_from_proposed_config(sweep) == []
    assert sweep["method"] in ("bayes", "random", "grid") and sweep["metric"]["goal"] in ("minimize", "maximize")
    command = sweep["command"]
    assert command[:2] == ["${env}", "${interpreter}"] and command[-1] == "${args}", command
    cfg = compose([a for a in entrypoint_args(command) if a != "${args}"])
    assert path.stem in (cfg.groups.model, cfg.groups.get("experiment"))  # a family's sweep, or an experiment's
    # Without a W&B logger the agent never sees the metric and the search runs blind.
    assert any(node._target_ == "genlab.loggers.wandb_logger" for node in cfg.logger.values())


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_sweep_runs_as_the_agent_runs_it(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> None:
    extra: tuple[str, ...] = ()
    if path.stem == "gpt_feedback":  # fine-tunes a trained GPT: the tiny one, and prompts that fit its context
        base = request.getfixturevalue("tiny_gpt_run")
        extra = (f"model.init_from={base}", *tiny_gpt_data_args(base), "model.prompt_length=4")
        extra += ("model.completion_length=16", "model.val_prompts=2", "model.prompts_per_step=2")
    extra += tiny_experiment_data(path.stem, tmp_path)
    runs = run_sweep(path, 3, tmp_path, monkeypatch, extra)
    assert len({str(r.config) for r in runs}) > 1  # the engine moved on


def tiny_experiment_data(experiment: str, tmp_path: Path) -> tuple[str, ...]:
    """Small data for the experiments' sweeps, so three short runs take seconds: a few Python files, 50
    molecules, five chorales (their own defaults are the standard library, 4,900 molecules, 350 chorales)."""
    if experiment == "gpt_code":
        folder = tmp_path / "code"
        for i in range(40):
            module = folder / f"pkg{i % 2}" / f"mod_{i:02d}.py"
            module.parent.mkdir(parents=True, exist_ok=True)
            module.write_text(f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n", encoding="utf-8")
        return (f"data.path={folder}", "data.tokenizer=char", "data.block_size=32")
    if experiment == "gpt_molecules":
        from genlab.data import molecules

        smiles = tmp_path / "mols.smi"
        smiles.write_text("\n".join(molecules.embedded_path().read_text().splitlines()[:50]) + "\n")
        return (f"data.path={smiles}", "data.block_size=32")
    if experiment == "text_to_image":  # fewer composed scenes (20,000 and 1,000 by default)
        return ("data.train_scenes=256", "data.val_scenes=64")
    if experiment == "gpt_music":
        return ("data.max_pieces=5", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.block_size=32")
    if experiment == "vq_gpt":  # an untrained VQ autoencoder of the 8x8 digits as the first stage (2x2 codes)
        config = OmegaConf.to_container(compose(["model=autoencoder", "model.regularizer=vq"]), resolve=True)
        ckpt = tmp_path / "vq.ckpt"
        torch.save({"genlab": {"config": config}, "state_dict": instantiate(config["model"]).state_dict()}, ckpt)
        return ("data=digits", f"model.first_stage={ckpt}")
    return ()


def test_a_misspelt_key_in_a_sweep_file_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "method: random\n"
        "metric: {name: val/loss, goal: minimize}\n"
        "parameters:\n"
        "  model.latnt_dim: {values: [8]}\n"
        "command: ['${env}', '${interpreter}', -m, genlab.train, model=vae, 'logger=csv,wandb', '${args}']\n"
    )
    with pytest.raises(ConfigError, match=r"unknown key 'model\.latnt_dim'.*Did you mean: latent_dim"):
        run_sweep(path, 1, tmp_path, monkeypatch)
    # What the agent's run does with it: one line on stderr and exit status 2, before any training.
    sweep = load_sweep_config(str(path))
    command = agent_command(sweep, sweeps.next_run(sweep, []), "typo0001", monkeypatch)
    assert main(short(entrypoint_args(command), {}, tmp_path)) == 2


# What `wandb agent` makes of each kind of value (`${args}`, `${args_no_hyphens}`, `${args_no_equals}`):
# Python's str() of the value after `--key=`. Our parser must give back the value the engine chose.
AGENT_ARGS = [
    ("model.beta", 0.5, "--model.beta=0.5"),
    ("model.optimizer.lr", 1e-05, "--model.optimizer.lr=1e-05"),
    ("model.latent_dim", 16, "--model.latent_dim=16"),
    ("trainer.precision", "bf16-mixed", "--trainer.precision=bf16-mixed"),
    ("trainer.gradient_clip_val", None, "--trainer.gradient_clip_val=None"),
    ("compile", True, "--compile=True"),
    ("compile", False, "--compile=False"),
    ("model.encoder.hidden_channels", [32, 64], "--model.encoder.hidden_channels=[32, 64]"),
    ("logger.wandb.tags", ["a", "b c"], "--logger.wandb.tags=['a', 'b c']"),
]


@pytest.mark.parametrize(("key", "value", "flag"), AGENT_ARGS, ids=[f for _, _, f in AGENT_ARGS])
def test_agent_arguments_parse_to_the_values_the_engine_chose(key: str, value: Any, flag: str) -> None:
    forms = create_sweep_command_args({"args": {key: {"value": value}}})
    assert forms["args"] == [flag]
    for form in ("args", "args_no_hyphens", "args_no_equals"):
        (parsed,) = parse_argv(forms[form])
        assert parsed == (key, value) and type(parsed[1]) is type(value), form


@pytest.mark.slow
def test_sweep_values_reach_every_ddp_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's command started as a process with two CPU ranks. The sizes differ from the
    defaults, so a rank that had not seen them would build other parameter shapes, and DDP
    refuses to start when the ranks' shapes differ."""
    sweep = load_sweep_config(str(config_dir() / "sweep" / "vae.yaml"))
    chosen = {"model.latent_dim": 8, "model.encoder.hidden_features": [64, 32]}
    suggestion = sweeps.SweepRun(config={k: {"value": v} for k, v in chosen.items()})
    command = agent_command(sweep, suggestion, "ddprun01", monkeypatch)
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1"]
    ddp += ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # as make agent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH")) if p)
    done = subprocess.run([*command, *ddp, f"log_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "vae").iterdir()
    assert (run_dir / "wandb_id").read_text().strip() == "ddprun01"
    assert OmegaConf.load(run_dir / "config.yaml").model.latent_dim == 8
    (run,) = offline_runs(run_dir)  # one W&B run: rank zero's
    assert run.run.run_id == "ddprun01" and run.exit_code == 0
