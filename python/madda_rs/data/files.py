"""MNIST, USPS and Fashion-MNIST files, read through torchvision: where they live, and clear errors when they
are missing or corrupt. Turning them into training tensors is :mod:`madda_rs.data.domains`' job.

USPS is 16x16 with the digit filling the frame; `usps_resize` chooses how it reaches 28x28:

* ``box20``: resize to 20x20 and centre in a 28x28 frame, the box MNIST digits occupy;
* ``stretch``: resize straight to 28x28.
"""

from __future__ import annotations

import functools
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

DATA_DIR_ENV = "MADDA_DATA_DIR"
# The ADDA protocol (Tzeng et al. 2017; M-ADDA Table 1): training subsets drawn at random.
ADDA_SUBSET = {"mnist": 2000, "usps": 1800}
# Files torchvision reads, relative to the data directory.
REQUIRED_FILES = {
    ("mnist", True): ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte"],
    ("mnist", False): ["MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"],
    ("usps", True): ["usps.bz2"],
    ("usps", False): ["usps.t.bz2"],
    ("fashion-mnist", True): ["FashionMNIST/raw/train-images-idx3-ubyte",
                              "FashionMNIST/raw/train-labels-idx1-ubyte"],
    ("fashion-mnist", False): ["FashionMNIST/raw/t10k-images-idx3-ubyte", "FashionMNIST/raw/t10k-labels-idx1-ubyte"],
}
# the torchvision dataset class that reads (and downloads) each
DATASETS = {"mnist": "MNIST", "usps": "USPS", "fashion-mnist": "FashionMNIST"}
DOWNLOAD_TIMEOUT_S = 10.0


class DataError(RuntimeError):
    """A data file is missing, unreadable or corrupt; the message says which and how to get it."""


def default_data_dir() -> Path:
    """``MADDA_DATA_DIR``, else the per-user cache (``$XDG_CACHE_HOME/madda_rs`` or ``~/.cache/madda_rs``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "madda_rs"


def resize_usps(x: torch.Tensor, how: str) -> torch.Tensor:
    """(N, 1, 16, 16) in [0, 1] to (N, 1, 28, 28) in [0, 1]."""
    from torchvision.transforms.v2 import functional as F

    if how == "stretch":
        return F.resize(x, [28, 28], antialias=True).clamp_(0, 1)
    if how == "box20":
        return F.pad(F.resize(x, [20, 20], antialias=True).clamp_(0, 1), [4, 4, 4, 4], fill=0.0)
    if how == "pad3":  # CoGAN's alignment: 3 pixels a side matched the MNIST mean digit best
        return F.resize(F.pad(x, [3, 3, 3, 3], fill=0.0), [28, 28], antialias=True).clamp_(0, 1)
    raise ValueError(f"usps_resize must be 'box20', 'stretch' or 'pad3', got {how!r}")


def read_uint8(
    name: str, train: bool, data_dir: Optional[os.PathLike | str], download: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and (N,) int64 labels of one split ('mnist', 'usps' or 'fashion-mnist').

    Read once per process and file version: runs in one process (tests, ``reproduce``) share it.
    The arrays are shared, so callers must not write to them.

    Raises:
        DataError: a file is missing and cannot be fetched, or cannot be read.
    """
    if name not in DATASETS:
        raise ValueError(f"domain must be one of {', '.join(DATASETS)}, got {name!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    files = [root / f for f in REQUIRED_FILES[(name, train)]]
    stamps = tuple(f.stat().st_mtime_ns if f.is_file() else None for f in files)
    return _read_cached(name, train, root, download, stamps)


@functools.lru_cache(maxsize=4)
def _read_cached(name: str, train: bool, root: Path, download: bool, _stamps: tuple) -> Tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    missing = [f for f in REQUIRED_FILES[(name, train)] if not (root / f).is_file()]
    if missing and not download:
        raise DataError(_missing_message(name, root, missing, "downloading is off (--no-download)"))
    cls = getattr(tvd, DATASETS[name])
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            ds = cls(str(root), train=train, download=bool(missing))
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError, ...
        if missing:
            raise DataError(_missing_message(name, root, missing, f"the download failed ({exc})")) from exc
        files = ", ".join(str(root / f) for f in REQUIRED_FILES[(name, train)])
        raise DataError(
            f"could not read {name.upper()} ({'train' if train else 'test'}) from {files}: {exc}. "
            f"The file may be corrupt: delete it and let torchvision fetch it again, or copy a good one there."
        ) from exc
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    targets = np.asarray(ds.targets, dtype=np.int64)
    data, targets = data.astype(np.uint8, copy=False), targets
    data.flags.writeable = False
    targets.flags.writeable = False
    return data, targets


def _missing_message(name: str, root: Path, missing: list[str], why: str) -> str:
    paths = ", ".join(str(root / f) for f in missing)
    return (
        f"{name.upper()} file(s) missing: {paths}; {why}. Point --data-dir (or {DATA_DIR_ENV}) at a folder "
        f"in torchvision's layout, or run once with internet access so that "
        f"torchvision.datasets.{DATASETS[name]}(root, download=True) fetches them."
    )


@contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urllib calls have no timeout of their own; without one a dead network hangs.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
