"""The compiled training step: whole epochs of any model ``Model`` builds, in one compiled call.

Index legend: s = sample (row of a batch), k = flat element index, l = layer, j = output column.

``Model.train`` on the ``cpu`` device turns the model into a small *layer program* (one row of
integers per layer: its kind, its sizes, where its arrays live) and hands it, with every array
the run needs, to ``train_block``. That one function runs a block of epochs: per step it gathers
a batch, runs each layer's forward, the loss and the accuracy, the regularization penalty, each
layer's backward and the optimizer's update; after each epoch it can run the validation data
forward. Every stage calls the very bodies the layered ops run (``dense_fast``'s kernels,
``relu_element``, ``softmax_row``, ``crossentropy_sample``, ``adam_param`` ...), so the two paths
compute the same numbers, and one compiled function (per dtype, and per build below) serves
every model: a second model shape compiles nothing new.

Memory, as llm.c keeps it: every parameter of the model lives in one flat buffer ``params``, at
the offsets the program names, and so do its gradients (``grads``) and the optimizer's state
(``state_1``, ``state_2``): the update is one loop over one buffer. Each layer's output and the
gradient with respect to it live in ``acts`` and ``dacts`` (one ``batch_size x width`` block
per layer); scratch for the dense forms (packed transposes, panels) in ``packed`` and
``scratch``. All are allocated once per ``Model.train`` call by ``loopnet.compiled``.

Builds (``build``, compiled by ``loopnet.backends.cpu.training_step``): the function is one,
but a model uses only some of its branches (one loss, one optimizer, a few layer kinds and
dense forms), and numba drops a branch on a constant before it types it. So each ``Build`` -
which loss, accuracy and optimizer, which layer kinds and dense forms, serial or parallel - is
a copy of this module's functions whose constants (``BUILD``, below) say so: it compiles only
what such models run (a cold compile of a few seconds rather than of every branch), and every
model of the same kinds, whatever its sizes, runs the same compiled (and cached) build. The
serial builds run ``prange`` as ``range``: for small models waking threads costs more than the
work; the parallel ones share out every loop of the step.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import prange
from numba.extending import register_jitable

from loopnet.kernels import dense_fast as fast
from loopnet.kernels.dense_fast import (dense_backward_inputs_narrow,
                                        dense_backward_weights_blocked,
                                        dense_backward_weights_narrow, dense_forward_blocked,
                                        dense_nt_tiled, dense_tn_tiled, transpose_tiled)
from loopnet.kernels.activations import (relu_backward_element, relu_element,
                                         sigmoid_backward_element, sigmoid_element,
                                         softmax_backward_row, softmax_row)
from loopnet.kernels.dense import dbiases_sum
from loopnet.kernels.losses import (absolute_error_backward_row, absolute_error_sample,
                                    accuracy_sample, binary_accuracy_element,
                                    binary_crossentropy_backward_row, binary_crossentropy_sample,
                                    crossentropy_backward_row, crossentropy_sample,
                                    regression_accuracy_element, softmax_crossentropy_backward_row,
                                    squared_error_backward_row, squared_error_sample)
from loopnet.kernels.optimizers import (adagrad_param, adam_param, rmsprop_param,
                                        sgd_momentum_param, sgd_param)
from loopnet.kernels.regularization import dropout_mask_row, mask_element, penalty_gradient_element


# --- The layer program: program[l, field] ------------------------------------------------------
KIND = 0        # DENSE, RELU, ...
WIDTH_IN = 1    # columns of the layer's input
WIDTH = 2       # columns of its output
OUT = 3         # offset of its output block in acts (and of the output's gradient in dacts)
IN = 4          # offset of its input block (-1: the batch of X itself)
WEIGHTS = 5     # DENSE: offset of weights (WIDTH_IN x WIDTH) in params; biases follow them
PACKED = 6      # DENSE: offset of weights.T in packed (-1: no form of this layer reads it)
NEEDS_DINPUTS = 7  # 1 when a layer before this one has parameters (the gradient goes on)
SEED = 8        # DROPOUT: the seed; its step counter (batches seen) is STEP, updated in place
STEP = 9
MASK = 10       # DROPOUT: offset of its mask block in scratch
N_FIELDS = 11

DENSE, RELU, SIGMOID, LINEAR, SOFTMAX, DROPOUT = 1, 2, 3, 4, 5, 6

# floats[l, ...]: a dense layer's penalties, a dropout layer's rate
L1_WEIGHTS, L2_WEIGHTS, L1_BIASES, L2_BIASES, RATE = range(5)
N_FLOATS = 5

# plans[l, batch kind, ...]: dense_plan's forms and parallel flags for each batch size the run
# meets: full and last training batch, full and last validation batch
TRAIN_FULL, TRAIN_LAST, VAL_FULL, VAL_LAST = range(4)
FORWARD_FORM, FORWARD_PARALLEL, DWEIGHTS_FORM, DWEIGHTS_PARALLEL, DINPUTS_FORM, \
    DINPUTS_PARALLEL = range(6)

# settings[...] (int64): what the model is, where its scratch lives, and the optimizer's step
# count (updated in place). scratch holds, from offset 0, the broadcast form's panels, then at
# these offsets the narrow dweights' transposed scratch, the per-sample losses and the correct
# flags of a batch, and each dropout layer's mask (program[l, MASK])
LOSS, ACCURACY, OPTIMIZER, ITERATIONS, FUSED_SOFTMAX, N_PARAMS, PARALLEL_MIN_ELEMENTS, \
    DWEIGHTS_T, SAMPLE_LOSSES, CORRECT, N_SETTINGS = range(11)
NO_LOSS = -1
CATEGORICAL_CROSSENTROPY, BINARY_CROSSENTROPY, MEAN_SQUARED_ERROR, MEAN_ABSOLUTE_ERROR = range(4)
NO_ACCURACY, CATEGORICAL_ACCURACY, BINARY_ACCURACY, REGRESSION_ACCURACY = range(4)
SGD, SGD_MOMENTUM, ADAGRAD, RMSPROP, ADAM = range(5)

# hyper[...] (float64): the optimizer's hyper-parameters and the regression accuracy's precision
LEARNING_RATE, CURRENT_LEARNING_RATE, DECAY, EPSILON, BETA_1, BETA_2, MOMENTUM, RHO, \
    PRECISION, N_HYPER = range(10)

# step_log[global step, ...] and epoch_log[epoch, ...] (float64), read by loopnet.compiled
STEP_DATA_LOSS, STEP_ACCURACY, STEP_REGULARIZATION, STEP_LEARNING_RATE, N_STEP_LOG = range(5)
EPOCH_REGULARIZATION, EPOCH_VAL_LOSS, EPOCH_VAL_ACCURACY, N_EPOCH_LOG = range(4)


class Build(NamedTuple):
    """What one build of ``train_block`` can run (``loopnet.compiled`` picks it per model)."""

    loss: int               # CATEGORICAL_CROSSENTROPY ... or NO_LOSS (predict only)
    accuracy: int           # NO_ACCURACY, CATEGORICAL_ACCURACY ...
    optimizer: int          # SGD ... or -1 (evaluate / predict only)
    fused_softmax: bool     # the softmax + cross-entropy gradient in one (model ends in Softmax)
    layers: frozenset       # the layer kinds besides DENSE and LINEAR (RELU, SIGMOID ...)
    forward_forms: frozenset     # dense_fast's forms of the forward products
    dweights_forms: frozenset    # ... of dweights
    dinputs_forms: frozenset     # ... of dinputs
    parallel: bool

    def name(self) -> str:
        """A short, stable name for the build (numba names its cache files after it)."""
        import hashlib

        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


# Every branch: one build for any model (``loopnet.compiled``'s LOOPNET_STEP_BUILD=full)
ANY = -2
FULL = Build(ANY, ANY, ANY, True, frozenset((RELU, SIGMOID, SOFTMAX, DROPOUT)),
             frozenset((0, 2, 3)), frozenset((0, 1, 3)), frozenset((1, 2, 3)), False)

# What the functions below are compiled for, as constants numba folds (``build`` gives each
# build its own): as written here, uncompiled, everything. A branch behind a False is dropped.
USE_CATEGORICAL_CROSSENTROPY = USE_BINARY_CROSSENTROPY = True
USE_MEAN_SQUARED_ERROR = USE_MEAN_ABSOLUTE_ERROR = True
USE_CATEGORICAL_ACCURACY = USE_BINARY_ACCURACY = USE_REGRESSION_ACCURACY = True
USE_SGD = USE_SGD_MOMENTUM = USE_ADAGRAD = USE_RMSPROP = USE_ADAM = True
USE_FUSED_SOFTMAX = USE_RELU = USE_SIGMOID = USE_SOFTMAX = USE_DROPOUT = True
FORWARD_BLOCKED = FORWARD_DOT = FORWARD_BROADCAST = True
DWEIGHTS_BLOCKED = DWEIGHTS_NARROW = DWEIGHTS_BROADCAST = True
DINPUTS_NARROW = DINPUTS_DOT = DINPUTS_BROADCAST = True
TRAINING = True
FLAGS = ("USE_CATEGORICAL_CROSSENTROPY", "USE_BINARY_CROSSENTROPY", "USE_MEAN_SQUARED_ERROR",
         "USE_MEAN_ABSOLUTE_ERROR", "USE_CATEGORICAL_ACCURACY", "USE_BINARY_ACCURACY",
         "USE_REGRESSION_ACCURACY", "USE_SGD", "USE_SGD_MOMENTUM", "USE_ADAGRAD", "USE_RMSPROP",
         "USE_ADAM", "USE_FUSED_SOFTMAX", "USE_RELU", "USE_SIGMOID", "USE_SOFTMAX", "USE_DROPOUT",
         "FORWARD_BLOCKED", "FORWARD_DOT", "FORWARD_BROADCAST", "DWEIGHTS_BLOCKED",
         "DWEIGHTS_NARROW", "DWEIGHTS_BROADCAST", "DINPUTS_NARROW", "DINPUTS_DOT",
         "DINPUTS_BROADCAST", "TRAINING")


def constants(build: Build) -> dict:
    """The constants above for ``build``."""
    forms = {"FORWARD": build.forward_forms, "DWEIGHTS": build.dweights_forms,
             "DINPUTS": build.dinputs_forms}
    names = {fast.BLOCKED: "BLOCKED", fast.NARROW: "NARROW", fast.DOT_TILES: "DOT",
             fast.BROADCAST: "BROADCAST"}
    if build.loss == ANY:
        return dict.fromkeys(FLAGS, True)
    values = {
        "USE_CATEGORICAL_CROSSENTROPY": build.loss == CATEGORICAL_CROSSENTROPY,
        "USE_BINARY_CROSSENTROPY": build.loss == BINARY_CROSSENTROPY,
        "USE_MEAN_SQUARED_ERROR": build.loss == MEAN_SQUARED_ERROR,
        "USE_MEAN_ABSOLUTE_ERROR": build.loss == MEAN_ABSOLUTE_ERROR,
        "USE_CATEGORICAL_ACCURACY": build.accuracy == CATEGORICAL_ACCURACY,
        "USE_BINARY_ACCURACY": build.accuracy == BINARY_ACCURACY,
        "USE_REGRESSION_ACCURACY": build.accuracy == REGRESSION_ACCURACY,
        "USE_SGD": build.optimizer == SGD, "USE_SGD_MOMENTUM": build.optimizer == SGD_MOMENTUM,
        "USE_ADAGRAD": build.optimizer == ADAGRAD, "USE_RMSPROP": build.optimizer == RMSPROP,
        "USE_ADAM": build.optimizer == ADAM,
        "USE_FUSED_SOFTMAX": build.fused_softmax,
        "USE_RELU": RELU in build.layers, "USE_SIGMOID": SIGMOID in build.layers,
        "USE_SOFTMAX": SOFTMAX in build.layers, "USE_DROPOUT": DROPOUT in build.layers,
        "TRAINING": build.optimizer >= 0,
    }
    for product, used in forms.items():
        for form, name in names.items():
            key = f"{product}_{name}"
            if key in FLAGS:
                values[key] = form in used
    return values


@register_jitable
def _block(buffer, offset, rows, columns):
    """``buffer[offset:]`` as a (rows, columns) C-contiguous view."""
    return buffer[offset:offset + rows * columns].reshape((rows, columns))


@register_jitable
def _panels(scratch, n_k, n_columns):
    """The broadcast form's scratch for a (n_k, n_columns) right-hand operand."""
    n_panels = (n_columns + fast.PANEL_WIDTH - 1) // fast.PANEL_WIDTH
    return scratch[:n_panels * n_k * fast.PANEL_WIDTH].reshape(
        (n_panels, n_k, fast.PANEL_WIDTH))


@register_jitable
def _dense_forward(form, inputs, weights, packed, offset, biases, output, scratch):
    """``output = inputs @ weights + biases`` in ``form`` (``dense_fast``'s kernels);
    ``packed[offset:]`` holds ``weights.T`` for the dot-product form."""
    n_inputs, n_neurons = weights.shape
    if FORWARD_BROADCAST:
        if form == fast.BROADCAST:
            dense_tn_tiled(inputs.T, weights, _panels(scratch, n_inputs, n_neurons), biases,
                                True, output)
    if FORWARD_DOT:
        if form == fast.DOT_TILES:
            dense_nt_tiled(inputs, _block(packed, offset, n_neurons, n_inputs), biases,
                                True, output)
    if FORWARD_BLOCKED:
        if form == fast.BLOCKED:
            dense_forward_blocked(inputs, weights, biases, output)


@register_jitable
def _dense_dweights(form, inputs, dvalues, dweights, scratch, dweights_t_offset):
    """``dweights = inputs.T @ dvalues`` in ``form``."""
    n_inputs, n_neurons = dweights.shape
    if DWEIGHTS_BROADCAST:
        if form == fast.BROADCAST:
            dense_tn_tiled(inputs, dvalues, _panels(scratch, dvalues.shape[0], n_neurons),
                                dweights[0], False, dweights)
    if DWEIGHTS_NARROW:
        if form == fast.NARROW:
            dense_backward_weights_narrow(
                inputs, dvalues, _block(scratch, dweights_t_offset, n_neurons, n_inputs),
                dweights)
    if DWEIGHTS_BLOCKED:
        if form == fast.BLOCKED:
            dense_backward_weights_blocked(inputs, dvalues, dweights)


@register_jitable
def _dense_dinputs(form, dvalues, weights, packed, offset, dinputs, scratch):
    """``dinputs = dvalues @ weights.T`` in ``form``."""
    n_inputs, n_neurons = weights.shape
    if DINPUTS_BROADCAST:
        if form == fast.BROADCAST:
            dense_tn_tiled(dvalues.T, weights.T, _panels(scratch, n_neurons, n_inputs),
                                dinputs[0], False, dinputs)
    if DINPUTS_DOT:
        if form == fast.DOT_TILES:
            dense_nt_tiled(dvalues, weights, dinputs[0], False, dinputs)
    if DINPUTS_NARROW:
        if form == fast.NARROW:
            dense_backward_inputs_narrow(
                dvalues, _block(packed, offset, n_neurons, n_inputs), dinputs)


@register_jitable
def _penalty(values, l1, l2):
    """``regularization_loss_loops``' sum: float64, in index order."""
    sum_abs = 0.0
    sum_squares = 0.0
    for k in range(values.shape[0]):
        value = values[k]
        sum_abs += abs(value)
        sum_squares += value * value
    return l1 * sum_abs + l2 * sum_squares


@register_jitable
def regularization_loss(program, floats, params):
    """The L1/L2 penalty of every dense layer, weights then biases, layer by layer: the sum
    ``Loss.regularization_loss`` makes of ``ops.regularization_loss`` calls."""
    total = 0.0
    for l in range(program.shape[0]):
        if program[l, KIND] != DENSE:
            continue
        n_weights = program[l, WIDTH_IN] * program[l, WIDTH]
        start = program[l, WEIGHTS]
        l1 = floats[l, L1_WEIGHTS]
        l2 = floats[l, L2_WEIGHTS]
        if l1 > 0 or l2 > 0:
            total += _penalty(params[start:start + n_weights], l1, l2)
        l1 = floats[l, L1_BIASES]
        l2 = floats[l, L2_BIASES]
        if l1 > 0 or l2 > 0:
            total += _penalty(params[start + n_weights:start + n_weights + program[l, WIDTH]],
                              l1, l2)
    return total


@register_jitable
def forward(program, plans, floats, batch_kind, batch, m, training, params, acts, packed,
            scratch):
    """Every layer's forward on the ``m`` rows of ``batch``; returns the last layer's output
    (a view of ``acts``). Dropout masks only while ``training`` (their step counters advance)."""
    output = batch
    for l in range(program.shape[0]):
        kind = program[l, KIND]
        width_in = program[l, WIDTH_IN]
        width = program[l, WIDTH]
        inputs = batch if program[l, IN] < 0 else _block(acts, program[l, IN], m, width_in)
        output = _block(acts, program[l, OUT], m, width)
        n = m * width
        if kind == DENSE:
            start = program[l, WEIGHTS]
            weights = _block(params, start, width_in, width)
            biases = params[start + width_in * width:start + width_in * width + width]
            _dense_forward(plans[l, batch_kind, FORWARD_FORM], inputs, weights, packed,
                           program[l, PACKED], biases, output, scratch)
        if USE_RELU:
            if kind == RELU:
                flat_in = inputs.reshape(-1)
                flat_out = output.reshape(-1)
                for k in prange(n):
                    relu_element(flat_in, flat_out, k)
        if USE_SIGMOID:
            if kind == SIGMOID:
                flat_in = inputs.reshape(-1)
                flat_out = output.reshape(-1)
                for k in prange(n):
                    sigmoid_element(flat_in, flat_out, k)
        if USE_SOFTMAX:
            if kind == SOFTMAX:
                for s in prange(m):
                    softmax_row(inputs, output, s)
        if USE_DROPOUT:
            if kind == DROPOUT:
                flat_in = inputs.reshape(-1)
                flat_out = output.reshape(-1)
                if training:
                    mask = _block(scratch, program[l, MASK], m, width)
                    rate = floats[l, RATE]
                    keep_below = np.int64((1.0 - rate) * 2.0 ** 53)
                    seed = program[l, SEED]
                    step = program[l, STEP]
                    for s in prange(m):
                        dropout_mask_row(seed, step, keep_below, rate, mask, s)
                    program[l, STEP] = step + 1
                    flat_mask = mask.reshape(-1)
                    for k in prange(n):
                        mask_element(flat_in, flat_mask, flat_out, k)
                else:
                    for k in prange(n):
                        flat_out[k] = flat_in[k]
        # LINEAR: its output block is its input's (the identity, as Linear.forward returns
        # its inputs): nothing to do
    return output


@register_jitable
def loss_and_accuracy(settings, hyper, output, targets, values, m, sample_losses, correct,
                      dlast):
    """The batch's mean loss and mean accuracy (float64, summed in order as ``ops.mean``), and,
    when ``dlast`` has rows, the loss's gradient with respect to the output (with respect to
    the softmax's input when the fused softmax + cross-entropy gradient applies)."""
    gradient = dlast.shape[0] > 0
    loss = settings[LOSS]
    accuracy_kind = settings[ACCURACY]
    fused = settings[FUSED_SOFTMAX] == 1
    for s in prange(m):
        if USE_CATEGORICAL_CROSSENTROPY:
            if loss == CATEGORICAL_CROSSENTROPY:
                crossentropy_sample(output, targets, sample_losses, s)
                if gradient:
                    if USE_FUSED_SOFTMAX and fused:
                        softmax_crossentropy_backward_row(output, targets, dlast, s)
                    else:
                        crossentropy_backward_row(output, targets, dlast, s)
        if USE_BINARY_CROSSENTROPY:
            if loss == BINARY_CROSSENTROPY:
                binary_crossentropy_sample(output, values, sample_losses, s)
                if gradient:
                    binary_crossentropy_backward_row(output, values, dlast, s)
        if USE_MEAN_SQUARED_ERROR:
            if loss == MEAN_SQUARED_ERROR:
                squared_error_sample(output, values, sample_losses, s)
                if gradient:
                    squared_error_backward_row(output, values, dlast, s)
        if USE_MEAN_ABSOLUTE_ERROR:
            if loss == MEAN_ABSOLUTE_ERROR:
                absolute_error_sample(output, values, sample_losses, s)
                if gradient:
                    absolute_error_backward_row(output, values, dlast, s)
    loss_sum = 0.0
    for s in range(m):
        loss_sum += sample_losses[s]
    data_loss = loss_sum / m
    mean_accuracy = np.nan
    if USE_CATEGORICAL_ACCURACY and accuracy_kind == CATEGORICAL_ACCURACY:
        for s in prange(m):
            accuracy_sample(output, targets, correct, s)
        correct_sum = 0.0
        for s in range(m):
            correct_sum += correct[s]
        mean_accuracy = correct_sum / m
    if ((USE_BINARY_ACCURACY and accuracy_kind == BINARY_ACCURACY)
            or (USE_REGRESSION_ACCURACY and accuracy_kind == REGRESSION_ACCURACY)):
        n = m * output.shape[1]
        flat = output.reshape(-1)
        flat_values = values.reshape(-1)
        for k in prange(n):
            if USE_BINARY_ACCURACY and accuracy_kind == BINARY_ACCURACY:
                binary_accuracy_element(flat, flat_values, correct, k)
            if USE_REGRESSION_ACCURACY and accuracy_kind == REGRESSION_ACCURACY:
                regression_accuracy_element(flat, flat_values, hyper[PRECISION], correct, k)
        element_sum = 0.0
        for k in range(n):
            element_sum += correct[k]
        mean_accuracy = element_sum / n
    return data_loss, mean_accuracy


@register_jitable
def backward(program, plans, floats, settings, batch_kind, batch, m, params, grads, acts, dacts,
             packed, scratch):
    """Every layer's backward, last first, from the loss's gradient in ``dacts`` (at the last
    layer's output, or at the softmax's input for the fused gradient); stops where no earlier
    layer has parameters. Dense layers also add their penalties' gradients."""
    last = program.shape[0] - 1
    if USE_FUSED_SOFTMAX and settings[FUSED_SOFTMAX] == 1:
        last -= 1
    for l in range(last, -1, -1):
        kind = program[l, KIND]
        width_in = program[l, WIDTH_IN]
        width = program[l, WIDTH]
        dvalues = _block(dacts, program[l, OUT], m, width)
        needs_dinputs = program[l, NEEDS_DINPUTS] == 1
        inputs = batch if program[l, IN] < 0 else _block(acts, program[l, IN], m, width_in)
        n = m * width
        if kind == DENSE:
            start = program[l, WEIGHTS]
            n_weights = width_in * width
            weights = _block(params, start, width_in, width)
            dweights = _block(grads, start, width_in, width)
            dbiases = grads[start + n_weights:start + n_weights + width]
            _dense_dweights(plans[l, batch_kind, DWEIGHTS_FORM], inputs, dvalues, dweights,
                            scratch, settings[DWEIGHTS_T])
            dbiases_sum(dvalues, dbiases)
            l1 = floats[l, L1_WEIGHTS]
            l2 = floats[l, L2_WEIGHTS]
            if l1 > 0 or l2 > 0:
                flat_weights = params[start:start + n_weights]
                flat_dweights = grads[start:start + n_weights]
                for k in prange(n_weights):
                    penalty_gradient_element(flat_weights, l1, l2, flat_dweights, k)
            l1 = floats[l, L1_BIASES]
            l2 = floats[l, L2_BIASES]
            if l1 > 0 or l2 > 0:
                biases = params[start + n_weights:start + n_weights + width]
                for k in range(width):
                    penalty_gradient_element(biases, l1, l2, dbiases, k)
            if needs_dinputs:
                _dense_dinputs(plans[l, batch_kind, DINPUTS_FORM], dvalues, weights, packed,
                               program[l, PACKED], _block(dacts, program[l, IN], m, width_in),
                               scratch)
        if not needs_dinputs:
            continue
        if USE_RELU:
            if kind == RELU:
                flat_dvalues = dvalues.reshape(-1)
                flat_inputs = inputs.reshape(-1)
                flat_dinputs = dacts[program[l, IN]:program[l, IN] + n]
                for k in prange(n):
                    relu_backward_element(flat_dvalues, flat_inputs, flat_dinputs, k)
        if USE_SIGMOID:
            if kind == SIGMOID:
                flat_dvalues = dvalues.reshape(-1)
                flat_output = acts[program[l, OUT]:program[l, OUT] + n]
                flat_dinputs = dacts[program[l, IN]:program[l, IN] + n]
                for k in prange(n):
                    sigmoid_backward_element(flat_dvalues, flat_output, flat_dinputs, k)
        if USE_SOFTMAX:
            if kind == SOFTMAX:
                output = _block(acts, program[l, OUT], m, width)
                dinputs = _block(dacts, program[l, IN], m, width)
                for s in prange(m):
                    softmax_backward_row(dvalues, output, dinputs, s)
        if USE_DROPOUT:
            if kind == DROPOUT:
                flat_dvalues = dvalues.reshape(-1)
                flat_mask = scratch[program[l, MASK]:program[l, MASK] + n]
                flat_dinputs = dacts[program[l, IN]:program[l, IN] + n]
                for k in prange(n):
                    mask_element(flat_dvalues, flat_mask, flat_dinputs, k)
        # LINEAR: its gradient block is its input's (the identity's gradient is a copy)


@register_jitable
def update(settings, hyper, params, grads, state_1, state_2, learning_rate):
    """The optimizer's step over every parameter of the model at once (one flat buffer; each
    parameter's update only reads and writes its own element, as the layered kernels')."""
    n = settings[N_PARAMS]
    optimizer = settings[OPTIMIZER]
    if USE_ADAM and optimizer == ADAM:
        # float(...): with an integer exponent numba multiplies (powi), which rounds differently
        # from the libm pow() that Python's ``beta ** (iterations + 1)`` calls.
        iteration = float(settings[ITERATIONS] + 1)
        correction_1 = 1 - math.pow(hyper[BETA_1], iteration)
        correction_2 = 1 - math.pow(hyper[BETA_2], iteration)
        for k in prange(n):
            adam_param(params, grads, state_1, state_2, learning_rate, hyper[EPSILON],
                       hyper[BETA_1], hyper[BETA_2], correction_1, correction_2, k)
    if USE_SGD and optimizer == SGD:
        for k in prange(n):
            sgd_param(params, grads, learning_rate, k)
    if USE_SGD_MOMENTUM and optimizer == SGD_MOMENTUM:
        for k in prange(n):
            sgd_momentum_param(params, grads, state_1, learning_rate, hyper[MOMENTUM], k)
    if USE_ADAGRAD and optimizer == ADAGRAD:
        for k in prange(n):
            adagrad_param(params, grads, state_1, learning_rate, hyper[EPSILON], k)
    if USE_RMSPROP and optimizer == RMSPROP:
        for k in prange(n):
            rmsprop_param(params, grads, state_1, learning_rate, hyper[EPSILON], hyper[RHO], k)


@register_jitable
def refresh_packed(program, params, packed):
    """Pack ``weights.T`` again for the layers whose forms read it, after an update."""
    for l in range(program.shape[0]):
        if program[l, KIND] == DENSE and program[l, PACKED] >= 0:
            width_in = program[l, WIDTH_IN]
            width = program[l, WIDTH]
            transpose_tiled(_block(params, program[l, WEIGHTS], width_in, width),
                                 _block(packed, program[l, PACKED], width, width_in))


@register_jitable
def _gather(X, y_index, y_values, order, start, m, rows, targets, values):
    """Rows ``order[start:start + m]`` of X and of the targets, copied into the buffers."""
    for s in prange(m):
        source = order[start + s]
        row = X[source]
        target = rows[s]
        for i in range(X.shape[1]):
            target[i] = row[i]
        if y_index.shape[0] > 0:
            targets[s] = y_index[source]
        if y_values.shape[0] > 0:
            for j in range(y_values.shape[1]):
                values[s, j] = y_values[source, j]


def train_block(X, y_index, y_values, orders, batch_size, n_epochs, program, plans, floats,
                settings, hyper, params, grads, state_1, state_2, acts, dacts, packed, scratch,
                rows, targets, values, X_val, y_val_index, y_val_values, val_batch_size,
                predictions, step_log, epoch_log):
    """Train ``n_epochs`` epochs, running the validation data forward after each one (with no
    epochs: once, ``Model.evaluate``/``predict``); returns -1, or the global step (from 0) at
    which the loss became NaN or infinite (before that step's update, as the layered path
    stops).

    ``X`` (n, n_inputs) in the parameters' dtype; targets as class indices ``y_index`` (n,)
    and/or values ``y_values`` (n, n_outputs) (a (0,) or (0, 0) array when the loss and the
    accuracy need none); ``orders`` (1 or n_epochs, n): each epoch's row order (one row for
    every epoch when it has one); ``rows``, ``targets``, ``values``: batch-sized buffers for
    gathered (shuffled) batches; the program and buffers as the module docstring says.
    ``X_val`` (n_val, n_inputs) with ``y_val_*`` (or no rows), in batches of
    ``val_batch_size``: its mean loss and accuracy go to ``epoch_log``; ``predictions``
    (n_val, width of the last layer) receives the outputs when it has rows.
    ``step_log`` (n_epochs * steps per epoch, ...) receives each step's mean data loss, mean
    accuracy, penalty before the update and learning rate; ``epoch_log`` (max(n_epochs, 1),
    ...) the penalty after each epoch's last update and the validation figures.
    """
    n_samples = X.shape[0]
    n_val = X_val.shape[0]
    n_layers = program.shape[0]
    n_steps = (n_samples + batch_size - 1) // batch_size if n_epochs > 0 else 0
    n_val_batches = (n_val + val_batch_size - 1) // val_batch_size
    last_width = program[n_layers - 1, WIDTH]
    last_grad = program[n_layers - 1, OUT]
    if USE_FUSED_SOFTMAX and settings[FUSED_SOFTMAX] == 1:
        last_grad = program[n_layers - 1, IN]
    sample_losses = scratch[settings[SAMPLE_LOSSES]:settings[CORRECT]]
    correct = scratch[settings[CORRECT]:]
    no_gradient = _block(scratch, 0, 0, last_width)
    failed = -1
    # Each epoch is a run of batches: its training steps, then the validation data (after the
    # epoch's last update). With no epochs, one pass of validation batches alone
    # (Model.evaluate / predict). One call site of forward (and of the loss) serves both, so
    # that numba compiles (and the parallel build inlines) them once.
    for epoch in range(max(n_epochs, 1)):
        order = orders[min(epoch, orders.shape[0] - 1)]
        in_order = True                  # order == 0, 1, 2, ...: batches are slices of X
        for s in range(order.shape[0]):
            if order[s] != s:
                in_order = False
                break
        loss_sum = 0.0
        accuracy_sum = 0.0
        for item in range(n_steps + n_val_batches):
            training = item < n_steps
            step = item
            if training:
                start = step * batch_size
                m = min(batch_size, n_samples - start)
                kind = TRAIN_FULL if m == batch_size else TRAIN_LAST
                if in_order:
                    batch = X[start:start + m]
                    batch_targets = y_index[start:start + m] if y_index.shape[0] > 0 \
                        else targets
                    batch_values = y_values[start:start + m] if y_values.shape[0] > 0 \
                        else values
                else:
                    _gather(X, y_index, y_values, order, start, m, rows, targets, values)
                    batch = rows[:m]
                    batch_targets = targets[:m]
                    batch_values = values[:m]
                dlast = _block(dacts, last_grad, m, last_width)
            else:
                if item == n_steps and n_epochs > 0:    # the epoch's training is over
                    epoch_log[epoch, EPOCH_REGULARIZATION] = regularization_loss(
                        program, floats, params)
                start = (item - n_steps) * val_batch_size
                m = min(val_batch_size, n_val - start)
                kind = VAL_FULL if m == val_batch_size else VAL_LAST
                batch = X_val[start:start + m]
                batch_targets = y_val_index[start:start + m] if y_val_index.shape[0] > 0 \
                    else targets
                batch_values = y_val_values[start:start + m]
                dlast = no_gradient
            output = forward(program, plans, floats, kind, batch, m, training, params, acts,
                             packed, scratch)
            data_loss = 0.0
            accuracy = 0.0
            if training or settings[LOSS] != NO_LOSS:
                data_loss, accuracy = loss_and_accuracy(settings, hyper, output, batch_targets,
                                                        batch_values, m, sample_losses,
                                                        correct, dlast)
            if not training:        # validation: Model.evaluate's running sums, predictions
                loss_sum += data_loss * m
                accuracy_sum += accuracy * m
                if predictions.shape[0] > 0:
                    for s in range(m):
                        for j in range(last_width):
                            predictions[start + s, j] = output[s, j]
                continue
            if TRAINING:
                # the learning rate of this step: Optimizer.pre_update_params
                learning_rate = hyper[CURRENT_LEARNING_RATE]
                if hyper[DECAY] != 0:
                    learning_rate = hyper[LEARNING_RATE] * (
                        1.0 / (1.0 + hyper[DECAY] * settings[ITERATIONS]))
                penalty = regularization_loss(program, floats, params)
                row = epoch * n_steps + step
                step_log[row, STEP_DATA_LOSS] = data_loss
                step_log[row, STEP_ACCURACY] = accuracy
                step_log[row, STEP_REGULARIZATION] = penalty
                step_log[row, STEP_LEARNING_RATE] = learning_rate
                if not (math.isfinite(data_loss) and math.isfinite(penalty)):
                    failed = row
                    break
                backward(program, plans, floats, settings, kind, batch, m, params, grads, acts,
                         dacts, packed, scratch)
                update(settings, hyper, params, grads, state_1, state_2, learning_rate)
                hyper[CURRENT_LEARNING_RATE] = learning_rate
                settings[ITERATIONS] += 1
                refresh_packed(program, params, packed)
                if step == n_steps - 1 and n_val_batches == 0:
                    epoch_log[epoch, EPOCH_REGULARIZATION] = regularization_loss(
                        program, floats, params)
        if failed >= 0:
            break
        if n_val > 0:
            epoch_log[epoch, EPOCH_VAL_LOSS] = loss_sum / n_val
            epoch_log[epoch, EPOCH_VAL_ACCURACY] = accuracy_sum / n_val
    return failed


# --- Builds -----------------------------------------------------------------------------------------

# The functions of this module that a build copies (bound to the build's constants): numba
# freezes a function's globals when it compiles it, and a helper reads its own module's
# globals, so each build gets its own copy of every helper.
HELPERS = ("_block", "_panels", "_penalty", "regularization_loss")
# ... and those with a ``prange`` of their own or in an inlined dense kernel (or calling one):
# the parallel build inlines them into ``train_block``, compiled with ``parallel=True``, so
# that their loops become its parallel regions (a parallel helper compiled on its own would
# make ``train_block`` impossible to cache)
PARALLEL_HELPERS = ("_dense_forward", "_dense_dweights", "_dense_dinputs", "forward",
                    "loss_and_accuracy", "backward", "update", "refresh_packed", "_gather")
# dense_fast's kernels: inlined, ``prange`` and all, by the parallel builds; the serial builds
# call the cpu backend's own serial builds of them (``build``'s ``kernels``): compiled (and
# cached) once for the layered ops and every build of the step alike
KERNELS = ("dense_backward_inputs_narrow", "dense_backward_weights_blocked",
           "dense_backward_weights_narrow", "dense_forward_blocked", "dense_nt_tiled",
           "dense_tn_tiled", "transpose_tiled")


def build(what: Build, kernels=None):
    """``train_block`` and its helpers again, as plain functions bound to a namespace holding
    ``what``'s constants, under names of their own (numba names its cache files after the
    function): ready for ``numba.njit(parallel=what.parallel)``. ``kernels``: compiled
    (serial) forms of ``KERNELS`` for a serial build to call."""
    import types

    suffix = "__" + what.name()
    namespace = dict(globals())
    namespace.update(constants(what))

    def copy(function):
        clone = types.FunctionType(function.__code__, namespace, function.__name__ + suffix,
                                   function.__defaults__, function.__closure__)
        clone.__qualname__ = function.__qualname__ + suffix
        clone.__module__ = function.__module__
        clone.__doc__ = function.__doc__
        return clone

    for name in HELPERS:
        namespace[name] = register_jitable(copy(globals()[name]))
    for name in PARALLEL_HELPERS:
        namespace[name] = register_jitable(inline="always" if what.parallel else "never")(
            copy(globals()[name]))
    if not what.parallel and kernels is not None:
        namespace.update({name: kernels[name] for name in KERNELS})
    return copy(train_block)
