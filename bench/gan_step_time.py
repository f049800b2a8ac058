"""Step time of the default GAN trained through genlab vs a plain PyTorch loop doing the same updates.

    python bench/gan_step_time.py [--epochs 6] [--rounds 3] [config overrides ...]

Both train the same nets (same init, same batches from the same DataLoader, same Adams) in one
process; rounds alternate between them so machine noise hits both alike. Per batch both do what
`GANModule.training_step` does with the default config: G makes the fakes, one D step on real and
fake (DiffAugment on both), one G step on the same fakes, the EMA update. A step's time runs from
the start of an epoch's first batch to the end of its last, divided by its batches (one D and one
G update each): data loading, both updates, everything Lightning and genlab add (two
LightningOptimizer steps, toggling, logging, the NaN guard's checks). Validation is off in both;
epoch-boundary work (checkpoints) is reported separately.

On a shared machine, wall time swings with the other jobs; the CPU time of this process (torch on
one thread: `OMP_NUM_THREADS=1`) does not, so both are printed.
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


class StepTimer(L.Callback):
    """Seconds per batch of each training epoch, measured from its first batch to its last."""

    per_step: list[float] = []
    per_step_cpu: list[float] = []
    epoch_wall: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._first, self._first_cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last, self._last_cpu, self._steps = time.perf_counter(), time.process_time(), batch_idx + 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        StepTimer.per_step.append((self._last - self._first) / self._steps)
        StepTimer.per_step_cpu.append((self._last_cpu - self._first_cpu) / self._steps)
        StepTimer.epoch_wall.append((time.perf_counter() - self._epoch_start) / self._steps)


def genlab_epochs(overrides: list[str], epochs: int, log_dir: str) -> tuple[float, float, float]:
    StepTimer.per_step, StepTimer.per_step_cpu, StepTimer.epoch_wall = [], [], []
    cfg = compose([f"log_dir={log_dir}", f"trainer.max_epochs={epochs}", "trainer.limit_val_batches=0", *overrides])
    cfg.threads = torch.get_num_threads()  # the plain loop's count (train() would take the cores it may use)
    with open_dict(cfg):
        cfg.callbacks.timer = {"_target_": f"{__name__}.StepTimer"}
    train(cfg)
    median = statistics.median
    return median(StepTimer.per_step[1:]), median(StepTimer.per_step_cpu[1:]), median(StepTimer.epoch_wall[1:])


def plain_epochs(overrides: list[str], epochs: int) -> tuple[float, float]:
    """The same math with no framework: the loop a careful user would write by hand."""
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    if model.hparams.n_critic != 1 or model.hparams.gp_weight or model.hparams.r1_gamma or model.hparams.conditional:
        raise SystemExit("the plain loop mirrors the default config only (n_critic=1, no penalties, unconditional)")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    G, D, augment, loss, ema = model.generator, model.discriminator, model.augment, model.loss, model.generator_ema
    opt_d, opt_g = model.configure_optimizers()
    model.train()
    per_step, per_step_cpu = [], []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        steps = 0
        for real, _ in loader:
            if steps == 0:
                start, start_cpu = time.perf_counter(), time.process_time()
            fake = G(torch.randn(real.shape[0], model.hparams.latent_dim))
            d_real, d_fake = D(augment(torch.cat([real, fake.detach()]))).chunk(2)
            d_loss = loss.discriminator(d_real, d_fake)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            D.requires_grad_(False)  # no weight gradients for D in G's backward
            g_loss = loss.generator(D(augment(fake)))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
            ema.update(G)
            steps += 1
        per_step.append((time.perf_counter() - start) / steps)
        per_step_cpu.append((time.process_time() - start_cpu) / steps)
    return statistics.median(per_step[1:]), statistics.median(per_step_cpu[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    args, overrides = parser.parse_known_args()
    overrides = ["model=gan", "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false", *overrides]
    plain, plain_cpu, ours, ours_cpu, ours_wall = [], [], [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            wall, cpu = plain_epochs(overrides, args.epochs)
            plain.append(wall)
            plain_cpu.append(cpu)
            step, cpu, whole = genlab_epochs(overrides, args.epochs, log_dir)
            ours.append(step)
            ours_cpu.append(cpu)
            ours_wall.append(whole)
    p, g, w = statistics.median(plain), statistics.median(ours), statistics.median(ours_wall)
    pc, gc = statistics.median(plain_cpu), statistics.median(ours_cpu)
    print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {p * 1e3:7.3f} ms/step wall, {pc * 1e3:7.3f} ms/step CPU (one D and one G update)")
    print(
        f"genlab (Lightning) : {g * 1e3:7.3f} ms/step wall, {gc * 1e3:7.3f} ms/step CPU   "
        f"ratio wall {g / p:.3f}, CPU {gc / pc:.3f}  (goal <= 1.05)"
    )
    print(f"genlab, whole epoch: {w * 1e3:7.3f} ms/step wall   ratio {w / p:.3f}  (with checkpointing at epoch end)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
