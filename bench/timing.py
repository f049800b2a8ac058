"""What the step-time benches share: the clock, genlab's side (a real `train(cfg)` with a timing
callback) and the plain PyTorch loop (the loop a careful user would write by hand), so a bench
only says what one step of its family computes.

A step's time runs from the start of an epoch's first batch to the end of its last, divided by its
steps: data loading, forward, backward, optimizer, and everything Lightning and genlab add per step.
The first epoch is warm-up; the median of the others is reported. Validation is off on both sides.
`trainer.limit_train_batches=N` (an integer) shortens every epoch on both sides alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import lightning as L
import torch
from omegaconf import open_dict

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.train import train

# The timers' clock: wall time, or `time.process_time` (CPU time of this process) on a shared machine,
# where other jobs' load would otherwise land in whichever side happened to run at the time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK_HELP = (
    "wall: elapsed time; cpu: this process's CPU time, which waiting for a core shared with other jobs "
    "does not inflate (with 1 thread, what an idle core would take)"
)
clock = CLOCKS["wall"]


def use_clock(name: str) -> None:
    global clock
    clock = CLOCKS[name]


class StepTimer(L.Callback):
    """Seconds per step of each training epoch, measured from its first batch to its last."""

    per_step: list[float] = []
    epoch_wall: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = clock()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._first = clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last, self._steps = clock(), batch_idx + 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        StepTimer.per_step.append((self._last - self._first) / self._steps)
        StepTimer.epoch_wall.append((clock() - self._epoch_start) / self._steps)


def genlab_epochs(
    overrides: list[str], epochs: int, log_dir: str, drop_callbacks: tuple[str, ...] = ()
) -> tuple[float, float]:
    """(seconds per step, seconds per step of the whole epoch incl. its end: checkpoints) through genlab."""
    StepTimer.per_step, StepTimer.epoch_wall = [], []
    cfg = compose([f"log_dir={log_dir}", f"trainer.max_epochs={epochs}", "trainer.limit_val_batches=0", *overrides])
    cfg.threads = torch.get_num_threads()  # the plain loop's count (train() would take the cores it may use)
    with open_dict(cfg):
        cfg.callbacks.timer = {"_target_": f"{__name__}.StepTimer"}
        for name in drop_callbacks:  # e.g. early stopping, which watches a metric the bench turns off
            del cfg.callbacks[name]
    train(cfg)
    return statistics.median(StepTimer.per_step[1:]), statistics.median(StepTimer.epoch_wall[1:])


def plain_epochs(
    overrides: list[str],
    epochs: int,
    loss_of: Callable[[L.LightningModule, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[L.LightningModule], None] | None = None,
    step_of: Callable[[L.LightningModule, list[torch.optim.Optimizer], torch.Tensor, torch.Tensor], None] | None = None,
) -> float:
    """Seconds per step of the same math with no framework: the family's own model, data and optimizer
    (and LR schedule, and gradient clipping at the trainer's gradient_clip_val, as Lightning applies
    them); `loss_of(model, x, y)` is the family's training loss, `after_step(model)` e.g. an EMA update.
    `step_of(model, optimizers, x, y)` instead does a whole step by hand (several optimizers, as a
    discriminator's)."""
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    configured = model.configure_optimizers()
    optimizers = configured if isinstance(configured, (list, tuple)) else None
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    schedule = configured.get("lr_scheduler", {}).get("scheduler") if isinstance(configured, dict) else None
    parameters = [p for group in optimizer.param_groups for p in group["params"]] if optimizers is None else []
    clip = cfg.trainer.get("gradient_clip_val")
    limit = cfg.trainer.get("limit_train_batches")
    limit = limit if isinstance(limit, int) and limit > 0 else None  # a fraction or 1.0: the whole epoch
    model.train()
    per_step = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        steps = 0
        for x, y in loader:
            if steps == limit:
                break
            if steps == 0:
                start = clock()
            if step_of is not None:
                step_of(model, optimizers or [optimizer], x, y)
                steps += 1
                continue
            loss = loss_of(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(parameters, clip)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if after_step is not None:
                after_step(model)
            steps += 1
        per_step.append((clock() - start) / steps)
    return statistics.median(per_step[1:])


def report(overrides: list[str], clock_name: str, plain: list[float], ours: list[float], whole: list[float], goal: str):
    """The three lines every bench prints: medians over rounds and their ratios."""
    p, g = statistics.median(plain), statistics.median(ours)
    print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}  clock: {clock_name}")
    print(f"plain PyTorch loop : {p * 1e3:7.3f} ms/step")
    print(f"genlab (Lightning) : {g * 1e3:7.3f} ms/step   ratio {g / p:.3f}  (goal <= {goal})")
    if whole:
        w = statistics.median(whole)
        print(f"genlab, whole epoch: {w * 1e3:7.3f} ms/step   ratio {w / p:.3f}  (with checkpointing at epoch end)")
