"""The seeded sampling loop every caller shares: `make sample`, `make eval`, the apps, `results`, and
the `SampleMetrics` callback (a metric may import this, never the `genlab.sample` command).

    samples = draw(model, n, seed, labels)   # (n, C, H, W) on the CPU, or a list of texts

It relies only on the family contract: `sample(n, labels=..., steps=..., ...)`, and a `conditional`
attribute on families that can be either (diffusion, GAN).
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch

from genlab.errors import ConfigError

BATCH_SIZE = 500  # samples drawn at once: part of what a seed reproduces


def accepts(method: Any) -> set[str]:
    return set(inspect.signature(method).parameters)


def num_classes(model: L.LightningModule, config: dict[str, Any]) -> int:
    return int(model.hparams.get("num_classes") or config.get("data", {}).get("num_classes") or 0)


def is_conditional(model: L.LightningModule) -> bool:
    """Does the model draw for given labels? Its `sample()` takes `labels` and, when the family can be
    either (diffusion, GAN), its `conditional` attribute says which this model is."""
    return "labels" in accepts(model.sample) and bool(getattr(model, "conditional", True))


def class_labels(n: int, classes: int, label: int | None) -> torch.Tensor:
    """`label` for every sample, or the classes in turn (0, 1, ..., 0, 1, ...)."""
    if label is not None:
        if not 0 <= label < classes:
            raise ConfigError(f"label: {label} is not one of this model's classes 0..{classes - 1}")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % classes


def check_options(method: Any, family: str, options: dict[str, Any]) -> None:
    """A one-line error naming an option `method` does not take, and what it does take."""
    taken = accepts(method)
    for name in options:
        if name not in taken:
            offered = ", ".join(p for p in taken if p != "self") or "nothing"
            raise ConfigError(
                f"{name}: the {family} family's {method.__name__}() does not take it (it takes: {offered})"
            )


@torch.no_grad()
def draw(
    model: L.LightningModule,
    n: int,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    batch_size: int = BATCH_SIZE,
    prompts: list[str] | None = None,
    **options: Any,
) -> torch.Tensor | list[str]:
    """`n` samples from one RNG stream seeded with `seed`, `batch_size` at a time. `labels` `(n,)`
    for conditional families, `prompts` (n texts) for text-to-image ones; `options` (steps, guidance,
    temperature) only those `sample` takes."""
    if n < 1:
        raise ConfigError(f"n: the number of samples must be at least 1, got {n}")
    family = type(model).__name__.removesuffix("Module").lower()
    options = {k: v for k, v in options.items() if v is not None}
    if labels is not None:
        options["labels"] = labels
    if prompts is not None:
        options["prompts"] = prompts
    check_options(model.sample, family, options)
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's RNG (a training run's) is left as it was
        torch.manual_seed(seed)
        parts = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            part_options = dict(options)
            if labels is not None:
                part_options["labels"] = labels[start : start + size].to(model.device)
            if prompts is not None:
                part_options["prompts"] = list(prompts[start : start + size])
            parts.append(model.sample(size, **part_options))
    model.train(was_training)
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts).float().cpu()
    return [text for part in parts for text in part]
