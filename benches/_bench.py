"""Shared benchmark helpers: quick mode, timing, and markdown tables."""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")

# Small sizes and no speed assertions; tables go to *-quick.md so a quick run never
# overwrites the real ones.
QUICK = os.environ.get("MADDA_BENCH_QUICK", "") not in ("", "0")

# Every implementation gets this many threads, whatever the machine has.
THREADS = 2

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], T], repeats: int, min_time: float = 0.0) -> tuple[float, int, T]:
    """Best seconds per call of `fn` over `repeats` runs, after one warm-up call.

    A run loops `fn` enough times to last at least `min_time`, so microsecond calls are not
    lost in timer resolution. Returns (seconds per call, calls per run, the warm-up call's result).
    """
    result = fn()  # warm-up: lazy imports, thread pools, first-touch page faults
    number, t = 1, _run(fn, 1)
    while t < min_time:
        # Scale from the last run, at most 10x a step in case that run was unusually fast.
        number = min(10 * number, math.ceil(1.2 * number * min_time / max(t, 1e-9)))
        t = _run(fn, number)
    best = min([t] + [_run(fn, number) for _ in range(repeats - 1)])
    return best / number, number, result


def _run(fn: Callable[[], object], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def write_table(
    name: str,
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    notes: Sequence[str] = (),
    setting: str = "",
) -> Path:
    """Write (and print) a markdown table to benches/results/<name>.md (<name>-quick.md in quick mode)."""
    command = ("MADDA_BENCH_QUICK=1 " if QUICK else "") + "pytest " + " ".join(sys.argv[1:])
    lines = [
        f"# {title}",
        "",
        f"Machine: {machine()}{'; ' + setting if setting else ''}; "
        f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; command: `{command.strip()}`",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]
    if notes:
        lines += ["", *notes]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if QUICK else ''}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return path
