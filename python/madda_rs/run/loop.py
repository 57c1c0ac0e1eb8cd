"""The run loop: drives any stage (:class:`Stage`) epoch by epoch, with the
evaluation schedule, checkpoints, resume, progress, health warnings, a clean stop on a NaN loss,
and Ctrl-C that finishes the epoch and saves before stopping."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

from .processes import Parallel

log = logging.getLogger("madda_rs")

# The discriminator "wins outright" when it classifies this share of features right ...
D_WINS_ACCURACY = 0.99
# ... for this many epochs in a row: adaptation has stalled.
D_WINS_EPOCHS = 3


class Stage(Protocol):
    """What the loop drives: an explicit state (models, optimisers) plus `run_epoch`. A stage
    derives its random streams per epoch (:mod:`madda_rs.run.streams`), so its state is its
    tensors alone and a resumed stage draws what an uninterrupted one would."""

    name: str  # 'source', 'target': the key of its history and checkpoint state
    epochs: int
    # (optional) the figures of its records a progress bar shows, e.g. ('loss',)

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """Train one epoch; return its record (mean losses and other per-epoch figures)."""
        ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Bar]  # called as factory(total=..., initial=..., desc=...), like tqdm


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def no_progress(**_: Any) -> Bar:
    return _NoBar()


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped, keeping its last good checkpoint."""


class Interrupted(RuntimeError):
    """Ctrl-C: the epoch in progress was finished and a checkpoint saved."""


@dataclass
class LoopSettings:
    eval_every: int
    checkpoint_every: int
    progress: ProgressFactory = no_progress
    evaluate: Optional[Callable[[], Dict[str, Any]]] = None  # scores every eval_every epochs (all ranks call it)
    checkpoint: Optional[Callable[[], None]] = None  # saves the whole run's state
    where: str = ""  # the run folder, for messages
    warnings: List[str] = field(default_factory=list)
    parallel: Parallel = field(default_factory=Parallel)  # progress and checkpoints on rank 0 only
    evaluated: Optional[Callable[[Dict[str, Any]], None]] = None  # gets each scored epoch's whole record
    elapsed: Optional[Callable[[], float]] = None  # the run's wall time so far (accuracy against time)


def run_stage(stage: Stage, history: List[Dict[str, Any]], settings: LoopSettings) -> None:
    """Run `stage` from epoch len(history) to stage.epochs, appending one record per epoch.

    Raises:
        TrainingDiverged: a loss of the epoch is NaN or infinite (nothing of that epoch is saved).
        Interrupted: Ctrl-C was pressed; the checkpoint holds every finished epoch.
    """
    start = len(history)
    if start >= stage.epochs:
        return
    main = settings.parallel.is_main
    bar = (settings.progress if main else no_progress)(total=stage.epochs, initial=start, desc=stage.name)
    saved_epoch = start if start else None
    d_wins = _trailing_d_wins(history)
    try:
        with _finish_epoch_on_interrupt() as stop:
            for epoch in range(start, stage.epochs):
                rec = _train_epoch(stage, epoch, settings, saved_epoch)
                d_wins = d_wins + 1 if rec.get("d_acc", 0.0) >= D_WINS_ACCURACY else 0
                _note_health(stage, rec, d_wins, settings)
                history.append(rec)
                bar.update(1)
                bar.set_postfix(_postfix(history, getattr(stage, "shown", ("loss",))))
                stopping = settings.parallel.any(stop.is_set())  # every rank stops after the same epoch
                if _checkpoint_due(epoch, stage, settings, stopping):
                    if main:
                        settings.checkpoint()  # type: ignore[misc]
                    saved_epoch = epoch + 1
                if stopping:
                    raise Interrupted(f"interrupted in stage {stage.name} after epoch {epoch + 1}")
    finally:
        bar.close()


def _train_epoch(stage: Stage, epoch: int, settings: LoopSettings, saved_epoch: Optional[int]) -> Dict[str, Any]:
    """One epoch's record: the stage's figures, its time, and the evaluation when one is due."""
    began = time.perf_counter()
    rec: Dict[str, Any] = {"epoch": epoch, **stage.run_epoch(epoch)}
    rec["seconds"] = time.perf_counter() - began
    bad = [k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        kept = (f"the last good checkpoint (after epoch {saved_epoch}) is kept in {settings.where}"
                if saved_epoch and settings.checkpoint else "no checkpoint was saved")
        raise TrainingDiverged(f"stage {stage.name}, epoch {epoch + 1}: {bad[0]} is {rec[bad[0]]}; {kept}")
    last = epoch + 1 == stage.epochs
    # every rank scores (a sharded kNN search is collective); rank 0 reports
    if settings.evaluate is not None and ((epoch + 1) % settings.eval_every == 0 or last):
        rec.update(settings.evaluate())
        if settings.evaluated is not None:
            settings.evaluated(rec)
    if settings.elapsed is not None:
        rec["wall_seconds"] = settings.elapsed()
    return rec


def _note_health(stage: Stage, rec: Dict[str, Any], d_wins: int, settings: LoopSettings) -> None:
    """Mark the record, and warn once per stretch, when adaptation collapsed or stalled."""
    warning = _health_warning(rec, d_wins)
    if not warning:
        return
    rec["warning"] = warning
    if not settings.warnings or not settings.warnings[-1].endswith(warning):
        settings.warnings.append(f"{stage.name} epoch {rec['epoch'] + 1}: {warning}")
        if settings.parallel.is_main:
            log.warning("%s epoch %d: %s", stage.name, rec["epoch"] + 1, warning)


def _checkpoint_due(epoch: int, stage: Stage, settings: LoopSettings, stopping: bool) -> bool:
    if settings.checkpoint is None:
        return False
    return epoch + 1 == stage.epochs or (epoch + 1) % settings.checkpoint_every == 0 or stopping


def _health_warning(rec: Dict[str, Any], d_wins: int) -> Optional[str]:
    if rec.get("pred_classes") == 1:
        return "collapse: every target prediction is one class"
    if d_wins >= D_WINS_EPOCHS:
        return f"the discriminator wins outright (accuracy >= {D_WINS_ACCURACY} for {D_WINS_EPOCHS}+ epochs in a row)"
    return None


def _trailing_d_wins(history: List[Dict[str, Any]]) -> int:
    n = 0
    for rec in reversed(history):
        if rec.get("d_acc", 0.0) < D_WINS_ACCURACY:
            break
        n += 1
    return n


def _postfix(history: List[Dict[str, Any]], keys: Tuple[str, ...] = ("loss",)) -> Dict[str, str]:
    """The progress bar's figures: the stage's own (its ``shown``), then the last evaluation's."""
    rec = history[-1]
    shown = {k: f"{rec[k]:.3f}" for k in keys if k in rec}
    scored = [h for h in history if "pred_classes" in h]
    if scored:
        last = scored[-1]
        if "target_accuracy" in last:
            shown["target_acc"] = f"{last['target_accuracy']:.4f}"
        shown["classes"] = str(last["pred_classes"])
    if "warning" in rec:
        shown["WARNING"] = rec["warning"].split(":")[0]
    return shown


@contextmanager
def _finish_epoch_on_interrupt() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the loop finishes the epoch, saves and stops); a second
    one interrupts at once. Only the main thread can own SIGINT; elsewhere Ctrl-C is untouched."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("Ctrl-C: finishing this epoch, then saving a checkpoint (press Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
