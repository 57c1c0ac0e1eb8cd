"""A whole M-ADDA run: data, stage 1 (source), stage 2 (target), kNN scoring, the run folder.

    from madda_rs.config import TrainConfig
    from madda_rs.training import train, resume

    result = train(TrainConfig(src="mnist", tgt="usps"), out_dir="runs/m2u")
    result = train(config, source=(images, labels), target=target_images, target_test=(x, y))
    result = resume("runs/m2u")  # after a kill or Ctrl-C

Functions here neither parse arguments nor print: progress goes through the optional
``progress`` factory (for example ``tqdm.tqdm``), results come back as values.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import SELECTION_SCORES, TrainConfig
from .domains import prepare_data
from .evaluation import SCORERS, confusion, save_model, target_scores
from .loop import Interrupted, LoopSettings, ProgressFactory, TrainingDiverged, no_progress, run_stage
from .models import EmbeddingNet
from .runtime import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    SELECTED_FILE,
    Parallel,
    RunFolder,
    configure_threads,
    resolve_device,
)
from .stages.adda import AddaTargetStage, SoftmaxSourceStage
from .stages.madda import MaddaTargetStage
from .stages.source import TripletSourceStage

log = logging.getLogger("madda_rs")

CHECKPOINT_FORMAT = 1
# Each training method's stages (its scorer is evaluation.SCORERS[method]); a new method is a
# stage module in madda_rs.stages, a line here and one there, and its name in config.METHODS.
METHODS = {
    "madda": (TripletSourceStage, MaddaTargetStage),
    "adda": (SoftmaxSourceStage, AddaTargetStage),
}


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
    """Run M-ADDA end to end: stage 1, stage 2 (unless ``source_only``), kNN scoring.

    Data come from `source`/`target` (and the optional labelled `target_test`, `source_test`)
    when given, else from ``config.src``/``config.tgt`` (registered names or .npz files); see
    :func:`madda_rs.domains.as_image_set` for what is accepted.

    With `out_dir`, writes config.json, metrics.json, checkpoint.pt (every
    ``config.checkpoint_every`` epochs and at each stage's end), source.pt and target.pt there.
    A folder that already holds a run is refused unless `resume` (continue from its checkpoint;
    `config` must equal the saved one) or `overwrite`.

    Raises:
        ValueError, DataError: bad data or run folder, before any training.
        TrainingDiverged: a loss became NaN or infinite (the last good checkpoint is kept).
        Interrupted: Ctrl-C; a checkpoint of every finished epoch was saved.
    """
    progress = progress or no_progress
    wall = time.perf_counter()
    device = resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    parallel = Parallel.from_environment(device)
    folder = RunFolder(out_dir) if out_dir is not None else None
    saved: Optional[Dict[str, Any]] = None
    if folder is not None:
        if parallel.is_main:
            folder.check_usable(resume=resume, overwrite=overwrite)
        if resume:
            saved = folder.load(CHECKPOINT_FILE)
            # where the data live may change between sessions; nothing else may
            if {**saved["config"], "data_dir": None} != {**config.to_dict(), "data_dir": None}:
                raise ValueError(f"the config differs from the one saved in {folder.path}; resume with "
                                 f"madda_rs.training.resume({str(folder.path)!r})")
    elif resume:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    threads = configure_threads(config, parallel.world)
    data = prepare_data(config, device, source=source, target=target, target_test=target_test,
                        source_test=source_test)  # first: a data error must not leave an empty run folder
    log.info("data: %s train %d, %s train %d, %s test %s", config.src, len(data.src_train), config.tgt,
             len(data.tgt_train), config.tgt, len(data.tgt_test) if data.tgt_test is not None else "none")
    if folder is not None and saved is None and parallel.is_main:
        folder.create(overwrite)
        folder.write_json(CONFIG_FILE, config.to_dict())
    writer = folder if parallel.is_main else None  # rank 0 alone writes

    history: Dict[str, List[Dict[str, Any]]] = saved["history"] if saved else {"source": [], "target": []}
    warnings: List[str] = saved["warnings"] if saved else []
    stages: Dict[str, Any] = {}

    selection = _Selection(config, history["target"], folder)

    def checkpoint() -> None:
        assert folder is not None
        current = list(stages)[-1]
        selection.save()  # with the checkpoint, so selected.pt always matches the saved history
        folder.save(CHECKPOINT_FILE, {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "history": history, "warnings": warnings,
            "stages": {name: stage.state_dict() for name, stage in stages.items()},
        })
        folder.write_json(PROGRESS_FILE, {"stage": current, "epoch": len(history[current]),
                                          "epochs": stages[current].epochs})

    # wall time since the run began, data loading included; a resumed run adds its earlier time
    before = max((h.get("wall_seconds", 0.0) for part in history.values() for h in part), default=0.0)

    def elapsed() -> float:
        return before + time.perf_counter() - wall

    settings = LoopSettings(config.eval_every, config.checkpoint_every, progress, None,
                            checkpoint if folder is not None else None, str(out_dir), warnings, parallel,
                            elapsed=elapsed)

    source_cls, target_cls = METHODS[config.method]
    source_stage = source_cls(config, data.src_train, device, parallel)
    stages["source"] = source_stage
    if saved:
        source_stage.load_state_dict(saved["stages"]["source"])
    run_stage(source_stage, history["source"], settings)
    source_model = source_stage.model
    if writer is not None:
        save_model(writer, "source.pt", source_model, config, config.epochs_source)
    guard: Optional[str] = None
    reference = SCORERS[config.method](source_model, data.src_train, config.k, config.threads, parallel)
    source_acc = reference.accuracy(source_model, data.src_test) if data.src_test is not None else None
    source_only = target_scores(reference, source_model, data)
    final = source_only

    if not config.source_only:
        target_stage = target_cls(config, source_model, reference, data, device, parallel)
        stages["target"] = target_stage
        if saved and "target" in saved["stages"]:
            target_stage.load_state_dict(saved["stages"]["target"])
        settings.evaluate = lambda: target_scores(reference, target_stage.output, data)
        settings.evaluated = lambda rec: selection.consider(rec, target_stage.output)
        run_stage(target_stage, history["target"], settings)
        scored = [h for h in history["target"] if "pred_classes" in h]
        final = scored[-1] if scored else source_only
        target_model = target_stage.output
        guard = guard_verdict(source_only, final) if config.guard else None
        if guard is not None:
            warnings.append(f"guard: {guard}; the run's output is the source model")
            log.warning("%s: guard: %s; the run's output is the source model", out_dir or "run", guard)
            final, target_model = source_only, source_model
    else:
        target_model = source_model
    if writer is not None:
        save_model(writer, "target.pt", target_model, config, config.epochs_target)
        selection.save()
    final_confusion = confusion(reference, target_model, data.tgt_test) if data.tgt_test is not None else {}

    result = RunResult(
        config=config,
        target_accuracy=final.get("target_accuracy"),
        source_accuracy=source_acc,
        source_only_accuracy=source_only.get("target_accuracy"),
        label_free={k: v for k, v in final.items() if k.startswith("pred_") or k in SELECTION_SCORES},
        warnings=warnings,
        wall_seconds=elapsed(),
        device=str(device),
        threads=threads,
        processes=parallel.world,
        seconds_per_source_epoch=_mean_seconds(history["source"]),
        seconds_per_target_epoch=_mean_seconds(history["target"]),
        history=history,
        out_dir=str(folder.path) if folder is not None else None,
        classes=final_confusion.get("classes"),
        confusion=final_confusion.get("confusion"),
        selected=selection.summary(),
        guard=guard,
    )
    if writer is not None:
        writer.write_json(METRICS_FILE, result.metrics())
    parallel.barrier()  # no rank leaves before the run folder is complete
    return result


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
            self.saved = {
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "config": self.config.to_dict(), "epoch": rec["epoch"] + 1, "score": self.score,  # epochs trained
                "in_shape": list(model.encoder.in_shape), "out_dim": model.head[1].out_features,
            }

    def save(self) -> None:
        if self.saved is not None and self.folder is not None:
            self.folder.save(SELECTED_FILE, self.saved)

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.saved is None:
            return None
        rec = self.history[self.saved["epoch"] - 1]
        return {"score": self.score, "epoch": self.saved["epoch"], "value": rec[self.score],
                "target_accuracy": rec.get("target_accuracy")}


# The guard's rule, on the target training images alone: adaptation merged classes when its
# predictions cover fewer classes than the source model's did, or their histogram's normalised
# entropy fell by more than this.
GUARD_ENTROPY_DROP = 0.1


def guard_verdict(source_only: Dict[str, Any], final: Dict[str, Any]) -> Optional[str]:
    """Why the adapted model should not replace the source model (TrainConfig.guard), or None."""
    if final["pred_classes"] < source_only["pred_classes"]:
        return (f"adaptation predicts {final['pred_classes']} classes on the target, the source model "
                f"{source_only['pred_classes']}")
    if final["pred_entropy"] < source_only["pred_entropy"] - GUARD_ENTROPY_DROP:
        return (f"the predicted classes' balance fell from {source_only['pred_entropy']:.3f} to "
                f"{final['pred_entropy']:.3f} (normalised entropy)")
    return None


def _mean_seconds(hist: List[Dict[str, Any]]) -> Optional[float]:
    return float(np.mean([h["seconds"] for h in hist])) if hist else None


__all__ = ["train", "resume", "RunResult", "TrainingDiverged", "Interrupted"]
