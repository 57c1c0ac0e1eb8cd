"""madda_rs.knn_predict against the sgemm floor, NumPy, torch, scikit-learn and faiss (as installed,
and with its OpenBLAS core type forced to this CPU's); writes results/knn.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import madda_rs

from _bench import QUICK, THREADS, best_time, write_table
from _peers import GEMMS, GPU_PEERS, PEERS, blas_cores, cpu_coretype, faiss, limit_threads

# (n_src, n_tgt, d, k): a small pair, USPS-train -> USPS-test sized, MNIST-train -> MNIST-test sized.
SIZES = [(2000, 1800, 256, 5), (7291, 2007, 256, 5), (60000, 10000, 256, 5)]
QUICK_SIZES = [(500, 400, 64, 5), (1000, 600, 64, 5), (3000, 1000, 128, 5)]
CLASSES = 10
REPEATS_SMALL, REPEATS_MID = 15, 7  # best-of counts below the largest size (2 there)
MEMORY_LIMIT_MB = 200
FLOOR_FRACTION = 0.9  # madda_rs must reach this fraction of the sgemm floor's throughput
OURS = f"madda_rs (threads={THREADS})"  # the row every ratio is taken against
FLOOR = "sgemm floor (GEMM only, no selection)"
FAISS = "faiss (IndexFlatL2)"
CORETYPE = cpu_coretype()
FAISS_FORCED = f"faiss, OPENBLAS_CORETYPE={CORETYPE}"

# Peak memory of native code is invisible to tracemalloc, so measure the growth of the process's
# peak RSS across one call, in a fresh process whose inputs are already allocated. The peak is read
# from VmHWM: ru_maxrss survives exec, so a child of this (torch-laden) process would start at the
# parent's peak and hide the call's growth.
MEMORY_SCRIPT = """
import resource, sys
import numpy as np, madda_rs

def peak_kib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

n_src, n_tgt, d, k, threads = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
src = rng.standard_normal((n_src, d), dtype=np.float32)  # float32 directly: no float64 temporary
tgt = rng.standard_normal((n_tgt, d), dtype=np.float32)
y = rng.integers(0, 10, n_src)
madda_rs.knn_predict(src, y, tgt[:8], k, threads=threads)  # warm-up: builds the thread pool
before = peak_kib()
madda_rs.knn_predict(src, y, tgt, k, threads=threads)
after = peak_kib()
print((after - before) * 1024 / 1e6)
"""

# OPENBLAS_CORETYPE is read when OpenBLAS loads, so the forced faiss runs in a fresh process.
FORCED_FAISS_SCRIPT = """
import json, sys
import numpy as np
import faiss, threadpoolctl
sys.path.insert(0, sys.argv[1])
from _bench import best_time
from _peers import faiss_knn
from bench_knn import data
n_src, n_tgt, d, k, threads, repeats = map(int, sys.argv[2:8])
src, y, tgt = data(n_src, n_tgt, d)
faiss.omp_set_num_threads(threads)
with threadpoolctl.threadpool_limits(threads):
    sec, _, pred = best_time(lambda: faiss_knn(src, y, tgt, k), repeats)
np.save(sys.argv[8], pred)
cores = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
print(json.dumps({"seconds": sec, "cores": cores}))
"""


def data(n_src: int, n_tgt: int, d: int):
    rng = np.random.default_rng(0)
    src = rng.standard_normal((n_src, d), dtype=np.float32)
    tgt = rng.standard_normal((n_tgt, d), dtype=np.float32)
    return src, rng.integers(0, CLASSES, n_src), tgt


def peak_extra_mb(n_src: int, n_tgt: int, d: int, k: int) -> float:
    args = [sys.executable, "-c", MEMORY_SCRIPT, *map(str, (n_src, n_tgt, d, k, THREADS))]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1])


def forced_faiss(n_src: int, n_tgt: int, d: int, k: int, repeats: int):
    """(seconds, predictions, the core types OpenBLAS reported) for faiss with OPENBLAS_CORETYPE set."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred.npy"
        args = [sys.executable, "-c", FORCED_FAISS_SCRIPT, str(Path(__file__).parent)]
        args += [*map(str, (n_src, n_tgt, d, k, THREADS, repeats)), str(out)]
        env = dict(os.environ, OPENBLAS_CORETYPE=CORETYPE)
        proc = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return result["seconds"], np.load(out), result["cores"]


@pytest.mark.bench
def test_knn_predict_vs_peers():
    sizes = QUICK_SIZES if QUICK else SIZES
    kernel = madda_rs.knn_kernel()
    rows, failures, disagreements, forced_cores = [], [], [], []
    faiss_cores = sorted({c for path, c in blas_cores().items() if "faiss" in path})
    with limit_threads():
        for n_src, n_tgt, d, k in sizes:
            big = (n_src, n_tgt, d, k) == sizes[-1]
            # Calls of a few milliseconds vary by tens of percent on a shared VM: take the best of many.
            repeats = 2 if big else REPEATS_SMALL if n_src * n_tgt < 1e7 else REPEATS_MID
            src, y, tgt = data(n_src, n_tgt, d)
            times, preds = {}, {}
            # Each thread count is timed in one go: the library caches a single pool, so alternating
            # thread counts would rebuild it on every call.
            for t in (THREADS, 1):
                name = f"madda_rs (threads={t})"
                call = lambda: madda_rs.knn_predict(src, y, tgt, k, threads=t)  # noqa: E731
                times[name], _, preds[name] = best_time(call, repeats)
            gemm = {name: best_time(lambda: fn(src, tgt), repeats)[0] for name, fn in GEMMS.items() if fn}
            floor_by = min(gemm, key=gemm.get)
            times[FLOOR] = gemm[floor_by]
            for name, fn in PEERS.items():
                times[name] = None
                if fn is not None:
                    times[name], _, preds[name] = best_time(lambda: fn(src, y, tgt, k), repeats)
            for name, fn in GPU_PEERS.items():  # reported, not a bar for the CPU kernel (checks below skip them)
                times[name], _, preds[name] = best_time(lambda: fn(src, y, tgt, k), repeats)
            times[FAISS_FORCED] = None
            if faiss is not None:
                times[FAISS_FORCED], preds[FAISS_FORCED], forced_cores = forced_faiss(n_src, n_tgt, d, k, repeats)
            ours = times[OURS]
            agree = {name: float(np.mean(p == preds[OURS])) for name, p in preds.items()}
            # Not a timing check, so asserted in quick mode too: a peer that disagrees would make
            # the comparison meaningless.
            disagreements += [f"{name} at {n_src} x {n_tgt}: {a:.2%}" for name, a in agree.items() if a <= 0.99]

            size = f"{n_src} x {n_tgt} x {d}, k={k}"
            gflops = lambda sec: 2.0 * n_src * n_tgt * d / sec / 1e9  # noqa: E731
            for name, sec in times.items():
                label = f"{FLOOR}: {floor_by}" if name == FLOOR else name
                if sec is None:
                    rows.append([size, label, "not installed", "", "", ""])
                else:
                    agreed = f"{agree[name]:.2%}" if name in agree else ""
                    rows.append([size, label, f"{sec:.4g}", f"{gflops(sec):.0f}", f"{ours / sec:.3f}", agreed])

            # At every size: ahead of every peer a user would pick instead (a missing peer is not a
            # failure). At the largest, where the per-call work is amortised: FLOOR_FRACTION of the
            # sgemm floor's throughput (at 2000 x 1800 it is 80-90%: the candidate bookkeeping and
            # the exact re-rank are a fixed share of a small search).
            r = {name: ours / sec for name, sec in times.items() if sec is not None}
            checks = [(r[name] < 1.0, f"vs {name}: ratio {r[name]:.3f}, want < 1") for name in [*PEERS, FAISS_FORCED] if name in r]
            if big:
                memory = peak_extra_mb(n_src, n_tgt, d, k)
                checks += [
                    (
                        times[FLOOR] / ours >= FLOOR_FRACTION,
                        f"{times[FLOOR] / ours:.1%} of the sgemm floor's throughput, want >= {FLOOR_FRACTION:.0%}",
                    ),
                    (r["madda_rs (threads=1)"] < 0.8, f"{THREADS} threads vs 1: ratio {r['madda_rs (threads=1)']:.3f}, want < 0.8"),
                    (memory < MEMORY_LIMIT_MB, f"peak extra memory {memory:.1f} MB, want < {MEMORY_LIMIT_MB}"),
                ]
            failures += [f"{size}: {msg}" for ok, msg in checks if not ok]

    write_table(
        "knn",
        "knn_predict: madda_rs vs the sgemm floor and peers",
        ["n_src x n_tgt x d, k", "implementation", "seconds", "GFLOP/s", f"madda_rs({THREADS} threads) / this", "agrees with madda_rs"],
        rows,
        setting=f"madda_rs kernel: {kernel}",
        notes=[
            f"Float32 standard-normal data (seed 0), {CLASSES} classes; best of {REPEATS_SMALL} calls below 10^7 "
            f"source x target pairs, {REPEATS_MID} below the largest size and 2 at it, after a warm-up call; every "
            f"implementation limited to {THREADS} threads. "
            "A ratio below 1 means madda_rs is faster. GFLOP/s counts the 2 n_src n_tgt d flops of the dot products.",
            "",
            f"The sgemm floor is the faster of NumPy's and torch's single-precision GEMM computing every dot product "
            f"(tgt @ src.T in 1024-row blocks) with no selection at all; madda_rs must reach {FLOOR_FRACTION:.0%} of its "
            "throughput at the largest size, and be ahead of every peer at every size.",
            "",
            f"faiss as installed uses an OpenBLAS that chose the core type {', '.join(faiss_cores) or 'unknown'}; "
            f"the forced row runs it in a fresh process with OPENBLAS_CORETYPE={CORETYPE} "
            f"(OpenBLAS then reported {', '.join(sorted(set(forced_cores))) or 'nothing'}).",
            "",
            f"Peak extra memory of madda_rs (threads={THREADS}) at {sizes[-1][0]} x {sizes[-1][1]} x {sizes[-1][2]}: "
            f"{memory:.1f} MB (growth of peak RSS, VmHWM, across one call in a fresh process).",
        ],
    )
    assert not disagreements, disagreements
    if QUICK:
        return  # sizes too small for speed claims
    assert not failures, failures
