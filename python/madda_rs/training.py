"""A whole run: data, stage 1 (source), stage 2 (target), scoring, the run folder.

    from madda_rs.config import TrainConfig
    from madda_rs.training import train, resume

    result = train(TrainConfig(src="mnist", tgt="usps"), out_dir="runs/m2u")
    result = train(config, source=(images, labels), target=target_images, target_test=(x, y))
    result = resume("runs/m2u")  # after a kill or Ctrl-C

The method (``config.method``) supplies the stages and the predictor (:mod:`madda_rs.methods`);
what a run folder holds and what may change on resume is :mod:`madda_rs.run.folder`'s. Functions
here neither parse arguments nor print: progress goes through the optional ``progress`` factory
(for example ``tqdm.tqdm``), results come back as values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .backbones import check_input, get_backbone
from .config import SELECTION_SCORES, TrainConfig
from .data.geometry import resolve_geometry
from .data.images import StreamError
from .data.run_data import RunData, prepare_data
from .methods import Method, check_config, get_method
from .models import EmbeddingNet
from .run.folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    PREDICTOR_FILE,
    PROGRESS_FILE,
    SELECTED_FILE,
    SOURCE_EMBEDDINGS_FILE,
    SOURCE_LABELS_FILE,
    SOURCE_MODEL_FILE,
    TARGET_MODEL_FILE,
    RunFolder,
    load_model,
    model_file,
    resume_conflicts,
    source_conflicts,
)
from .run.loop import Interrupted, LoopSettings, ProgressFactory, TrainingDiverged, no_progress, run_stage
from .run.precision import check_precision, resolve_precision
from .run.processes import Parallel, configure_threads, machine_record, resolve_device
from .scores.evaluate import confusion, target_scores
from .scores.predictors import KnnPredictor

log = logging.getLogger("madda_rs")

CHECKPOINT_FORMAT = 1


@dataclass
class RunResult:
    """What a run produced. Accuracies are the final epoch's, never a best-epoch pick; they are
    None where the run had no labelled test set for them."""

    config: TrainConfig
    target_accuracy: Optional[float]
    source_accuracy: Optional[float]  # kNN on the source test split with the source model
    source_only_accuracy: Optional[float]  # kNN on the target test split with the source model (no adaptation)
    label_free: Dict[str, Any]  # final figures on the unlabelled target training images
    warnings: List[str]
    wall_seconds: float
    device: str
    threads: int  # per process
    seconds_per_source_epoch: Optional[float]
    seconds_per_target_epoch: Optional[float]
    history: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    out_dir: Optional[str] = None
    processes: int = 1  # torchrun processes that trained together
    # final predictions on the target test set: counts[true][predicted] over `classes`
    classes: Optional[List[int]] = None
    confusion: Optional[List[List[int]]] = None
    # with config.select: the evaluation that score picked ({"score", "epoch", "value", "target_accuracy"})
    selected: Optional[Dict[str, Any]] = None
    # with config.guard: why the run fell back to the source model, or None when it did not
    guard: Optional[str] = None
    # what ran it: CPU model and flags, versions, GPU (run.processes.machine_record)
    machine: Dict[str, Any] = field(default_factory=dict)
    # with config.source_from: the run whose source model this one adapted, and that file's sha256
    source_from: Optional[Dict[str, str]] = None

    def metrics(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "config"}


def train(
    config: TrainConfig,
    out_dir: Optional[str] = None,
    progress: Optional[ProgressFactory] = None,
    *,
    source: Any = None,
    target: Any = None,
    target_test: Any = None,
    source_test: Any = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Run ``config.method`` end to end: stage 1, stage 2 (unless ``source_only``), scoring.

    Data come from `source`/`target` (and the optional labelled `target_test`, `source_test`)
    when given, else from ``config.src``/``config.tgt`` (registered names or .npz files); see
    :func:`madda_rs.data.images.as_image_set` for what is accepted.

    With `out_dir`, writes config.json, metrics.json, checkpoint.pt (every
    ``config.checkpoint_every`` epochs and at each stage's end), source.pt and target.pt there.
    A folder that already holds a run is refused unless `resume` (continue from its checkpoint;
    `config` may differ from the saved one only in run-only settings,
    :data:`madda_rs.run.folder.RUN_ONLY`) or `overwrite`.

    Raises:
        ValueError, DataError: bad data or run folder, before any training.
        TrainingDiverged: a loss became NaN or infinite (the last good checkpoint is kept).
        Interrupted: Ctrl-C; a checkpoint of every finished epoch was saved.
    """
    wall = time.perf_counter()
    check_config(config)  # a setting the method does not read, an unknown backbone: refused before any work
    config = resolve_geometry(config, config.threads)  # config.json records a folder source's image geometry
    device = _device(config)
    # config.json records the precision trained in, the device's default included
    config = config.replace(precision=resolve_precision(config.precision, device,
                                                           get_backbone(config.backbone).cpu_bf16_default))
    check_precision(config.precision, device)  # bf16 on a CPU without it: refused before any work
    if config.source_from is not None and out_dir is not None and Path(out_dir).resolve() == Path(
            config.source_from).resolve():
        raise ValueError(f"--source-from {config.source_from} is this run's own --out; give another run's folder")
    # threads and determinism before joining a torchrun group (Parallel.from_environment says why)
    threads = configure_threads(config.threads, config.deterministic, int(os.environ.get("WORLD_SIZE", "1")))
    parallel = Parallel.from_environment(device)
    folder, saved = _open_folder(config, out_dir, parallel, resume=resume, overwrite=overwrite)
    borrowed = _source_run(config, folder, saved)  # --source-from: checked before any work
    if borrowed is not None:
        config = config.replace(source_from=str(borrowed.path))  # absolute: a resume from elsewhere finds it
    data = prepare_data(config, source=source, target=target, target_test=target_test,
                        source_test=source_test, progress=progress)  # first: a data error leaves no run folder
    check_input(get_backbone(config.backbone), data.src_train.shape, f"{config.src} images")
    log.info("data: %s train %d, %s train %d, %s test %s", config.src, len(data.src_train), config.tgt,
             len(data.tgt_train), config.tgt, len(data.tgt_test) if data.tgt_test is not None else "none")
    if folder is not None and saved is None and parallel.is_main:
        folder.create(overwrite)
        folder.write_json(CONFIG_FILE, {**config.to_dict(), "class_names": list(data.class_names)})
    run = _Run(config, data, device, parallel, folder, saved, progress or no_progress, wall, borrowed)
    result = run.execute(threads)
    if run.writer is not None:
        run.writer.write_json(METRICS_FILE, result.metrics())
    parallel.barrier()  # no rank leaves before the run folder is complete
    return result


def settings_advice(config: TrainConfig) -> List[str]:
    """What the measurements say about these settings together, where they went wrong before
    (recorded in metrics.json's warnings, and logged)."""
    if config.method == "madda" and config.preset == "labelfree" and config.weights == "imagenet":
        return ["--preset labelfree was chosen on LeNet trained from scratch; from ImageNet weights it merged the "
                "target's classes on both tasks measured (mnist-m, fashion-m) and its guard returned the source "
                "model. --preset paper --im-weight 1 --lr 1e-3 --lr-target 1e-4 was chosen on a pretrained "
                "development task (docs/label-free.md, 'A development task on a pretrained backbone')"]
    return []


def _device(config: TrainConfig) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


@dataclass
class _SourceRun:
    """The finished stage 1 of another run that this one adapts (``--source-from``)."""

    path: Path
    history: List[Dict[str, Any]]
    sha256: str
    model_file: Path  # RUN's source.pt; on a resume whose RUN has gone, this run's own copy

    def record(self) -> Dict[str, str]:
        """What metrics.json and the checkpoint say about it."""
        return {"run": str(self.path), "sha256": self.sha256}

    def model(self, config: TrainConfig, shape: Tuple[int, ...], device: torch.device) -> EmbeddingNet:
        """Its source model, placed as stage 1 leaves one; refused when it reads other images."""
        model = load_model(self.model_file, device)
        if tuple(model.spec.in_shape) != tuple(shape):
            raise ValueError(f"--source-from {self.path}: its source model reads {_shape(model.spec.in_shape)} "
                             f"images, this run's source images are {_shape(shape)}")
        model.encoder.recompute_activations = config.recompute_activations
        return model.to(memory_format=torch.channels_last)


def _shape(shape: Any) -> str:
    return " x ".join(map(str, shape))


def _source_run(config: TrainConfig, folder: Optional[RunFolder],
                saved: Optional[Dict[str, Any]]) -> Optional[_SourceRun]:
    """The run ``config.source_from`` names, checked: its stage 1 finished (source.pt is written
    then) with every setting stage 1 reads equal to this run's. On a resume (`saved`, the
    checkpoint) its source.pt must be the one the run began from; where RUN has moved or gone,
    the copy this run saved before stage 2 stands in for it."""
    if config.source_from is None:
        return None
    path = Path(config.source_from).resolve()
    began = saved.get("source_from") if saved else None  # {run, sha256} as the run began
    if began is not None and not (path / SOURCE_MODEL_FILE).is_file():
        assert folder is not None  # a checkpoint was read from it
        own = folder.path / SOURCE_MODEL_FILE
        if hashlib.sha256(own.read_bytes()).hexdigest() != began["own_sha256"]:
            raise ValueError(f"--source-from {config.source_from} is gone and {own} is not the copy this run "
                             f"saved of it; restore {path}, or train anew")
        log.warning("--source-from %s is gone; resuming from this run's copy of its source model, %s", path, own)
        return _SourceRun(path, saved["history"]["source"], began["sha256"], own)
    if not path.is_dir():
        raise ValueError(f"--source-from {config.source_from}: no such folder; expected a madda-rs train run's")
    for name in (CONFIG_FILE, SOURCE_MODEL_FILE):
        if not (path / name).is_file():
            raise ValueError(f"--source-from {config.source_from}: {path / name} is missing; expected the folder "
                             f"of a madda-rs train run whose stage 1 has finished")
    theirs = json.loads((path / CONFIG_FILE).read_text())
    try:
        conflicts = source_conflicts(theirs, config)
    except ValueError as exc:  # a config.json this version cannot read
        raise ValueError(f"--source-from {config.source_from}: {path / CONFIG_FILE}: {exc}") from None
    if conflicts:
        own_settings = config.to_dict()
        differ = ", ".join(f"{k} {theirs.get(k)!r} there, {own_settings.get(k)!r} here" for k in conflicts)
        raise ValueError(f"--source-from {config.source_from}: its stage 1 read other settings ({differ}); give "
                         f"the same, or train stage 1 anew without --source-from")
    digest = hashlib.sha256((path / SOURCE_MODEL_FILE).read_bytes()).hexdigest()
    if began is not None and digest != began["sha256"]:
        raise ValueError(f"--source-from {config.source_from}: its source.pt changed since this run began from it "
                         f"(sha256 {began['sha256'][:12]}..., now {digest[:12]}...); restore it, or train anew")
    if (path / METRICS_FILE).is_file():
        history = json.loads((path / METRICS_FILE).read_text())["history"]["source"]
    else:  # stopped in stage 2: its checkpoint holds the finished stage 1's history
        history = RunFolder(path).load(CHECKPOINT_FILE)["history"]["source"]
    return _SourceRun(path, history, digest, path / SOURCE_MODEL_FILE)


def _open_folder(config: TrainConfig, out_dir: Optional[str], parallel: Parallel, *, resume: bool,
                 overwrite: bool) -> Tuple[Optional[RunFolder], Optional[Dict[str, Any]]]:
    """The run folder (None without `out_dir`) and, on resume, its checkpoint."""
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs the out_dir of the run to continue")
        return None, None
    folder = RunFolder(out_dir)
    if parallel.is_main:
        folder.check_usable(resume=resume, overwrite=overwrite)
    if not resume:
        return folder, None
    saved = folder.load(CHECKPOINT_FILE)
    saved_config = dict(saved["config"])
    if "precision" in saved_config and saved_config["precision"] is None:  # the device's default: resolved alike
        saved_config["precision"] = config.precision
    differ = resume_conflicts(saved_config, config.to_dict())
    if differ:
        raise ValueError(f"the config differs from the one saved in {folder.path} in {', '.join(differ)} (only "
                         f"where and how it runs may change); resume with "
                         f"madda_rs.training.resume({str(folder.path)!r})")
    return folder, saved


class _Run:
    """One run's moving parts: its method's stages, history, checkpoints and selection."""

    def __init__(self, config: TrainConfig, data: RunData, device: torch.device, parallel: Parallel,
                 folder: Optional[RunFolder], saved: Optional[Dict[str, Any]], progress: ProgressFactory,
                 wall: float, borrowed: Optional[_SourceRun] = None) -> None:
        self.config, self.data, self.device, self.parallel = config, data, device, parallel
        self.borrowed = borrowed
        self.source_from: Optional[Dict[str, str]] = None  # the checkpoint's record of a borrowed stage 1
        self.method: Method = get_method(config.method)
        self.folder, self.saved, self.wall = folder, saved, wall
        self.writer = folder if parallel.is_main else None  # rank 0 alone writes
        self.history: Dict[str, List[Dict[str, Any]]] = saved["history"] if saved else {"source": [], "target": []}
        if borrowed is not None and not saved:
            self.history["source"] = list(borrowed.history)
        self.warnings: List[str] = saved["warnings"] if saved else []
        if not saved:
            for advice in settings_advice(config):
                self.warnings.append(advice)
                log.warning("%s", advice)
        self.stages: Dict[str, Any] = {}
        self.selection = _Selection(config, self.history["target"], folder)
        # wall time since the run began, data loading included; a resumed run adds its earlier time (its own
        # stages' alone: a borrowed stage 1's history keeps the times of the run that trained it)
        own = [self.history["target"]] if borrowed is not None else self.history.values()
        self.before = max((h.get("wall_seconds", 0.0) for part in own for h in part), default=0.0)
        self.settings = LoopSettings(config.eval_every, config.checkpoint_every, progress, None,
                                     self.checkpoint if folder is not None else None,
                                     str(folder.path) if folder is not None else "",
                                     self.warnings, parallel, elapsed=self.elapsed)

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.wall

    def checkpoint(self) -> None:
        assert self.folder is not None
        current = list(self.stages)[-1]
        self.selection.save()  # with the checkpoint, so selected.pt always matches the saved history
        self.folder.save(CHECKPOINT_FILE, {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "history": self.history,
            "warnings": self.warnings, "stages": {name: stage.state_dict() for name, stage in self.stages.items()},
            "source_from": self.source_from,
        })
        self.folder.write_json(PROGRESS_FILE, {"stage": current, "epoch": len(self.history[current]),
                                               "epochs": self.stages[current].epochs})

    def _run(self, name: str, stage: Any) -> None:
        self.stages[name] = stage
        if self.saved and name in self.saved["stages"]:
            stage.load_state_dict(self.saved["stages"][name])
        try:
            run_stage(stage, self.history[name], self.settings)
        except StreamError as exc:  # a file of a streamed folder went bad mid-run: say what was kept
            raise StreamError(f"{exc}; {self._kept()}") from None
        except TrainingDiverged as exc:
            if self.config.precision == "fp32":
                raise
            raise TrainingDiverged(f"{exc} (training in {self.config.precision}: its narrower numbers may be why; "
                                   f"--precision fp32 trains in float32)") from None

    def _kept(self) -> str:
        if self.folder is None or not (self.folder.path / PROGRESS_FILE).is_file():
            return "no checkpoint was saved"
        saved = self.folder.read_json(PROGRESS_FILE)
        return (f"the last checkpoint ({saved['stage']} epoch {saved['epoch']}) is kept: fix or remove the file, then "
                f"madda-rs train --resume {self.folder.path}")

    def execute(self, threads: int) -> RunResult:
        config, data = self.config, self.data
        if self.borrowed is not None:
            source_model = self.borrowed.model(config, data.src_train.shape, self.device)
        else:
            source_stage = self.method.source_stage(config, data.src_train, self.device, self.parallel)
            self._run("source", source_stage)
            source_model = source_stage.model
        if self.writer is not None:
            self.writer.save_model(SOURCE_MODEL_FILE, source_model, config, config.epochs_source)
            if self.borrowed is not None:  # the checkpoint names the copy, so a resume can stand on it
                own = hashlib.sha256((self.writer.path / SOURCE_MODEL_FILE).read_bytes()).hexdigest()
                self.source_from = {**self.borrowed.record(), "own_sha256": own}
        predictor = self.method.predictor(source_model, data.src_train, config, self.parallel)
        source_acc = predictor.accuracy(source_model, data.src_test) if data.src_test is not None else None
        source_only = target_scores(predictor, source_model, data, config.seed)
        final, target_model, guard = source_only, source_model, None
        if not config.source_only:
            final, target_model, guard = self._adapt(source_model, predictor, source_only)
        if self.writer is not None:
            self.writer.save_model(TARGET_MODEL_FILE, target_model, config, config.epochs_target)
            self.selection.save()
            self._save_predictor(predictor)
        matrix = confusion(predictor, target_model, data.tgt_test) if data.tgt_test is not None else {}
        if matrix:  # classes by name
            names = dict(zip(np.unique(predictor.labels).tolist(), data.class_names))
            matrix["classes"] = [names.get(c, str(c)) for c in matrix["classes"]]
        return RunResult(
            config=config, target_accuracy=final.get("target_accuracy"), source_accuracy=source_acc,
            source_only_accuracy=source_only.get("target_accuracy"),
            label_free={k: v for k, v in final.items() if k.startswith("pred_") or k in SELECTION_SCORES},
            warnings=self.warnings, wall_seconds=self.elapsed(), device=str(self.device), threads=threads,
            processes=self.parallel.world, seconds_per_source_epoch=_mean_seconds(self.history["source"]),
            seconds_per_target_epoch=_mean_seconds(self.history["target"]), history=self.history,
            out_dir=str(self.folder.path) if self.folder is not None else None, classes=matrix.get("classes"),
            confusion=matrix.get("confusion"), selected=self.selection.summary(), guard=guard,
            machine=machine_record(self.device),
            source_from=self.borrowed.record() if self.borrowed is not None else None,
        )

    def _save_predictor(self, predictor: KnnPredictor) -> None:
        """What labelling new images needs beside target.pt (madda_rs.inference.load_run)."""
        assert self.writer is not None
        self.writer.save_array(SOURCE_EMBEDDINGS_FILE, predictor.emb)
        self.writer.save_array(SOURCE_LABELS_FILE, predictor.labels)
        self.writer.write_json(PREDICTOR_FILE, {"predictor": predictor.kind, "k": predictor.k,
                                                "class_names": list(self.data.class_names),
                                                "shape": list(self.data.src_train.shape)})

    def _adapt(self, source_model: EmbeddingNet, predictor: KnnPredictor, source_only: Dict[str, Any],
               ) -> Tuple[Dict[str, Any], EmbeddingNet, Optional[str]]:
        """Stage 2: the final evaluation, the model the run yields, and the guard's verdict."""
        config, data = self.config, self.data
        stage = self.method.target_stage(config, source_model, predictor, data, self.device, self.parallel)
        self.settings.evaluate = lambda: target_scores(predictor, stage.output, data, config.seed)
        self.settings.evaluated = lambda rec: self.selection.consider(rec, stage.output)
        self._run("target", stage)
        scored = [h for h in self.history["target"] if "pred_classes" in h]
        final = scored[-1] if scored else source_only
        guard = self.method.fallback(config, source_only, final)
        if guard is None:
            return final, stage.output, None
        self.warnings.append(f"guard: {guard}; the run's output is the source model")
        log.warning("%s: guard: %s; the run's output is the source model", self.settings.where or "run", guard)
        return source_only, source_model, guard


def resume(run_dir: str, progress: Optional[ProgressFactory] = None, **data: Any) -> RunResult:
    """Continue the run in `run_dir` from its last checkpoint, with the config saved there.
    A run trained on in-memory images needs them again (`source=`, `target=`, ...)."""
    config = TrainConfig.load(str(Path(run_dir) / CONFIG_FILE))
    return train(config, run_dir, progress, resume=True, **data)


class _Selection:
    """Keeps the target model that `score` (a key of SELECTION_SCORES) rates best among the
    evaluations. It is written as selected.pt (a model file, like target.pt) with each
    checkpoint, so after a resume it matches the saved history."""

    def __init__(self, config: TrainConfig, history: List[Dict[str, Any]], folder: Optional[RunFolder]) -> None:
        self.config, self.score, self.history, self.folder = config, config.select, history, folder
        self.saved: Optional[Dict[str, Any]] = None  # what selected.pt holds (or will)
        if self.score is not None and folder is not None and (folder.path / SELECTED_FILE).is_file():
            self.saved = folder.load(SELECTED_FILE)

    def _rated(self, rec: Dict[str, Any]) -> float:
        assert self.score is not None
        return SELECTION_SCORES[self.score] * rec[self.score]

    def consider(self, rec: Dict[str, Any], model: EmbeddingNet) -> None:
        if self.score is None or self.score not in rec:
            return
        if self.saved is None or self._rated(rec) > self._rated(self.history[self.saved["epoch"] - 1]):
            self.saved = model_file(model, self.config, rec["epoch"] + 1, score=self.score)  # epochs trained

    def save(self) -> None:
        if self.saved is not None and self.folder is not None:
            self.folder.save(SELECTED_FILE, self.saved)

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.saved is None:
            return None
        rec = self.history[self.saved["epoch"] - 1]
        return {"score": self.score, "epoch": self.saved["epoch"], "value": rec[self.score],
                "target_accuracy": rec.get("target_accuracy")}


def _mean_seconds(hist: List[Dict[str, Any]]) -> Optional[float]:
    return float(np.mean([h["seconds"] for h in hist])) if hist else None


__all__ = ["train", "resume", "RunResult", "TrainingDiverged", "Interrupted"]
