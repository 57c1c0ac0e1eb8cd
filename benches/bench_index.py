"""KnnIndex over memory-mapped .npy shards against knn_search on the same rows in memory; writes results/index.md.

Measures, on a source set of a few hundred MB written to a temporary directory: the time of one
search through the index over memory-mapped shards (warm page cache) and over in-memory pieces,
as ratios to knn_search on the concatenated array, and the peak extra memory of each, in a fresh
process per measurement. A source set larger than RAM is not benchmarked (it would need more disk
and time than a bench run should take); the table shows instead how the index's memory scales
with the source size, which is what such a run depends on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import madda_rs

from _bench import QUICK, THREADS, best_time, write_table

# Shards of SHARD_ROWS x D float32 rows, then N_TGT targets and K neighbours.
SHARD_ROWS, SHARDS, D, N_TGT, K = (10_000, 4, 64, 200, 5) if QUICK else (100_000, 4, 256, 1000, 5)
CLASSES = 10
MAX_RATIO = 1.25  # index over memory-mapped shards / in-memory knn_search, warm page cache
MAX_EXTRA_MB = 64  # anonymous memory a search through the index may add, whatever the source size

# One search in a fresh process whose inputs are already in place. Rust allocations are invisible
# to tracemalloc, so read /proc/self/status: VmHWM (peak RSS) before and after the call, and
# RssAnon sampled every 2 ms during it (the call leaves the GIL, so the sampling thread runs).
# RssAnon excludes the memory-mapped source pages: those are page cache, which the kernel can
# drop and re-read, so they do not bound the source size the way heap memory does.
MEMORY_SCRIPT = """
import json, sys, threading, time
from pathlib import Path
import numpy as np, madda_rs

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024  # MiB

mode, folder, shards, n_tgt, d, k, threads = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
tgt = np.random.default_rng(1).standard_normal((n_tgt, d), dtype=np.float32)
embs = [folder / f"emb{s}.npy" for s in range(shards)]
labels = [np.load(folder / f"y{s}.npy") for s in range(shards)]
if mode == "index over memory-mapped shards":
    index = madda_rs.KnnIndex(d)
    for emb, y in zip(embs, labels):
        index.add(np.load(emb, mmap_mode="r"), y)
    run = lambda t: index.search(t, k, threads=threads)
else:
    src = np.concatenate([np.load(emb) for emb in embs])
    run = lambda t: madda_rs.knn_search(src, t, k, threads=threads)
run(tgt[:8])  # warm-up: thread pool, and every source page read once
before = {key: status(key) for key in ("VmHWM", "RssAnon", "RssFile")}
peak, done = [before["RssAnon"]], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
run(tgt)
done.set()
sampler.join()
peak[0] = max(peak[0], status("RssAnon"))
print(json.dumps({
    "hwm_growth": status("VmHWM") - before["VmHWM"],
    "anon_growth": peak[0] - before["RssAnon"],
    "anon_peak": peak[0],
    "file_resident": status("RssFile"),
}))
"""


def write_shards(folder: Path) -> None:
    """SHARDS float32 .npy files of SHARD_ROWS x D, written one at a time (no big temporary)."""
    rng = np.random.default_rng(0)
    for s in range(SHARDS):
        np.save(folder / f"emb{s}.npy", rng.standard_normal((SHARD_ROWS, D), dtype=np.float32))
        np.save(folder / f"y{s}.npy", rng.integers(0, CLASSES, SHARD_ROWS))


def memory(mode: str, folder: Path, shards: int) -> dict:
    args = [sys.executable, "-c", MEMORY_SCRIPT, mode, str(folder), *map(str, (shards, N_TGT, D, K, THREADS))]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


BASE = "knn_search, one in-memory array"
MAPPED = "KnnIndex over memory-mapped .npy shards"


def time_searches(folder: Path) -> dict:
    """Best-of-3 seconds of each way to search the shards; checks they all agree exactly."""
    tgt = np.random.default_rng(1).standard_normal((N_TGT, D), dtype=np.float32)
    src = np.concatenate([np.load(folder / f"emb{s}.npy") for s in range(SHARDS)])
    mapped, in_memory = madda_rs.KnnIndex(D), madda_rs.KnnIndex(D)
    for s in range(SHARDS):
        y = np.load(folder / f"y{s}.npy")
        mapped.add(np.load(folder / f"emb{s}.npy", mmap_mode="r"), y)
        in_memory.add(src[s * SHARD_ROWS : (s + 1) * SHARD_ROWS], y)
    calls = {
        BASE: lambda: madda_rs.knn_search(src, tgt, K, threads=THREADS),
        "KnnIndex over in-memory pieces": lambda: in_memory.search(tgt, K, threads=THREADS),
        MAPPED: lambda: mapped.search(tgt, K, threads=THREADS),
    }
    times, results = {}, {}
    for name, call in calls.items():
        times[name], _, results[name] = best_time(call, 3)
    for name, (dist, idx) in results.items():  # not a timing check: asserted in quick mode too
        np.testing.assert_array_equal(idx, results[BASE][1], err_msg=name)
        np.testing.assert_array_equal(dist, results[BASE][0], err_msg=name)
    return times


@pytest.mark.bench
def test_index_over_memmapped_shards_vs_in_memory():
    mb = SHARD_ROWS * D * 4 / 1e6
    with tempfile.TemporaryDirectory(prefix="madda-bench-index-") as tmp:
        folder = Path(tmp)
        write_shards(folder)
        times = time_searches(folder)
        mem = {
            (mode, shards): memory(mode, folder, shards)
            for mode in ("index over memory-mapped shards", "knn_search over the array in memory")
            for shards in (1, SHARDS)
        }

    rows = [
        [
            f"{SHARDS} x {SHARD_ROWS} x {D} ({SHARDS * mb:.0f} MB), {N_TGT} targets, k={K}",
            name,
            f"{sec:.3f}",
            f"{sec / times[BASE]:.2f}",
        ]
        for name, sec in times.items()
    ]
    mem_rows = [
        [
            f"{shards} x {SHARD_ROWS} x {D} ({shards * mb:.0f} MB)",
            mode,
            f"{m['anon_growth']:.1f}",
            f"{m['hwm_growth']:.1f}",
            f"{m['anon_peak']:.0f}",
            f"{m['file_resident']:.0f}",
        ]
        for (mode, shards), m in mem.items()
    ]
    ratio = times[MAPPED] / times[BASE]
    mapped_mem = [mem[("index over memory-mapped shards", s)] for s in (1, SHARDS)]
    write_table(
        "index",
        "KnnIndex over memory-mapped shards vs knn_search in memory",
        ["source, targets", "search", "seconds (best of 3)", "/ knn_search"],
        rows,
        notes=[
            f"Float32 standard-normal data (seed 0) in {SHARDS} .npy files of {mb:.0f} MB in a temporary "
            f"directory; {THREADS} threads; one warm-up call each, so the page cache holds the files "
            "(a cold read adds the disk's time). All three return identical distances and indices.",
            "",
            "Memory of one search, in a fresh process per row (MiB): the growth of anonymous memory "
            "(RssAnon, sampled every 2 ms during the call; heap, Rust included) and of peak RSS (VmHWM), "
            "the process's peak anonymous memory, and the resident memory-mapped file pages (page cache the "
            "kernel may drop and re-read; for the in-memory rows, the source is anonymous memory instead).",
            "",
            "| source | search | extra anonymous | VmHWM growth | peak anonymous | file pages resident |",
            "|---|---|---|---|---|---|",
            *("| " + " | ".join(r) + " |" for r in mem_rows),
        ],
    )
    if not QUICK:
        assert ratio < MAX_RATIO, f"memory-mapped index / in-memory knn_search: {ratio:.2f}, want < {MAX_RATIO}"
        for m in mapped_mem:
            assert m["anon_growth"] < MAX_EXTRA_MB, f"extra anonymous memory {m['anon_growth']:.1f} MiB"
