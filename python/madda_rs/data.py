"""MNIST and USPS as whole tensors in [-1, 1], read through torchvision.

Both domains end up as float32 (N, 1, 28, 28) tensors scaled the same way (pixel / 255 * 2 - 1):
a scale mismatch between domains is the classic failure of ADDA ports. USPS is 16x16 with the
digit filling the frame; `usps_resize` chooses how it reaches 28x28:

* ``box20``: resize to 20x20 and centre in a 28x28 frame, the box MNIST digits occupy;
* ``stretch``: resize straight to 28x28.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

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
}
DOWNLOAD_TIMEOUT_S = 10.0


class DataError(RuntimeError):
    """A data file is missing, unreadable or corrupt; the message says which and how to get it."""


@dataclass(frozen=True)
class Domain:
    """One split of one domain, on its device: images (N, 1, 28, 28) in [-1, 1], labels (N,) int64."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_data_dir() -> Path:
    """``MADDA_DATA_DIR``, else the per-user cache (``$XDG_CACHE_HOME/madda_rs`` or ``~/.cache/madda_rs``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "madda_rs"


def load_domain(
    name: str,
    train: bool,
    data_dir: Optional[os.PathLike] = None,
    *,
    download: bool = True,
    usps_resize: str = "box20",
    subset: Optional[int] = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Domain:
    """Load a split as tensors on `device`.

    Args:
        name: 'mnist' or 'usps'.
        train: training split (else test).
        data_dir: folder in torchvision's layout (default: :func:`default_data_dir`).
        download: fetch missing files through torchvision; if False, a missing file is an error.
        usps_resize: 'box20' or 'stretch' (USPS only).
        subset: keep this many images, drawn without replacement by a generator seeded with `seed`.
        device: where the tensors live.

    Raises:
        DataError: a file is missing and cannot be fetched, or cannot be read.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    images, labels = _read_uint8(name, train, root, download)
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
    if name == "usps":
        x = resize_usps(x, usps_resize)
    x = x.mul_(2.0).sub_(1.0)
    y = torch.from_numpy(labels.astype(np.int64))
    if subset is not None and subset < len(y):
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(y), generator=gen)[:subset].sort().values
        x, y = x[keep], y[keep]
    return Domain(name, x.contiguous().to(device), y.to(device))


def resize_usps(x: torch.Tensor, how: str) -> torch.Tensor:
    """(N, 1, 16, 16) in [0, 1] to (N, 1, 28, 28) in [0, 1]."""
    from torchvision.transforms.v2 import functional as F

    if how == "stretch":
        return F.resize(x, [28, 28], antialias=True).clamp_(0, 1)
    if how == "box20":
        return F.pad(F.resize(x, [20, 20], antialias=True).clamp_(0, 1), [4, 4, 4, 4], fill=0.0)
    raise ValueError(f"usps_resize must be 'box20' or 'stretch', got {how!r}")


def _read_uint8(name: str, train: bool, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    if name not in ("mnist", "usps"):
        raise ValueError(f"domain must be 'mnist' or 'usps', got {name!r}")
    missing = [f for f in REQUIRED_FILES[(name, train)] if not (root / f).is_file()]
    if missing and not download:
        raise DataError(_missing_message(name, root, missing, "downloading is off (--no-download)"))
    cls = tvd.MNIST if name == "mnist" else tvd.USPS
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
    return data.astype(np.uint8, copy=False), targets


def _missing_message(name: str, root: Path, missing: list[str], why: str) -> str:
    paths = ", ".join(str(root / f) for f in missing)
    return (
        f"{name.upper()} file(s) missing: {paths}; {why}. Point --data-dir (or {DATA_DIR_ENV}) at a folder "
        f"in torchvision's layout, or run once with internet access so that "
        f"torchvision.datasets.{'MNIST' if name == 'mnist' else 'USPS'}(root, download=True) fetches them."
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
