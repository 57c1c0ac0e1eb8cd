"""Property tests of madda_rs.triplets against a NumPy reference."""

from __future__ import annotations

import resource
import time
from math import comb

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import madda_rs

from reference import hardest_negative_ref, triplet_pairs_ref, triplets_ref

DIST_MODES = ["violating", "hardest", "semihard"]
LABEL_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]

# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**64 - 1)


def label_arrays(max_size=40, max_label=4, min_label=0):
    return hnp.arrays(np.int64, st.integers(0, max_size), elements=st.integers(min_label, max_label))


@st.composite
def mined_batches(draw):
    """(labels, sq_dists, margin) with many exact ties and boundary cases d_ap - d_an + margin == 0."""
    n_labels = draw(st.integers(2, 5), label="n_labels")  # one-label batches: see test_single_label_batch_is_empty
    size = draw(st.integers(2, 30), label="batch size")
    labels = draw(hnp.arrays(np.int64, size, elements=st.integers(-1, n_labels - 2), fill=st.nothing()), label="labels")
    b = len(labels)
    kind = draw(st.sampled_from(["integer points", "integer matrix", "real points"]), label="sq_dists kind")
    if kind == "integer points":
        d = draw(st.integers(1, 3))
        x = draw(hnp.arrays(np.int64, (b, d), elements=st.integers(0, 3), fill=st.nothing())).astype(np.float64)
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    elif kind == "integer matrix":  # not symmetric, not a metric: only row a is consulted
        sq = draw(hnp.arrays(np.int64, (b, b), elements=st.integers(0, 6), fill=st.nothing())).astype(np.float64)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = rng.standard_normal((b, draw(st.integers(1, 4))))
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    margin = draw(st.one_of(st.sampled_from([2.5, 1.0, 2.0, 0.5, 3.0, 0.0, -1.0]), st.floats(-2, 10)), label="margin")
    return labels, sq, margin


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def assert_shape(out, m=None):
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.int64 and out.ndim == 2 and out.shape[1] == 3, (out.dtype, out.shape)
    assert out.flags.c_contiguous and out.flags.writeable
    if m is not None:
        assert out.shape == (m, 3), out.shape


def assert_valid(labels, out):
    """anchor label == positive label != negative label, anchor < positive, all in range."""
    y = np.asarray(labels).astype(np.int64)
    assert_shape(out)
    if len(out) == 0:
        return
    assert ((out >= 0) & (out < len(y))).all()
    a, p, n = out.T
    assert (a < p).all()
    assert (y[a] == y[p]).all()
    assert (y[a] != y[n]).all()


def assert_matches_mined_reference(labels, sq, margin, mode, out):
    ref = triplets_ref(labels, mode, sq, margin)
    kept = [(a, p) for a, p, adm in ref if len(adm)]
    assert_shape(out, len(kept))
    assert [tuple(r) for r in out[:, :2].tolist()] == kept
    admissible = {(a, p): adm for a, p, adm in ref}
    for a, p, n in out.tolist():
        adm = admissible[(a, p)]
        assert n in adm, (a, p, n, adm)
        d_ap, d_an = sq[a, p], sq[a, n]
        assert d_ap - d_an + margin > 0.0
        if mode == "semihard":
            assert d_ap < d_an
        if mode == "hardest":
            assert n == hardest_negative_ref(adm, sq, a)


# ----------------------------------------------------------------------------------------------
# Random negatives
# ----------------------------------------------------------------------------------------------


@given(label_arrays(min_label=-2), seeds)
def test_random_one_triple_per_pair_in_reference_order(labels, seed):
    out = madda_rs.triplets(labels, seed=seed)
    ref = triplet_pairs_ref(labels)
    assert_shape(out, len(ref))
    np.testing.assert_array_equal(out[:, :2], ref)
    assert_valid(labels, out)
    values, counts = np.unique(labels, return_counts=True)
    expected = sum(comb(int(c), 2) for c in counts) if len(values) > 1 else 0
    assert len(out) == expected


@given(label_arrays(max_size=30), seeds)
def test_random_negatives_admissible(labels, seed):
    out = madda_rs.triplets(labels, seed=seed, negatives="random")
    for (a, p, adm), n in zip(triplets_ref(labels), out[:, 2].tolist()):
        assert n in adm


@given(label_arrays(max_size=30, max_label=5), seeds)
def test_any_integer_label_dtype_gives_the_same_output(labels, seed):
    want = madda_rs.triplets(labels, seed=seed)
    for dt in LABEL_DTYPES:
        got = madda_rs.triplets(labels.astype(dt), seed=seed)
        np.testing.assert_array_equal(got, want, err_msg=str(dt))
    np.testing.assert_array_equal(madda_rs.triplets(labels.astype(">i4"), seed=seed), want)
    if len(labels):  # [] would be a float64 array
        np.testing.assert_array_equal(madda_rs.triplets(labels.tolist(), seed=seed), want)
    strided = np.repeat(labels, 2)[::2]
    np.testing.assert_array_equal(madda_rs.triplets(strided, seed=seed), want)


def test_negative_labels_order_ascending():
    labels = np.array([5, -1, 5, -1, 0, -7])
    out = madda_rs.triplets(labels, seed=0)
    np.testing.assert_array_equal(out[:, :2], [[1, 3], [0, 2]])
    assert_valid(labels, out)


# ----------------------------------------------------------------------------------------------
# Distance modes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", DIST_MODES)
@given(batch=mined_batches(), seed=seeds)
def test_distance_modes_match_reference(batch, mode, seed):
    labels, sq, margin = batch
    out = madda_rs.triplets(labels, seed=seed, negatives=mode, sq_dists=sq, margin=margin)
    assert_valid(labels, out)
    assert_matches_mined_reference(labels, sq, margin, mode, out)
    n_pairs = len(triplet_pairs_ref(labels))
    if n_pairs == 0:
        event("no pairs")
    else:
        event("all kept" if len(out) == n_pairs else "none kept" if len(out) == 0 else "some skipped")


@given(mined_batches(), seeds)
def test_hardest_ignores_seed(batch, seed):
    labels, sq, margin = batch
    a = madda_rs.triplets(labels, seed=seed, negatives="hardest", sq_dists=sq, margin=margin)
    b = madda_rs.triplets(labels, seed=seed ^ 0xDEADBEEF, negatives="hardest", sq_dists=sq, margin=margin)
    np.testing.assert_array_equal(a, b)


@given(mined_batches(), st.sampled_from(DIST_MODES))
def test_sq_dists_dtype_and_layout_do_not_matter(batch, mode):
    labels, sq, margin = batch
    want = madda_rs.triplets(labels, seed=3, negatives=mode, sq_dists=sq, margin=margin)
    forms = [np.asfortranarray(sq), sq.astype(np.float32) if np.all(sq == np.round(sq)) else sq]
    if len(sq):
        wide = np.zeros((len(sq), 2 * len(sq)))
        wide[:, ::2] = sq
        forms.append(wide[:, ::2])
    if np.all(sq == np.round(sq)):
        forms.append(sq.astype(np.int32))
    for form in forms:
        got = madda_rs.triplets(labels, seed=3, negatives=mode, sq_dists=form, margin=margin)
        np.testing.assert_array_equal(got, want)


def test_distance_modes_worked_example():
    # 1-D positions; anchor 0 at 0.0, positive 1 at 0.5: d_ap = 0.25
    labels = np.array([0, 0, 1, 1, 2, 2])
    pos = np.array([0.0, 0.5, 0.9, 3.0, 1.2, 0.6])
    sq = (pos[:, None] - pos[None, :]) ** 2
    # negatives of anchor 0: 2 (0.81), 3 (9.0), 4 (1.44), 5 (0.36); margin 1: violating iff d_an < 1.25
    hardest = madda_rs.triplets(labels, negatives="hardest", sq_dists=sq, margin=1.0, seed=0)
    assert hardest[0].tolist() == [0, 1, 5]
    for seed in range(50):
        v = madda_rs.triplets(labels, negatives="violating", sq_dists=sq, margin=1.0, seed=seed)
        assert v[0, :2].tolist() == [0, 1] and v[0, 2] in (2, 5)
        s = madda_rs.triplets(labels, negatives="semihard", sq_dists=sq, margin=1.0, seed=seed)
        assert s[0, :2].tolist() == [0, 1] and s[0, 2] in (2, 5)  # 0.25 < d_an < 1.25
    # margin 0.05: nothing violates for anchor 0 (needs d_an < 0.30); the pair is skipped
    out = madda_rs.triplets(labels, negatives="violating", sq_dists=sq, margin=0.05, seed=0)
    assert [0, 1] not in out[:, :2].tolist()
    assert_matches_mined_reference(labels, sq, 0.05, "violating", out)


def test_hardest_tie_goes_to_smallest_index():
    labels = np.array([1, 1, 0, 0, 2, 2])
    sq = np.ones((6, 6))
    sq[0] = [0, 5, 2, 3, 2, 9]  # anchor 0: negatives 2 and 4 tie at 2.0; 3 at 3.0
    out = madda_rs.triplets(labels, negatives="hardest", sq_dists=sq, margin=10.0, seed=0)
    row = [r for r in out.tolist() if r[:2] == [0, 1]]
    assert row == [[0, 1, 2]]
    sq[0, 2] = 2.5
    out = madda_rs.triplets(labels, negatives="hardest", sq_dists=sq, margin=10.0, seed=0)
    assert [r for r in out.tolist() if r[:2] == [0, 1]] == [[0, 1, 4]]


def test_boundary_is_strict():
    # d_ap - d_an + margin == 0 exactly is not violating; d_an == d_ap is not semihard
    labels = np.array([0, 0, 1])
    sq = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 9.0], [2.0, 9.0, 0.0]])
    assert madda_rs.triplets(labels, negatives="violating", sq_dists=sq, margin=1.0, seed=0).shape == (0, 3)
    assert madda_rs.triplets(labels, negatives="violating", sq_dists=sq, margin=1.5, seed=0).tolist() == [[0, 1, 2]]
    sq[0, 2] = 1.0
    assert madda_rs.triplets(labels, negatives="semihard", sq_dists=sq, margin=1.0, seed=0).shape == (0, 3)
    assert madda_rs.triplets(labels, negatives="hardest", sq_dists=sq, margin=1.0, seed=0).tolist() == [[0, 1, 2]]


# ----------------------------------------------------------------------------------------------
# Seeds and threads
# ----------------------------------------------------------------------------------------------


@given(label_arrays(max_size=60, max_label=5), seeds)
def test_same_seed_same_output(labels, seed):
    a = madda_rs.triplets(labels, seed=seed)
    b = madda_rs.triplets(labels, seed=seed)
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    labels = np.arange(64) % 4  # 4 * C(16, 2) = 480 pairs, 48 negatives each
    outs = [madda_rs.triplets(labels, seed=s) for s in (0, 1, 2, 2**63, 2**64 - 1)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            np.testing.assert_array_equal(outs[i][:, :2], outs[j][:, :2])
            assert not np.array_equal(outs[i][:, 2], outs[j][:, 2]), (i, j)
    # no seed: fresh entropy each call
    assert not np.array_equal(madda_rs.triplets(labels)[:, 2], madda_rs.triplets(labels)[:, 2])
    rng = np.random.default_rng(0)
    sq = rng.random((64, 64)) * 4
    a = madda_rs.triplets(labels, seed=0, negatives="violating", sq_dists=sq, margin=2.0)
    b = madda_rs.triplets(labels, seed=1, negatives="violating", sq_dists=sq, margin=2.0)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    assert not np.array_equal(a[:, 2], b[:, 2])


@given(label_arrays(max_size=60, max_label=5), seeds)
def test_thread_count_does_not_change_output_small(labels, seed):
    np.testing.assert_array_equal(
        madda_rs.triplets(labels, seed=seed, threads=1), madda_rs.triplets(labels, seed=seed, threads=2)
    )


@pytest.mark.parametrize("mode", ["random"] + DIST_MODES)
def test_thread_count_does_not_change_output_parallel_path(mode):
    # 600 labels over 4 classes: 44,700 pairs, above the library's parallel threshold (32,768)
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.arange(600) % 4)
    kwargs = {}
    if mode != "random":
        x = rng.standard_normal((600, 3))
        kwargs = dict(sq_dists=((x[:, None] - x[None]) ** 2).sum(-1), margin=1.0)
    one = madda_rs.triplets(labels, seed=11, negatives=mode, threads=1, **kwargs)
    two = madda_rs.triplets(labels, seed=11, negatives=mode, threads=2, **kwargs)
    dflt = madda_rs.triplets(labels, seed=11, negatives=mode, **kwargs)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, dflt)
    assert_valid(labels, one)
    if mode == "random":
        assert len(one) == 4 * comb(150, 2)
        np.testing.assert_array_equal(one[:, :2], triplet_pairs_ref(labels))
    else:
        sq = kwargs["sq_dists"]
        a, p, n = one.T
        assert (sq[a, p] - sq[a, n] + 1.0 > 0).all()
        if mode == "semihard":
            assert (sq[a, p] < sq[a, n]).all()


# ----------------------------------------------------------------------------------------------
# Degenerate batches
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [np.zeros(0, np.int64), np.array([3]), np.array([3, 3]), np.zeros(50, np.int64), np.full(7, -4, np.int8),
     np.zeros(5, np.uint64)],
    ids=["empty", "one", "two-same", "50-same", "int8", "uint64"],
)
@pytest.mark.parametrize("mode", ["random"] + DIST_MODES)
def test_single_label_batch_is_empty(labels, mode):
    b = len(labels)
    kwargs = {} if mode == "random" else dict(sq_dists=np.zeros((b, b)))
    out = madda_rs.triplets(labels, seed=0, negatives=mode, **kwargs)
    assert_shape(out, 0)


@given(label_arrays(max_size=30, max_label=6), seeds)
def test_singleton_labels_contribute_nothing(labels, seed):
    out = madda_rs.triplets(labels, seed=seed)
    values, counts = np.unique(labels, return_counts=True)
    singletons = set(values[counts == 1].tolist())
    assert not singletons & set(labels[out[:, 0]].tolist())
    assert not singletons & set(labels[out[:, 1]].tolist())
    expected = sum(comb(int(c), 2) for c in counts) if len(values) > 1 else 0
    assert len(out) == expected  # singletons add no pair (but are valid negatives)
    assert_valid(labels, out)


def test_all_singletons_is_empty():
    assert_shape(madda_rs.triplets(np.arange(10), seed=0), 0)
    assert_shape(madda_rs.triplets(np.array([0, 0, 1, 2]), seed=0), 1)


# ----------------------------------------------------------------------------------------------
# Size: a large batch, and the MAX_TRIPLETS bound
# ----------------------------------------------------------------------------------------------


def test_batch_of_4096_over_10_classes():
    labels = np.random.default_rng(0).permutation(np.arange(4096) % 10)
    out = madda_rs.triplets(labels, seed=123)
    _, counts = np.unique(labels, return_counts=True)
    expected = sum(comb(int(c), 2) for c in counts)
    assert expected == 6 * comb(410, 2) + 4 * comb(409, 2) == 836_814
    assert_shape(out, expected)
    assert_valid(labels, out)
    np.testing.assert_array_equal(out[:, :2], triplet_pairs_ref(labels))


def test_max_triplets_value():
    assert madda_rs.MAX_TRIPLETS == 50_000_000
    assert isinstance(madda_rs.MAX_TRIPLETS, int)


def test_over_max_triplets_fails_fast_before_allocating():
    # group sizes 10000, 100, 10, 4: 49,995,000 + 4,950 + 45 + 6 = MAX_TRIPLETS + 1 pairs
    sizes = [10_000, 100, 10, 4]
    pairs = sum(comb(s, 2) for s in sizes)
    assert pairs == madda_rs.MAX_TRIPLETS + 1
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"labels: .*\b{pairs}\b.*\b{madda_rs.MAX_TRIPLETS}\b"):
        madda_rs.triplets(labels, seed=0)
    elapsed = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert elapsed < 0.5, f"took {elapsed:.2f} s: the bound must be checked before any work"
    assert rss1 - rss0 < 200 * 1024, "peak memory grew by hundreds of MB before raising"


def test_far_over_max_triplets():
    labels = np.zeros(10_002, dtype=np.int64)
    labels[-1] = 1  # C(10001, 2) = 50,005,000 pairs
    with pytest.raises(ValueError, match="50005000"):
        madda_rs.triplets(labels, seed=0)


# ----------------------------------------------------------------------------------------------
# Uniformity of random draws (fixed seeds: deterministic, loose bounds)
# ----------------------------------------------------------------------------------------------


def chi_square(counts):
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_random_negative_uniform_over_seeds():
    labels = np.array([0, 0] + [1] * 3 + [2] * 5)  # pair (0, 1) has 8 negatives: positions 2..9
    n_draws = 4000
    picks = np.array([madda_rs.triplets(labels, seed=s)[0, 2] for s in range(n_draws)])
    counts = np.bincount(picks, minlength=10)
    assert counts[:2].sum() == 0
    counts = counts[2:]
    # 7 degrees of freedom: mean 7, P(chi2 > 40) ~ 1e-6
    assert chi_square(counts) < 40, counts
    assert (np.abs(counts - n_draws / 8) < 0.25 * n_draws / 8).all(), counts


def test_random_negative_uniform_over_pairs():
    labels = np.array([0] * 300 + list(range(1, 8)))  # 44,850 pairs, each with negatives 300..306
    out = madda_rs.triplets(labels, seed=2024)
    counts = np.bincount(out[:, 2], minlength=307)
    assert counts[:300].sum() == 0
    counts = counts[300:]
    assert chi_square(counts) < 40, counts  # 6 dof
    # and no correlation with the pair's position: first and second halves are both uniform
    half = len(out) // 2
    for part in (out[:half, 2], out[half:, 2]):
        assert chi_square(np.bincount(part - 300, minlength=7)) < 40


def test_random_negatives_cover_all_classes_and_positions():
    labels = np.arange(200) % 5
    out = madda_rs.triplets(labels, seed=9)
    assert len(out) == 5 * comb(40, 2)
    # each position is a candidate negative for the 4 * 780 rows of the other classes, 1 in 160
    # each time: about 19.5 expected hits, so every one of the 200 positions shows up
    assert np.bincount(out[:, 2], minlength=200).min() > 0
    for c in range(5):
        negs = out[labels[out[:, 0]] == c, 2]
        assert (labels[negs] != c).all()


@pytest.mark.parametrize("mode", ["violating", "semihard"])
def test_mined_negative_uniform_among_admissible(mode):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    sq = np.full((8, 8), 50.0)
    np.fill_diagonal(sq, 0.0)
    sq[0, 1] = 1.0
    # anchor 0: d_an for negatives 2..7; margin 3 -> violating iff d_an < 4; semihard iff 1 < d_an < 4
    sq[0, 2:] = [0.5, 2.0, 3.0, 3.5, 9.0, 1.0]
    admissible = {"violating": [2, 3, 4, 5, 7], "semihard": [3, 4, 5]}[mode]
    n_draws = 3000
    picks = []
    for s in range(n_draws):
        out = madda_rs.triplets(labels, seed=s, negatives=mode, sq_dists=sq, margin=3.0)
        assert out[0, :2].tolist() == [0, 1]
        picks.append(out[0, 2])
    counts = np.bincount(picks, minlength=8)
    assert set(np.flatnonzero(counts).tolist()) == set(admissible)
    assert chi_square(counts[admissible]) < 40, counts


# ----------------------------------------------------------------------------------------------
# torch tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random"] + DIST_MODES)
@given(batch=mined_batches(), seed=seeds)
def test_cpu_tensors_give_the_numpy_answer(batch, mode, seed):
    torch = pytest.importorskip("torch")
    labels, sq, margin = batch
    sq_arg = None if mode == "random" else sq
    want = madda_rs.triplets(labels, seed=seed, negatives=mode, sq_dists=sq_arg, margin=margin)
    y = torch.from_numpy(labels)
    for name, dists in {
        "float64": None if sq_arg is None else torch.from_numpy(sq),
        "requires_grad": None if sq_arg is None else torch.from_numpy(sq).requires_grad_(),
    }.items():
        got = madda_rs.triplets(y, seed=seed, negatives=mode, sq_dists=dists, margin=margin)
        np.testing.assert_array_equal(got, want, err_msg=name)
