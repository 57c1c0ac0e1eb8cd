"""Property tests of madda_rs.knn_search / knn_predict against a NumPy brute-force reference."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import madda_rs

from reference import ambiguous_rows, knn_order_ref, knn_predict_ref, knn_search_ref, sq_dists_ref

LABEL_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------


@st.composite
def int_problems(draw, max_small=30, large=(60, 1100), max_tgt=40, max_d=6, his=(1, 2, 3)):
    """Integer-valued float32 (src, tgt, k): tiny ranges, so exact ties and duplicates abound.

    Small problems are drawn element by element (good shrinking); large ones (which cross the
    first candidate prune at 64 rows and the 512-row source tiles) come from a drawn seed.
    """
    d = draw(st.integers(1, max_d), label="d")
    hi = draw(st.sampled_from(his), label="hi")
    n_tgt = draw(st.integers(0, max_tgt), label="n_tgt")
    if draw(st.booleans(), label="large"):
        n_src = draw(st.integers(*large), label="n_src")
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
        src = rng.integers(0, hi + 1, (n_src, d)).astype(np.float32)
        tgt = rng.integers(0, hi + 1, (n_tgt, d)).astype(np.float32)
    else:
        n_src = draw(st.integers(1, max_small), label="n_src")
        elems = st.integers(0, hi)
        src = draw(hnp.arrays(np.int8, (n_src, d), elements=elems)).astype(np.float32)
        tgt = draw(hnp.arrays(np.int8, (n_tgt, d), elements=elems)).astype(np.float32)
    k = draw(st.one_of(st.just(1), st.just(n_src), st.integers(1, n_src)), label="k")
    return src, tgt, k


@st.composite
def real_problems(draw, max_src=1100, max_tgt=40):
    """Standard-normal float32 data, optionally shifted far from the origin and scaled."""
    d = draw(st.sampled_from([1, 2, 3, 8, 17, 32, 64]), label="d")
    n_src = draw(st.one_of(st.integers(1, 80), st.integers(500, max_src)), label="n_src")
    n_tgt = draw(st.integers(1, max_tgt), label="n_tgt")
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]), label="scale")
    offset = draw(st.sampled_from([0.0, 0.0, 100.0, 1e4]), label="offset")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    src = (rng.standard_normal((n_src, d)) * scale + offset).astype(np.float32)
    if draw(st.booleans(), label="targets near sources"):
        # targets just off source rows: the nearest neighbour is decided in the low bits
        pick = rng.integers(0, n_src, n_tgt)
        tgt = (src[pick].astype(np.float64) + rng.standard_normal((n_tgt, d)) * 1e-3 * scale).astype(np.float32)
    else:
        tgt = (rng.standard_normal((n_tgt, d)) * scale + offset).astype(np.float32)
    k = draw(st.one_of(st.just(1), st.just(n_src), st.integers(1, min(n_src, 20))), label="k")
    return src, tgt, k


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def assert_fresh(arr, dtype, shape):
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == dtype, arr.dtype
    assert arr.shape == shape, (arr.shape, shape)
    assert arr.flags.c_contiguous
    assert arr.flags.writeable
    assert arr.dtype.isnative


def assert_exact_match(src, tgt, k, dist, idx):
    """Integer-valued data: indices identical to the reference, distances exactly equal."""
    ref_d, ref_i = knn_search_ref(src, tgt, k)
    assert_fresh(dist, np.float32, (len(tgt), k))
    assert_fresh(idx, np.int64, (len(tgt), k))
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d.astype(np.float32))


def ulp_close(got32: np.ndarray, want64: np.ndarray, ulps: int = 1) -> np.ndarray:
    want32 = want64.astype(np.float32)
    return np.abs(got32.astype(np.float64) - want32.astype(np.float64)) <= ulps * np.spacing(want32).astype(np.float64)


def assert_real_match(src, tgt, k, dist, idx, rtol=1e-6):
    """Real-valued data: exact match except on rows with a genuine near-tie (relative gap < rtol)."""
    n_tgt, n_src = len(tgt), len(src)
    assert_fresh(dist, np.float32, (n_tgt, k))
    assert_fresh(idx, np.int64, (n_tgt, k))
    full = sq_dists_ref(src, tgt)
    order, sorted_d = knn_order_ref(src, tgt)
    assert ((idx >= 0) & (idx < n_src)).all()
    # Always: distinct indices, the reported distance is that index's distance (to float32
    # rounding), and the chosen k are the k smallest up to the tolerance, in order.
    for r in range(n_tgt):
        assert len(set(idx[r].tolist())) == k, idx[r]
    d_of_idx = np.take_along_axis(full, idx, axis=1)
    assert ulp_close(dist, d_of_idx).all(), (dist, d_of_idx)
    slack = rtol * np.abs(sorted_d[:, k - 1 : k]) + 1e-300
    assert (d_of_idx <= sorted_d[:, k - 1 : k] + slack).all()
    assert (np.diff(d_of_idx, axis=1) >= -rtol * np.abs(d_of_idx[:, 1:]) - 1e-300).all()
    # Away from near-ties: identical to the reference, indices and distances.
    clear = ~ambiguous_rows(sorted_d, k, rtol)
    np.testing.assert_array_equal(idx[clear], order[clear, :k])
    assert ulp_close(dist[clear], sorted_d[clear, :k]).all()
    return int((~clear).sum())


# ----------------------------------------------------------------------------------------------
# Integer-valued data: exact agreement, ties broken by index
# ----------------------------------------------------------------------------------------------


@given(int_problems())
def test_search_matches_reference_on_integer_data(problem):
    src, tgt, k = problem
    dist, idx = madda_rs.knn_search(src, tgt, k, threads=2)
    assert_exact_match(src, tgt, k, dist, idx)


@given(int_problems(), st.integers(1, 5), st.data())
def test_predict_matches_reference_on_integer_data(problem, n_classes, data):
    src, tgt, k = problem
    y = data.draw(hnp.arrays(np.int64, len(src), elements=st.integers(-2, n_classes)), label="src_y")
    pred = madda_rs.knn_predict(src, y, tgt, k)
    assert_fresh(pred, np.int64, (len(tgt),))
    np.testing.assert_array_equal(pred, knn_predict_ref(src, y, tgt, k))


@given(int_problems(max_small=20, large=(60, 700)), st.sampled_from(["k=1", "k=n_src"]))
def test_k_extremes(problem, which):
    src, tgt, _ = problem
    k = 1 if which == "k=1" else len(src)
    dist, idx = madda_rs.knn_search(src, tgt, k)
    assert_exact_match(src, tgt, k, dist, idx)
    if k == len(src):
        # every row is a permutation of the source
        np.testing.assert_array_equal(np.sort(idx, axis=1), np.broadcast_to(np.arange(len(src)), idx.shape))


@given(int_problems(), st.integers(-5, 5))
def test_one_class_predicts_that_class(problem, label):
    src, tgt, k = problem
    y = np.full(len(src), label, dtype=np.int64)
    pred = madda_rs.knn_predict(src, y, tgt, k)
    assert_fresh(pred, np.int64, (len(tgt),))
    assert (pred == label).all()


def test_vote_tie_goes_to_smallest_label():
    # target at 0; sources at distance 1, 1, 4, 4 with labels 7, 3, 3, 7: k=2 ties 7 vs 3 -> 3
    src = np.array([[1.0], [-1.0], [2.0], [-2.0]], dtype=np.float32)
    tgt = np.zeros((1, 1), dtype=np.float32)
    y = np.array([7, 3, 3, 7])
    assert madda_rs.knn_predict(src, y, tgt, 2).tolist() == [3]
    assert madda_rs.knn_predict(src, y, tgt, 4).tolist() == [3]
    assert madda_rs.knn_predict(src, y, tgt, 1).tolist() == [7]  # index 0 wins the distance tie
    assert madda_rs.knn_predict(src, y, tgt, 3).tolist() == [3]  # (7, 3, 3)


def test_duplicate_sources_ordered_by_index():
    src = np.zeros((700, 3), dtype=np.float32)  # all identical, across two source tiles
    tgt = np.ones((5, 3), dtype=np.float32)
    dist, idx = madda_rs.knn_search(src, tgt, 700)
    np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(700), (5, 700)))
    assert (dist == 3.0).all()


# ----------------------------------------------------------------------------------------------
# Real-valued data
# ----------------------------------------------------------------------------------------------

@given(real_problems())
def test_search_matches_reference_on_real_data(problem):
    src, tgt, k = problem
    dist, idx = madda_rs.knn_search(src, tgt, k)
    excused = assert_real_match(src, tgt, k, dist, idx)
    event("rows excused as near-ties: " + ("none" if excused == 0 else "some"))


@pytest.mark.parametrize("d", [1, 7, 8, 9, 16, 17])
def test_edge_sizes(d):
    """Sizes around SIMD panel widths (16 targets, 6 sources), 8-wide lanes and 512-row tiles."""
    rng = np.random.default_rng(d)
    for n_tgt in (1, 5, 15, 16, 17, 33):
        for n_src in (1, 5, 6, 7, 13, 65, 511, 513):
            src = rng.integers(0, 3, (n_src, d)).astype(np.float32)
            tgt = rng.integers(0, 3, (n_tgt, d)).astype(np.float32)
            for k in sorted({1, min(3, n_src), n_src}):
                dist, idx = madda_rs.knn_search(src, tgt, k)
                assert_exact_match(src, tgt, k, dist, idx)
            src = rng.standard_normal((n_src, d)).astype(np.float32)
            tgt = rng.standard_normal((n_tgt, d)).astype(np.float32)
            k = min(4, n_src)
            dist, idx = madda_rs.knn_search(src, tgt, k)
            assert_real_match(src, tgt, k, dist, idx)


@pytest.mark.parametrize("kind", ["integer", "normal", "offset"])
def test_large_problem_many_blocks_and_tiles(kind):
    """600 targets (several 256-row target blocks) x 1500 sources (three 512-row tiles)."""
    rng = np.random.default_rng({"integer": 10, "normal": 11, "offset": 12}[kind])
    d = {"integer": 5, "normal": 24, "offset": 64}[kind]
    if kind == "integer":
        src = rng.integers(0, 4, (1500, d)).astype(np.float32)
        tgt = rng.integers(0, 4, (600, d)).astype(np.float32)
    else:
        off = 0.0 if kind == "normal" else 300.0
        src = (rng.standard_normal((1500, d)) + off).astype(np.float32)
        tgt = (rng.standard_normal((600, d)) * 0.5 + off).astype(np.float32)
        tgt[::3] = src[rng.integers(0, 1500, 200)]  # exact duplicates of source rows: distance 0
    for k in (1, 7, 64):
        dist, idx = madda_rs.knn_search(src, tgt, k, threads=2)
        if kind == "integer":
            assert_exact_match(src, tgt, k, dist, idx)
        else:
            assert_real_match(src, tgt, k, dist, idx)
            assert (dist[::3, 0] == 0).all()


@given(real_problems(max_src=700), st.integers(2, 10))
def test_predict_matches_reference_on_real_data(problem, n_classes):
    src, tgt, k = problem
    y = np.random.default_rng(len(src) * 31 + k).integers(0, n_classes, len(src))
    pred = madda_rs.knn_predict(src, y, tgt, k)
    order, sorted_d = knn_order_ref(src, tgt)
    clear = ~ambiguous_rows(sorted_d, k)
    np.testing.assert_array_equal(pred[clear], knn_predict_ref(src, y, tgt, k)[clear])


# ----------------------------------------------------------------------------------------------
# Input forms: dtype, layout, strides, label dtypes
# ----------------------------------------------------------------------------------------------


def _layouts(x):
    """The same values in other dtypes and memory layouts."""
    big = np.zeros((2 * x.shape[0] + 1, 2 * x.shape[1] + 1), dtype=np.float32)
    big[::2, ::2][: x.shape[0], : x.shape[1]] = x
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=np.float32)
    wide[:, ::2] = x
    tall = np.zeros((2 * x.shape[0], x.shape[1]), dtype=np.float32)
    tall[::2] = x
    return {
        "float64": x.astype(np.float64),
        "float16": x.astype(np.float16),  # integer values 0..3 are exact in float16
        "int16": x.astype(np.int16),
        "big-endian": x.astype(">f4"),
        "fortran": np.asfortranarray(x),
        "rows[::2]": tall[::2],
        "cols[:, ::2]": wide[:, ::2],
        "both[::2, ::2]": big[: 2 * x.shape[0] : 2, : 2 * x.shape[1] : 2],
        "reversed twice": x[::-1][::-1],
        "readonly": _readonly(x),
        "list": x.tolist(),
    }


def _readonly(x):
    y = x.copy()
    y.flags.writeable = False
    return y


@given(int_problems(max_small=20, large=(60, 600), max_tgt=20))
def test_dtypes_and_layouts_give_the_same_answer(problem):
    src, tgt, k = problem
    want_d, want_i = madda_rs.knn_search(src, tgt, k)
    assert_exact_match(src, tgt, k, want_d, want_i)
    y = np.arange(len(src)) % 3
    want_p = madda_rs.knn_predict(src, y, tgt, k)
    for name, s in _layouts(src).items():
        for tname, t in _layouts(tgt).items() if name in ("fortran", "both[::2, ::2]") else [("same", tgt)]:
            if tname == "list" and len(tgt) == 0:
                continue  # [] has no column count
            d, i = madda_rs.knn_search(s, t, k)
            np.testing.assert_array_equal(i, want_i, err_msg=f"{name}/{tname}")
            np.testing.assert_array_equal(d, want_d, err_msg=f"{name}/{tname}")
            assert_fresh(d, np.float32, want_d.shape)
            assert_fresh(i, np.int64, want_i.shape)
        np.testing.assert_array_equal(madda_rs.knn_predict(s, y, tgt, k), want_p, err_msg=name)


@given(int_problems(max_small=25, large=(60, 300), max_tgt=15), st.integers(1, 6))
def test_any_integer_label_dtype_gives_the_same_prediction(problem, n_classes):
    src, tgt, k = problem
    y = np.random.default_rng(n_classes + 7 * len(src)).integers(0, n_classes, len(src))
    want = knn_predict_ref(src, y, tgt, k)
    for dt in LABEL_DTYPES:
        yy = y.astype(dt)
        for form in (yy, yy[::-1].copy()[::-1], yy.astype(np.dtype(dt).newbyteorder(">"))):
            pred = madda_rs.knn_predict(src, form, tgt, k)
            assert_fresh(pred, np.int64, (len(tgt),))
            np.testing.assert_array_equal(pred, want, err_msg=str(dt))
    for dt in (np.int8, np.int16, np.int32, np.int64):  # negative labels
        pred = madda_rs.knn_predict(src, (y - 3).astype(dt), tgt, k)
        np.testing.assert_array_equal(pred, want - 3, err_msg=str(dt))


def test_extreme_label_values():
    src = np.array([[0.0], [1.0], [5.0]], dtype=np.float32)
    tgt = np.array([[0.2], [4.0]], dtype=np.float32)
    big = np.iinfo(np.int64).max
    assert madda_rs.knn_predict(src, np.array([big, big, 0], dtype=np.uint64), tgt, 1).tolist() == [big, 0]
    small = np.iinfo(np.int64).min
    assert madda_rs.knn_predict(src, np.array([small, 1, 1]), tgt, 3).tolist() == [1, 1]


def test_k_accepts_numpy_integers():
    src = np.arange(12, dtype=np.float32).reshape(6, 2)
    want = madda_rs.knn_search(src, src, 3)
    for k in (np.int64(3), np.uint8(3), np.int32(3)):
        got = madda_rs.knn_search(src, src, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# ----------------------------------------------------------------------------------------------
# Empty target, fresh outputs, inputs untouched
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 5])
@pytest.mark.parametrize("k", [1, 3])
def test_empty_target(d, k):
    src = np.random.default_rng(0).standard_normal((4, d)).astype(np.float32)
    for tgt in (np.empty((0, d), np.float32), np.empty((0, d), np.float64), np.empty((0, d), np.float32, order="F")):
        dist, idx = madda_rs.knn_search(src, tgt, k)
        assert_fresh(dist, np.float32, (0, k))
        assert_fresh(idx, np.int64, (0, k))
        pred = madda_rs.knn_predict(src, np.arange(4), tgt, k)
        assert_fresh(pred, np.int64, (0,))


def test_outputs_are_fresh_and_inputs_untouched():
    rng = np.random.default_rng(1)
    src = rng.standard_normal((50, 4)).astype(np.float32)
    tgt = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    src0, tgt0, y0 = src.copy(), tgt.copy(), y.copy()
    d1, i1 = madda_rs.knn_search(src, tgt, 5)
    p1 = madda_rs.knn_predict(src, y, tgt, 5)
    for arr in (d1, i1, p1):
        assert not np.shares_memory(arr, src) and not np.shares_memory(arr, tgt) and not np.shares_memory(arr, y)
    np.testing.assert_array_equal(src, src0)
    np.testing.assert_array_equal(tgt, tgt0)
    np.testing.assert_array_equal(y, y0)
    d2, i2 = madda_rs.knn_search(src, tgt, 5)
    assert not np.shares_memory(d1, d2) and not np.shares_memory(i1, i2)
    d1[:] = -1  # writing to one result must not affect another
    i1[:] = -1
    p1[:] = -1
    np.testing.assert_array_equal(madda_rs.knn_search(src, tgt, 5)[1], i2)
    assert (d2 >= 0).all() and (i2 >= 0).all()


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------


@given(st.one_of(int_problems(), real_problems(max_src=800)))
def test_thread_count_does_not_change_output(problem):
    src, tgt, k = problem
    d1, i1 = madda_rs.knn_search(src, tgt, k, threads=1)
    d2, i2 = madda_rs.knn_search(src, tgt, k, threads=2)
    d0, i0 = madda_rs.knn_search(src, tgt, k)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(d1, d0)
    y = np.arange(len(src)) % 4
    np.testing.assert_array_equal(
        madda_rs.knn_predict(src, y, tgt, k, threads=1), madda_rs.knn_predict(src, y, tgt, k, threads=2)
    )


# ----------------------------------------------------------------------------------------------
# scikit-learn agreement
# ----------------------------------------------------------------------------------------------


@given(int_problems(max_small=30, large=(60, 500), max_tgt=25, max_d=8, his=(3, 5, 9)), st.integers(1, 4))
def test_agrees_with_sklearn_where_neighbours_are_unambiguous(problem, n_classes):
    from sklearn.neighbors import KNeighborsClassifier

    src, tgt, k = problem
    assume(len(tgt) > 0)
    y = np.random.default_rng(len(src) + 13 * k).integers(0, n_classes, len(src))
    _, sorted_d = knn_order_ref(src, tgt)
    # rows where the k-th and (k+1)-th distances differ: the neighbour *set* is unique
    clear = np.ones(len(tgt), bool) if k == len(src) else sorted_d[:, k - 1] < sorted_d[:, k]
    assume(clear.any())
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(src, y)
    want = clf.predict(tgt)
    got = madda_rs.knn_predict(src, y, tgt, k)
    np.testing.assert_array_equal(got[clear], want[clear])


# ----------------------------------------------------------------------------------------------
# Extreme magnitudes (finite float32 input is accepted, so it must be answered exactly)
# ----------------------------------------------------------------------------------------------


def test_huge_magnitudes_are_refused():
    """Squared distances of |x| ~ 1e19 overflow float32: refuse rather than answer wrongly."""
    src = np.array([[1e19, 0.0], [0.0, 0.0], [3e19, 0.0]], dtype=np.float32)
    tgt = np.array([[2.9e19, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"src_emb: expected \|values\| <= .*rescale"):
        madda_rs.knn_search(src, tgt, 3)
    with pytest.raises(ValueError, match=r"tgt_emb: expected \|values\|"):
        madda_rs.knn_search(src[1:2], tgt, 1)


def test_tiny_magnitudes_exact():
    rng = np.random.default_rng(0)
    src = (rng.standard_normal((300, 5)) * 1e-22).astype(np.float32)
    tgt = (rng.standard_normal((40, 5)) * 1e-22).astype(np.float32)
    _, idx = madda_rs.knn_search(src, tgt, 1)
    order, sorted_d = knn_order_ref(src, tgt)
    clear = ~ambiguous_rows(sorted_d, 1)
    np.testing.assert_array_equal(idx[clear], order[clear, :1])


def test_moderate_magnitudes_exact():
    """Scales where float32 has no overflow/underflow trouble must be exact."""
    rng = np.random.default_rng(3)
    for scale in (1e-15, 1e-8, 1e8, 1e15):
        src = (rng.standard_normal((300, 5)) * scale).astype(np.float32)
        tgt = (rng.standard_normal((40, 5)) * scale).astype(np.float32)
        dist, idx = madda_rs.knn_search(src, tgt, 4)
        assert_real_match(src, tgt, 4, dist, idx)


# ----------------------------------------------------------------------------------------------
# fork()
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork") or os.name != "posix", reason="needs POSIX fork()")
def test_usable_after_fork():
    rng = np.random.default_rng(2)
    src = rng.standard_normal((600, 8)).astype(np.float32)
    tgt = rng.standard_normal((100, 8)).astype(np.float32)
    y = rng.integers(0, 5, 600)
    labels = np.arange(600) % 4  # 44,700 pairs: the parallel triplet path
    want = madda_rs.knn_predict(src, y, tgt, 5, threads=2)  # builds this process's pool
    want_t = madda_rs.triplets(labels, seed=1, threads=2)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            got = madda_rs.knn_predict(src, y, tgt, 5, threads=2)
            got_t = madda_rs.triplets(labels, seed=1, threads=2)
            code = 0 if np.array_equal(got, want) and np.array_equal(got_t, want_t) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20.0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("madda_rs call in a forked child did not finish within 20 s (deadlocked pool?)")
        time.sleep(0.02)
    assert os.WIFEXITED(status), f"child died: status {status}"
    assert os.WEXITSTATUS(status) == 0, "child got a different answer after fork()"
    # and the parent still works
    np.testing.assert_array_equal(madda_rs.knn_predict(src, y, tgt, 5, threads=2), want)


# ----------------------------------------------------------------------------------------------
# Kernels: every inner loop this CPU runs gives the reference's answer
# ----------------------------------------------------------------------------------------------

KERNELS = madda_rs._core.knn_kernels()


def _search_with(src, tgt, k, kernel, threads=2):
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    return madda_rs._core.knn_search(f32(src), f32(tgt), k, threads, kernel)


def test_kernel_list_and_default():
    assert KERNELS[-1] == "portable"
    assert set(KERNELS) <= {"amx-bf16", "avx512-bf16", "avx512", "avx2", "portable"}
    assert madda_rs.knn_kernel() == KERNELS[0]


@pytest.mark.parametrize("kernel", KERNELS)
@given(int_problems())
def test_every_kernel_matches_reference_on_integer_data(kernel, problem):
    src, tgt, k = problem
    dist, idx = _search_with(src, tgt, k, kernel)
    assert_exact_match(src, tgt, k, dist, idx)


@pytest.mark.parametrize("kernel", KERNELS)
@given(real_problems(max_src=800))
def test_every_kernel_gives_the_default_kernels_answer_on_real_data(kernel, problem):
    src, tgt, k = problem
    dist, idx = _search_with(src, tgt, k, kernel)
    assert_real_match(src, tgt, k, dist, idx)
    want_d, want_i = madda_rs.knn_search(src, tgt, k, threads=2)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_at_panel_and_micro_tile_edges(kernel):
    """Around the AVX-512 kernel's 32-row panels and 14-row source groups, and AVX2's 16 and 6."""
    rng = np.random.default_rng(5)
    for d in (1, 3, 16, 33):
        for n_tgt in (1, 15, 16, 17, 31, 32, 33, 65):
            for n_src in (1, 6, 7, 13, 14, 15, 28, 29, 515):
                src = rng.integers(0, 3, (n_src, d)).astype(np.float32)
                tgt = rng.integers(0, 3, (n_tgt, d)).astype(np.float32)
                for k in sorted({1, min(3, n_src), n_src}):
                    dist, idx = _search_with(src, tgt, k, kernel)
                    assert_exact_match(src, tgt, k, dist, idx)


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_exact_far_from_the_origin(kernel):
    rng = np.random.default_rng(6)
    src = (1000 + 0.01 * rng.standard_normal((777, 40))).astype(np.float32)
    tgt = (1000 + 0.01 * rng.standard_normal((70, 40))).astype(np.float32)
    for k in (1, 4, 777):
        dist, idx = _search_with(src, tgt, k, kernel)
        assert_real_match(src, tgt, k, dist, idx)


@pytest.mark.parametrize("kernel", KERNELS)
def test_environment_variable_forces_the_kernel(kernel, monkeypatch):
    rng = np.random.default_rng(7)
    src = rng.integers(0, 3, (300, 5)).astype(np.float32)
    tgt = rng.integers(0, 3, (40, 5)).astype(np.float32)
    monkeypatch.setenv("MADDA_KNN_KERNEL", kernel)
    assert madda_rs.knn_kernel() == kernel
    dist, idx = madda_rs.knn_search(src, tgt, 6)
    assert_exact_match(src, tgt, 6, dist, idx)


# ----------------------------------------------------------------------------------------------
# torch tensors: CPU tensors are viewed, not copied, and answer as NumPy arrays do
# ----------------------------------------------------------------------------------------------


def test_import_does_not_load_torch():
    code = "import sys, madda_rs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@given(int_problems(max_small=20, large=(60, 400), max_tgt=20))
def test_cpu_tensors_give_the_numpy_answer(problem):
    torch = pytest.importorskip("torch")
    src, tgt, k = problem
    y = np.arange(len(src)) % 3
    want_d, want_i = madda_rs.knn_search(src, tgt, k)
    want_p = madda_rs.knn_predict(src, y, tgt, k)
    s, t = torch.from_numpy(src), torch.from_numpy(tgt)
    forms = {
        "float32": (s, t),
        "requires_grad": (s.clone().requires_grad_(), t.clone().requires_grad_()),
        "float64": (s.double(), t.double()),
        "bfloat16": (s.bfloat16(), t.bfloat16()),  # integer values 0..3 are exact in bfloat16
        "transposed view": (s.T.contiguous().T, t.T.contiguous().T),
        "parameter": (torch.nn.Parameter(s.clone()), t),
    }
    for name, (ss, tt) in forms.items():
        d, i = madda_rs.knn_search(ss, tt, k)
        np.testing.assert_array_equal(i, want_i, err_msg=name)
        np.testing.assert_array_equal(d, want_d, err_msg=name)
        pred = madda_rs.knn_predict(ss, torch.from_numpy(y), tt, k)
        np.testing.assert_array_equal(pred, want_p, err_msg=name)
        assert_fresh(pred, np.int64, (len(tgt),))


def test_cpu_tensors_are_not_copied():
    torch = pytest.importorskip("torch")
    x = torch.randn(50, 8)
    for form in (x, x.clone().requires_grad_(), torch.nn.Parameter(x.clone())):
        arr = madda_rs.native._matrix("src_emb", form)
        assert arr.__array_interface__["data"][0] == form.data_ptr()
    labels = torch.arange(10) % 3
    assert madda_rs.native._labels("labels", labels).__array_interface__["data"][0] == labels.data_ptr()
    # A view with a row stride other than d is copied, exactly as for NumPy.
    assert madda_rs.native._matrix("src_emb", x[::2]).__array_interface__["data"][0] != x.data_ptr()


def test_readme_pytorch_metric_learning_knn_func():
    """The docs' knn_func recipe (docs/python-api.md), run as written, against a brute-force search."""
    torch = pytest.importorskip("torch")
    readme = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text()
    code = readme.split("def madda_knn(", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec("import torch, madda_rs\n\ndef madda_knn(" + code, namespace)
    madda_knn = namespace["madda_knn"]
    rng = np.random.default_rng(8)
    ref = torch.from_numpy(rng.integers(0, 4, (60, 3)).astype(np.float32))
    ref[10] = ref[3]  # a duplicate of a query: distance 0 to another row, so its own row may come second
    query = ref[:20]
    for k in (1, 4):
        dist, idx = madda_knn(query, k, ref, True)
        assert dist.shape == idx.shape == (20, k)
        _, full = knn_search_ref(ref.numpy(), query.numpy(), k + 1)
        for i in range(20):
            want = [j for j in full[i] if j != i][:k]
            assert idx[i].tolist() == want, (i, idx[i], want)
        np.testing.assert_allclose(dist.numpy() ** 2, sq_dists_ref(ref.numpy(), query.numpy())[np.arange(20)[:, None], idx.numpy()], rtol=1e-6)
        dist, idx = madda_knn(query, k, ref, False)
        np.testing.assert_array_equal(idx.numpy(), knn_search_ref(ref.numpy(), query.numpy(), k)[1])
