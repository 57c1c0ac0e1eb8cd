"""Write a small tree of PNG folders, as a user would bring them, for `madda-rs train --src DIR`.

    python scripts/image_folders.py --out digits [--data-dir DIR] [--per-class 100]

    digits/mnist/<class>/*.png       labelled source: MNIST training digits, one folder per class
    digits/usps/*.png                unlabelled target: USPS training digits (16 x 16), no classes
    digits/usps-test/<class>/*.png   labelled target test set: USPS test digits, for scoring only
    digits/new/*.png                 images that arrive later: other USPS test digits, unlabelled

Class folders are named by words ("zero" ... "nine"), so every output shows class names. The
images are PNG files at their datasets' own sizes (28 x 28 and 16 x 16): the run resizes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from madda_rs.data.files import read_uint8

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of each class (all when fewer), in a seeded order."""
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])


def _write(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, root: Path, by_class: bool, tag: str) -> None:
    for i in rows:
        folder = root / NAMES[labels[i]] if by_class else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{tag}{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (must not exist)")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST/USPS in torchvision's layout (default: $MADDA_DATA_DIR)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class in each folder [100]")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out {out} exists; choose a new folder")
    rng = np.random.default_rng(0)
    mnist, mnist_y = read_uint8("mnist", True, args.data_dir, False)
    usps, usps_y = read_uint8("usps", True, args.data_dir, False)
    usps_test, usps_test_y = read_uint8("usps", False, args.data_dir, False)
    _write(mnist, mnist_y, _pick(mnist_y, args.per_class, rng), out / "mnist", True, "m")
    _write(usps, usps_y, _pick(usps_y, args.per_class, rng), out / "usps", False, "u")
    test = rng.permutation(_pick(usps_test_y, 2 * args.per_class // 5 + 1, rng))  # both halves hold every class
    half = len(test) // 2
    _write(usps_test, usps_test_y, test[:half], out / "usps-test", True, "t")
    _write(usps_test, usps_test_y, test[half:], out / "new", False, "n")
    print(f"written: {out}/mnist (labelled), {out}/usps (unlabelled), {out}/usps-test (labelled), {out}/new")


if __name__ == "__main__":
    main()
