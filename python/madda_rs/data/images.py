"""Image sets: what a run trains and scores on, kept as pixels on the CPU and turned into model
input one batch at a time on the device.

Model input is float32 (N, C, H, W) in [-1, 1], the same scale in every domain (pixel / 255 * 2
- 1): a scale mismatch between domains is the classic failure of ADDA ports. A backbone maps it to
its own normalisation inside the model (:mod:`madda_rs.backbones`).

Two kinds of set, one interface (``len``, ``shape``, ``labels``, :meth:`ImageSet.batch`,
:meth:`ImageSet.stream`):

* :class:`ImageSet` holds its images in memory: uint8 pixels (4x smaller than floats; 28x28
  digits, small folders, arrays), or float32 already in [-1, 1] for a domain made by resampling
  (USPS's 16x16 -> 28x28). Inputs are read as uint8 (or any integer type) in [0, 255], or as floats
  in [0, 1] (what torchvision's ``ToTensor`` gives).
* :class:`FileImageSet` holds file paths: a folder too large for memory streams through a
  ``DataLoader`` whose workers decode and resize each batch (:mod:`.decode`).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .decode import decode_image


def to_model_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (pixel / 255 * 2 - 1, in that order of operations: the
    arithmetic every run and ``predict`` share); float input is already scaled and passes as is."""
    if pixels.is_floating_point():
        return pixels
    return pixels.float().div_(255.0).mul_(2.0).sub_(1.0)


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) on the CPU, uint8 pixels or float32 in [-1, 1], and labels (N,) int64
    when known."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    name: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Model input of `rows` (a CPU index tensor) on `device`: pixels cross to the device as
        they are stored and become floats there."""
        return to_model_input(self.images[rows].to(device, non_blocking=True))

    def stream(self, row_batches: Sequence[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
        """:meth:`batch` of each index tensor in turn (a streamed set decodes ahead in workers)."""
        for rows in row_batches:
            yield self.batch(rows, device)

    def floats(self) -> torch.Tensor:
        """Every image as model input on the CPU (for small sets: figures, skada's arrays)."""
        return to_model_input(self.images.clone() if self.images.is_floating_point() else self.images)

    def subset(self, n: int, seed: int) -> "ImageSet":
        """`n` images drawn without replacement by a generator seeded with `seed` (all if n >= N)."""
        return self.split(n, seed)[0]

    def split(self, n: int, seed: int) -> Tuple["ImageSet", Optional["ImageSet"]]:
        """(:meth:`subset` of `n` images, the images it left out, or None when it kept all)."""
        if n >= len(self):
            return self, None
        kept, rest = self.split_rows(n, seed)
        return self.take(kept), self.take(rest)

    def split_rows(self, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The rows :meth:`split` keeps and leaves out, each in ascending order."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return order[:n].sort().values, order[n:].sort().values

    def take(self, rows: torch.Tensor) -> "ImageSet":
        return replace(self, images=self.images[rows], labels=None if self.labels is None else self.labels[rows])

    def unlabelled(self) -> "ImageSet":
        return replace(self, labels=None)


_FORK_SERVER = False


def start_workers_from_a_fork_server() -> None:
    """Loader workers from now on start from a fork server (started clean, with only the decoder
    imported) rather than by forking this process. A forked worker shares the training process's
    heap copy-on-write and keeps every page of it alive that the training then frees or rewrites
    (its activations, its weights): two workers pinned ~1.2 GB of a ResNet-18 run that way.

    The catch is Python's, as with the spawn start method: a worker imports the main module, so a
    script's top level must sit under ``if __name__ == "__main__":``. The ``madda-rs`` command's is
    (it calls this); a user's own script calling madda_rs keeps forked workers unless it calls this."""
    global _FORK_SERVER
    _FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()


def _worker_context() -> Any:
    if not _FORK_SERVER:
        return None  # multiprocessing's default: fork on Linux before Python 3.14
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class StreamError(ValueError):
    """An image that could not be decoded while a streamed set was read (named in the message)."""


class _Files(torch.utils.data.Dataset):
    """Decodes one file of a :class:`FileImageSet` (in a DataLoader worker). A bad file comes back
    as its error message, so the training process raises it by name rather than as a worker crash."""

    def __init__(self, files: Sequence[Path], shape: Tuple[int, int, int]) -> None:
        self.files, self.shape = list(files), shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, str]:
        try:
            return torch.from_numpy(decode_image(self.files[i], self.shape)), ""
        except ValueError as exc:
            return torch.zeros(self.shape, dtype=torch.uint8), str(exc)


def _collate(items: List[Tuple[torch.Tensor, str]]) -> Tuple[torch.Tensor, List[str]]:
    return torch.stack([x for x, _ in items]), [e for _, e in items if e]


@dataclass(frozen=True, eq=False)
class FileImageSet(ImageSet):
    """Images as files, decoded to `geometry` (C, H, W) a batch at a time by `workers` processes:
    a folder larger than memory. ``images`` is an empty (0, C, H, W) tensor, kept for the shape."""

    files: Tuple[Path, ...] = ()
    workers: int = 2

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def of(cls, files: Sequence[Path], shape: Tuple[int, int, int], labels: Optional[np.ndarray], name: str,
           workers: int) -> "FileImageSet":
        return cls(torch.empty((0, *shape), dtype=torch.uint8), None if labels is None else torch.from_numpy(labels),
                   name, tuple(files), workers)

    def _rows_loader(self, row_batches: Sequence[torch.Tensor], workers: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(_Files(self.files, self.shape), batch_sampler=[r.tolist() for r in row_batches],
                          num_workers=workers, collate_fn=_collate, prefetch_factor=2 if workers else None,
                          persistent_workers=False, multiprocessing_context=_worker_context() if workers else None)

    def batch(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        return next(iter(self.stream([rows], device, workers=0)))

    def stream(self, row_batches: Sequence[torch.Tensor], device: torch.device, *,
               workers: Optional[int] = None) -> Iterator[torch.Tensor]:
        loader = self._rows_loader(row_batches, self.workers if workers is None else workers)
        for pixels, errors in loader:
            if errors:
                raise StreamError(errors[0])
            yield to_model_input(pixels.to(device, non_blocking=True))

    def floats(self) -> torch.Tensor:
        raise ValueError(f"{self.name}: a streamed image set ({len(self)} images) is not held in memory")

    def take(self, rows: torch.Tensor) -> "FileImageSet":
        keep = rows.tolist()
        return replace(self, files=tuple(self.files[i] for i in keep),
                       labels=None if self.labels is None else self.labels[rows])


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


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
    x = pixels(images, what)
    y = None if labels is None else _labels(labels, len(x), what)
    return ImageSet(x, y, name)


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


def pixels(images: Any, what: str) -> torch.Tensor:
    """Checked images as stored in an :class:`ImageSet`: uint8 (N, C, H, W) from integers in
    [0, 255], float32 in [-1, 1] from floats in [0, 1]."""
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
        return x.mul(2.0).sub_(1.0).contiguous()
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{what}: integer images must lie in [0, 255], got [{lo}, {hi}]")
    return x.to(torch.uint8).contiguous()


def _labels(labels: Any, n: int, what: str) -> torch.Tensor:
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what}: expected {n} labels in a 1-d array, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise TypeError(f"{what}: labels must be integers, got dtype {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


__all__ = ["ImageSet", "FileImageSet", "StreamError", "as_image_set", "pixels", "to_model_input"]
