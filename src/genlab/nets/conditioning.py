"""Conditioning embedders: what a conditional net is told about the sample it should make.

An embedder maps a batch of conditions to vectors `(B, dim)` that the net adds to its time or
latent embedding. Every conditional family uses one from here, chosen in config, so a text or other
embedder can later replace the label table without touching the nets.

Classifier-free guidance (Ho & Salimans 2022) trains one net both conditionally and unconditionally
by replacing a fraction of the conditions with a learned "null" condition; at sampling time it
mixes the two predictions. `LabelEmbedding` reserves index `num_classes` for that null label.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from genlab.errors import ConfigError


class LabelEmbedding(nn.Module):
    """Class labels `(B,)` int64 in [0, num_classes) to `(B, dim)`; `null_label` (= num_classes)
    gives the unconditional embedding."""

    def __init__(self, num_classes: int, dim: int, drop_prob: float = 0.0) -> None:
        """`drop_prob`: during training, the fraction of labels replaced by the null label (0.1-0.2
        for classifier-free guidance; 0 for a purely conditional model)."""
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"LabelEmbedding needs at least one class, got num_classes={num_classes}")
        if not 0 <= drop_prob < 1:
            raise ValueError(f"LabelEmbedding drop_prob must be in [0, 1), got {drop_prob}")
        self.num_classes, self.drop_prob = num_classes, drop_prob
        self.table = nn.Embedding(num_classes + 1, dim)  # the last row is the null label

    @property
    def null_label(self) -> int:
        return self.num_classes

    def null(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """A batch of null labels `(B,)`."""
        return torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_prob > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < self.drop_prob
            labels = labels.masked_fill(dropped, self.null_label)
        return self.table(labels)


def check_labels(
    labels: torch.Tensor | list[int], n: int, num_classes: int | None, device: torch.device, why_unconditional: str,
    classes_key: str,
) -> torch.Tensor:  # fmt: skip
    """`sample(labels=...)` as `(n,)` int64 on `device`, or a one-line ConfigError naming what to change: an
    unconditional net (`num_classes` None) would silently ignore labels, an embedding would index out of
    range. `why_unconditional` and `classes_key` name the family's config keys in the message."""
    if num_classes is None:
        raise ConfigError(f"sample(labels=...): the model is unconditional ({why_unconditional})")
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    if len(labels) != n:
        raise ConfigError(f"sample(labels=...): got {len(labels)} labels for n={n} samples")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ConfigError(
            f"sample(labels=...): label {int(bad[0])} is outside the data's classes 0..{num_classes - 1} "
            f"({classes_key}={num_classes})"
        )
    return labels


class TokenCondition(NamedTuple):
    """What a token-yielding embedder (a text encoder) returns: the pooled vector joins the time embedding,
    the tokens feed the net's cross-attention, `mask` marks the keys to attend to (True)."""

    pooled: torch.Tensor  # (B, dim)
    tokens: torch.Tensor  # (B, T, token_dim)
    mask: torch.Tensor  # (B, T) bool


def embed(
    conditioning: nn.Module | None, cond: torch.Tensor | None, batch_size: int, device: torch.device, net: str
) -> tuple[torch.Tensor | None, TokenCondition | None]:
    """(the vector to add to the time embedding `(B, dim)` or None, the token condition or None) for a
    net's `cond`; None asks for the embedder's null condition. Label embedders yield no tokens, so a
    net builds and runs its cross-attention only for embedders with a `token_dim`."""
    if conditioning is None:
        if cond is not None:
            raise ValueError(f"{net}: a condition was given to a net built without conditioning")
        return None, None
    out = conditioning(cond if cond is not None else conditioning.null(batch_size, device))
    if isinstance(out, TokenCondition):
        return out.pooled, out
    return out, None


class CrossAttention(nn.Module):
    """Multi-head attention from a net's positions (queries `(B, N, dim)`) to condition tokens (keys and
    values `(B, T, token_dim)`, `mask` `(B, T)` True where a key is valid), as Stable Diffusion's UNet
    attends to the text (Rombach et al. 2022 §3.3) and PixArt-alpha's DiT blocks do (Chen et al. 2023).
    The output projection starts at zero, so a net gaining it starts as the net without it."""

    def __init__(self, dim: int, token_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention: num_heads {num_heads} must divide the width {dim}")
        self.num_heads = num_heads
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(token_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, condition: TokenCondition) -> torch.Tensor:
        b, n, d = x.shape
        heads = lambda t: t.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731  (B, nh, *, hs)
        k, v = self.kv(condition.tokens.to(x.dtype)).chunk(2, dim=-1)  # (B, T, dim) each
        mask = condition.mask[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
        out = nn.functional.scaled_dot_product_attention(heads(self.q(x)), heads(k), heads(v), attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, dim)
