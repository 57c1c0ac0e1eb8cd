"""Scores: how a method labels target images (:mod:`.predictors`), what can be said without
target labels (:mod:`.label_free`), and scoring a run, live or saved (:mod:`.evaluate`).

Importing this package (and :mod:`.label_free`) needs only NumPy; the others import torch."""

from ..config import SELECTION_SCORES


def __getattr__(name: str):  # evaluate_run imports torch: only when asked for
    if name == "evaluate_run":
        from .evaluate import evaluate_run

        return evaluate_run
    raise AttributeError(name)


__all__ = ["SELECTION_SCORES", "evaluate_run"]
