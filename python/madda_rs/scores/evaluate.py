"""Scoring a run: the figures recorded at each evaluation (label-free ones on the target
training images, accuracies where labelled test sets exist), the final confusion matrix, and
re-scoring a saved run (``madda-rs eval``)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..config import TrainConfig
from ..data.images import ImageSet
from ..data.run_data import RunData, prepare_data
from ..models import EmbeddingNet
from ..run.folder import CONFIG_FILE, SOURCE_MODEL_FILE, TARGET_MODEL_FILE, RunFolder, load_model
from ..run.processes import resolve_device
from ..run.streams import numpy_rng, stream_seed
from .label_free import (
    batch_nuclear_norm,
    class_ami,
    deep_embedded_validation,
    information_maximisation,
    label_free_figures,
    mean_entropy,
    mixval,
    nearest_center_labels,
    reverse_accuracy,
    soft_neighbourhood_density,
)
from .predictors import KnnPredictor, embed

# source_test_accuracy scores at most this many source test images (a draw of the 'scores' stream)
SOURCE_CHECK_IMAGES = 2000


def target_scores(predictor: KnnPredictor, model: EmbeddingNet, data: RunData, seed: int) -> Dict[str, Any]:
    """Label-free figures on the target training images (predicted classes, SND, IM, BNM,
    entropy, ClassAMI, kNN/centre agreement; with a labelled source test set also DEV, reverse
    accuracy and the source test accuracy of `model`), plus accuracy on the held-out target
    training images and the target test set where they exist. `seed` is the run's: the samples
    come from its 'scores' stream, the same at every evaluation."""
    classes = np.unique(predictor.labels)
    tgt = embed(model, data.tgt_train)
    pred = predictor.predict_embedded(tgt)
    proba = predictor.probabilities(tgt)
    scores = label_free_figures(pred, len(classes))
    scores["snd"] = soft_neighbourhood_density(tgt, rng=numpy_rng(seed, "scores", 0))
    scores["im"] = information_maximisation(proba)
    scores["bnm"] = batch_nuclear_norm(proba)
    scores["entropy"] = mean_entropy(proba)
    scores["class_ami"] = class_ami(tgt, pred, len(classes), stream_seed(seed, "scores", 2))
    centre = nearest_center_labels(tgt, predictor.emb, predictor.labels)
    scores["knn_center_agreement"] = float((pred == centre).mean())
    if data.src_test is not None:
        scores.update(_source_side_scores(predictor, model, data.src_test, tgt, pred, classes, seed))
    if data.tgt_holdout is not None:
        scores["holdout_accuracy"] = predictor.accuracy(model, data.tgt_holdout)
    if data.tgt_test is not None:
        scores["target_accuracy"] = predictor.accuracy(model, data.tgt_test)
    return scores


def _source_side_scores(predictor: KnnPredictor, model: EmbeddingNet, src_test: ImageSet, tgt: np.ndarray,
                        pred: np.ndarray, classes: np.ndarray, seed: int) -> Dict[str, float]:
    """The scores that read labelled source test images beside the unlabelled target ones:
    source test accuracy, DEV (a third of the draw validates, two thirds teach its domain
    classifier, as skada splits) and the reverse kNN's accuracy."""
    check = src_test.subset(SOURCE_CHECK_IMAGES, stream_seed(seed, "scores", 1))
    assert check.labels is not None
    labels = check.labels.cpu().numpy()
    src = embed(model, check)
    scores = {"source_test_accuracy": float((predictor.predict_embedded(src) == labels).mean())}
    known = np.isin(labels, classes)  # DEV's loss needs each image's class among the predictor's
    order = numpy_rng(seed, "scores", 3).permutation(np.flatnonzero(known))
    n_val = len(order) // 3
    if n_val >= 2 and len(tgt) >= 2:
        val, fit = order[:n_val], order[n_val:]
        scores["dev"] = deep_embedded_validation(src[fit], src[val], predictor.probabilities(src[val]),
                                                 np.searchsorted(classes, labels[val]), tgt)
    scores["reverse_accuracy"] = reverse_accuracy(tgt, pred, src, labels, predictor.k, predictor.threads)
    return scores


def confusion(predictor: KnnPredictor, model: EmbeddingNet, test: ImageSet) -> Dict[str, Any]:
    """{"classes": labels, "confusion": counts[true][predicted]} on a labelled test set."""
    assert test.labels is not None
    truth = test.labels.cpu().numpy()
    pred = predictor.predict(model, test)
    classes = np.union1d(np.unique(predictor.labels), np.unique(truth))
    index = {c: i for i, c in enumerate(classes.tolist())}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, ([index[c] for c in truth.tolist()], [index[c] for c in pred.tolist()]), 1)
    return {"classes": classes.tolist(), "confusion": counts.tolist()}


def evaluate_run(
    run_dir: str,
    device: str = "auto",
    data_dir: Optional[str] = None,
    k: Optional[int] = None,
    *,
    source: Any = None,
    target: Any = None,
    target_test: Any = None,
    source_test: Any = None,
) -> Dict[str, Any]:
    """Re-score a saved run: its config and models, its data rebuilt (or given, for a run trained
    on in-memory images), its method's predictor with the run's k unless `k` is given."""
    folder, config = _saved_run(run_dir)
    changes: Dict[str, Any] = {"device": device}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    config = config.replace(**changes)
    dev = resolve_device(config.device)
    data = prepare_data(config, source=source, target=target, target_test=target_test, source_test=source_test)
    source_model, target_model, predictor = _saved_models(folder, config, data, dev, k)
    scores = target_scores(predictor, target_model, data, config.seed)
    if data.src_test is not None:
        scores["source_accuracy"] = predictor.accuracy(source_model, data.src_test)
    return scores


def target_predictions(run_dir: str, data: Optional[RunData] = None, device: str = "cpu") -> np.ndarray:
    """A finished run's predicted class for each target training image (the unlabelled images it
    adapted to): its method's predictor over its saved models, at its k. `data` saves rebuilding
    the run's image sets when the caller holds them (tune's candidates share one)."""
    folder, config = _saved_run(run_dir)
    data = data if data is not None else prepare_data(config)
    _, target_model, predictor = _saved_models(folder, config, data, resolve_device(device))
    return predictor.predict_embedded(embed(target_model, data.tgt_train))


def _saved_run(run_dir: str) -> Tuple[RunFolder, TrainConfig]:
    """A finished run's folder and config; a missing config or model file is named."""
    folder = RunFolder(run_dir)
    for name in (CONFIG_FILE, SOURCE_MODEL_FILE, TARGET_MODEL_FILE):
        if not (folder.path / name).is_file():
            raise FileNotFoundError(f"{folder.path / name} is missing: is {run_dir} a finished 'madda-rs train' run?")
    return folder, TrainConfig.load(str(folder.path / CONFIG_FILE))


def _saved_models(folder: RunFolder, config: TrainConfig, data: RunData, device: torch.device,
                  k: Optional[int] = None) -> Tuple[EmbeddingNet, EmbeddingNet, KnnPredictor]:
    """The run's source and target models, and its method's predictor over `data`'s source images
    (with `k` neighbours in place of the run's, where given)."""
    from ..methods import get_method

    source_model = load_model(folder.path / SOURCE_MODEL_FILE, device)
    predictor = get_method(config.method).predictor(source_model, data.src_train, config, k=k)
    return source_model, load_model(folder.path / TARGET_MODEL_FILE, device), predictor


def target_mixval(run_dir: str, data: Optional[RunData] = None, device: str = "cpu") -> float:
    """MixVal (:func:`~madda_rs.scores.label_free.mixval`) of a finished run on its target
    training images: its method's predictor over its saved models, images paired in an order
    drawn from the run's 'mixval' stream. Reads no label."""
    folder, config = _saved_run(run_dir)
    data = data if data is not None else prepare_data(config)
    dev = resolve_device(device)
    _, target_model, predictor = _saved_models(folder, config, data, dev)
    images = torch.cat(list(data.tgt_train.stream(torch.arange(len(data.tgt_train)).split(512), dev))).cpu().numpy()
    order = numpy_rng(config.seed, "mixval").permutation(len(images))

    def predict(x: np.ndarray) -> np.ndarray:
        return predictor.predict_embedded(embed(target_model, torch.from_numpy(x.astype(np.float32)).to(dev)))

    return mixval(predict, images, order)


__all__ = ["target_scores", "confusion", "evaluate_run", "target_predictions", "target_mixval",
           "SOURCE_CHECK_IMAGES"]
