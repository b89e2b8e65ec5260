"""Property tests (hypothesis): for random shapes (1-sized dims included) and values, every op on
every device equals its numpy twin within float tolerance, and each op has the mathematical
properties the notes claim for it.

Each device's result is compared with the numpy twin computed directly (the ``*_numpy`` kernel
on the same converted arrays); tolerances come from ``helpers`` with their reasoning there.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import (
    MAX_SIDE,
    arrays,
    assert_within,
    bits,
    dense_tolerance,
    eps,
    float_dtypes,
    floats,
    log_rtol,
    probabilities,
    sides,
    softmax_rtol,
    sum_tolerance,
)
from loopnet import ops
from loopnet.kernels import activations, dense, losses


def host(x) -> np.ndarray:
    return np.asarray(ops.to_numpy(x))


# --- Strategies -----------------------------------------------------------------------------------

@st.composite
def dense_cases(draw, bound=100.0):
    """``(inputs, weights, biases)`` of one dtype: (s, i), (i, n), (n,) or (1, n)."""
    dtype = draw(float_dtypes)
    n_samples, n_inputs, n_neurons = draw(sides), draw(sides), draw(sides)
    inputs = draw(arrays(dtype, (n_samples, n_inputs), bound))
    weights = draw(arrays(dtype, (n_inputs, n_neurons), bound))
    biases = draw(arrays(dtype, draw(st.sampled_from([(n_neurons,), (1, n_neurons)])), bound))
    return inputs, weights, biases


@st.composite
def matrices(draw, bound=100.0):
    dtype = draw(float_dtypes)
    return draw(arrays(dtype, (draw(sides), draw(sides)), bound))


@st.composite
def classification_cases(draw):
    """``(y_pred, class_targets)``: probabilities-like values in [0, 1], valid labels."""
    dtype = draw(float_dtypes)
    n_samples, n_classes = draw(sides), draw(sides)
    y_pred = draw(arrays(dtype, (n_samples, n_classes), elements=probabilities(dtype)))
    targets = draw(arrays(np.intp, (n_samples,), elements=st.integers(0, n_classes - 1)))
    return y_pred, targets


# --- Dense ----------------------------------------------------------------------------------------

@given(case=dense_cases())
def test_dense_equals_twin(device, case):
    inputs, weights, biases = case
    dtype = inputs.dtype
    output = host(ops.dense_forward(inputs, weights, biases, device=device))
    twin = np.empty((inputs.shape[0], weights.shape[1]), dtype)
    dense.dense_forward_numpy(inputs, weights, biases.reshape(-1), twin)
    assert output.dtype == dtype and output.shape == twin.shape
    assert_within(output, twin, dense_tolerance(inputs, weights, biases.reshape(-1), dtype), "dense")


@given(data=st.data(), one_sample=st.booleans(), one_neuron=st.booleans())
def test_dense_shapes_follow_np_dot(device, data, one_sample, one_neuron):
    """One sample (n_inputs,) and/or one neuron's weights (n_inputs,): the result has
    ``np.dot(inputs, weights)``'s shape (a scalar for one neuron and one sample)."""
    dtype = data.draw(float_dtypes)
    n_samples, n_inputs, n_neurons = data.draw(sides), data.draw(sides), data.draw(sides)
    inputs = data.draw(arrays(dtype, (n_inputs,) if one_sample else (n_samples, n_inputs)))
    weights = data.draw(arrays(dtype, (n_inputs,) if one_neuron else (n_inputs, n_neurons)))
    n_out = 1 if one_neuron else n_neurons
    bias_shape = data.draw(st.sampled_from([(n_out,), (1, n_out)] + ([()] if one_neuron else [])))
    biases = data.draw(arrays(dtype, bias_shape))
    output = host(ops.dense_forward(inputs, weights, biases, device=device))
    dot = np.dot(inputs, weights)
    expected = (dot + biases.reshape(-1)).reshape(dot.shape)
    assert output.shape == dot.shape
    tol = dense_tolerance(inputs, weights[..., None] if one_neuron else weights,
                          np.abs(biases).reshape(-1), dtype)
    assert_within(output, expected, tol.reshape(output.shape), "dense 1-D forms")


def _compiled_notes():
    from loopnet.backends.cpu import compile_loops

    return compile_loops(dense.dense_forward_notes)


@given(case=dense_cases())
def test_dense_notes_form_is_bit_identical_to_the_loops(case):
    """The notes' zip-loop neuron (compiled with numba and as Python) gives the very same bits
    as ``dense_forward_loops`` compiled and as Python: the same products summed in the same
    order (inputs 0, 1, ... then the bias), only the loop nest differs."""
    from loopnet.backends import cpu

    inputs, weights, biases = case
    biases = biases.reshape(-1)
    results = []
    for kernel in (dense.dense_forward_notes, _compiled_notes(),
                   dense.dense_forward_loops, cpu.dense_forward):
        output = np.empty((inputs.shape[0], weights.shape[1]), inputs.dtype)
        kernel(inputs, weights, biases, output)
        results.append(bits(output))
    assert len(set(results)) == 1


# The cpu device inlines each loop body into its kernels (``loopnet.kernels.body``): the same
# operations in the same order as calling the body, so the same bits. A kernel of each kind of
# body: element-wise, a row of a reduction, a body calling another (``accuracy_sample`` calls
# ``predicted_class``), ``sqrt`` (the optimizers), hashing integers (dropout), a dense row block.
INLINED_KERNELS = ("relu_forward", "softmax_forward", "accuracy", "adam_update", "dropout_mask",
                   "categorical_crossentropy_onehot")


@functools.cache
def _kernel_calling_its_bodies(op):
    """``<op>_loops`` compiled as numba compiles it from its own module: each body a function it
    calls (the cpu device's build has them inlined)."""
    import numba

    from loopnet.backends import collect
    from loopnet.kernels import renamed

    return numba.njit(error_model="numpy")(renamed(collect("loops")[op], "__bodies_called"))


@functools.cache
def _dense_kernel_calling_its_bodies():
    import numba

    from loopnet.kernels import dense_fast, renamed

    return numba.njit(error_model="numpy")(
        renamed(dense_fast.dense_backward_inputs_narrow, "__bodies_called"))


def test_the_cpu_kernels_have_their_bodies_inlined_where_marked():
    """What the equality below compares: the cpu builds read inlined twins of the bodies, the
    bodies marked ``inline=False`` as they are, and a build over a namespace of its own (the
    broadcast kernel without its wide ways) keeps that namespace's constants."""
    from loopnet.backends import cpu
    from loopnet.kernels import dense_fast

    def reads(build, name):
        return build.py_func.__globals__[name]

    assert reads(cpu.relu_forward.serial, "relu_element").targetoptions["inline"] == "always"
    assert reads(cpu.dense_backward_inputs_narrow_serial,
                 "dinputs_rows_narrow").targetoptions["inline"] == "always"
    assert reads(cpu.categorical_crossentropy.serial, "crossentropy_sample") \
        is losses.crossentropy_sample
    assert reads(cpu.dense_tn_plain_walk_serial, "WIDE_PATHS") is False
    assert reads(cpu.dense_tn_tiled_serial, "WIDE_PATHS") is dense_fast.WIDE_PATHS is True


@given(op=st.sampled_from(INLINED_KERNELS), dtype=float_dtypes, n_samples=st.integers(1, 40),
       n_classes=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_kernels_with_their_bodies_inlined_give_the_bits_of_the_called_bodies(
        op, dtype, n_samples, n_classes, seed):
    from loopnet.backends import collect, cpu
    from loopnet.kernels.examples import kernel_arguments

    arguments = kernel_arguments(op, collect("loops")[op], dtype, np.random.default_rng(seed),
                                 n_samples=n_samples, n_inputs=3, n_neurons=2,
                                 n_classes=n_classes, n_elements=n_samples * n_classes)
    copies = [[a.copy() if isinstance(a, np.ndarray) else a for a in arguments]
              for _ in range(2)]
    getattr(cpu, op).serial(*copies[0])
    _kernel_calling_its_bodies(op)(*copies[1])
    assert [bits(a) for a in copies[0] if isinstance(a, np.ndarray)] == \
        [bits(a) for a in copies[1] if isinstance(a, np.ndarray)]


@given(dtype=float_dtypes, n_samples=st.integers(1, 70), n_inputs=st.integers(1, 40),
       n_neurons=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_the_dense_row_blocks_inlined_give_the_bits_of_the_called_ones(
        dtype, n_samples, n_inputs, n_neurons, seed):
    from loopnet.backends import cpu

    rng = np.random.default_rng(seed)
    dvalues = rng.standard_normal((n_samples, n_neurons)).astype(dtype)
    weights_t = rng.standard_normal((n_neurons, n_inputs)).astype(dtype)
    outputs = [np.empty((n_samples, n_inputs), dtype) for _ in range(2)]
    cpu.dense_backward_inputs_narrow_serial(dvalues, weights_t, outputs[0])
    _dense_kernel_calling_its_bodies()(dvalues, weights_t, outputs[1])
    assert bits(outputs[0]) == bits(outputs[1])


@given(data=st.data())
def test_dense_is_linear_in_inputs(device, data):
    """``dense(a + b) = dense(a) + dense(b)`` and ``dense(c * x) = c * dense(x)`` (zero biases).

    Three dense sums, each within ``sum_tolerance`` of exact, plus the rounding of ``a + b`` and
    ``c * x`` (one more term each): tolerance 3x the tolerance of ``|a| + |b|``."""
    dtype = data.draw(float_dtypes)
    n_samples, n_inputs, n_neurons = data.draw(sides), data.draw(sides), data.draw(sides)
    a = data.draw(arrays(dtype, (n_samples, n_inputs)))
    b = data.draw(arrays(dtype, (n_samples, n_inputs)))
    weights = data.draw(arrays(dtype, (n_inputs, n_neurons)))
    c = dtype(data.draw(st.floats(-10, 10, width=32, allow_subnormal=False)))
    zero = np.zeros(n_neurons, dtype)

    def run(x):
        return host(ops.dense_forward(x, weights, zero, device=device)).astype(np.float64)

    dense_a = run(a)
    tol = 3 * dense_tolerance(np.abs(a) + np.abs(b), weights, zero, dtype)
    assert_within(run(a + b), dense_a + run(b), tol, "additive")
    tol = 3 * abs(float(c)) * dense_tolerance(a, weights, zero, dtype) + 3 * float(np.finfo(dtype).tiny)
    assert_within(run(c * a), float(c) * dense_a, tol, "homogeneous")


@given(case=dense_cases())
def test_dense_shifts_with_biases(device, case):
    """``dense(x, w, b) = dense(x, w, 0) + b``: the bias only shifts each neuron's output."""
    inputs, weights, biases = case
    dtype = inputs.dtype
    with_biases = host(ops.dense_forward(inputs, weights, biases, device=device))
    without = host(ops.dense_forward(inputs, weights, np.zeros_like(biases), device=device))
    tol = 2 * dense_tolerance(inputs, weights, biases.reshape(-1), dtype)
    assert_within(with_biases, without.astype(np.float64) + biases.reshape(-1), tol, "bias shift")


# --- ReLU -----------------------------------------------------------------------------------------

@given(data=st.data())
def test_relu_is_max_zero_and_idempotent(device, data):
    """``relu(x) == np.maximum(0, x)`` exactly, any shape (0-D to 3-D), and ``relu(relu(x)) ==
    relu(x)``. No tolerance: ReLU only copies or zeroes, it never rounds."""
    dtype = data.draw(float_dtypes)
    shape = data.draw(st.lists(sides, min_size=0, max_size=3).map(tuple))
    x = data.draw(arrays(dtype, shape, bound=1e30))
    output = host(ops.relu_forward(x, device=device))
    twin = np.empty(x.size, dtype)
    activations.relu_forward_numpy(x.reshape(-1), twin)
    assert output.dtype == dtype and output.shape == x.shape
    assert np.array_equal(output, twin.reshape(x.shape))
    assert np.array_equal(output, np.maximum(0, x))
    assert np.array_equal(host(ops.relu_forward(output, device=device)), output)


@given(data=st.data())
def test_relu_in_place_gives_the_bits_of_relu(device, data):
    """The training step's ReLU in place (``relu_forward_in_place`` over one buffer,
    ``relu_backward_in_place`` masked by ReLU's output instead of its input) writes the very
    bits of the two-buffer kernels, NaN, infinities and signed zeros included (the output
    gives the input's mask: <= 0 gives 0, NaN stays NaN), and the values of their twins."""
    from loopnet.devices import backend

    be = backend(device)
    dtype = data.draw(float_dtypes)
    n = data.draw(sides)
    values = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]),
                       floats(dtype, 1e30))
    inputs = data.draw(arrays(dtype, (n,), elements=values))
    dvalues = data.draw(arrays(dtype, (n,), elements=values))
    output = np.empty_like(inputs)
    dinputs = np.empty_like(inputs)
    be.relu_forward(inputs, output)
    be.relu_backward(dvalues, inputs, dinputs)
    in_place = inputs.copy()
    be.relu_forward_in_place(in_place)
    assert bits(in_place) == bits(output)
    gradient = dvalues.copy()
    be.relu_backward_in_place(gradient, in_place)
    assert bits(gradient) == bits(dinputs)
    # (np.maximum(0, -0.0) is -0.0, the kernels' 0.0: the twins agree in value, as ReLU's do)
    twin = inputs.copy()
    activations.relu_forward_in_place_numpy(twin)
    assert np.array_equal(twin, output, equal_nan=True)
    twin = dvalues.copy()
    activations.relu_backward_in_place_numpy(twin, output)
    assert np.array_equal(twin, dinputs, equal_nan=True)


# --- Softmax --------------------------------------------------------------------------------------

@given(x=matrices(bound=1e4))
def test_softmax_equals_twin(device, x):
    dtype = x.dtype
    output = host(ops.softmax_forward(x, device=device))
    twin = np.empty_like(x)
    activations.softmax_forward_numpy(x, twin)
    assert output.dtype == dtype
    # + 2 tiny: a result near the underflow threshold may come out subnormal or flushed to 0
    tol = softmax_rtol(x.shape[1], dtype) * np.abs(twin) + 2 * float(np.finfo(dtype).tiny)
    assert_within(output, twin, tol, "softmax")


@given(x=matrices(bound=1e4))
def test_softmax_rows_are_distributions_keeping_the_argmax(device, x):
    """Finite for |x| <= 1e4; each row in [0, 1] summing to 1 (within the row's rounding); the
    largest score gets the largest probability (exp(0) = 1 is the largest exponential)."""
    probs = host(ops.softmax_forward(x, device=device))
    assert np.all(np.isfinite(probs))
    assert np.all((probs >= 0) & (probs <= 1))
    sums = probs.astype(np.float64).sum(axis=1)
    assert np.all(np.abs(sums - 1) <= softmax_rtol(x.shape[1], x.dtype))
    rows = np.arange(x.shape[0])
    assert np.array_equal(probs[rows, np.argmax(x, axis=1)], probs.max(axis=1))


@given(x=matrices(bound=1e4), data=st.data())
def test_softmax_is_invariant_to_adding_a_constant_per_row(device, x, data):
    """``softmax(x + c) == softmax(x)`` for a constant ``c`` per row, up to rounding.

    The scores each softmax exponentiates differ by rounding: ``x + c`` rounds once (at most
    ``eps/2 * M`` with ``M = max|x| + max|c|`` of the row) and each softmax's max-subtraction
    rounds once (at most ``eps/2`` of a difference up to ``2 M``): ``D = 2.5 eps M`` in all.
    Since ``q_j / p_j = exp(d_j) / sum_k p_k exp(d_k)`` with ``|d| <= D``, each probability
    moves by a factor within ``exp(+-2 D)``; plus both softmaxes' own rounding. (In float32 at
    |x| ~ 1e4 that is a percent: the property only has teeth for moderate scores or float64.)"""
    dtype = x.dtype
    c = data.draw(arrays(dtype, (x.shape[0], 1), bound=1e4))
    shifted = x + c
    p = host(ops.softmax_forward(x, device=device)).astype(np.float64)
    q = host(ops.softmax_forward(shifted, device=device)).astype(np.float64)
    row_scale = np.abs(x).max(axis=1, keepdims=True) + np.abs(c)
    score_error = 2.5 * eps(dtype) * row_scale.astype(np.float64)
    rtol = np.expm1(2 * score_error) + 2 * softmax_rtol(x.shape[1], dtype)
    tol = rtol * np.maximum(p, q) + 2 * float(np.finfo(dtype).tiny)
    assert_within(q, p, tol, "shift")


# --- Cross-entropy and accuracy -------------------------------------------------------------------

@given(case=classification_cases())
def test_crossentropy_equals_twin_one_hot_and_the_formula(device, case):
    y_pred, targets = case
    dtype = y_pred.dtype.type
    n_samples, n_classes = y_pred.shape
    from_indices = host(ops.categorical_crossentropy(y_pred, targets, device=device))
    one_hot = np.eye(n_classes, dtype=dtype)[targets]
    from_one_hot = host(ops.categorical_crossentropy(y_pred, one_hot, device=device))
    twin = np.empty(n_samples, dtype)
    losses.categorical_crossentropy_numpy(y_pred, targets, twin)
    formula = -np.log(np.clip(y_pred[np.arange(n_samples), targets], dtype(1e-7), dtype(1 - 1e-7)))
    assert from_indices.dtype == dtype and from_indices.shape == (n_samples,)
    rtol = log_rtol(dtype)
    for name, other in (("twin", twin), ("one-hot", from_one_hot), ("formula", formula)):
        assert_within(from_indices, other, rtol * np.abs(other), name)
    # the clip caps one sample's loss at -log(1e-7) ~= 16.118 (in the dtype, give or take the
    # log's own rounding) and keeps it >= -log(1 - 1e-7) > 0
    assert np.all(from_indices <= -np.log(dtype(1e-7)) * (1 + rtol))
    assert np.all(from_indices > 0)


@given(case=classification_cases(), as_one_hot=st.booleans())
def test_accuracy_equals_twin(device, case, as_one_hot):
    """Exact: the fraction of rows whose first maximum is the target (ties are likely here)."""
    y_pred, targets = case
    y_true = np.eye(y_pred.shape[1])[targets] if as_one_hot else targets
    acc = ops.accuracy(y_pred, y_true, device=device)
    assert isinstance(acc, float)
    assert acc == np.mean(np.argmax(y_pred, axis=1) == targets)


@given(values=float_dtypes.flatmap(
    lambda dtype: arrays(dtype, st.integers(1, 8 * MAX_SIDE), bound=1e6)))
def test_mean_equals_twin(device, values):
    """The mean is summed in float64 (in index order on the loop devices, pairwise in numpy)."""
    n = values.shape[0]
    result = ops.mean(values, device=device)
    twin = np.empty(1)
    losses.mean_numpy(values, twin)
    tol = sum_tolerance(n, np.abs(values.astype(np.float64)).sum(), np.float64) / n
    assert isinstance(result, float)
    assert abs(result - twin[0]) <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crossentropy_clips_both_ends(device, dtype):
    """A probability of exactly 0 for the true class gives -log(1e-7), not inf; exactly 1
    gives -log(1 - 1e-7), not 0 (both in the dtype)."""
    y_pred = np.array([[0.0, 1.0], [1.0, 0.0]], dtype)
    sample_losses = host(ops.categorical_crossentropy(y_pred, [0, 0], device=device))
    expected = -np.log(np.array([1e-7, 1 - 1e-7], dtype))
    assert_within(sample_losses, expected, log_rtol(dtype) * expected, "clip")
