"""Reading image files: decoding one to uint8 at a run's geometry, many in parallel threads, and
finding them under a folder.

Kept free of the rest of madda_rs on purpose: ``madda-rs export`` copies this file beside the
exported ``predict.py``, which labels images without the training code (NumPy and Pillow only)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def decode_image(path: Path, shape: Tuple[int, int, int]) -> np.ndarray:
    """uint8 (C, H, W): the file converted to C channels (grey or RGB) and resized bilinearly.
    A truncated or corrupt file is a ValueError naming it (Pillow's own lazy decoding would
    otherwise fill the missing rows silently)."""
    from PIL import Image

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types for a truncated or corrupt file: name it
        raise ValueError(f"{path}: cannot be decoded as an image ({exc})") from None
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], shape: Tuple[int, int, int], threads: Optional[int] = None,
                  on_image: Optional[Callable[[], Any]] = None) -> np.ndarray:
    """uint8 (N, C, H, W) of `paths`, decoded in parallel threads (Pillow decodes without the GIL)."""
    out = np.empty((len(paths), *shape), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = decode_image(paths[i], shape)

    with ThreadPoolExecutor(threads or min(32, (os.cpu_count() or 1) * 2)) as pool:
        for _ in pool.map(one, range(len(paths))):
            if on_image is not None:
                on_image()
    return out


def image_files(root: Path) -> List[Path]:
    """Image files under `root` at any depth, sorted; hidden files and folders skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return found


__all__ = ["decode_image", "decode_images", "image_files", "IMAGE_SUFFIXES", "GREY_MODES"]
