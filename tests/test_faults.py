"""Faults a run must survive: preemption signals, non-finite losses, crashes mid-save, bad images."""

from __future__ import annotations

import csv
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
import genlab.faults
from genlab.data.image_folder import ImageFolderDataModule
from genlab.errors import ConfigError, DataError
from genlab.faults import PREEMPTED_EXIT_CODE, AtomicCheckpointIO
from genlab.models.vae import VAEModule
from genlab.run import RESUME_ENV, RUN_DIR_ENV
from genlab.train import main

SRC = Path(genlab.faults.__file__).resolve().parents[1]
# trainer=debug: 2 epochs x 5 batches (of 32 digits here); every step logged and flushed to metrics.csv.
SHORT = ["model=vae", "trainer=debug", "data.batch_size=32", "model.iw_samples=2", "callbacks.samples.num_samples=4"]
SHORT += ["callbacks.progress.refresh_rate=0", "logger.csv.flush_logs_every_n_steps=1"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """train() exports the run folder for DDP children; setting it here makes monkeypatch undo it."""
    for key in (RUN_DIR_ENV, RESUME_ENV):
        monkeypatch.setenv(key, "")
    yield


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def poison_step(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make VAEModule's training loss NaN at the given global steps."""
    original = VAEModule.training_step

    def training_step(self: VAEModule, batch, batch_idx: int) -> torch.Tensor:
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step in steps else loss

    monkeypatch.setattr(VAEModule, "training_step", training_step)


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints


def test_failed_save_leaves_previous_checkpoint_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 5, "w": torch.arange(4.0)}, path)

    def crash_mid_write(obj, file) -> None:  # half the bytes reach the disk, then the process fails
        file.write(b"\x80\x02partial pickle")
        raise OSError("No space left on device")

    monkeypatch.setattr(genlab.faults.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(4)}, path)
    monkeypatch.undo()

    restored = io.load_checkpoint(path)
    assert restored["global_step"] == 5 and torch.equal(restored["w"], torch.arange(4.0))
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind

    # The same crash writing straight to the target (no temp file) leaves it unreadable.
    direct = tmp_path / "direct.ckpt"
    torch.save({"global_step": 5}, direct)
    with open(direct, "wb") as file, pytest.raises(OSError):
        crash_mid_write(None, file)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(direct, weights_only=False)


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def test_nan_loss_stops_naming_step_and_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    poison_step(monkeypatch, {7})  # epoch 1, after epoch 0's checkpoint at step 5
    assert main([*SHORT, f"log_dir={tmp_path}", "run_name=nan"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    last = tmp_path / "vae" / "nan" / "checkpoints" / "last.ckpt"
    assert err[-1].startswith("genlab: error: the gradients are not finite at step 7")
    assert f"Last good checkpoint: {last}" in err[-1]
    assert not any("Traceback" in line for line in err)
    state = checkpoint(last)
    assert state["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_diverging_learning_rate_is_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real divergence, nothing patched: Adam at lr=1e30 sends the weights to inf within steps.
    argv = [*SHORT, f"log_dir={tmp_path}", "model.optimizer.lr=1e30", "trainer.max_epochs=1"]
    assert main(argv) == 2
    assert "not finite at step" in capsys.readouterr().err


def test_nan_guard_skip_drops_bad_updates_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    poison_step(monkeypatch, {3, 7})
    with caplog.at_level(logging.WARNING, logger="genlab.faults"):
        assert main([*SHORT, f"log_dir={tmp_path}", "run_name=skip", "callbacks.nan_guard.action=skip"]) == 0
    skipped = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert [m.split(":")[0] for m in skipped] == ["step 3", "step 7"]
    state = checkpoint(tmp_path / "vae" / "skip" / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 10  # the run went on to its end
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())  # NaN gradients never applied


# ---------------------------------------------------------------------------------------------
# Preemption


def test_usr1_saves_and_resume_auto_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = VAEModule.training_step

    def preempted_at_step_3(self: VAEModule, batch, batch_idx: int) -> torch.Tensor:
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VAEModule, "training_step", preempted_at_step_3)
    argv = [*SHORT, f"log_dir={tmp_path}", "run_name=pre", "resume=auto"]
    assert main(argv) == PREEMPTED_EXIT_CODE
    last = tmp_path / "vae" / "pre" / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == 4  # the batch in flight finished, then the run stopped

    wandb_id = (last.parent.parent / "wandb_id").read_text().strip()
    assert checkpoint(last)["genlab"]["wandb_id"] == wandb_id

    monkeypatch.setattr(VAEModule, "training_step", original)
    assert main(argv) == 0
    assert checkpoint(last)["global_step"] == 10
    assert checkpoint(last)["genlab"]["wandb_id"] == wandb_id  # the same W&B run goes on
    assert sorted(os.listdir(last.parent)) == ["best-epoch=001-step=10.ckpt", "last.ckpt"]
    assert logged_steps(last.parent.parent) == list(range(10))  # each step once, across both processes


# `python -m genlab.train` with one change, made here and not in genlab: with HOLD_READY set, the training
# step at global step 3 writes that file and waits until the run's PreemptionCheckpoint has recorded a
# signal. The test signals only then, so the signal lands mid-epoch however busy the machine is.
HELD_RUN = """
import os, sys, time
from pathlib import Path
from genlab.faults import PreemptionCheckpoint
from genlab.models.vae import VAEModule
from genlab.train import main

original, ready = VAEModule.training_step, os.environ.get("HOLD_READY")


def training_step(self, batch, batch_idx):
    if ready and self.global_step == 3:
        (preempt,) = [c for c in self.trainer.callbacks if isinstance(c, PreemptionCheckpoint)]
        Path(ready).write_text("holding at step 3")
        while preempt.received is None:  # the handler runs between two sleeps, once the signal arrives
            time.sleep(0.01)
    return original(self, batch, batch_idx)


VAEModule.training_step = training_step
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_mid_epoch_then_relaunch_resumes(tmp_path: Path) -> None:
    """The real thing: a training process gets SIGTERM mid-epoch, exits by itself with a
    checkpoint, and the same command with resume=auto carries on from that step to the end."""
    # 3 epochs x 12 batches; the child holds at step 3 (epoch 0) until the signal has arrived.
    argv = [*SHORT, "trainer.limit_train_batches=12", "trainer.max_epochs=3", f"log_dir={tmp_path}"]
    argv += ["run_name=pre", "resume=auto"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENLAB_", "SLURM_", "WANDB_"))}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    run_dir, ready, script = tmp_path / "vae" / "pre", tmp_path / "ready", tmp_path / "held_run.py"
    script.write_text(HELD_RUN)
    command = [sys.executable, str(script), *argv]

    held = subprocess.Popen(
        command, env={**env, "HOLD_READY": str(ready)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300  # only against a hang: the child waits for the signal, however long
        while not ready.is_file():
            assert held.poll() is None, f"training ended before step 3:\n{held.communicate()[0][-3000:]}"
            assert time.monotonic() < deadline, "training never reached step 3"
            time.sleep(0.05)
        held.send_signal(signal.SIGTERM)
        output = held.communicate(timeout=300)[0]
    finally:
        held.kill()
    assert held.returncode == PREEMPTED_EXIT_CODE, output
    assert "Traceback" not in output
    stopped_at = checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert stopped_at == 4, "the step in flight (3) finishes, then the run stops, mid-epoch 0"
    assert logged_steps(run_dir) == list(range(stopped_at))

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 36, resumed.stderr[-3000:]
    assert logged_steps(run_dir) == list(range(36))


def test_last_checkpoint_follows_every_epoch_not_only_new_bests(tmp_path: Path) -> None:
    # mode=max on a falling val/loss: epoch 0 stays the best, yet last.ckpt must move on.
    assert main([*SHORT, f"log_dir={tmp_path}", "run_name=last", "callbacks.checkpoint.mode=max"]) == 0
    folder = tmp_path / "vae" / "last" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best-epoch=000-step=5.ckpt", "last.ckpt"]
    assert checkpoint(folder / "last.ckpt")["global_step"] == 10


def test_resume_auto_needs_a_name_a_relaunch_finds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model=vae", f"log_dir={tmp_path}", "resume=auto"]) == 2
    assert "resume=auto needs a run folder" in capsys.readouterr().err
    assert not (tmp_path / "vae").exists()


def test_newest_checkpoint_prefers_the_later_save(tmp_path: Path) -> None:
    from genlab.run import newest_checkpoint

    assert newest_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue save, in the run folder
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))
    assert newest_checkpoint(tmp_path) == hpc
    os.utime(hpc, (0, 0))
    assert newest_checkpoint(tmp_path) == last


def test_slurm_requeue_calls_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/called\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "genlab"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    genlab.faults.requeue_slurm_job()
    assert (tmp_path / "called").read_text().split() == ["requeue", "77"]


def test_unknown_preempt_signal_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SIGUSR3"):
        genlab.faults.PreemptionCheckpoint("x", preempt_signal="SIGUSR3")


# ---------------------------------------------------------------------------------------------
# Bad images


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Every mode and size a real folder mixes, one file each (all grey 128 or red, for checks)."""
    root = tmp_path / "images"
    save(root / "rgb_wide.png", Image.new("RGB", (40, 20), (255, 0, 0)))
    save(root / "grey.jpg", Image.new("L", (9, 9), 128), quality=100)
    save(root / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)))
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    save(root / "palette.gif", palette)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black: shows as white
    save(root / "rgba.png", transparent)
    deep = Image.fromarray(np.full((10, 10), 32896, dtype=np.uint16))  # 16-bit grey, half way up
    assert deep.mode == "I;16"
    save(root / "grey16.png", deep)
    save(root / "bilevel.bmp", Image.new("1", (8, 8), 1))
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_and_size_loads_at_the_configured_shape(messy_folder: Path, channels: int) -> None:
    data = ImageFolderDataModule(str(messy_folder), image_size=16, channels=channels, val_fraction=0, test_fraction=0)
    files = data.load()["all"]
    images, labels = files[list(range(len(files)))]
    assert images.shape == (7, channels, 16, 16) and labels.tolist() == [0] * 7
    assert images.min() >= -1 and images.max() <= 1
    by_name = {f.name: images[i] for i, f in enumerate(files.files)}
    assert by_name["grey16.png"].mean().abs() < 0.02  # 16-bit mid-grey stays mid-grey, not clipped to white
    assert by_name["rgba.png"].min() > 0.99  # transparent pixels are white
    assert by_name["bilevel.bmp"].min() > 0.99
    if channels == 3:
        red = by_name["rgb_wide.png"].mean((1, 2))
        assert red[0] > 0.99 and red[1:].max() < -0.99
        assert torch.allclose(by_name["palette.gif"].mean((1, 2)), red, atol=1e-3)
        assert by_name["cmyk.jpg"].mean((1, 2))[0] > 0.9


def test_broken_files_error_or_skip_naming_the_file(
    messy_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = messy_folder / "rgb_wide.png"
    truncated = messy_folder / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    (messy_folder / "notes.png").write_text("not an image\n")

    # Set-up only lists the files; each is decoded in its batch, where a bad one stops the run naming it.
    files = ImageFolderDataModule(str(messy_folder), image_size=8).load()["all"]
    position = {f.name: i for i, f in enumerate(files.files)}
    assert len(files) == 9
    with pytest.raises(DataError, match=r"notes\.png.*on_bad_file=skip"):
        files[[position["rgb_wide.png"], position["notes.png"]]]
    with pytest.raises(DataError, match=r"truncated\.png.*on_bad_file=skip"):
        files[[position["truncated.png"]]]

    with caplog.at_level(logging.WARNING, logger="genlab.data.image_folder"):
        files = ImageFolderDataModule(str(messy_folder), image_size=8, on_bad_file="skip").load()["all"]
        images, labels = files[list(range(len(files)))]
    assert len(images) == len(labels) == 7  # left out of their batch
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "notes.png" in warned and "truncated.png" in warned


def test_label_outside_the_class_count_errors_or_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i, cls in enumerate(["cat", "dog", "zebra"]):
        for j in range(2):
            save(tmp_path / cls / f"{j}.png", Image.new("RGB", (8, 8), (80 * i, 0, 0)))
    with pytest.raises(DataError, match=r"zebra/0.png' has label 2 .*num_classes=2"):
        ImageFolderDataModule(str(tmp_path), image_size=8, num_classes=2).load()
    with caplog.at_level(logging.WARNING, logger="genlab.data.image_folder"):
        data = ImageFolderDataModule(str(tmp_path), image_size=8, num_classes=2, on_bad_file="skip")
        files = data.load()["all"]
    assert files.labels.tolist() == [0, 0, 1, 1] and data.num_classes == 2
    assert "zebra/1.png" in " ".join(r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Exact resume after a mid-epoch stop (a real signal), also mid-accumulation


def preempt_at(monkeypatch: pytest.MonkeyPatch, module: type, step: int, batch_idx: int | None = None) -> None:
    """Send this process SIGUSR1 during the training step at `step` (and `batch_idx`, if given)."""
    original = module.training_step

    def training_step(self, batch, idx: int):
        if self.global_step == step and (batch_idx is None or idx == batch_idx):
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, idx)

    monkeypatch.setattr(module, "training_step", training_step)
    return original


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = checkpoint(a), checkpoint(b)
    assert first["global_step"] == second["global_step"]
    for key, value in first["state_dict"].items():
        torch.testing.assert_close(second["state_dict"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_mid_epoch_signal_then_resume_equals_an_unbroken_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int
) -> None:
    # 2 epochs x 10 batches of 32 digits; the signal lands in epoch 1's third batch (mid-window
    # when accumulating: batch 2 opens a window of two, so the stop waits for batch 3).
    argv = [*SHORT, f"log_dir={tmp_path}", "trainer.limit_train_batches=10"]
    argv += [f"trainer.accumulate_grad_batches={accumulate}"]
    assert main([*argv, "run_name=unbroken"]) == 0

    steps_per_epoch = 10 // accumulate
    original = preempt_at(monkeypatch, VAEModule, step=steps_per_epoch + 2 // accumulate, batch_idx=2)
    resumable = [*argv, "run_name=stopped", "resume=auto"]
    assert main(resumable) == PREEMPTED_EXIT_CODE
    last = tmp_path / "vae" / "stopped" / "checkpoints" / "last.ckpt"
    state = checkpoint(last)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == (
        3 if accumulate == 1 else 4
    )
    assert state["global_step"] == steps_per_epoch + (3 if accumulate == 1 else 2)  # whole windows only

    monkeypatch.setattr(VAEModule, "training_step", original)
    assert main(resumable) == 0
    assert_same_weights(tmp_path / "vae" / "unbroken" / "checkpoints" / "last.ckpt", last)


def test_nan_guard_counts_optimizer_steps_not_micro_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every second micro-batch (the last of each window of two) is NaN: each optimizer step is bad,
    # although half the batches are fine. Counting per batch, the good ones reset the count forever.
    original = VAEModule.training_step

    def second_micro_batch_nan(self: VAEModule, batch, batch_idx: int) -> torch.Tensor:
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if batch_idx % 2 == 1 else loss

    monkeypatch.setattr(VAEModule, "training_step", second_micro_batch_nan)
    argv = [*SHORT, f"log_dir={tmp_path}", "trainer.limit_train_batches=10", "trainer.accumulate_grad_batches=2"]
    argv += ["callbacks.nan_guard.action=skip", "callbacks.nan_guard.max_consecutive_skips=2"]
    assert main(argv) == 2
    assert "3 steps in a row were not finite at step 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Loading checkpoints


def test_checkpoints_load_safely_and_onto_the_asked_device(tmp_path: Path) -> None:
    assert main([*SHORT, f"log_dir={tmp_path}", "run_name=ok", "trainer.max_epochs=1"]) == 0
    last = tmp_path / "vae" / "ok" / "checkpoints" / "last.ckpt"
    model = genlab.load_model(last, map_location="meta")  # a device other than the CPU, without a GPU
    assert {p.device.type for p in model.parameters()} == {"meta"}

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo unpickled code ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({**checkpoint(last), "payload": RunsCode()}, evil)
    with pytest.raises(ConfigError, match=r"would run code while loading \(posix.system\), so it is refused"):
        genlab.load_model(evil)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        genlab.load_model(truncated)


def test_resuming_from_a_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main([*SHORT, f"log_dir={tmp_path}", f"ckpt_path={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"genlab: error: '{bad}' is not a readable checkpoint (corrupt or truncated?)"
    assert not any("Traceback" in line for line in err)
