"""Write digit domains that madda_rs was never tuned on, as .npz files for `--src` / `--tgt`.

    python scripts/made_up_domains.py --out domains [--data-dir DIR]
    madda-rs train --src usps --tgt domains/mnist-slant-thick.npz --preset improved

Both are made from the MNIST *test* images (so they share no image with MNIST training), split
8,000 / 2,000 into unlabelled-for-training / labelled test images:

- ``mnist-slant-thick``: each digit rotated by 30 degrees and its strokes thickened (a 3x3
  maximum filter), a shift in geometry and stroke width;
- ``mnist-negative``: the intensities inverted (white background), a shift that a LeNet trained
  on dark backgrounds barely survives: the hard case for a safeguard.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from madda_rs.data.files import read_uint8

TRAIN_SHARE = 0.8  # of the MNIST test images (8,000 of 10,000); the rest is the domain's test set


def slant_thick(images: torch.Tensor) -> torch.Tensor:
    rotated = TF.rotate(images, 30.0, interpolation=TF.InterpolationMode.BILINEAR)
    return F.max_pool2d(rotated.float(), 3, stride=1, padding=1).round().to(torch.uint8)


def negative(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


DOMAINS = {"mnist-slant-thick": slant_thick, "mnist-negative": negative}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="domains", help="folder for the .npz files [default: domains]")
    parser.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout [default: $MADDA_DATA_DIR]")
    args = parser.parse_args()
    images, labels = read_uint8("mnist", False, args.data_dir, download=True)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = torch.from_numpy(images[order]).unsqueeze(1), labels[order]
    cut = int(len(labels) * TRAIN_SHARE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in DOMAINS.items():
        x = make(images).squeeze(1).numpy()
        np.savez_compressed(out / f"{name}.npz", images=x[:cut], labels=labels[:cut], test_images=x[cut:],
                            test_labels=labels[cut:])
        print(f"{out / name}.npz: {cut} training and {len(x) - cut} test images")


if __name__ == "__main__":
    main()
