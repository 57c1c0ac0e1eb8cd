"""The geometry of a run's images: the size and colour of a folder source (read from its files'
headers), and resizing one domain's images to another's (``resize_to_source``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Tuple

from ..config import TrainConfig
from .domains import REGISTRY
from .folders import common_geometry, is_image_folder, labelled_files
from .images import ImageSet


def match_shape(images: ImageSet, shape: Tuple[int, int, int]) -> ImageSet:
    """Resize `images` to (C, H, W) = `shape`: bilinear for H x W; 1 -> 3 channels by repetition,
    3 -> 1 by the mean."""
    from torchvision.transforms.v2 import functional as F

    c, h, w = shape
    if tuple(images.shape) == tuple(shape):
        return images
    x = images.floats()
    if x.shape[1] != c:
        if (x.shape[1], c) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (x.shape[1], c) == (3, 1):
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.resize(x, [h, w], antialias=True).clamp_(-1.0, 1.0)
    return replace(images, images=x.contiguous())


def resolve_geometry(config: TrainConfig, threads: Optional[int] = None) -> TrainConfig:
    """`config` with ``image_size`` and ``channels`` filled in from a folder source's most common
    size and channel count (headers only); unchanged for other sources. Either setting given for a
    source that is not a folder is a ValueError, but for channels with a registered domain that
    draws its images in either (``takes_channels``, as synth-digits), and for image_size when the
    sets are resized to one shape anyway (``resize_to_source``, ``resize_to_target``)."""
    if not is_image_folder(config.src):
        if config.image_size is not None and not (config.resize_to_source or config.resize_to_target):
            raise ValueError(f"image_size sets the size of image folders, or of every image set with "
                             f"resize_to_source or resize_to_target; the source {config.src!r} is not a folder")
        domain = REGISTRY.get(config.src)
        if config.channels is not None and (domain is None or not domain.takes_channels):
            takes = ", ".join(n for n, d in REGISTRY.items() if d.takes_channels)
            raise ValueError(f"channels sets the colour of image folders and {takes}; the source "
                             f"{config.src!r} is neither")
        return config
    if config.image_size is not None and config.channels is not None:
        return config
    common = common_geometry(Path(config.src), labelled_files(Path(config.src))[1], threads)
    return config.replace(image_size=config.image_size or (common.height, common.width),
                          channels=config.channels or common.channels)



__all__ = ["match_shape", "resolve_geometry"]
