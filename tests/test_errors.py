"""Every error path: the exception type, and a message that names the offending argument.

No input may surface as pyo3's PanicException (a BaseException: pytest.raises(ValueError) would
not catch it, so such a test errors out instead of passing).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import madda_rs

SRC = np.arange(12, dtype=np.float32).reshape(4, 3)  # n_src = 4, d = 3
TGT = np.ones((2, 3), dtype=np.float32)
Y = np.array([0, 1, 0, 1])
LABELS = np.array([0, 0, 1, 1, 2])
SQ = np.zeros((5, 5))


def search(src=SRC, tgt=TGT, k=2, **kw):
    return madda_rs.knn_search(src, tgt, k, **kw)


def predict(src=SRC, y=Y, tgt=TGT, k=2, **kw):
    return madda_rs.knn_predict(src, y, tgt, k, **kw)


BOTH = pytest.mark.parametrize("fn", ["search", "predict"])


def call(fn, **kw):
    return search(**kw) if fn == "search" else predict(**kw)


# ----------------------------------------------------------------------------------------------
# knn_search / knn_predict: shapes
# ----------------------------------------------------------------------------------------------


@BOTH
def test_src_1d(fn):
    with pytest.raises(ValueError, match=r"src_emb: expected a 2-D array.*got 1-D"):
        call(fn, src=np.arange(4, dtype=np.float32))


@BOTH
def test_tgt_1d(fn):
    with pytest.raises(ValueError, match=r"tgt_emb: expected a 2-D array.*got 1-D"):
        call(fn, tgt=np.ones(3, dtype=np.float32))


@BOTH
def test_src_3d(fn):
    with pytest.raises(ValueError, match=r"src_emb: expected a 2-D array.*got 3-D"):
        call(fn, src=SRC.reshape(4, 3, 1))


@BOTH
def test_tgt_3d(fn):
    with pytest.raises(ValueError, match=r"tgt_emb: expected a 2-D array.*got 3-D"):
        call(fn, tgt=TGT.reshape(1, 2, 3))


@BOTH
def test_scalar_input(fn):
    with pytest.raises(ValueError, match=r"src_emb: expected a 2-D array.*got 0-D"):
        call(fn, src=np.float32(1.0))


@BOTH
def test_mismatched_d(fn):
    with pytest.raises(ValueError, match=r"tgt_emb: expected 3 feature columns.*got 4"):
        call(fn, tgt=np.ones((2, 4), dtype=np.float32))


@BOTH
def test_mismatched_d_with_empty_target(fn):
    with pytest.raises(ValueError, match=r"tgt_emb: expected 3 feature columns.*got 2"):
        call(fn, tgt=np.ones((0, 2), dtype=np.float32))


@BOTH
def test_empty_source(fn):
    kw = dict(src=np.zeros((0, 3), dtype=np.float32), k=1)
    if fn == "predict":
        kw["y"] = np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match=r"src_emb: expected at least one source row, got 0"):
        call(fn, **kw)


@BOTH
def test_zero_feature_columns(fn):
    with pytest.raises(ValueError, match=r"src_emb: expected at least one feature column, got 0"):
        call(fn, src=np.zeros((4, 0), dtype=np.float32), tgt=np.zeros((2, 0), dtype=np.float32))


def test_labels_length_mismatch():
    with pytest.raises(ValueError, match=r"src_y: expected one label per row of src_emb \(4\), got 3"):
        predict(y=np.array([0, 1, 0]))


def test_labels_2d():
    with pytest.raises(ValueError, match=r"src_y: expected a 1-D array, got 2-D"):
        predict(y=Y.reshape(2, 2))


def test_labels_0d():
    with pytest.raises(ValueError, match=r"src_y: expected a 1-D array, got 0-D"):
        predict(y=np.int64(1))


# ----------------------------------------------------------------------------------------------
# k and threads
# ----------------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("k", [0, -1, -(2**70)])
def test_k_below_one(fn, k):
    with pytest.raises(ValueError, match=rf"k: expected an integer >= 1, got {k}"):
        call(fn, k=k)


@BOTH
@pytest.mark.parametrize("k", [5, 100])
def test_k_above_n_src(fn, k):
    with pytest.raises(ValueError, match=rf"k: expected 1 <= k <= n_src = 4, got {k}"):
        call(fn, k=k)


@BOTH
def test_k_above_n_src_with_empty_target(fn):
    with pytest.raises(ValueError, match=r"k: expected 1 <= k <= n_src = 4, got 5"):
        call(fn, tgt=np.zeros((0, 3), dtype=np.float32), k=5)


@BOTH
@pytest.mark.parametrize("k", [1.5, 2.0, "2", None, True, np.float64(2.0), [2]])
def test_k_not_an_integer(fn, k):
    with pytest.raises(TypeError, match=r"k: expected an integer, got"):
        call(fn, k=k)


@BOTH
@pytest.mark.parametrize("k", [2**64, 2**70])
def test_k_astronomically_large(fn, k):
    with pytest.raises(ValueError, match=r"k: expected 1 <= k <= n_src = 4"):
        call(fn, k=k)


@BOTH
@pytest.mark.parametrize("threads", [0, -2])
def test_threads_below_one(fn, threads):
    with pytest.raises(ValueError, match=rf"threads: expected an integer >= 1, got {threads}"):
        call(fn, threads=threads)


@BOTH
@pytest.mark.parametrize("threads", [1.0, "2", True])
def test_threads_not_an_integer(fn, threads):
    with pytest.raises(TypeError, match=r"threads: expected an integer, got"):
        call(fn, threads=threads)


def test_threads_astronomically_large():
    with pytest.raises(ValueError, match=r"threads"):
        search(threads=2**64)


# ----------------------------------------------------------------------------------------------
# Values: NaN / inf
# ----------------------------------------------------------------------------------------------


@BOTH
def test_nan_in_src(fn):
    src = SRC.copy()
    src[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"src_emb: expected finite values, got NaN at row 2, column 1"):
        call(fn, src=src)


@BOTH
def test_inf_in_tgt(fn):
    tgt = TGT.copy()
    tgt[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"tgt_emb: expected finite values, got inf at row 1, column 2"):
        call(fn, tgt=tgt)


@BOTH
def test_minus_inf_in_src(fn):
    src = SRC.copy()
    src[0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"src_emb: expected finite values, got -inf at row 0, column 0"):
        call(fn, src=src)


@BOTH
def test_nan_in_float64_strided_tgt(fn):
    tgt = np.ones((4, 6))
    tgt[2, 4] = np.nan  # row 1, column 2 of the view
    with pytest.raises(ValueError, match=r"tgt_emb: expected finite values, got NaN at row 1, column 2"):
        call(fn, tgt=tgt[::2, ::2])


# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b", "c"]] * 4),
        np.array([[1, 2, 3]] * 4, dtype=object),
        np.ones((4, 3), dtype=bool),
        np.ones((4, 3), dtype=np.complex64),
        np.zeros((4, 3), dtype="datetime64[s]"),
        np.zeros(4, dtype=[("a", "f4"), ("b", "f4"), ("c", "f4")]),
        [["a", 1, 2]] * 4,
    ],
    ids=["str", "object", "bool", "complex", "datetime", "structured", "mixed-list"],
)
def test_non_numeric_src(fn, bad):
    with pytest.raises(TypeError, match=r"src_emb: expected a numeric \(integer or float\) array, got dtype"):
        call(fn, src=bad)


@BOTH
def test_non_numeric_tgt(fn):
    with pytest.raises(TypeError, match=r"tgt_emb: expected a numeric"):
        call(fn, tgt=np.array([[None, 1, 2]], dtype=object))


@pytest.mark.parametrize(
    "y",
    [Y.astype(np.float64), Y.astype(np.float32), Y.astype(bool), Y.astype(str), Y.astype(object), [0.0, 1.0, 0.0, 1.0]],
    ids=["float64", "float32", "bool", "str", "object", "float-list"],
)
def test_labels_not_integers(y):
    with pytest.raises(TypeError, match=r"src_y: expected an integer array, got dtype"):
        predict(y=y)


def test_labels_beyond_int64():
    y = np.array([0, 1, 2**63, 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"src_y: expected labels that fit in int64, got 9223372036854775808"):
        predict(y=y)


# ----------------------------------------------------------------------------------------------
# No panic, whatever the shapes and values
# ----------------------------------------------------------------------------------------------


@given(
    n_src=st.integers(0, 6),
    d_src=st.integers(0, 3),
    n_tgt=st.integers(0, 4),
    d_tgt=st.integers(0, 3),
    k=st.integers(-2, 8),
    poison=st.sampled_from([None, np.nan, np.inf, -np.inf]),
    n_y=st.integers(0, 7),
)
def test_knn_never_panics(n_src, d_src, n_tgt, d_tgt, k, poison, n_y):
    src = np.arange(n_src * d_src, dtype=np.float32).reshape(n_src, d_src)
    tgt = np.ones((n_tgt, d_tgt), dtype=np.float32)
    if poison is not None and tgt.size:
        tgt.flat[-1] = poison
    y = np.zeros(n_y, dtype=np.int64)
    for f in (lambda: madda_rs.knn_search(src, tgt, k), lambda: madda_rs.knn_predict(src, y, tgt, k)):
        try:
            out = f()
        except (TypeError, ValueError) as e:
            assert any(name in str(e) for name in ("src_emb", "tgt_emb", "src_y", "k:")), str(e)
        else:
            res = out[1] if isinstance(out, tuple) else out
            assert len(res) == n_tgt


# ----------------------------------------------------------------------------------------------
# triplets
# ----------------------------------------------------------------------------------------------


def test_triplets_labels_2d():
    with pytest.raises(ValueError, match=r"labels: expected a 1-D array, got 2-D"):
        madda_rs.triplets(np.zeros((2, 3), dtype=np.int64), seed=0)


@pytest.mark.parametrize(
    "labels",
    [LABELS.astype(np.float64), LABELS.astype(np.float32), LABELS.astype(bool), LABELS.astype(str), [0.5, 1.0]],
    ids=["float64", "float32", "bool", "str", "float-list"],
)
def test_triplets_labels_not_integers(labels):
    with pytest.raises(TypeError, match=r"labels: expected an integer array, got dtype"):
        madda_rs.triplets(labels, seed=0)


def test_triplets_labels_beyond_int64():
    with pytest.raises(ValueError, match=r"labels: expected labels that fit in int64"):
        madda_rs.triplets(np.array([0, 2**64 - 1], dtype=np.uint64), seed=0)


@pytest.mark.parametrize("shape", [(5, 4), (4, 4), (5,), (25,), (5, 5, 1), (0, 0)])
def test_triplets_sq_dists_wrong_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"sq_dists: expected shape (5, 5) to match labels, got {shape}")):
        madda_rs.triplets(LABELS, seed=0, negatives="violating", sq_dists=np.zeros(shape))


@pytest.mark.parametrize("mode", ["violating", "hardest", "semihard"])
@pytest.mark.parametrize(
    "value, shown", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")], ids=["nan", "inf", "-inf"]
)
def test_triplets_sq_dists_not_finite(mode, value, shown):
    sq = SQ.copy()
    sq[3, 1] = value
    with pytest.raises(ValueError, match=rf"sq_dists: expected finite values, got {shown} at \(3, 1\)"):
        madda_rs.triplets(LABELS, seed=0, negatives=mode, sq_dists=sq)


@pytest.mark.parametrize("mode", ["violating", "hardest", "semihard"])
def test_triplets_sq_dists_missing(mode):
    with pytest.raises(ValueError, match=r"sq_dists: expected the batch's \(B x B\) squared distances.*got None"):
        madda_rs.triplets(LABELS, seed=0, negatives=mode)


@pytest.mark.parametrize("mode", ["violating", "hardest", "semihard"])
def test_triplets_sq_dists_missing_even_for_single_label(mode):
    with pytest.raises(ValueError, match=r"sq_dists: expected the batch's"):
        madda_rs.triplets(np.zeros(3, np.int64), seed=0, negatives=mode)


def test_triplets_sq_dists_with_random():
    with pytest.raises(ValueError, match=r"sq_dists: is only used by negatives='violating'.*negatives='random'"):
        madda_rs.triplets(LABELS, seed=0, negatives="random", sq_dists=SQ)


@pytest.mark.parametrize("bad", [SQ.astype(str), SQ.astype(object), SQ.astype(complex), SQ.astype(bool)])
def test_triplets_sq_dists_non_numeric(bad):
    with pytest.raises(TypeError, match=r"sq_dists: expected a numeric"):
        madda_rs.triplets(LABELS, seed=0, negatives="violating", sq_dists=bad)


@pytest.mark.parametrize("mode", ["nearest", "Random", "", "hard", None, 3])
def test_triplets_unknown_mode(mode):
    with pytest.raises(ValueError, match=r"negatives: expected one of 'random', 'violating', 'hardest', 'semihard', got"):
        madda_rs.triplets(LABELS, seed=0, negatives=mode)


@pytest.mark.parametrize("seed", [-1, 2**64, -(2**70)])
def test_triplets_seed_out_of_range_raises_naming_seed(seed):
    with pytest.raises((TypeError, ValueError), match=rf"seed: expected None or an integer in \[0, 2\*\*64\), got {seed}"):
        madda_rs.triplets(LABELS, seed=seed)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_triplets_seed_out_of_range_is_value_error(seed):
    with pytest.raises(ValueError, match=r"seed"):
        madda_rs.triplets(LABELS, seed=seed)


@pytest.mark.parametrize("seed", [1.5, 1.0, "1", True, [1]])
def test_triplets_seed_not_an_integer(seed):
    with pytest.raises(TypeError, match=r"seed: expected None or an integer"):
        madda_rs.triplets(LABELS, seed=seed)


def test_triplets_seed_extremes_accepted():
    for seed in (0, 2**64 - 1, np.uint64(2**64 - 1), np.int8(3)):
        out = madda_rs.triplets(LABELS, seed=seed)
        assert out.shape == (2, 3)


@pytest.mark.parametrize("mode", ["random", "violating", "hardest", "semihard"])
@pytest.mark.parametrize("margin", [np.nan, np.inf, -np.inf])
def test_triplets_margin_not_finite(mode, margin):
    kw = {} if mode == "random" else dict(sq_dists=SQ)
    with pytest.raises(ValueError, match=r"margin: expected a finite number, got"):
        madda_rs.triplets(LABELS, seed=0, negatives=mode, margin=margin, **kw)


@pytest.mark.parametrize("margin", ["1", None, True, [1.0], 1j])
def test_triplets_margin_not_a_number(margin):
    with pytest.raises(TypeError, match=r"margin: expected a real number, got"):
        madda_rs.triplets(LABELS, seed=0, negatives="violating", sq_dists=SQ, margin=margin)


@pytest.mark.parametrize("threads", [0, -1])
def test_triplets_threads_below_one(threads):
    with pytest.raises(ValueError, match=r"threads: expected an integer >= 1"):
        madda_rs.triplets(LABELS, seed=0, threads=threads)


def test_triplets_threads_not_an_integer():
    with pytest.raises(TypeError, match=r"threads: expected an integer, got float"):
        madda_rs.triplets(LABELS, seed=0, threads=2.0)


@given(
    labels=st.lists(st.integers(-3, 3), max_size=8),
    mode=st.sampled_from(["random", "violating", "hardest", "semihard", "bogus"]),
    sq_shape=st.sampled_from([None, "square", (2, 2), (3,)]),
    poison=st.sampled_from([None, np.nan, np.inf]),
    margin=st.sampled_from([1.0, 0.0, -1.0, np.nan, 1e308]),
    seed=st.integers(-2, 2**64),
)
def test_triplets_never_panic(labels, mode, sq_shape, poison, margin, seed):
    y = np.array(labels, dtype=np.int64)
    sq = None
    if sq_shape is not None:
        sq = np.ones((len(y), len(y)) if sq_shape == "square" else sq_shape)
        if poison is not None and sq.size:
            sq.flat[0] = poison
    try:
        out = madda_rs.triplets(y, seed=seed, negatives=mode, sq_dists=sq, margin=margin)
    except (TypeError, ValueError) as e:
        assert any(name in str(e) for name in ("labels", "sq_dists", "negatives", "seed", "margin")), str(e)
    else:
        assert out.dtype == np.int64 and out.ndim == 2 and out.shape[1] == 3


# ----------------------------------------------------------------------------------------------
# Kernels and tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [madda_rs._core.knn_search, madda_rs._core.knn_predict])
def test_unknown_kernel(fn):
    args = (SRC, TGT) if fn is madda_rs._core.knn_search else (SRC, Y.astype(np.int64), TGT)
    with pytest.raises(ValueError, match=r"kernel: expected one of 'amx-bf16', 'avx512-bf16', 'avx512', 'avx2', "
                                         r"'portable', got \"sse2\""):
        fn(*args, 2, None, "sse2")


def test_kernel_this_cpu_lacks():
    missing = [k for k in ("amx-bf16", "avx512-bf16", "avx512", "avx2") if k not in madda_rs._core.knn_kernels()]
    if not missing:
        pytest.skip("this CPU runs every kernel")
    with pytest.raises(ValueError, match=rf"kernel: this CPU cannot run the \"{missing[0]}\" kernel"):
        madda_rs._core.knn_search(SRC, TGT, 2, None, missing[0])


@BOTH
def test_unknown_kernel_in_environment(fn, monkeypatch):
    monkeypatch.setenv("MADDA_KNN_KERNEL", "fastest")
    with pytest.raises(ValueError, match=r"MADDA_KNN_KERNEL: expected one of 'amx-bf16', 'avx512-bf16', 'avx512', "
                                         r"'avx2', 'portable'"):
        call(fn)
    with pytest.raises(ValueError, match=r"MADDA_KNN_KERNEL"):
        madda_rs.knn_kernel()


class _Device:
    def __init__(self, name):
        self.type = name.split(":")[0]
        self.name = name

    def __str__(self):
        return self.name


# Stands in for a CUDA tensor on machines without a GPU: recognised by its type's name and module.
FakeCudaTensor = type("Tensor", (), {"__module__": "torch", "device": _Device("cuda:0")})


@BOTH
@pytest.mark.parametrize("arg", ["src", "tgt"])
def test_cuda_tensor_says_call_cpu(fn, arg):
    name = {"src": "src_emb", "tgt": "tgt_emb"}[arg]
    with pytest.raises(TypeError, match=rf"{name}: expected a NumPy array or a CPU tensor, got a tensor on cuda:0; .*\.cpu\(\)"):
        call(fn, **{arg: FakeCudaTensor()})


def test_cuda_tensor_labels_and_sq_dists_say_call_cpu():
    with pytest.raises(TypeError, match=r"src_y: .*got a tensor on cuda:0; .*\.cpu\(\)"):
        predict(y=FakeCudaTensor())
    with pytest.raises(TypeError, match=r"labels: .*got a tensor on cuda:0; .*\.cpu\(\)"):
        madda_rs.triplets(FakeCudaTensor(), seed=0)
    with pytest.raises(TypeError, match=r"sq_dists: .*got a tensor on cuda:0; .*\.cpu\(\)"):
        madda_rs.triplets(LABELS, seed=0, negatives="violating", sq_dists=FakeCudaTensor())


def test_real_cuda_tensor_says_call_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(TypeError, match=r"src_emb: .*got a tensor on cuda:0; .*\.cpu\(\)"):
        search(src=torch.from_numpy(SRC).cuda())


def test_tensors_numpy_cannot_view():
    torch = pytest.importorskip("torch")
    src = torch.from_numpy(SRC)
    with pytest.raises(TypeError, match=r"src_emb: expected a NumPy array or a CPU tensor, got a tensor on meta"):
        search(src=src.to("meta"))
    with pytest.raises(TypeError, match=r"src_emb: expected a dense tensor, got layout torch.sparse_coo"):
        search(src=src.to_sparse())
    with pytest.raises(TypeError, match=r"src_emb: expected a tensor NumPy can view, got dtype torch.float8_e4m3fn"):
        search(src=src.to(torch.float8_e4m3fn))
    with pytest.raises(TypeError, match=r"src_emb: expected a numeric .* got dtype bool"):
        search(src=src > 0)
    with pytest.raises(TypeError, match=r"src_y: expected an integer array, got dtype float32"):
        predict(y=torch.from_numpy(Y).float())
    with pytest.raises(TypeError, match=r"src_emb: expected a numeric .* got dtype complex64"):
        search(src=torch.from_numpy(SRC).to(torch.complex64).conj())


@BOTH
def test_float64_beyond_float32_range(fn):
    src = SRC.astype(np.float64)
    src[2, 1] = 1e300
    with pytest.raises(ValueError, match=r"src_emb: expected values that fit in float32, got 1e\+300 at row 2, column 1"):
        call(fn, src=src)


def test_triplets_margin_too_large_for_a_float():
    with pytest.raises(ValueError, match=r"margin: expected a finite number, got an integer of 1329 bits"):
        madda_rs.triplets(LABELS, seed=0, margin=10**400)
