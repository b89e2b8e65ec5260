"""Bad input gets a clear ``ValueError``/``TypeError`` naming the shapes or values, never a crash
(numba does not bounds-check: ``loopnet.ops`` validates everything before a kernel runs).

Also: what is converted rather than rejected (ints, lists, other dtypes, non-contiguous
arrays), how NaN and inf propagate (as the numpy twin does), softmax of huge finite values, and
unknown device names.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import loopnet
from helpers import assert_within, log_rtol, softmax_rtol
from loopnet import ops
from loopnet.activations import ReLU, Softmax
from loopnet.layers import Dense
from loopnet.losses import CategoricalCrossentropy

X = np.ones((3, 4))
W = np.ones((4, 3))
B = np.zeros(3)
P = np.full((2, 3), 1 / 3)           # y_pred: 2 samples, 3 classes


def _ce(y_pred=P, y_true=(0, 1)):
    return lambda device: ops.categorical_crossentropy(y_pred, y_true, device=device)


def _acc(y_pred=P, y_true=(0, 1)):
    return lambda device: ops.accuracy(y_pred, y_true, device=device)


def _dense(inputs=X, weights=W, biases=B):
    return lambda device: ops.dense_forward(inputs, weights, biases, device=device)


def _relu(inputs):
    return lambda device: ops.relu_forward(inputs, device=device)


def _softmax(inputs):
    return lambda device: ops.softmax_forward(inputs, device=device)


# (id, call(device), exception type, regex the message must match)
BAD_INPUTS = [
    # --- dense_forward: shapes
    ("dense-misaligned", _dense(X, np.ones((3, 4))), ValueError,
     re.escape("shapes (3, 4) and (3, 4) not aligned: 4 (dim 1) != 3 (dim 0)")),
    ("dense-misaligned-1d", _dense(np.ones(4), np.ones(3), 0), ValueError,
     re.escape("shapes (4,) and (3,) not aligned: 4 (dim 0) != 3 (dim 0)")),
    ("dense-misaligned-sample", _dense(np.ones(4), np.ones((3, 4))), ValueError,
     re.escape("shapes (4,) and (3, 4) not aligned: 4 (dim 0) != 3 (dim 0)")),
    ("dense-inputs-3d", _dense(np.ones((2, 3, 4))), ValueError,
     r"inputs must be 1-D .* or 2-D .*got a 3-D array of shape \(2, 3, 4\)"),
    ("dense-inputs-0d", _dense(np.float64(1.0)), ValueError, r"inputs .* 0-D array of shape \(\)"),
    ("dense-weights-3d", _dense(X, np.ones((4, 3, 1))), ValueError,
     r"weights .* 3-D array of shape \(4, 3, 1\)"),
    ("dense-biases-length", _dense(X, W, np.zeros(4)), ValueError,
     r"biases must have shape \(3,\) or \(1, 3\).*got shape \(4,\)"),
    ("dense-biases-2d", _dense(X, W, np.zeros((3, 3))), ValueError,
     r"biases must have shape \(3,\) or \(1, 3\).*got shape \(3, 3\)"),
    ("dense-biases-3d", _dense(X, W, np.zeros((1, 1, 3))), ValueError,
     r"biases .*got shape \(1, 1, 3\)"),
    ("dense-bias-for-one-neuron", _dense(X, np.ones(4), [1, 2]), ValueError,
     r"biases must have shape \(1,\) or \(1, 1\).*got shape \(2,\)"),
    # --- dense_forward: data
    ("dense-ragged-inputs", _dense([[1, 2, 3, 4], [1, 2]]), ValueError, r"inputs is ragged"),
    ("dense-ragged-weights", _dense(X, [[1, 2, 3], [1, 2]]), ValueError, r"weights is ragged"),
    ("dense-string-inputs", _dense([["a", "b", "c", "d"]]), TypeError,
     r"inputs must hold real numbers, got dtype <U1"),
    ("dense-none-inputs", _dense(None), TypeError, r"inputs must hold numbers"),
    ("dense-none-in-list", _dense([[1, 2, None, 4]]), TypeError, r"inputs must hold numbers"),
    ("dense-complex-weights", _dense(X, W + 1j), TypeError,
     r"weights must hold real numbers, got dtype complex128"),
    ("dense-string-biases", _dense(X, W, "0"), TypeError, r"biases must hold real numbers"),
    ("dense-none-biases", _dense(X, W, None), TypeError, r"biases must hold numbers"),
    # --- dense_forward: empty
    ("dense-empty-batch", _dense(np.ones((0, 4))), ValueError,
     r"inputs is empty \(shape \(0, 4\)\)"),
    ("dense-no-inputs", _dense(np.ones((3, 0)), np.ones((0, 3))), ValueError,
     r"inputs is empty \(shape \(3, 0\)\)"),
    ("dense-no-neurons", _dense(X, np.ones((4, 0)), np.zeros(0)), ValueError,
     r"weights is empty \(shape \(4, 0\)\)"),
    # --- relu_forward
    ("relu-ragged", _relu([[1.0, 2.0], [3.0]]), ValueError, r"inputs is ragged"),
    ("relu-string", _relu(["1.0"]), TypeError, r"inputs must hold real numbers, got dtype <U3"),
    ("relu-none", _relu(None), TypeError, r"inputs must hold numbers"),
    ("relu-huge-int", _relu([1, 10**30]), TypeError,
     r"inputs must hold numbers only, got the integer 10{30} at index \(1,\), too large .*1e\+30"),
    ("relu-none-inside", _relu([[1.0, None]]), TypeError,
     r"inputs must hold numbers only, got NoneType None at index \(0, 1\)"),
    ("relu-complex", _relu([1 + 2j]), TypeError, r"inputs must hold real numbers, got dtype complex"),
    ("relu-empty", _relu([]), ValueError, r"inputs is empty \(shape \(0,\)\)"),
    ("relu-empty-rows", _relu(np.ones((2, 0))), ValueError, r"inputs is empty \(shape \(2, 0\)\)"),
    # --- softmax_forward
    ("softmax-0d", _softmax(1.0), ValueError, r"inputs must be 1-D .*0-D array of shape \(\)"),
    ("softmax-3d", _softmax(np.ones((2, 2, 2))), ValueError, r"3-D array of shape \(2, 2, 2\)"),
    ("softmax-empty-batch", _softmax(np.ones((0, 3))), ValueError, r"empty \(shape \(0, 3\)\)"),
    ("softmax-no-classes", _softmax(np.ones((3, 0))), ValueError, r"empty \(shape \(3, 0\)\)"),
    ("softmax-ragged", _softmax([[1, 2], [3]]), ValueError, r"inputs is ragged"),
    ("softmax-string", _softmax([["x", "y"]]), TypeError, r"inputs must hold real numbers"),
    ("softmax-complex", _softmax([[1j, 2]]), TypeError, r"complex128"),
    # --- categorical_crossentropy: y_pred
    ("ce-y_pred-1d", _ce(np.full(3, 1 / 3), [0]), ValueError,
     r"y_pred must be 2-D .*1-D array of shape \(3,\)"),
    ("ce-y_pred-3d", _ce(np.ones((2, 3, 1)), [0, 1]), ValueError, r"y_pred .*shape \(2, 3, 1\)"),
    ("ce-y_pred-empty", _ce(np.ones((0, 3)), []), ValueError, r"y_pred is empty \(shape \(0, 3\)\)"),
    ("ce-y_pred-string", _ce([["a", "b"]], [0]), TypeError, r"y_pred must hold real numbers"),
    ("ce-y_pred-ragged", _ce([[0.5, 0.5], [1.0]], [0, 0]), ValueError, r"y_pred is ragged"),
    # --- categorical_crossentropy: class indices
    ("ce-label-negative", _ce(P, [0, -1]), ValueError,
     r"negative class index -1 at position 1.*\[0, 3\)"),
    ("ce-label-too-large", _ce(P, [3, 0]), ValueError,
     r"class index 3 at position 0, but y_pred has only 3 classes"),
    ("ce-label-huge-uint", _ce(P, np.array([0, 2**63], dtype=np.uint64)), ValueError,
     r"at position 1, but y_pred has only 3 classes"),
    ("ce-label-fraction", _ce(P, [0, 1.5]), ValueError,
     r"integer class indices, got 1\.5 at position 1"),
    ("ce-label-nan", _ce(P, [np.nan, 1]), ValueError, r"integer class indices, got nan at position 0"),
    ("ce-label-inf", _ce(P, [0, np.inf]), ValueError, r"integer class indices, got inf at position 1"),
    ("ce-label-bool", _ce(P, [True, False]), TypeError, r"y_true .*bool"),
    ("ce-label-string", _ce(P, ["0", "1"]), TypeError, r"y_true must hold real numbers"),
    ("ce-label-none", _ce(P, None), TypeError, r"y_true must hold numbers"),
    ("ce-label-complex", _ce(P, [0j, 1]), TypeError, r"y_true must hold real numbers"),
    ("ce-label-too-few", _ce(P, [0]), ValueError, r"y_true has 1 labels but y_pred has 2 samples"),
    ("ce-label-too-many", _ce(P, [0, 1, 2]), ValueError,
     r"y_true has 3 labels but y_pred has 2 samples"),
    ("ce-label-scalar", _ce(P, 1), ValueError, r"y_true must be class indices .*got shape \(\)"),
    ("ce-label-3d", _ce(P, np.zeros((2, 3, 1))), ValueError, r"got shape \(2, 3, 1\)"),
    # --- categorical_crossentropy: one-hot
    ("ce-onehot-shape", _ce(P, np.eye(2)), ValueError,
     r"one-hot y_true has shape \(2, 2\) but y_pred has shape \(2, 3\)"),
    ("ce-onehot-rows", _ce(P, np.eye(3)), ValueError,
     r"one-hot y_true has shape \(3, 3\) but y_pred has shape \(2, 3\)"),
    ("ce-onehot-two-ones", _ce(P, [[1, 1, 0], [0, 1, 0]]), ValueError,
     r"y_true row 0 is not one-hot: \[1, 1, 0\]"),
    ("ce-onehot-no-one", _ce(P, [[1, 0, 0], [0, 0, 0]]), ValueError,
     r"y_true row 1 is not one-hot: \[0, 0, 0\]"),
    ("ce-onehot-soft", _ce(P, [[0.5, 0.5, 0], [0, 1, 0]]), ValueError,
     r"y_true row 0 is not one-hot: \[0\.5, 0\.5, 0\.0\]"),
    ("ce-onehot-two", _ce(P, [[2, 0, 0], [0, 1, 0]]), ValueError, r"row 0 is not one-hot: \[2, 0, 0\]"),
    ("ce-onehot-nan", _ce(P, [[np.nan, 1, 0], [0, 1, 0]]), ValueError, r"row 0 is not one-hot"),
    # --- accuracy: the same label checks
    ("acc-y_pred-1d", _acc(np.full(3, 1 / 3), [0]), ValueError, r"y_pred must be 2-D"),
    ("acc-y_pred-empty", _acc(np.ones((0, 3)), []), ValueError, r"y_pred is empty"),
    ("acc-label-negative", _acc(P, [-1, 0]), ValueError, r"negative class index -1 at position 0"),
    ("acc-label-too-large", _acc(P, [0, 7]), ValueError,
     r"class index 7 at position 1, but y_pred has only 3 classes"),
    ("acc-label-fraction", _acc(P, [0.5, 1]), ValueError, r"integer class indices, got 0\.5"),
    ("acc-label-length", _acc(P, [0, 1, 1]), ValueError, r"3 labels but y_pred has 2 samples"),
    ("acc-label-bool", _acc(P, [True, False]), TypeError, r"y_true .*bool"),
    ("acc-onehot-shape", _acc(P, np.eye(3)), ValueError, r"one-hot y_true has shape \(3, 3\)"),
    ("acc-onehot-invalid", _acc(P, [[0, 0, 0], [0, 1, 0]]), ValueError, r"row 0 is not one-hot"),
    # --- mean
    ("mean-empty", lambda device: ops.mean([], device=device), ValueError,
     r"values is empty \(shape \(0,\)\)"),
    ("mean-string", lambda device: ops.mean(["1"], device=device), TypeError,
     r"values must hold real numbers"),
    # --- the classes
    ("Dense-misaligned", lambda device: Dense(4, 3, device=device).forward(np.ones((2, 5))),
     ValueError, re.escape("shapes (2, 5) and (4, 3) not aligned: 5 (dim 1) != 4 (dim 0)")),
    ("Dense-ragged", lambda device: Dense(2, 3, device=device).forward([[1, 2], [3]]),
     ValueError, r"inputs is ragged"),
    ("Dense-string", lambda device: Dense(2, 3, device=device).forward([["1", "2"]]),
     TypeError, r"inputs must hold real numbers"),
    ("Dense-empty", lambda device: Dense(2, 3, device=device).forward(np.ones((0, 2))),
     ValueError, r"inputs is empty \(shape \(0, 2\)\)"),
    ("Dense-zero-neurons", lambda device: Dense(2, 0, device=device), ValueError,
     r"n_neurons must be a positive integer, got 0"),
    ("Dense-float-inputs", lambda device: Dense(2.5, 3, device=device), TypeError,
     r"n_inputs must be a positive integer, got 2\.5"),
    ("Dense-bool-inputs", lambda device: Dense(True, 3, device=device), TypeError,
     r"n_inputs must be a positive integer, got True"),
    ("Dense-int-dtype", lambda device: Dense(2, 3, dtype=np.int32, device=device), ValueError,
     r"dtype must be float32 or float64, got int32"),
    ("Dense-bad-seed", lambda device: Dense(2, 3, seed="zero", device=device), TypeError,
     r"seed must be .*got 'zero'"),
    ("ReLU-complex", lambda device: ReLU(device=device).forward([1j]), TypeError, r"complex"),
    ("Softmax-3d", lambda device: Softmax(device=device).forward(np.ones((1, 1, 2))), ValueError,
     r"3-D array of shape \(1, 1, 2\)"),
    ("Loss-label", lambda device: CategoricalCrossentropy(device=device).calculate(P, [0, 3]),
     ValueError, r"class index 3 at position 1"),
    ("spiral-zero-samples", lambda device: loopnet.datasets.spiral_data(0, 3), ValueError,
     r"samples must be a positive integer, got 0"),
    ("spiral-float-classes", lambda device: loopnet.datasets.spiral_data(10, 2.0), TypeError,
     r"classes must be a positive integer, got 2\.0"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_clear_message(device, call, error, message):
    with pytest.raises(error, match=message):
        call(device)


# --- Unknown device names -------------------------------------------------------------------------

VALID_LISTED = r"valid devices are 'cpu', 'numpy', 'python', 'cuda'"


@pytest.mark.parametrize("name", ["gpu", "CPU0", "cuda:", "cuda:-1", "cuda:x", "numpy:0", ""])
def test_unknown_device_lists_the_valid_ones(name):
    """Every way of naming a device rejects an unknown one with ``ValueError``."""
    with pytest.raises(ValueError, match=VALID_LISTED):
        loopnet.set_device(name)
    with pytest.raises(ValueError, match=VALID_LISTED):
        with loopnet.device(name):
            pass                                               # pragma: no cover
    with pytest.raises(ValueError, match=VALID_LISTED):
        ops.relu_forward([1.0], device=name)
    for layer in (lambda: Dense(2, 2, device=name), lambda: ReLU(device=name),
                  lambda: CategoricalCrossentropy(device=name)):
        with pytest.raises(ValueError, match=VALID_LISTED):
            layer()


def test_unknown_device_in_the_environment(monkeypatch):
    monkeypatch.setattr(loopnet.devices, "_default", None)
    monkeypatch.setenv("LOOPNET_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"LOOPNET_DEVICE='tpu'.*" + VALID_LISTED):
        ops.relu_forward([1.0])


@pytest.mark.parametrize("name", [0, None, ["cpu"]])
def test_device_name_must_be_a_string(name):
    with pytest.raises(TypeError, match=r"device must be a string"):
        loopnet.set_device(name)


# --- What is converted rather than rejected ------------------------------------------------------

def test_ints_and_lists_are_converted(device):
    """Python lists and integer arrays become float64; the result matches the float array's."""
    x = [[1, 2], [3, 4]]
    w = [[1, -1], [2, 0]]
    as_lists = np.asarray(ops.to_numpy(ops.dense_forward(x, w, [1, 2], device=device)))
    as_floats = np.asarray(ops.to_numpy(ops.dense_forward(
        np.array(x, float), np.array(w, float), np.array([1.0, 2.0]), device=device)))
    assert as_lists.dtype == np.float64
    assert np.array_equal(as_lists, as_floats)
    assert np.array_equal(as_lists, [[6.0, 1.0], [12.0, -1.0]])     # small ints: exact
    relu = np.asarray(ops.to_numpy(ops.relu_forward(np.array([-2, 3], np.int64), device=device)))
    assert relu.dtype == np.float64 and relu.tolist() == [0.0, 3.0]
    probs = np.asarray(ops.to_numpy(ops.softmax_forward([[0, 0]], device=device)))
    assert probs.tolist() == [[0.5, 0.5]]
    # float labels holding whole numbers are accepted as class indices; any int dtype too
    for labels in ([0.0, 2.0], np.array([0, 2], np.uint8), np.array([0, 2], np.int16)):
        losses = np.asarray(ops.to_numpy(ops.categorical_crossentropy(
            [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]], labels, device=device)))
        assert np.allclose(losses, [np.log(2), np.log(4)], rtol=8 * np.finfo(float).eps)


@pytest.mark.parametrize("dtypes, expected", [
    ((np.float32, np.float32, np.float32), np.float32),
    ((np.float64, np.float64, np.float64), np.float64),
    ((np.float32, np.float64, np.float32), np.float64),    # mixed -> the wider one, as numpy
    ((np.float16, np.float16, np.float16), np.float32),    # no float16 kernels: widened
    ((np.int8, np.float32, np.float32), np.float32),       # small ints fit in float32
    ((np.int64, np.int64, np.int64), np.float64),
])
def test_dtype_of_the_result(device, dtypes, expected):
    x = np.ones((2, 3), dtypes[0])
    w = np.ones((3, 2), dtypes[1])
    b = np.ones(2, dtypes[2])
    output = np.asarray(ops.to_numpy(ops.dense_forward(x, w, b, device=device)))
    assert output.dtype == expected
    assert np.array_equal(output, np.full((2, 2), 4.0))


def _strided(a):
    """``a`` as a non-contiguous view holding the same values (every other element of a
    twice-as-large array, reversed twice)."""
    big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    big[::2] = a[::-1]
    view = big[-2::-2]
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


def _transposed(a):
    view = np.ascontiguousarray(a.T).T
    assert a.ndim < 2 or not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("layout", [_strided, _transposed, np.asfortranarray],
                         ids=["strided", "transposed", "fortran"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs_give_the_same_bits(device, layout, dtype):
    """Every op gives the same result for a non-contiguous view as for a contiguous copy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(dtype)
    w = rng.standard_normal((4, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    probs = rng.uniform(size=(5, 3)).astype(dtype)
    labels = np.array([0, 2, 1, 1, 0])
    one_hot = np.eye(3, dtype=dtype)[labels]

    def run(x, w, b, probs, labels, one_hot):
        return [np.asarray(ops.to_numpy(r)) for r in (
            ops.dense_forward(x, w, b, device=device),
            ops.dense_forward(x[0], w[:, 0], b[:1], device=device),
            ops.relu_forward(x, device=device),
            ops.softmax_forward(x, device=device),
            ops.categorical_crossentropy(probs, labels, device=device),
            ops.categorical_crossentropy(probs, one_hot, device=device),
            np.float64(ops.accuracy(probs, labels, device=device)),
            np.float64(ops.mean(x[:, 0], device=device)),
        )]

    contiguous = run(x, w, b, probs, labels, one_hot)
    views = run(*(layout(a) for a in (x, w, b, probs, labels, one_hot)))
    for a, v in zip(contiguous, views):
        assert a.dtype == v.dtype and a.tobytes() == v.tobytes()


def test_big_endian_and_readonly_arrays(device):
    x = np.arange(6, dtype=">f8").reshape(2, 3)
    x.flags.writeable = False
    w = np.ones((3, 2), dtype=">f4")
    output = np.asarray(ops.to_numpy(ops.dense_forward(x, w, np.zeros(2, ">f8"), device=device)))
    assert np.array_equal(output, [[3.0, 3.0], [12.0, 12.0]])
    labels = np.array([1, 0], dtype=">i8")
    assert ops.accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), labels, device=device) == 1.0


# --- NaN and inf propagate as the numpy twin's do --------------------------------------------------

SPECIALS = np.array([[np.nan, 1.0, -2.0, 0.5],
                     [np.inf, -1.0, 2.0, 0.0],
                     [-np.inf, 3.0, 1.0, -1.0],
                     [0.0, -0.0, 2.0, 1.0],
                     [np.inf, -np.inf, 1.0, 0.0],
                     [1e300, 1.0, -1e300, 0.0]])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")        # numpy warns on inf - inf
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_like_the_twin(device, dtype):
    from loopnet.backends import numpy as twins

    x = SPECIALS.astype(dtype)
    w = np.array([[1.0, 0.0], [2.0, 1.0], [0.5, -1.0], [0.0, 1.0]], dtype)
    b = np.array([0.5, -0.5], dtype)
    with np.errstate(all="ignore"):
        expected = np.empty((6, 2), dtype)
        twins.dense_forward(x, w, b, expected)
        np.testing.assert_array_equal(
            np.asarray(ops.to_numpy(ops.dense_forward(x, w, b, device=device))), expected)

        expected = np.empty(x.size, dtype)
        twins.relu_forward(x.reshape(-1), expected)
        relu = np.asarray(ops.to_numpy(ops.relu_forward(x, device=device)))
        np.testing.assert_array_equal(relu, expected.reshape(x.shape))   # -0.0 == 0.0 allowed
        assert np.isnan(relu[0, 0])                                      # NaN is not "<= 0"

        expected = np.empty_like(x)
        twins.softmax_forward(x, expected)
        softmax = np.asarray(ops.to_numpy(ops.softmax_forward(x, device=device)))
        np.testing.assert_array_equal(np.isnan(softmax), np.isnan(expected))
        assert_within(softmax, expected, softmax_rtol(4, dtype) * np.abs(expected), "softmax")

        probs = np.array([[np.nan, 0.5], [np.inf, 0.0], [-np.inf, 1.0], [0.3, np.nan]], dtype)
        labels = np.array([0, 0, 0, 0])
        expected = np.empty(4, dtype)
        twins.categorical_crossentropy(probs, labels, expected)
        losses = np.asarray(ops.to_numpy(ops.categorical_crossentropy(probs, labels, device=device)))
        assert_within(losses, expected, log_rtol(dtype) * np.abs(expected), "from indices")
        one_hot = np.eye(2, dtype=dtype)[labels]
        twins.categorical_crossentropy_onehot(probs, one_hot, expected)
        losses = np.asarray(ops.to_numpy(ops.categorical_crossentropy(probs, one_hot, device=device)))
        assert_within(losses, expected, log_rtol(dtype) * np.abs(expected), "from one-hot")

        expected = np.empty(4, dtype)
        for labels in ([0, 0, 0, 0], [1, 1, 1, 1]):           # argmax: a NaN counts as maximal
            twins.accuracy(probs, np.array(labels), expected)
            assert ops.accuracy(probs, labels, device=device) == expected.mean()


@pytest.mark.parametrize("row, dtype, expected", [
    ([1e4, 0.0, -1e4], np.float32, [1.0, 0.0, 0.0]),
    ([1e4, 1e4], np.float32, [0.5, 0.5]),
    ([-1e4, -1e4, -1e4, -1e4], np.float64, [0.25] * 4),
    ([3e38, 0.0, -3e38], np.float32, [1.0, 0.0, 0.0]),       # -3e38 - 3e38 overflows to -inf: exp -> 0
    ([3e38, 3e38, -3e38], np.float32, [0.5, 0.5, 0.0]),
    ([1.7e308, -1.7e308], np.float64, [1.0, 0.0]),
])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")        # the overflowing subtraction
def test_softmax_of_huge_finite_values_does_not_overflow(device, row, dtype, expected):
    """Max-subtraction keeps every exponent <= 0: no inf / inf = NaN for large finite scores."""
    probs = np.asarray(ops.to_numpy(ops.softmax_forward(np.array([row], dtype), device=device)))
    assert np.all(np.isfinite(probs))
    assert probs.dtype == dtype
    np.testing.assert_array_equal(probs[0], np.array(expected, dtype))


# --- The fast paths hand back what the checked paths do ------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_penalty_fast_paths_match_the_checked_paths(device, dtype):
    """Contiguous arrays of the working dtype take the ops' fast paths; the same values as
    strided views (or targets of another dtype or shape) take the checked ones: same bits, and
    what the checked path refuses is still refused."""
    rng = np.random.default_rng(1)
    pred = rng.uniform(0.05, 0.95, (6, 2)).astype(dtype)
    targets = (rng.uniform(size=(6, 2)) > 0.5).astype(dtype)
    values = rng.standard_normal((3, 4)).astype(dtype)
    grads = rng.standard_normal((3, 4)).astype(dtype)

    def run(pred, targets, values, grads):
        out = [np.asarray(ops.to_numpy(r)) for r in (
            ops.binary_crossentropy(pred, targets, device=device),
            ops.binary_crossentropy_backward(pred, targets, device=device),
            ops.mean_squared_error(pred, targets, device=device),
            ops.mean_squared_error_backward(pred, targets, device=device),
            ops.mean_absolute_error(pred, targets, device=device),
            ops.mean_absolute_error_backward(pred, targets, device=device),
        )]
        out.append(np.float64(ops.regularization_loss(values, l1=1e-3, l2=5e-4, device=device)))
        # dvalues is updated in place, so contiguous on both paths: strided values take the
        # checked one
        updated = np.array(grads)
        ops.regularization_backward(values, updated, l1=1e-3, l2=5e-4, device=device)
        out.append(np.asarray(ops.to_numpy(updated)))
        return out

    fast = run(pred, targets, values, grads)
    checked = run(_strided(pred), _strided(targets), _strided(values), _strided(grads))
    for a, b in zip(fast, checked):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    # targets of another dtype (uint8 labels, as the book's spiral data) or one column as a
    # vector are converted, as the checked path converts them
    column = pred[:, :1].copy()
    labels = targets[:, 0].astype(np.uint8)
    reference = ops.binary_crossentropy_backward(column, labels.astype(dtype).reshape(-1, 1),
                                                 device=device)
    for given in (labels, labels.reshape(-1, 1), labels.astype(dtype)):
        result = ops.binary_crossentropy_backward(column, given, device=device)
        assert np.asarray(ops.to_numpy(result)).tobytes() == \
            np.asarray(ops.to_numpy(reference)).tobytes()
    with pytest.raises(ValueError, match=r"y_true has shape \(6, 1\) but y_pred has shape"):
        ops.mean_squared_error(pred, targets[:, :1], device=device)
    with pytest.raises(TypeError, match="y_true must hold"):
        ops.mean_squared_error(pred, targets.astype(object), device=device)
    with pytest.raises(ValueError, match=r"values has shape \(3, 4\) but dvalues has shape"):
        ops.regularization_backward(values, grads[:2].copy(), l2=1e-3, device=device)
    frozen = grads.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable C-contiguous"):
        ops.regularization_backward(values, frozen, l2=1e-3, device=device)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        ops.regularization_loss(values, l2=-1.0, device=device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_layers_penalty_on_its_direct_path_matches_the_checked_path(device, dtype):
    """``Loss.regularization_loss(layer)`` of a layer whose arrays the kernel takes as they
    are (its direct path) gives the bits of the same penalty over strided copies of them (the
    checked path, one ``regularization_loss`` per array), as a scalar of the weights' dtype;
    penalties of 0 add nothing (a layer without any gives a zero of its dtype), and a negative
    one is still refused."""
    import loopnet

    rng = np.random.default_rng(3)
    layer = loopnet.Dense(3, 5, weight_regularizer_l1=1e-3, weight_regularizer_l2=5e-4,
                          bias_regularizer_l1=2e-3, bias_regularizer_l2=1e-4, dtype=dtype,
                          device=device)
    weights = rng.standard_normal((3, 5)).astype(dtype)
    biases = rng.standard_normal((1, 5)).astype(dtype)
    layer.set_parameters(weights, biases)
    loss = loopnet.CategoricalCrossentropy()
    wide = np.zeros((1, 10), dtype)     # (a row: strided along its columns)
    wide[:, ::2] = biases
    assert not wide[:, ::2].flags.c_contiguous
    strided = SimpleNamespace(**{k: getattr(layer, k) for k in (
        "weight_regularizer_l1", "weight_regularizer_l2", "bias_regularizer_l1",
        "bias_regularizer_l2", "device")}, weights=_strided(weights), biases=wide[:, ::2])
    for l1, l2 in ((1e-3, 5e-4), (0.0, 5e-4), (0.0, 0.0)):
        layer.bias_regularizer_l1 = strided.bias_regularizer_l1 = l1
        layer.bias_regularizer_l2 = strided.bias_regularizer_l2 = l2
        direct = loss.regularization_loss(layer)
        checked = loss.regularization_loss(strided)
        assert type(direct) is np.dtype(dtype).type
        assert direct.tobytes() == np.dtype(dtype).type(checked).tobytes()
    for owner in (layer, strided):          # no penalty at all: a zero of the weights' dtype
        owner.weight_regularizer_l1 = owner.weight_regularizer_l2 = 0.0
        owner.bias_regularizer_l1 = owner.bias_regularizer_l2 = 0.0
    direct = loss.regularization_loss(layer)
    assert type(direct) is np.dtype(dtype).type
    assert direct.tobytes() == np.dtype(dtype).type(loss.regularization_loss(strided)).tobytes()
    assert direct == 0
    with pytest.raises(ValueError, match="bias_regularizer_l2 must be >= 0"):
        layer.bias_regularizer_l2 = -1.0             # refused when assigned
    # written past that check (into the instance's dict): the penalty's own check names it
    vars(layer).update(bias_regularizer_l1=1e-3, bias_regularizer_l2=-1.0)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        loss.regularization_loss(layer)


_LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                 np.uint64, np.dtype(">i4"), np.dtype(">u2")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_label_fast_paths_match_the_checked_paths(device, dtype):
    """Integer labels of every dtype and byte order (contiguous, strided, read-only) give the
    bits of the same labels as a list (the checked path), in the cross-entropy and its fused
    gradient with softmax; a label out of range is still refused with its position, whichever
    dtype carries it."""
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), size=8).astype(dtype)
    listed = [int(v) for v in rng.integers(0, 3, 8)]

    def run(labels):
        return [np.asarray(ops.to_numpy(r)).tobytes() for r in (
            ops.categorical_crossentropy(probs, labels, device=device),
            ops.softmax_crossentropy_backward(probs, labels, device=device),
            ops.categorical_crossentropy_backward(probs, labels, device=device))]

    reference = run(listed)
    for label_dtype in _LABEL_DTYPES:
        labels = np.array(listed, dtype=label_dtype)
        strided = np.repeat(labels, 2)[::2]
        frozen = labels.copy()
        frozen.flags.writeable = False
        for given in (labels, strided, frozen):
            assert run(given) == reference, (label_dtype, given.strides)
        for position, bad in ((5, 3), (0, np.iinfo(labels.dtype).max)):
            wrong = labels.copy()
            wrong[position] = bad
            for op in (ops.categorical_crossentropy, ops.softmax_crossentropy_backward):
                with pytest.raises(ValueError, match=rf"class index {bad} at position "
                                                     rf"{position}, but y_pred has only 3"):
                    op(probs, wrong, device=device)
        if np.dtype(label_dtype).kind == "i":
            wrong = labels.copy()
            wrong[7] = -1
            with pytest.raises(ValueError, match=r"negative class index -1 at position 7"):
                ops.categorical_crossentropy(probs, wrong, device=device)
