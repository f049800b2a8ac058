"""Step time of the default VAE trained through genlab vs a plain PyTorch loop doing the same math.

    python bench/vae_step_time.py [--epochs 6] [--rounds 3] [--clock wall|cpu] [config overrides ...]

Both train the same model (same init, same batches from the same DataLoader, same Adam) in one
process; rounds alternate between them so machine noise hits both alike. How a step is timed:
bench/timing.py. Epoch-boundary work (checkpoints, iterator set-up) is reported separately.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import timing


def vae_loss(model, x, y):
    recon, kl = model.loss_terms(x)
    return (recon + model.kl_weight() * kl).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--clock", choices=tuple(timing.CLOCKS), default="wall", help=timing.CLOCK_HELP)
    args, overrides = parser.parse_known_args()
    timing.use_clock(args.clock)
    overrides = ["model=vae", "callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false", *overrides]
    plain, ours, whole = [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            plain.append(timing.plain_epochs(overrides, args.epochs, vae_loss))
            step, epoch = timing.genlab_epochs(overrides, args.epochs, log_dir)
            ours.append(step)
            whole.append(epoch)
    timing.report(overrides, args.clock, plain, ours, whole, goal="1.10")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
