"""What the predictions and embeddings of unlabelled target images say without their labels.

:data:`madda_rs.config.SELECTION_SCORES` names every score recorded at each evaluation that can pick a
checkpoint (``TrainConfig.select``; ``madda-rs report --selection`` rates them). A new score is a
function here, a line in the recorded figures (:func:`madda_rs.scores.evaluate.target_scores`)
and its entry in that table (docs/extending.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from .. import native
from ..config import SELECTION_SCORES

# SELECTION_SCORES (which way is better for each score; none reads a target label) is the list
# TrainConfig.select chooses from, so config, the lowest layer, keeps it.
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


def soft_predictions(emb: np.ndarray, centers: np.ndarray, spread: float) -> np.ndarray:
    """(n, C) soft class assignments p_ij = softmax_j(-|emb_i - C_j|^2 / spread): the
    probabilities the validators read for a kNN method (the same assignments its IM loss uses)."""
    sq = (emb.astype(np.float64) ** 2).sum(1)[:, None] - 2.0 * emb.astype(np.float64) @ centers.T.astype(np.float64)
    sq += (centers.astype(np.float64) ** 2).sum(1)[None, :]
    return _softmax(-sq / spread)


def class_spread(emb: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance of the source embeddings to their own class mean: the unit of
    :func:`soft_predictions`, so their sharpness does not depend on the embedding's scale."""
    classes = np.unique(labels)
    own = class_means(emb, labels)[np.searchsorted(classes, labels)]
    return float(((emb - own) ** 2).sum(1).mean())


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _row_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def information_maximisation(p: np.ndarray) -> float:
    """IM: the entropy of the mean prediction minus the mean entropy of each (high: confident
    and balanced; log C at best)."""
    return float(_row_entropy(p.mean(0, keepdims=True))[0] - _row_entropy(p).mean())


def batch_nuclear_norm(p: np.ndarray) -> float:
    """BNM: the nuclear norm of the (n, C) prediction matrix (high: confident and diverse), over
    sqrt(n * min(n, C)) so that balanced one-hot rows score 1 whatever n is (Cui et al. divide by n)."""
    n, c = p.shape
    return float(np.linalg.svd(p.astype(np.float64), compute_uv=False).sum() / np.sqrt(n * min(n, c)))


def mean_entropy(p: np.ndarray) -> float:
    """The mean entropy (nats) of each image's soft prediction: low means confident."""
    return float(_row_entropy(p.astype(np.float64)).mean())


def class_ami(emb: np.ndarray, pred: np.ndarray, n_classes: int, seed: int) -> float:
    """ClassAMI (Musgrave et al. 2022): adjusted mutual information between k-means clusters
    (k = the number of classes) of the target embeddings and the predicted labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score
    from threadpoolctl import threadpool_limits

    if len(emb) < n_classes or n_classes < 2:
        return 0.0
    with threadpool_limits(limits=1, user_api="openmp"):  # one thread: the same clusters run to run
        clusters = KMeans(n_clusters=n_classes, n_init=1, random_state=seed % 2**32).fit_predict(emb)
    return float(adjusted_mutual_info_score(clusters, pred))


def deep_embedded_validation(src_train: np.ndarray, src_val: np.ndarray, val_proba: np.ndarray,
                             val_labels: np.ndarray, tgt: np.ndarray) -> float:
    """DEV (You et al., ICML 2019), as skada's DeepEmbeddedValidation computes it: a logistic
    regression tells source features (`src_train`) from target ones (`tgt`); its odds weight the
    cross-entropy of each source validation image's prediction (`val_proba` over the classes
    0..C-1, true class `val_labels`), and a control variate on the weights cuts the variance.
    Lower is better."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # skada's fit, at scikit-learn's defaults: on embeddings far from unit scale lbfgs stops at its
    # 100 iterations, and that stopped fit is what defines the score (every record so far used it),
    # so its warning would only print a page of advice in the middle of a training log
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        domain = LogisticRegression().fit(np.concatenate([src_train, tgt]),
                                          np.r_[np.ones(len(src_train)), np.zeros(len(tgt))])
    odds = domain.predict_proba(src_val)
    weights = (len(src_train) / len(tgt)) * odds[:, :1] / odds[:, 1:]
    p_true = np.clip(val_proba[np.arange(len(val_labels)), val_labels], 1e-15, 1 - 1e-15)
    weighted = weights * -np.log(p_true)[:, None]
    var_w = np.var(weights, ddof=1)
    eta = 0.0 if var_w == 0 else -np.cov(np.concatenate([weighted, weights], axis=1), rowvar=False)[0, 1] / var_w
    return float(weighted.mean() + eta * weights.mean() - eta)


def reverse_accuracy(tgt: np.ndarray, pred: np.ndarray, src: np.ndarray, src_labels: np.ndarray, k: int,
                     threads: Optional[int] = None) -> float:
    """Reverse (circular) validation (Zhong et al. 2010): a kNN vote over the target embeddings
    labelled with their own predictions classifies labelled source images; its accuracy is high
    only when the predictions kept the classes the source taught."""
    return float((native.knn_predict(tgt, pred, src, min(k, len(tgt)), threads=threads) == src_labels).mean())


def ensemble_agreement(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """EnsV (Hu et al. 2024): each candidate's share of target images on which it predicts the
    candidates' majority label (ties to the smallest label). Labels are class indices >= 0; no
    target label is read, only the candidates' own predictions."""
    stacked = np.stack([np.asarray(p, dtype=np.int64) for p in predictions])  # candidates x images
    counts = np.stack([np.bincount(col, minlength=int(stacked.max()) + 1) for col in stacked.T])
    return (stacked == counts.argmax(axis=1)[None, :]).mean(axis=1)


def class_means(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class mean embeddings (paper, Algorithm 2 line 8), rows in ascending label order."""
    return np.stack([emb[labels == c].mean(axis=0) for c in np.unique(labels)]).astype(np.float32)


def nearest_center_labels(emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray) -> np.ndarray:
    """The label of the nearest source class mean for each row of `emb`."""
    return np.unique(ref_labels)[native.knn_search(class_means(ref_emb, ref_labels), emb, 1)[1][:, 0]]


MIXVAL_ALPHA = 0.55  # Hu et al. 2023's (and skada's MixValScorer's) mixing weight


def mixval(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, order: np.ndarray,
           alpha: float = MIXVAL_ALPHA) -> float:
    """MixVal (Hu et al. 2023), as skada's ``MixValScorer(ice_type='both')`` computes it: each
    target image is mixed with image ``order[i]`` (``alpha`` of the first), the mix should get
    the first image's predicted label; the score is the mean of that agreement over pairs the
    model labels alike and over pairs it labels apart (either alone where the other is empty).
    `predict` maps model inputs (N, ...) to labels; `order` is a permutation of the images."""
    labels = np.asarray(predict(images))
    other = labels[order]
    mixed = alpha * images + (1 - alpha) * images[order]
    wanted = labels if alpha >= 0.5 else other
    agree = np.asarray(predict(mixed)) == wanted
    parts = [agree[mask].mean() for mask in (labels == other, labels != other) if mask.any()]
    return float(np.mean(parts))


__all__ = ["SELECTION_SCORES", "LABELLED_TUNING_SCORES", "ensemble_agreement", "mixval", "MIXVAL_ALPHA",
           "label_free_figures",
           "soft_neighbourhood_density", "soft_predictions", "class_spread", "information_maximisation",
           "batch_nuclear_norm", "mean_entropy", "class_ami", "deep_embedded_validation", "reverse_accuracy",
           "class_means", "nearest_center_labels"]
