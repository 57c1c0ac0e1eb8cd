"""The image sets one run trains and scores on (:class:`RunData`), from registered domains, .npz
files, image folders or data given in hand, checked before any training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from .domains import load_named, load_named_with_holdout
from .folders import FolderError, Geometry, is_image_folder, list_folder, read_folder
from .geometry import match_shape, resolve_geometry
from .images import FileImageSet, ImageSet, as_image_set, pixels


@dataclass(frozen=True)
class RunData:
    """What one run sees. The target's training labels are never here: the method is unsupervised."""

    src_train: ImageSet  # labelled
    src_test: Optional[ImageSet]  # labelled; scores the source model on its own domain
    tgt_train: ImageSet  # unlabelled
    tgt_test: Optional[ImageSet]  # labelled; without it a run reports only label-free figures
    # labelled target training images the run's subset left out (ADDA protocol, registered domains):
    # settings may be tuned on these, never on tgt_test
    tgt_holdout: Optional[ImageSet] = None
    # the name of each class, in the order of the sorted source labels (folder names for a folder
    # source, else the labels themselves)
    class_names: Tuple[str, ...] = ()



def prepare_data(
    config: TrainConfig,
    *,
    source: Any = None,
    target: Any = None,
    target_test: Any = None,
    source_test: Any = None,
    progress: Optional[Callable[..., Any]] = None,
) -> RunData:
    """The run's four image sets (on the CPU, as pixels: batches become floats on the device as
    they are drawn), from the given data or else from config.src/tgt (and the test folders
    config.src_test/tgt_test). A folder whose decoded images would exceed ``stream_above_mb``
    streams from its files (:class:`~.images.FileImageSet`).

    Raises ValueError (FolderError, or DataError for dataset files) before any training: missing
    labels on the source, shapes that disagree without ``resize_to_source`` or ``resize_to_target``,
    unknown names, empty folders, undecodable images, test classes the source lacks."""
    folders = _FolderSide(config, progress)
    src_train, src_test, _ = _side(config, config.src, source, source_test, config.src_test, "source", folders)
    tgt_train, tgt_test, tgt_holdout = _side(config, config.tgt, target, target_test, config.tgt_test, "target",
                                             folders)

    if src_train.labels is None:
        raise ValueError(f"the source domain {config.src!r} has no labels; the source must be labelled")
    for which, s in (("source test", src_test), ("target test", tgt_test)):
        if s is not None and s.labels is None:
            raise ValueError(f"the {which} set has no labels; a test set is for scoring and needs them")
    if len(np.unique(src_train.labels.numpy())) < 2:
        raise ValueError("the source training set has fewer than two classes")

    tgt_train = tgt_train.unlabelled()
    # one shape for all: the source's, or with resize_to_target the target's (grey 28x28 MNIST
    # becomes 3x32x32 beside MNIST-M, as Ganin et al. 2016 did)
    shape = tgt_train.shape if config.resize_to_target else src_train.shape
    if config.image_size is not None and not is_image_folder(config.src):  # every set at one size, e.g. 64 x 64
        shape = (shape[0], *config.image_size)
    fixed = []
    for s in (src_train, tgt_train, tgt_test, src_test, tgt_holdout):
        if s is not None and s.shape != shape:
            if not (config.resize_to_source or config.resize_to_target):
                raise ValueError(f"source images are {shape} (C, H, W) but {s.name or 'target'} images are {s.shape}; "
                                 f"pass resize_to_source=True (--resize-to-source) to resize them to the source's "
                                 f"shape, or resize_to_target=True (--resize-to-target) to resize the source's")
            s = match_shape(s, shape)
        fixed.append(s)
    src_train, tgt_train, tgt_test, src_test, tgt_holdout = fixed
    classes = np.unique(src_train.labels.numpy())
    names = folders.classes if folders.classes is not None else tuple(str(c) for c in classes.tolist())
    return RunData(src_train, src_test, tgt_train, tgt_test, tgt_holdout, tuple(names))  # type: ignore[arg-type]


Sets = Tuple[ImageSet, Optional[ImageSet], Optional[ImageSet]]  # train, test, holdout


def _side(config: TrainConfig, name: str, given: Any, given_test: Any, test_folder: Optional[str], what: str,
          folders: "_FolderSide") -> Sets:
    """One domain's sets: given arrays first, else the named domain (registered, .npz, folder)."""
    if given is not None:
        train, test, holdout = as_image_set(given, name, what=what), None, None
    elif is_image_folder(name):
        train, test, holdout = folders.train(name, labelled=what == "source"), None, None
    else:
        train, test, holdout = load_named_with_holdout(name, config, folders.progress)
    if given_test is not None:
        test = as_image_set(given_test, name, what=f"{what}_test")
    elif test_folder is not None:
        test = folders.test(test_folder, "--src-test" if what == "source" else "--tgt-test")
    return train, test, holdout


class _FolderSide:
    """Reads the run's image folders at one geometry: the source's classes name every label."""

    def __init__(self, config: TrainConfig, progress: Optional[Callable[..., Any]]) -> None:
        self.config, self.progress = config, progress
        self.classes: Optional[Tuple[str, ...]] = None
        self._names: Tuple[str, ...] = ()  # the classes of the folder read last
        self.geometry: Optional[Geometry] = None
        if config.image_size is not None and config.channels is not None:
            self.geometry = Geometry(config.channels, *config.image_size)

    def _geometry(self) -> Geometry:
        if self.geometry is None:
            if is_image_folder(self.config.src):
                resolved = resolve_geometry(self.config)
                self.geometry = Geometry(resolved.channels, *resolved.image_size)  # type: ignore[arg-type, misc]
            else:  # a folder target beside a registered or .npz source: the source's shape
                self.geometry = Geometry(*load_named(self.config.src, self.config)[0].shape)
        return self.geometry

    def train(self, name: str, labelled: bool) -> ImageSet:
        images = self._read(Path(name), labelled=labelled, classes=None)
        if labelled:
            self.classes = self._names
        return images

    def test(self, name: str, flag: str) -> ImageSet:
        if not is_image_folder(name):
            raise FolderError(f"{flag} {name}: not a folder (a labelled test set is a folder with one subfolder "
                              f"per class)")
        if self.classes is None:
            raise FolderError(f"{flag} {name}: test folders need a folder source (its classes name the labels)")
        return self._read(Path(name), labelled=True, classes=self.classes)

    def _read(self, root: Path, *, labelled: bool, classes: Optional[Tuple[str, ...]]) -> ImageSet:
        """The folder in memory (decoded once, cached), or streamed from its files when its decoded
        images would exceed the config's limit."""
        geometry = self._geometry()
        names, files, labels = list_folder(root, labelled=labelled, classes=classes)
        self._names = names
        if len(files) * int(np.prod(geometry.shape)) > stream_limit_bytes(self.config):
            return FileImageSet.of(files, geometry.shape, labels, root.name, self.config.workers)
        folder = read_folder(root, geometry, labelled=labelled, classes=classes, threads=self.config.threads,
                             progress=self.progress)
        y = None if folder.labels is None else torch.from_numpy(folder.labels)
        return ImageSet(pixels(folder.images, str(root)), y, root.name)


def stream_limit_bytes(config: TrainConfig) -> int:
    """``stream_above_mb`` in bytes; by default a quarter of the machine's memory."""
    if config.stream_above_mb is not None:
        return config.stream_above_mb * 2**20
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): 2 GB
        return 2 * 2**30


__all__ = ["RunData", "prepare_data", "stream_limit_bytes"]
