"""Grey images composited onto colour photographs: MNIST-M's recipe (Ganin et al. 2016, "blending
digits from the original set over patches randomly extracted from color photos"), as the
absolute difference of a random photo patch and the grey image, at 32x32 RGB.

Ganin et al. took their patches from BSDS500; ours come from the colour photographs that
scikit-image ships in ``skimage.data`` (no download), so the domains are in the spirit of MNIST-M,
not a copy of it. Image ``i`` of a split draws its photograph, patch size and place from its own
stream (``composite`` seeded by the domain, the split and ``i``): the set is one fixed dataset, cached like
the rendered ones (:func:`madda_rs.data.folders.cached_array`).
"""

from __future__ import annotations

import zlib
from typing import List, Tuple

import numpy as np

from ..run.streams import numpy_rng
from .folders import cached_array

SIZE = 32  # MNIST-M's and SVHN's frame
# The colour photographs bundled with scikit-image (no fetch on first use), in this order.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
PATCH = (32, 128)  # the side of the square patch cut from a photograph, in its pixels, before resizing
RECIPE_VERSION = "1"  # bump when a change below changes any pixel: the cache key holds it
INSTALL = "pip install scikit-image (or pip install 'madda-rs[domains]')"


def photographs() -> List[np.ndarray]:
    """uint8 (H, W, 3) of each photograph in :data:`PHOTOS`."""
    try:
        import skimage.data
    except ImportError:
        raise ValueError(f"the composite domains cut their backgrounds from scikit-image's photographs: "
                         f"{INSTALL}") from None
    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]


def composite(images: np.ndarray, name: str, train: bool) -> np.ndarray:
    """uint8 (N, 3, 32, 32): each (N, 28, 28) grey image blended onto a patch of a photograph
    (|patch - image|, per channel, after both are resized to 32x32), cached by `name` and split."""
    import skimage

    key = [RECIPE_VERSION, name, int(train), len(images), SIZE, PHOTOS, PATCH, skimage.__version__,
           int(np.asarray(images[:64], dtype=np.int64).sum())]
    return cached_array(f"{name}-{'train' if train else 'test'}", key, lambda: _draw(images, name, train))


def _draw(images: np.ndarray, name: str, train: bool) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    photos = photographs()
    salt = zlib.crc32(name.encode())  # each composite domain draws its own patches
    grey = F.interpolate(torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None], size=(SIZE, SIZE),
                         mode="bilinear", align_corners=False, antialias=True)[:, 0].clamp_(0, 255)
    patches = np.empty((len(images), SIZE, SIZE, 3), np.float32)
    for i in range(len(images)):
        photo, (top, left, side) = _patch(photos, numpy_rng(0, "composite", salt, int(train), i))
        crop = torch.from_numpy(photo[top : top + side, left : left + side].astype(np.float32)).permute(2, 0, 1)
        patches[i] = F.interpolate(crop[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                                   antialias=True)[0].permute(1, 2, 0).numpy()
    out = np.abs(patches - grey.numpy()[..., None])
    return np.round(out).clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2).copy()


def _patch(photos: List[np.ndarray], rng: np.random.Generator) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(PATCH[0], min(PATCH[1], h, w) + 1))
    return photo, (int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side)


__all__ = ["composite", "photographs", "PHOTOS", "SIZE"]
