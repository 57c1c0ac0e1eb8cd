"""A small ResNet for 32x32 colour images, trained from scratch (He et al. 2016's CIFAR ResNet-20:
three stages of three basic blocks, 16/32/64 channels, global average pooling -> 64 features).

The size of SVHN, MNIST-M and CIFAR; any size from 8x8 works (the pooling is global). Batch
norm throughout, so the adversarial stage's target model adapts its statistics to the target."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from . import Backbone, register_backbone


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_backbone("resnet-cifar")
class ResNetCifar(Backbone):
    summary = "ResNet-20 for 32x32 colour images (He et al. 2016), from scratch; 64 features"
    feature_dim = 64
    channels = None  # its first convolution takes the images' own channel count
    min_size = 8
    augmentation = "digits"
    default_shape = (3, 32, 32)

    def __init__(self, in_shape: Tuple[int, int, int] = (3, 32, 32), blocks: int = 3) -> None:
        super().__init__(in_shape)
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    splits_trunk = True

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages([self.features[:3], *self.features[3:]], x)  # the stem, then each block

    def neck(self, t: torch.Tensor) -> torch.Tensor:
        return self.pool(t)


__all__ = ["ResNetCifar"]
