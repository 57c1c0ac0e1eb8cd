"""madda_rs: M-ADDA domain adaptation with a Rust core.

The native functions here (triplet enumeration and exact kNN) need only NumPy; importing this
package does not import torch. They take NumPy arrays, anything ``np.asarray`` accepts, and CPU
torch tensors (viewed without a copy; tensors are recognised by type, so torch is never imported
here). Training lives in :mod:`madda_rs.training` and the CLI in :mod:`madda_rs.cli`.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Literal, Optional, Tuple

import numpy as np

from . import _core

__all__ = ["knn_predict", "knn_search", "triplets", "default_threads", "MAX_TRIPLETS", "__version__"]
__version__ = "0.1.0"

MAX_TRIPLETS: int = _core.MAX_TRIPLETS
default_threads = _core.default_threads
knn_kernel = _core.knn_kernel  # "avx512", "avx2" or "portable": the kNN inner loop this CPU runs

NegativeMode = Literal["random", "violating", "hardest", "semihard"]


def knn_search(
    src_emb: np.ndarray, tgt_emb: np.ndarray, k: int, *, threads: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest source rows of every target row, under squared Euclidean distance.

    Args:
        src_emb: (n_src, d) source embeddings, n_src >= 1; any real dtype, any layout; a NumPy
            array or a CPU torch tensor (``requires_grad`` is fine: the search is not
            differentiated).
        tgt_emb: (n_tgt, d) target embeddings; n_tgt may be 0.
        k: number of neighbours, 1 <= k <= n_src.
        threads: worker threads (default: ``MADDA_NUM_THREADS``, else all CPUs).

    Returns:
        ``(distances, indices)``: float32 and int64 arrays of shape (n_tgt, k). Row i lists the
        neighbours of target i ordered by (distance, source index), so equal distances go to the
        smaller index.

    Inputs are converted to float32 (no copy when already float32 and C-contiguous, tensors
    included); the results are NumPy arrays (``torch.from_numpy`` wraps them without a copy). Distances
    are exact: candidates found with a tiled float32 GEMM are re-ranked with float64 differences
    inside a proven rounding-error window, so the neighbours equal a float64 brute-force search of
    the float32 inputs, except where two distances differ by less than float64 summation error.
    The full (n_tgt x n_src) distance matrix is never built. Runs without the GIL.

    Raises:
        TypeError: non-numeric arrays, a non-integer ``k``, or a tensor that is not on the CPU
            (call ``.cpu()`` first).
        ValueError: wrong dimensions, mismatched d, NaN or inf, empty source, k out of range.
    """
    src = _matrix("src_emb", src_emb)
    tgt = _matrix("tgt_emb", tgt_emb)
    return _core.knn_search(src, tgt, _k(k, src), _threads(threads))


def knn_predict(
    src_emb: np.ndarray, src_y: np.ndarray, tgt_emb: np.ndarray, k: int, *, threads: Optional[int] = None
) -> np.ndarray:
    """Label each target row by a vote of its k nearest source rows (M-ADDA, Algorithm 3).

    Neighbours are those of :func:`knn_search` (exact squared Euclidean distance, ordered by
    (distance, source index)). The prediction is the most frequent label among them; a tie in the
    vote goes to the smallest label, as in scikit-learn's ``KNeighborsClassifier`` with uniform
    weights, so both agree given the same neighbours.

    Args:
        src_emb: (n_src, d) source embeddings (NumPy array or CPU tensor, as in :func:`knn_search`).
        src_y: (n_src,) integer labels of any integer dtype.
        tgt_emb: (n_tgt, d) target embeddings.
        k: 1 <= k <= n_src.
        threads: worker threads (default: ``MADDA_NUM_THREADS``, else all CPUs).

    Returns:
        int64 array of shape (n_tgt,).
    """
    src = _matrix("src_emb", src_emb)
    labels = _labels("src_y", src_y)
    if labels.shape[0] != src.shape[0]:
        raise ValueError(f"src_y: expected one label per row of src_emb ({src.shape[0]}), got {labels.shape[0]}")
    tgt = _matrix("tgt_emb", tgt_emb)
    return _core.knn_predict(src, labels, tgt, _k(k, src), _threads(threads))


def triplets(
    labels: np.ndarray,
    *,
    seed: Optional[int] = None,
    negatives: NegativeMode = "random",
    sq_dists: Optional[np.ndarray] = None,
    margin: float = 1.0,
    threads: Optional[int] = None,
) -> np.ndarray:
    """Enumerate a batch's triplets (M-ADDA, Algorithm 1).

    For every label in the batch (ascending) and every pair i < j of batch positions sharing it,
    one row (anchor i, positive j, negative n). The negative is chosen by ``negatives``:

    * ``"random"``: uniformly among positions whose label differs (the paper).
    * ``"violating"``: uniformly among negatives with d(a,p) - d(a,n) + margin > 0, the pair
      being skipped when there is none (the authors' released code).
    * ``"hardest"``: the violating negative nearest the anchor (smallest index on ties).
    * ``"semihard"``: uniformly among d(a,p) < d(a,n) < d(a,p) + margin (FaceNet).

    ``labels`` and ``sq_dists`` may be NumPy arrays or CPU torch tensors (int64 labels are used
    without a copy; ``sq_dists`` is read as float64, so a float32 matrix is converted once).
    The distance modes need ``sq_dists``, the batch's (B, B) squared distances (used in float64).
    A label with one member yields nothing; a single-label batch yields a (0, 3) array. The same
    seed gives the same output, whatever the thread count. At most :data:`MAX_TRIPLETS` rows
    (50 M) are returned; larger requests raise ValueError before allocating.

    Returns:
        int64 array of shape (m, 3): batch positions (anchor, positive, negative).
    """
    y = _labels("labels", labels)
    if negatives not in ("random", "violating", "hardest", "semihard"):
        raise ValueError(f"negatives: expected one of 'random', 'violating', 'hardest', 'semihard', got {negatives!r}")
    if seed is None:
        seed = secrets.randbits(64)
    elif not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed: expected None or an integer, got {type(seed).__name__}")
    elif not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed: expected None or an integer in [0, 2**64), got {seed}")
    dists = None
    if sq_dists is not None:
        dists = _numeric("sq_dists", sq_dists)
        if dists.shape != (y.shape[0], y.shape[0]):
            raise ValueError(f"sq_dists: expected shape ({y.shape[0]}, {y.shape[0]}) to match labels, got {dists.shape}")
        dists = np.ascontiguousarray(dists, dtype=np.float64)
    if not isinstance(margin, numbers.Real) or isinstance(margin, bool):
        raise TypeError(f"margin: expected a real number, got {type(margin).__name__}")
    try:
        margin = float(margin)
    except OverflowError:
        raise ValueError(f"margin: expected a finite number, got an integer of {int(margin).bit_length()} bits") from None
    return _core.triplets(y, int(seed), negatives, dists, margin, _threads(threads))


def _is_tensor(x: object) -> bool:
    """A torch.Tensor (or subclass, e.g. nn.Parameter), recognised without importing torch."""
    return not isinstance(x, np.ndarray) and any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(x).__mro__)


def _tensor_as_numpy(name: str, t) -> np.ndarray:
    """A NumPy view of CPU tensor ``t``'s memory (no copy; bfloat16, which NumPy lacks, is widened).

    Each test is a cheap attribute read, so a CPU tensor costs a few microseconds more than an array.
    """
    if t.device.type != "cpu":
        raise TypeError(
            f"{name}: expected a NumPy array or a CPU tensor, got a tensor on {t.device}; "
            f"move it with .cpu() first (madda_rs runs on the CPU)"
        )
    if str(t.layout) != "torch.strided":
        raise TypeError(f"{name}: expected a dense tensor, got layout {t.layout}; call .to_dense() first")
    if t.requires_grad:
        t = t.detach()  # the result is not differentiated; detach shares memory
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    try:
        return t.numpy()
    except (RuntimeError, TypeError) as e:  # quantized tensors, dtypes NumPy has no match for, ...
        raise TypeError(f"{name}: expected a tensor NumPy can view, got dtype {t.dtype} ({e})") from None


def _asarray(name: str, x: object) -> np.ndarray:
    return _tensor_as_numpy(name, x) if _is_tensor(x) else np.asarray(x)


def _numeric(name: str, x: object) -> np.ndarray:
    arr = _asarray(name, x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a numeric (integer or float) array, got dtype {arr.dtype}")
    return arr


def _matrix(name: str, x: object) -> np.ndarray:
    arr = _numeric(name, x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, d), got {arr.ndim}-D with shape {arr.shape}")
    # float32 C-contiguous input passes through without a copy
    if arr.dtype == np.float32:
        return np.ascontiguousarray(arr)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        overflow = np.isinf(out) & np.isfinite(arr)
        if overflow.any():
            row, col = np.argwhere(overflow)[0]
            raise ValueError(
                f"{name}: expected values that fit in float32, got {float(arr[row, col])!r} at row {row}, column {col}; "
                "rescale the embeddings"
            )
    return out


def _labels(name: str, x: object) -> np.ndarray:
    arr = _asarray(name, x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected labels that fit in int64, got {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _count(name: str, v: object) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {v}")
    return int(v)


def _k(k: object, src: np.ndarray) -> int:
    k = _count("k", k)
    if src.shape[0] and k > src.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= n_src = {src.shape[0]}, got {k}")
    return k


MAX_THREADS = 4096


def _threads(v: Optional[int]) -> Optional[int]:
    if v is None:
        return None
    v = _count("threads", v)
    if v > MAX_THREADS:
        raise ValueError(f"threads: expected at most {MAX_THREADS}, got {v}")
    return v
