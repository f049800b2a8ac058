"""Training step time of the diffusion family through genlab vs a plain PyTorch loop, and sampling
throughput per sampler and step count.

    python bench/diffusion_step_time.py [--epochs 4] [--rounds 3] [--model diffusion|flow_matching]
        [--net unet|dit] [--latent [--first-stage RUN]] [--clock wall|cpu]
        [--checkpoint last.ckpt] [--samplers ddim:10,ddim:50,ddpm:1000] [--n 256] [config overrides ...]

`--net dit`: experiment=<model>_dit (the DiT denoiser on the 8x8 digits). `--latent`:
experiment=latent_<model> (a UNet on the 7x7x4 latents of a frozen autoencoder, data=mnist5k): the
frozen encoder's `encode(x) * scale_factor` runs in every step on both sides. `--first-stage` names
the autoencoder run or .ckpt; without it a default autoencoder is trained 2 steps on data=mnist5k
into the temp folder (its weights do not change the arithmetic).
Beside the ratio the bench prints the training FLOPs per step (genlab.flops: 3 x the denoiser's
forward, plus the frozen encoder's forward once) and the FLOP/s each side achieved.

Training: both sides train the same model (same init, same batches from the same DataLoader, same
Adam, gradient clipping at the family's gradient_clip_val and the EMA update) in one process;
rounds alternate between them so machine noise hits both alike. A step's time runs from the start
of an epoch's first batch to the end of its last, divided by its steps; validation is off in both.
Sampling: `n` images per call from the checkpoint's EMA weights (or the untrained config: the
arithmetic is the same), with the model's guidance (which doubles the batch when != 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timing
import torch

from genlab import load_model
from genlab.config import compose
from genlab.flops import forward_flops
from genlab.instantiate import instantiate
from genlab.train import main as train_main


def diffusion_loss(model, x, y):
    return model.loss(model.net, model.to_latent(x), y).mean()  # to_latent: identity without a first stage


def train_flops(overrides: list[str]) -> int:
    """FLOPs of one training step on a full batch: 3 x the loss's forward (the denoiser's matmuls,
    convolutions and attention) + the frozen first stage's encode (forward only)."""
    cfg = compose(overrides)
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    data = cfg.data
    x = torch.rand(data.batch_size, data.channels, data.image_size, data.image_size) * 2 - 1
    y = torch.randint(data.num_classes, (data.batch_size,))
    encode = forward_flops(model.to_latent, x) if model.first_stage is not None else 0
    return 3 * forward_flops(model.loss, model.net, model.to_latent(x), y) + encode


def tiny_first_stage(folder: str) -> str:
    """A default autoencoder on data=mnist5k trained 2 steps (only its shapes matter here): its run folder."""
    quiet = ["callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false", "logger=csv"]
    argv = [f"log_dir={folder}", "run_name=first_stage", "model=autoencoder", "data=mnist5k", *quiet]
    if train_main([*argv, "trainer.max_steps=2", "trainer.limit_val_batches=0"]) != 0:
        raise SystemExit("training the autoencoder for --latent failed; give one with --first-stage RUN")
    return str(Path(folder) / "autoencoder" / "first_stage")


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
    parser.add_argument("--net", default="unet", choices=["unet", "dit"], help="dit: experiment=<model>_dit")
    parser.add_argument("--latent", action="store_true", help="experiment=latent_<model> on a frozen autoencoder")
    parser.add_argument("--first-stage", default=None, help="the autoencoder run or .ckpt for --latent")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each; 0: sampling only")
    parser.add_argument("--clock", choices=tuple(timing.CLOCKS), default="wall", help=timing.CLOCK_HELP)
    parser.add_argument("--checkpoint", default=None, help="sample from this checkpoint's EMA weights")
    parser.add_argument("--samplers", default=None, help="name:steps,... (default: the family's usual ones)")
    parser.add_argument("--n", type=int, default=256, help="images per sampling call; 0: no sampling")
    args, overrides = parser.parse_known_args()
    args.latent = args.latent or args.first_stage is not None
    if args.latent and args.net == "dit":
        raise SystemExit("--latent runs experiment=latent_<model> (a UNet); --net dit the pixel DiT: choose one")
    timing.use_clock(args.clock)
    quiet = ["callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false"]
    family = [f"model={args.model}"]  # an experiment file names its model itself
    if args.net == "dit":
        family = [f"experiment={args.model}_dit"]
    with tempfile.TemporaryDirectory() as log_dir:
        if args.latent:
            family = [
                f"experiment=latent_{args.model}",
                f"model.first_stage={args.first_stage or tiny_first_stage(log_dir)}",
            ]
        overrides = [*family, *quiet, *overrides]
        if args.rounds:
            plain, ours = [], []
            for _ in range(args.rounds):
                plain.append(timing.plain_epochs(overrides, args.epochs, diffusion_loss, after_step=ema_update))
                ours.append(timing.genlab_epochs(overrides, args.epochs, log_dir)[0])
            timing.report(overrides, args.clock, plain, ours, [], goal="1.05")
            flops = train_flops(overrides)
            p, g = statistics.median(plain), statistics.median(ours)
            print(
                f"train FLOPs per step: {flops / 1e9:.3f} GFLOP (3 x forward); achieved: plain {flops / p / 1e9:.2f}, "
                f"genlab {flops / g / 1e9:.2f} GFLOP/s ({args.clock} clock)"
            )
        if not args.n:
            return
        if not args.rounds:
            print(f"config: {' '.join(overrides)}  threads: {torch.get_num_threads()}")
        default = "ddim:10,ddim:50,ddpm:1000" if args.model == "diffusion" else "euler:20,euler:50,heun:20,heun:50"
        model = load_model(args.checkpoint) if args.checkpoint else instantiate(compose(overrides).model)
        sampling(model, (args.samplers or default).split(","), args.n)


if __name__ == "__main__":
    main()
