"""Draw docs/figures/synth-grid.png: synth-digits (grey, and colour as at --channels 3) beside MNIST
and USPS, ten of each digit, one row per digit, every image as a run would see it (28 x 28).

    python scripts/synth_figures.py [--data-dir ../shared/data] [--out docs/figures/synth-grid.png]

The synth images are each set's first 100 (the first ten of each digit), so they are also the
first images of the default 20,000; MNIST's and USPS's are drawn from their training splits by the
`figures` stream.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from madda_rs.config import TrainConfig
from madda_rs.data.domains import load_named
from madda_rs.data.images import ImageSet
from madda_rs.run.streams import numpy_rng

PER_DIGIT = 10


def _grid(images: torch.Tensor) -> np.ndarray:
    """(H, W, 3) in [0, 1]: images (10 * PER_DIGIT, C, 28, 28) in [-1, 1], digit-major, as rows."""
    x = (images.numpy() + 1) / 2
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.5)  # a grey line between images
    n, c, h, w = x.shape
    return x.reshape(10, PER_DIGIT, c, h, w).transpose(0, 3, 1, 4, 2).reshape(10 * h, PER_DIGIT * w, c)


def _by_digit(images: ImageSet, rng: np.random.Generator) -> torch.Tensor:
    labels = images.labels.numpy()
    rows = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:PER_DIGIT] for d in range(10)])
    return images.images[torch.from_numpy(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MNIST/USPS in torchvision's layout (default: "
                        "$MADDA_DATA_DIR)")
    parser.add_argument("--out", default="docs/figures/synth-grid.png", help="the PNG to write")
    args = parser.parse_args()
    from matplotlib.figure import Figure

    config = TrainConfig(src="synth-digits", tgt="mnist", data_dir=args.data_dir, download=False,
                         synth_train_images=10 * PER_DIGIT)
    rng = numpy_rng(0, "figures")
    order = torch.from_numpy(np.argsort(np.arange(10 * PER_DIGIT) % 10, kind="stable"))  # digit-major
    panels = {
        "synth-digits": load_named("synth-digits", config)[0].images[order],
        "synth-digits, --channels 3": load_named("synth-digits", config.replace(channels=3))[0].images[order],
        "MNIST": _by_digit(load_named("mnist", config.replace(protocol="full"))[0], rng),
        "USPS (box20)": _by_digit(load_named("usps", config.replace(protocol="full"))[0], rng),
    }
    fig = Figure(figsize=(3.3 * len(panels), 3.7), layout="constrained")
    for ax, (title, images) in zip(fig.subplots(1, len(panels)), panels.items()):
        ax.imshow(_grid(images), interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)  # about one screen pixel per image pixel
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: the noisy tiles make a full-colour PNG three times the size, for no visible gain
    Image.open(buffer).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
