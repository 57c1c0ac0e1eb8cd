"""The native core's Python face: argument checks and coercions around :mod:`madda_rs._core`.

Triplet enumeration and exact kNN need only NumPy; nothing here imports torch. Every function
takes NumPy arrays, anything ``np.asarray`` accepts, and CPU torch tensors (viewed without a
copy; tensors are recognised by type, so torch is never imported here), checks them, and hands
them to the Rust core, which runs without the GIL.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Literal, Optional, Tuple

import numpy as np

from . import _core

__all__ = ["knn_predict", "knn_search", "triplets", "default_threads", "knn_kernel", "MAX_TRIPLETS"]

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


class KnnIndex:
    """Exact kNN over a source set that arrives in pieces: arrays, or memory-mapped ``.npy`` files.

    ``add(emb, labels)`` appends rows; ``search`` and ``predict`` then answer exactly as
    :func:`knn_search` and :func:`knn_predict` on the concatenation of everything added, bit for
    bit: the same neighbours, ordered by (distance, global index), the same float32 distances, the
    same vote (a tie goes to the smallest label). Global index = row within its piece + rows added
    before it.

    Memory: a float32 C-contiguous piece is kept by reference, not copied (other dtypes and layouts
    are converted once, at ``add``, into a float32 copy held by the index). The index reads the
    pieces one after the other at each search, so a source set larger than RAM can be searched
    from ``np.load(path, mmap_mode="r")`` arrays: pieces are cut into row ranges of at most 256 MiB,
    the page cache holds one such range at a time, and the extra memory is O(n_tgt * k) candidates.
    ``add`` reads a piece once to check its values (finite, not too large); changing an array after
    adding it changes the index (a search checks each piece again before reading it).

    How it stays exact: each piece is searched with the :func:`knn_search` kernel; the candidates'
    float64 distances (the very key the unsharded search ranks by) are recomputed and merged by
    (distance, global index). The same merge, :func:`merge_knn`, combines the :meth:`candidates` of
    ranks that each hold a shard. ``add`` while another thread searches is safe: that search
    uses the pieces present when it began.
    """

    # Row ranges of at most this many bytes: one range's pages are what a search needs resident.
    PIECE_BYTES = 256 << 20

    def __init__(self, dim: int) -> None:
        self._native = _core.KnnIndex(_count("dim", dim))

    @property
    def dim(self) -> int:
        """Feature columns of every row."""
        return self._native.dim

    @property
    def ntotal(self) -> int:
        """Rows added so far."""
        return self._native.ntotal

    def __len__(self) -> int:
        return self._native.ntotal

    def __repr__(self) -> str:
        return f"KnnIndex(dim={self.dim}, ntotal={self.ntotal})"

    def _k(self, k: object) -> int:
        k = _count("k", k)
        n = self.ntotal
        if n and k > n:  # here too, so a k past 2**64 is a ValueError, not an OverflowError
            raise ValueError(f"k: expected 1 <= k <= ntotal = {n} (rows in the index), got {k}")
        return k

    def add(self, emb: np.ndarray, labels: np.ndarray) -> None:
        """Append the rows of ``emb`` ((n, dim), any real dtype) with ``labels`` ((n,), any integer dtype).

        Raises:
            TypeError: non-numeric ``emb`` or non-integer ``labels``.
            ValueError: wrong dimensions, a dim other than the index's, a label count other than n,
                NaN, inf or values too large for float32 squared distances.
        """
        arr = _matrix("emb", emb)
        y = _labels("labels", labels)
        if arr.shape[1] != self.dim:
            raise ValueError(f"emb: expected {self.dim} feature columns (the index's dim), got {arr.shape[1]}")
        if y.shape[0] != arr.shape[0]:
            raise ValueError(f"labels: expected one label per row of emb ({arr.shape[0]}), got {y.shape[0]}")
        step = max(1, self.PIECE_BYTES // (4 * self.dim))
        for start in range(0, arr.shape[0], step):
            self._native.add(arr[start : start + step], y[start : start + step])

    def search(self, tgt: np.ndarray, k: int, *, threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(distances float32, indices int64)``, each (n_tgt, k): :func:`knn_search` on the concatenation.

        Raises:
            TypeError: non-numeric ``tgt`` or a non-integer ``k``.
            ValueError: an empty index, a dim other than the index's, NaN or inf, k > ntotal.
        """
        return self._native.search(_matrix("tgt", tgt), self._k(k), _threads(threads))

    def predict(self, tgt: np.ndarray, k: int, *, threads: Optional[int] = None) -> np.ndarray:
        """int64 (n_tgt,) labels: :func:`knn_predict` on the concatenated rows and labels."""
        return self._native.predict(_matrix("tgt", tgt), self._k(k), _threads(threads))

    def candidates(
        self, tgt: np.ndarray, k: int, *, threads: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a rank holding this index as its shard exchanges for :func:`merge_knn`.

        Returns ``(distances float64, indices int64, labels int64)``, each (n_tgt, k): the k
        nearest rows by (distance, index), with the exact float64 distances (``search`` returns
        them rounded to float32), indices counted from 0 in this index, and the rows' labels.
        """
        return self._native.candidates(_matrix("tgt", tgt), self._k(k), _threads(threads))


def merge_knn(
    parts: list[tuple[np.ndarray, ...]],
    k: int,
    *,
    offsets: Optional[list[int]] = None,
    threads: Optional[int] = None,
) -> Tuple[np.ndarray, ...]:
    """Merge candidate lists of searches over disjoint shards into the exact k nearest overall.

    For ranks of a distributed job that each hold one shard of the source set: every rank runs
    ``KnnIndex.candidates(tgt, k)`` on the same targets, the lists are gathered, and this merge
    returns exactly what :func:`knn_search` on the concatenated shards would (in that order), as
    long as each rank exchanges, per target row:

    * its shard's first ``min(k, n_shard)`` rows by (distance, index), all of them;
    * their float64 distances as ``candidates`` gives them. float32 distances are refused: rounding
      can make two different distances equal, and the tie would then go by index, unlike
      ``knn_search``;
    * their indices, made global by ``offsets[i]`` = rows of the shards before shard i in the
      concatenation (or already global, offsets left at 0);
    * their labels, if a vote is wanted.

    Args:
        parts: a list (or tuple) of one ``(distances, indices)`` or ``(distances, indices, labels)`` per shard (all of
            one kind), each (n_tgt, k_i): float64 distances, integer indices and labels.
        k: 1 <= k <= sum of the k_i.
        offsets: one integer per part, added to its indices (default 0).
        threads: worker threads (default: ``MADDA_NUM_THREADS``, else all CPUs).

    Returns:
        ``(distances float64, indices int64)``, plus ``labels int64`` when the parts had labels,
        each (n_tgt, k), ordered by (distance, global index). ``distances.astype(np.float32)``
        equals :func:`knn_search`'s distances; ``knn_vote(labels)`` equals :func:`knn_predict`.

    Raises:
        TypeError: a part that is not a 2- or 3-tuple of arrays, non-float64 distances, non-integer
            indices or labels, a non-integer ``k`` or offset.
        ValueError: no parts, shapes that disagree, negative or non-finite distances, negative
            global indices, a global index twice in one row (overlapping shards), k out of range.
    """
    if not isinstance(parts, (list, tuple)):
        raise TypeError(f"parts: expected a list of (distances, indices[, labels]) tuples, got {type(parts).__name__}")
    if len(parts) == 0:
        raise ValueError("parts: expected at least one part, got none")
    arity = None
    dists, idxs, labels = [], [], []
    for p, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) not in (2, 3):
            raise TypeError(f"parts[{p}]: expected a (distances, indices) or (distances, indices, labels) tuple")
        if arity is None:
            arity = len(part)
        elif len(part) != arity:
            raise TypeError(f"parts[{p}]: expected a {arity}-tuple like parts[0], got a {len(part)}-tuple")
        d = np.asarray(part[0])
        if d.dtype != np.float64:
            raise TypeError(
                f"parts[{p}]: expected float64 distances (KnnIndex.candidates), got dtype {d.dtype}; "
                "rounded distances cannot be merged exactly"
            )
        if d.ndim != 2:
            raise ValueError(f"parts[{p}]: expected 2-D distances of shape (n_tgt, k), got shape {d.shape}")
        arrays = [np.ascontiguousarray(d)]
        for name, x in zip(("indices", "labels"), part[1:]):
            a = np.asarray(x)
            if a.dtype.kind not in "iu":
                raise TypeError(f"parts[{p}]: expected integer {name}, got dtype {a.dtype}")
            if a.shape != d.shape:
                raise ValueError(f"parts[{p}]: expected {name} of the distances' shape {d.shape}, got {a.shape}")
            if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
                raise ValueError(f"parts[{p}]: expected {name} that fit in int64, got {a.max()}")
            arrays.append(np.ascontiguousarray(a, dtype=np.int64))
        dists.append(arrays[0])
        idxs.append(arrays[1])
        if arity == 3:
            labels.append(arrays[2])
    if offsets is None:
        offs = [0] * len(parts)
    else:
        offs = list(offsets)
        if len(offs) != len(parts):
            raise ValueError(f"offsets: expected one per part ({len(parts)}), got {len(offs)}")
        for o in offs:
            if not isinstance(o, numbers.Integral) or isinstance(o, bool):
                raise TypeError(f"offsets: expected integers, got {type(o).__name__}")
            if not 0 <= int(o) < 2**63:
                raise ValueError(f"offsets: expected integers in [0, 2**63), got {o}")
        offs = [int(o) for o in offs]
    k = _count("k", k)
    total = sum(d.shape[1] for d in dists)
    if k > total:
        raise ValueError(
            f"k: expected 1 <= k <= {total} (the candidates per target row, summed over the parts), got {k}"
        )
    d, i, y = _core.merge_knn(dists, idxs, labels if arity == 3 else None, offs, k, _threads(threads))
    return (d, i) if y is None else (d, i, y)


def knn_vote(labels: np.ndarray) -> np.ndarray:
    """int64 (n,): the most frequent label of each row of ``labels`` ((n, k), any integer dtype, k >= 1),
    a tie going to the smallest label: the vote of :func:`knn_predict`."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"labels: expected a 2-D array of shape (n, k) with k >= 1, got shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"labels: expected labels that fit in int64, got {arr.max()}")
    return _core.knn_vote(np.ascontiguousarray(arr, dtype=np.int64))


__all__ += ["KnnIndex", "merge_knn", "knn_vote"]


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
            n = y.shape[0]
            raise ValueError(f"sq_dists: expected shape ({n}, {n}) to match labels, got {dists.shape}")
        dists = np.ascontiguousarray(dists, dtype=np.float64)
    if not isinstance(margin, numbers.Real) or isinstance(margin, bool):
        raise TypeError(f"margin: expected a real number, got {type(margin).__name__}")
    try:
        margin = float(margin)
    except OverflowError:
        bits = int(margin).bit_length()
        raise ValueError(f"margin: expected a finite number, got an integer of {bits} bits") from None
    return _core.triplets(y, int(seed), negatives, dists, margin, _threads(threads))


def _is_tensor(x: object) -> bool:
    """A torch.Tensor (or subclass, e.g. nn.Parameter), recognised without importing torch."""
    if isinstance(x, np.ndarray):
        return False
    return any(c.__name__ == "Tensor" and c.__module__ == "torch" for c in type(x).__mro__)


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
                f"{name}: expected values that fit in float32, got {float(arr[row, col])!r} at row {row}, "
                f"column {col}; rescale the embeddings"
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
