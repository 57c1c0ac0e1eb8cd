"""Digits drawn with handwriting-like strokes and fonts that are not matplotlib's (synth-digits
uses those): the Hershey script and simplex stroke fonts (PyPI ``Hershey-Fonts``), drawn with a
random pen width, and Debian's handwriting TrueType fonts, each digit then slanted, rotated,
elastically jittered (Simard et al. 2003), blurred and noised. Nothing is downloaded at run time.

What is not installed is skipped with a log line naming the package; with nothing installed the
domain is refused with the install commands (docs/label-free.md). Image ``i`` of a split has label
``i % 10`` and draws its glyph source and every knob from its own stream (``hand`` seeded by the
split and ``i``), so the set depends only on which fonts are installed, which the cache key holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

from ..run.streams import numpy_rng
from .folders import cached_array

log = logging.getLogger("madda_rs")

NAME = "hand-digits"
SIZE, CANVAS = 28, 128
TRAIN_IMAGES, TEST_IMAGES = 10_000, 2_000
RENDERER_VERSION = "1"
# Debian's handwriting fonts (apt-get install <package>): the package, and the font files it puts
# under /usr/share/fonts (any that hold the ten digits are used).
DEBIAN_FONTS = {
    "fonts-dkg-handwriting": "truetype/fifthhorseman",
    "fonts-breip": "truetype/breip",
    "fonts-femkeklaver": "truetype/femkeklaver",
    "fonts-humor-sans": "truetype/humor-sans",
    "fonts-rufscript": "truetype/rufscript",
    "fonts-sjfonts": "truetype/sjfonts",
    "fonts-comic-neue": "opentype/comic-neue",
    "fonts-dancingscript": "opentype/dancingscript",
}
FONT_ROOT = Path("/usr/share/fonts")
# The Hershey fonts (Hershey 1967; PyPI Hershey-Fonts) whose digits look written: script and simplex.
HERSHEY = ("scripts", "scriptc", "futural", "rowmans", "cursive")
INSTALL = ("pip install Hershey-Fonts (or 'madda-rs[domains]'), and for the TrueType ones "
           "apt-get install " + " ".join(DEBIAN_FONTS))
HEIGHT = (16.0, 22.0)
SHIFT = 2.0
ROTATION = 12.0  # degrees either way
SLANT = (-0.1, 0.4)  # x += slant * y: handwriting leans right more often than left
PEN = (3, 9)  # Hershey pen width at the 128-pixel canvas (about 0.7-2 px in the 28x28 frame)
ELASTIC = (1.5, 3.0)  # displacement scale in pixels of the 28x28 frame ...
ELASTIC_SMOOTH = 3.0  # ... of a random field smoothed by a Gaussian of this sigma (pixels)
BLUR = (0.0, 0.7)
NOISE = (0.0, 0.06)
BACKGROUND, FOREGROUND = (0.0, 0.25), (0.75, 1.0)


def glyph_sources() -> List[Tuple[str, Any]]:
    """[(kind, source)]: ('hershey', font name) and ('ttf', path) for everything installed."""
    from .synth import is_digit_font

    sources: List[Tuple[str, Any]] = []
    try:
        from HersheyFonts import HersheyFonts

        for name in HERSHEY:
            if name in HersheyFonts().default_font_names:
                sources.append(("hershey", name))
    except ImportError:
        log.info("%s: the Hershey fonts are skipped (pip install Hershey-Fonts)", NAME)
    for package, folder in DEBIAN_FONTS.items():
        files = sorted((FONT_ROOT / folder).glob("*.[ot]tf")) if (FONT_ROOT / folder).is_dir() else []
        usable = [f for f in files if _safe_is_digit_font(is_digit_font, f)]
        if not usable:
            log.info("%s: %s is not installed (or has no digits); skipped", NAME, package)
        sources += [("ttf", str(f)) for f in usable]
    if not sources:
        raise ValueError(f"{NAME} draws with handwriting fonts, and none is installed: {INSTALL}")
    return sources


def _safe_is_digit_font(check: Any, path: Path) -> bool:
    try:
        return bool(check(path))
    except Exception:  # a font FreeType cannot read, or without a charmap: not a digit font
        return False


def render(train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 1, 28, 28), int64 labels (N,)) of one split, cached per installed font set."""
    from PIL import __version__ as pillow

    sources = glyph_sources()
    count = TRAIN_IMAGES if train else TEST_IMAGES
    labels = np.arange(count, dtype=np.int64) % 10
    key = [RENDERER_VERSION, int(train), count, SIZE, pillow, [list(s) for s in sources]]

    def draw() -> np.ndarray:
        from PIL import ImageFont

        loaded = [(kind, _hershey(src) if kind == "hershey" else ImageFont.truetype(src, CANVAS // 2))
                  for kind, src in sources]
        return np.stack([render_one(numpy_rng(0, "hand", int(train), i), int(d), loaded)
                         for i, d in enumerate(labels)])

    return cached_array(f"{NAME}-{'train' if train else 'test'}", key, draw), labels


def _hershey(name: str) -> Any:
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    font.load_default_font(name)
    font.normalize_rendering(CANVAS // 2)
    return font


def _glyph(kind: str, font: Any, digit: int, pen: int) -> Any:
    """The digit drawn white on black on a CANVAS x CANVAS grey image."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "hershey":
        lines = list(font.lines_for_text(str(digit)))
        xs = [x for line in lines for x, _ in line]
        ys = [y for line in lines for _, y in line]
        ox, oy = CANVAS / 2 - (min(xs) + max(xs)) / 2, CANVAS / 2 - (min(ys) + max(ys)) / 2
        for (x0, y0), (x1, y1) in lines:  # the font's y grows upwards
            draw.line([(x0 + ox, CANVAS - (y0 + oy)), (x1 + ox, CANVAS - (y1 + oy))], fill=255, width=pen)
            for x, y in ((x0, y0), (x1, y1)):  # round pen ends
                r = pen / 2
                draw.ellipse([x + ox - r, CANVAS - (y + oy) - r, x + ox + r, CANVAS - (y + oy) + r], fill=255)
    else:
        draw.text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=font, anchor="mm")
    return canvas


def render_one(rng: np.random.Generator, digit: int, sources: List[Tuple[str, Any]]) -> np.ndarray:
    """uint8 (1, 28, 28): `digit` from one of `sources`, every knob drawn from `rng`."""
    from PIL import Image, ImageFilter
    from scipy.ndimage import gaussian_filter, map_coordinates

    kind, font = sources[rng.integers(len(sources))]
    pen = int(rng.integers(PEN[0], PEN[1] + 1))
    height = rng.uniform(*HEIGHT)
    dx, dy = rng.uniform(-SHIFT, SHIFT, 2)
    angle = np.deg2rad(rng.uniform(-ROTATION, ROTATION))
    slant = rng.uniform(*SLANT)
    strength = rng.uniform(*ELASTIC)
    field = rng.uniform(-1, 1, (2, SIZE, SIZE))
    blur, noise = rng.uniform(*BLUR), rng.uniform(*NOISE)
    ground, ink = rng.uniform(*BACKGROUND), rng.uniform(*FOREGROUND)

    glyph = _glyph(kind, font, digit, pen)
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, -slant], [0.0, 1.0]])  # y down: -slant leans right
    back = np.linalg.inv(forward)
    offset = CANVAS / 2 - back @ np.array([CANVAS / 2, CANVAS / 2])
    glyph = glyph.transform((CANVAS, CANVAS), Image.Transform.AFFINE, (*back[0], offset[0], *back[1], offset[1]),
                            resample=Image.Resampling.BILINEAR)
    box = glyph.getbbox() or (0, 0, CANVAS, CANVAS)
    left, top, right, bottom = box
    scale = min(height / max(1, bottom - top), (SIZE - 2) / max(1, right - left))
    w, h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
    small = glyph.crop(box).resize((w, h), Image.Resampling.LANCZOS)
    frame = Image.new("L", (SIZE, SIZE), 0)
    frame.paste(small, (int(np.clip(round((SIZE - w) / 2 + dx), 0, SIZE - w)),
                        int(np.clip(round((SIZE - h) / 2 + dy), 0, SIZE - h))))
    mask = np.asarray(frame.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
    # elastic jitter: every pixel moves by a smooth random field (Simard et al. 2003)
    shift = np.stack([gaussian_filter(f, ELASTIC_SMOOTH) for f in field])
    shift *= strength / max(float(np.abs(shift).max()), 1e-6)
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    mask = map_coordinates(mask, [rows + shift[0], cols + shift[1]], order=1, mode="constant")
    pixels = ground + (ink - ground) * mask + rng.normal(0.0, noise, (SIZE, SIZE))
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)[None]


__all__ = ["NAME", "render", "render_one", "glyph_sources", "DEBIAN_FONTS", "HERSHEY", "INSTALL"]
