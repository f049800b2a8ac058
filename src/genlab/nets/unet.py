"""UNet denoiser for diffusion and flow matching (Ho et al. 2020, arXiv:2006.11239, App. B; the
ADM refinements of Dhariwal & Nichol 2021, arXiv:2105.05233: scale-shift time conditioning,
attention at low resolution, zero-initialised output).

    x (B, C, H, W), t (B,) -> same shape as x (the noise, velocity, v or x0 the process asks for)

The time `t` is embedded with sinusoids and an MLP; an optional conditioning embedder (a label
table today, any `(B, emb_dim)` embedder later) is added to that embedding. Each resolution level
has `num_res_blocks` residual blocks; levels halve the resolution; self-attention runs at the
resolutions listed in `attention_resolutions` and in the middle. Sized for 8x8 digits by default,
28x28/32x32 by config (more `channel_mults` levels and attention at 7/8 and below).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nets.conditioning import CrossAttention, TokenCondition, embed


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of `t` `(B,)` -> `(B, dim)` (Vaswani et al. 2017 §3.5, as used by Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)  # batch-size independent, no DDP sync


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, the embedding as a per-channel scale and shift (ADM's
    "AdaGN", Dhariwal & Nichol 2021 §3), a 1x1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable from step 0
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"UNet: num_heads {num_heads} must divide the width {channels}")
        self.num_heads = num_heads
        self.norm, self.qkv = _norm(channels, groups), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, nh, HW, hs) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class SpatialCrossAttention(nn.Module):
    """Cross-attention from the H*W positions to the text tokens, residual (Stable Diffusion's
    SpatialTransformer, reduced to its cross-attention: the self-attention is the layer before it)."""

    def __init__(self, channels: int, token_dim: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.norm, self.attn = _norm(channels, groups), CrossAttention(channels, token_dim, num_heads)

    def forward(self, x: torch.Tensor, condition: TokenCondition) -> torch.Tensor:
        b, c, h, w = x.shape
        out = self.attn(self.norm(x).flatten(2).transpose(1, 2), condition)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _apply(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, text: TokenCondition | None) -> torch.Tensor:
    if isinstance(layer, ResBlock):
        return layer(h, emb)
    return layer(h, text) if isinstance(layer, SpatialCrossAttention) else layer(h)


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 64,
        channel_mults: list[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_resolutions: list[int] = (4,),
        num_heads: int = 4,
        num_groups: int = 8,
        dropout: float = 0.0,
        conditioning: Callable[..., nn.Module] | None = None,
    ) -> None:
        """`channel_mults`: one entry per resolution level, width = base_channels * mult; the
        resolution halves between levels, so image_size must be divisible by 2**(levels - 1).
        `attention_resolutions`: side lengths (e.g. 4 for 4x4) whose levels get self-attention.
        `conditioning`: a partial embedder taking `dim=` (e.g. LabelEmbedding with num_classes),
        or None for an unconditional net. An embedder that yields tokens (TextEncoder, its
        `token_dim`) adds cross-attention to them after each self-attention."""
        super().__init__()
        levels = len(channel_mults)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(
                f"UNet: image_size {image_size} is not divisible by 2**{levels - 1}: use fewer channel_mults"
            )
        emb_dim = 4 * base_channels
        self.in_channels, self.image_size, self.base_channels = in_channels, image_size, base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conditioning = conditioning(dim=emb_dim) if conditioning is not None else None

        block = lambda c_in, c_out: ResBlock(c_in, c_out, emb_dim, num_groups, dropout)  # noqa: E731
        token_dim = getattr(self.conditioning, "token_dim", None)  # None: labels, no cross-attention

        def attention(c: int) -> list[nn.Module]:  # self-attention, then cross-attention to text tokens
            cross = [] if token_dim is None else [SpatialCrossAttention(c, token_dim, num_heads, num_groups)]
            return [SelfAttention(c, num_heads, num_groups), *cross]

        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, skips, width, size = nn.ModuleList(), [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers = [block(width, base_channels * mult)]
                width = base_channels * mult
                if size in attention_resolutions:
                    layers += attention(width)
                self.down.append(nn.ModuleList(layers))
                skips.append(width)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]))
                skips.append(width)
                size //= 2
        self.middle = nn.ModuleList([block(width, width), *attention(width), block(width, width)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):  # one more: the skip of the stem or of the downsampling
                layers = [block(width + skips.pop(), base_channels * mult)]
                width = base_channels * mult
                if size in attention_resolutions:
                    layers += attention(width)
                if level > 0 and i == num_res_blocks:
                    layers.append(
                        nn.Sequential(
                            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)
                        )
                    )
                    size *= 2
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(_norm(width, num_groups), nn.SiLU(), nn.Conv2d(width, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # the first prediction is 0: the loss starts at the target's variance
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """`x` `(B, C, H, W)`, `t` `(B,)` (any float scale; the process picks it), `cond` what the
        conditioning embedder takes (labels `(B,)`, caption ids `(B, context)`), or None for its null
        condition."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))  # (B, emb_dim)
        vector, text = embed(self.conditioning, cond, len(x), x.device, "UNet")
        if vector is not None:
            emb = emb + vector
        h = self.stem(x)
        hs = [h]
        for layers in self.down:
            for layer in layers:
                h = _apply(layer, h, emb, text)
            hs.append(h)
        for layer in self.middle:
            h = _apply(layer, h, emb, text)
        for layers in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in layers:
                h = _apply(layer, h, emb, text)
        return self.out(h)
