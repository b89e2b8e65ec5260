"""Backward passes and losses: every gradient equals its numpy twin (hypothesis, random shapes),
equals central finite differences of its forward (float64, small shapes), and the fused softmax +
cross-entropy gradient equals the chained one.

Finite differences: for a forward ``f`` and a random weighting ``R`` of its outputs, the scalar
``L = sum(f(x) * R)`` has gradient ``backward(R)``; the central difference
``(L(x + h) - L(x - h)) / 2h`` is off by O(h^2 * f''') plus rounding O(eps * |L| / h). With
h = 1e-6 in float64 both are ~1e-10 relative to the terms' size: we allow 1e-6 of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (HOST_DEVICES, arrays, assert_within, bits, eps, float_dtypes, sides,
                     sum_tolerance)
from loopnet import ops
from loopnet.kernels import activations, dense, losses, regularization


def host(x) -> np.ndarray:
    return np.asarray(ops.to_numpy(x))


def twin(kernel, shape, dtype, *args):
    """Run a ``*_numpy`` kernel into a fresh output array and return it."""
    out = np.empty(shape, dtype)
    kernel(*args, out)
    return out


def elementwise_tol(expected, dtype, ulps=8):
    """A few roundings of element-wise arithmetic (exp or log included): ``ulps * eps * |x|``."""
    return ulps * eps(dtype) * np.abs(np.asarray(expected, np.float64)) + np.finfo(dtype).tiny


# --- Twins (hypothesis) ---------------------------------------------------------------------------

@st.composite
def backward_cases(draw, bound=10.0):
    dtype = draw(float_dtypes)
    s, i, n = draw(sides), draw(sides), draw(sides)
    return (draw(arrays(dtype, (s, n), bound)), draw(arrays(dtype, (s, i), bound)),
            draw(arrays(dtype, (i, n), bound)))


@given(case=backward_cases())
def test_dense_backward_equals_twin(device, case):
    dvalues, inputs, weights = case
    dtype = dvalues.dtype
    dweights, dbiases, dinputs = (host(a) for a in ops.dense_backward(dvalues, inputs, weights,
                                                                       device=device))
    s, n = dvalues.shape
    i = inputs.shape[1]
    a_x, a_d, a_w = (np.abs(a.astype(np.float64)) for a in (inputs, dvalues, weights))
    assert dweights.shape == (i, n) and dbiases.shape == (1, n) and dinputs.shape == (s, i)
    assert_within(dweights, twin(dense.dense_backward_weights_numpy, (i, n), dtype, inputs, dvalues),
                  sum_tolerance(s, a_x.T @ a_d, dtype), "dweights")
    assert_within(dbiases[0], twin(dense.dense_backward_biases_numpy, (n,), dtype, dvalues),
                  sum_tolerance(s, a_d.sum(axis=0), dtype), "dbiases")
    assert_within(dinputs, twin(dense.dense_backward_inputs_numpy, (s, i), dtype, dvalues, weights),
                  sum_tolerance(n, a_d @ a_w.T, dtype), "dinputs")


@st.composite
def pairs(draw, bound=10.0):
    """Two same-shaped arrays (a gradient and a forward array) of one dtype, 1-D or 2-D."""
    dtype = draw(float_dtypes)
    shape = draw(st.sampled_from([(draw(sides),), (draw(sides), draw(sides))]))
    return draw(arrays(dtype, shape, bound)), draw(arrays(dtype, shape, bound))


@given(case=pairs())
def test_elementwise_backwards_equal_twins(device, case):
    dvalues, values = case
    dtype, shape = dvalues.dtype, dvalues.shape
    probs = 1 / (1 + np.exp(-values))        # a sigmoid output to differentiate through
    mask = (values > 0).astype(dtype) / dtype.type(0.7)
    cases = [
        ("relu_backward", ops.relu_backward(dvalues, values, device=device),
         twin(activations.relu_backward_numpy, shape, dtype, dvalues, values), 0),
        ("sigmoid_forward", ops.sigmoid_forward(values, device=device),
         twin(activations.sigmoid_forward_numpy, shape, dtype, values), 8),
        ("sigmoid_backward", ops.sigmoid_backward(dvalues, probs, device=device),
         twin(activations.sigmoid_backward_numpy, shape, dtype, dvalues, probs), 4),
        ("linear_backward", ops.linear_backward(dvalues, device=device), dvalues, 0),
        ("linear_forward", ops.linear_forward(values, device=device), values, 0),
        ("dropout_forward", ops.dropout_forward(values, mask, device=device),
         twin(regularization.dropout_forward_numpy, shape, dtype, values, mask), 1),
        ("dropout_backward", ops.dropout_backward(dvalues, mask, device=device),
         twin(regularization.dropout_backward_numpy, shape, dtype, dvalues, mask), 1),
    ]
    for name, actual, expected, ulps in cases:
        actual = host(actual)
        assert actual.shape == shape and actual.dtype == dtype, name
        assert_within(actual, expected, elementwise_tol(expected, dtype, ulps), name)


@given(data=st.data())
def test_softmax_backward_equals_twin_and_notes(device, data):
    dtype = data.draw(float_dtypes)
    s, c = data.draw(sides), data.draw(sides)
    output = ops.softmax_forward(data.draw(arrays(dtype, (s, c), 10.0)), device="numpy")
    dvalues = data.draw(arrays(dtype, (s, c), 10.0))
    actual = host(ops.softmax_backward(dvalues, output, device=device))
    expected = twin(activations.softmax_backward_numpy, (s, c), dtype, dvalues, output)
    notes = twin(activations.softmax_backward_notes, (s, c), dtype, dvalues, output)
    # dinputs[s, j] = sum_k J[j, k] * dvalues[k]: c terms, |J[j, k]| <= o_j (delta + o_k)
    o = output.astype(np.float64)
    jacobian_bound = o[:, :, None] * (np.eye(c) + o[:, None, :])
    magnitude = np.einsum("sjk,sk->sj", jacobian_bound, np.abs(dvalues.astype(np.float64)))
    tol = sum_tolerance(c + 1, magnitude, dtype)
    assert_within(actual, expected, tol, "softmax backward vs twin")
    assert_within(notes, expected, tol, "softmax backward: book form vs batched twin")


@st.composite
def class_cases(draw):
    dtype = draw(float_dtypes)
    s, c = draw(sides), draw(sides)
    logits = draw(arrays(dtype, (s, c), 8.0))
    targets = draw(arrays(np.intp, (s,), elements=st.integers(0, c - 1)))
    return ops.softmax_forward(logits, device="numpy"), targets


@given(case=class_cases(), as_one_hot=st.booleans())
def test_crossentropy_backwards_equal_twins(device, case, as_one_hot):
    probs, targets = case
    dtype, shape = probs.dtype, probs.shape
    y_true = np.eye(shape[1], dtype=np.intp)[targets] if as_one_hot else targets
    actual = host(ops.categorical_crossentropy_backward(probs, y_true, device=device))
    expected = twin(losses.categorical_crossentropy_backward_numpy, shape, dtype, probs, targets)
    assert_within(actual, expected, elementwise_tol(expected, dtype, 2), "CCE backward")
    actual = host(ops.softmax_crossentropy_backward(probs, y_true, device=device))
    expected = twin(losses.softmax_crossentropy_backward_numpy, shape, dtype, probs, targets)
    assert_within(actual, expected, elementwise_tol(expected, dtype, 2), "fused backward")


@given(case=class_cases())
def test_fused_backward_equals_chained(device, case):
    """(softmax - one_hot) / n == softmax's Jacobian applied to -1 / p_target / n."""
    probs, targets = case
    n = probs.shape[0]
    fused = host(ops.softmax_crossentropy_backward(probs, targets, device=device))
    dloss = ops.categorical_crossentropy_backward(probs, targets, device=device)
    chained = host(ops.softmax_backward(dloss, probs, device=device))
    # The chain forms p_j * p_t * (1 / p_t): a few roundings relative to 1 / n, unless p_t is
    # so small that 1 / p_t overflows (excluded: logits are bounded by 8, so p_t > 1e-8).
    tol = 16 * eps(probs.dtype) * (1 + np.abs(fused) * n) / n
    assert_within(chained, fused, tol, "chained vs fused")


@st.composite
def target_cases(draw, kind):
    dtype = draw(float_dtypes)
    s, o = draw(sides), draw(sides)
    if kind == "binary":
        y_pred = draw(arrays(dtype, (s, o), elements=st.floats(0.0625, 0.9375, width=32)))
        # (0/1 targets take the kernel's one-logarithm path, the others its full formula)
        y_true = draw(arrays(dtype, (s, o), elements=st.sampled_from([0.0, 1.0, 0.25, 0.7])))
    else:
        y_pred = draw(arrays(dtype, (s, o), 10.0))
        y_true = draw(arrays(dtype, (s, o), 10.0))
    return y_pred, y_true


LOSSES = {
    "binary": ("binary_crossentropy", losses.binary_crossentropy_numpy,
               losses.binary_crossentropy_backward_numpy),
    "mse": ("mean_squared_error", losses.mean_squared_error_numpy,
            losses.mean_squared_error_backward_numpy),
    "mae": ("mean_absolute_error", losses.mean_absolute_error_numpy,
            losses.mean_absolute_error_backward_numpy),
}


@pytest.mark.parametrize("kind", sorted(LOSSES))
@given(data=st.data())
def test_target_losses_equal_twins(device, kind, data):
    y_pred, y_true = data.draw(target_cases("binary" if kind == "binary" else "regression"))
    name, forward_twin, backward_twin = LOSSES[kind]
    dtype, (s, o) = y_pred.dtype, y_pred.shape
    sample_losses = host(getattr(ops, name)(y_pred, y_true, device=device))
    expected = twin(forward_twin, (s,), dtype, y_pred, y_true)
    per_term = {"binary": 17.0, "mse": 400.0, "mae": 20.0}[kind]    # bound on one term
    assert_within(sample_losses, expected, sum_tolerance(o + 8, per_term, dtype), name)
    dinputs = host(getattr(ops, name + "_backward")(y_pred, y_true, device=device))
    expected = twin(backward_twin, (s, o), dtype, y_pred, y_true)
    assert_within(dinputs, expected, elementwise_tol(expected, dtype, 8), name + " backward")


@given(case=pairs(), l1=st.sampled_from([0.0, 1e-3, 0.5]), l2=st.sampled_from([0.0, 5e-4, 0.3]))
def test_regularization_equals_twin(device, case, l1, l2):
    dvalues, values = case
    dtype = values.dtype
    penalty = ops.regularization_loss(values, l1=l1, l2=l2, device=device)
    expected = twin(regularization.regularization_loss_numpy, (1,), np.float64,
                    values.reshape(-1), l1, l2)[0]
    magnitude = l1 * np.abs(values).sum(dtype=np.float64) + l2 * (values.astype(np.float64) ** 2).sum()
    assert_within(penalty, expected, sum_tolerance(values.size + 1, magnitude, dtype), "penalty")
    actual = dvalues.copy()
    returned = ops.regularization_backward(values, actual, l1=l1, l2=l2, device=device)
    expected = dvalues.copy()
    regularization.regularization_backward_numpy(values, l1, l2, expected)
    assert returned is actual
    assert_within(actual, expected, elementwise_tol(np.abs(expected) + np.abs(dvalues), dtype, 4),
                  "penalty gradient")


@st.composite
def layer_penalty_cases(draw):
    """A layer's weights and biases, gradients to add to, and four coefficients."""
    dtype, n_inputs, n_neurons = draw(float_dtypes), draw(sides), draw(sides)
    coefficient = st.sampled_from([0.0, 1e-3, 0.3])
    return (draw(arrays(dtype, (n_inputs, n_neurons))), draw(arrays(dtype, (1, n_neurons))),
            draw(arrays(dtype, (n_inputs, n_neurons))), draw(arrays(dtype, (1, n_neurons))),
            tuple(draw(coefficient) for _ in range(4)))


@given(case=layer_penalty_cases())
def test_a_layers_penalties_in_one_call_equal_the_twins(case):
    """The cpu device's one-call kernels of a layer's penalties (``dense_penalties``, serial and
    parallel builds; ``dense_penalties_loss``) against the numpy twins of the per-array ops,
    ``regularization_backward_numpy`` and ``regularization_loss_numpy`` on the weights and on
    the biases, within the per-array ops' tolerances."""
    from loopnet.backends import cpu

    weights, biases, dweights, dbiases, coefficients = case
    dtype = weights.dtype
    expected_loss = 0.0
    expected = []
    magnitude = 0.0
    for values, gradient, (l1, l2) in ((weights, dweights, coefficients[:2]),
                                       (biases, dbiases, coefficients[2:])):
        if l1 > 0 or l2 > 0:
            expected_loss += twin(regularization.regularization_loss_numpy, (1,), np.float64,
                                  values.reshape(-1), l1, l2)[0]
            magnitude += (l1 * np.abs(values).sum(dtype=np.float64)
                          + l2 * (values.astype(np.float64) ** 2).sum())
        added = gradient.copy()
        regularization.regularization_backward_numpy(values, l1, l2, added)
        expected.append(added)
    output = np.empty(1)
    cpu.dense_penalties_loss(weights, biases, *coefficients, output)
    assert_within(output[0], expected_loss,
                  sum_tolerance(weights.size + biases.size + 2, magnitude, dtype), "penalty")
    for build in (cpu._penalties_serial, cpu._penalties_parallel):
        actual = [dweights.copy(), dbiases.copy()]
        build(weights, biases, *coefficients, *actual)
        for got, want, before, name in zip(actual, expected, (dweights, dbiases),
                                           ("dweights", "dbiases")):
            assert_within(got, want, elementwise_tol(np.abs(want) + np.abs(before), dtype, 4),
                          f"{name} penalty gradient ({build.py_func.__name__})")


# --- Central finite differences (float64, small shapes) --------------------------------------------

H = 1e-6


def numeric_gradient(loss, x):
    """Central differences of the scalar ``loss()`` with respect to every element of ``x``
    (changed in place and restored)."""
    grad = np.empty_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + H
        up = loss()
        flat[k] = saved - H
        down = loss()
        flat[k] = saved
        g[k] = (up - down) / (2 * H)
    return grad


def assert_gradient(analytic, numeric, scale, what):
    assert_within(host(analytic), numeric, 1e-6 * (scale + np.abs(numeric)), what)


def weighted(f, weights):
    return lambda: float(np.sum(host(f()) * weights))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_dropout_masks_are_one_hash_on_every_device(device):
    """The counter-based mask: the numpy twin's vectorized hash, the loops (compiled, or as
    Python) and the CUDA kernel give the same mask, bit for bit; kept elements carry
    1 / (1 - rate) in the mask's dtype, about 1 - rate of them are kept, and the step and the
    seed each give another mask."""
    shape, rate = (37, 53), 0.3
    mask = host(ops.dropout_mask(shape, rate, seed=11, step=5, device=device))
    twin = host(ops.dropout_mask(shape, rate, seed=11, step=5, device="numpy"))
    assert bits(mask) == bits(twin)
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / (1 - rate))}
    # 1961 Bernoulli(0.7) draws: the kept fraction is 0.7 +- 5 standard deviations (0.052)
    assert abs(np.mean(mask > 0) - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / mask.size)
    other_step = host(ops.dropout_mask(shape, rate, seed=11, step=6, device=device))
    other_seed = host(ops.dropout_mask(shape, rate, seed=12, step=5, device=device))
    assert bits(other_step) != bits(mask) and bits(other_seed) != bits(mask)
    assert np.all(host(ops.dropout_mask((4, 9), 0.0, seed=3, device=device)) == 1)


def test_dropout_mask_rejects_bad_arguments():
    for kwargs, error, message in (
            (dict(rate=1.0, seed=0), ValueError, r"rate must be in \[0, 1\)"),
            (dict(rate=0.1, seed=-1), ValueError, r"seed must be in \[0, 2\*\*63\)"),
            (dict(rate=0.1, seed=1.5), TypeError, "seed must be an integer"),
            (dict(rate=0.1, seed=0, step=-2), ValueError, "step must be in")):
        with pytest.raises(error, match=message):
            ops.dropout_mask((3, 4), **kwargs)
    with pytest.raises(ValueError, match="shape must be a tuple of positive integers"):
        ops.dropout_mask((3, 0), 0.1, seed=0)


def test_dense_backward_matches_finite_differences(device, rng):
    inputs, weights = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    biases, R = rng.standard_normal((1, 5)), rng.standard_normal((4, 5))
    dweights, dbiases, dinputs = ops.dense_backward(R, inputs, weights, device=device)
    loss = weighted(lambda: ops.dense_forward(inputs, weights, biases, device=device), R)
    for name, analytic, x in (("dinputs", dinputs, inputs), ("dweights", dweights, weights),
                              ("dbiases", dbiases, biases)):
        assert_gradient(analytic, numeric_gradient(loss, x), 1.0, name)


@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid", "linear", "dropout"])
def test_activation_backwards_match_finite_differences(device, rng, name):
    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 1e-2] = 0.5          # ReLU has a kink at 0: stay away from it
    R = rng.standard_normal((3, 4))
    mask = ops.to_numpy(ops.dropout_mask(x.shape, 0.25, seed=0, dtype=np.float64))
    forward = {
        "relu": lambda: ops.relu_forward(x, device=device),
        "softmax": lambda: ops.softmax_forward(x, device=device),
        "sigmoid": lambda: ops.sigmoid_forward(x, device=device),
        "linear": lambda: ops.linear_forward(x, device=device),
        "dropout": lambda: ops.dropout_forward(x, mask, device=device),
    }[name]
    output = host(forward()).copy()
    analytic = {
        "relu": lambda: ops.relu_backward(R, x, device=device),
        "softmax": lambda: ops.softmax_backward(R, output, device=device),
        "sigmoid": lambda: ops.sigmoid_backward(R, output, device=device),
        "linear": lambda: ops.linear_backward(R, device=device),
        "dropout": lambda: ops.dropout_backward(R, mask, device=device),
    }[name]()
    assert_gradient(analytic, numeric_gradient(weighted(forward, R), x), 1.0, name)


@pytest.mark.parametrize("name", ["categorical", "fused", "binary", "mse", "mae"])
def test_loss_backwards_match_finite_differences(device, rng, name):
    """The gradient of the *mean* loss, as ``Loss.calculate`` reports it."""
    n, c = 4, 3
    targets = rng.integers(0, c, size=n)
    if name in ("categorical", "binary"):
        y_pred = rng.uniform(0.05, 0.95, size=(n, c))
    else:
        y_pred = rng.standard_normal((n, c))
    y_true = {"binary": rng.integers(0, 2, size=(n, c)).astype(np.float64),
              "mse": rng.standard_normal((n, c)), "mae": y_pred + rng.choice([-1, 1], (n, c)),
              "categorical": targets, "fused": targets}[name]
    mean = lambda f: (lambda: ops.mean(host(f()), device="numpy"))   # noqa: E731
    if name == "fused":
        logits = y_pred
        loss = mean(lambda: ops.categorical_crossentropy(
            ops.softmax_forward(logits, device=device), targets, device=device))
        analytic = ops.softmax_crossentropy_backward(ops.softmax_forward(logits, device=device),
                                                     targets, device=device)
    else:
        forward, backward = {
            "categorical": (ops.categorical_crossentropy, ops.categorical_crossentropy_backward),
            "binary": (ops.binary_crossentropy, ops.binary_crossentropy_backward),
            "mse": (ops.mean_squared_error, ops.mean_squared_error_backward),
            "mae": (ops.mean_absolute_error, ops.mean_absolute_error_backward),
        }[name]
        loss = mean(lambda: forward(y_pred, y_true, device=device))
        analytic = backward(y_pred, y_true, device=device)
    assert_gradient(analytic, numeric_gradient(loss, y_pred), 1.0 / n, name)


def test_regularization_gradient_matches_finite_differences(device, rng):
    values = rng.standard_normal((3, 4))
    values[np.abs(values) < 1e-2] = 0.5          # |w| has a kink at 0
    l1, l2 = 0.01, 0.3
    analytic = ops.regularization_backward(values, np.zeros_like(values), l1=l1, l2=l2,
                                           device=device)
    loss = lambda: ops.regularization_loss(values, l1=l1, l2=l2, device=device)  # noqa: E731
    assert_gradient(analytic, numeric_gradient(loss, values), 1.0, "regularization")


# --- Layers use these ops --------------------------------------------------------------------------

def test_dense_layer_backward_adds_penalties(device, rng):
    import loopnet

    layer = loopnet.Dense(3, 4, weight_regularizer_l1=0.01, weight_regularizer_l2=0.02,
                          bias_regularizer_l1=0.03, bias_regularizer_l2=0.04, seed=0,
                          dtype=np.float64, device=device)
    layer.set_parameters(host(layer.weights), rng.standard_normal((1, 4)))
    inputs, dvalues = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    layer.forward(inputs)
    dinputs = layer.backward(dvalues)
    w, b = host(layer.weights), host(layer.biases)
    expected_dw = inputs.T @ dvalues + 0.01 * np.where(w < 0, -1, 1) + 2 * 0.02 * w
    expected_db = dvalues.sum(axis=0, keepdims=True) + 0.03 * np.where(b < 0, -1, 1) + 2 * 0.04 * b
    tol = 1e-12
    assert_within(host(layer.dweights), expected_dw, tol, "dweights")
    assert_within(host(layer.dbiases), expected_db, tol, "dbiases")
    assert_within(host(dinputs), dvalues @ w.T, tol, "dinputs")
    # A second backward reuses the gradient buffers and still gives the right values.
    first = host(layer.dweights).copy()
    layer.backward(dvalues * 2)
    assert_within(host(layer.dweights) - first, inputs.T @ dvalues, tol, "second backward")


@pytest.mark.parametrize("alias", ["dvalues is its dinputs", "dvalues is its dweights",
                                   "inputs are its dinputs", "dinputs is its dweights",
                                   "weights are its dweights"])
def test_dense_backward_handed_its_own_buffers_computes_from_their_values(device, rng, alias):
    """A square layer's gradient buffers have the shapes of its inputs and weights, so a loop
    can hand one back as an input (or make two of them one array): the kernels must then read
    the values it held, never a half-written buffer (the layer writes new buffers instead)."""
    import loopnet

    layer = loopnet.Dense(4, 4, weight_regularizer_l1=0.01, weight_regularizer_l2=0.02,
                          bias_regularizer_l2=0.04, seed=0, dtype=np.float64, device=device)
    layer.biases = rng.standard_normal((1, 4))
    layer.forward(rng.standard_normal((4, 4)))
    layer.backward(rng.standard_normal((4, 4)))           # the buffers now exist
    dvalues = rng.standard_normal((4, 4))
    if alias == "dvalues is its dinputs":
        dvalues = layer.dinputs
    elif alias == "dvalues is its dweights":
        dvalues = layer.dweights
    elif alias == "inputs are its dinputs":
        layer.inputs = layer.dinputs
    elif alias == "dinputs is its dweights":
        layer.dinputs = layer.dweights
    elif alias == "weights are its dweights":
        layer.weights = layer.dweights
    inputs, weights, biases = host(layer.inputs).copy(), host(layer.weights).copy(), host(
        layer.biases).copy()
    d = host(dvalues).copy()
    layer.backward(dvalues)
    expected_dw = inputs.T @ d + 0.01 * np.where(weights < 0, -1, 1) + 2 * 0.02 * weights
    expected_db = d.sum(axis=0, keepdims=True) + 2 * 0.04 * biases
    # float64 sums of 4 terms of magnitude ~1-10: 1e-12 is ~1e4 ulps of headroom
    assert_within(host(layer.dweights), expected_dw, 1e-12, f"dweights ({alias})")
    assert_within(host(layer.dbiases), expected_db, 1e-12, f"dbiases ({alias})")
    assert_within(host(layer.dinputs), d @ weights.T, 1e-12, f"dinputs ({alias})")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("coefficients", [(0.01, 0.02, 0.03, 0.04), (0.0, 5e-4, 0.0, 5e-4),
                                          (0.01, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.04)])
@pytest.mark.parametrize("sides", [(8, 2, 64), (4, 64, 64)])
@pytest.mark.parametrize("parallel", [False, True])
def test_dense_backwards_penalties_in_one_call_give_the_ops_bits(dtype, coefficients, sides,
                                                                 parallel, monkeypatch):
    """A penalized layer's backward on cpu adds both penalties' gradients in one call
    (``cpu.dense_penalties``, its direct path): the bits of ``ops.dense_backward`` followed by
    an ``ops.regularization_backward`` for the weights and one for the biases, for L1 and L2
    on either, with the kernels' serial builds and with their parallel ones (every kernel's
    parallel threshold lowered to one element)."""
    import loopnet
    from loopnet import threads
    from loopnet.backends import cpu

    if parallel:
        assert threads.parallel_allowed()
        monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", 1)
    # the usual path's calls (a small layer's backward in one call, its lane, is tested apart)
    monkeypatch.setattr(cpu, "dense_backward_lane", lambda *args: None)
    n_samples, n_inputs, n_neurons = sides
    weight_l1, weight_l2, bias_l1, bias_l2 = coefficients
    rng = np.random.default_rng(7)
    layer = loopnet.Dense(n_inputs, n_neurons, weight_regularizer_l1=weight_l1,
                          weight_regularizer_l2=weight_l2, bias_regularizer_l1=bias_l1,
                          bias_regularizer_l2=bias_l2, seed=0, dtype=dtype, device="cpu")
    layer.set_parameters(layer.weights, rng.standard_normal((1, n_neurons)))
    inputs = rng.standard_normal((n_samples, n_inputs)).astype(dtype)
    dvalues = rng.standard_normal((n_samples, n_neurons)).astype(dtype)
    calls = []      # (the layer's: on a cold cache a pass may also compile them ahead, on zeros)
    builds = {cpu._penalties_serial: "serial", cpu._penalties_parallel: "parallel"}
    for build, name in builds.items():
        monkeypatch.setattr(cpu, f"_penalties_{name}", lambda *args, build=build, name=name:
                            (args[0] is layer.weights and calls.append(name)) or build(*args))
    for _ in range(2):      # (the second reuses the first's buffers)
        layer.forward(inputs)
        layer.backward(dvalues)
    assert calls == ["parallel" if parallel else "serial"] * 2
    dweights, dbiases, dinputs = ops.dense_backward(dvalues, inputs, layer.weights, device="cpu")
    ops.regularization_backward(layer.weights, dweights, l1=weight_l1, l2=weight_l2,
                                device="cpu")
    ops.regularization_backward(layer.biases, dbiases, l1=bias_l1, l2=bias_l2, device="cpu")
    assert bits(layer.dweights) == bits(dweights)
    assert bits(layer.dbiases) == bits(dbiases)
    assert bits(layer.dinputs) == bits(dinputs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("coefficients", [(0.01, 0.02, 0.03, 0.04), (0.0, 5e-4, 0.0, 5e-4),
                                          (0.01, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.04)])
def test_a_layers_penalty_in_one_call_gives_the_sum_of_the_ops_penalties(dtype, coefficients,
                                                                        monkeypatch):
    """``Loss.regularization_loss(layer)`` on cpu takes a layer's penalty in one call
    (``cpu.dense_penalties_loss``, its direct path): the float64 bits of
    ``ops.regularization_loss`` of the weights plus that of the biases (each where one of its
    coefficients is > 0), and that rounded to the weights' dtype."""
    import loopnet
    from loopnet.backends import cpu

    weight_l1, weight_l2, bias_l1, bias_l2 = coefficients
    rng = np.random.default_rng(11)
    layer = loopnet.Dense(64, 48, weight_regularizer_l1=weight_l1,
                          weight_regularizer_l2=weight_l2, bias_regularizer_l1=bias_l1,
                          bias_regularizer_l2=bias_l2, seed=0, dtype=dtype, device="cpu")
    layer.set_parameters(rng.standard_normal((64, 48)), rng.standard_normal((1, 48)))
    calls = []
    in_one_call = cpu.dense_penalties_loss
    monkeypatch.setattr(cpu, "dense_penalties_loss",
                        lambda *args: calls.append(args[0] is layer.weights) or in_one_call(*args))
    direct = ops.layer_penalty_direct(layer.weights, layer.biases, coefficients, "cpu")
    rounded = loopnet.CategoricalCrossentropy().regularization_loss(layer)
    assert calls == [True, True]
    expected = 0.0
    if weight_l1 > 0 or weight_l2 > 0:
        expected += ops.regularization_loss(layer.weights, l1=weight_l1, l2=weight_l2,
                                            device="cpu")
    if bias_l1 > 0 or bias_l2 > 0:
        expected += ops.regularization_loss(layer.biases, l1=bias_l1, l2=bias_l2, device="cpu")
    assert type(direct) is float and direct.hex() == expected.hex()
    assert type(rounded) is np.dtype(dtype).type
    assert rounded.tobytes() == np.dtype(dtype).type(expected).tobytes()


def test_a_coefficient_made_invalid_after_construction_is_named_by_backward():
    """A layer's penalty coefficient set to inf after the constructor: the assignment is
    refused, and one written past that check (into the instance's dict) makes the backward
    raise a ValueError naming the attribute, on the direct path's check as on ops'."""
    import loopnet

    layer = loopnet.Dense(2, 3, weight_regularizer_l2=5e-4, seed=0, device="cpu")
    layer.forward(np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="bias_regularizer_l1 must be >= 0 and finite"):
        layer.bias_regularizer_l1 = float("inf")
    assert layer.bias_regularizer_l1 == 0.0
    vars(layer)["bias_regularizer_l1"] = float("inf")
    with pytest.raises(ValueError, match="bias_regularizer_l1"):
        layer.backward(np.ones((4, 3), np.float32))


def test_the_overlap_check_reads_each_arrays_bytes():
    """``cpu.overlapping`` (the layers' direct backward path) and ``cpu.address`` read where an
    array's bytes start and end from the array itself: a view one element into another
    overlaps it, two halves of one buffer that only touch do not, and the address is numpy's."""
    from loopnet.backends import cpu

    buffer = np.zeros(24, np.float32)
    first, second = buffer[:12], buffer[12:]
    a, b, c, d, e = (np.zeros(3, np.float32) for _ in range(5))
    assert cpu.address(second) == second.ctypes.data == buffer.ctypes.data + 48
    assert not cpu.overlapping(first, second, a, b, c, d, e)
    assert cpu.overlapping(first, buffer[11:14], a, b, c, d, e)       # one shared float
    assert cpu.overlapping(a, b, c, d, e, first, c[2:])                # an output is read
    assert not cpu.overlapping(a, b, c, d, e, first, a[:0])            # empty: no bytes
    assert not cpu.overlapping(a, b, c, d, d, e, d[1:])                # sources may share


@pytest.mark.parametrize("host_device", HOST_DEVICES)
def test_dense_backward_refuses_one_buffer_for_two_gradients(host_device):
    """``dweights=`` and ``dinputs=`` given the same array (a square layer's gradients have one
    shape): a ValueError naming both, never one gradient written over the other."""
    shared = np.empty((4, 4))
    with pytest.raises(ValueError, match="dweights and dinputs buffers share memory"):
        ops.dense_backward(np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4)), dweights=shared,
                           dinputs=shared, device=host_device)
    dweights, _, dinputs = ops.dense_backward(np.ones((4, 4)), np.ones((4, 4)),
                                              2 * np.ones((4, 4)), dweights=shared,
                                              dinputs=np.empty((4, 4)), device=host_device)
    assert dweights is shared and np.array_equal(dweights, np.full((4, 4), 4.0))
    assert np.array_equal(dinputs, np.full((4, 4), 8.0))                # (sums of 4 terms)


def test_backward_shape_errors_name_the_shapes(device):
    with pytest.raises(ValueError, match=r"dvalues has shape \(4, 2\)"):
        ops.dense_backward(np.ones((4, 2)), np.ones((4, 3)), np.ones((3, 5)), device=device)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        ops.relu_backward(np.ones((3, 3)), np.ones((3, 4)), device=device)
    with pytest.raises(ValueError, match=r"y_true has shape \(3,\).*\(3, 2\)"):
        ops.mean_squared_error(np.ones((3, 2)), np.ones(3), device=device)
    with pytest.raises(ValueError, match="buffer has shape"):
        ops.relu_backward(np.ones(3), np.ones(3), out=np.empty(4), device=device)
    with pytest.raises(ValueError, match="class index 5"):
        ops.softmax_crossentropy_backward(np.full((2, 3), 1 / 3), [0, 5], device=device)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_a_layers_gradient_buffer_follows_a_change_of_dtype(device):
    """An activation or dropout layer reuses its last ``dinputs`` where it fits; when its input
    turns float64 between two steps (the layer before it given float64 weights) while the
    gradient coming back is still float32, the result is float64 and is computed afresh, the
    same bits as a fresh layer's, where the float32 buffer was handed to the op (a
    ``ValueError`` about an out buffer the learner never passed)."""
    import loopnet

    rng = np.random.default_rng(0)
    x32 = rng.normal(size=(5, 4)).astype(np.float32)
    d32 = rng.normal(size=(5, 4)).astype(np.float32)
    for make in (lambda: loopnet.ReLU(device=device), lambda: loopnet.Sigmoid(device=device),
                 lambda: loopnet.Softmax(device=device),
                 lambda: loopnet.Dropout(0.3, seed=1, device=device)):
        used, fresh = make(), make()
        used.forward(x32, training=True)
        used.backward(d32)
        used.forward(x32.astype(np.float64), training=True)
        used.backward(d32)
        fresh.forward(x32, training=True)       # (the dropout mask of the first step)
        fresh.forward(x32.astype(np.float64), training=True)
        fresh.backward(d32)
        assert used.dinputs.dtype == np.float64
        assert bits(used.dinputs) == bits(fresh.dinputs)


def test_a_step_out_of_order_names_what_is_missing():
    """A learner's call before the one that sets what it reads (``backward`` before any
    ``forward``, ``update_params`` before ``backward``) raises an ``AttributeError`` that says
    which call sets it, not Python's bare "no attribute"; ``hasattr`` and
    ``getattr(..., default)`` still see the attribute as missing, and a fresh layer copies and
    pickles as before."""
    import copy
    import pickle

    import loopnet

    dense = loopnet.Dense(2, 3, seed=0)
    for call, message in (
            (lambda: dense.backward(np.ones((4, 3), np.float32)),
             r"^Dense has no inputs yet; its forward\(\) sets them: run forward before backward$"),
            (lambda: loopnet.Adam().update_params(dense),
             r"^Dense has no dweights yet; its backward\(\) sets them: run backward before the "
             r"optimizer's update_params$"),
            (lambda: loopnet.ReLU().backward(np.ones((4, 3), np.float32)),
             r"^ReLU has no inputs yet"),
            (lambda: loopnet.Sigmoid().backward(np.ones((4, 3), np.float32)),
             r"^Sigmoid has no output yet; its forward\(\) sets it"),
            (lambda: loopnet.Dropout(0.1).backward(np.ones((4, 3), np.float32)),
             r"^Dropout has no binary_mask yet; its forward\(\) draws it: run forward before "
             r"backward$")):
        with pytest.raises(AttributeError, match=message):
            call()
    for optimizer in (loopnet.SGD(), loopnet.Adam()):   # not a trainable layer: a TypeError
        with pytest.raises(TypeError, match=r"^update_params takes a layer with weights and "
                                            r"biases \(a Dense\), got ReLU\(\), which has no "
                                            r"weights$"):
            optimizer.update_params(loopnet.ReLU())
    assert not hasattr(dense, "dweights") and getattr(dense, "output", "none") == "none"
    with pytest.raises(AttributeError, match=r"^'Dense' object has no attribute 'nothing'$"):
        dense.nothing
    for twin in (copy.deepcopy(dense), pickle.loads(pickle.dumps(dense))):
        assert bits(twin.weights) == bits(dense.weights) and not hasattr(twin, "inputs")


# --- A small layer's pass in one call: the cpu device's lanes ---------------------------------------
# (``loopnet.backends.cpu``, "A learner's dense layer in one compiled call a pass")

# Sides (n_samples, n_inputs, n_neurons) that take every lane: each forward form, each pair of
# backward forms a plan can name (FEW_INPUTS dweights never meets DOT_TILES dinputs, nor NARROW
# dweights a dot-product dinputs); the last reads weights from an aligned copy (600 rows).
LANE_SIDES = {(8, 2, 64): ("few-inputs", "few-inputs", "dot-plain"),
              (5, 1, 1): ("few-inputs", "few-inputs", "narrow"),
              (3, 5, 7): ("blocked", "blocked", "narrow"),
              (12, 20, 20): ("blocked", "blocked", "dot-tiles"),
              (6, 3, 17): ("blocked", "blocked", "dot-plain"),
              (20, 16, 4): ("blocked", "narrow", "narrow"),
              (50, 40, 3): ("dot-plain", "narrow", "narrow"),
              (8, 256, 5): ("dot-tiles", "narrow", "narrow"),
              (600, 2, 20): ("few-inputs", "few-inputs", "dot-plain")}


@pytest.fixture
def lanes(monkeypatch):
    """The cpu backend, its lanes made at their first call (here, whatever the compile helper
    does) and its record of lanes that refused an array fresh; ``lanes.ran`` counts the
    passes a lane computed."""
    from loopnet.backends import cpu, cpu_helper

    monkeypatch.setattr(cpu, "LANE_AFTER_ASKED", 1)
    monkeypatch.setattr(cpu, "_lanes_checked", set())
    # (on a cold cache the compile helper may be making a lane: made here all the same)
    monkeypatch.setattr(cpu_helper, "making", lambda job: False)
    ran = []
    for name in ("dense_forward_lane", "dense_backward_lane"):
        def spy(*args, _lane=getattr(cpu, name), _name=name):
            result = _lane(*args)
            if result is not None:
                ran.append(_name)
            return result
        monkeypatch.setattr(cpu, name, spy)
    cpu.ran = ran
    yield cpu
    del cpu.ran


def test_the_lanes_sides_take_every_lane():
    """``LANE_SIDES`` still reach the forms they are meant to, in float32 and float64 (a
    change of ``dense_plan``'s thresholds would otherwise leave a lane untested)."""
    from loopnet.backends import cpu
    from loopnet.kernels.dense_fast import FORM_NAMES

    for layer, (forward, dweights, dinputs) in LANE_SIDES.items():
        for double in (False, True):
            lane_forward, lane_backward, penalized = cpu._lane_forms(layer, double)
            assert FORM_NAMES[lane_forward] == forward, layer
            assert tuple(FORM_NAMES[form] for form in lane_backward) == (dweights,
                                                                           dinputs), layer
            assert penalized == lane_backward, layer


def _layer_steps(sides, dtype, penalized, steps=3):
    """A layer's forward and backward ``steps`` times (new dvalues each, the buffers reused):
    the bits of every output, gradient and dinputs."""
    import loopnet

    n_samples, n_inputs, n_neurons = sides
    rng = np.random.default_rng(11)
    penalties = dict(weight_regularizer_l1=0.01, weight_regularizer_l2=0.02,
                     bias_regularizer_l2=0.03) if penalized else {}
    layer = loopnet.Dense(n_inputs, n_neurons, seed=0, dtype=dtype, device="cpu", **penalties)
    layer.biases = rng.standard_normal((1, n_neurons)).astype(dtype)
    inputs = rng.standard_normal((n_samples, n_inputs)).astype(dtype)
    seen = []
    for _ in range(steps):
        layer.forward(inputs)
        layer.backward(rng.standard_normal((n_samples, n_neurons)).astype(dtype))
        seen += [bits(a) for a in (layer.output, layer.dweights, layer.dbiases, layer.dinputs)]
    return seen


@pytest.mark.parametrize("sides", list(LANE_SIDES))
@pytest.mark.parametrize("penalized", [False, True])
def test_a_layers_lanes_give_the_usual_paths_bits(sides, penalized, lanes, monkeypatch):
    """Every lane (float32; float64 for two sides) computes the bits of the usual path, which
    calls the same kernels one by one: forwards and backwards, with and without penalties,
    the buffers of one step reused by the next."""
    dtypes = [np.float32] + ([np.float64] if sides in ((8, 2, 64), (20, 16, 4)) else [])
    for dtype in dtypes:
        lanes.ran.clear()
        laned = _layer_steps(sides, dtype, penalized)
        # forwards 3; backwards 2 (the first has no buffers of its own yet)
        assert lanes.ran.count("dense_forward_lane") == 3
        assert lanes.ran.count("dense_backward_lane") == 2
        with monkeypatch.context() as usual:
            usual.setattr(lanes, "dense_forward_lane", lambda *args: None)
            usual.setattr(lanes, "dense_backward_lane", lambda *args: None)
            assert _layer_steps(sides, dtype, penalized) == laned


@settings(max_examples=40, deadline=None)
@given(n_samples=st.integers(1, 24), n_inputs=st.integers(1, 24), n_neurons=st.integers(1, 24),
       penalized=st.booleans())
def test_lanes_of_random_sides_give_the_usual_paths_bits(n_samples, n_inputs, n_neurons,
                                                         penalized):
    """Random small layers (whichever lanes their plans reach) give the usual path's bits."""
    from loopnet.backends import cpu

    sides = (n_samples, n_inputs, n_neurons)
    saved = (cpu.LANE_AFTER_ASKED, cpu.dense_forward_lane, cpu.dense_backward_lane)
    try:
        cpu.LANE_AFTER_ASKED = 1
        laned = _layer_steps(sides, np.float32, penalized, steps=2)
        cpu.dense_forward_lane = cpu.dense_backward_lane = lambda *args: None
        assert _layer_steps(sides, np.float32, penalized, steps=2) == laned
    finally:
        cpu.LANE_AFTER_ASKED, cpu.dense_forward_lane, cpu.dense_backward_lane = saved


def test_a_lane_hands_what_it_does_not_take_to_the_usual_path(lanes):
    """Arrays a lane's build does not take (strided, read-only, another dtype, 1-D biases,
    buffers of other shapes or sharing memory) get the usual path's results or errors; after a
    refusal the lane asks first (no numba TypeError at every step) and still runs for arrays
    it takes."""
    import loopnet

    rng = np.random.default_rng(3)
    layer = loopnet.Dense(3, 5, weight_regularizer_l2=0.01, seed=0, device="cpu")
    x = rng.standard_normal((4, 3)).astype(np.float32)
    d = rng.standard_normal((4, 5)).astype(np.float32)
    layer.forward(x)
    layer.backward(d)
    w = layer.weights.copy()

    def expected(dvalues):
        dvalues = np.asarray(dvalues, np.float64)
        return (x.T @ dvalues + 2 * 0.01 * w, dvalues.sum(axis=0, keepdims=True),
                dvalues @ w.T)

    def check(dvalues, what):
        layer.backward(dvalues)
        for got, want, name in zip((layer.dweights, layer.dbiases, layer.dinputs),
                                   expected(dvalues), ("dweights", "dbiases", "dinputs")):
            # float32 sums of 4-5 terms of magnitude ~1-3: 1e-5 is ~10 ulps of each
            assert_within(got, want, 1e-5, f"{name} ({what})")

    lanes.ran.clear()
    check(d, "taken")
    assert lanes.ran == ["dense_backward_lane"]
    wide = np.zeros((4, 10), np.float32)
    wide[:, ::2] = d
    lanes.ran.clear()
    check(wide[:, ::2], "strided dvalues")
    assert lanes.ran == [] and len(lanes._lanes_checked) == 1       # refused, then asks first
    read_only = d.copy()
    read_only.flags.writeable = False
    check(read_only, "read-only dvalues")
    layer.dweights.flags.writeable = False          # (its own buffer, made read-only)
    check(d, "read-only dweights buffer")
    assert layer.dweights.flags.writeable           # (a new one)
    check(d.astype(np.float64), "float64 dvalues")
    layer.dinputs = layer.dweights[:4, :3]          # (a buffer of another shape, and strided)
    check(d, "a strided buffer")
    layer.dinputs = np.zeros((4, 3), np.float32)
    layer.dbiases = layer.dinputs[:1]               # (buffers sharing memory)
    layer.dbiases = np.zeros((1, 5), np.float32)
    layer.dinputs = layer.dbiases.reshape(-1)[:3].reshape(1, 3)
    check(d, "buffers sharing memory")
    lanes.ran.clear()
    check(d, "taken again")
    assert lanes.ran == ["dense_backward_lane"]
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        layer.backward(np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"shapes \(4, 2\) and \(3, 5\) not aligned"):
        layer.forward(np.ones((4, 2), np.float32))
    # the forward's 1-D biases: the usual path, never a refusal
    biases = rng.standard_normal(5).astype(np.float32)
    for _ in range(3):
        out = ops.dense_forward(x, layer.weights, biases, device="cpu")
        assert_within(out, x.astype(np.float64) @ layer.weights + biases, 1e-5, "1-D biases")
    assert len(lanes._lanes_checked) == 1
