"""What the predictions and embeddings of unlabelled target images say without their labels.

:data:`SELECTION_SCORES` names every score recorded at each evaluation that can pick a
checkpoint (``TrainConfig.select``; ``madda-rs report --selection`` rates them). A new score is a
function here, a line in the recorded figures (:func:`madda_rs.scores.evaluate.target_scores`)
and its entry in that table (docs/extending.md).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .. import native

# Which way is better for each score (+1: higher). None of them reads a target label.
SELECTION_SCORES: Dict[str, int] = {
    "snd": +1,  # soft neighbourhood density of the target embeddings
    "knn_center_agreement": +1,  # share of target images whose kNN label is their nearest centre's
    "pred_entropy": +1,  # balance of the predicted classes (0: all one class)
    "source_test_accuracy": +1,  # the adapted model still separates the source test set
    "d_acc": -1,  # the discriminator's accuracy: lower means better aligned features
}
# Tuning figures that read labelled target *training* images (left out of the run's subset, up to
# madda_rs.data.HOLDOUT_IMAGES of them): recorded and rated under their own name, never offered as
# label-free (not in --select, not in a result's label_free).
LABELLED_TUNING_SCORES: Dict[str, int] = {"holdout_accuracy": +1}


def label_free_figures(pred: np.ndarray, n_classes: int) -> Dict[str, Any]:
    """What the predictions on unlabelled target images say without labels: how many classes
    occur, the share of the largest, and the entropy of the class histogram over log(n_classes)
    (1: balanced; 0: all one class, the way adaptation fails)."""
    _, counts = np.unique(pred, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log(p)).sum() / np.log(n_classes)) if n_classes > 1 else 0.0
    return {"pred_classes": int(len(counts)), "pred_largest_class_share": float(p.max()), "pred_entropy": entropy}


# SND (Saito et al., ICCV 2021) over at most this many target images (a draw of the 'scores'
# stream): its n x n similarity matrix is 16 MB at 2,000; the score is a mean, so a sample
# estimates it well.
SND_IMAGES, SND_TEMPERATURE = 2000, 0.05


def soft_neighbourhood_density(emb: np.ndarray, temperature: float = SND_TEMPERATURE,
                               rng: Optional[np.random.Generator] = None) -> float:
    """Soft neighbourhood density of target embeddings: the mean entropy of each image's softmax
    over its cosine similarities (/ `temperature`) to every other image. Higher means denser
    neighbourhoods (Saito et al. pick the checkpoint that maximises it); 0 for fewer than 2 images.
    Above SND_IMAGES images, `rng` draws the sample (required then)."""
    if len(emb) > SND_IMAGES:
        if rng is None:
            raise ValueError(f"soft_neighbourhood_density: {len(emb)} images > {SND_IMAGES} needs rng= to sample")
        emb = emb[rng.choice(len(emb), SND_IMAGES, replace=False)]
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
    return np.unique(ref_labels)[native.knn_search(class_means(ref_emb, ref_labels), emb, 1)[1][:, 0]]


__all__ = ["SELECTION_SCORES", "LABELLED_TUNING_SCORES", "label_free_figures", "soft_neighbourhood_density",
           "class_means", "nearest_center_labels"]
