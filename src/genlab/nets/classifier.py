"""A small convolutional classifier whose penultimate layer is the feature space of the image metrics
(FID, KID, precision/recall/density/coverage: see genlab.metrics).

Any input size works: a stem that brings `image_size` down to at most 16 (stride image_size // 16),
two stride-2 stages, then adaptive average pooling to 2x2, so the same net trains on 8x8 digits or the
same digits resized to 32x32 at about the same cost (it is trained at the size it scores).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvClassifier(nn.Module):
    """Image `(B, C, H, W)` in [-1, 1] -> logits `(B, num_classes)`; `features(x)` -> `(B, num_features)`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 8,
        hidden_channels: tuple[int, int] = (32, 64),
        num_features: int = 64,
    ) -> None:
        super().__init__()
        c1, c2 = hidden_channels
        stride = max(1, image_size // 16)  # 32x32 -> 16x16: large inputs cost little more than small ones
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 2 * stride + 1, stride=stride, padding=stride),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, stride=2, padding=1),  # H/2
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # H/4
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # (B, c2, 2, 2) whatever the input size
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(c2 * 4, num_features),
        )
        # The features are taken before this ReLU: dense and closer to Gaussian than rectified ones,
        # which is what FID's Gaussian fit assumes.
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(num_features, num_classes))
        self.num_features = num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
