"""Anomaly scores of images under a trained family: higher means less like the training data.

A family offers a score by declaring a method on its module, next to its likelihood or loss:

    def anomaly_score(self, x: Tensor, k: int = 16, seed: int = 0) -> Tensor:   # (B,) for x (B, C, H, W)
        '''short name: what the score is (the apps' reports print this first paragraph)'''

`k` draws per image where the score is random, made from `seed` and shared by every image, so a
score does not depend on the batch the image sits in. A configuration that cannot score (a
conditional GAN) raises a ConfigError naming its key. The shipped ones: `FlowModule` (exact NLL),
`VAEModule` (IWAE bound on the NLL), `DiffusionModule` (denoising error, diffusion and flow
matching), `GANModule` (-D(x)). A family without the method has no score: the apps refuse it by
name before any work, and nothing here lists families.
"""

from __future__ import annotations

import inspect

import torch

from genlab.errors import ConfigError, GenlabError

BATCH = 256


def has_score(module_class: type) -> bool:
    """Whether a family's module class declares `anomaly_score`."""
    return callable(getattr(module_class, "anomaly_score", None))


def method(model: torch.nn.Module) -> tuple[str, str]:
    """(short name, description) of the family's score, from its `anomaly_score` docstring's first
    paragraph (`short name: ...`); a one-line error naming the class for families without one."""
    cls = type(model)
    if not has_score(cls):
        raise ConfigError(f"model: {cls.__name__} has no anomaly score (its module declares no anomaly_score method)")
    first = " ".join((inspect.getdoc(cls.anomaly_score) or "").split("\n\n")[0].split())
    name, colon, _ = first.partition(":")
    return (name if colon else cls.__name__), (first or f"{cls.__name__}.anomaly_score")


@torch.no_grad()
def anomaly_scores(model: torch.nn.Module, images: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
    """Scores `(N,)` of `images` `(N, C, H, W)` in [-1, 1] by the family's `anomaly_score`, in batches,
    seeded (also for a family that draws from the global RNG, which is restored afterwards)."""
    method(model)  # a one-line error for families without a score
    model.eval()
    out = []
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in images.split(BATCH):
            score = model.anomaly_score(x.to(model.device), k, seed)
            if tuple(score.shape) != (len(x),):
                raise GenlabError(
                    f"{type(model).__name__}.anomaly_score returned shape {tuple(score.shape)} for {len(x)} "
                    "images: it must give one score per image"
                )
            out.append(score.float().cpu())
    return torch.cat(out)
