"""Registered image domains (``--src``/``--tgt`` by name): MNIST, USPS, synth-digits, and the
development domains (Fashion-MNIST, photo composites, seven-segment and handwriting-font digits), each one decorated
loader, and .npz files of the user's own images. A domain's particulars (USPS's pooled
split, which rows its holdout leaves out; synth-digits drawing grey or colour) are declared where it
registers, so the generic loading code (:mod:`.run_data`) names no domain."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from ..run.streams import stream_seed, usps_split_rng
from . import HOLDOUT_IMAGES, composite, hand, seven_segment, synth
from .files import read_uint8, resize_usps
from .folders import is_image_folder
from .images import ImageSet, as_image_set

# (train split?, config) -> labelled image set; a loader registered with progress=True also takes
# progress=, a tqdm-like factory (or None), for a bar while it works
Loader = Callable[..., ImageSet]


# A domain's rows of its training file that its labelled holdout must leave out (see
# RegisteredDomain.holdout_excludes)
Excludes = Callable[[TrainConfig], np.ndarray]


@dataclass(frozen=True)
class RegisteredDomain:
    name: str
    load: Loader
    adda_subset: Optional[int]  # training images kept by the ADDA protocol (None: all)
    progress: bool = False  # the loader takes progress=
    takes_channels: bool = False  # the loader draws grey or colour images as --channels says
    # rows of the training split that the holdout (labelled images the ADDA subset left out, for
    # tuning) must not hold: images that another split of the same domain tests on
    holdout_excludes: Optional[Excludes] = None


REGISTRY: Dict[str, RegisteredDomain] = {}


def register_domain(name: str, *, adda_subset: Optional[int] = None, progress: bool = False,
                    takes_channels: bool = False, holdout_excludes: Optional[Excludes] = None
                    ) -> Callable[[Loader], Loader]:
    """Decorator: register `loader(train, config) -> ImageSet` under `name` (for --src/--tgt);
    with `progress`, the loader is called with progress= too. See :class:`RegisteredDomain`."""

    def add(loader: Loader) -> Loader:
        REGISTRY[name] = RegisteredDomain(name, loader, adda_subset, progress, takes_channels, holdout_excludes)
        return loader

    return add


# The ADDA protocol (Tzeng et al. 2017; M-ADDA Table 1): 2,000 MNIST and 1,800 USPS training images.
@register_domain("mnist", adda_subset=2000)
def _mnist(train: bool, config: TrainConfig) -> ImageSet:
    images, labels = read_uint8("mnist", train, config.data_dir, config.download)
    return as_image_set((images, labels), "mnist")


# The paper's code read CoGAN's USPS file: all 9,298 digits re-split 80/20 (7,438 / 1,860).
POOLED_USPS_TRAIN, POOLED_USPS_ALL = 7438, 9298


def pooled_usps(train: bool, config: TrainConfig) -> Tuple[np.ndarray, np.ndarray]:
    """The 'pooled' split: torchvision's train and test USPS together, permuted by
    ``usps_split_seed``; the first 7,438 train, the other 1,860 test (in that proportion when the
    files hold other than 9,298 digits, as small test copies do)."""
    parts = [read_uint8("usps", split, config.data_dir, config.download) for split in (True, False)]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keep = _pooled_rows(len(labels), config.usps_split_seed)[0 if train else 1]
    return images[keep], labels[keep]


def _pooled_rows(n_all: int, split_seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows) of the pooled split, as rows of the training file then the test file."""
    order = usps_split_rng(split_seed).permutation(n_all)
    n_train = round(n_all * POOLED_USPS_TRAIN / POOLED_USPS_ALL)
    return order[:n_train], order[n_train:]


def pooled_test_rows_of_train_file(config: TrainConfig) -> np.ndarray:
    """Rows of torchvision's USPS training file that the pooled split (``usps_split_seed``) tests on:
    a labelled tuning figure of a standard-split run must not read them."""
    if config.usps_split != "standard":
        return np.zeros(0, np.int64)  # the pooled split's own training rows test nothing
    n_train = len(read_uint8("usps", True, config.data_dir, config.download)[1])
    n_all = n_train + len(read_uint8("usps", False, config.data_dir, config.download)[1])
    test = _pooled_rows(n_all, config.usps_split_seed)[1]
    return np.sort(test[test < n_train]).astype(np.int64)


@register_domain("usps", adda_subset=1800, holdout_excludes=pooled_test_rows_of_train_file)
def _usps(train: bool, config: TrainConfig) -> ImageSet:
    if config.usps_split == "pooled":
        images, labels = pooled_usps(train, config)
    else:
        images, labels = read_uint8("usps", train, config.data_dir, config.download)
    x = resize_usps(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1), config.usps_resize)
    return ImageSet(x.mul_(2.0).sub_(1.0), torch.from_numpy(labels.astype(np.int64)), "usps")


# All rendered images, no ADDA subset: the protocol's subsets reproduce the paper's sample sizes for
# MNIST and USPS; a synthetic set's size is already its own setting (synth_train_images).
@register_domain(synth.NAME, progress=True, takes_channels=True)
def _synth_digits(train: bool, config: TrainConfig, progress: Optional[Callable[..., Any]] = None) -> ImageSet:
    count = config.synth_train_images if train else config.synth_test_images
    images, labels = synth.render(count, seed=config.synth_seed, train=train, channels=config.channels or 1,
                                  threads=config.threads, progress=progress)
    return as_image_set((images, labels), synth.NAME)


# Development domains (docs/label-free.md): tasks whose targets are neither MNIST nor USPS, where
# label-free choices may be rated on their own targets' labels.
@register_domain("fashion-mnist", adda_subset=2000)
def _fashion_mnist(train: bool, config: TrainConfig) -> ImageSet:
    images, labels = read_uint8("fashion-mnist", train, config.data_dir, config.download)
    return as_image_set((images, labels), "fashion-mnist")


# Composites onto photographs (MNIST-M's recipe), 32x32 RGB; ADDA-protocol subsets of a target's size.
@register_domain("fashion-m", adda_subset=1800)
def _fashion_m(train: bool, config: TrainConfig) -> ImageSet:
    images, labels = read_uint8("fashion-mnist", train, config.data_dir, config.download)
    return as_image_set((composite.composite(images, "fashion-m", train), labels), "fashion-m")


@register_domain("mnist-m", adda_subset=1800)
def _mnist_m(train: bool, config: TrainConfig) -> ImageSet:
    images, labels = read_uint8("mnist", train, config.data_dir, config.download)
    return as_image_set((composite.composite(images, "mnist-m", train), labels), "mnist-m")


@register_domain(seven_segment.NAME, adda_subset=1800)
def _seven_segment(train: bool, config: TrainConfig) -> ImageSet:
    return as_image_set(seven_segment.render(train), seven_segment.NAME)


@register_domain(hand.NAME, adda_subset=1800)
def _hand_digits(train: bool, config: TrainConfig) -> ImageSet:
    return as_image_set(hand.render(train), hand.NAME)


def load_npz(path: os.PathLike | str) -> Tuple[ImageSet, Optional[ImageSet]]:
    """An .npz with ``images`` and ``labels`` (labels optional for a target), and optionally
    ``test_images`` with ``test_labels``."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as an .npz file: {exc}") from exc
    if "images" not in arrays:
        raise ValueError(f"{path} has no 'images' array (it has: {', '.join(arrays) or 'nothing'})")
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise ValueError(f"{path}: 'test_images' and 'test_labels' must come together")
    name = path.stem
    train = as_image_set((arrays["images"], arrays.get("labels")), name, what=f"{path}: images")
    test = None
    if "test_images" in arrays:
        test = as_image_set((arrays["test_images"], arrays["test_labels"]), name, what=f"{path}: test_images")
    return train, test




def check_domain_name(name: str) -> None:
    """A registered name, an existing .npz file or a folder; anything else is a ValueError saying which."""
    if name in REGISTRY or is_image_folder(name):
        return
    if name.endswith(".npz"):
        if not Path(name).expanduser().is_file():
            raise ValueError(f"domain file {name} does not exist")
        return
    raise ValueError(f"{name!r} is neither a registered domain ({', '.join(REGISTRY)}), nor an .npz file, nor a "
                     f"folder of images")




def load_named(name: str, config: TrainConfig) -> Tuple[ImageSet, Optional[ImageSet]]:
    """(training set, test set or None) of a registered domain or an .npz file.

    The ADDA protocol keeps a seeded subset of a registered domain's training images."""
    train, test, _ = load_named_with_holdout(name, config)
    return train, test


def load_named_with_holdout(
    name: str, config: TrainConfig, progress: Optional[Callable[..., Any]] = None
) -> Tuple[ImageSet, Optional[ImageSet], Optional[ImageSet]]:
    """:func:`load_named` plus up to HOLDOUT_IMAGES labelled training images its subset left out."""
    check_domain_name(name)
    if name.endswith(".npz") and name not in REGISTRY:
        return (*load_npz(name), None)
    domain = REGISTRY[name]
    load = partial(domain.load, progress=progress) if domain.progress else domain.load
    train, rest = load(True, config), None
    if config.protocol == "adda" and domain.adda_subset is not None:
        # one subset stream per domain name, so MNIST's draw does not depend on which USPS ran beside it
        salt = zlib.crc32(name.encode())
        seed = stream_seed(config.effective_subset_seed, "subset", salt)
        if domain.adda_subset < len(train):
            kept, left = train.split_rows(domain.adda_subset, seed)
            if domain.holdout_excludes is not None:
                left = left[~torch.isin(left, torch.from_numpy(domain.holdout_excludes(config)))]
            train, rest = train.take(kept), train.take(left)
            rest = rest.subset(HOLDOUT_IMAGES, stream_seed(config.effective_subset_seed, "holdout", salt))
    return train, load(False, config), rest


__all__ = ["REGISTRY", "RegisteredDomain", "register_domain", "check_domain_name", "load_named",
           "load_named_with_holdout", "load_npz", "pooled_usps", "POOLED_USPS_TRAIN", "POOLED_USPS_ALL"]
