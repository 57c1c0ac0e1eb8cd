"""What a run is: its folder and files, which settings may change when it is resumed, which
ones make two runs different experiments, and its model files.

``train()``, the CLI, ``report`` and ``reproduce`` all ask this module; none keeps its own list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type

from ..config import LEGACY_METHOD_SETTINGS, PRESET_FIELDS, MethodSettings, TrainConfig, run_fields, settings_class

if TYPE_CHECKING:  # torch loads when a model or checkpoint is read or written, so reports stay light
    import torch

    from ..models import EmbeddingNet

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
CHECKPOINT_FILE, PROGRESS_FILE = "checkpoint.pt", "progress.json"  # progress.json: the checkpoint's stage and epoch
SOURCE_MODEL_FILE, TARGET_MODEL_FILE = "source.pt", "target.pt"  # model files (save_model / load_model)
SELECTED_FILE = "selected.pt"  # the target model a label-free score picked (TrainConfig.select)
# What predicting new images needs beside target.pt (madda_rs.inference): the source embeddings and
# labels the kNN vote searches (memory-mapped), and how to read an image and name its class.
SOURCE_EMBEDDINGS_FILE, SOURCE_LABELS_FILE = "source_embeddings.npy", "source_labels.npy"
PREDICTOR_FILE = "predictor.json"  # {"predictor": "knn" | "classifier", "k", "class_names", "shape": [C, H, W]}
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PROGRESS_FILE, SOURCE_MODEL_FILE, TARGET_MODEL_FILE,
             SELECTED_FILE, SOURCE_EMBEDDINGS_FILE, SOURCE_LABELS_FILE, PREDICTOR_FILE)

# Where and how a run executes, not what it computes: a resume may change them, and they neither
# split a report's groups nor tell two of reproduce's runs apart. (The run folder itself, --out,
# is not a setting.)
RUN_ONLY = ("device", "data_dir", "download", "threads", "eval_every", "checkpoint_every", "workers", "stream_above_mb",
            "recompute_activations")
# Seeds vary within one experiment: a report's group spans them.
REPLICATES = ("seed", "subset_seed")
# Kept on resume, yet not a different experiment: bitwise determinism, and which checkpoint a
# score also keeps (the headline is the final epoch either way).
SAME_EXPERIMENT = ("deterministic", "select", "overridden", "source_from")
# Settings that never split a report's group: two runs differing only here are one experiment.
NOT_GROUPED = frozenset(RUN_ONLY + REPLICATES + SAME_EXPERIMENT)


def resume_conflicts(saved: Mapping[str, Any], config: Mapping[str, Any]) -> List[str]:
    """The settings (config dicts, as in config.json) that differ outside :data:`RUN_ONLY`: a run
    saved with `saved` cannot be continued as `config` while any is left."""
    saved = TrainConfig.from_dict(dict(saved)).to_dict()  # settings added since it was saved take their default
    return sorted(k for k in set(saved) | set(config) if k not in RUN_ONLY and saved.get(k) != config.get(k))


# Run settings that stage 1 never reads (beside each method's MethodSettings.stage_two): a run that
# adapts another run's source model (--source-from) may differ from it in these, the run-only
# settings and SAME_EXPERIMENT's; the preset counts by the values it gave.
TARGET_ONLY = ("tgt", "tgt_test", "resize_to_source", "epochs_target", "target_batch_size", "source_only", "preset")


def source_conflicts(source: Mapping[str, Any], config: TrainConfig) -> List[str]:
    """The settings read by stage 1 (config dicts, as in config.json) in which `config` differs from
    the run `source` whose source model it would adapt; empty when it may."""
    if source.get("method", "madda") != config.method:
        return ["method"]
    saved = TrainConfig.from_dict(dict(source)).to_dict()  # settings added since take their default
    own = config.to_dict()
    free = set(RUN_ONLY) | set(SAME_EXPERIMENT) | set(TARGET_ONLY) | set(type(config.settings).stage_two)
    return sorted(k for k in set(saved) | set(own) if k not in free and saved.get(k) != own.get(k))


def with_run_settings(saved: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """`saved` with the run-only settings in `given` (a config or a dict of flags) put in."""
    values = given.to_dict() if isinstance(given, TrainConfig) else given
    return saved.replace(**{k: values[k] for k in RUN_ONLY if k in values})


def experiment_key(config: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
    """What makes two runs the same experiment (a report's group): every setting but the
    run-only ones, the seeds and :data:`SAME_EXPERIMENT`. A setting that a saved config lacks
    (added since) counts at its default, as :meth:`TrainConfig.load` reads it, so a new setting
    does not split old runs from new ones; a method setting counts at the method's value for the
    run's preset, and the other methods' settings that configs saved before the methods declared
    their own held are dropped. (Run settings of the preset stay as saved: filling them from the
    preset would regroup the committed records.)"""
    values = {**_ADDED_DEFAULTS, **config}
    settings = saved_method_settings(values)
    if settings is not None:
        own = {f.name: settings.preset_value(values.get("preset", "paper"), f.name)
               for f in dataclasses.fields(settings)}
        values = {k: v for k, v in {**own, **values}.items() if k in own or k not in LEGACY_METHOD_SETTINGS}
    return tuple(sorted((k, json.dumps(v)) for k, v in values.items() if k not in NOT_GROUPED))


def saved_method_settings(config: Mapping[str, Any]) -> Optional[Type[MethodSettings]]:
    """The settings class of a saved config's method; None for a plug-in method no longer found."""
    try:
        return settings_class(config.get("method", "madda"))
    except (ValueError, ImportError, OSError):
        return None


_ADDED_DEFAULTS = {f.name: f.default for f in run_fields() if f.name not in PRESET_FIELDS}
_ADDED_DEFAULTS["precision"] = "fp32"  # what runs saved before the setting trained in (TrainConfig.from_dict)


def load_run(run_dir: os.PathLike | str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(config, metrics) of a finished run, as saved."""
    run = Path(run_dir)
    for name in (CONFIG_FILE, METRICS_FILE):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name} is missing: is {run} a finished 'madda-rs train' run?")
    return json.loads((run / CONFIG_FILE).read_text()), json.loads((run / METRICS_FILE).read_text())


def model_file(model: "EmbeddingNet", config: TrainConfig, epoch: int, **extra: Any) -> Dict[str, Any]:
    """What a model file holds: weights, the run's config, epochs trained and the spec that
    rebuilds the network (:class:`madda_rs.models.ModelSpec`, read by :func:`load_model`)."""
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "config": config.to_dict(), "epoch": epoch, "model": model.spec.to_dict(), **extra}


def load_model(path: os.PathLike | str, device: "torch.device | str" = "cpu") -> "EmbeddingNet":
    """Rebuild the network of a model file of a run (source.pt, target.pt, selected.pt), any
    device to any; files written before backbones existed hold a LeNet."""
    import torch

    from ..models import ModelSpec, build_model

    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ModelSpec.from_model_file(ckpt))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


class RunFolder:
    """A run's folder (:data:`RUN_FILES`); every write goes through a temporary file and a rename."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE))

    def check_usable(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before any work, a folder that cannot be written or already holds a run."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a folder")
        if resume:
            if not (self.path / CHECKPOINT_FILE).is_file():
                raise ValueError(f"cannot resume: {self.path / CHECKPOINT_FILE} does not exist")
        elif self.holds_run() and not overwrite:
            raise ValueError(f"{self.path} already holds a run; choose another --out, or pass --resume or --overwrite")
        probe = self.path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write the run folder {self.path}: {probe} is not writable")

    def create(self, overwrite: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)

    def write_json(self, name: str, values: Dict[str, Any]) -> None:
        with self._atomic(name) as tmp:
            tmp.write_text(json.dumps(values, indent=2) + "\n")

    def read_json(self, name: str) -> Dict[str, Any]:
        return json.loads((self.path / name).read_text())

    def save(self, name: str, obj: Any) -> None:
        """torch.save through a temporary file and a rename: a kill mid-save keeps the old file."""
        import torch

        with self._atomic(name) as tmp:
            torch.save(obj, tmp)

    def load(self, name: str, device: "torch.device | str" = "cpu") -> Any:
        import torch

        # weights_only=False: checkpoints hold RNG states and history, written by this package
        return torch.load(self.path / name, map_location=device, weights_only=False)

    @contextmanager
    def _atomic(self, name: str) -> Iterator[Path]:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, self.path / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def save_model(self, name: str, model: "EmbeddingNet", config: TrainConfig, epoch: int) -> None:
        self.save(name, model_file(model, config, epoch))

    def save_array(self, name: str, array: Any) -> None:
        import numpy as np

        with self._atomic(name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)


__all__ = ["RunFolder", "RUN_FILES", "RUN_ONLY", "REPLICATES", "NOT_GROUPED", "TARGET_ONLY", "resume_conflicts",
           "source_conflicts", "with_run_settings",
           "experiment_key", "saved_method_settings", "load_run", "model_file", "load_model"]
