"""Differentiable augmentation for GANs on small data sets (DiffAugment: Zhao et al. 2020,
arXiv:2006.10738, sec. 3).

A discriminator trained on 1,797 digits memorises them and its gradients stop being useful to G.
Augmenting only the real images would teach G to make augmented images; DiffAugment instead
applies the same random transforms to real AND fake images, in both the D and the G step, and
every transform is differentiable in the image so G's gradient flows through it.

Transforms (each per example, fresh randomness per call), for images in [-1, 1]:
- `color`: brightness + U(-0.5, 0.5), saturation x U(0, 2) around the channel mean, contrast
  x U(0.5, 1.5) around the image mean (as in the paper; saturation does nothing to grey images).
- `translation`: shift by up to `translation_ratio` of the size in each direction, filled with -1
  (the background of these images; the paper fills with 0).
- `cutout`: one square of `cutout_ratio` of the size at a random place set to 0 (as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

POLICIES = ("color", "translation", "cutout")


class DiffAugment(nn.Module):
    """Images `(B, C, H, W)` -> augmented images of the same shape; identity in eval mode."""

    def __init__(
        self,
        policy: list[str] | tuple[str, ...] = POLICIES,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"DiffAugment policy: unknown {unknown}; use some of {', '.join(POLICIES)}")
        self.policy, self.translation_ratio, self.cutout_ratio = list(policy), translation_ratio, cutout_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        for name in self.policy:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def color(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean

    def translation(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        sy, sx = int(h * self.translation_ratio + 0.5), int(w * self.translation_ratio + 0.5)
        if sy == 0 and sx == 0:
            return x
        dy = torch.randint(-sy, sy + 1, (b, 1), device=x.device)
        dx = torch.randint(-sx, sx + 1, (b, 1), device=x.device)
        padded = nn.functional.pad(x, (sx, sx, sy, sy), value=-1.0)  # (B, C, H + 2sy, W + 2sx)
        rows = torch.arange(h, device=x.device) + sy - dy  # (B, H): source row of each output row
        cols = torch.arange(w, device=x.device) + sx - dx  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ch, cw = int(h * self.cutout_ratio + 0.5), int(w * self.cutout_ratio + 0.5)
        if ch == 0 or cw == 0:
            return x
        # The square's top-left corner, so that its centre falls anywhere in the image (as the paper).
        top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
        left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (B, H, W)
        return x * (~inside).unsqueeze(1).to(x.dtype)
