"""Every number printed in the notes (chapters 1-5 of "Neural Networks from Scratch"),
computed by loopnet on every device.

The expected values are copied from the notes' printed outputs, never recomputed. How precise
each printed number is decides part of its tolerance:

- Python prints a float with its shortest round-trip repr: exact (``35.7``, ``0.38506088005216804``).
- numpy prints float64 arrays with 8 digits after the decimal point (``0.5031``, ``8.95282664e-01``):
  the printed value is within half a unit of the 8th digit (``PRINTED``, absolute or relative).
- numpy prints float32 values with their shortest round-trip repr: exact float32 values.

The other part is the float rounding of the computation itself (``helpers.sum_tolerance``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import loopnet
from helpers import dense_tolerance, eps, log_rtol, softmax_rtol, sum_tolerance
from loopnet import ops

# numpy's default print precision: 8 digits after the decimal point (of the mantissa in
# scientific notation), so a printed number is within half a unit of the 8th digit.
PRINTED = 0.5e-8

INPUTS = [1, 2, 3, 2.5]
WEIGHTS = [[0.2, 0.8, -0.5, 1.0],       # the notes write one row per neuron: (n_neurons, n_inputs)
           [0.5, -0.91, 0.26, -0.5],
           [-0.26, -0.27, 0.17, 0.87]]
BIASES = [2, 3, 0.5]
BATCH = [[1, 2, 3, 2.5],
         [2.0, 5.0, -1.0, 2.0],
         [-1.5, 2.7, 3.3, -0.8]]
LAYER_OUTPUTS = [4.8, 1.21, 2.385]
BATCH_OUTPUTS = [[4.8, 1.21, 2.385], [8.9, -1.81, 0.2], [1.41, 1.051, 0.026]]


def host(x) -> np.ndarray:
    """A device's result as a numpy array (cuda results live on the GPU)."""
    return np.asarray(ops.to_numpy(x))


def propagated(tol_in, weights) -> np.ndarray:
    """Error of ``inputs @ weights`` caused by errors ``tol_in`` already in the inputs."""
    return np.dot(np.asarray(tol_in, np.float64), np.abs(np.asarray(weights, np.float64)))


# --- Single neurons (In [30], [31], [44]) -------------------------------------------------------

@pytest.mark.parametrize("inputs, weights, bias, printed", [
    ([1.2, 5.1, 2.1], [3.1, 2.1, 8.7], 3, 35.7),
    ([1, 2, 3], [0.2, 0.8, -0.5], 2, 2.3),
    ([1, 2, 3, 2.5], [0.2, 0.8, -0.5, 1.0], 2, 4.8),
])
def test_single_neuron(device, inputs, weights, bias, printed):
    """One sample into one neuron gives a scalar, as ``np.dot(inputs, weights) + bias`` does."""
    output = host(ops.dense_forward(inputs, weights, bias, device=device))
    assert output.shape == ()
    assert output.dtype == np.float64                      # lists of Python numbers -> float64
    tol = dense_tolerance(inputs, weights, bias, np.float64)
    assert abs(float(output) - printed) <= tol


# --- One layer (In [29], [33], [45]) ------------------------------------------------------------

def test_layer_neuron_by_neuron(device):
    """In [29]: each neuron written out separately -> [4.8, 1.21, 2.385]."""
    outputs = [float(host(ops.dense_forward(INPUTS, neuron_weights, neuron_bias, device=device)))
               for neuron_weights, neuron_bias in zip(WEIGHTS, BIASES)]
    tol = dense_tolerance(INPUTS, np.array(WEIGHTS).T, BIASES, np.float64)
    assert np.all(np.abs(np.array(outputs) - LAYER_OUTPUTS) <= tol)


def test_layer_zip_loop_and_dot(device):
    """In [33]/[45]: the layer in one call (weights transposed to (n_inputs, n_neurons)), and
    as a ``Layer_Dense`` whose weights are set to the notes' -> [4.8, 1.21, 2.385]."""
    weights = np.array(WEIGHTS).T
    tol = dense_tolerance(INPUTS, weights, BIASES, np.float64)
    output = host(ops.dense_forward(INPUTS, weights, BIASES, device=device))
    assert output.shape == (3,)
    assert np.all(np.abs(output - LAYER_OUTPUTS) <= tol)

    layer = loopnet.Dense(4, 3, dtype=np.float64, device=device)
    layer.set_parameters(weights, BIASES)
    assert np.all(np.abs(host(layer.forward(INPUTS)) - LAYER_OUTPUTS) <= tol)


def test_kernel_zip_loop_gives_the_layer():
    """The literal zip-loop kernel (run as Python) reproduces In [33]'s layer_outputs."""
    from loopnet.kernels.dense import dense_forward_notes

    weights = np.array(WEIGHTS).T
    output = np.empty((1, 3))
    dense_forward_notes(np.array([INPUTS], float), weights, np.array(BIASES, float), output)
    tol = dense_tolerance(INPUTS, weights, BIASES, np.float64)
    assert np.all(np.abs(output[0] - LAYER_OUTPUTS) <= tol)


# --- Batches, the transpose, two layers (In [51], [50], [56]) -----------------------------------

def test_batch_without_transpose_is_the_notes_error(device):
    """In [51]: weights (3, 4) against inputs (3, 4) -> numpy's own words."""
    message = "shapes (3, 4) and (3, 4) not aligned: 4 (dim 1) != 3 (dim 0)"
    with pytest.raises(ValueError) as numpy_error:
        np.dot(np.array(BATCH), np.array(WEIGHTS))
    with pytest.raises(ValueError) as our_error:
        ops.dense_forward(BATCH, WEIGHTS, BIASES, device=device)
    assert str(our_error.value) == message
    # numpy spells it the same way (modulo the space after the comma in some versions).
    assert str(numpy_error.value).replace(" ", "") == message.replace(" ", "")


def test_batch_with_transpose(device):
    """In [50]: ``np.array(weights).T`` (a non-contiguous view, passed as is) -> the 3x3 batch."""
    weights = np.array(WEIGHTS).T
    assert not weights.flags.c_contiguous
    output = host(ops.dense_forward(BATCH, weights, BIASES, device=device))
    tol = dense_tolerance(BATCH, weights, BIASES, np.float64) + PRINTED
    assert output.shape == (3, 3)
    assert np.all(np.abs(output - BATCH_OUTPUTS) <= tol)


def test_two_layers(device):
    """In [56]: a second layer on the first layer's output."""
    weights1 = np.array(WEIGHTS).T
    weights2 = np.array([[0.1, -0.14, 0.5], [-0.5, 0.12, -0.33], [-0.44, 0.73, -0.13]]).T
    biases2 = [-1, 2, -0.5]
    layer1_outputs = host(ops.dense_forward(BATCH, weights1, BIASES, device=device))
    layer2_outputs = host(ops.dense_forward(layer1_outputs, weights2, biases2, device=device))
    printed = [[0.5031, -1.04185, -2.03875],
               [0.2434, -2.7332, -5.7633],
               [-0.99314, 1.41254, -0.35655]]
    tol1 = dense_tolerance(BATCH, weights1, BIASES, np.float64)
    tol2 = (dense_tolerance(layer1_outputs, weights2, biases2, np.float64)
            + propagated(tol1, weights2) + PRINTED)
    assert np.all(np.abs(layer2_outputs - printed) <= tol2)


# --- The seeded Layer_Dense class (In [64]) -----------------------------------------------------

SEEDED_OUTPUT = [[0.148296, -0.08397602],
                 [0.14100315, -0.01340469],
                 [0.20124979, -0.07290616]]


def _seeded_two_layers(dtype, device):
    """The notes' cell, with the device chosen by the context manager."""
    from loopnet.nnfs import Layer_Dense

    np.random.seed(0)
    with loopnet.device(device):
        layer1 = Layer_Dense(4, 5, dtype=dtype)
        layer2 = Layer_Dense(5, 2, dtype=dtype)
        layer1.forward(BATCH)
        layer2.forward(layer1.output)
    return layer1, layer2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seeded_layer_dense(device, dtype):
    """``np.random.seed(0)``, ``Layer_Dense(4, 5)``, ``Layer_Dense(5, 2)`` -> the notes' 3x2.

    float32 (the default) stores the float64 draws rounded to float32 (one more half-ulp per
    weight, counted as a term by ``sum_tolerance``); the error of layer 1 carries into layer 2.
    """
    layer1, layer2 = _seeded_two_layers(dtype, device)
    output = host(layer2.output)
    assert output.dtype == dtype
    # A layer made under a GPU device keeps its parameters there: read them on the host.
    weights1, biases1 = host(layer1.weights), host(layer1.biases)
    weights2, biases2 = host(layer2.weights), host(layer2.biases)
    assert biases1.shape == (1, 5) and not biases1.any()
    tol1 = dense_tolerance(BATCH, weights1, biases1, dtype)
    tol2 = (dense_tolerance(host(layer1.output), weights2, biases2, dtype)
            + propagated(tol1, weights2) + PRINTED)
    assert np.all(np.abs(output - SEEDED_OUTPUT) <= tol2), (output, tol2)


def test_seeded_layer_dense_explicit_seed_leaves_global_rng_alone(device):
    """``seed=0`` draws what ``np.random.seed(0)`` would, without touching the global RNG."""
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    weights = loopnet.Dense(4, 5, seed=0, device=device).weights
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(0)
    assert np.array_equal(weights, loopnet.Dense(4, 5, device=device).weights)


# --- Softmax (In [83], [86], [89], [101], [103]) ------------------------------------------------

def test_softmax_of_the_layer_outputs(device):
    """[0.8952826639572619, 0.024708306782099374, 0.0800090292606387], summing to 1."""
    norm_values = host(ops.softmax_forward(LAYER_OUTPUTS, device=device))
    printed = [0.8952826639572619, 0.024708306782099374, 0.0800090292606387]
    rtol = softmax_rtol(3, np.float64)
    assert np.all(np.abs(norm_values - printed) <= rtol * np.abs(printed))
    # The numpy cell prints the same at 8 decimals.
    assert np.all(np.abs(norm_values - [0.89528266, 0.02470831, 0.08000903]) <= PRINTED + 1e-15)
    assert abs(norm_values.sum() - 1) <= rtol


def test_exp_values_and_norm_bases(device):
    """exp values [121.51..., 3.35..., 10.85...] and norm_bases [135.72..., 7333.35..., 7.98...].

    The loop softmax never shows its exponentials, but a class scored exactly 0 reveals them:
    with an extra 0 in the row, ``p_j / p_zero = exp(x_j) / exp(0) = exp(x_j)`` and
    ``1 / p_zero - 1 = sum_j exp(x_j)``, the notes' norm_base.
    """
    rows = np.array(BATCH_OUTPUTS)
    with_zero = np.hstack([rows, np.zeros((3, 1))])
    probs = host(ops.softmax_forward(with_zero, device=device))
    exp_values = probs[:, :3] / probs[:, 3:]
    norm_bases = 1 / probs[:, 3] - 1
    rtol = 2 * softmax_rtol(4, np.float64)      # a ratio of two softmax outputs: errors add
    printed_exp = [121.51041751873483, 3.353484652549023, 10.859062664920513]
    assert np.all(np.abs(exp_values[0] - printed_exp) <= rtol * np.abs(printed_exp))
    printed_bases = [135.72296484, 7333.35859605, 7.98280655]
    # 1/p - 1 magnifies p's relative error by (base + 1) / base.
    tol = rtol * (np.array(printed_bases) + 1) + PRINTED
    assert np.all(np.abs(norm_bases - printed_bases) <= tol)


def test_batch_softmax(device):
    """In [103]: the three rows, each summing to 1."""
    norm_values = host(ops.softmax_forward(BATCH_OUTPUTS, device=device))
    printed = np.array([[8.95282664e-01, 2.47083068e-02, 8.00090293e-02],
                        [9.99811129e-01, 2.23163963e-05, 1.66554348e-04],
                        [5.13097164e-01, 3.58333899e-01, 1.28568936e-01]])
    # Scientific notation: 8 digits after the mantissa's point, i.e. relative to the value.
    tol = (softmax_rtol(3, np.float64) + PRINTED) * np.abs(printed)
    assert np.all(np.abs(norm_values - printed) <= tol)
    assert np.all(np.abs(norm_values.sum(axis=1) - 1) <= softmax_rtol(3, np.float64))


# --- The toy loss (In [111]) --------------------------------------------------------------------

SOFTMAX_OUTPUTS = [[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]]
CLASS_TARGETS = [0, 1, 1]


@pytest.mark.parametrize("y_true", [CLASS_TARGETS, np.eye(3)[CLASS_TARGETS]],
                         ids=["indices", "one-hot"])
def test_toy_loss(device, y_true):
    """[0.35667494 0.69314718 0.10536052] and their mean 0.38506088005216804."""
    sample_losses = host(ops.categorical_crossentropy(SOFTMAX_OUTPUTS, y_true, device=device))
    printed = [0.35667494, 0.69314718, 0.10536052]
    assert np.all(np.abs(sample_losses - printed) <= PRINTED + log_rtol(np.float64))
    # One sample is -log(0.7) = 0.3566 (the notes' one-hot example, cut after 4 decimals).
    assert 0 <= sample_losses[0] - 0.3566 < 1e-4
    rtol = log_rtol(np.float64) + 3 * eps(np.float64)    # the logs, then a mean of 3 terms
    assert abs(ops.mean(sample_losses, device=device) - 0.38506088005216804) <= rtol
    from loopnet.nnfs import Loss_CategoricalCrossEntropy

    loss = Loss_CategoricalCrossEntropy(device=device).calculate(
        np.array(SOFTMAX_OUTPUTS), np.array(y_true))
    assert isinstance(loss, float)
    assert abs(loss - 0.38506088005216804) <= rtol


# --- The spiral-data forward passes, after nnfs.init() (In [77], [108], [118]) ------------------
#
# nnfs.init() patches np.dot, np.zeros, np.eye and np.random.randn for the whole process, so the
# notes' code runs in a child process: the notes' cells with their class definitions replaced by
# `from loopnet.nnfs import *`, the device picked by LOOPNET_DEVICE alone.

NOTES_PROGRAM = textwrap.dedent("""
    import json
    import numpy as np
    import nnfs
    from nnfs.datasets import spiral_data
    import loopnet
    from loopnet.nnfs import *

    def listed(a):
        return np.asarray(loopnet.to_numpy(a), dtype=np.float64).tolist()

    result = {"device": loopnet.get_device()}

    # In [77]
    nnfs.init()
    X, y = spiral_data(100, 3)
    layer1 = Layer_Dense(2, 5)
    activation1 = Activation_ReLU()
    layer1.forward(X)
    activation1.forward(layer1.output)
    result["relu"] = listed(activation1.output)
    result["relu_dtype"] = str(loopnet.to_numpy(activation1.output).dtype)
    result["relu_X"] = listed(X)
    result["relu_weights"] = listed(layer1.weights)

    # loopnet.datasets gives the same data as nnfs.datasets, also after nnfs.init()
    nnfs.init()
    X_nnfs, y_nnfs = spiral_data(100, 3)
    nnfs.init()
    X_ours, y_ours = loopnet.datasets.spiral_data(100, 3)
    result["same_data"] = bool(np.array_equal(X_nnfs, X_ours) and np.array_equal(y_nnfs, y_ours)
                               and X_nnfs.dtype == X_ours.dtype)

    # In [108] and In [118] (the same network, then the loss)
    nnfs.init()
    X, y = spiral_data(100, 3)
    dense1 = Layer_Dense(2, 3)
    activation1 = Activation_ReLU()
    dense2 = Layer_Dense(3, 3)
    activation2 = Activation_Softmax()
    dense1.forward(X)
    activation1.forward(dense1.output)
    dense2.forward(activation1.output)
    activation2.forward(dense2.output)
    loss_function = Loss_CategoricalCrossEntropy()
    loss = loss_function.calculate(activation2.output, y)
    result["softmax"] = listed(activation2.output)
    result["X"] = listed(X)
    result["y"] = np.asarray(y).tolist()
    result["weights1"] = listed(dense1.weights)
    result["weights2"] = listed(dense2.weights)
    result["hidden"] = listed(activation1.output)
    result["loss"] = float(loss)
    print(json.dumps(result))
""")

RELU_FIRST_ROWS = [[0.00000000e+00, 0.00000000e+00, 0.00000000e+00, 0.00000000e+00, 0.00000000e+00],
                   [0.00000000e+00, 0.00000000e+00, 0.00000000e+00, 4.65504505e-04, 4.56846210e-05],
                   [0.00000000e+00, 5.93469958e-05, 0.00000000e+00, 2.03573116e-04, 6.10024377e-04]]
RELU_LAST_ROWS = [[1.13291524e-01, 0.00000000e+00, 0.00000000e+00, 8.11079666e-02, 0.00000000e+00],
                  [1.34588361e-01, 0.00000000e+00, 3.09493970e-02, 5.66337556e-02, 0.00000000e+00],
                  [1.07817926e-01, 0.00000000e+00, 0.00000000e+00, 8.72561932e-02, 0.00000000e+00]]
SOFTMAX_FIRST_ROWS = [[0.33333334, 0.33333334, 0.33333334],
                      [0.33331734, 0.3333183, 0.33336434],
                      [0.3332888, 0.33329153, 0.33341965],
                      [0.33325943, 0.33326396, 0.33347666],
                      [0.33323312, 0.33323926, 0.33352762]]
SPIRAL_LOSS = 1.098445

_runs: dict[str, dict] = {}


@pytest.fixture(scope="session")
def notes_run(device) -> dict:
    """The notes' spiral cells run once per device in a fresh process."""
    if device not in _runs:
        env = {**os.environ, "LOOPNET_DEVICE": device}
        proc = subprocess.run([sys.executable, "-c", NOTES_PROGRAM], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        _runs[device] = json.loads(proc.stdout.strip().splitlines()[-1])
    return _runs[device]


def test_spiral_run_used_the_device(notes_run, device):
    assert notes_run["device"] == device
    assert notes_run["same_data"]


def test_spiral_relu_rows(notes_run):
    """In [77]: the first and last three rows of ReLU(Layer_Dense(2, 5)(X)), float32.

    The notes' (nnfs-patched) np.dot sums the 2 products in float64 and rounds once to
    float32; loopnet sums them in float32: within ``sum_tolerance`` of 2 terms (+ the zero
    bias), on the notes' 8-digit mantissas.
    """
    relu = np.array(notes_run["relu"])
    assert notes_run["relu_dtype"] == "float32"
    assert relu.shape == (300, 5)
    tol = dense_tolerance(notes_run["relu_X"], notes_run["relu_weights"], 0.0, np.float32)
    printed = np.array(RELU_FIRST_ROWS + RELU_LAST_ROWS)
    shown = np.vstack([relu[:3], relu[-3:]])
    tol = np.vstack([tol[:3], tol[-3:]]) + PRINTED * np.abs(printed)
    assert np.all(np.abs(shown - printed) <= tol), (shown, printed)
    # Where the notes print 0 and the pre-activation is clearly negative, ReLU gives exactly 0.
    assert np.all(shown[printed == 0] == 0)


def _spiral_logit_error(run) -> np.ndarray:
    """Bound on the error of dense2's outputs (the softmax inputs) in float32."""
    X, w1, w2 = (np.array(run[k]) for k in ("X", "weights1", "weights2"))
    hidden = np.array(run["hidden"])
    tol_hidden = dense_tolerance(X, w1, 0.0, np.float32)       # ReLU only shrinks errors
    return dense_tolerance(hidden, w2, 0.0, np.float32) + propagated(tol_hidden, w2)


def test_spiral_softmax_rows(notes_run):
    """In [108]: ``activation2.output[:5]``.

    Relative error of ``p_j = exp(z_j) / sum_k exp(z_k)`` is at most ``2 max|dz|`` from the
    logits' error plus the softmax's own rounding (``softmax_rtol``); the notes print float32
    shortest reprs, i.e. exact float32 values.
    """
    softmax = np.array(notes_run["softmax"])
    logit_error = _spiral_logit_error(notes_run).max(axis=1, keepdims=True)
    rtol = 2 * logit_error[:5] + softmax_rtol(3, np.float32)
    printed = np.array(SOFTMAX_FIRST_ROWS)
    assert np.all(np.abs(softmax[:5] - printed) <= rtol * printed), (softmax[:5], printed)


def test_spiral_loss(notes_run):
    """In [118]: the loss 1.098445.

    Each sample's ``-log(p)`` is off by at most p's relative error (d(-log p) = dp / p). The
    notes' own value is a float32 ``np.mean`` of 300 terms: by ``sum_tolerance`` within
    ``2 * 301 * eps32 * mean`` of the exact mean. Both errors are allowed.
    """
    softmax = np.array(notes_run["softmax"])
    y = np.array(notes_run["y"])
    per_sample = 2 * _spiral_logit_error(notes_run).max(axis=1) + softmax_rtol(3, np.float32)
    per_sample += log_rtol(np.float32) * -np.log(softmax[np.arange(len(y)), y])
    notes_mean_error = sum_tolerance(len(y), SPIRAL_LOSS, np.float32)
    tol = per_sample.mean() + notes_mean_error
    assert abs(notes_run["loss"] - SPIRAL_LOSS) <= tol, (notes_run["loss"], tol)
    assert math.isfinite(notes_run["loss"])


# --- The datasets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, args", [("spiral_data", (100, 3)), ("vertical_data", (50, 4)),
                                        ("sine_data", (1000,))])
def test_datasets_match_nnfs(name, args):
    """Under the same global seed, loopnet.datasets draws exactly what nnfs.datasets draws."""
    import nnfs.datasets

    theirs_fn = getattr(nnfs.datasets, name)
    ours_fn = getattr(loopnet.datasets, name)
    np.random.seed(7)
    X_theirs, y_theirs = theirs_fn(*args)
    np.random.seed(7)
    X_ours, y_ours = ours_fn(*args, dtype=np.float64)
    assert np.array_equal(X_ours, X_theirs) and np.array_equal(y_ours, y_theirs)
    assert y_ours.dtype == y_theirs.dtype
    np.random.seed(7)
    X32, _ = ours_fn(*args)                                   # default dtype float32
    assert X32.dtype == np.float32 and np.array_equal(X32, X_theirs.astype(np.float32))


@pytest.mark.parametrize("name", ["spiral_data", "vertical_data"])
def test_dataset_seed_leaves_global_rng_alone(name):
    """``seed=`` draws from a private RandomState: same data as seeding the global one, and
    the global state is untouched."""
    import nnfs.datasets

    np.random.seed(11)
    state = np.random.get_state()
    X_seeded, y_seeded = getattr(loopnet.datasets, name)(20, 3, seed=5, dtype=np.float64)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    np.random.seed(5)
    X_theirs, y_theirs = getattr(nnfs.datasets, name)(20, 3)
    assert np.array_equal(X_seeded, X_theirs) and np.array_equal(y_seeded, y_theirs)


def test_nnfs_names_and_no_nnfs_init():
    """``loopnet.nnfs`` exports the notes' class names (both spellings of the loss), and using
    loopnet never calls ``nnfs.init()`` (which would make numpy's defaults float32)."""
    import loopnet.nnfs as notes_names

    assert set(notes_names.__all__) >= {
        "Layer_Dense", "Activation_ReLU", "Activation_Softmax", "Loss",
        "Loss_CategoricalCrossentropy", "Loss_CategoricalCrossEntropy"}
    assert notes_names.Loss_CategoricalCrossEntropy is notes_names.Loss_CategoricalCrossentropy
    assert issubclass(notes_names.Loss_CategoricalCrossentropy, notes_names.Loss)
    X, y = loopnet.datasets.spiral_data(10, 3)
    notes_names.Layer_Dense(2, 3).forward(X)
    assert np.zeros(1).dtype == np.float64 and np.random.randn(1).dtype == np.float64
    assert np.dot(np.ones(2), np.ones(2)).dtype == np.float64
