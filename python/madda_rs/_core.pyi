"""Native core of madda_rs (Rust). Call the wrappers in ``madda_rs``: they coerce dtypes and layout."""

from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_TRIPLETS", "default_threads", "knn_kernel", "knn_kernels", "knn_predict", "knn_search", "triplets"]

MAX_TRIPLETS: int

def knn_search(
    src_emb: npt.NDArray[np.float32],
    tgt_emb: npt.NDArray[np.float32],
    k: int,
    threads: Optional[int] = None,
    kernel: Optional[str] = None,
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(distances, indices), each (n_tgt, k); neighbours ordered by (squared distance, source index).
    Inputs must be C-contiguous float32. ``kernel`` (one of :func:`knn_kernels`) forces the inner
    loop; every kernel gives identical results."""

def knn_predict(
    src_emb: npt.NDArray[np.float32],
    src_y: npt.NDArray[np.int64],
    tgt_emb: npt.NDArray[np.float32],
    k: int,
    threads: Optional[int] = None,
    kernel: Optional[str] = None,
) -> npt.NDArray[np.int64]:
    """Mode of the k nearest source labels per target row; a tied vote goes to the smallest label."""

def triplets(
    labels: npt.NDArray[np.int64],
    seed: int,
    negatives: str,
    sq_dists: Optional[npt.NDArray[np.float64]],
    margin: float,
    threads: Optional[int] = None,
) -> npt.NDArray[np.int64]:
    """(m, 3) int64 (anchor, positive, negative); see ``madda_rs.triplets``."""

def default_threads() -> int:
    """``MADDA_NUM_THREADS`` if set, else the number of CPUs."""

def knn_kernel() -> str:
    """The kNN kernel used when none is forced: ``"avx512"``, ``"avx2"`` or ``"portable"``, the
    widest this CPU runs, capped by ``MADDA_KNN_KERNEL`` when set."""

def knn_kernels() -> List[str]:
    """The kNN kernels this CPU runs, fastest first (``"portable"`` always last)."""
