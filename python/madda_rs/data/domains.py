"""Image domains: the registry of named ones (MNIST, USPS), the user's own (arrays, tensors, a
torchvision-style Dataset, or an .npz file), and the four image sets a run trains and scores on.

Every image set becomes float32 (N, C, H, W) in [-1, 1], scaled the same way in both domains
(pixel / 255 * 2 - 1): a scale mismatch between domains is the classic failure of ADDA ports.
Inputs are read as uint8 (or any integer type) in [0, 255], or as floats in [0, 1] (what
torchvision's ``ToTensor`` gives).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from ..run.streams import stream_seed, usps_split_rng
from . import HOLDOUT_IMAGES, synth
from .files import read_uint8, resize_usps
from .folders import FolderError, Geometry, common_geometry, is_image_folder, labelled_files, read_folder


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) float32 in [-1, 1], and labels (N,) int64 when known, on one device."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    name: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device) -> "ImageSet":
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, images=self.images.to(device), labels=labels)

    def subset(self, n: int, seed: int) -> "ImageSet":
        """`n` images drawn without replacement by a generator seeded with `seed` (all if n >= N)."""
        return self.split(n, seed)[0]

    def split(self, n: int, seed: int) -> Tuple["ImageSet", Optional["ImageSet"]]:
        """(:meth:`subset` of `n` images, the images it left out, or None when it kept all)."""
        if n >= len(self):
            return self, None
        kept, rest = self.split_rows(n, seed)
        return self._take(kept), self._take(rest)

    def split_rows(self, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The rows :meth:`split` keeps and leaves out, each in ascending order."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return order[:n].sort().values, order[n:].sort().values

    def _take(self, rows: torch.Tensor) -> "ImageSet":
        return replace(self, images=self.images[rows], labels=None if self.labels is None else self.labels[rows])

    def unlabelled(self) -> "ImageSet":
        return replace(self, labels=None)


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


# --- the registry --------------------------------------------------------------------------

# (train split?, config) -> labelled image set; a loader registered with progress=True also takes
# progress=, a tqdm-like factory (or None), for a bar while it works
Loader = Callable[..., ImageSet]


@dataclass(frozen=True)
class RegisteredDomain:
    name: str
    load: Loader
    adda_subset: Optional[int]  # training images kept by the ADDA protocol (None: all)
    progress: bool = False  # the loader takes progress=


REGISTRY: Dict[str, RegisteredDomain] = {}


def register_domain(name: str, *, adda_subset: Optional[int] = None, progress: bool = False
                    ) -> Callable[[Loader], Loader]:
    """Decorator: register `loader(train, config) -> ImageSet` under `name` (for --src/--tgt);
    with `progress`, the loader is called with progress= too."""

    def add(loader: Loader) -> Loader:
        REGISTRY[name] = RegisteredDomain(name, loader, adda_subset, progress)
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
    """Rows of torchvision's USPS training file that the pooled split (``usps_split_seed``) tests on."""
    n_train = len(read_uint8("usps", True, config.data_dir, config.download)[1])
    n_all = n_train + len(read_uint8("usps", False, config.data_dir, config.download)[1])
    test = _pooled_rows(n_all, config.usps_split_seed)[1]
    return np.sort(test[test < n_train]).astype(np.int64)


@register_domain("usps", adda_subset=1800)
def _usps(train: bool, config: TrainConfig) -> ImageSet:
    if config.usps_split == "pooled":
        images, labels = pooled_usps(train, config)
    else:
        images, labels = read_uint8("usps", train, config.data_dir, config.download)
    x = resize_usps(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1), config.usps_resize)
    return ImageSet(x.mul_(2.0).sub_(1.0), torch.from_numpy(labels.astype(np.int64)), "usps")


# All rendered images, no ADDA subset: the protocol's subsets reproduce the paper's sample sizes for
# MNIST and USPS; a synthetic set's size is already its own setting (synth_train_images).
@register_domain(synth.NAME, progress=True)
def _synth_digits(train: bool, config: TrainConfig, progress: Optional[Callable[..., Any]] = None) -> ImageSet:
    count = config.synth_train_images if train else config.synth_test_images
    images, labels = synth.render(count, seed=config.synth_seed, train=train, channels=config.channels or 1,
                                  threads=config.threads, progress=progress)
    return as_image_set((images, labels), synth.NAME)


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
    train, test, _ = _load_named_with_holdout(name, config)
    return train, test


def _load_named_with_holdout(
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
            if name == "usps" and config.usps_split == "standard":
                # a labelled tuning figure must not read digits that the pooled split tests on
                left = left[~torch.isin(left, torch.from_numpy(pooled_test_rows_of_train_file(config)))]
            train, rest = train._take(kept), train._take(left)
            rest = rest.subset(HOLDOUT_IMAGES, stream_seed(config.effective_subset_seed, "holdout", salt))
    return train, load(False, config), rest


# --- the user's own images -------------------------------------------------------------------


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


def as_image_set(data: Any, name: str = "", *, what: str = "images") -> ImageSet:
    """An :class:`ImageSet` from what a user has in hand.

    `data` is an ImageSet; an array or tensor of images, (N, C, H, W) or (N, H, W); a pair
    ``(images, labels)`` (labels may be None); or a torchvision-style Dataset whose items are
    ``(image, label)`` or ``image`` (PIL images, arrays or tensors)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = data
    elif _is_array(data):
        images, labels = data, None
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes)):
        images, labels = _from_dataset(data, what)
    else:
        raise TypeError(f"{what}: expected an array or tensor of images, an (images, labels) pair or a Dataset; "
                        f"got {type(data).__name__}")
    x = _images(images, what)
    y = None if labels is None else _labels(labels, len(x), what)
    return ImageSet(x, y, name)


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _from_dataset(ds: Any, what: str) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
    from torchvision.transforms.v2 import functional as F

    if len(ds) == 0:
        raise ValueError(f"{what}: the dataset is empty")
    images, labels = [], []
    for i in range(len(ds)):
        item = ds[i]
        img, label = item if isinstance(item, (tuple, list)) and len(item) == 2 else (item, None)
        if not _is_array(img):
            if not hasattr(img, "getbands"):
                raise TypeError(f"{what}: dataset item {i} is a {type(img).__name__}; expected a PIL image, an "
                                f"array or a tensor (optionally paired with its label)")
            img = F.pil_to_tensor(img)  # PIL image -> uint8 (C, H, W)
        images.append(torch.as_tensor(np.asarray(img)) if isinstance(img, np.ndarray) else img)
        labels.append(label)
    known = [lab is not None for lab in labels]
    if any(known) and not all(known):
        raise ValueError(f"{what}: some dataset items have labels and some do not")
    try:
        stacked = torch.stack(images)
    except RuntimeError as exc:
        raise ValueError(f"{what}: dataset images differ in shape ({exc}); resize them to one shape") from exc
    return stacked, (np.asarray([int(lab) for lab in labels]) if all(known) else None)


def _images(images: Any, what: str) -> torch.Tensor:
    if not _is_array(images):
        raise TypeError(f"{what}: expected a NumPy array or torch tensor, got {type(images).__name__}")
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(images if images.flags.writeable else images.copy())
    else:
        x = images.detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"{what}: expected shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no images (shape {tuple(x.shape)})")
    if x.shape[1] > 4 and x.shape[-1] in (1, 3, 4):
        raise ValueError(f"{what}: shape {tuple(x.shape)} looks channels-last; pass images.transpose(0, 3, 1, 2) "
                         f"(or .permute(0, 3, 1, 2)) to make it (N, C, H, W)")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{what}: expected uint8 or float images, got dtype {x.dtype}")
    if x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: images contain NaN or infinity")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must lie in [0, 1] (as torchvision's ToTensor gives), got "
                             f"[{lo:g}, {hi:g}]; pass uint8 in [0, 255] or rescale")
    else:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{what}: integer images must lie in [0, 255], got [{lo}, {hi}]")
        x = x.float().div_(255.0)
    return x.mul_(2.0).sub_(1.0).contiguous()


def _labels(labels: Any, n: int, what: str) -> torch.Tensor:
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what}: expected {n} labels in a 1-d array, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise TypeError(f"{what}: labels must be integers, got dtype {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


def match_shape(images: ImageSet, shape: Tuple[int, int, int]) -> ImageSet:
    """Resize `images` to (C, H, W) = `shape`: bilinear for H x W; 1 -> 3 channels by repetition,
    3 -> 1 by the mean."""
    from torchvision.transforms.v2 import functional as F

    c, h, w = shape
    x = images.images
    if x.shape[1] != c:
        if (x.shape[1], c) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (x.shape[1], c) == (3, 1):
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.resize(x, [h, w], antialias=True).clamp_(-1.0, 1.0)
    return replace(images, images=x.contiguous())


def resolve_geometry(config: TrainConfig, threads: Optional[int] = None) -> TrainConfig:
    """`config` with ``image_size`` and ``channels`` filled in from a folder source's most common
    size and channel count (headers only); unchanged for other sources. Either setting given for a
    source that is not a folder is a ValueError, but for channels with a synth-digits source."""
    if not is_image_folder(config.src):
        if config.image_size is not None:
            raise ValueError(f"image_size sets the size of image folders; the source {config.src!r} is not a folder")
        if config.channels is not None and config.src != synth.NAME:
            raise ValueError(f"channels sets the colour of image folders and {synth.NAME}; the source "
                             f"{config.src!r} is neither")
        return config
    if config.image_size is not None and config.channels is not None:
        return config
    common = common_geometry(Path(config.src), labelled_files(Path(config.src))[1], threads)
    return config.replace(image_size=config.image_size or (common.height, common.width),
                          channels=config.channels or common.channels)


def prepare_data(
    config: TrainConfig,
    device: torch.device,
    *,
    source: Any = None,
    target: Any = None,
    target_test: Any = None,
    source_test: Any = None,
    progress: Optional[Callable[..., Any]] = None,
) -> RunData:
    """The run's four image sets on `device`, from the given data or else from config.src/tgt
    (and the test folders config.src_test/tgt_test).

    Raises ValueError (FolderError, or DataError for dataset files) before any training: missing
    labels on the source, shapes that disagree without ``resize_to_source``, unknown names, empty
    folders, undecodable images, test classes the source lacks."""
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
    shape = src_train.shape
    fixed = []
    for s in (tgt_train, tgt_test, src_test, tgt_holdout):
        if s is not None and s.shape != shape:
            if not config.resize_to_source:
                raise ValueError(f"source images are {shape} (C, H, W) but {s.name or 'target'} images are {s.shape}; "
                                 f"pass resize_to_source=True (--resize-to-source) to resize them")
            s = match_shape(s, shape)
        fixed.append(s)
    tgt_train, tgt_test, src_test, tgt_holdout = fixed
    classes = np.unique(src_train.labels.numpy())
    names = folders.classes if folders.classes is not None else tuple(str(c) for c in classes.tolist())
    return RunData(
        src_train.to(device),
        None if src_test is None else src_test.to(device),
        tgt_train.to(device),  # type: ignore[union-attr]
        None if tgt_test is None else tgt_test.to(device),
        None if tgt_holdout is None else tgt_holdout.to(device),
        tuple(names),
    )


Sets = Tuple[ImageSet, Optional[ImageSet], Optional[ImageSet]]  # train, test, holdout


def _side(config: TrainConfig, name: str, given: Any, given_test: Any, test_folder: Optional[str], what: str,
          folders: "_FolderSide") -> Sets:
    """One domain's sets: given arrays first, else the named domain (registered, .npz, folder)."""
    if given is not None:
        train, test, holdout = as_image_set(given, name, what=what), None, None
    elif is_image_folder(name):
        train, test, holdout = folders.train(name, labelled=what == "source"), None, None
    else:
        train, test, holdout = _load_named_with_holdout(name, config, folders.progress)
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
        folder = read_folder(Path(name), self._geometry(), labelled=labelled, threads=self.config.threads,
                             progress=self.progress)
        if labelled:
            self.classes = folder.classes
        return ImageSet(_images(folder.images, name), None if folder.labels is None else torch.from_numpy(
            folder.labels), Path(name).name)

    def test(self, name: str, flag: str) -> ImageSet:
        if not is_image_folder(name):
            raise FolderError(f"{flag} {name}: not a folder (a labelled test set is a folder with one subfolder "
                              f"per class)")
        if self.classes is None:
            raise FolderError(f"{flag} {name}: test folders need a folder source (its classes name the labels)")
        folder = read_folder(Path(name), self._geometry(), labelled=True, classes=self.classes,
                             threads=self.config.threads, progress=self.progress)
        return ImageSet(_images(folder.images, name), torch.from_numpy(folder.labels), Path(name).name)
