"""Training step time of the diffusion family through genlab vs a plain PyTorch loop, and sampling
throughput per sampler and step count.

    python bench/diffusion_step_time.py [--epochs 4] [--rounds 3] [--model diffusion|flow_matching]
        [--checkpoint last.ckpt] [--samplers ddim:10,ddim:50,ddpm:1000] [--n 256] [config overrides ...]

Training: both sides train the same model (same init, same batches from the same DataLoader, same
Adam, gradient clipping at the family's gradient_clip_val and the EMA update) in one process;
rounds alternate between them so machine noise hits both alike. A step's time runs from the start
of an epoch's first batch to the end of its last, divided by its steps; validation is off in both.
Sampling: `n` images per call from the checkpoint's EMA weights (or the untrained config: the
arithmetic is the same), with the model's guidance (which doubles the batch when != 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import timing
import torch

from genlab import load_model
from genlab.config import compose
from genlab.instantiate import instantiate


def diffusion_loss(model, x, y):
    return model.loss(model.net, x, y).mean()


def ema_update(model):
    model.ema.update(model.net)


def sampling(model, samplers: list[str], n: int) -> None:
    model.eval()
    for spec in samplers:
        name, steps = spec.split(":")
        model.sample(min(n, 8), steps=2 if name != "ddpm" else None, sampler=name)  # warm-up
        start = time.perf_counter()
        torch.manual_seed(0)
        model.sample(n, steps=int(steps), sampler=name)
        wall = time.perf_counter() - start
        print(f"sample {name:5s} {int(steps):5d} steps: {n / wall:8.1f} images/s  ({wall:.1f} s for {n})")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="diffusion", choices=["diffusion", "flow_matching"])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each; 0: sampling only")
    parser.add_argument("--checkpoint", default=None, help="sample from this checkpoint's EMA weights")
    parser.add_argument("--samplers", default=None, help="name:steps,... (default: the family's usual ones)")
    parser.add_argument("--n", type=int, default=256, help="images per sampling call; 0: no sampling")
    args, overrides = parser.parse_known_args()
    quiet = ["callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false"]
    overrides = [f"model={args.model}", *quiet, *overrides]
    if args.rounds:
        plain, ours = [], []
        with tempfile.TemporaryDirectory() as log_dir:
            for _ in range(args.rounds):
                plain.append(timing.plain_epochs(overrides, args.epochs, diffusion_loss, after_step=ema_update))
                ours.append(timing.genlab_epochs(overrides, args.epochs, log_dir)[0])
        timing.report(overrides, "wall", plain, ours, [], goal="1.05")
    if not args.n:
        return
    if not args.rounds:
        print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}")
    default = "ddim:10,ddim:50,ddpm:1000" if args.model == "diffusion" else "euler:20,euler:50,heun:20,heun:50"
    model = load_model(args.checkpoint) if args.checkpoint else instantiate(compose(overrides).model)
    sampling(model, (args.samplers or default).split(","), args.n)


if __name__ == "__main__":
    main()
