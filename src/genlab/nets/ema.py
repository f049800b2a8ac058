"""An exponential moving average of a net's weights (Polyak averaging), the one EMA every family uses.

    shadow <- decay * shadow + (1 - decay) * online        after each optimizer step

Diffusion and GAN generators sample from the EMA weights (Ho et al. 2020 use decay 0.9999; Karras
et al. 2018 a half-life of 10k images for G). Until `start_step` updates the shadow just copies the
online weights, so an early sample is not an average of random initialisations. With `warmup`
the decay grows as min(decay, (1 + n) / (10 + n)) over the n-th update (TensorFlow's
`ExponentialMovingAverage(num_updates=...)`), so a short run's shadow is not mostly its init.

Why not Lightning's `EMAWeightAveraging`: it averages the whole LightningModule (a GAN's
discriminator and frozen feature nets too), swaps the EMA weights in only for validation (samples
drawn elsewhere see the raw ones), keeps the raw weights in a separate checkpoint slot (a resume
without the same callback silently continues from the EMA weights) and refuses sharded models
(see FIELD_NOTES §1). As a submodule, the shadow is simply part of the model's `state_dict`: in
every checkpoint, restored exactly on resume, loaded by `load_model` and `load_from_checkpoint`, and
exportable alone (`ema.shadow.state_dict()`).

Give the optimizer the online net's parameters only (`self.net.parameters()`): the shadow's have
`requires_grad=False` and are never trained.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, net: nn.Module, decay: float = 0.999, start_step: int = 0, warmup: bool = False) -> None:
        """`decay` in [0, 1): the shadow's half-life is ln(0.5) / ln(decay) updates (0.999: ~693).
        `start_step`: updates before this one copy the online weights instead of averaging.
        `warmup`: ramp the decay up from 0.1 (see above) after `start_step`."""
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.start_step, self.warmup = decay, start_step, warmup
        self.shadow = copy.deepcopy(net).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def decay_for_half_life(updates: float) -> float:
        """The decay whose shadow forgets half of an old weight in `updates` updates: 0.5 ** (1 / updates).
        A half-life is easier to choose than a decay (Karras et al. 2018 give G's in images: divide
        by the batch size to get updates)."""
        if updates <= 0:
            raise ValueError(f"EMA half-life must be positive, got {updates}")
        return 0.5 ** (1.0 / updates)

    def train(self, mode: bool = True) -> EMA:
        # The shadow only ever runs for sampling: keep it in eval mode (no dropout) whatever the parent does.
        super().train(mode)
        self.shadow.eval()
        return self

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the shadow towards `net` (the same architecture); float buffers are copied as they are."""
        n = int(self.num_updates) - self.start_step  # averaging updates done so far
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        weight = 1.0 if n < 0 else 1.0 - decay
        shadow = [p for p in self.shadow.parameters()]
        online = [p.detach() for p in net.parameters()]
        if len(shadow) != len(online):
            raise ValueError("EMA.update: the net is not the one this EMA was made from")
        torch._foreach_lerp_(shadow, online, weight)  # one fused op over every tensor: s += w (o - s)
        for mine, theirs in zip(self.shadow.buffers(), net.buffers(), strict=True):
            mine.copy_(theirs)  # BatchNorm statistics and the like: not averaged, as in timm's ModelEmaV2
        self.num_updates += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.shadow(*args, **kwargs)
