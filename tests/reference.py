"""Plain NumPy brute-force references for the native functions of :mod:`madda_rs`.

Deliberately simple and slow: explicit differences, float64 throughout, no tricks. The tests
compare the library against these.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

# ----------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------


def sq_dists_ref(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """(n_tgt, n_src) float64 squared distances of the float32-rounded inputs, by explicit differences."""
    s = np.asarray(src).astype(np.float32).astype(np.float64)
    t = np.asarray(tgt).astype(np.float32).astype(np.float64)
    out = np.empty((len(t), len(s)), dtype=np.float64)
    step = max(1, (1 << 22) // max(1, s.size))  # ~32 MB of differences at a time
    for i in range(0, len(t), step):
        diff = t[i : i + step, None, :] - s[None, :, :]
        out[i : i + step] = (diff * diff).sum(axis=-1)
    return out


def knn_order_ref(src: np.ndarray, tgt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every source row of every target row, ordered by (distance, source index).

    Returns ``(order, sorted_dists)``: int64 and float64 arrays of shape (n_tgt, n_src).
    """
    d = sq_dists_ref(src, tgt)
    n_tgt, n_src = d.shape
    index = np.broadcast_to(np.arange(n_src), d.shape)
    # np.lexsort sorts by the last key first: distance, then index.
    order = np.lexsort((index, d), axis=-1).astype(np.int64) if n_tgt else np.zeros((0, n_src), np.int64)
    return order, np.take_along_axis(d, order, axis=1)


def knn_search_ref(src: np.ndarray, tgt: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(distances float64 (n_tgt, k), indices int64 (n_tgt, k))`` ordered by (distance, index)."""
    order, sorted_d = knn_order_ref(src, tgt)
    return sorted_d[:, :k], order[:, :k]


def vote_ref(labels: np.ndarray) -> int:
    """The most frequent label; a tie goes to the smallest label."""
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return int(values[np.argmax(counts)])  # np.unique sorts ascending; argmax takes the first max


def knn_predict_ref(src: np.ndarray, src_y: np.ndarray, tgt: np.ndarray, k: int) -> np.ndarray:
    """Mode vote over the k nearest (by (distance, index)) source labels; int64 (n_tgt,)."""
    _, idx = knn_search_ref(src, tgt, k)
    y = np.asarray(src_y).astype(np.int64)
    return np.array([vote_ref(y[row]) for row in idx], dtype=np.int64).reshape(len(idx))


def ambiguous_rows(sorted_d: np.ndarray, k: int, rtol: float = 1e-6) -> np.ndarray:
    """Rows whose top-k (set or order) is not numerically well defined.

    A row is ambiguous when two of its k+1 smallest reference distances are distinct but
    within ``rtol`` of each other (a genuine near-tie that float64 summation order may flip).
    Exact ties are not ambiguous: they are broken by index.
    """
    head = sorted_d[:, : k + 1]
    if head.shape[1] < 2:
        return np.zeros(len(sorted_d), dtype=bool)
    lo, hi = head[:, :-1], head[:, 1:]
    near = (hi > lo) & (hi - lo <= rtol * np.maximum(np.abs(hi), np.finfo(np.float64).tiny))
    return near.any(axis=1)


# ----------------------------------------------------------------------------------------------
# Triplets
# ----------------------------------------------------------------------------------------------


def triplet_pairs_ref(labels: np.ndarray) -> np.ndarray:
    """(m, 2) int64 (anchor, positive): labels ascending, then pairs i < j in index order.

    Exactly the pairs that get a triple in "random" mode: every same-label pair when the batch
    has at least two labels (so a negative exists), none otherwise.
    """
    y = np.asarray(labels).astype(np.int64)
    out = []
    if len(np.unique(y)) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    for lab in np.unique(y):  # ascending
        members = np.flatnonzero(y == lab)  # ascending batch positions
        i, j = np.triu_indices(len(members), 1)  # row-major: (0,1), (0,2), ..., (1,2), ...
        out.append(np.stack([members[i], members[j]], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64).reshape(-1, 2)


def admissible_negatives_ref(
    labels: np.ndarray, a: int, p: int, negatives: str, sq_dists: Optional[np.ndarray] = None, margin: float = 1.0
) -> np.ndarray:
    """Sorted int64 batch positions that may serve as the negative of pair (a, p).

    * random: every position whose label differs from the anchor's;
    * violating / hardest: those with d(a,p) - d(a,n) + margin > 0 (the hardest one must be
      picked among these; see :func:`hardest_negative_ref`);
    * semihard: those with d(a,p) < d(a,n) and d(a,p) - d(a,n) + margin > 0.
    """
    y = np.asarray(labels).astype(np.int64)
    cand = np.flatnonzero(y != y[a]).astype(np.int64)
    if negatives == "random":
        return cand
    d = np.asarray(sq_dists, dtype=np.float64)
    d_ap = d[a, p]
    keep = []
    for n in cand:
        d_an = d[a, n]
        violating = (d_ap - d_an) + margin > 0.0  # same operation order as the contract
        if negatives in ("violating", "hardest"):
            ok = violating
        elif negatives == "semihard":
            ok = violating and d_ap < d_an
        else:
            raise ValueError(negatives)
        if ok:
            keep.append(int(n))
    return np.array(keep, dtype=np.int64)


def hardest_negative_ref(admissible: np.ndarray, sq_dists: np.ndarray, a: int) -> int:
    """The admissible negative with the smallest d(a, n), ties to the smallest index."""
    d = np.asarray(sq_dists, dtype=np.float64)
    return int(min(admissible, key=lambda n: (d[a, n], n)))


def triplets_ref(
    labels: np.ndarray, negatives: str = "random", sq_dists: Optional[np.ndarray] = None, margin: float = 1.0
) -> List[Tuple[int, int, np.ndarray]]:
    """For every same-label pair in output order: (anchor, positive, admissible negatives).

    Pairs whose admissible set is empty are included here (with an empty array); the library
    must skip exactly those.
    """
    pairs = triplet_pairs_ref(labels)
    return [
        (int(a), int(p), admissible_negatives_ref(labels, int(a), int(p), negatives, sq_dists, margin))
        for a, p in pairs
    ]
