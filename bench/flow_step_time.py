"""Step time of the default flow (Glow on the digits) trained through genlab vs a plain PyTorch loop
doing the same math.

    python bench/flow_step_time.py [--epochs 6] [--rounds 3] [--clock wall|cpu] [config overrides ...]

Both train the same model (same init, same batches from the same DataLoader, same Adam with the same
warm-up schedule and gradient clipping) in one
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

import lightning as L
import torch
import vae_step_time
from vae_step_time import CLOCKS, StepTimer, genlab_epochs  # noqa: F401  (genlab_epochs builds __main__.StepTimer)

from genlab.config import compose
from genlab.instantiate import instantiate

clock = CLOCKS["wall"]


def plain_epochs(overrides: list[str], epochs: int) -> float:
    """The same math with no framework: the loop a careful user would write by hand."""
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    optimizers = model.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    clip = cfg.trainer.gradient_clip_val
    model.train()
    per_step = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        steps = 0
        for x, _ in loader:
            if steps == 0:
                start = clock()
            loss = model.bpd(x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            schedule.step()
            steps += 1
        per_step.append((clock() - start) / steps)
    return statistics.median(per_step[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, which waiting for a core shared with other jobs "
        "does not inflate (with 1 thread, what an idle core would take)",
    )
    args, overrides = parser.parse_known_args()
    global clock
    clock = vae_step_time.clock = CLOCKS[args.clock]
    overrides = ["model=flow", "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false", *overrides]
    plain, ours, ours_wall = [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            plain.append(plain_epochs(overrides, args.epochs))
            step, wall = genlab_epochs(overrides, args.epochs, log_dir, drop_callbacks=("early_stopping",))
            ours.append(step)
            ours_wall.append(wall)
    p, g, w = statistics.median(plain), statistics.median(ours), statistics.median(ours_wall)
    print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}  clock: {args.clock}")
    print(f"plain PyTorch loop : {p * 1e3:7.3f} ms/step")
    print(f"genlab (Lightning) : {g * 1e3:7.3f} ms/step   ratio {g / p:.3f}  (goal <= 1.05)")
    print(f"genlab, whole epoch: {w * 1e3:7.3f} ms/step   ratio {w / p:.3f}  (with checkpointing at epoch end)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
