"""Small generated MNIST, USPS and Fashion-MNIST files in torchvision's layout, for machines without the real data.

Each class is a bright bar at a class-dependent place, so a model trained for two epochs beats
chance; the files go through the same torchvision readers as the real ones."""

from __future__ import annotations

import bz2
import struct
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _digits(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, size, size)) * 40).astype(np.uint8)
    # MNIST digits sit in the central 20x20 box, USPS digits fill their 16x16 frame: after
    # madda_rs's 'box20' resize the same class lands in the same place in both domains.
    offset, extent = (4, 20) if size == 28 else (0, size)
    for i, c in enumerate(labels):
        row = offset + (c * (extent - 2)) // 9
        images[i, row : row + 2, offset + 2 : offset + extent - 2] = 255
    return images, labels


def _write_idx(path: Path, images: np.ndarray, labels: np.ndarray, stem: str) -> None:
    n = len(labels)
    (path / f"{stem}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (path / f"{stem}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def _write_usps(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    values = images.reshape(len(labels), -1) / 127.5 - 1.0
    lines = [
        f"{c + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(row)) for c, row in zip(labels, values)
    ]
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def make_data_dir(root: Path, n_train: int = 600, n_test: int = 300, n_train_usps: int | None = None) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _write_idx(raw, *_digits(n_train, 28, 0), "train")
    _write_idx(raw, *_digits(n_test, 28, 1), "t10k")
    _write_usps(root / "usps.bz2", *_digits(n_train if n_train_usps is None else n_train_usps, 16, 2))
    _write_usps(root / "usps.t.bz2", *_digits(n_test, 16, 3))
    fashion = root / "FashionMNIST" / "raw"  # Fashion-MNIST's layout, bars standing in for clothes
    fashion.mkdir(parents=True, exist_ok=True)
    _write_idx(fashion, *_digits(n_train, 28, 4), "train")
    _write_idx(fashion, *_digits(n_test, 28, 5), "t10k")
    return root


def bars(n: int, size: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A user's own images: (n, channels, size, size) uint8 bars, one place per class, and labels."""
    images, labels = _digits(n, 28, seed)
    if size != 28:
        import torch
        import torch.nn.functional as F

        images = F.interpolate(torch.from_numpy(images).float()[:, None], size=(size, size), mode="bilinear")
        images = images[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return np.repeat(images[:, None], channels, axis=1), labels.astype(np.int64)
