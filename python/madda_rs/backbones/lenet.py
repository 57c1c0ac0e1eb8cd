"""LeNet as M-ADDA's code has it: conv C->20 k5, pool, ReLU, conv 20->50 k5, pool, ReLU, Linear -> 500.

The default backbone, for digits at 28x28 (any size from 16x16: the flattened width follows the
input). Its input layer is the identity: it was trained on [-1, 1] images, madda_rs's own scale.
The trunk is the conv stack, the neck the fully connected layer (the official code's
center-magnet step trains only that, ``magnet_scope='fc'``). Its layers keep the attribute names
``conv`` and ``fc`` of every run folder saved before backbones existed, so those load as they are."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from . import Backbone, register_backbone


def lenet_flat_size(in_shape: Tuple[int, int, int]) -> int:
    """Features after LeNet's two (conv 5x5, pool 2) blocks for (C, H, W) inputs: 800 at 28x28."""
    _, h, w = in_shape
    for _ in range(2):
        h, w = (h - 4) // 2, (w - 4) // 2
    if h < 1 or w < 1:
        raise ValueError(f"images of {in_shape[1]}x{in_shape[2]} are too small for LeNet: need at least 16x16")
    return 50 * h * w


@register_backbone("lenet")
class LeNet(Backbone):
    summary = "LeNet (M-ADDA's code): two conv blocks and a 500-d layer, trained from scratch; digits"
    feature_dim = 500
    channels = None  # the first layer takes the images' own channel count
    min_size = 16
    augmentation = "digits"
    size_free_weights = False  # the fully connected layer's width follows the image size
    default_shape = (1, 28, 28)

    def __init__(self, in_shape: Tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__(in_shape)
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

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def neck(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


__all__ = ["LeNet", "lenet_flat_size"]
