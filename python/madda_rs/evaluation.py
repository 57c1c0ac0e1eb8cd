"""Scoring: embeddings, kNN prediction (Algorithm 3), accuracy, label-free figures, and
re-scoring a saved run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

import madda_rs

from .config import TrainConfig
from .domains import ImageSet, RunData, prepare_data
from .models import EmbeddingNet
from .runtime import CONFIG_FILE, Parallel, RunFolder, resolve_device


@torch.no_grad()
def embed(model: EmbeddingNet, images: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
    """(N, D) float32 embeddings in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out.float().cpu().numpy()


class SourceReference:
    """The labelled source embeddings that Algorithm 3 votes over (computed once per source model).

    In a torchrun job every rank searches its shard of the source rows and the ranks' exact
    candidates are merged (:func:`madda_rs.merge_knn`): the votes equal one process's, and each
    rank does 1/N of the search. Every rank must then call :meth:`predict` together."""

    def __init__(self, model: EmbeddingNet, source: ImageSet, k: int, threads: Optional[int],
                 parallel: Parallel = Parallel()) -> None:
        assert source.labels is not None
        self.emb = embed(model, source.images)  # all rows on every rank: the magnet's centres need them
        self.labels = source.labels.cpu().numpy()
        self.k, self.threads, self.parallel = k, threads, parallel

    def predict(self, model: EmbeddingNet, images: torch.Tensor) -> np.ndarray:
        return self.predict_embedded(embed(model, images))

    def predict_embedded(self, tgt: np.ndarray) -> np.ndarray:
        """Algorithm 3 on target embeddings already computed."""
        if self.parallel.world == 1:
            return madda_rs.knn_predict(self.emb, self.labels, tgt, self.k, threads=self.threads)
        bounds = np.linspace(0, len(self.labels), self.parallel.world + 1).astype(int)
        lo, hi = bounds[self.parallel.rank], bounds[self.parallel.rank + 1]
        parts = self.parallel.gather(self._candidates(lo, hi, tgt))
        offsets = [int(b) for b, part in zip(bounds[:-1], parts) if part is not None]
        _, _, labels = madda_rs.merge_knn([p for p in parts if p is not None], self.k, offsets=offsets,
                                          threads=self.threads)
        return madda_rs.knn_vote(labels)

    def _candidates(self, lo: int, hi: int, tgt: np.ndarray) -> Optional[tuple]:
        if hi == lo:
            return None  # more ranks than source rows
        index = madda_rs.KnnIndex(self.emb.shape[1])
        index.add(self.emb[lo:hi], self.labels[lo:hi])
        return index.candidates(tgt, min(self.k, hi - lo), threads=self.threads)

    def accuracy(self, model: EmbeddingNet, test: ImageSet) -> float:
        assert test.labels is not None
        return float((self.predict(model, test.images) == test.labels.cpu().numpy()).mean())


class ClassifierScorer(SourceReference):
    """ADDA's prediction: the source classifier's label (the model's head gives one logit per
    class), not a kNN vote. `emb` holds the source logits, unused by ADDA's stages."""

    def __init__(self, model: EmbeddingNet, source: ImageSet, k: int, threads: Optional[int],
                 parallel: Parallel = Parallel()) -> None:
        super().__init__(model, source, k, threads, parallel)
        self.classes = np.unique(self.labels)

    def predict_embedded(self, tgt: np.ndarray) -> np.ndarray:
        return self.classes[tgt.argmax(axis=1)]


def label_free_figures(pred: np.ndarray, n_classes: int) -> Dict[str, Any]:
    """What the predictions on unlabelled target images say without labels: how many classes
    occur, the share of the largest, and the entropy of the class histogram over log(n_classes)
    (1: balanced; 0: all one class, the way adaptation fails)."""
    _, counts = np.unique(pred, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log(p)).sum() / np.log(n_classes)) if n_classes > 1 else 0.0
    return {"pred_classes": int(len(counts)), "pred_largest_class_share": float(p.max()), "pred_entropy": entropy}


# SND (Saito et al., ICCV 2021) over at most this many target images (a fixed draw): its n x n
# similarity matrix is 16 MB at 2,000; the score is a mean, so a sample estimates it well.
SND_IMAGES, SND_TEMPERATURE = 2000, 0.05


def soft_neighbourhood_density(emb: np.ndarray, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of target embeddings: the mean entropy of each image's softmax
    over its cosine similarities (/ `temperature`) to every other image. Higher means denser
    neighbourhoods (Saito et al. pick the checkpoint that maximises it); 0 for fewer than 2 images."""
    if len(emb) > SND_IMAGES:
        emb = emb[np.random.default_rng(0).choice(len(emb), SND_IMAGES, replace=False)]
    n = len(emb)
    if n < 2:
        return 0.0
    unit = emb.astype(np.float64) / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    logits = unit @ unit.T / temperature
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1).mean())


def class_means(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class mean embeddings (paper, Algorithm 2 line 8), rows in ascending label order."""
    return np.stack([emb[labels == c].mean(axis=0) for c in np.unique(labels)]).astype(np.float32)


def nearest_center_labels(emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
    """The label of the nearest source class mean for each row of `emb`."""
    return np.unique(ref_labels)[madda_rs.knn_search(class_means(ref_emb, ref_labels), emb, 1)[1][:, 0]]


# source_test_accuracy scores at most this many source test images (a fixed draw)
SOURCE_CHECK_IMAGES = 2000


def target_scores(reference: SourceReference, model: EmbeddingNet, data: RunData) -> Dict[str, Any]:
    """Label-free figures on the target training images (predicted classes, SND, kNN/centre
    agreement, source test accuracy of `model`), plus accuracy on the held-out target training
    images and the target test set where they exist."""
    n_classes = len(np.unique(reference.labels))
    tgt = embed(model, data.tgt_train.images)
    pred = reference.predict_embedded(tgt)
    scores = label_free_figures(pred, n_classes)
    scores["snd"] = soft_neighbourhood_density(tgt)
    centre = nearest_center_labels(tgt, reference.emb, reference.labels)
    scores["knn_center_agreement"] = float((pred == centre).mean())
    if data.src_test is not None:
        scores["source_test_accuracy"] = reference.accuracy(model, data.src_test.subset(SOURCE_CHECK_IMAGES, 0))
    if data.tgt_holdout is not None:
        scores["holdout_accuracy"] = reference.accuracy(model, data.tgt_holdout)
    if data.tgt_test is not None:
        scores["target_accuracy"] = reference.accuracy(model, data.tgt_test)
    return scores


def confusion(reference: SourceReference, model: EmbeddingNet, test: ImageSet) -> Dict[str, Any]:
    """{"classes": labels, "confusion": counts[true][predicted]} on a labelled test set."""
    assert test.labels is not None
    truth = test.labels.cpu().numpy()
    pred = reference.predict(model, test.images)
    classes = np.union1d(np.unique(reference.labels), np.unique(truth))
    index = {c: i for i, c in enumerate(classes.tolist())}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, ([index[c] for c in truth.tolist()], [index[c] for c in pred.tolist()]), 1)
    return {"classes": classes.tolist(), "confusion": counts.tolist()}


# How each training method labels a target image (madda_rs.training.METHODS has its stages).
SCORERS = {"madda": SourceReference, "adda": ClassifierScorer}


def save_model(folder: RunFolder, name: str, model: EmbeddingNet, config: TrainConfig, epoch: int) -> None:
    folder.save(name, {
        "state_dict": model.state_dict(), "config": config.to_dict(), "epoch": epoch,
        "in_shape": list(model.encoder.in_shape), "out_dim": model.head[1].out_features,
    })


def load_model(path: Path | str, device: torch.device | str = "cpu") -> EmbeddingNet:
    """Rebuild an EmbeddingNet from a model file of a run (source.pt, target.pt), any device to any."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    out_dim = int(ckpt.get("out_dim", ckpt["config"]["embedding_dim"]))
    model = EmbeddingNet(out_dim, tuple(ckpt.get("in_shape", (1, 28, 28))))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


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
    on in-memory images), kNN with the run's k unless `k` is given."""
    folder = RunFolder(run_dir)
    for name in (CONFIG_FILE, "source.pt", "target.pt"):
        if not (folder.path / name).is_file():
            raise FileNotFoundError(f"{folder.path / name} is missing: is {run_dir} a finished 'madda-rs train' run?")
    config = TrainConfig.load(str(folder.path / CONFIG_FILE))
    changes: Dict[str, Any] = {"device": device}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if k is not None:
        changes["k"] = k
    config = config.replace(**changes)
    dev = resolve_device(config.device)
    data = prepare_data(config, dev, source=source, target=target, target_test=target_test, source_test=source_test)
    source_model, target_model = load_model(folder.path / "source.pt", dev), load_model(folder.path / "target.pt", dev)
    reference = SCORERS[config.method](source_model, data.src_train, config.k, config.threads)
    scores = target_scores(reference, target_model, data)
    if data.src_test is not None:
        scores["source_accuracy"] = reference.accuracy(source_model, data.src_test)
    return scores
