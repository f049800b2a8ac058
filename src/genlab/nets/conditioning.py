"""Conditioning embedders: what a conditional net is told about the sample it should make.

An embedder maps a batch of conditions to vectors `(B, dim)` that the net adds to its time or
latent embedding. Every conditional family uses one from here, chosen in config, so a text or other
embedder can later replace the label table without touching the nets.

Classifier-free guidance (Ho & Salimans 2022) trains one net both conditionally and unconditionally
by replacing a fraction of the conditions with a learned "null" condition; at sampling time it
mixes the two predictions. `LabelEmbedding` reserves index `num_classes` for that null label.
"""

from __future__ import annotations

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
