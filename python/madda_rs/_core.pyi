"""Native core of madda_rs (Rust). Call the wrappers in ``madda_rs``: they coerce dtypes and layout."""

from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt
from typing_extensions import final

__all__ = ["MAX_TRIPLETS", "default_threads", "knn_kernel", "knn_kernels", "knn_predict", "knn_search",
           "knn_search_stats", "triplets"]

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

def knn_search_stats(
    src_emb: npt.NDArray[np.float32],
    tgt_emb: npt.NDArray[np.float32],
    k: int,
    threads: Optional[int] = None,
    kernel: Optional[str] = None,
) -> Tuple[int, int, int]:
    """Runs ``knn_search`` and returns what its bf16 candidate pass did: (target rows it searched,
    candidates re-ranked exactly over the rows that did not fall back, rows whose candidates
    overflowed and that the float32 kernel searched again). All zero for the float32 kernels."""

def knn_predict(
    src_emb: npt.NDArray[np.float32],
    src_y: npt.NDArray[np.int64],
    tgt_emb: npt.NDArray[np.float32],
    k: int,
    threads: Optional[int] = None,
    kernel: Optional[str] = None,
) -> npt.NDArray[np.int64]:
    """Mode of the k nearest source labels per target row; a tied vote goes to the smallest label."""

@final
class KnnIndex:
    """Exact kNN over source rows added in pieces, kept by reference; see ``madda_rs.KnnIndex``."""

    def __new__(cls, dim: int) -> "KnnIndex": ...
    @property
    def dim(self) -> int: ...
    @property
    def ntotal(self) -> int: ...
    def __len__(self) -> int: ...
    def add(self, emb: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> None:
        """Append C-contiguous float32 (n, dim) rows and (n,) int64 labels, by reference."""

    def search(
        self, tgt: npt.NDArray[np.float32], k: int, threads: Optional[int] = None
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """As ``knn_search`` on the concatenated pieces."""

    def predict(self, tgt: npt.NDArray[np.float32], k: int, threads: Optional[int] = None) -> npt.NDArray[np.int64]:
        """As ``knn_predict`` on the concatenated pieces."""

    def candidates(
        self, tgt: npt.NDArray[np.float32], k: int, threads: Optional[int] = None
    ) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(float64 exact distances, int64 indices, int64 labels), each (n_tgt, k): what ``merge_knn`` takes."""

def merge_knn(
    distances: list[npt.NDArray[np.float64]],
    indices: list[npt.NDArray[np.int64]],
    labels: Optional[list[npt.NDArray[np.int64]]],
    offsets: list[int],
    k: int,
    threads: Optional[int] = None,
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], Optional[npt.NDArray[np.int64]]]:
    """The k nearest of the parts' candidates by (distance, index + offset); see ``madda_rs.merge_knn``."""

def knn_vote(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each row's most frequent label, a tie going to the smallest."""

__all__ += ["KnnIndex", "knn_vote", "merge_knn"]

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
    """The kNN kernel used when none is forced: ``"amx-bf16"``, ``"avx512-bf16"``, ``"avx512"``,
    ``"avx2"`` or ``"portable"``, the fastest this CPU runs, or ``MADDA_KNN_KERNEL`` when set."""

def knn_kernels() -> List[str]:
    """The kNN kernels this CPU runs, fastest first (``"portable"`` always last)."""
