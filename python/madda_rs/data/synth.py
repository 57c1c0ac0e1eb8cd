"""Synthetic digits: 0-9 rendered on the fly with Pillow from the fonts matplotlib ships.

Nothing is downloaded. Image ``i`` of a split has label ``i % 10`` (so every prefix is balanced
to within one image) and draws everything else from its own stream, ``synth`` seeded by
(``synth_seed``, split, i): the font, size, position, rotation, shear, stroke width, blur,
noise, and foreground and background intensity (and colours, at 3 channels). An image thus
depends only on (seed, split, i): any count gives a prefix of a longer set, in any thread order.

Images are 28 x 28 (MNIST's geometry). Rendered sets are cached as uint8 ``.npy`` files beside
the decoded image folders (:func:`madda_rs.data.folders.cache_dir`), keyed by the seed, split,
count, geometry, fonts, Pillow's version and :data:`RENDERER_VERSION`. docs/synth-digits.md
shows the set and lists each knob's range.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from ..run.streams import numpy_rng
from .folders import cache_dir, write_cache

NAME = "synth-digits"
# Bump when a change to the drawing below changes any pixel: the cache key holds it.
RENDERER_VERSION = "1"
SIZE = 28  # MNIST's frame
# Every font matplotlib ships whose characters 0-9 are ten distinct digit glyphs
# (tests/test_synth.py checks this list against the folder with :func:`is_digit_font`). Left out:
# the Display and STIX NonUni / Siz* fonts (no digits), LastResortHE (one placeholder glyph for
# every character) and cmex10 / cmsy10 (delimiter and symbol glyphs at the digits' codes).
# cmmi10's digits are old-style figures: digits still, and a shape MNIST's writers use too.
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GLYPH_PX = 64  # glyphs are drawn this large, warped, then shrunk into the 28 x 28 frame (anti-aliased)
# The ranges each image draws from (uniform), in pixels of the 28 x 28 frame unless said otherwise.
HEIGHT = (16.0, 22.0)  # the digit's height (MNIST's digits fill a 20 x 20 box)
SHIFT = 2.5  # the digit's centre moves up to this far from the frame's centre, on each axis
ROTATION = 15.0  # degrees either way
SHEAR = 0.3  # horizontal shear, x += shear * y, either way
STROKE = (0, 3)  # extra outline at GLYPH_PX (0: the font's own weight; 3: about 1.3 px here)
BLUR = (0.0, 1.0)  # Gaussian blur radius
NOISE = (0.0, 0.08)  # standard deviation of Gaussian pixel noise, intensities in [0, 1]
BACKGROUND = (0.0, 0.3)  # grey intensity of the background ...
FOREGROUND = (0.7, 1.0)  # ... and of the digit: a bright digit on a dark ground, always
TINT = 0.3  # at 3 channels, each channel of both colours moves up to this far from the grey level

Progress = Callable[..., Any]  # a tqdm-like factory: progress(total=, desc=) -> bar with update(), close()


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def is_digit_font(path: Path) -> bool:
    """Whether the characters 0-9 of the font at `path` map to glyphs named as digits ('zero',
    'zerooldstyle', ...) that render as ten distinct, non-empty shapes."""
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    face = FT2Font(str(path))
    charmap = face.get_charmap()
    codes = [ord(str(d)) for d in range(10)]
    if any(c not in charmap or not face.get_glyph_name(charmap[c]).startswith(name)
           for c, name in zip(codes, DIGIT_NAMES)):
        return False
    font = ImageFont.truetype(str(path), GLYPH_PX)
    shapes = [font.getmask(chr(c)) for c in codes]
    return all(s.getbbox() is not None for s in shapes) and len({bytes(s) for s in shapes}) == 10


def render(count: int, *, seed: int, train: bool, channels: int = 1, threads: Optional[int] = None,
           progress: Optional[Progress] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images (count, channels, 28, 28), int64 labels (count,)) of one split, from the
    cache when it holds them, else rendered in `threads` threads and cached."""
    if count < 1:
        raise ValueError(f"synth_{'train' if train else 'test'}_images must be >= 1, got {count}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for {NAME}, got {channels}")
    from PIL import __version__ as pillow

    labels = np.arange(count, dtype=np.int64) % 10
    key = json.dumps([RENDERER_VERSION, seed, int(train), count, channels, SIZE, FONTS, pillow])
    cached = cache_dir() / f"{NAME}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False), labels
    images = _render_all(labels, seed, train, channels, threads, progress)
    buffer = io.BytesIO()
    np.save(buffer, images)
    write_cache(cached, buffer.getvalue())  # an unwritable cache costs the next run time only
    return images, labels


def _render_all(labels: np.ndarray, seed: int, train: bool, channels: int, threads: Optional[int],
                progress: Optional[Progress]) -> np.ndarray:
    count = len(labels)
    fonts = _font_paths()
    local = threading.local()  # a FreeType face is not safe to share between threads: one set per thread
    out = np.empty((count, channels, SIZE, SIZE), dtype=np.uint8)

    def one(i: int) -> None:
        if not hasattr(local, "fonts"):
            from PIL import ImageFont

            local.fonts = [ImageFont.truetype(str(p), GLYPH_PX) for p in fonts]
        out[i] = render_one(numpy_rng(seed, "synth", int(train), i), int(labels[i]), local.fonts, channels)

    bar = progress(total=count, desc=f"rendering {NAME} {'train' if train else 'test'}") if progress else None
    try:
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            for _ in pool.map(one, range(count)):
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return out


def render_one(rng: np.random.Generator, digit: int, fonts: Sequence[Any], channels: int) -> np.ndarray:
    """uint8 (channels, 28, 28): `digit` in one of `fonts` (Pillow fonts at GLYPH_PX), every knob
    drawn from `rng` in the order below (colours last, so a colour set has the grey set's shapes)."""
    from PIL import Image, ImageDraw, ImageFilter

    font = fonts[rng.integers(len(fonts))]
    height = rng.uniform(*HEIGHT)
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2)
    angle = np.deg2rad(rng.uniform(-ROTATION, ROTATION))
    shear = rng.uniform(-SHEAR, SHEAR)
    stroke = int(rng.integers(STROKE[0], STROKE[1] + 1))
    blur = rng.uniform(*BLUR)
    noise = rng.uniform(*NOISE)
    ground, ink = rng.uniform(*BACKGROUND), rng.uniform(*FOREGROUND)

    side = 2 * GLYPH_PX
    glyph = Image.new("L", (side, side), 0)
    ImageDraw.Draw(glyph).text((side / 2, side / 2), str(digit), fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    # rotate and shear about the centre; Pillow's affine maps output pixels back to input ones
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    back = np.linalg.inv(forward)
    offset = side / 2 - back @ np.array([side / 2, side / 2])
    glyph = glyph.transform((side, side), Image.Transform.AFFINE, (*back[0], offset[0], *back[1], offset[1]),
                            resample=Image.Resampling.BILINEAR)
    left, top, right, bottom = glyph.getbbox()
    scale = min(height / (bottom - top), (SIZE - 2) / (right - left))  # a wide, leaning 4 still fits
    w, h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
    small = glyph.crop((left, top, right, bottom)).resize((w, h), Image.Resampling.LANCZOS)
    frame = Image.new("L", (SIZE, SIZE), 0)
    frame.paste(small, (int(np.clip(round((SIZE - w) / 2 + dx), 0, SIZE - w)),
                        int(np.clip(round((SIZE - h) / 2 + dy), 0, SIZE - h))))
    mask = np.asarray(frame.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)[None] / 255.0

    ground_c, ink_c = np.full((channels, 1, 1), ground), np.full((channels, 1, 1), ink)
    if channels == 3:
        # Colour runs adapt to colour photographs (house numbers, signs), where light-on-dark and
        # dark-on-light are both common: tint both colours and swap them half the time. Grey
        # images keep MNIST's and USPS's polarity, the only one their targets show.
        ground_c = np.clip(ground_c + rng.uniform(-TINT, TINT, (3, 1, 1)), 0, 1)
        ink_c = np.clip(ink_c + rng.uniform(-TINT, TINT, (3, 1, 1)), 0, 1)
        if rng.random() < 0.5:
            ground_c, ink_c = ink_c, ground_c
    pixels = ground_c + (ink_c - ground_c) * mask + rng.normal(0.0, noise, (channels, SIZE, SIZE))
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _font_paths() -> Tuple[Path, ...]:
    folder = font_dir()
    missing = [name for name in FONTS if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{NAME} renders with matplotlib's fonts, but {folder} lacks {', '.join(missing)}; "
                         f"install matplotlib >= 3.7")
    return tuple(folder / name for name in FONTS)


__all__ = ["NAME", "FONTS", "RENDERER_VERSION", "render", "render_one", "is_digit_font", "font_dir"]
