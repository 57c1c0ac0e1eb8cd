"""The bf16 candidate kernels (amx-bf16, avx512-bf16) answer bit for bit as the portable kernel.

Their bf16 arithmetic only picks which source rows the exact float64 re-rank sees, so every case
here compares indices and distances for equality with ``kernel="portable"`` (itself checked
against the NumPy reference in test_knn.py), on data built to trip bf16 rounding: tight
clusters like M-ADDA's, neighbours a few float32 ulps apart, duplicates, huge and tiny norms.
On a CPU without these kernels the tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import madda_rs
from madda_rs import _core

from reference import knn_search_ref

BF16 = [k for k in _core.knn_kernels() if k.endswith("-bf16")]
pytestmark = pytest.mark.skipif(not BF16, reason="this CPU runs no bf16 kernel")


def _search(src, tgt, k, kernel):
    return _core.knn_search(np.ascontiguousarray(src, np.float32), np.ascontiguousarray(tgt, np.float32), k, 2, kernel)


def assert_same_as_portable(src, tgt, k, kernel):
    want_d, want_i = _search(src, tgt, k, "portable")
    got_d, got_i = _search(src, tgt, k, kernel)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)


@st.composite
def clustered(draw):
    """Tight clusters (M-ADDA's embeddings): spread `spread` around 10 centres, maybe far from 0."""
    d = draw(st.sampled_from([1, 7, 32, 256]), label="d")
    n_src = draw(st.one_of(st.integers(1, 60), st.integers(500, 2500)), label="n_src")
    n_tgt = draw(st.integers(1, 70), label="n_tgt")
    spread = draw(st.sampled_from([1e-1, 1e-3, 1e-6]), label="spread")
    offset = draw(st.sampled_from([0.0, 5.0, 1e3]), label="offset")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    centres = rng.standard_normal((10, d)) * 4 + offset
    src = (centres[rng.integers(0, 10, n_src)] + spread * rng.standard_normal((n_src, d))).astype(np.float32)
    tgt = (centres[rng.integers(0, 10, n_tgt)] + spread * rng.standard_normal((n_tgt, d))).astype(np.float32)
    if draw(st.booleans(), label="duplicates"):
        src[len(src) // 2 :] = src[: len(src) - len(src) // 2]
        m = min(len(tgt), len(src)) // 2
        tgt[:m] = src[:m]
    k = draw(st.one_of(st.just(1), st.just(n_src), st.integers(1, min(n_src, 12))), label="k")
    return src, tgt, k


@pytest.mark.parametrize("kernel", BF16)
@given(clustered())
def test_bf16_kernels_equal_portable_on_tight_clusters(kernel, problem):
    src, tgt, k = problem
    assert_same_as_portable(src, tgt, k, kernel)


@pytest.mark.parametrize("kernel", BF16)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 16, 64]), st.sampled_from([1 << 13, 1 << 15, 1]))
def test_bf16_kernels_equal_portable_where_bf16_reorders_neighbours(kernel, seed, d, step):
    """Copies of a few centres moved by `step` float32 ulps in some columns: at 2^13 and 2^15
    ulps bf16 rounds neighbours apart either way, at 1 ulp it cannot see them at all."""
    rng = np.random.default_rng(seed)
    centres = (50 + 10 * rng.standard_normal((6, d))).astype(np.float32)
    rows = centres[rng.integers(0, 6, 1300)]
    bits = rows.view(np.int32) + rng.integers(-3, 4, rows.shape).astype(np.int32) * step * (rng.random(rows.shape) < 0.3)
    data = bits.view(np.float32)
    src, tgt = data[:1200], data[1200:]
    for k in (1, 5, 30):
        assert_same_as_portable(src, tgt, k, kernel)
    # and the portable kernel itself matches the reference here
    np.testing.assert_array_equal(_search(src, tgt, 5, "portable")[1], knn_search_ref(src, tgt, 5)[1])


@pytest.mark.parametrize("kernel", BF16)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-30, 1e-20, 1e-3, 1e3, 1e15]))
def test_bf16_kernels_equal_portable_at_extreme_magnitudes(kernel, seed, scale):
    rng = np.random.default_rng(seed)
    src = (rng.standard_normal((700, 24)) * scale).astype(np.float32)
    tgt = (rng.standard_normal((30, 24)) * scale).astype(np.float32)
    assert_same_as_portable(src, tgt, 4, kernel)
    assert_same_as_portable(src + np.float32(3 * scale), tgt + np.float32(3 * scale), 4, kernel)


@pytest.mark.parametrize("kernel", BF16)
def test_bf16_stats_count_candidates_and_fallbacks(kernel):
    rng = np.random.default_rng(3)
    src = rng.standard_normal((1500, 32)).astype(np.float32)
    tgt = rng.standard_normal((90, 32)).astype(np.float32)
    rows, candidates, fallback = _core.knn_search_stats(src, tgt, 5, 2, kernel)
    assert (rows, fallback) == (90, 0)
    assert 90 * 5 <= candidates < 90 * 40
    assert _core.knn_search_stats(src, tgt, 5, 2, "avx2" if "avx2" in _core.knn_kernels() else "portable") == (0, 0, 0)
    # Tiny values: the bound's absolute floor keeps every source row (more than the 1024 a row
    # may keep), so every row falls back to the float32 kernel, and the answer is unchanged.
    tiny_src, tiny_tgt = src * np.float32(1e-25), tgt * np.float32(1e-25)
    assert _core.knn_search_stats(tiny_src, tiny_tgt, 5, 2, kernel) == (90, 0, 90)
    assert_same_as_portable(tiny_src, tiny_tgt, 5, kernel)


@pytest.mark.parametrize("kernel", BF16)
def test_bf16_kernels_refuse_nan_as_the_others_do(kernel):
    src = np.zeros((5, 3), np.float32)
    src[2, 1] = np.nan
    with pytest.raises(ValueError, match="src_emb: expected finite values, got NaN at row 2, column 1"):
        _core.knn_search(src, src, 1, 2, kernel)


@pytest.mark.parametrize("kernel", BF16)
def test_bf16_predict_votes_as_portable(kernel, monkeypatch):
    rng = np.random.default_rng(4)
    src = rng.standard_normal((900, 16)).astype(np.float32)
    tgt = rng.standard_normal((120, 16)).astype(np.float32)
    y = rng.integers(0, 10, 900)
    monkeypatch.setenv("MADDA_KNN_KERNEL", "portable")
    want = madda_rs.knn_predict(src, y, tgt, 7)
    monkeypatch.setenv("MADDA_KNN_KERNEL", kernel)
    assert madda_rs.knn_kernel() == kernel
    np.testing.assert_array_equal(madda_rs.knn_predict(src, y, tgt, 7), want)
