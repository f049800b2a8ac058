"""Diffusion Transformer denoiser (DiT, Peebles & Xie 2023, arXiv:2212.09748), for diffusion and
flow matching on pixels or latents.

    x (B, C, H, W), t (B,), cond -> (B, out_channels, H, W)

The image is cut into p x p patches, each embedded linearly (a Conv2d of stride p) into a token of
width `hidden_size`; fixed 2-D sin-cos position embeddings are added; `depth` transformer blocks
follow, each modulated by the time (+ condition) embedding through adaLN-Zero (§3.2: the
LayerNorms' scale and shift, and a gate on each residual branch, regressed from the embedding, the
gates initialised to zero so every block starts as the identity); a final adaLN layer maps each
token back to a p x p x out_channels patch, and the patches are put back into an image.

Written after the paper and the reference implementation (facebookresearch/DiT, models.py), not
copied from it. Differences: attention runs through `F.scaled_dot_product_attention` (flash or
memory-efficient kernels where present); the condition comes from the shared embedders in
`genlab.nets.conditioning` (the label table with its classifier-free-guidance null label); optional
QK-norm. RoPE is not implemented (fixed sin-cos embeddings, as in the paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nets.conditioning import CrossAttention, TokenCondition, embed
from genlab.nets.unet import timestep_embedding


def sincos_position_embedding(dim: int, grid: tuple[int, ...], max_period: float = 10_000.0) -> torch.Tensor:
    """Fixed sin-cos embeddings of the positions of a grid, `(prod(grid), dim)`, positions in row-major
    order (the last axis fastest, as `flatten` orders the patches).

    `grid` is `(h, w)` for images or `(frames, h, w)` for video: each axis gets dim / len(grid)
    channels, half sines and half cosines of its coordinate (Vaswani et al. 2017 §3.5 per axis; the
    2-D form is MAE's and DiT's, the 3-D form the space-time version video transformers use)."""
    axes = len(grid)
    if dim % (2 * axes):
        raise ValueError(f"position embedding: width {dim} must be divisible by {2 * axes} for a {axes}-D grid")
    part = dim // axes  # channels per axis
    freqs = 1.0 / max_period ** (torch.arange(part // 2, dtype=torch.float64) / (part // 2))  # (part/2,)
    coords = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij")  # each grid-shaped
    embeddings = []
    for coord in coords:
        angles = coord.reshape(-1, 1) * freqs[None]  # (N, part/2), N = prod(grid)
        embeddings += [angles.sin(), angles.cos()]
    return torch.cat(embeddings, dim=1).float()  # (N, dim)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, H/p * W/p, p * p * C)`: the patches in row-major order, each flattened
    (row, column, channel) as `unpatchify` reads them back."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p), h = H/p, w = W/p
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, T, p*p*C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """`(B, h * w, p * p * C)` -> `(B, C, h * p, w * p)`; the inverse of `patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h, w, p, p, channels)  # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, channels, h * p, w * p)  # (B, C, H, W)


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x` `(B, T, D)` normalised, then scaled and shifted per example (`(B, 1, D)` each)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention over the tokens; with `qk_norm`, queries and keys are RMS-normalised
    per head before the dot product (Dehghani et al. 2023, arXiv:2302.05442; Esser et al. 2024 §5.3.2)."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads, head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs) each
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)  # (B, nh, T, hs)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, T, D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero (Peebles & Xie 2023, §3.2 and Fig. 3)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, token_dim: int | None = None
    ) -> None:
        """`token_dim`: the width of text tokens to cross-attend to after the self-attention (PixArt-alpha's
        block, Chen et al. 2023 §2.3: plain pre-norm, no adaLN on that branch), or None: DiT's block."""
        super().__init__()
        mlp_width = int(hidden_size * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)  # adaLN supplies the affine
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_width), nn.GELU(approximate="tanh"), nn.Linear(mlp_width, hidden_size)
        )
        # shift, scale and gate for each of the two branches, regressed from the conditioning vector
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        _zero(self.modulation[-1])  # adaLN-Zero: gates 0, so the block starts as the identity
        if token_dim is not None:  # created last: a label DiT's modules and initialisation are unchanged
            self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
            self.cross = CrossAttention(hidden_size, token_dim, num_heads)  # zero output: starts as the identity

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: TokenCondition | None = None) -> torch.Tensor:
        """`x` `(B, T, D)`, `c` `(B, D)`, `text` the tokens to cross-attend to (text-conditioned nets)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # (B, 1, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if text is not None:
            x = x + self.cross(self.norm_cross(x), text)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate), then a linear map of each token to a flattened patch."""

    def __init__(self, hidden_size: int, patch_values: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, patch_values)
        _zero(self.modulation[-1])
        _zero(self.linear)  # the first prediction is 0: the loss starts at the target's variance

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, p*p*C_out)


class DiT(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        out_channels: int | None = None,
        qk_norm: bool = False,
        frequency_dim: int = 256,
        conditioning: Callable[..., nn.Module] | None = None,
    ) -> None:
        """`patch_size` p: tokens = (image_size / p)^2, so the compute grows ~1/p^2 (the paper's main
        knob, §4). `hidden_size`, `depth`, `num_heads`: the transformer (Table 1 for the paper's sizes).
        `out_channels`: None for in_channels (what `DiffusionModule` trains); 2 * in_channels is the
        paper's learned-sigma output (mean and variance), which genlab's processes do not use.
        `qk_norm`: off by default, as in the paper (so the presets match its parameter counts and
        FLOPs, and small runs need it not); turn it on for large models, high learning rates or bf16,
        where attention logits can grow without bound (Dehghani et al. 2023; SD3).
        `frequency_dim`: sinusoidal features of t fed to the time MLP (256 in the paper).
        `conditioning`: a partial embedder taking `dim=` (LabelEmbedding), or None: unconditional."""
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"DiT: image_size {image_size} is not divisible by model.net.patch_size={patch_size}: "
                "choose a patch size that divides the image (or latent) size"
            )
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(
                f"DiT: model.net.num_heads={num_heads} does not divide model.net.hidden_size={hidden_size}: "
                "choose a head count that divides the width"
            )
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.out_channels = out_channels or in_channels
        self.frequency_dim, self.grid = frequency_dim, image_size // patch_size

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        # fixed, not learned (as in the paper); rebuilt from the sizes, so not saved in checkpoints
        self.register_buffer(
            "pos_embed", sincos_position_embedding(hidden_size, (self.grid, self.grid))[None], persistent=False
        )  # (1, T, D)
        self.time_mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.conditioning = conditioning(dim=hidden_size) if conditioning is not None else None
        # A text encoder yields tokens (its token_dim): each block then cross-attends to them after its
        # self-attention (PixArt-alpha) rather than SD3's joint attention (MMDiT), which would run a second,
        # text stream of weights through every block: cross-attention leaves the label DiT as it was and
        # costs one small attention over ~40 caption tokens per block.
        token_dim = getattr(self.conditioning, "token_dim", None)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm, token_dim) for _ in range(depth)
        )
        self.final = FinalLayer(hidden_size, patch_size * patch_size * self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's initialisation: Xavier-uniform linears (the patch embedding as the linear map
        it is) and zeros for every adaLN regression and the output layer: each block is the identity
        and the first prediction 0. Not the reference's N(0, 0.02) for the time MLP and the label
        table (the embedder keeps its own init): with so small a conditioning vector the zeroed adaLN
        layers learn the time and class slowly (digits, 330 steps: val/loss 0.217 with it, about
        0.187 without)."""
        zeroed = {id(block.modulation[-1]) for block in (*self.blocks, self.final)} | {id(self.final.linear)}
        zeroed |= {id(m.cross.proj) for m in self.blocks if hasattr(m, "cross")}  # cross-attention starts at 0
        if self.conditioning is not None and hasattr(self.conditioning, "token_dim"):  # the encoder keeps its init
            zeroed |= {id(m) for m in self.conditioning.modules()}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in zeroed:  # those stay zero (the blocks set them)
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.out_channels, -1))
        nn.init.zeros_(self.patch_embed.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """`x` `(B, C, H, W)`, `t` `(B,)` (any float scale; the process picks it), `cond` what the
        conditioning embedder takes (labels `(B,)`, caption ids `(B, context)`), or None for its null
        condition."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, D, h, w) -> (B, T, D)
        c = self.time_mlp(timestep_embedding(t, self.frequency_dim).to(tokens.dtype))  # (B, D)
        vector, text = embed(self.conditioning, cond, len(x), x.device, "DiT")
        if vector is not None:
            c = c + vector
        for block in self.blocks:
            tokens = block(tokens, c, text)  # (B, T, D)
        patches = self.final(tokens, c)  # (B, T, p*p*C_out)
        return unpatchify(patches, self.patch_size, self.out_channels, self.grid, self.grid)  # (B, C_out, H, W)


# The paper's sizes (Table 1): depth, hidden_size, num_heads; the patch size is the suffix.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def dit_preset(name: str, **kwargs) -> DiT:
    """`dit_preset("XL/2", in_channels=4, image_size=32, conditioning=...)`: a paper-sized DiT."""
    size, _, patch = name.partition("/")
    if size not in DIT_SIZES or patch not in ("2", "4", "8"):
        raise ValueError(f"DiT preset '{name}': use S, B, L or XL, then /2, /4 or /8 (e.g. XL/2)")
    depth, hidden_size, num_heads = DIT_SIZES[size]
    return DiT(patch_size=int(patch), depth=depth, hidden_size=hidden_size, num_heads=num_heads, **kwargs)


def dit_forward_flops(net: DiT, batch: int = 1) -> int:
    """FLOPs of one forward of `net` on `batch` images, in closed form: its matmuls and attention, a
    multiply-add counting 2 (as FlopCounterMode; the paper's Gflops count it once, so they are half).
    T tokens of width D, M the MLP width, per block: adaLN 6D^2 (one vector per image), qkv 3TD^2,
    QK^T and AV 2T^2 D, the projection TD^2, the MLP 2TDM. A label embedder is a lookup (no FLOPs)."""
    d, depth = net.patch_embed.out_channels, len(net.blocks)
    tokens, patch = net.grid**2, net.patch_size**2
    mlp = net.blocks[0].mlp[0].out_features if depth else 0
    embed = tokens * net.in_channels * patch * d + net.frequency_dim * d + d * d  # patches; the time MLP
    per_image_block = 6 * d * d  # adaLN-Zero's shift, scale and gate for both branches
    per_token_block = 3 * d * d + 2 * tokens * d + d * d + 2 * d * mlp  # qkv; QK^T and AV; projection; MLP
    final = 2 * d * d + tokens * d * patch * net.out_channels  # final adaLN; tokens to patches
    multiply_adds = embed + depth * (per_image_block + tokens * per_token_block) + final
    return 2 * batch * multiply_adds
