"""Folders of the user's own image files as domains.

A labelled folder has one subfolder per class (torchvision's ImageFolder layout; the class is the
subfolder's name, classes in sorted order). An unlabelled folder holds images at any depth. Files
are PNG, JPEG, BMP or TIFF, grey or colour, any size; each is decoded with Pillow, converted to
the run's channel count and resized to its size, in parallel threads (Pillow decodes without the
GIL) behind an optional progress bar.

Decoded folders are cached as one uint8 array per folder and geometry, keyed by every file's path,
size and modification time, so a second run over a large folder starts in seconds. The cache is
``$MADDA_CACHE_DIR``, else ``~/.cache/madda_rs/folders``.

Every problem is a :class:`FolderError` (a ValueError) naming the path, raised before training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .decode import GREY_MODES, IMAGE_SUFFIXES, decode_images, image_files

CACHE_ENV = "MADDA_CACHE_DIR"
CACHE_FORMAT = 1

Progress = Callable[..., Any]  # a tqdm-like factory: progress(total=, desc=) -> bar with update(), close()


class FolderError(ValueError):
    """An image folder that cannot be a domain: empty, unreadable, too few classes, a bad file."""


@dataclass(frozen=True)
class Geometry:
    """What every image of a run becomes: `channels` x `size` x `size` (size may be (H, W))."""

    channels: int
    height: int
    width: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.channels, self.height, self.width


@dataclass(frozen=True)
class FolderImages:
    """A decoded folder: uint8 (N, C, H, W), labels (N,) as indices into `classes` (None when
    unlabelled), and each image's path relative to the folder."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    classes: Tuple[str, ...]
    paths: Tuple[str, ...]


def is_image_folder(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def labelled_files(root: Path) -> Tuple[Tuple[str, ...], List[Path], np.ndarray]:
    """(class names, files, class index per file) of an ImageFolder-layout folder."""
    root = _existing(root)
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        loose = image_files(root)
        raise FolderError(f"{root}: no class subfolders (expected one subfolder of images per class"
                          + (f"; found {len(loose)} images directly in it" if loose else "") + ")")
    files: List[Path] = []
    labels: List[int] = []
    for i, name in enumerate(classes):
        mine = image_files(root / name)
        if not mine:
            raise FolderError(f"{root / name}: a class folder without images ({', '.join(IMAGE_SUFFIXES)})")
        files += mine
        labels += [i] * len(mine)
    return classes, files, np.asarray(labels, dtype=np.int64)


def unlabelled_files(root: Path) -> List[Path]:
    root = _existing(root)
    files = image_files(root)
    if not files:
        raise FolderError(f"{root}: no images at any depth ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _existing(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderError(f"{root}: not a folder")
    return root


def common_geometry(root: Path, files: Sequence[Path], threads: Optional[int] = None) -> Geometry:
    """The most common size and channel count among `files` under `root` (headers only, nothing
    decoded; cached like the decoded folders)."""
    from PIL import Image

    cached = cache_dir() / f"{root.name}-{_listing_digest(root, files, 'geometry')}.json"
    if cached.is_file():
        return Geometry(*json.loads(cached.read_text()))

    def header(path: Path) -> Tuple[int, int, int]:
        try:
            with Image.open(path) as im:
                return (1 if im.mode in GREY_MODES else 3), im.height, im.width
        except Exception as exc:  # Pillow raises many types for a bad file
            raise FolderError(f"{path}: cannot be read as an image ({exc})") from None

    with ThreadPoolExecutor(_workers(threads)) as pool:
        counts = Counter(pool.map(header, files))
    common = Geometry(*counts.most_common(1)[0][0])
    write_cache(cached, json.dumps(list(common.shape)).encode())
    return common


def list_folder(root: Path, *, labelled: bool, classes: Optional[Sequence[str]] = None,
                ) -> Tuple[Tuple[str, ...], List[Path], Optional[np.ndarray]]:
    """(class names, files, labels) of a folder, nothing decoded. With `labelled`, the class
    subfolders' names must be among `classes` when given (the source's), and labels index into
    them, so a test folder lacking some of the source's classes still labels by the source's."""
    root = _existing(root)
    if not labelled:
        return (), unlabelled_files(root), None
    names, files, labels = labelled_files(root)
    if classes is not None:
        unknown = [c for c in names if c not in classes]
        if unknown:
            raise FolderError(f"{root}: classes {', '.join(unknown)} are not among the source's "
                              f"({', '.join(classes)})")
        labels = np.asarray([list(classes).index(names[i]) for i in labels], dtype=np.int64)
        names = tuple(classes)
    if classes is None and len(names) < 2:
        raise FolderError(f"{root}: {len(names)} class folder ({names[0]}); a labelled source needs at least two")
    return names, files, labels


def read_folder(root: Path, geometry: Geometry, *, labelled: bool, classes: Optional[Sequence[str]] = None,
                threads: Optional[int] = None, progress: Optional[Progress] = None) -> FolderImages:
    """Decode a folder (cached); classes and labels as :func:`list_folder` gives them."""
    root = _existing(root)
    names, files, labels = list_folder(root, labelled=labelled, classes=classes)
    rel = tuple(str(f.relative_to(root)) for f in files)
    cached = cache_dir() / f"{root.name}-{_listing_digest(root, files, list(geometry.shape))}.npy"
    if cached.is_file():
        images = np.load(cached, allow_pickle=False)
    else:
        images = _decode(files, geometry, threads, progress, desc=f"decoding {root.name}")
        buffer = io.BytesIO()
        np.save(buffer, images)
        write_cache(cached, buffer.getvalue())
    return FolderImages(images, labels, tuple(names), rel)


def _decode(files: List[Path], geometry: Geometry, threads: Optional[int], progress: Optional[Progress],
            desc: str) -> np.ndarray:
    bar = progress(total=len(files), desc=desc) if progress is not None else None
    try:
        return decode_images(files, geometry.shape, threads, on_image=None if bar is None else bar.update)
    except ValueError as exc:  # a truncated or corrupt file, named
        raise FolderError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()


def _workers(threads: Optional[int]) -> int:
    return threads or min(32, (os.cpu_count() or 1) * 2)  # decoding also waits on the disk


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "madda_rs" / "folders").expanduser()


def _listing_digest(root: Path, files: Sequence[Path], what: Any) -> str:
    """A key of this folder's exact contents (every file's path, size, mtime) and of `what`."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, str(root.resolve()), what]).encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cached_array(name: str, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
    """`make()`'s array, stored in the cache under `name` and a digest of `key` (JSON), so a
    generated domain is drawn once per machine and read back in a second thereafter."""
    path = cache_dir() / f"{name}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    array = make()
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_cache(path, buffer.getvalue())  # an unwritable cache costs the next run time only
    return array


def write_cache(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename; an unwritable cache only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


__all__ = ["FolderError", "Geometry", "FolderImages", "is_image_folder", "read_folder", "list_folder",
           "common_geometry", "labelled_files", "unlabelled_files", "IMAGE_SUFFIXES", "cached_array", "cache_dir",
           "write_cache"]
