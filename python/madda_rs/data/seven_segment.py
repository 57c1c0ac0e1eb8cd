"""Digits as a seven-segment display draws them: a domain far from handwriting, where adaptation
may hurt (a test of the guard and of the worst case), drawn with Pillow, nothing downloaded.

Image ``i`` of a split has label ``i % 10`` and draws everything else from its own stream
(``seven_segment`` seeded by the split and ``i``): the digit's height and width, segment
thickness, the gap between segments, italic slant, position, blur, noise and the intensities of
ink and ground (bright on dark, as MNIST). 28x28 grey, drawn at 4x and shrunk (anti-aliased).
"""

from __future__ import annotations

import numpy as np

from ..run.streams import numpy_rng
from .folders import cached_array

NAME = "seven-segment"
SIZE, SCALE = 28, 4
TRAIN_IMAGES, TEST_IMAGES = 10_000, 2_000
RENDERER_VERSION = "1"
# Which segments each digit lights: a top, b top right, c bottom right, d bottom, e bottom left,
# f top left, g middle (the display's standard lettering).
SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
HEIGHT = (16.0, 22.0)  # digit height in pixels of the 28x28 frame
ASPECT = (0.45, 0.65)  # width / height
THICKNESS = (0.12, 0.20)  # segment thickness, a share of the height
GAP = (0.0, 0.015)  # the gap at each segment's ends, a share of the height
SLANT = (0.0, 0.25)  # italic shear x -= slant * y (displays lean right)
SHIFT = 2.0
BLUR = (0.0, 0.8)
NOISE = (0.0, 0.08)
BACKGROUND, FOREGROUND = (0.0, 0.3), (0.7, 1.0)


def render(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, 28, 28), int64 labels (N,)) of one split, cached."""
    count = TRAIN_IMAGES if train else TEST_IMAGES
    labels = np.arange(count, dtype=np.int64) % 10
    from PIL import __version__ as pillow

    key = [RENDERER_VERSION, int(train), count, SIZE, pillow]
    images = cached_array(f"{NAME}-{'train' if train else 'test'}", key,
                          lambda: np.stack([render_one(numpy_rng(0, "seven_segment", int(train), i), int(d))
                                            for i, d in enumerate(labels)]))
    return images, labels


def _segments(w: float, h: float, t: float, gap: float) -> dict:
    """Each segment as a polygon (a hexagon with pointed ends) in a w x h box, y downwards."""
    def horizontal(y: float) -> list:
        x0, x1 = gap + t / 4, w - gap - t / 4
        return [(x0, y), (x0 + t / 2, y - t / 2), (x1 - t / 2, y - t / 2), (x1, y), (x1 - t / 2, y + t / 2),
                (x0 + t / 2, y + t / 2)]

    def vertical(x: float, y0: float, y1: float) -> list:
        y0, y1 = y0 + gap + t / 4, y1 - gap - t / 4
        return [(x, y0), (x + t / 2, y0 + t / 2), (x + t / 2, y1 - t / 2), (x, y1), (x - t / 2, y1 - t / 2),
                (x - t / 2, y0 + t / 2)]

    mid = h / 2
    return {"a": horizontal(t / 2), "g": horizontal(mid), "d": horizontal(h - t / 2),
            "f": vertical(t / 2, 0, mid), "b": vertical(w - t / 2, 0, mid),
            "e": vertical(t / 2, mid, h), "c": vertical(w - t / 2, mid, h)}


def render_one(rng: np.random.Generator, digit: int) -> np.ndarray:
    """uint8 (1, 28, 28): `digit` on a seven-segment display, every knob drawn from `rng`."""
    from PIL import Image, ImageDraw, ImageFilter

    h = rng.uniform(*HEIGHT) * SCALE
    w = h * rng.uniform(*ASPECT)
    t = h * rng.uniform(*THICKNESS)
    gap = h * rng.uniform(*GAP)
    slant = rng.uniform(*SLANT)
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2) * SCALE
    blur, noise = rng.uniform(*BLUR), rng.uniform(*NOISE)
    ground, ink = rng.uniform(*BACKGROUND), rng.uniform(*FOREGROUND)
    side = SIZE * SCALE
    ox, oy = (side - w) / 2 + dx, (side - h) / 2 + dy
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    polygons = _segments(w, h, t, gap)
    for name in SEGMENTS[digit]:
        # the slant leans the top right about the digit's middle row
        draw.polygon([(ox + x - slant * (y - h / 2), oy + y) for x, y in polygons[name]], fill=255)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(blur))
    mask = np.asarray(small, dtype=np.float32) / 255.0
    pixels = ground + (ink - ground) * mask + rng.normal(0.0, noise, (SIZE, SIZE))
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)[None]


__all__ = ["NAME", "render", "render_one", "SEGMENTS"]
