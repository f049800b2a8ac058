"""Held-out bits/dim of a trained flow run on its data's test split, next to simple baselines.

    python scripts/flow_eval.py logs/flow/<run> [--iw 64] [--picture docs/flow_samples.png]

Prints, on the test split (never used for training or early stopping), by the project's convention:
- test bits/dim of the best checkpoint (on val/bpd): one dequantization draw (the usual bound) and
  the mean over `--iw` draws (a tighter estimate of -log2 P(x) / dims);
- two baselines on the same split: uniform over the levels, log2(levels), and an independent
  per-pixel categorical fitted on the training split (add-one counts).
FID, precision/recall and memorisation of the samples: `make eval RUN=<best .ckpt>` (genlab.evaluate).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import make_grid, save_image

from genlab import load_model
from genlab.instantiate import instantiate
from genlab.metrics import split_tensors
from genlab.models.likelihoods import bits_per_dim, level_index


def categorical_bpd(train: torch.Tensor, test: torch.Tensor, levels: int) -> float:
    """Independent per-pixel categorical over the levels, add-one smoothed counts from `train`."""
    k_train, k_test = level_index(train, levels).long().flatten(1), level_index(test, levels).long().flatten(1)
    counts = torch.ones(k_train.shape[1], levels)  # (dims, levels)
    counts.scatter_add_(1, k_train.T, torch.ones_like(k_train.T, dtype=torch.float))
    log_p = (counts / counts.sum(1, keepdim=True)).log()
    nll = -log_p.gather(1, k_test.T).sum(0)  # (N,)
    return bits_per_dim(nll, k_test.shape[1]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--iw", type=int, default=64, help="dequantization draws for the tighter estimate")
    parser.add_argument("--temperature", type=float, default=None, help="default: the model's sample_temperature")
    parser.add_argument("--picture", type=Path, default=None, help="save 64 samples as a PNG grid here")
    args = parser.parse_args()
    torch.manual_seed(0)

    (best,) = sorted((args.run / "checkpoints").glob("best-*.ckpt"))
    model = load_model(best)
    cfg = OmegaConf.load(args.run / "config.yaml")
    datamodule = instantiate(cfg.data)
    train, test = split_tensors(datamodule, "train")[0], split_tensors(datamodule, "test")[0]
    levels, dims = model.hparams.levels, test[0].numel()

    with torch.no_grad():
        noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
        one_draw = model.bpd(test, noise).mean().item()
        iw = bits_per_dim(-model.log_prob(test, samples=args.iw), dims).mean().item()
        samples = model.sample(64, temperature=args.temperature)
    print(f"run: {args.run}  best checkpoint: {best.name}  test images: {len(test)}")
    print(f"test bits/dim, 1 dequantization draw : {one_draw:.3f}")
    print(f"test bits/dim, mean of {args.iw} draws     : {iw:.3f}")
    print(f"per-pixel categorical (train counts) : {categorical_bpd(train, test, levels):.3f}")
    print(f"uniform over {levels} levels          : {math.log2(levels):.3f}")

    if args.picture:
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        grid = torch.nn.functional.interpolate(samples, scale_factor=4, mode="nearest")
        save_image(make_grid(grid, nrow=8, normalize=True, value_range=(-1, 1), pad_value=1), args.picture)
        print(f"samples: {args.picture}")


if __name__ == "__main__":
    main()
