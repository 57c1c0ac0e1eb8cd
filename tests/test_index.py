"""KnnIndex and merge_knn: an index over pieces answers as knn_search / knn_predict on their concatenation.

The claim is bit-for-bit equality (same neighbours, same order, same float32 distances, same vote),
so every comparison here is exact. knn_search itself is checked against the NumPy reference in
test_knn.py; these tests need only compare with it.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_knn import int_problems, real_problems

import madda_rs

from reference import vote_ref

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@st.composite
def cuts(draw, n: int):
    """Sorted cut points in [0, n]: any chunking, empty pieces included."""
    if n <= 40:
        points = draw(st.lists(st.integers(0, n), max_size=n + 2), label="cuts")
    else:
        # few, large pieces or many small ones; a pieces-of-one-row case is covered separately
        points = draw(st.lists(st.integers(0, n), max_size=12), label="cuts")
    return sorted(points)


def pieces(n: int, points):
    bounds = [0, *points, n]
    return list(zip(bounds[:-1], bounds[1:]))


def build(src, y, points, piece_bytes=None):
    index = madda_rs.KnnIndex(src.shape[1])
    if piece_bytes is not None:
        index.PIECE_BYTES = piece_bytes  # cut each add() further into row ranges
    for a, b in pieces(len(src), points):
        index.add(src[a:b], y[a:b])
    return index


def assert_same_as_unsharded(index, src, y, tgt, k):
    dist, idx = index.search(tgt, k, threads=2)
    want_d, want_i = madda_rs.knn_search(src, tgt, k, threads=2)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    assert dist.shape == idx.shape == (len(tgt), k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)  # exact: distances are the same float64 rounded once
    np.testing.assert_array_equal(index.predict(tgt, k), madda_rs.knn_predict(src, y, tgt, k))


def labels_for(src, n_classes, seed=0):
    return np.random.default_rng(seed).integers(0, n_classes, len(src))


def float32_ties(src, tgt, k) -> int:
    """Rows whose first k+1 contain two different float64 distances that are equal in float32:
    there a merge by the float32 distances would put the larger index second, wrongly."""
    d, _ = madda_rs.knn_search(src, tgt, min(k + 1, len(src)))
    d64 = ((tgt.astype(np.float64)[:, None, :] - src.astype(np.float64)[None]) ** 2).sum(-1)
    d64.sort(axis=1)
    head64 = d64[:, : d.shape[1]]
    return int(((np.diff(d, axis=1) == 0) & (np.diff(head64, axis=1) > 0)).any(axis=1).sum())


# ----------------------------------------------------------------------------------------------
# Sharded equals unsharded
# ----------------------------------------------------------------------------------------------


@given(int_problems(), st.data())
def test_sharded_equals_unsharded_on_integer_data(problem, data):
    src, tgt, k = problem
    y = labels_for(src, data.draw(st.sampled_from([1, 2, 3, 10]), label="classes"))
    points = data.draw(cuts(len(src)))
    event(f"pieces: {'1' if not points else '2-5' if len(points) < 5 else '6+'}")
    assert_same_as_unsharded(build(src, y, points), src, y, tgt, k)


@given(real_problems(), st.data())
def test_sharded_equals_unsharded_on_real_data(problem, data):
    src, tgt, k = problem
    y = labels_for(src, 3)
    points = data.draw(cuts(len(src)))
    event(f"pieces: {'1' if not points else '2-5' if len(points) < 5 else '6+'}")
    # the case a merge by float32 distances would get wrong
    event("float32 ties of distinct float64 distances" if float32_ties(src, tgt, k) else "no float32 ties")
    assert_same_as_unsharded(build(src, y, points), src, y, tgt, k)


@st.composite
def float32_tie_problems(draw):
    """Real-valued rows whose distances mostly collide in float32 while differing in float64: a
    coarse integer coordinate plus tiny real ones whose squares vanish in the float32 rounding."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    n_src = draw(st.one_of(st.integers(2, 60), st.integers(500, 1100)), label="n_src")
    n_tgt, tiny = draw(st.integers(1, 30), label="n_tgt"), draw(st.integers(1, 5), label="tiny columns")
    scale = 2.0 ** -draw(st.integers(11, 14), label="tiny exponent")
    src = np.concatenate([rng.integers(1, 4, (n_src, 1)), rng.random((n_src, tiny)) * scale], axis=1)
    tgt = np.concatenate([rng.choice([0.0, 0.5], (n_tgt, 1)), rng.random((n_tgt, tiny)) * scale], axis=1)
    k = draw(st.one_of(st.just(1), st.integers(1, min(n_src, 20))), label="k")
    return src.astype(np.float32), tgt.astype(np.float32), k


@given(float32_tie_problems(), st.data())
def test_sharded_equals_unsharded_where_float32_distances_tie(problem, data):
    src, tgt, k = problem
    y = labels_for(src, 3)
    points = data.draw(cuts(len(src)))
    event("float32 ties of distinct float64 distances" if float32_ties(src, tgt, k) else "no float32 ties")
    assert_same_as_unsharded(build(src, y, points), src, y, tgt, k)


@given(int_problems(max_small=12, large=(60, 300), max_tgt=12))
def test_pieces_of_one_row(problem):
    src, tgt, k = problem
    y = labels_for(src, 4)
    assert_same_as_unsharded(build(src, y, list(range(1, len(src)))), src, y, tgt, k)


@given(int_problems(max_tgt=12), st.integers(1, 64), st.data())
def test_row_ranges_cut_by_piece_bytes(problem, rows_per_range, data):
    src, tgt, k = problem
    y = labels_for(src, 3)
    index = build(src, y, data.draw(cuts(len(src))), piece_bytes=rows_per_range * 4 * src.shape[1])
    assert_same_as_unsharded(index, src, y, tgt, k)


def test_float32_equal_distances_keep_their_float64_order():
    # Both distances are 1.0 in float32; row 0's is 1 + 2**-26 in float64, so knn_search puts
    # row 1 first. A merge by (float32 distance, index) would put row 0 first.
    src = np.array([[1.0, 2.0**-13], [1.0, 0.0]], dtype=np.float32)
    tgt = np.zeros((1, 2), dtype=np.float32)
    y = np.array([7, 3])
    assert madda_rs.knn_search(src, tgt, 2)[1].tolist() == [[1, 0]]
    index = build(src, y, [1])
    assert_same_as_unsharded(index, src, y, tgt, 2)
    assert index.candidates(tgt, 2)[0].tolist() == [[1.0, 1.0 + 2.0**-26]]
    assert float32_ties(src, tgt, 1) == 1


def test_many_float32_ties_on_real_data():
    # A coarse coordinate plus tiny real ones: the tiny ones change the float64 distance but
    # mostly vanish in its float32 rounding, so distinct distances collide in float32 everywhere.
    rng = np.random.default_rng(3)
    src = np.concatenate([rng.integers(1, 4, (1500, 1)), rng.random((1500, 3)) * 2.0**-13], axis=1)
    tgt = np.concatenate([rng.choice([0.0, 0.5], (60, 1)), rng.random((60, 3)) * 2.0**-13], axis=1)
    src, tgt = src.astype(np.float32), tgt.astype(np.float32)
    y = labels_for(src, 5)
    assert float32_ties(src, tgt, 10) > 0  # the case under test does occur
    for points in ([700], [1, 2, 3, 500, 1499], list(range(0, 1500, 37))):
        assert_same_as_unsharded(build(src, y, points), src, y, tgt, 10)


def test_any_dtype_and_layout_added():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 3, (300, 5)).astype(np.float32)
    tgt = rng.integers(0, 3, (20, 5)).astype(np.float32)
    y = labels_for(src, 4)
    index = madda_rs.KnnIndex(5)
    index.add(src[:100].astype(np.float64), y[:100].astype(np.uint8))
    index.add(np.asfortranarray(src[100:200]), y[100:200].astype(np.int32))
    index.add(src[200:].astype(np.int16), list(y[200:]))
    assert_same_as_unsharded(index, src, y, tgt, 9)


def test_empty_target_and_repr():
    index = madda_rs.KnnIndex(3)
    index.add(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))  # an empty piece is a no-op
    index.add(np.ones((4, 3)), [1, 2, 3, 4])
    assert (len(index), index.ntotal, index.dim) == (4, 4, 3)
    assert repr(index) == "KnnIndex(dim=3, ntotal=4)"
    dist, idx = index.search(np.zeros((0, 3)), 2)
    assert dist.shape == idx.shape == (0, 2) and dist.dtype == np.float32
    assert index.predict(np.zeros((0, 3)), 2).shape == (0,)
    assert "KnnIndex" in madda_rs.__all__ and "merge_knn" in madda_rs.__all__


# ----------------------------------------------------------------------------------------------
# Memory-mapped pieces, and references rather than copies
# ----------------------------------------------------------------------------------------------


@given(int_problems(max_tgt=12), st.data())
def test_memmapped_pieces_equal_in_memory_ones(problem, data):
    src, tgt, k = problem
    y = labels_for(src, 3)
    points = data.draw(cuts(len(src)))
    with tempfile.TemporaryDirectory() as tmp:
        mapped = madda_rs.KnnIndex(src.shape[1])
        for p, (a, b) in enumerate(pieces(len(src), points)):
            np.save(Path(tmp) / f"emb{p}.npy", src[a:b])
            np.save(Path(tmp) / f"y{p}.npy", y[a:b])
            mapped.add(np.load(Path(tmp) / f"emb{p}.npy", mmap_mode="r"), np.load(Path(tmp) / f"y{p}.npy"))
        got = mapped.search(tgt, k), mapped.predict(tgt, k)
        del mapped  # release the maps before the directory goes
    want = build(src, y, points)
    np.testing.assert_array_equal(got[0][0], want.search(tgt, k)[0])
    np.testing.assert_array_equal(got[0][1], want.search(tgt, k)[1])
    np.testing.assert_array_equal(got[1], want.predict(tgt, k))
    assert_same_as_unsharded(want, src, y, tgt, k)


def test_float32_pieces_are_kept_by_reference():
    src = np.array([[0.0], [10.0], [20.0]], dtype=np.float32)
    index = madda_rs.KnnIndex(1)
    index.add(src, [0, 1, 2])
    tgt = np.array([[19.0]], dtype=np.float32)
    assert index.search(tgt, 1)[1].tolist() == [[2]]
    src[0, 0] = 19.0  # the index sees the caller's array, not a copy
    assert index.search(tgt, 1)[1].tolist() == [[0]]
    # a conversion is a copy: changing the original then changes nothing
    as64 = src.astype(np.float64)
    index64 = madda_rs.KnnIndex(1)
    index64.add(as64, [0, 1, 2])
    as64[1, 0] = 19.0
    assert index64.search(tgt, 1)[1].tolist() == [[0]]


def test_add_during_searches_in_other_threads():
    rng = np.random.default_rng(2)
    src = rng.integers(0, 4, (4000, 16)).astype(np.float32)
    tgt = rng.integers(0, 4, (200, 16)).astype(np.float32)
    y = labels_for(src, 3)
    index = build(src, y, [2000])
    want = madda_rs.knn_search(src, tgt, 5)
    results, errors = [], []

    def work():
        try:
            results.append(index.search(tgt, 5, threads=1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    extra = madda_rs.KnnIndex(16)
    for _ in range(20):
        extra.add(src[:10], y[:10])
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3
    for dist, idx in results:
        np.testing.assert_array_equal(idx, want[1])
    index.add(src[:1], y[:1])  # and on the searched index itself, after the searches
    assert len(index) == 4001


# ----------------------------------------------------------------------------------------------
# merge_knn: what ranks of a distributed job exchange
# ----------------------------------------------------------------------------------------------


@given(int_problems(max_tgt=12), st.data())
def test_merged_shards_equal_unsharded(problem, data):
    src, tgt, k = problem
    y = labels_for(src, 4)
    shards = pieces(len(src), data.draw(cuts(len(src))))
    parts, offsets = [], []
    for a, b in shards:
        if b > a:  # a rank with no rows sends nothing
            shard = madda_rs.KnnIndex(src.shape[1])
            shard.add(src[a:b], y[a:b])
            parts.append(shard.candidates(tgt, min(k, b - a)))
            offsets.append(a)
    order = data.draw(st.permutations(range(len(parts))), label="gather order")
    dist, idx, lab = madda_rs.merge_knn([parts[i] for i in order], k, offsets=[offsets[i] for i in order])
    want_d, want_i = madda_rs.knn_search(src, tgt, k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist.astype(np.float32), want_d)
    np.testing.assert_array_equal(lab, y[want_i])
    np.testing.assert_array_equal(madda_rs.knn_vote(lab), madda_rs.knn_predict(src, y, tgt, k))
    # without labels, and with indices made global beforehand
    two = madda_rs.merge_knn([(d, i + o) for (d, i, _), o in zip(parts, offsets)], k)
    assert len(two) == 2
    np.testing.assert_array_equal(two[1], want_i)


def test_merge_of_index_candidates_is_idempotent():
    rng = np.random.default_rng(4)
    src = rng.standard_normal((500, 6)).astype(np.float32)
    tgt = rng.standard_normal((30, 6)).astype(np.float32)
    index = build(src, labels_for(src, 3), [250])
    cand = index.candidates(tgt, 8)
    again = madda_rs.merge_knn([cand], 8)
    for a, b in zip(again, cand):
        np.testing.assert_array_equal(a, b)
    # fewer than all: the first k of the merged order
    np.testing.assert_array_equal(madda_rs.merge_knn([cand], 3)[1], cand[1][:, :3])


@given(hnp.arrays(np.int64, st.tuples(st.integers(0, 20), st.integers(1, 9)), elements=st.integers(-3, 3)))
def test_knn_vote_matches_reference(labels):
    got = madda_rs.knn_vote(labels)
    assert got.dtype == np.int64 and got.shape == (len(labels),)
    assert got.tolist() == [vote_ref(row) for row in labels]


# ----------------------------------------------------------------------------------------------
# Errors: type and message
# ----------------------------------------------------------------------------------------------

SRC = np.arange(15, dtype=np.float32).reshape(5, 3)
Y = np.array([0, 1, 0, 1, 2])
TGT = np.ones((2, 3), dtype=np.float32)


def full_index():
    index = madda_rs.KnnIndex(3)
    index.add(SRC, Y)
    return index


@pytest.mark.parametrize(
    "dim, exc, msg",
    [
        (0, ValueError, "dim: expected an integer >= 1, got 0"),
        (-2, ValueError, "dim: expected an integer >= 1, got -2"),
        (2.0, TypeError, "dim: expected an integer, got float"),
        (True, TypeError, "dim: expected an integer, got bool"),
        (None, TypeError, "dim: expected an integer, got NoneType"),
    ],
)
def test_bad_dim(dim, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        madda_rs.KnnIndex(dim)


@pytest.mark.parametrize(
    "emb, labels, exc, msg",
    [
        (np.zeros(3), [0], ValueError, "emb: expected a 2-D array of shape (n, d), got 1-D"),
        (np.zeros((2, 3, 1)), [0, 0], ValueError, "emb: expected a 2-D array of shape (n, d), got 3-D"),
        (np.zeros((2, 4)), [0, 0], ValueError, "emb: expected 3 feature columns (the index's dim), got 4"),
        (np.zeros((2, 3)), [0], ValueError, "labels: expected one label per row of emb (2), got 1"),
        (np.zeros((2, 3)), [[0, 0]], ValueError, "labels: expected a 1-D array, got 2-D"),
        (np.zeros((2, 3)), [0.0, 1.0], TypeError, "labels: expected an integer array, got dtype float64"),
        (
            np.array([["a", "b", "c"]]),
            [0],
            TypeError,
            "emb: expected a numeric (integer or float) array, got dtype <U1",
        ),
        (np.array([[0, np.nan, 0]]), [0], ValueError, "emb: expected finite values, got NaN at row 0, column 1"),
        (np.array([[0, 0, 0], [0, 0, -np.inf]]), [0, 1], ValueError, "emb: expected finite values, got -inf at row 1"),
        (np.array([[1e30, 0, 0]]), [0], ValueError, "rescale the embeddings"),
        (np.zeros((1, 3)), np.array([2**63], dtype=np.uint64), ValueError, "labels: expected labels that fit in int64"),
    ],
)
def test_bad_add(emb, labels, exc, msg):
    index = full_index()
    with pytest.raises(exc, match=re.escape(msg)):
        index.add(emb, labels)
    assert len(index) == 5  # nothing was added


def test_search_on_empty_index():
    for call in (madda_rs.KnnIndex(3).search, madda_rs.KnnIndex(3).predict, madda_rs.KnnIndex(3).candidates):
        with pytest.raises(
            ValueError, match=re.escape("index: expected at least one source row, got 0; add() rows first")
        ):
            call(TGT, 1)


@pytest.mark.parametrize("method", ["search", "predict", "candidates"])
@pytest.mark.parametrize(
    "tgt, k, kw, exc, msg",
    [
        (TGT, 6, {}, ValueError, "k: expected 1 <= k <= ntotal = 5 (rows in the index), got 6"),
        (TGT, 0, {}, ValueError, "k: expected an integer >= 1, got 0"),
        (TGT, 2.0, {}, TypeError, "k: expected an integer, got float"),
        (TGT, 2**70, {}, ValueError, "k: expected 1 <= k <= ntotal = 5"),
        (np.ones((2, 4)), 1, {}, ValueError, "tgt: expected 3 feature columns (the index's dim), got 4"),
        (np.ones(3), 1, {}, ValueError, "tgt: expected a 2-D array of shape (n, d), got 1-D"),
        (np.array([[0, 0, np.nan]]), 1, {}, ValueError, "tgt: expected finite values, got NaN at row 0, column 2"),
        (np.array([[0, 0, np.inf]]), 1, {}, ValueError, "tgt: expected finite values, got inf at row 0, column 2"),
        (TGT.astype(str), 1, {}, TypeError, "tgt: expected a numeric (integer or float) array"),
        (TGT, 1, {"threads": 0}, ValueError, "threads: expected an integer >= 1, got 0"),
        (TGT, 1, {"threads": "2"}, TypeError, "threads: expected an integer, got str"),
    ],
)
def test_bad_search(method, tgt, k, kw, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        getattr(full_index(), method)(tgt, k, **kw)


def test_piece_changed_after_add_is_reported_at_search():
    src = SRC.copy()
    index = madda_rs.KnnIndex(3)
    index.add(np.ones((2, 3)), [0, 0])
    index.add(src, Y)
    src[3, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=re.escape("index: piece 1 (rows 2..7): emb: expected finite values, got NaN at row 3, column 1"),
    ):
        index.search(TGT, 1)


D = np.array([[0.0, 1.0], [2.0, 3.0]])
I = np.array([[0, 1], [1, 0]])  # noqa: E741


@pytest.mark.parametrize(
    "parts, k, kw, exc, msg",
    [
        ((D, I), 1, {}, TypeError, "parts[0]: expected a (distances, indices) or (distances, indices, labels) tuple"),
        (
            np.zeros((2, 2)),
            1,
            {},
            TypeError,
            "parts: expected a list of (distances, indices[, labels]) tuples, got ndarray",
        ),
        ([], 1, {}, ValueError, "parts: expected at least one part, got none"),
        ([(D,)], 1, {}, TypeError, "parts[0]: expected a (distances, indices) or"),
        (
            [(D, I), (D, I, I)],
            1,
            {"offsets": [0, 2]},
            TypeError,
            "parts[1]: expected a 2-tuple like parts[0], got a 3-tuple",
        ),
        (
            [(D.astype(np.float32), I)],
            1,
            {},
            TypeError,
            "parts[0]: expected float64 distances (KnnIndex.candidates), got dtype float32",
        ),
        ([(D[0], I[0])], 1, {}, ValueError, "parts[0]: expected 2-D distances of shape (n_tgt, k), got shape (2,)"),
        ([(D, I.astype(float))], 1, {}, TypeError, "parts[0]: expected integer indices, got dtype float64"),
        ([(D, I[:, :1])], 1, {}, ValueError, "parts[0]: expected indices of the distances' shape (2, 2), got (2, 1)"),
        ([(D, I, I[:1])], 1, {}, ValueError, "parts[0]: expected labels of the distances' shape (2, 2), got (1, 2)"),
        (
            [(D, I), (D[:1], I[:1])],
            1,
            {"offsets": [0, 2]},
            ValueError,
            "parts: part 1: expected 2 target rows (as part 0), got 1",
        ),
        (
            [(D * np.nan, I)],
            1,
            {},
            ValueError,
            "parts: part 0: expected finite distances >= 0, got NaN at row 0, column 0",
        ),
        ([(-D - 1, I)], 1, {}, ValueError, "parts: part 0: expected finite distances >= 0, got -1 at row 0, column 0"),
        (
            [(D, -I - 1)],
            1,
            {},
            ValueError,
            "parts: part 0: expected indices >= 0 whose sum with the offset 0 fits in int64",
        ),
        (
            [(D, I), (D, I)],
            1,
            {},
            ValueError,
            "parts: global index 0 appears more than once in row 0; each source row must belong to one part",
        ),
        (
            [(D, I)],
            3,
            {},
            ValueError,
            "k: expected 1 <= k <= 2 (the candidates per target row, summed over the parts), got 3",
        ),
        ([(D, I)], 0, {}, ValueError, "k: expected an integer >= 1, got 0"),
        ([(D, I)], 2**70, {}, ValueError, "k: expected 1 <= k <= 2 (the candidates per target row"),
        ([(D, I)], 1, {"offsets": [0, 1]}, ValueError, "offsets: expected one per part (1), got 2"),
        ([(D, I)], 1, {"offsets": [1.0]}, TypeError, "offsets: expected integers, got float"),
        ([(D, I)], 1, {"offsets": [-1]}, ValueError, "offsets: expected integers in [0, 2**63), got -1"),
        ([(D, I + 2**62)], 1, {"offsets": [2**62]}, ValueError, "fits in int64"),
    ],
)
def test_bad_merge(parts, k, kw, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        madda_rs.merge_knn(parts, k, **kw)


@pytest.mark.parametrize(
    "labels, exc, msg",
    [
        (np.zeros((2, 2)), TypeError, "labels: expected an integer array, got dtype float64"),
        (
            np.zeros(3, dtype=int),
            ValueError,
            "labels: expected a 2-D array of shape (n, k) with k >= 1, got shape (3,)",
        ),
        (
            np.zeros((3, 0), dtype=int),
            ValueError,
            "labels: expected a 2-D array of shape (n, k) with k >= 1, got shape (3, 0)",
        ),
    ],
)
def test_bad_vote(labels, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        madda_rs.knn_vote(labels)


@given(
    n_parts=st.integers(0, 3),
    rows=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    cols=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    poison=st.sampled_from([None, np.nan, -1.0, np.inf]),
    offset=st.sampled_from([0, 1, 2**62, 2**63 - 1]),
    k=st.integers(0, 8),
    seed=st.integers(0, 2**16),
)
def test_merge_never_panics(n_parts, rows, cols, poison, offset, k, seed):
    """Arbitrary parts give a result or ValueError/TypeError, never a panic."""
    rng = np.random.default_rng(seed)
    parts = []
    for p in range(n_parts):
        d = rng.random((rows[p], cols[p]))
        if poison is not None and d.size:
            d.flat[0] = poison
        parts.append((d, rng.integers(0, 6, (rows[p], cols[p]))))
    try:
        madda_rs.merge_knn(parts, k, offsets=[offset] * n_parts)
    except (ValueError, TypeError):
        pass
