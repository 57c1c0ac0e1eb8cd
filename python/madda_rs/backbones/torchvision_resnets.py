"""torchvision's ResNet-18 and ResNet-50 (He et al. 2016), the backbones of published adaptation
results on photographs (Office-31, Office-Home, VisDA), with ImageNet weights through
torchvision's weights API (``--weights imagenet``) or a state dict saved from torchvision's own
model (``--weights FILE``; its ImageNet classifier ``fc.*`` is not part of the backbone and is
skipped). The classifier is replaced by nothing: the features are the pooled 512 / 2048."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

import torch
from torch import nn

from . import IMAGENET_MEAN, IMAGENET_STD, Backbone, InputScaling, load_checked, register_backbone


def imagenet_state_dict(weights: Any, *, download: bool) -> dict:
    """The state dict of a torchvision weights entry, from torch's hub cache or downloaded into it.
    Offline, a ValueError naming the file looked for and how to get it."""
    from torch.hub import get_dir

    url = weights.url
    path = Path(get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file() and not download:
        raise ValueError(f"--weights imagenet: {path} is not there and downloads are off (--no-download); fetch "
                         f"{url} to that path")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, a hash mismatch, a disk error: say where the file belongs
        raise ValueError(f"--weights imagenet: {path} is not there and it could not be downloaded "
                         f"({type(exc).__name__}: {exc}); fetch {url} to that path") from None


class TorchvisionResNet(Backbone):
    """A torchvision ResNet up to its global pooling. Subclasses name the builder and weights."""

    channels = 3
    min_size = 32  # five stride-2 steps: 32x32 leaves a 1x1 map
    augmentation = "photo"
    weight_choices = ("imagenet",)
    builder = ""  # torchvision.models function name
    weights_enum = ""  # its weights enum's name

    def __init__(self, in_shape: Tuple[int, int, int] = (3, 224, 224)) -> None:
        super().__init__(in_shape)
        import torchvision.models as tvm

        net = getattr(tvm, self.builder)(weights=None)
        net.fc = nn.Identity()  # the ImageNet classifier is not part of the backbone
        self.input_scaling = InputScaling(3, IMAGENET_MEAN, IMAGENET_STD)
        self.net = net

    splits_trunk = True

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        stem = nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool)  # not registered: the state dict stays torchvision's
        return self.stages([stem, *n.layer1, *n.layer2, *n.layer3, *n.layer4], x)  # the stem, then each block

    def neck(self, t: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(t), 1)

    def load_weights(self, weights: str, *, download: bool = True) -> None:
        if weights == "imagenet":
            import torchvision.models as tvm

            entry = getattr(tvm, self.weights_enum).IMAGENET1K_V1
            load_checked(self.net, imagenet_state_dict(entry, download=download), f"imagenet ({entry.url})",
                         ignore=("fc.",))
        else:
            self.load_state_file(weights, self.net, ignore=("fc.",))


@register_backbone("resnet18")
class ResNet18(TorchvisionResNet):
    summary = "torchvision's ResNet-18; --weights imagenet or a torchvision state dict; 512 features"
    feature_dim = 512
    builder, weights_enum = "resnet18", "ResNet18_Weights"


@register_backbone("resnet50")
class ResNet50(TorchvisionResNet):
    summary = "torchvision's ResNet-50; --weights imagenet or a torchvision state dict; 2048 features"
    feature_dim = 2048
    builder, weights_enum = "resnet50", "ResNet50_Weights"


__all__ = ["ResNet18", "ResNet50", "TorchvisionResNet", "imagenet_state_dict"]
