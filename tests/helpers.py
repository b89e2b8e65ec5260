"""Shared constants, tolerances and hypothesis strategies for the test suite.

Import them normally (``from helpers import MAX_SIDE, sum_tolerance``): pytest puts ``tests/``
on ``sys.path`` because the folder has no ``__init__.py``.

Environment variables read here:

- ``LOOPNET_TEST_DEVICES``   comma list of devices the ``device`` fixture runs every test on
  (default ``cpu,numpy,python``; the CUDA job sets ``cuda``).
- ``NUMBA_ENABLE_CUDASIM=1`` numba's CUDA simulator runs every GPU thread in Python, so the
  largest hypothesis dimension (``MAX_SIDE``) drops to 4 to keep the suite fast.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DEFAULT_TEST_DEVICES = ("cpu", "numpy", "python")
HOST_DEVICES = ("cpu", "numpy", "python")
CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"

# Largest side of any array hypothesis draws. 12 keeps the uncompiled `python` device quick
# (a 12x12x12 dense layer is 1728 interpreted multiply-adds) while still crossing numba's
# vector widths; the CUDA simulator is ~1000x slower per thread, hence 4.
MAX_SIDE = 4 if CUDASIM else 12


def devices_under_test() -> tuple[str, ...]:
    """The devices named by ``LOOPNET_TEST_DEVICES`` (comma list), default cpu, numpy, python."""
    raw = os.environ.get("LOOPNET_TEST_DEVICES", "")
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    return names or DEFAULT_TEST_DEVICES


TEST_DEVICES = devices_under_test()


# --- Tolerances -----------------------------------------------------------------------------------

def eps(dtype) -> float:
    """Machine epsilon of a float dtype (the gap between 1 and the next float)."""
    return float(np.finfo(dtype).eps)


def sum_tolerance(n_terms, magnitude, dtype):
    """How far two float computations of the same sum of ``n_terms`` terms may lie apart.

    ``magnitude`` is the sum of the terms' absolute values, ``sum_k |term_k|`` (a scalar or an
    array, element-wise); for K terms each at most M in size it is at most ``K * M``.

    Reasoning (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 4): adding K terms
    in ANY order makes K - 1 roundings, each off by at most half an ulp (eps/2) of a partial
    sum, and every partial sum is at most ``sum |term|``; so one computation is within
    ``(K - 1) * eps/2 * magnitude`` of the exact sum. Each product ``inputs * weights`` and each
    decimal literal (0.1, 2.385 ...) rounds once more (eps/2 relative): count it as one more
    term. Two computations (loops vs BLAS, which may order the sum differently or use FMA) can
    err in opposite directions: twice that. So ``|a - b| <= (K + 1) * eps * magnitude``; we
    allow 2x of it as margin, i.e. roughly the rule of thumb ``K * eps * M`` times a small
    constant. The absolute floor ``K * tiny`` covers products that underflow below the smallest
    normal number, where relative error bounds no longer hold.
    """
    n_terms = max(int(n_terms), 1)
    e = eps(dtype)
    tiny = float(np.finfo(dtype).tiny)
    return 2.0 * (n_terms + 1) * e * np.asarray(magnitude, dtype=np.float64) + n_terms * tiny


def dense_tolerance(inputs, weights, biases, dtype):
    """``sum_tolerance`` for ``inputs @ weights + biases``, element-wise.

    Each output element is a sum of ``n_inputs`` products plus the bias: ``n_inputs + 1`` terms
    whose absolute values sum to ``|inputs| @ |weights| + |biases|`` (computed in float64 so
    the bound itself cannot overflow or round away).
    """
    x = np.abs(np.asarray(inputs, dtype=np.float64))
    w = np.abs(np.asarray(weights, dtype=np.float64))
    b = np.abs(np.asarray(biases, dtype=np.float64))
    magnitude = np.dot(x, w) + b
    return sum_tolerance(x.shape[-1] + 1, magnitude, dtype)


def softmax_rtol(n_classes: int, dtype) -> float:
    """Relative tolerance between two softmax implementations on the same row.

    Both subtract the same row maximum (an exactly reproducible IEEE subtraction), so the
    exponents are identical; the ``exp`` functions of numpy (SIMD, documented below 4 ulp) and
    of LLVM/libm (below 1 ulp) then differ by at most ~5 ulp; the row sum of ``n_classes``
    positive terms adds at most ``n_classes * eps/2`` relative error and the division one more
    half ulp. Doubled because both sides err: ``2 * (n_classes + 8) * eps``.
    """
    return 2.0 * (n_classes + 8) * eps(dtype)


def log_rtol(dtype) -> float:
    """Relative tolerance between two ``log`` implementations on the same argument.

    numpy's SIMD float32 log is documented below 4 ulp, libm's below 1 ulp: 8 eps covers both.
    """
    return 8.0 * eps(dtype)


def assert_within(actual, expected, tolerance, what: str = "") -> None:
    """``|actual - expected| <= tolerance`` element-wise (NaN only where both are NaN)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ\n{actual}\n{expected}"
    with np.errstate(invalid="ignore"):
        diff = np.where(nan_a, 0.0, np.abs(actual - expected))
        same_inf = np.isinf(actual) & (actual == expected)
    diff = np.where(same_inf, 0.0, diff)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), diff.shape)
    tol = np.where(nan_a, 0.0, tol)            # a tolerance computed from a NaN is NaN too
    bad = ~(diff <= tol)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} element(s) differ beyond tolerance; worst "
        f"|diff| = {diff[bad].max():.3g} at tol {tol[bad][np.argmax(diff[bad])]:.3g}\n"
        f"actual:\n{actual}\nexpected:\n{expected}"
    )


def bits(array) -> bytes:
    """The exact bytes of an array (shape and dtype included), for bit-identity checks."""
    array = np.ascontiguousarray(array)
    return repr((array.shape, array.dtype.str)).encode() + array.tobytes()


def spiral_classifier(device=None, *, hidden=16, weight_l2=0.0, bias_l2=0.0, bias_l1=0.0,
                      dropout=None, lr=0.05, decay=0.0, seeds=(1, 2, 3)):
    """The tests' small model, finalized: Dense(2, hidden)-ReLU-[Dropout]-Dense(hidden, 3)-
    Softmax, categorical cross-entropy, Adam, categorical accuracy, all on ``device``.
    ``seeds``: the first Dense's, the Dropout's and the second Dense's."""
    import loopnet

    model = loopnet.Model()
    model.add(loopnet.Dense(2, hidden, weight_regularizer_l2=weight_l2,
                            bias_regularizer_l2=bias_l2, bias_regularizer_l1=bias_l1,
                            seed=seeds[0], device=device))
    model.add(loopnet.ReLU(device=device))
    if dropout:
        model.add(loopnet.Dropout(dropout, seed=seeds[1], device=device))
    model.add(loopnet.Dense(hidden, 3, seed=seeds[2], device=device))
    model.add(loopnet.Softmax(device=device))
    model.set(loss=loopnet.CategoricalCrossentropy(device=device),
              optimizer=loopnet.Adam(learning_rate=lr, decay=decay),
              accuracy=loopnet.CategoricalAccuracy(device=device))
    model.finalize()
    return model


# --- Hypothesis strategies ------------------------------------------------------------------------

float_dtypes = st.sampled_from([np.float32, np.float64])
sides = st.integers(1, MAX_SIDE)


def floats(dtype, bound: float) -> st.SearchStrategy:
    """Finite floats of ``dtype`` in ``[-bound, bound]`` (no subnormals: their relative error
    bounds do not hold, and numpy and numba may treat them differently)."""
    bound = float(np.dtype(dtype).type(bound))        # hypothesis wants it exact in the width
    return st.floats(-bound, bound, width=32 if np.dtype(dtype) == np.float32 else 64,
                     allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(dtype, shape, bound: float = 100.0, elements=None) -> st.SearchStrategy:
    """numpy arrays of ``dtype`` and ``shape`` with finite values in ``[-bound, bound]``."""
    return hnp.arrays(np.dtype(dtype), shape,
                      elements=floats(dtype, bound) if elements is None else elements)


def probabilities(dtype) -> st.SearchStrategy:
    """Values for ``y_pred``: anywhere in [0, 1], with the clip edges and exact ties likely."""
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.one_of(
        st.sampled_from([0.0, 1e-9, 1e-7, 0.25, 0.5, 1 - 1e-7, 1.0]),
        st.floats(0.0, 1.0, width=width, allow_subnormal=False),
    )
