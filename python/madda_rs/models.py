"""LeNet encoder, embedding head and discriminator (M-ADDA, Section 3; official code's shapes)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """LeNet: conv 1->20 k5, pool, ReLU, conv 20->50 k5, pool, ReLU, Linear 800->500.

    The output (500-d, before any ReLU) is what the discriminator sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(800, 500)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class EmbeddingNet(nn.Module):
    """Encoder, then ReLU and Linear 500 -> `dim`: the metric embedding (not normalised)."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(500, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def embed_detached_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding with the conv stack cut from the graph: gradients reach only the fully
        connected layers (the official code's center-magnet step)."""
        return self.head(self.encoder.fc(self.encoder.conv(x).detach()))


class Discriminator(nn.Module):
    """500 -> 500 -> 500 -> 1 logit with ReLUs (one logit + BCE equals the official 2-logit CE)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)
