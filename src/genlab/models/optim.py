"""Optimizer parameter groups that survive sharding.

Weight decay goes on matrices (Linear and embedding weights), not on biases and norm gains (the
GPT-2/3 and nanoGPT recipe). The choice is made by parameter NAME, recorded when the net is built:
under FSDP (`use_orig_params=True`) Lightning wraps the model before `configure_optimizers`, where
every parameter is a flat 1-D shard (or empty on the ranks that do not own it), so a
`p.dim() >= 2` test selects nothing and silently turns weight decay off.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Segments that wrappers insert into parameter names: FSDP, activation checkpointing, torch.compile.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter's name as the unwrapped module calls it."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def matrix_names(module: nn.Module) -> frozenset[str]:
    """Names of `module`'s parameters with two or more dimensions; call it before any wrapping."""
    return frozenset(plain_name(name) for name, p in module.named_parameters() if p.dim() >= 2)


def weight_decay_groups(module: nn.Module, decayed: frozenset[str]) -> list[dict[str, Any]]:
    """Two groups for `module`'s parameters: the names in `decayed` (the optimizer's weight decay),
    the rest with weight_decay 0. A tied parameter appears once (named_parameters deduplicates)."""
    names = {plain_name(name): p for name, p in module.named_parameters()}
    unknown = sorted(set(decayed) - set(names))
    if unknown:
        raise ValueError(f"weight_decay_groups: no parameters named {unknown[:3]} in {type(module).__name__}")
    return [
        {"params": [p for name, p in names.items() if name in decayed]},
        {"params": [p for name, p in names.items() if name not in decayed], "weight_decay": 0.0},
    ]
