"""A figure of the development and colour domains: the first twelve test images of each (one row a
domain), as a run reads them.

    python scripts/domain_figures.py [--out docs/figures/domains.png] [--data-dir DIR]
"""

from __future__ import annotations

import argparse

import numpy as np

from madda_rs.config import TrainConfig
from madda_rs.data.domains import load_named

DOMAINS = ("mnist", "fashion-mnist", "fashion-m", "mnist-m", "seven-segment", "hand-digits", "synth-digits")
SHOWN = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/figures/domains.png")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(DOMAINS), SHOWN, figsize=(SHOWN * 0.8, len(DOMAINS) * 0.9))
    for row, name in zip(axes, DOMAINS):
        config = TrainConfig(src=name, tgt="usps" if name != "usps" else "mnist", data_dir=args.data_dir,
                             protocol="full", download=False)
        test = load_named(name, config)[1]
        pixels = ((test.floats()[:SHOWN] + 1) / 2).clamp(0, 1).numpy()
        for ax, img, label in zip(row, pixels, test.labels[:SHOWN].tolist()):
            ax.imshow(np.transpose(img, (1, 2, 0)).squeeze(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(label), fontsize=7, pad=1)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.3)
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
