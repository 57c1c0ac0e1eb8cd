"""The three losses of M-ADDA: triplet (Eq. 1), adversarial (Eq. 3) and center magnet (Eq. 4), and
the 'improved' preset's labelled magnet and information maximisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances, via |a|^2 + |b|^2 - 2ab (clamped at 0)."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min_(0.0)


def triplet_loss(emb: torch.Tensor, triplets: torch.Tensor, margin: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 averaged over triplets: mean of max(0, |a-p|^2 - |a-n|^2 + margin).

    Args:
        emb: (B, D) embeddings of the batch.
        triplets: (m, 3) int64 batch positions (anchor, positive, negative), m >= 1.

    Returns:
        (loss, number of active triplets, i.e. with positive loss, as a 0-d tensor).
    """
    a, p, n = emb[triplets[:, 0]], emb[triplets[:, 1]], emb[triplets[:, 2]]
    per_triplet = F.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + margin)
    return per_triplet.mean(), (per_triplet > 0).sum()


def center_magnet_loss(emb: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Eq. 4 averaged over the batch: mean over rows of min_j |emb_i - C_j|^2."""
    return pairwise_sq_dists(emb, centers).min(dim=1).values.mean()


def labelled_magnet_loss(emb: torch.Tensor, centers: torch.Tensor, assign: torch.Tensor,
                         keep: torch.Tensor) -> torch.Tensor:
    """Eq. 4 with a given centre per row instead of the nearest: mean over the kept rows of
    |emb_i - C_assign_i|^2 (zero, with a gradient, when no row is kept)."""
    sq = (emb - centers[assign]).pow(2).sum(1)
    return (sq * keep).sum() / keep.sum().clamp_min(1)


def information_maximisation_loss(emb: torch.Tensor, centers: torch.Tensor, spread: float) -> torch.Tensor:
    """SHOT's information maximisation (Liang et al. 2020) on soft assignments to the centres,
    p_ij = softmax_j(-|emb_i - C_j|^2 / spread): the mean entropy of each row's assignment (make
    each confident) minus the entropy of the batch's mean assignment (keep the classes balanced,
    which stops them merging)."""
    log_p = F.log_softmax(-pairwise_sq_dists(emb, centers) / spread, dim=1)
    p = log_p.exp()
    per_image = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0)
    batch = -(mean_p * mean_p.clamp_min(1e-12).log()).sum()
    return per_image - batch


def discriminator_loss(src_logits: torch.Tensor, tgt_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3 for D: source features labelled 1, target features labelled 0 (binary cross-entropy)."""
    logits = torch.cat([src_logits, tgt_logits])
    labels = torch.cat([torch.ones_like(src_logits), torch.zeros_like(tgt_logits)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def confusion_loss(tgt_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3 for the target encoder with inverted labels: make D call target features source."""
    return F.binary_cross_entropy_with_logits(tgt_logits, torch.ones_like(tgt_logits))
