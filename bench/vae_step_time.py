"""Step time of the default VAE trained through genlab vs a plain PyTorch loop doing the same math.

    python bench/vae_step_time.py [--epochs 6] [--rounds 3] [--clock wall|cpu] [config overrides ...]

Both train the same model (same init, same batches from the same DataLoader, same Adam) in one
process; rounds alternate between them so machine noise hits both alike. A step's time runs from
the start of an epoch's first batch to the end of its last, divided by its steps: data loading,
forward, backward, optimizer, and everything Lightning and genlab add per step. Validation is off
in both; epoch-boundary work (checkpoints, iterator set-up) is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from omegaconf import open_dict

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.train import train

# The timers' clock: wall time, or `time.process_time` (CPU time of this process) on a shared machine,
# where other jobs' load would otherwise land in whichever side happened to run at the time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


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
    StepTimer.per_step, StepTimer.epoch_wall = [], []
    cfg = compose([f"log_dir={log_dir}", f"trainer.max_epochs={epochs}", "trainer.limit_val_batches=0", *overrides])
    with open_dict(cfg):
        cfg.callbacks.timer = {"_target_": "__main__.StepTimer"}
        for name in drop_callbacks:  # e.g. early stopping, which watches a metric the bench turns off
            del cfg.callbacks[name]
    train(cfg)
    return statistics.median(StepTimer.per_step[1:]), statistics.median(StepTimer.epoch_wall[1:])


def plain_epochs(overrides: list[str], epochs: int) -> float:
    """The same math with no framework: the loop a careful user would write by hand."""
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    optimizer = model.configure_optimizers()
    model.train()
    per_step = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        steps = 0
        for x, _ in loader:
            if steps == 0:
                start = clock()
            recon, kl = model.loss_terms(x)
            loss = (recon + model.kl_weight() * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        per_step.append((clock() - start) / steps)
    return statistics.median(per_step[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="cpu: process CPU time (a shared machine)")
    args, overrides = parser.parse_known_args()
    global clock
    clock = CLOCKS[args.clock]
    overrides = ["model=vae", "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false", *overrides]
    plain, ours, ours_wall = [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            plain.append(plain_epochs(overrides, args.epochs))
            step, wall = genlab_epochs(overrides, args.epochs, log_dir)
            ours.append(step)
            ours_wall.append(wall)
    p, g, w = statistics.median(plain), statistics.median(ours), statistics.median(ours_wall)
    print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}  clock: {args.clock}")
    print(f"plain PyTorch loop : {p * 1e3:7.3f} ms/step")
    print(f"genlab (Lightning) : {g * 1e3:7.3f} ms/step   ratio {g / p:.3f}  (goal <= 1.10)")
    print(f"genlab, whole epoch: {w * 1e3:7.3f} ms/step   ratio {w / p:.3f}  (with checkpointing at epoch end)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
