"""Benchmark configuration.

Benchmarks live outside tests/, so ``pytest`` (testpaths = tests) never runs them; ``pytest benches/``
does. Set ``MADDA_BENCH_QUICK=1`` for small sizes, no speed assertions, and ``*-quick.md`` tables.
"""

from __future__ import annotations


def pytest_configure(config):
    # Registered here rather than in pyproject.toml so --strict-markers accepts it.
    config.addinivalue_line("markers", "bench: performance benchmark (writes a table to benches/results/)")
