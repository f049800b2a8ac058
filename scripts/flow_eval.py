"""Held-out figures of a trained flow run on its data's test split, next to simple baselines.

    python scripts/flow_eval.py logs/flow/<run> [--iw 64] [--samples 1000] [--picture docs/flow_samples.png]

Prints, on the test split (never used for training or early stopping):
- test bits/dim of the best checkpoint (on val/bpd), by the project's convention: one dequantization draw
  (the usual bound) and the mean over `--iw` draws (a tighter estimate of -log2 P(x) / dims);
- the same for two baselines on the same split: uniform over the levels, log2(levels), and an
  independent per-pixel categorical fitted on the training split (add-one counts);
- memorisation: for `--samples` samples, the distance to the nearest training image, next to the
  same distance for real test images (a model that copies its training set has many samples much
  closer to a training image than real unseen digits are).
- with genlab.metrics present (the digits classifier), the FID of the samples against the test split.
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
from genlab.models.likelihoods import bits_per_dim, level_index


def split_tensor(datamodule, split: str) -> torch.Tensor:
    part = datamodule.splits[split]
    return part[list(range(len(part)))][0]  # in-memory image sets return a whole batch for a list of indices


def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each image of `a`, the L2 distance (in [-1, 1] units) to its nearest image of `b`."""
    return torch.cdist(a.flatten(1), b.flatten(1)).min(1).values


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
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=None, help="default: the model's sample_temperature")
    parser.add_argument("--picture", type=Path, default=None, help="save 64 samples as a PNG grid here")
    args = parser.parse_args()
    torch.manual_seed(0)

    (best,) = sorted((args.run / "checkpoints").glob("best-*.ckpt"))
    model = load_model(best)
    cfg = OmegaConf.load(args.run / "config.yaml")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    train, test = split_tensor(datamodule, "train"), split_tensor(datamodule, "test")
    levels, dims = model.hparams.levels, test[0].numel()

    with torch.no_grad():
        noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
        one_draw = model.bpd(test, noise).mean().item()
        iw = bits_per_dim(-model.log_prob(test, samples=args.iw), dims).mean().item()
        samples = model.sample(args.samples, temperature=args.temperature)
    print(f"run: {args.run}  best checkpoint: {best.name}  test images: {len(test)}")
    print(f"test bits/dim, 1 dequantization draw : {one_draw:.3f}")
    print(f"test bits/dim, mean of {args.iw} draws     : {iw:.3f}")
    print(f"per-pixel categorical (train counts) : {categorical_bpd(train, test, levels):.3f}")
    print(f"uniform over {levels} levels          : {math.log2(levels):.3f}")

    sample_nn, test_nn = nearest_distance(samples, train), nearest_distance(test, train)
    copies = (sample_nn < 1e-6).float().mean().item()
    print(
        f"nearest training image, L2 in [-1, 1] units: samples median {sample_nn.median():.2f} "
        f"(5th pct {sample_nn.quantile(0.05):.2f}), real test digits median {test_nn.median():.2f} "
        f"(5th pct {test_nn.quantile(0.05):.2f}); exact copies {copies:.1%}"
    )
    try:  # the project's sample metrics: FID etc. in the digits classifier's feature space
        from genlab.metrics import image_metrics, make_features
    except ImportError:
        print("FID: genlab.metrics is not on this branch yet")
    else:
        scores = image_metrics(samples, train, test, features=make_features(datamodule), seed=0)
        keys = ("fid", "kid", "precision", "recall", "density", "coverage", "nn_dist_ratio", "near_copies")
        print(f"genlab.metrics at N={scores['n']}: " + ", ".join(f"{k} {scores[k]:.3g}" for k in keys if k in scores))
        real = ", ".join(f"{k} {scores['real_test/' + k]:.3g}" for k in keys if f"real_test/{k}" in scores)
        print(f"  real test digits (the floor at their N): {real}")

    if args.picture:
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        grid = torch.nn.functional.interpolate(samples[:64], scale_factor=4, mode="nearest")
        save_image(make_grid(grid, nrow=8, normalize=True, value_range=(-1, 1), pad_value=1), args.picture)
        print(f"samples: {args.picture}")


if __name__ == "__main__":
    main()
