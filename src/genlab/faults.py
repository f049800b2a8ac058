"""Surviving faults: preemption signals, non-finite losses, and crashes while a checkpoint is written.

- `PreemptionCheckpoint`: on SIGTERM (or the configured extra signal, SIGUSR1 by default) the run
  finishes the current batch, saves `checkpoints/last.ckpt` and exits (SLURM: requeues);
  `resume=auto` continues it.
- `NaNGuard`: a non-finite loss or gradient stops the run naming the step and the last good
  checkpoint, or (action=skip) drops that step's update, never silently training on.
- `AtomicCheckpointIO`: a checkpoint is complete or absent, never half-written.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genlab.errors import ConfigError, DivergenceError

log = logging.getLogger(__name__)

# What a shell reports for a process ended by SIGTERM: schedulers that restart failed jobs
# (Kubernetes, AWS Batch, torchrun --max-restarts) restart a preempted run instead of calling it done.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def parse_signal(name: str | None) -> signal.Signals | None:
    if name is None:
        return None
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise ConfigError(f"unknown signal '{name}': use a name such as SIGUSR1, SIGUSR2 or SIGTERM") from None


def slurm_environment() -> list[SLURMEnvironment]:
    """Lightning's SLURM environment (ranks, nodes, master address) with its auto-requeue off:
    `PreemptionCheckpoint` requeues instead, because Lightning's requeue handler saves the checkpoint
    inside the signal handler (see there)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or `preempt_signal`, finishes the current batch, saves `<dirpath>/last.ckpt` on every
    rank together and ends the run with Lightning's `SIGTERMException`; under SLURM, `preempt_signal`
    (sbatch --signal=SIGUSR1@90) also requeues the job, which keeps its id and so its run folder.

    The signal handler only records the signal; the ranks agree at the batch's end (one all-reduce
    per batch) and stop together. Lightning's own handlers run collectives inside the handler
    (a broadcast on SIGTERM, a checkpoint barrier on the SLURM requeue signal), which can pair with
    a different collective on another rank: a forwarded SIGUSR1 hung 2-process CPU DDP that way.
    Lightning's `OnExceptionCheckpoint` does not fit either: it saves on every exception (a
    diverged run would overwrite the last good `last.ckpt` with NaN weights) and deletes its file
    at teardown.
    """

    def __init__(self, dirpath: str | Path, preempt_signal: str | None = "SIGUSR1") -> None:
        self.dirpath, self.requeue_signal = Path(dirpath), parse_signal(preempt_signal)
        self.received: int | None = None

    # Installed once the loops run: Lightning snapshots the handlers before fitting and restores
    # them at teardown, so the process is left as it was.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen()

    def _listen(self) -> None:
        for signum in {signal.SIGTERM, self.requeue_signal} - {None}:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)  # every batch, every rank
        if stop and at_optimizer_step(trainer):
            # Lightning's own stop flag, now set on every rank at the same batch: its loops end the run
            # after this batch is logged (or after the next validation batch) with SIGTERMException,
            # leaving the loop state its resume expects. Private, as Lightning only sets it from its handler.
            # Only where an optimizer step just happened: mid-accumulation the summed gradients of the
            # window would be lost (they are not in the checkpoint), so the stop waits for the window's end.
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath.resolve() / "last.ckpt"
        # ModelCheckpoint then owns this last.ckpt after the resume, instead of writing last-v1.ckpt beside it
        for callback in trainer.checkpoint_callbacks:
            same_folder = os.path.realpath(getattr(callback, "dirpath", None) or "") == str(path.parent)
            if isinstance(callback, ModelCheckpoint) and callback.save_last and same_folder:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # every rank: sharded strategies gather, rank zero writes
        rank_zero_info(f"Stopped by a signal at step {trainer.global_step}: saved {path}")
        if trainer.is_global_zero and self.received == self.requeue_signal != signal.SIGTERM:
            requeue_slurm_job()


def at_optimizer_step(trainer: L.Trainer) -> bool:
    """Did the batch that just ended close a gradient-accumulation window (or the epoch)? Lightning's
    own rule: every `accumulate_grad_batches` batches of the epoch, and at its last batch."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.current.ready % trainer.accumulate_grad_batches == 0 or progress.is_last_batch


def requeue_slurm_job() -> None:
    """Put this SLURM job back in the queue (as Lightning's SLURM connector does); no-op outside SLURM."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id or not SLURMEnvironment.detect():
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        rank_zero_info(f"Requeued SLURM job {job_id}")
    else:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())


class NaNGuard(L.Callback):
    """Watches the gradients before each optimizer step and the loss after each batch.

    action=stop raises `DivergenceError` naming the step and the last good checkpoint; a
    non-finite gradient is caught before the weights are touched. action=skip drops the update
    (gradients set to None: torch optimizers then leave those weights and their state alone) and
    warns; more than `max_consecutive_skips` bad steps in a row stop the run anyway.

    The decision is reduced over ranks, so every DDP/FSDP rank stops or skips together. Costs one
    host sync per step. Under fp16 with a GradScaler, inf gradients are the scaler's business
    (it skips the step and lowers the scale), so only the loss is checked there.

    Not Lightning's `SpikeDetection`: it checks only after the optimizer step (the weights are
    already NaN), cannot skip a step, and its `load_state_dict` fails in 2.6 (`self.running`).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ConfigError(f"NaNGuard action must be 'stop' or 'skip', got {action!r}")
        self.action, self.max_consecutive_skips = action, max_consecutive_skips
        # Counted per optimizer step: with gradient accumulation one step spans several batches, and a
        # good micro-batch must not reset the count of a window that is already bad.
        self.skipped, self._consecutive, self._bad_step, self._window_closed = 0, 0, False, True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window_closed:  # a new accumulation window (every batch without accumulation)
            self._bad_step, self._window_closed = False, False

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = not grads or bool(total_norm(grads).isfinite())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        if self.action == "stop":
            self._stop(trainer, "the gradients are", updated=False)
        optimizer.zero_grad(set_to_none=True)
        if not self._bad_step:  # once per step, also with two optimizers (a GAN's D and G)
            self._bad_step = True
            self._count_skip(trainer, "non-finite gradients")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            finite = bool(torch.isfinite(loss.detach()).all())
            if not trainer.strategy.reduce_boolean_decision(finite, all=True) and not self._bad_step:
                self._bad_step = True
                if self.action == "stop":
                    self._stop(trainer, f"the loss ({loss.item()}) is", updated=True)
                self._count_skip(trainer, f"a non-finite loss ({loss.item()}) with finite gradients (update kept)")
        if at_optimizer_step(trainer):
            self._window_closed = True
            if not self._bad_step:
                self._consecutive = 0

    def _count_skip(self, trainer: L.Trainer, what: str) -> None:
        self.skipped += 1
        self._consecutive += 1
        if self._consecutive > self.max_consecutive_skips:
            self._stop(trainer, f"{self._consecutive} steps in a row were", updated=False)
        if trainer.is_global_zero:
            log.warning("step %d: %s; update skipped (%d so far)", trainer.global_step, what, self.skipped)

    def _stop(self, trainer: L.Trainer, what: str, updated: bool) -> None:
        checkpoint = last_checkpoint(trainer)
        raise DivergenceError(
            f"{what} not finite at step {trainer.global_step} (epoch {trainer.current_epoch}); training stopped"
            + (" after this step's update" if updated else " before updating the weights")
            + f". Last good checkpoint: {checkpoint or 'none saved yet'}. Try a lower learning rate, "
            + ("trainer" if trainer.lightning_module.automatic_optimization else "model")  # manual: the module clips
            + ".gradient_clip_val=1.0, bf16-mixed instead of 16-mixed, or callbacks.nan_guard.action=skip."
        )


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all the tensors together (inf or nan if any element is), in one fused op per
    tensor list (`torch.nn.utils.get_total_norm` does the same but needs torch >= 2.6)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float())


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint the checkpoint callbacks wrote (or restored from a resumed run)."""
    paths = [
        getattr(c, key, "") for c in trainer.checkpoint_callbacks for key in ("last_model_path", "best_model_path")
    ]
    existing = [p for p in paths if p and os.path.isfile(p)]
    return max(existing, key=os.path.getmtime) if existing else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<name>.<pid>.tmp` next to the target, fsyncs it, then `os.replace`s it over the target,
    so a crash mid-write leaves the previous checkpoint intact.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the
    system temp folder; when that is another file system than the checkpoints (node-local /tmp,
    shared checkpoint storage), the final move is a copy onto the target, and a kill during that
    copy leaves a truncated `last.ckpt`. Remote paths (s3://...) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
