"""Fuzzing the native API's boundary: whatever the arguments, a call returns a well-formed result
or raises ValueError or TypeError. Never a panic (pyo3's PanicException is a BaseException),
an OverflowError, a crash or a hang.

The short form runs with the suite's derandomized profile. The long form is a script:
``python tests/test_fuzz_boundary.py --minutes 30`` keeps drawing fresh examples, prints how many
it tried and how they ended; a call that takes longer than 60 s ends the run with every thread's
stack (a hang).
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import sys
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import madda_rs

DTYPES = [
    np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
    np.int64, np.uint64, np.bool_, np.complex64, np.dtype(">f4"), np.dtype(">i8"), np.dtype("<U2"),
    np.dtype("M8[s]"), np.dtype(object),
]  # fmt: skip

SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e-45, 1e-38, 1e-300, 3e38, 1e19, 1e300, 2.0**64]
SPECIAL_INTS = [0, 1, -1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**70)]

def _mostly(good, bad):
    """`good` nine times in ten."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


TRIED = {"accepted": 0, "ValueError": 0, "TypeError": 0}  # outcomes, for the long form's report


def _elements(dtype: np.dtype, extreme: bool):
    """Small values; with `extreme`, NaN, infinities, huge, tiny and subnormal ones as well."""
    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        small = st.floats(-10, 10, width=16)
        if not extreme:
            return small
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), small).filter(lambda v: not math.isfinite(v) or abs(v) <= top)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        small = st.integers(max(info.min, -8), min(info.max, 8))
        return st.one_of(small, st.just(info.max), st.just(info.min)) if extreme else small
    return None  # hypothesis' default for the dtype


@st.composite
def arrays(draw, ndim=None, rows=None, cols=None, max_side=6, kinds="fiu"):
    """Mostly well-typed arrays of the kinds the caller can use, sometimes any dtype at all."""
    usable = [d for d in DTYPES if np.dtype(d).kind in kinds]
    dtype = np.dtype(draw(st.sampled_from(DTYPES) if draw(st.integers(0, 9)) == 0 else st.sampled_from(usable)))
    ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 3])) if ndim is None else ndim
    shape = [draw(st.integers(0, max_side)) for _ in range(ndim)]
    if rows is not None and ndim:
        shape[0] = rows
    if cols is not None and ndim >= 2:
        shape[1] = cols
    extreme = draw(st.integers(0, 4)) == 0
    arr = draw(hnp.arrays(dtype, tuple(shape), elements=_elements(dtype, extreme)))
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed", "readonly"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        big = np.repeat(arr, 2, axis=-1)
        arr = big[..., ::2]
    elif layout == "reversed" and arr.ndim:
        arr = arr[::-1]
    elif layout == "readonly":
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


def _maybe_tensor(draw, arr):
    """Sometimes the same values as a torch tensor (when torch is installed and the dtype allows)."""
    torch = sys.modules.get("torch")
    if torch is None or not draw(st.booleans()) or arr.dtype.kind not in "fiub" or not arr.dtype.isnative:
        return arr
    if arr.dtype in (np.uint16, np.uint32, np.uint64):
        return arr
    t = torch.from_numpy(arr.copy())
    form = draw(_mostly(st.sampled_from(["plain", "grad", "bfloat16", "transposed"]), st.just("meta")))
    if form == "grad" and t.is_floating_point():
        t = t.clone().requires_grad_()
    elif form == "bfloat16" and t.is_floating_point():
        t = t.bfloat16()
    elif form == "transposed" and t.ndim == 2:
        t = t.T.contiguous().T
    elif form == "meta":
        t = t.to("meta")
    return t


def array_args(rows=None, ndim=None, cols=None, kinds="fiu"):
    @st.composite
    def strat(draw):
        kind = draw(st.sampled_from(["array"] * 16 + ["list", "scalar", "none", "string"]))
        if kind == "list":
            return draw(arrays(ndim=ndim, rows=rows, cols=cols, max_side=3, kinds=kinds)).tolist()
        if kind == "scalar":
            return draw(st.one_of(st.floats(), st.integers(-5, 5)))
        if kind == "none":
            return None
        if kind == "string":
            return "abc"
        return _maybe_tensor(draw, draw(arrays(ndim=ndim, rows=rows, cols=cols, kinds=kinds)))

    return strat()


ints_ish = _mostly(
    st.integers(1, 6),
    st.one_of(
        st.integers(-3, 12), st.sampled_from(SPECIAL_INTS), st.sampled_from([None, True, 1.0, 2.5, "3", np.int64(2)])
    ),
)
threads_ish = _mostly(st.sampled_from([None, 1, 2, 3]), ints_ish)
margins = _mostly(
    st.floats(-3, 3), st.one_of(st.floats(), st.sampled_from([2**70, 10**400, True, None, "1", np.float32(1.5)]))
)
modes = _mostly(
    st.sampled_from(["random", "violating", "hardest", "semihard"]), st.sampled_from(["Random", "", None, 3])
)
seeds_ish = _mostly(st.integers(0, 2**64 - 1), st.sampled_from([None, -1, 2**64, 1.5, True, "0"]))

ALLOWED = (ValueError, TypeError)


@st.composite
def calls(draw):
    fn = draw(st.sampled_from(["knn_search", "knn_predict", "triplets"]))
    if fn == "triplets":
        n = draw(st.integers(0, 40))
        labels = draw(array_args(rows=n, ndim=draw(_mostly(st.just(1), st.just(2))), kinds="iu"))
        kw = dict(seed=draw(seeds_ish), negatives=draw(modes), margin=draw(margins), threads=draw(threads_ish))
        if draw(st.booleans()):
            kw["sq_dists"] = draw(array_args(rows=n, cols=draw(_mostly(st.just(n), st.integers(0, 6))), ndim=2))
        return fn, (labels,), kw
    d = draw(_mostly(st.integers(1, 6), st.just(0)))
    src = draw(array_args(ndim=draw(_mostly(st.just(2), st.sampled_from([1, 3]))), cols=d))
    n_src = len(src) if hasattr(src, "__len__") and not isinstance(src, str) else 0
    tgt = draw(array_args(ndim=2, cols=draw(_mostly(st.just(d), st.integers(0, 6)))))
    k = draw(_mostly(st.integers(1, max(n_src, 1)), st.one_of(ints_ish, st.sampled_from([n_src + 1, 0]))))
    kw = dict(threads=draw(threads_ish))
    if fn == "knn_predict":
        y = draw(array_args(rows=draw(_mostly(st.just(n_src), st.integers(0, 6))), ndim=1, kinds="iu"))
        return fn, (src, y, tgt, k), kw
    return fn, (src, tgt, k), kw


def check_call(call) -> None:
    fn, args, kw = call
    faulthandler.dump_traceback_later(60, exit=True)  # a hang ends the run, printing every stack
    try:
        out = getattr(madda_rs, fn)(*args, **kw)
    except ALLOWED as e:
        TRIED[type(e).__name__ if type(e) in ALLOWED else "ValueError"] += 1
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    TRIED["accepted"] += 1
    # Accepted: the result must be well formed.
    if fn == "knn_search":
        dist, idx = out
        assert dist.dtype == np.float32 and idx.dtype == np.int64 and dist.shape == idx.shape and dist.ndim == 2
        assert (idx >= 0).all() and (dist >= 0).all()
    elif fn == "knn_predict":
        assert out.dtype == np.int64 and out.ndim == 1
    else:
        assert out.dtype == np.int64 and out.ndim == 2 and out.shape[1] == 3 and (out >= 0).all()


@given(calls())
@settings(suppress_health_check=list(HealthCheck))
def test_boundary_never_panics_or_raises_anything_else(call):
    check_call(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=2000, help="examples per hypothesis run")
    opts = parser.parse_args()
    try:
        import torch  # noqa: F401  (tensors join the fuzzed inputs)
    except ImportError:
        pass
    end = time.monotonic() + 60 * opts.minutes
    start, runs = time.monotonic(), 0
    test = settings(
        max_examples=opts.batch, derandomize=False, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )(given(calls())(check_call))
    while time.monotonic() < end:
        test()
        runs += 1
        print(f"{sum(TRIED.values())} examples {TRIED} in {runs} runs, {(time.monotonic() - start) / 60:.1f} min", flush=True)
    print(f"done: {sum(TRIED.values())} examples {TRIED}, {(time.monotonic() - start) / 60:.1f} min, no failure")


if __name__ == "__main__":
    main()
