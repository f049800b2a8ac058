"""End-to-end runs through the entrypoint: artifacts, resume, DDP, mixed precision, bad input."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import column, read_metrics

from genlab import load_model
from genlab.config import SEED_ENV, compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models import VAEModule
from genlab.run import RESUME_ENV, RUN_DIR_ENV, prepare_run
from genlab.train import choose_threads, main, run_summary, train

SMALL_VAE = ("model.encoder.hidden_features=[64,32]",)


def _only_run(log_dir: Path) -> Path:
    runs = sorted((log_dir / "vae").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_vae_run_learns_and_leaves_a_complete_run_folder(make_config, log_dir: Path) -> None:
    cfg = make_config("trainer.max_epochs=8", "callbacks.samples.every_n_epochs=4")
    datamodule, untrained = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    x = next(iter(datamodule.val_dataloader()))[0]
    with torch.no_grad():
        initial = sum(untrained.loss_terms(x)).mean().item()

    train(cfg)

    run = _only_run(log_dir)
    val_loss = column(read_metrics(run), "val/loss")
    assert len(val_loss) == 8
    assert val_loss[-1] < 0.7 * initial and val_loss[-1] < val_loss[0]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    for name in ("samples_epoch=003", "samples_epoch=007", "samples_final", "reconstructions_final"):
        assert (run / "samples" / f"{name}.png").is_file()
    model = load_model(run / "checkpoints" / "last.ckpt")  # the checkpoint alone rebuilds the model
    samples = model.sample(16)
    assert samples.shape == (16, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    lightning_way = VAEModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")  # what Lightning users try first
    for key, value in model.state_dict().items():
        assert torch.equal(lightning_way.state_dict()[key], value), key


def test_resumed_run_ends_where_an_unbroken_run_ends(make_config, log_dir: Path) -> None:
    train(make_config(*SMALL_VAE, "run_name=unbroken", "trainer.max_epochs=4"))
    train(make_config(*SMALL_VAE, "run_name=stopped", "trainer.max_epochs=2"))
    train(make_config(*SMALL_VAE, "run_name=stopped", "trainer.max_epochs=4", "ckpt_path=last"))

    unbroken = torch.load(log_dir / "vae/unbroken/checkpoints/last.ckpt", weights_only=False)
    resumed = torch.load(log_dir / "vae/stopped/checkpoints/last.ckpt", weights_only=False)
    assert resumed["global_step"] == unbroken["global_step"] == 4 * (1437 // 128)
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    steps = [int(row["step"]) for row in read_metrics(log_dir / "vae/stopped") if row.get("val/loss")]
    assert len(steps) == 4  # the metrics of the first two epochs were kept, not overwritten


def test_a_named_run_is_never_overwritten(make_config) -> None:
    train(make_config(*SMALL_VAE, "run_name=mine", "trainer=debug", "trainer.max_epochs=1"))
    assert main([f"log_dir={make_config().log_dir}", "run_name=mine"]) == 2


def test_bf16_mixed_on_cpu(make_config, log_dir: Path) -> None:
    metrics = train(make_config(*SMALL_VAE, "trainer=debug", "trainer.precision=bf16-mixed"))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert (_only_run(log_dir) / "checkpoints" / "last.ckpt").is_file()


def _cli(*argv: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GENLAB_RUN_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "genlab.train", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_ddp_with_two_cpu_processes(log_dir: Path) -> None:
    result = _cli(
        f"log_dir={log_dir}", *SMALL_VAE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = _only_run(log_dir)  # both ranks wrote into one run folder
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(column(read_metrics(run), "val/loss")) == 2
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6
    rank0, rank1 = state["genlab"]["rng_per_rank"]  # each rank's own RNG, seeded apart: their VAE noise differs
    assert not torch.equal(rank0["torch"], rank1["torch"])


def test_cli_bad_input_is_one_clear_line() -> None:
    result = _cli("model=nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no config 'nope' for model" in result.stderr and "vae" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trainer.max_epoch=5"], "Did you mean: max_epochs"),
        (["data=image_folder", "data.path=/no/such/folder"], "image folder '/no/such/folder' does not exist"),
        (["ckpt_path=last"], "no checkpoint to resume"),
    ],
)
def test_bad_input_in_process(argv: list[str], message: str, log_dir: Path, capsys) -> None:
    assert main([f"log_dir={log_dir}", "callbacks.progress.refresh_rate=0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_and_print_config(capsys) -> None:
    assert main(["--help"]) == 0
    assert "vae" in capsys.readouterr().out
    assert main(["--print-config", "model.latent_dim=3"]) == 0
    assert "latent_dim: 3" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_run_checkpoint_loads_without_compile(make_config, log_dir: Path) -> None:
    train(make_config(*SMALL_VAE, "trainer=debug", "compile=true"))
    checkpoint = torch.load(_only_run(log_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    assert load_model(_only_run(log_dir) / "checkpoints" / "last.ckpt").sample(2).shape == (2, 1, 8, 8)


def test_a_run_that_trained_no_step_gives_no_sampling_advice(log_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        # The data modules refuse a split without a batch, so the way left to train no step is to skip training.
        assert main([f"log_dir={log_dir}", "trainer=debug", "trainer.limit_train_batches=0"]) == 0
    assert "no training step ran, so there is no trained model to sample from" in caplog.text
    assert "Look at the data set" in caplog.text
    assert "sample from it" not in caplog.text and "make sample" not in caplog.text


def test_seed_null_resumed_run_keeps_the_seed_it_started_with(make_config, log_dir: Path, monkeypatch) -> None:
    """seed=null draws a seed at every launch; a relaunch with resume=auto must keep the first one, in
    its data split (keyed on ${seed}), its saved config and checkpoint, and for the DDP ranks it starts."""
    monkeypatch.delenv(SEED_ENV, raising=False)
    argv = [*SMALL_VAE, "trainer=debug", "seed=null", "run_name=r", "resume=auto"]
    train(make_config(*argv, "trainer.max_epochs=1"))
    run = log_dir / "vae" / "r"
    started = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["genlab"]["config"]["seed"]

    seen = {}
    fit = L.Trainer.fit

    def recording_fit(self, model, datamodule=None, **kwargs):  # what the relaunch trains with
        seen.update(data=datamodule.seed, ranks=os.environ[SEED_ENV])
        return fit(self, model, datamodule=datamodule, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    train(make_config(*argv, "trainer.max_epochs=2"))
    assert seen == {"data": started, "ranks": str(started)}
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 10 and state["genlab"]["config"]["seed"] == started
    assert {yaml.safe_load(p.read_text())["seed"] for p in run.glob("config*.yaml")} == {started}


def test_seed_is_kept_by_a_relaunch_before_any_checkpoint_and_by_the_ranks_lightning_starts(
    log_dir: Path, monkeypatch
) -> None:
    for key in (SEED_ENV, RUN_DIR_ENV, RESUME_ENV):
        monkeypatch.setenv(key, "")  # recorded, so what prepare_run exports is undone
    argv = ["model=vae", f"log_dir={log_dir}", "seed=null", "run_name=r", "resume=auto"]
    first = compose(argv)
    prepare_run(first)  # stopped before its first checkpoint: only config.yaml is left
    monkeypatch.setenv(RUN_DIR_ENV, "")
    again = compose(argv)
    assert prepare_run(again).resume_from is None and again.seed == first.seed and again.data.seed == first.seed

    # A DDP rank Lightning starts: the launching process's seed, whatever its own command line says.
    monkeypatch.setenv(RUN_DIR_ENV, str(log_dir / "vae" / "r"))
    monkeypatch.setenv(SEED_ENV, "12345")
    rank = compose(["model=vae", f"log_dir={log_dir}", "seed=7"])
    prepare_run(rank)
    assert rank.seed == rank.data.seed == 12345


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_plain_lines_in_a_log_file_and_a_bar_in_a_terminal(
    log_dir: Path, monkeypatch, terminal: bool
) -> None:
    stdout = _Terminal() if terminal else io.StringIO()  # a file, as with `make train > run.log`
    monkeypatch.setattr(sys, "stdout", stdout)
    argv = [f"log_dir={log_dir}", "trainer=debug", "callbacks.progress.refresh_rate=1"]
    assert main([*argv, "callbacks.progress.every_n_steps=4"]) == 0  # 2 epochs x 5 steps
    text = stdout.getvalue()
    plain = [line.split()[:2] for line in text.splitlines() if line.startswith(("step ", "validation "))]
    if terminal:
        assert "\r" in text and "Epoch 1" in text and not plain  # tqdm's live bar, redrawn in place
    else:
        assert "\r" not in text and "Epoch 1" not in text
        assert plain == [["step", "4/10"], ["validation", "epoch"], ["step", "8/10"], ["validation", "epoch"]]
        assert "train/loss=" in text and "val/loss=" in text


def test_thread_count_defaults_to_the_cores_this_process_may_use(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5, 7}, raising=False)  # taskset/SLURM: 4 of 8
    assert choose_threads(None, processes=1) == (4, "the 4 cores this process may use; threads=<n> sets it")
    assert choose_threads(None, processes=2)[0] == 2  # DDP on the CPU: the node's processes share them
    assert choose_threads(3, processes=2) == (3, "threads=3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(None, processes=1) == (1, "OMP_NUM_THREADS=1 from the environment; threads=<n> overrides it")
    assert choose_threads(2, processes=1)[0] == 2
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ConfigError, match="threads must be a whole number"):
            choose_threads(bad, processes=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='many' is not a thread count"):
        choose_threads(None, processes=1)


def test_a_run_uses_and_reports_its_thread_count(log_dir: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    seen = []
    fit = L.Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.append((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))  # what the DDP ranks inherit
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO):
        train(compose([f"log_dir={log_dir}", "trainer=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=1"]))
    assert seen == [(3, "3")] and "Torch threads: 3 (the 3 cores this process may use" in caplog.text
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ  # left as it was
    with caplog.at_level(logging.INFO):
        train(compose([f"log_dir={log_dir}", "trainer=debug", "trainer.max_epochs=1", "threads=2"]))
    assert seen[-1][0] == 2 and "Torch threads: 2 (threads=2)" in caplog.text
    assert main([f"log_dir={log_dir}", "threads=0"]) == 2


def test_train_it_longer_advice_names_the_runs_experiment_and_data(tmp_path: Path) -> None:
    """Following the summary's advice must rebuild the run's nets: an experiment's run relaunched as its
    bare family would build the default net and fail to load the checkpoint."""
    from types import SimpleNamespace

    cfg = compose(["experiment=vae_mnist5k"])
    trainer = SimpleNamespace(global_step=10, checkpoint_callback=None, max_epochs=30)
    advice = [line for line in run_summary(trainer, cfg, tmp_path).splitlines() if "train it longer" in line]
    assert len(advice) == 1 and "model=vae experiment=vae_mnist5k data=mnist5k" in advice[0]
    assert f"ckpt_path={tmp_path}" in advice[0] and "trainer.max_epochs=<more than 30>" in advice[0]


def test_relaunch_without_the_runs_experiment_says_its_recipe_in_one_line(log_dir: Path) -> None:
    """A DiT run resumed as bare model=diffusion builds a UNet: one line naming the run's experiment instead
    of Lightning's wall of missing and unexpected keys, and the checkpoint is left as it was."""
    small = ["model.net.hidden_size=32", "model.net.depth=1", "model.net.num_heads=2"]
    common = [f"log_dir={log_dir}", "trainer=debug", "logger=none", "run_name=a", "trainer.max_steps=1"]
    train(compose(["experiment=diffusion_dit", *small, *common]))
    last = log_dir / "diffusion" / "a" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(ConfigError, match="trained with model=diffusion experiment=diffusion_dit data=digits") as err:
        train(compose(["model=diffusion", *common, "ckpt_path=last", "trainer.max_steps=2"]))
    assert "\n" not in str(err.value) and last.read_bytes() == before
