"""LeNet encoder, embedding head and discriminator (M-ADDA, Section 3; official code's shapes)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

MNIST_SHAPE = (1, 28, 28)


def lenet_flat_size(in_shape: Tuple[int, int, int]) -> int:
    """Features after LeNet's two (conv 5x5, pool 2) blocks for (C, H, W) inputs: 800 at 28x28."""
    _, h, w = in_shape
    for _ in range(2):
        h, w = (h - 4) // 2, (w - 4) // 2
    if h < 1 or w < 1:
        raise ValueError(f"images of {in_shape[1]}x{in_shape[2]} are too small for LeNet: need at least 16x16")
    return 50 * h * w


class Encoder(nn.Module):
    """LeNet: conv C->20 k5, pool, ReLU, conv 20->50 k5, pool, ReLU, Linear (flat) -> 500.

    The flattened size follows the input shape (800 for 1x28x28). The output (500-d, before any
    ReLU) is what the discriminator sees."""

    def __init__(self, in_shape: Tuple[int, int, int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.conv = nn.Sequential(
            nn.Conv2d(in_shape[0], 20, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(lenet_flat_size(in_shape), 500)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class EmbeddingNet(nn.Module):
    """Encoder, then ReLU and Linear 500 -> `dim`: the metric embedding (not normalised)."""

    def __init__(self, dim: int = 256, in_shape: Tuple[int, int, int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.encoder = Encoder(in_shape)
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
