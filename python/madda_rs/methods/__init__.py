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

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type, TypeVar

from ..plugins import import_package_modules, lookup

if TYPE_CHECKING:  # the registry itself imports nothing heavy; methods import torch
    import numpy as np
    import torch

    from ..config import TrainConfig
    from ..data.images import ImageSet
    from ..data.run_data import RunData
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

    # The method settings (madda_rs.config.METHOD_SETTINGS) this method reads; any other one set
    # away from its preset's value (or its default) is refused by check_config, naming it.
    reads: Tuple[str, ...] = ()
    # Settings a search (madda-rs tune) may vary for this method, with their candidate values.
    search_space: Dict[str, Tuple[Any, ...]] = {}

    def check(self, config: "TrainConfig") -> None:
        """Raise ValueError naming settings this method refuses beyond those it does not read."""

    def run_name(self, config: "TrainConfig") -> str:
        """The method part of reproduce's run-folder names."""
        return f"{self.name}-{config.preset}"

    def fallback(self, config: "TrainConfig", source_only: Dict[str, Any], final: Dict[str, Any]) -> Optional[str]:
        """Why the adapted model should not replace the source model (a label-free check on the
        target training images' figures before and after stage 2), or None to keep it."""
        return None

    def variant(self, config: "TrainConfig") -> str:
        """What ends a run-folder name after the departures from the preset: the method's own
        switches that are off (M-ADDA's '-nomagnet'), or ''."""
        return ""

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
    import_package_modules(__path__, __name__)


def unread_settings(method: Method, config: "TrainConfig") -> Tuple[str, ...]:
    """The method settings set in `config` (away from the preset's value, or from the field's
    default for settings no preset holds) that `method` does not read."""
    import dataclasses

    from ..config import METHOD_SETTINGS, PRESET_FIELDS, PRESETS, TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    neutral = {n: PRESETS[config.preset][n] if n in PRESET_FIELDS else defaults[n] for n in METHOD_SETTINGS}
    return tuple(n for n in METHOD_SETTINGS if n not in method.reads and getattr(config, n) != neutral[n])


def check_config(config: "TrainConfig") -> Method:
    """The config's method, after refusing (ValueError, one line) a setting it does not read or
    otherwise refuses, an unknown backbone, or weights that do not fit it. Every entry point calls
    it before any work: train(), the CLI, tune."""
    from ..backbones import check_backbone

    check_backbone(config.backbone, config.weights, config.download)
    method = get_method(config.method)
    unread = unread_settings(method, config)
    if unread:
        flags = ", ".join("--" + n.replace("_", "-") for n in unread)
        raise ValueError(f"--method {config.method} does not read {flags}; drop {'it' if len(unread) == 1 else 'them'} "
                         f"(the method's settings: {', '.join(method.reads) or 'none'})")
    method.check(config)
    return method


def method_names() -> Tuple[str, ...]:
    discover()
    return tuple(sorted(_REGISTRY))


def get_method(spec: str) -> Method:
    """The method registered as `spec`, or for ``FILE.py:NAME`` / ``MODULE:NAME`` the method NAME
    that importing FILE or MODULE registers. Unknown names are a ValueError listing the known."""
    discover()
    return lookup(_REGISTRY, spec, "method")


__all__ = ["Method", "register_method", "get_method", "method_names", "discover", "check_config", "unread_settings"]
