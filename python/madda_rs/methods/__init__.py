"""Training methods, one module each, found by a registry.

A method is a subclass of :class:`Method` decorated with ``@register_method("NAME")``. It owns
its two stages (stage 1 on the labelled source, stage 2 adapting to the target), how it labels
target images (:attr:`Method.predictor`), its settings (:attr:`Method.settings`, a
:class:`~madda_rs.config.MethodSettings` dataclass with their values under each preset), what tune
searches, the name of its runs' folders and the centres a figure draws. Everything else (``--method``, config
checks, ``reproduce``'s run names, reports, plots, ``eval``) asks :func:`get_method`.

A module dropped into this package is found by :func:`discover`; one elsewhere is named as
``--method path/to/file.py:NAME`` or ``--method package.module:NAME``. Shared building blocks are
in :mod:`.common`; docs/extending.md walks through a new method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type, TypeVar

from ..config import MethodSettings, set_settings_lookup
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

    def predictor(self, model: "EmbeddingNet", source: "ImageSet", config: "TrainConfig",
                  parallel: Optional["Parallel"] = None, k: Optional[int] = None) -> "KnnPredictor":
        """How a target image gets its label: by default the vote of the `k` (else the method's
        setting ``k``) nearest source embeddings."""
        from ..run.processes import Parallel
        from ..scores.predictors import KnnPredictor

        return KnnPredictor(model, source, k or config.k, config.threads, parallel or Parallel())

    # The settings this method reads beyond the run's: a frozen MethodSettings dataclass declared
    # in its module, with their values under each preset. A config refuses any other one by name.
    settings: Type[MethodSettings] = MethodSettings
    # Settings a search (madda-rs tune) may vary for this method (its own or the run's), with their
    # candidate values; 'schedule' is (epochs_source, epochs_target).
    search_space: Dict[str, Tuple[Any, ...]] = {}

    def check(self, config: "TrainConfig") -> None:
        """Raise ValueError (one line) for a combination of settings this method cannot run."""

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
        _check_settings(name, cls.settings)
        if cls.predictor is Method.predictor and "k" not in cls.settings.__dataclass_fields__:
            raise TypeError(f"method {name!r} votes by its k nearest source embeddings (the default predictor): "
                            f"its settings must declare k")
        method = cls()
        method.name = name
        _REGISTRY[name] = method
        return cls

    return add


def _check_settings(name: str, settings: Any) -> None:
    """A method's settings class must be a frozen MethodSettings dataclass whose presets name
    known presets and its own fields (caught when the method registers, not at a run)."""
    import dataclasses

    from ..config import PRESETS, run_fields

    if not (isinstance(settings, type) and issubclass(settings, MethodSettings) and dataclasses.is_dataclass(settings)
            and settings.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"method {name!r}: settings must be a @dataclass(frozen=True) subclass of MethodSettings")
    fields = {f.name for f in dataclasses.fields(settings)}
    clash = fields & {f.name for f in run_fields()}
    if clash:
        raise ValueError(f"method {name!r}: {', '.join(sorted(clash))} already name run settings")
    for preset, values in settings.presets.items():
        if preset not in PRESETS or set(values) - fields or set(values) & set(settings.outside_presets):
            raise ValueError(f"method {name!r}: presets must map preset names ({', '.join(PRESETS)}) to its own "
                             f"settings (not those outside_presets); got {preset!r}: {sorted(values)}")


def discover() -> None:
    """Import every module of this package, so each registers its methods."""
    import_package_modules(__path__, __name__)


def check_config(config: "TrainConfig") -> Method:
    """The config's method, after refusing (ValueError, one line) a combination it cannot run,
    an unknown backbone, or weights that do not fit it (a setting the method does not read is
    refused when the config is made). Every entry point calls it before any work: train(), the
    CLI, tune."""
    from ..backbones import check_backbone

    backbone = check_backbone(config.backbone, config.weights, config.download)
    if config.recompute_activations and not backbone.splits_trunk:
        raise ValueError(f"--recompute-activations: backbone {backbone.name} does not run its trunk in stages "
                         f"(Backbone.stages), so there is nothing to recompute; drop the flag")
    method = get_method(config.method)
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


set_settings_lookup(lambda spec: get_method(spec).settings)  # TrainConfig asks it for a method's settings

__all__ = ["Method", "register_method", "get_method", "method_names", "discover", "check_config"]
