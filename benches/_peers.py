"""What a user would write instead of madda_rs: kNN classifiers and triplet enumerators.

Each kNN peer is a function (src, y, tgt, k) -> int64 labels, written the way a competent user
would, with the same vote rule as madda_rs (most frequent label, smallest label on ties). A peer
whose package is missing is None in PEERS, and the benchmark records "not installed".
"""

from __future__ import annotations

import contextlib
import importlib
import random
from itertools import combinations

import numpy as np

from _bench import THREADS

BLOCK = 1024  # target rows per GEMM block: bounds the distance block to BLOCK x n_src


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


torch = _optional("torch")
faiss = _optional("faiss")
sklearn_neighbors = _optional("sklearn.neighbors")


def vote(neigh_labels: np.ndarray) -> np.ndarray:
    """Row-wise mode of non-negative int labels; argmax takes the first max, i.e. the smallest label."""
    n, k = neigh_labels.shape
    c = int(neigh_labels.max()) + 1 if neigh_labels.size else 1
    counts = np.bincount((np.arange(n)[:, None] * c + neigh_labels).ravel(), minlength=n * c)
    return counts.reshape(n, c).argmax(axis=1)


def numpy_knn(src, y, tgt, k):
    src_sq = np.einsum("ij,ij->i", src, src)
    out = np.empty(len(tgt), dtype=np.int64)
    for t0 in range(0, len(tgt), BLOCK):
        # |t|^2 is the same for every source row, so it cannot change the ranking.
        d = tgt[t0 : t0 + BLOCK] @ src.T
        d *= -2
        d += src_sq
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        out[t0 : t0 + BLOCK] = vote(y[idx])
    return out


def torch_knn(src, y, tgt, k):
    s, t = torch.from_numpy(src), torch.from_numpy(tgt)
    s_sq, yt = (s * s).sum(1), torch.from_numpy(y)
    out = []
    for t0 in range(0, len(t), BLOCK):
        d = torch.addmm(s_sq, t[t0 : t0 + BLOCK], s.T, alpha=-2)
        idx = torch.topk(d, k, dim=1, largest=False).indices
        counts = torch.nn.functional.one_hot(yt[idx]).sum(1)
        out.append(counts.argmax(1))  # first max: the smallest label on ties
    return torch.cat(out).numpy()


def torch_cuda_knn(src, y, tgt, k):
    """torch_knn on the GPU, the copies to and from it included: another machine class, so it is
    reported beside the CPU peers, never a bar madda_rs's CPU kernel is held to."""
    dev = torch.device("cuda")
    s, t, yt = (torch.from_numpy(a).to(dev) for a in (src, tgt, y))
    s_sq = (s * s).sum(1)
    out = []
    for t0 in range(0, len(t), 8 * BLOCK):
        d = torch.addmm(s_sq, t[t0 : t0 + 8 * BLOCK], s.T, alpha=-2)
        idx = torch.topk(d, k, dim=1, largest=False).indices
        out.append(torch.nn.functional.one_hot(yt[idx]).sum(1).argmax(1))
    return torch.cat(out).cpu().numpy()


def sklearn_knn(src, y, tgt, k):
    clf = sklearn_neighbors.KNeighborsClassifier(n_neighbors=k, algorithm="brute")
    return clf.fit(src, y).predict(tgt)


def faiss_knn(src, y, tgt, k):
    index = faiss.IndexFlatL2(src.shape[1])
    index.add(src)
    _, idx = index.search(tgt, k)
    return vote(y[idx])


def numpy_gemm(src, tgt):
    """The sgemm floor: every dot product, in the blocks numpy_knn uses, and no selection."""
    for t0 in range(0, len(tgt), BLOCK):
        tgt[t0 : t0 + BLOCK] @ src.T


def torch_gemm(src, tgt):
    s, t = torch.from_numpy(src), torch.from_numpy(tgt)
    for t0 in range(0, len(t), BLOCK):
        torch.mm(t[t0 : t0 + BLOCK], s.T)


GEMMS = {"NumPy": numpy_gemm, "torch": torch_gemm if torch else None}


def blas_cores() -> dict[str, str]:
    """The OpenBLAS core type each loaded OpenBLAS picked (threadpoolctl), keyed by its file."""
    threadpoolctl = _optional("threadpoolctl")
    if threadpoolctl is None:
        return {}
    return {
        info["filepath"]: info.get("architecture") or "?"
        for info in threadpoolctl.threadpool_info()
        if info.get("internal_api") == "openblas"
    }


def cpu_coretype() -> str:
    """The OpenBLAS core type matching this CPU's vector units, for OPENBLAS_CORETYPE."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(1 << 16)
    except OSError:
        return "Prescott"
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell" if "GenuineIntel" in info else "Zen"
    return "Sandybridge" if "avx" in flags else "Prescott"


PEERS = {
    "NumPy (blocked GEMM + argpartition)": numpy_knn,  # bench_knn.NUMPY
    "torch (mm + topk)": torch_knn if torch else None,
    "scikit-learn (brute)": sklearn_knn if sklearn_neighbors else None,
    "faiss (IndexFlatL2)": faiss_knn if faiss else None,
}
# Peers on a GPU, where there is one (scripts/device_check.sh runs this bench on a CUDA machine)
GPU_PEERS = {"torch CUDA (mm + topk, copies included)": torch_cuda_knn}
if torch is None or not torch.cuda.is_available():
    GPU_PEERS = {}


def limit_threads():
    """Pin every peer to THREADS threads; returns a threadpoolctl context (or a no-op)."""
    if torch:
        torch.set_num_threads(THREADS)
    if faiss:
        faiss.omp_set_num_threads(THREADS)
    threadpoolctl = _optional("threadpoolctl")  # BLAS (NumPy) and OpenMP (scikit-learn)
    return threadpoolctl.threadpool_limits(THREADS) if threadpoolctl else contextlib.nullcontext()


def python_triplets(labels, rng: random.Random):
    """Plain Python: per label, every pair (i < j) with a uniform negative among the other labels."""
    labels = labels.tolist()
    out = []
    for lab in sorted(set(labels)):
        members = [i for i, v in enumerate(labels) if v == lab]
        others = [i for i, v in enumerate(labels) if v != lab]  # built once per label, not per pair
        if others:
            out.extend((a, p, rng.choice(others)) for a, p in combinations(members, 2))
    return out  # a list, not an array: flatters Python, so speed-ups against it are conservative


def numpy_triplets(labels, rng: np.random.Generator):
    """Vectorised per label: triu_indices for the pairs, one integers() draw for their negatives."""
    parts = []
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        others = np.flatnonzero(labels != lab)
        if len(members) < 2 or len(others) == 0:
            continue
        a, p = np.triu_indices(len(members), 1)
        neg = others[rng.integers(0, len(others), len(a))]
        parts.append(np.stack([members[a], members[p], neg], axis=1))
    return np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
