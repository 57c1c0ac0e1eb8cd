"""Training methods, one module each, found by a registry.

A method is a subclass of :class:`Method` decorated with ``@register_method("NAME")``. It owns
its two stages (stage 1 on the labelled source, stage 2 adapting to the target), how it labels
target images (:attr:`Method.predictor`), the settings it refuses (:meth:`Method.check`), the
name of its runs' folders and the centres a figure draws. Everything else (``--method``, config
checks, ``reproduce``'s run names, reports, plots, ``eval``) asks :func:`get_method`.

A module dropped into this package is found by :func:`discover`; one elsewhere is named as
``--method path/to/file.py:NAME`` or ``--method package.module:NAME``. Shared building blocks are
in :mod:`.common`; docs/extending.md walks through a new method.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type, TypeVar

if TYPE_CHECKING:  # the registry itself imports nothing heavy; methods import torch
    import numpy as np
    import torch

    from ..config import TrainConfig
    from ..data.domains import ImageSet, RunData
    from ..models import EmbeddingNet
    from ..run.loop import Stage
    from ..run.processes import Parallel
    from ..scores.predictors import KnnPredictor


class Method:
    """One training method. Subclasses override the two stage factories and may override the rest."""

    name: str = ""  # set by register_method
    summary: str = ""  # one line for --help
    source_only_label: str = "source model"  # what its source-only baseline is, in reports

    def source_stage(self, config: "TrainConfig", source: "ImageSet", device: "torch.device",
                     parallel: "Parallel") -> "Stage":
        """Stage 1: trains ``.model`` on the labelled source."""
        raise NotImplementedError

    def target_stage(self, config: "TrainConfig", source_model: "EmbeddingNet", predictor: "KnnPredictor",
                     data: "RunData", device: "torch.device", parallel: "Parallel") -> "Stage":
        """Stage 2: adapts a model to the target; its ``.output`` is the model scored and saved."""
        raise NotImplementedError

    def predictor(self, model: "EmbeddingNet", source: "ImageSet", k: int, threads: Optional[int],
                  parallel: Optional["Parallel"] = None) -> "KnnPredictor":
        """How a target image gets its label: by default the kNN vote over source embeddings."""
        from ..run.processes import Parallel
        from ..scores.predictors import KnnPredictor

        return KnnPredictor(model, source, k, threads, parallel or Parallel())

    def check(self, config: "TrainConfig") -> None:
        """Raise ValueError naming the settings this method does not take."""

    def run_name(self, config: "TrainConfig") -> str:
        """The method part of reproduce's run-folder names."""
        return f"{self.name}-{config.preset}"

    def centres(self, config: "TrainConfig", src_emb: "np.ndarray", src_labels: "np.ndarray",
                ) -> Optional[Tuple["np.ndarray", Optional["np.ndarray"]]]:
        """The centres stage 2 pulled target embeddings to at its last epoch, and their labels
        (None where they carry no class), for figures; None for a method without centres."""
        return None


_REGISTRY: Dict[str, Method] = {}
M = TypeVar("M", bound=Type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass under `name` (for ``--method``)."""
    if not name or ":" in name:
        raise ValueError(f"a method name must be non-empty and without ':', got {name!r}")

    def add(cls: M) -> M:
        known = _REGISTRY.get(name)
        if known is not None and type(known).__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is already registered by {type(known).__module__}")
        method = cls()
        method.name = name
        _REGISTRY[name] = method
        return cls

    return add


def discover() -> None:
    """Import every module of this package, so each registers its methods."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> Tuple[str, ...]:
    discover()
    return tuple(sorted(_REGISTRY))


def get_method(spec: str) -> Method:
    """The method registered as `spec`, or for ``FILE.py:NAME`` / ``MODULE:NAME`` the method NAME
    that importing FILE or MODULE registers. Unknown names are a ValueError listing the known."""
    discover()
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" not in spec:
        raise ValueError(f"method must be one of {', '.join(sorted(_REGISTRY))}, or FILE.py:NAME or MODULE:NAME for a "
                         f"method defined elsewhere; got {spec!r}")
    where, name = spec.rsplit(":", 1)
    _import(where)
    if name not in _REGISTRY:
        raise ValueError(f"method {spec!r}: {where} registers no method {name!r} "
                         f"(registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def _import(where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"method module {where} does not exist")
        module_name = f"madda_rs_method_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise ValueError(f"cannot import the method module {where!r}: {exc}") from None


__all__ = ["Method", "register_method", "get_method", "method_names", "discover"]
