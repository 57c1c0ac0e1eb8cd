"""madda_rs.triplets against a plain Python loop and vectorised NumPy; writes results/triplets.md."""

from __future__ import annotations

import random

import numpy as np
import pytest

import madda_rs

from _bench import QUICK, THREADS, best_time, write_table
from _peers import numpy_triplets, python_triplets

BATCHES = [64, 256, 1024, 4096]
QUICK_BATCHES = [64, 256, 1024]
CLASSES = 10
# Seconds a timed run must last: small batches take microseconds, so a run loops many calls.
MIN_TIME = 0.02 if QUICK else 0.2
REPEATS = 3 if QUICK else 5


def squared_distances(x: np.ndarray) -> np.ndarray:
    """(B, B) float64 squared distances via one GEMM (broadcasting would need B*B*d floats)."""
    sq = np.einsum("ij,ij->i", x, x)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    np.fill_diagonal(d, 0.0)
    return d


@pytest.mark.bench
def test_triplets_vs_peers():
    rows, failures = [], []
    for b in QUICK_BATCHES if QUICK else BATCHES:
        rng = np.random.default_rng(b)
        labels = rng.integers(0, CLASSES, b)
        sq_dists = squared_distances(rng.standard_normal((b, 64)))  # built once, outside the timing
        py_rng, np_rng = random.Random(0), np.random.default_rng(0)
        impls = {
            "Python loop": lambda: python_triplets(labels, py_rng),
            "NumPy vectorised": lambda: numpy_triplets(labels, np_rng),
            "madda_rs": lambda: madda_rs.triplets(labels, seed=0, threads=THREADS),
            "madda_rs violating (info)": lambda: madda_rs.triplets(
                labels, seed=0, negatives="violating", sq_dists=sq_dists, threads=THREADS
            ),
        }
        count, rate = {}, {}
        for name, fn in impls.items():
            sec, number, out = best_time(fn, REPEATS, MIN_TIME)
            count[name], rate[name] = len(out), len(out) / sec
            rows.append([b, name, count[name], number, f"{sec * 1e3:.4g}", f"{rate[name]:.3g}"])
        # Random negatives: every pair yields one triplet, so the three must agree exactly.
        assert count["Python loop"] == count["NumPy vectorised"] == count["madda_rs"], count
        for row in rows[-len(impls) :]:
            peer = row[1] in ("Python loop", "NumPy vectorised")
            row.append(f"{rate['madda_rs'] / rate[row[1]]:.1f}x" if peer else "")
        if b >= 1024:
            py, nd = rate["madda_rs"] / rate["Python loop"], rate["madda_rs"] / rate["NumPy vectorised"]
            if py < 50:
                failures.append(f"B={b}: {py:.1f}x Python, want >= 50x")
            if nd < 3:
                failures.append(f"B={b}: {nd:.1f}x NumPy, want >= 3x")

    write_table(
        "triplets",
        "triplets: madda_rs vs a Python loop and vectorised NumPy",
        ["batch", "implementation", "triplets", "calls per run", "ms per call", "triplets/s", "madda_rs speed-up"],
        rows,
        notes=[
            f"{CLASSES} classes (labels = rng.integers(0, {CLASSES}, B)), random negatives unless stated; best of "
            f"{REPEATS} runs after a warm-up call, each run at least {MIN_TIME} s; madda_rs with threads={THREADS}. "
            "The violating row (margin 1, float64 squared distances of 64-d normal embeddings) is informational: "
            "it skips pairs without a violating negative and does more work per pair.",
        ],
    )
    if QUICK:
        return  # sizes too small for speed claims
    assert not failures, failures
