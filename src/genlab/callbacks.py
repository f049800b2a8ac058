"""Callbacks every family shares. They rely only on the family contract: `sample(n)` returns
images `(n, C, H, W)` in [-1, 1] or a list of strings, and an optional `reconstruct(x)`; and on the
data's optional `score(samples, split)` / `write_samples(samples, folder, stem)` for text samples."""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import make_grid

from genlab import watermark
from genlab.errors import ConfigError
from genlab.strategies import full_weights


class SampleLogger(L.Callback):
    """Every `every_n_epochs` (and at the end of training) draws `num_samples` with a fixed seed,
    saves them under `<run>/samples/` and sends them to each logger that shows media.

    The fixed seed makes successive grids comparable: the same noise, a better model. The training
    RNG is left untouched. Every rank samples (a sharded model needs them all); rank zero writes.
    Image grids carry the invisible watermark unless `watermark` is false (genlab.watermark); the
    loggers get the grid as written (W&B: wandb.Image, TensorBoard: add_image), texts as a
    wandb.Table of (step, sample) rows / add_text.
    """

    def __init__(self, every_n_epochs: int = 10, num_samples: int = 64, seed: int = 0, watermark: bool = True) -> None:
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.watermark = watermark
        self._recon_batch: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._recon_batch is None and batch_idx == 0 and isinstance(batch, list | tuple):
            self._recon_batch = batch[0][: min(32, self.num_samples)].detach()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.log_samples(trainer, pl_module, f"epoch={trainer.current_epoch:03d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_samples(trainer, pl_module, "final")

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        was_training = pl_module.training
        pl_module.eval()
        with (
            full_weights(trainer),  # FSDP: whole weights on every rank while sampling (every rank samples)
            torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []),
        ):
            torch.manual_seed(self.seed)
            samples = pl_module.sample(self.num_samples)
            recon = None
            if hasattr(pl_module, "reconstruct") and self._recon_batch is not None:
                x = self._recon_batch.to(pl_module.device)
                recon = torch.stack([x, pl_module.reconstruct(x)], dim=1).flatten(0, 1)  # original, recon pairs
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(samples, torch.Tensor):
            self._log_images(trainer, "samples", samples, folder / f"samples_{tag}.png", self.watermark)
            if getattr(pl_module, "text_conditional", False):  # text-to-image: the grid's prompts, in grid order
                prompts = pl_module.default_prompts(len(samples))
                self._log_text(trainer, prompts, folder / f"prompts_{tag}.txt", key="prompts", column="prompt")
            if recon is not None:
                path = folder / f"reconstructions_{tag}.png"
                self._log_images(trainer, "reconstructions", recon, path, self.watermark)
        else:
            self._log_text(trainer, list(samples), folder / f"samples_{tag}.txt")
            self._log_scores(trainer, pl_module, list(samples), folder, f"samples_{tag}", tag == "final")

    @staticmethod
    def _log_scores(trainer, pl_module, texts: list[str], folder: Path, stem: str, final: bool) -> None:
        """A data module's domain files (`write_samples`) and scores (`score` against the validation split,
        logged as `val/<key>`: what a sweep or a checkpoint may monitor, so never the test split)."""
        datamodule = getattr(trainer, "datamodule", None)
        if hasattr(datamodule, "write_samples"):
            datamodule.write_samples(texts, folder, stem)
        if not hasattr(datamodule, "score"):
            return
        scores = {f"val/{key}": float(value) for key, value in datamodule.score(texts, split="val").items()}
        if not final:  # inside validation: logged with the module's own figures (rank zero only: no monitor under DDP)
            pl_module.log_dict(scores, rank_zero_only=True)
            return
        for logger in trainer.loggers:  # at the end of training Lightning's self.log is closed: write directly
            logger.log_metrics(scores, step=trainer.global_step)
            logger.save()

    @staticmethod
    def _log_images(trainer: L.Trainer, key: str, images: torch.Tensor, path: Path, mark: bool = True) -> None:
        images = images.float().cpu().clamp(-1, 1)
        if images.shape[-1] < 32:  # tiny images (8x8 digits): enlarge, pixels kept sharp, so a grid is legible
            images = torch.nn.functional.interpolate(images, scale_factor=-(-32 // images.shape[-1]), mode="nearest")
        nrow = max(1, int(len(images) ** 0.5)) if key == "samples" else 8
        grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1)
        watermark.save(watermark.pixels(grid), path, mark)
        pixels = watermark.load(path)  # (H, W, 3) uint8: what the file holds (the mark, enlarged when small)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # a wandb.Image per grid
                logger.log_image(key=key, images=[pixels], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, pixels, global_step=trainer.global_step, dataformats="HWC")

    @staticmethod
    def _log_text(
        trainer: L.Trainer, texts: list[str], path: Path, key: str = "samples", column: str = "sample"
    ) -> None:
        path.write_text("\n\n----------\n\n".join(texts) + "\n", encoding="utf-8")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # a wandb.Table of (step, text) rows
                logger.log_text(key=key, columns=["step", column], data=[[trainer.global_step, t] for t in texts])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(key, "\n\n".join(f"    {t}" for t in texts), trainer.global_step)


class ProgressBar(TQDMProgressBar):
    """Lightning's live bar in a terminal. When standard output is not one (`make train > run.log`,
    SLURM, CI), a plain line every `every_n_steps` optimizer steps and one after each validation
    instead: the bar's carriage-return frames make a log file unreadable (a 25 s VAE run wrote
    thousands of them). The lines go where the bar would have gone (standard output), from rank zero
    only (Lightning disables the bar on the other ranks). `refresh_rate`: the bar's redraw interval
    in batches (0: no bar); `every_n_steps`: null or 0 for no plain lines.
    """

    def __init__(
        self, refresh_rate: int = 10, every_n_steps: int | None = 50, process_position: int = 0, leave: bool = False
    ) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self.every_n_steps = every_n_steps
        self.plain = False  # decided at setup, on the stream in use then (pytest and notebooks replace it)
        self._mark, self._total = (0.0, 0), math.inf  # _mark: (time, step) of the last line

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        isatty = getattr(sys.stdout, "isatty", None)
        self.plain = not (isatty is not None and isatty())

    @property
    def is_enabled(self) -> bool:  # the tqdm bars: none when writing plain lines
        return super().is_enabled and not self.plain

    @property
    def _writes_lines(self) -> bool:
        return self.plain and self._enabled and bool(self.every_n_steps)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._mark = (time.monotonic(), trainer.global_step)
        self._total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Optimizer steps: several batches share one under gradient accumulation, and a GAN's batch makes two.
        step = trainer.global_step
        if not self._writes_lines or step // self.every_n_steps == self._mark[1] // self.every_n_steps:
            return
        total = f"/{int(self._total)}" if math.isfinite(self._total) else ""
        batches = f"/{int(self.total_train_batches)}" if math.isfinite(self.total_train_batches) else ""
        now = time.monotonic()
        seconds, steps = now - self._mark[0], step - self._mark[1]  # since the last line (validation included)
        self._mark = (now, step)
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        rate = f"  {steps / seconds:.1f} steps/s" if seconds > 0 else ""
        where = f"step {step}{total}  epoch {trainer.current_epoch} batch {batch_idx + 1}{batches}"
        self._write(where + _format(metrics) + rate)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._writes_lines and not trainer.sanity_checking and trainer.state.fn == "fit":
            metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._write(f"validation  epoch {trainer.current_epoch} step {trainer.global_step}{_format(metrics)}")

    @staticmethod
    def _write(line: str) -> None:
        sys.stdout.write(line + "\n")  # the bar's own stream; flushed, so `tail -f run.log` follows it
        sys.stdout.flush()


def _format(metrics: dict[str, Any]) -> str:
    values = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
    return "".join(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}" for k, v in sorted(values.items()))


class CPUTimeBudget(L.Callback):
    """Stops training once its training steps have used `seconds` of this process's CPU time.

    On a machine shared with other jobs wall time measures the queue, not the work: CPU time (with
    `OMP_NUM_THREADS=1`, one core's) is what equal-compute comparisons hold fixed (bench/budget.py,
    bench/compare_mnist5k.py). Only the training batches count, from `on_train_batch_start` to
    `on_train_batch_end` (forward, backward, optimizer step; a frozen first stage's encoding too):
    validation, sample grids and checkpoints differ between families and are left out. The figure
    (`used` seconds over `steps` steps) travels in every checkpoint, so a resumed run continues the
    same budget and the step time can be read back (`checkpoint["callbacks"]["CPUTimeBudget"]`).

        python -m genlab.train ... +callbacks.cpu_budget._target_=genlab.callbacks.CPUTimeBudget \
            +callbacks.cpu_budget.seconds=300

    `clock`: seconds as a float (`time.process_time`: every thread of this process; tests pass a fake).
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.process_time) -> None:
        if not seconds > 0:
            raise ConfigError(f"callbacks.cpu_budget.seconds must be > 0 (CPU seconds of training), got {seconds}")
        self.seconds, self.clock = float(seconds), clock
        self.used, self.steps = 0.0, 0
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        self.used += self.clock() - self._start
        self.steps += 1
        self._start = None
        if self.used >= self.seconds:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "used": self.used, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.used, self.steps = float(state_dict["used"]), int(state_dict["steps"])


class RunInfoInCheckpoint(L.Callback):
    """Stores the resolved config, the W&B run id and every rank's RNG states in every checkpoint: a
    checkpoint alone rebuilds its model (`genlab.load_model`), a resumed run continues the same W&B
    run, and each rank's random draws (VAE noise, dropout) continue where they stopped, so resuming
    matches an unbroken run.

    Ranks are seeded apart once the model is built (`seed` mixed with the global rank): the weights
    start equal everywhere, but the noise and dropout masks of the ranks differ, as they should.
    Each rank saves and restores its own states, and only its own device's CUDA state, so a run
    requeued on fewer GPUs per task (8 -> 1) still resumes. A rank that did not exist when the
    checkpoint was written (a larger world) is seeded afresh, with a warning.
    """

    def __init__(self, config: dict[str, Any], wandb_id: str, seed: int = 0) -> None:
        self.config, self.wandb_id, self.seed = config, wandb_id, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:  # one process: keep the plain seed (runs stay comparable with older ones)
            seed_rank(self.seed, trainer.global_rank)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = _rng_states()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)  # every rank saves (Lightning dumps on all): a collective is safe
            per_rank = gathered
        else:
            per_rank = [states]
        checkpoint["genlab"] = {"config": self.config, "wandb_id": self.wandb_id, "rng_per_rank": per_rank}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning restores before its sanity check, which it runs with the RNG isolated.
        info = checkpoint.get("genlab", {})
        per_rank = info.get("rng_per_rank") or ([info["rng"]] if "rng" in info else [])
        rank = trainer.global_rank
        if rank < len(per_rank):
            _set_rng_states(per_rank[rank])
        elif per_rank:
            rank_zero_warn(
                f"the checkpoint holds RNG states for {len(per_rank)} rank(s), this run has {trainer.world_size}: "
                "the new ranks are seeded afresh, so the run is not an exact continuation"
            )
            seed_rank(self.seed + len(per_rank), rank)


def seed_rank(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch for one rank, reproducibly and apart from the other ranks."""
    L.seed_everything(hash((seed, rank)) % 2**31, workers=True, verbose=False)  # int tuples hash the same every run


def _rng_states() -> dict[str, Any]:
    """This process's RNG states (this device's CUDA state only), as weights_only-loadable values."""
    name, keys, *rest = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype("int64")), *rest),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in states and torch.cuda.is_available():  # written by earlier genlab versions: every device
        cuda_states = states["torch.cuda"]
        if len(cuda_states) <= torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    elif "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
