"""The compiled training step: whole epochs of any model ``Model`` builds, in one compiled call.

Index legend: s = sample (row of a batch), k = flat element index, l = layer, j = output column.

``Model.train`` on the ``cpu`` device turns the model into a small *layer program* (one row of
integers per layer: its kind, its sizes, where its arrays live) and hands it, with every array
the run needs, to ``train_block``. That one function runs a block of epochs: per step it gathers
a batch, runs each layer's forward, the loss and the accuracy, the regularization penalty, each
layer's backward and the optimizer's update; after each epoch it can run the validation data
forward. Every stage is a call of the very kernel the layered ops run (``sigmoid_forward_loops``,
``dense_fast``'s forms of the dense products, ``adam_update_loops`` ...: each a ``prange`` over
the op's body), in the order ``Model.train`` calls them, so the two paths compute the same bits;
what the step saves is the Python between them: validation, conversions, allocations and a
dispatch per op. (ReLU runs its bodies in place, ``relu_forward_in_place_loops``: the same bits
in one block instead of two.)

Memory, as llm.c keeps it: every parameter of the model lives in one flat buffer ``params``, at
the offsets the program names, and so do its gradients (``grads``) and the optimizer's state
(``state_1``, ``state_2``): the update is one call over one buffer. Each layer's output and the
gradient with respect to it live in ``acts`` and ``dacts`` (one ``batch_size x width`` block per
layer, but that Linear and ReLU share the block of the layer before them); scratch for the
dense forms (packed transposes, panels) in ``packed`` and ``scratch``. All are set up once
per ``Model.train`` call by ``loopnet.compiled`` (lent from a pool of the calling thread's
arrays).

Builds (``build``, compiled by ``loopnet.backends.cpu.training_step``): the function is one,
but a model uses only some of its branches (one loss, one optimizer, a few layer kinds and dense
forms), and numba drops a branch on a constant before it types it. So each ``Build`` - which
loss, accuracy and optimizer, which layer kinds and dense forms, serial or parallel - is a copy
of this module's functions whose constants say so: it compiles only what such models run, and
every model of the same kinds, whatever its sizes, runs the same compiled (and cached) build.
``Model.evaluate`` and ``predict`` run on any build the process has that holds what they need
(``Build.serves``: a model's training build serves them), else on a forward-only build.
The kernels it calls are compiled (and cached) once, for the layered ops and every build alike:
a build calls each through a symbol bound to the kernel's own machine code
(``loopnet.backends.cpu``, "The step's kernels, called by address"), holding none of it.
A parallel build calls a kernel's parallel build for large arrays (as the layered ops do); a
serial one, for small models, never wakes a thread.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic, register_jitable

from loopnet.kernels import dense_fast as fast
from loopnet.kernels import renamed


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
# The kinds that work in the block of the layer before them (``forward``: the identity, and
# ReLU in place); ``loopnet.compiled`` lays them out so.
SHARED_BLOCK_KINDS = (LINEAR, RELU)
# Not layers but what a build needs besides them (``Build.layers`` holds these too): a dense
# layer with an L1/L2 penalty; a Softmax whose own backward runs (not the last layer when the
# fused softmax + cross-entropy gradient replaces it). A model without them compiles neither
# the penalty kernels nor the softmax's Jacobian (~1 s each of a cold compile).
PENALTIES, SOFTMAX_BACKWARD = 101, 102
# ... and a broadcast product that walks the wide ways (``dense_fast.tn_paths``): a build
# without it runs the build of ``dense_tn_tiled`` without them (the same sums, in the same
# order), ~3 s less of a cold compile for the chapter-19-sized model.
WIDE_BROADCAST = 103
# ... and, in a parallel build, whether a layer's block of a batch (rows x width), or the
# parameters, reach the size from which the element-wise kernels run in parallel
# (``settings[PARALLEL_MIN_ELEMENTS]``): without it the build calls those kernels' serial
# builds only (the parallel ones give the same bits and cost ~0.3 s of a cold compile each).
LAYERS_IN_PARALLEL, PARAMETERS_IN_PARALLEL = 104, 105
# ... and a first layer that copies the batch into its block: Linear and ReLU work in the block
# of the layer before them (``forward``), and the first has none it may write (X is the
# caller's). Few models start so, and the copy costs others ~0.1 s of a cold compile.
BATCH_COPY = 106

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
    layers: frozenset       # the layer kinds besides DENSE and LINEAR (RELU, SIGMOID ...),
    #                         and PENALTIES, SOFTMAX_BACKWARD, WIDE_BROADCAST,
    #                         LAYERS_IN_PARALLEL, PARAMETERS_IN_PARALLEL, BATCH_COPY when
    #                         the run needs them
    forward_forms: frozenset     # (form, parallel) pairs of the forward products: dense_fast's
    dweights_forms: frozenset    # ... of dweights       forms, each in the serial or parallel
    dinputs_forms: frozenset     # ... of dinputs        build its plans ask for
    parallel: bool

    def name(self) -> str:
        """A short name for the build (numba names its cache files after it), which changes
        with the source of any kernel file or of the cpu backend: numba checks a cached
        function against its own file only, and a build runs the bodies and kernels of every
        other one (calling the cpu backend's builds of them by name)."""
        import hashlib

        return hashlib.sha256((repr(self) + _sources()).encode()).hexdigest()[:12]

    def serves(self, run: "Build") -> bool:
        """Whether this build can run ``run``, the build a ``Model.evaluate`` or ``predict``
        call asks for. Every branch is also chosen at run time (from ``settings`` and the
        plans), and a dense form falls back to the serial or parallel kernel the build has
        (the same bits), so a build serves a forward-only run when it holds the run's loss,
        accuracy, layer kinds and forward forms: a model's training build serves its
        evaluate and predict. Forward-only runs take no gradient, so the fused softmax +
        cross-entropy gradient does not matter to them."""
        if self.loss == ANY:
            return True
        return (run.optimizer == -1 and run.loss in (NO_LOSS, self.loss)
                and run.accuracy in (NO_ACCURACY, self.accuracy)
                and run.layers <= self.layers
                and {form for form, _ in run.forward_forms}
                <= {form for form, _ in self.forward_forms})

    def forward_only(self) -> "Build":
        """The build to compile for this forward-only one when no build this process has
        serves it: the same, less the fused gradient's flag, which a forward-only run never
        reads. (Not with every layer kind, which would let one build serve more models: the
        layer kernels a model does not use add seconds to a first ``loopnet predict``.)"""
        return self._replace(fused_softmax=False)


_fingerprint = None


def _sources() -> str:
    """A digest of the source files of ``loopnet/kernels`` and of the cpu backend, which names
    the kernels a build calls (read once)."""
    global _fingerprint
    if _fingerprint is None:
        import hashlib
        import pathlib

        here = pathlib.Path(__file__).parent
        digest = hashlib.sha256()
        for path in [*sorted(here.glob("*.py")), here.parent / "backends" / "cpu.py"]:
            digest.update(path.read_bytes())
        _fingerprint = digest.hexdigest()
    return _fingerprint


# Every branch: one build for any model (``loopnet.compiled``'s LOOPNET_STEP_BUILD=full)
ANY = -2
FULL = Build(ANY, ANY, ANY, True,
             frozenset((RELU, SIGMOID, SOFTMAX, DROPOUT, PENALTIES, SOFTMAX_BACKWARD,
                        WIDE_BROADCAST, LAYERS_IN_PARALLEL, PARAMETERS_IN_PARALLEL, BATCH_COPY)),
             frozenset(), frozenset(), frozenset(), False)

# What the functions below are compiled for, as constants numba folds (``build`` gives each
# build its own): as written here, uncompiled, everything. A branch behind a False is dropped.
USE_CATEGORICAL_CROSSENTROPY = USE_BINARY_CROSSENTROPY = True
USE_MEAN_SQUARED_ERROR = USE_MEAN_ABSOLUTE_ERROR = True
USE_CATEGORICAL_ACCURACY = USE_BINARY_ACCURACY = USE_REGRESSION_ACCURACY = True
USE_SGD = USE_SGD_MOMENTUM = USE_ADAGRAD = USE_RMSPROP = USE_ADAM = True
USE_FUSED_SOFTMAX = USE_RELU = USE_SIGMOID = USE_SOFTMAX = USE_DROPOUT = True
USE_PENALTIES = USE_SOFTMAX_BACKWARD = USE_BATCH_COPY = True
USE_PLAIN_CROSSENTROPY_GRADIENT = True     # the cross-entropy gradient without the fused one
FORWARD_BLOCKED = FORWARD_FEW = FORWARD_DOT = FORWARD_DOT_PLAIN = FORWARD_BROADCAST = True
DWEIGHTS_BLOCKED = DWEIGHTS_FEW = DWEIGHTS_NARROW = DWEIGHTS_BROADCAST = True
DINPUTS_NARROW = DINPUTS_DOT = DINPUTS_DOT_PLAIN = DINPUTS_BROADCAST = True
# ... and which builds of each (the parallel builds of the dense forms are the costliest
# compiles of all: a build compiles only those its plans ask for)
FORWARD_BLOCKED_SERIAL = FORWARD_DOT_SERIAL = FORWARD_BROADCAST_SERIAL = True
DWEIGHTS_BLOCKED_SERIAL = DWEIGHTS_NARROW_SERIAL = DWEIGHTS_BROADCAST_SERIAL = True
DINPUTS_NARROW_SERIAL = DINPUTS_DOT_SERIAL = DINPUTS_BROADCAST_SERIAL = True
FORWARD_DOT_PLAIN_SERIAL = DINPUTS_DOT_PLAIN_SERIAL = FORWARD_FEW_SERIAL = True
DWEIGHTS_FEW_SERIAL = True
FORWARD_BLOCKED_PARALLEL = FORWARD_DOT_PARALLEL = FORWARD_BROADCAST_PARALLEL = True
DWEIGHTS_BLOCKED_PARALLEL = DWEIGHTS_NARROW_PARALLEL = DWEIGHTS_BROADCAST_PARALLEL = True
DINPUTS_NARROW_PARALLEL = DINPUTS_DOT_PARALLEL = DINPUTS_BROADCAST_PARALLEL = True
FORWARD_DOT_PLAIN_PARALLEL = DINPUTS_DOT_PLAIN_PARALLEL = FORWARD_FEW_PARALLEL = True
DWEIGHTS_FEW_PARALLEL = True
TRAINING = True
PARALLEL = True         # calls of large arrays take the kernels' parallel builds
FLAGS = ("USE_CATEGORICAL_CROSSENTROPY", "USE_BINARY_CROSSENTROPY", "USE_MEAN_SQUARED_ERROR",
         "USE_MEAN_ABSOLUTE_ERROR", "USE_CATEGORICAL_ACCURACY", "USE_BINARY_ACCURACY",
         "USE_REGRESSION_ACCURACY", "USE_SGD", "USE_SGD_MOMENTUM", "USE_ADAGRAD", "USE_RMSPROP",
         "USE_ADAM", "USE_FUSED_SOFTMAX", "USE_RELU", "USE_SIGMOID", "USE_SOFTMAX", "USE_DROPOUT",
         "USE_PENALTIES", "USE_SOFTMAX_BACKWARD", "USE_BATCH_COPY",
         "USE_PLAIN_CROSSENTROPY_GRADIENT",
         "FORWARD_BLOCKED", "FORWARD_FEW", "FORWARD_DOT", "FORWARD_DOT_PLAIN",
         "FORWARD_BROADCAST", "DWEIGHTS_BLOCKED", "DWEIGHTS_FEW", "DWEIGHTS_NARROW",
         "DWEIGHTS_BROADCAST", "DINPUTS_NARROW", "DINPUTS_DOT", "DINPUTS_DOT_PLAIN",
         "DINPUTS_BROADCAST", "TRAINING", "PARALLEL")
FORM_FLAGS = ("FORWARD_BLOCKED", "FORWARD_FEW", "FORWARD_DOT", "FORWARD_DOT_PLAIN",
              "FORWARD_BROADCAST", "DWEIGHTS_BLOCKED", "DWEIGHTS_FEW", "DWEIGHTS_NARROW",
              "DWEIGHTS_BROADCAST", "DINPUTS_NARROW", "DINPUTS_DOT", "DINPUTS_DOT_PLAIN",
              "DINPUTS_BROADCAST")
FLAGS += tuple(f"{flag}_{build}" for flag in FORM_FLAGS for build in ("SERIAL", "PARALLEL"))


def constants(build: Build) -> dict:
    """The constants above for ``build``."""
    forms = {"FORWARD": build.forward_forms, "DWEIGHTS": build.dweights_forms,
             "DINPUTS": build.dinputs_forms}
    names = {fast.BLOCKED: "BLOCKED", fast.NARROW: "NARROW", fast.DOT_TILES: "DOT",
             fast.DOT_PLAIN: "DOT_PLAIN", fast.FEW_INPUTS: "FEW", fast.BROADCAST: "BROADCAST"}
    if build.loss == ANY:
        return dict.fromkeys(FLAGS, True) | {"PARALLEL": build.parallel} | {
            f"{flag}_PARALLEL": build.parallel for flag in FORM_FLAGS}
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
        "USE_PENALTIES": PENALTIES in build.layers,
        "USE_SOFTMAX_BACKWARD": SOFTMAX_BACKWARD in build.layers,
        "USE_BATCH_COPY": BATCH_COPY in build.layers,
        # a training build is made for one model, so a fused build's runs take the fused
        # gradient (evaluate and predict take none)
        "USE_PLAIN_CROSSENTROPY_GRADIENT": not build.fused_softmax,
        "TRAINING": build.optimizer >= 0, "PARALLEL": build.parallel,
    }
    for product, used in forms.items():
        for form, name in names.items():
            key = f"{product}_{name}"
            if key in FORM_FLAGS:
                values[f"{key}_SERIAL"] = (form, False) in used
                values[f"{key}_PARALLEL"] = build.parallel and (form, True) in used
                values[key] = values[f"{key}_SERIAL"] or values[f"{key}_PARALLEL"]
    return values


# --- The kernels the step calls ------------------------------------------------------------------
# The step runs the layered path's very kernels, one call per layer and product: the loops of the
# op files (``relu_forward_loops`` ...: a ``prange`` over a body) and the fast forms of the dense
# products (``dense_fast``). ``build`` binds each name below to the cpu backend's compiled
# builds of that kernel, ``<name>_serial`` and ``<name>_parallel`` (a large array's call runs the
# parallel one, in a parallel build); as written here, the plain functions.
KERNEL_NAMES = (
    # loops of the op files
    "relu_forward_in_place", "relu_backward_in_place", "sigmoid_forward", "sigmoid_backward",
    "softmax_forward", "softmax_backward", "dropout_mask", "dropout_forward", "dropout_backward",
    "categorical_crossentropy", "categorical_crossentropy_backward",
    "softmax_crossentropy_backward", "binary_crossentropy", "binary_crossentropy_backward",
    "mean_squared_error", "mean_squared_error_backward", "mean_absolute_error",
    "mean_absolute_error_backward", "accuracy", "binary_accuracy", "regression_accuracy",
    "mean", "dense_backward_biases", "regularization_loss", "regularization_backward",
    "sgd_update", "sgd_momentum_update", "adagrad_update", "rmsprop_update", "adam_update",
    # dense_fast's forms
    "dense_forward_blocked", "dense_forward_few_inputs", "dense_nt_tiled", "dense_nt_plain",
    "dense_tn_tiled",
    "dense_backward_weights_blocked", "dense_backward_weights_few_inputs",
    "dense_backward_weights_narrow", "dense_backward_inputs_narrow", "transpose_tiled")
# The kernels above that run over a layer's block of a batch, and those over the parameters:
# their parallel builds serve a build only with LAYERS_IN_PARALLEL, PARAMETERS_IN_PARALLEL.
LAYER_KERNELS = ("relu_forward_in_place", "relu_backward_in_place", "sigmoid_forward",
                 "sigmoid_backward", "softmax_forward", "softmax_backward", "dropout_mask",
                 "dropout_forward", "dropout_backward")
PARAMETER_KERNELS = ("regularization_backward", "sgd_update", "sgd_momentum_update",
                     "adagrad_update", "rmsprop_update", "adam_update")


def _plain_kernels() -> dict:
    from loopnet.backends import collect

    loops = collect("loops")
    plain = {}
    for name in KERNEL_NAMES:
        function = loops[name] if name in loops else getattr(fast, name)
        plain[f"{name}_serial"] = plain[f"{name}_parallel"] = function
    return plain


globals().update(_plain_kernels())


@intrinsic
def _element_pointer(typingctx, array, offset):
    """A pointer to ``array``'s element ``offset`` (a 1-D contiguous array)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0]).data
        return builder.gep(data, [args[1]])
    return types.CPointer(array.dtype)(array, offset), codegen


# The step's views of its buffers (each layer's block of the activations, a flat view for an
# element-wise kernel) are made as ``carray``s over a pointer: a slice or ``reshape`` would call
# numba's reshape helper and count references on every view (~1 us an epoch of the book's
# small models, whose whole epoch is 20-40 us). The buffers are the step's arguments, which
# outlive every view.
@register_jitable
def _block(buffer, offset, rows, columns):
    """``buffer[offset:]`` as a (rows, columns) C-contiguous view."""
    if offset < 0 or offset + rows * columns > buffer.shape[0]:
        # (a slice would have been cut short and its reshape refused: never a view past the end)
        raise IndexError("a block of the training step's buffers runs past their end")
    return carray(_element_pointer(buffer, offset), (rows, columns))


@register_jitable
def _flat(array):
    """A C-contiguous ``array`` as a 1-D view of all its elements."""
    return carray(_element_pointer(array, 0), (array.size,))


@register_jitable
def _panels(scratch, n_k, n_columns):
    """The broadcast form's scratch for a (n_k, n_columns) right-hand operand."""
    n_panels = (n_columns + fast.PANEL_WIDTH - 1) // fast.PANEL_WIDTH
    return scratch[:n_panels * n_k * fast.PANEL_WIDTH].reshape(
        (n_panels, n_k, fast.PANEL_WIDTH))


@register_jitable
def _panels_of(b, scratch):
    """``_panels`` for a C-contiguous right-hand operand ``b``: ``b`` itself viewed as its one
    panel when it has PANEL_WIDTH columns (``dense_fast.is_own_panel``: nothing to pack)."""
    n_k, n_columns = b.shape
    if n_columns == fast.PANEL_WIDTH:
        return b.reshape((1, n_k, fast.PANEL_WIDTH))
    return _panels(scratch, n_k, n_columns)


# The broadcast form's operands are passed as ``x[::1]``, views numba types with the general
# layout ('A'), and its ``add_biases`` through ``_plain``: the forward (``inputs.T``,
# ``weights``), dweights (``inputs``, ``dvalues``) and dinputs (``dvalues.T``, ``weights.T``)
# then share one compiled specialization of ``dense_tn_tiled`` instead of one each (its
# parallel build is the costliest compile of the step: the chapter-19-sized model's cold
# compile 35 -> 24 s). The kernel reads ``a`` in tiles of five columns and copies ``b`` into
# panels, so the general layout costs nothing measurable (784-128-10 epochs within noise).
# The dot-product form's ``add_biases`` goes through ``_plain`` too: its forward and dinputs
# then share one specialization of ``dense_nt_tiled`` with each other and with the layered
# ops, which pass a Python bool (a cold ``loopnet train`` compiled 20.1 and 17.9 s against
# 22.5 and 19.2 s with the literals, alternating; the same bits).
@register_jitable
def _plain(flag):
    """``flag`` typed as a bool, not as the literal ``True`` or ``False`` (a kernel called with
    each literal would be compiled twice)."""
    return flag


@register_jitable
def _dense_forward(form, parallel, inputs, weights, packed, offset, biases, output, scratch):
    """``output = inputs @ weights + biases`` in ``form``, as ``loopnet.backends.cpu``'s
    ``dense_forward`` runs it."""
    n_inputs, n_neurons = weights.shape
    if FORWARD_BROADCAST:
        if form == fast.BROADCAST:
            panels = _panels_of(weights, scratch)
            if FORWARD_BROADCAST_PARALLEL and (parallel or not FORWARD_BROADCAST_SERIAL):
                dense_tn_tiled_parallel(inputs.T[::1], weights[::1], panels, biases, _plain(True),
                                        output)
            elif FORWARD_BROADCAST_SERIAL:
                dense_tn_tiled_serial(inputs.T[::1], weights[::1], panels, biases, _plain(True),
                                      output)
    if FORWARD_DOT:
        if form == fast.DOT_TILES:
            weights_t = _block(packed, offset, n_neurons, n_inputs)
            if FORWARD_DOT_PARALLEL and (parallel or not FORWARD_DOT_SERIAL):
                dense_nt_tiled_parallel(inputs, weights_t, biases, _plain(True), output)
            elif FORWARD_DOT_SERIAL:
                dense_nt_tiled_serial(inputs, weights_t, biases, _plain(True), output)
    if FORWARD_DOT_PLAIN:
        if form == fast.DOT_PLAIN:
            weights_t = _block(packed, offset, n_neurons, n_inputs)
            if FORWARD_DOT_PLAIN_PARALLEL and (parallel or not FORWARD_DOT_PLAIN_SERIAL):
                dense_nt_plain_parallel(inputs, weights_t, biases, _plain(True), output)
            elif FORWARD_DOT_PLAIN_SERIAL:
                dense_nt_plain_serial(inputs, weights_t, biases, _plain(True), output)
    if FORWARD_BLOCKED:
        if form == fast.BLOCKED:
            if FORWARD_BLOCKED_PARALLEL and (parallel or not FORWARD_BLOCKED_SERIAL):
                dense_forward_blocked_parallel(inputs, weights, biases, output)
            elif FORWARD_BLOCKED_SERIAL:
                dense_forward_blocked_serial(inputs, weights, biases, output)
    if FORWARD_FEW:
        if form == fast.FEW_INPUTS:
            if FORWARD_FEW_PARALLEL and (parallel or not FORWARD_FEW_SERIAL):
                dense_forward_few_inputs_parallel(inputs, weights, biases, output)
            elif FORWARD_FEW_SERIAL:
                dense_forward_few_inputs_serial(inputs, weights, biases, output)


@register_jitable
def _dense_dweights(form, parallel, inputs, dvalues, dweights, scratch, dweights_t_offset):
    """``dweights = inputs.T @ dvalues`` in ``form`` (``cpu.dense_backward_weights``)."""
    n_inputs, n_neurons = dweights.shape
    if DWEIGHTS_BROADCAST:
        if form == fast.BROADCAST:
            panels = _panels_of(dvalues, scratch)
            if DWEIGHTS_BROADCAST_PARALLEL and (parallel or not DWEIGHTS_BROADCAST_SERIAL):
                dense_tn_tiled_parallel(inputs[::1], dvalues[::1], panels, dweights[0],
                                        _plain(False), dweights)
            elif DWEIGHTS_BROADCAST_SERIAL:
                dense_tn_tiled_serial(inputs[::1], dvalues[::1], panels, dweights[0],
                                      _plain(False), dweights)
    if DWEIGHTS_NARROW:
        if form == fast.NARROW:
            dweights_t = _block(scratch, dweights_t_offset, n_neurons, n_inputs)
            if DWEIGHTS_NARROW_PARALLEL and (parallel or not DWEIGHTS_NARROW_SERIAL):
                dense_backward_weights_narrow_parallel(inputs, dvalues, dweights_t, dweights)
            elif DWEIGHTS_NARROW_SERIAL:
                dense_backward_weights_narrow_serial(inputs, dvalues, dweights_t, dweights)
    if DWEIGHTS_BLOCKED:
        if form == fast.BLOCKED:
            if DWEIGHTS_BLOCKED_PARALLEL and (parallel or not DWEIGHTS_BLOCKED_SERIAL):
                dense_backward_weights_blocked_parallel(inputs, dvalues, dweights)
            elif DWEIGHTS_BLOCKED_SERIAL:
                dense_backward_weights_blocked_serial(inputs, dvalues, dweights)
    if DWEIGHTS_FEW:
        if form == fast.FEW_INPUTS:
            if DWEIGHTS_FEW_PARALLEL and (parallel or not DWEIGHTS_FEW_SERIAL):
                dense_backward_weights_few_inputs_parallel(inputs, dvalues, dweights)
            elif DWEIGHTS_FEW_SERIAL:
                dense_backward_weights_few_inputs_serial(inputs, dvalues, dweights)


@register_jitable
def _dense_dinputs(form, parallel, dvalues, weights, packed, offset, dinputs, scratch):
    """``dinputs = dvalues @ weights.T`` in ``form`` (``cpu.dense_backward_inputs``)."""
    n_inputs, n_neurons = weights.shape
    if DINPUTS_BROADCAST:
        if form == fast.BROADCAST:
            panels = _panels(scratch, n_neurons, n_inputs)
            if DINPUTS_BROADCAST_PARALLEL and (parallel or not DINPUTS_BROADCAST_SERIAL):
                dense_tn_tiled_parallel(dvalues.T[::1], weights.T[::1], panels, dinputs[0],
                                        _plain(False), dinputs)
            elif DINPUTS_BROADCAST_SERIAL:
                dense_tn_tiled_serial(dvalues.T[::1], weights.T[::1], panels, dinputs[0],
                                      _plain(False), dinputs)
    if DINPUTS_DOT:
        if form == fast.DOT_TILES:
            if DINPUTS_DOT_PARALLEL and (parallel or not DINPUTS_DOT_SERIAL):
                dense_nt_tiled_parallel(dvalues, weights, dinputs[0], _plain(False), dinputs)
            elif DINPUTS_DOT_SERIAL:
                dense_nt_tiled_serial(dvalues, weights, dinputs[0], _plain(False), dinputs)
    if DINPUTS_DOT_PLAIN:
        if form == fast.DOT_PLAIN:
            if DINPUTS_DOT_PLAIN_PARALLEL and (parallel or not DINPUTS_DOT_PLAIN_SERIAL):
                dense_nt_plain_parallel(dvalues, weights, dinputs[0], _plain(False), dinputs)
            elif DINPUTS_DOT_PLAIN_SERIAL:
                dense_nt_plain_serial(dvalues, weights, dinputs[0], _plain(False), dinputs)
    if DINPUTS_NARROW:
        if form == fast.NARROW:
            weights_t = _block(packed, offset, n_neurons, n_inputs)
            if DINPUTS_NARROW_PARALLEL and (parallel or not DINPUTS_NARROW_SERIAL):
                dense_backward_inputs_narrow_parallel(dvalues, weights_t, dinputs)
            elif DINPUTS_NARROW_SERIAL:
                dense_backward_inputs_narrow_serial(dvalues, weights_t, dinputs)


# (A build is made for its model, so these never show; they stop a wrong build from giving a
# wrong answer quietly.)
NO_PENALTIES = "a training step built without penalties was given a model with one"
NO_BATCH_COPY = ("a training step built without the batch's copy was given a model whose first "
                 "layer needs it")
NO_SOFTMAX_BACKWARD = "a training step built without the softmax's backward was asked for it"
NO_PLAIN_GRADIENT = ("a training step built for the fused softmax + cross-entropy gradient was "
                     "asked for the plain one")


@register_jitable
def regularization_loss(program, floats, params, out):
    """The L1/L2 penalty of every dense layer, weights then biases, layer by layer, as
    ``Loss.regularization_loss`` adds up its ``ops.regularization_loss`` calls (each a
    ``regularization_loss_loops`` into ``out``, a float64 array of one). Called by builds
    with PENALTIES only (a build without them records 0; its backward raises for a model
    that has one)."""
    total = 0.0
    for l in range(program.shape[0]):
        if program[l, KIND] != DENSE:
            continue
        n_weights = program[l, WIDTH_IN] * program[l, WIDTH]
        start = program[l, WEIGHTS]
        l1 = floats[l, L1_WEIGHTS]
        l2 = floats[l, L2_WEIGHTS]
        if l1 > 0 or l2 > 0:
            regularization_loss_serial(params[start:start + n_weights], l1, l2, out)
            total += out[0]
        l1 = floats[l, L1_BIASES]
        l2 = floats[l, L2_BIASES]
        if l1 > 0 or l2 > 0:
            regularization_loss_serial(
                params[start + n_weights:start + n_weights + program[l, WIDTH]], l1, l2, out)
            total += out[0]
    return total


@register_jitable
def forward(program, plans, floats, batch_kind, batch, m, training, params, acts, packed,
            scratch, parallel_min):
    """Every layer's forward on the ``m`` rows of ``batch`` (``Model.forward``); returns the
    last layer's output (a view of ``acts``). Dropout masks only while ``training`` (their
    step counters advance, as ``Dropout.forward`` counts them)."""
    output = batch
    for l in range(program.shape[0]):
        kind = program[l, KIND]
        width_in = program[l, WIDTH_IN]
        width = program[l, WIDTH]
        inputs = batch if program[l, IN] < 0 else _block(acts, program[l, IN], m, width_in)
        output = _block(acts, program[l, OUT], m, width)
        n = m * width
        large = PARALLEL and n >= parallel_min
        if kind == DENSE:
            start = program[l, WEIGHTS]
            weights = _block(params, start, width_in, width)
            biases = params[start + width_in * width:start + width_in * width + width]
            _dense_forward(plans[l, batch_kind, FORWARD_FORM],
                           plans[l, batch_kind, FORWARD_PARALLEL] == 1, inputs, weights, packed,
                           program[l, PACKED], biases, output, scratch)
        # SHARED_BLOCK_KINDS work in the block of the layer before them: the identity has
        # nothing to do, ReLU overwrites it. As the first layer they have a block of their
        # own, the batch copied into it (BATCH_COPY).
        if l == 0 and kind in SHARED_BLOCK_KINDS:
            if not USE_BATCH_COPY:
                raise ValueError(NO_BATCH_COPY)
            for s in range(m):
                for j in range(width):
                    output[s, j] = inputs[s, j]
        if USE_RELU:
            if kind == RELU:
                if large:
                    relu_forward_in_place_parallel(_flat(output))
                else:
                    relu_forward_in_place_serial(_flat(output))
        if USE_SIGMOID:
            if kind == SIGMOID:
                if large:
                    sigmoid_forward_parallel(_flat(inputs), _flat(output))
                else:
                    sigmoid_forward_serial(_flat(inputs), _flat(output))
        if USE_SOFTMAX:
            if kind == SOFTMAX:
                if large:
                    softmax_forward_parallel(inputs, output)
                else:
                    softmax_forward_serial(inputs, output)
        if USE_DROPOUT:
            if kind == DROPOUT:
                if training:
                    mask = _block(scratch, program[l, MASK], m, width)
                    rate = floats[l, RATE]
                    keep_below = np.int64((1.0 - rate) * 2.0 ** 53)
                    if large:
                        dropout_mask_parallel(program[l, SEED], program[l, STEP], keep_below,
                                              rate, mask)
                        dropout_forward_parallel(_flat(inputs), _flat(mask),
                                                 _flat(output))
                    else:
                        dropout_mask_serial(program[l, SEED], program[l, STEP], keep_below,
                                            rate, mask)
                        dropout_forward_serial(_flat(inputs), _flat(mask),
                                               _flat(output))
                    program[l, STEP] += 1
                else:
                    output[...] = inputs     # Dropout.forward(training=False): the inputs
    return output


@register_jitable
def loss_and_accuracy(settings, hyper, output, targets, values, m, sample_losses, correct,
                      dlast, out):
    """The batch's mean loss and mean accuracy (``Loss.calculate``, ``Accuracy.calculate``:
    the loss's and the accuracy's kernels, then ``mean``) and, when ``dlast`` has rows, the
    loss's gradient with respect to the output (with respect to the softmax's input when the
    fused softmax + cross-entropy gradient applies, ``Model.backward``'s choice)."""
    gradient = dlast.shape[0] > 0
    loss = settings[LOSS]
    accuracy_kind = settings[ACCURACY]
    losses = sample_losses[:m]
    if USE_CATEGORICAL_CROSSENTROPY:
        if loss == CATEGORICAL_CROSSENTROPY:
            categorical_crossentropy_serial(output, targets, losses)
            if gradient:
                if USE_FUSED_SOFTMAX and settings[FUSED_SOFTMAX] == 1:
                    softmax_crossentropy_backward_serial(output, targets, dlast)
                elif USE_PLAIN_CROSSENTROPY_GRADIENT:
                    categorical_crossentropy_backward_serial(output, targets, dlast)
                else:
                    raise ValueError(NO_PLAIN_GRADIENT)
    if USE_BINARY_CROSSENTROPY:
        if loss == BINARY_CROSSENTROPY:
            binary_crossentropy_serial(output, values, losses)
            if gradient:
                binary_crossentropy_backward_serial(output, values, dlast)
    if USE_MEAN_SQUARED_ERROR:
        if loss == MEAN_SQUARED_ERROR:
            mean_squared_error_serial(output, values, losses)
            if gradient:
                mean_squared_error_backward_serial(output, values, dlast)
    if USE_MEAN_ABSOLUTE_ERROR:
        if loss == MEAN_ABSOLUTE_ERROR:
            mean_absolute_error_serial(output, values, losses)
            if gradient:
                mean_absolute_error_backward_serial(output, values, dlast)
    mean_serial(losses, out)
    data_loss = out[0]
    mean_accuracy = np.nan
    if USE_CATEGORICAL_ACCURACY:
        if accuracy_kind == CATEGORICAL_ACCURACY:
            accuracy_serial(output, targets, correct[:m])
            mean_serial(correct[:m], out)
            mean_accuracy = out[0]
    n = m * output.shape[1]
    if USE_BINARY_ACCURACY:
        if accuracy_kind == BINARY_ACCURACY:
            binary_accuracy_serial(_flat(output), _flat(values), correct[:n])
            mean_serial(correct[:n], out)
            mean_accuracy = out[0]
    if USE_REGRESSION_ACCURACY:
        if accuracy_kind == REGRESSION_ACCURACY:
            regression_accuracy_serial(_flat(output), _flat(values), hyper[PRECISION],
                                       correct[:n])
            mean_serial(correct[:n], out)
            mean_accuracy = out[0]
    return data_loss, mean_accuracy


@register_jitable
def backward(program, plans, floats, settings, batch_kind, batch, m, params, grads, acts, dacts,
             packed, scratch, parallel_min):
    """Every layer's backward, last first, from the loss's gradient in ``dacts`` (at the last
    layer's output, or at the softmax's input for the fused gradient); stops where no earlier
    layer has parameters. Dense layers also add their penalties' gradients
    (``Dense.backward``)."""
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
        large = PARALLEL and n >= parallel_min
        if kind == DENSE:
            start = program[l, WEIGHTS]
            n_weights = width_in * width
            weights = _block(params, start, width_in, width)
            dweights = _block(grads, start, width_in, width)
            dbiases = grads[start + n_weights:start + n_weights + width]
            _dense_dweights(plans[l, batch_kind, DWEIGHTS_FORM],
                            plans[l, batch_kind, DWEIGHTS_PARALLEL] == 1, inputs, dvalues,
                            dweights, scratch, settings[DWEIGHTS_T])
            dense_backward_biases_serial(dvalues, dbiases)
            l1 = floats[l, L1_WEIGHTS]
            l2 = floats[l, L2_WEIGHTS]
            if l1 > 0 or l2 > 0:
                if not USE_PENALTIES:
                    raise ValueError(NO_PENALTIES)
                if PARALLEL and n_weights >= parallel_min:
                    regularization_backward_parallel(params[start:start + n_weights], l1, l2,
                                                     grads[start:start + n_weights])
                else:
                    regularization_backward_serial(params[start:start + n_weights], l1, l2,
                                                   grads[start:start + n_weights])
            l1 = floats[l, L1_BIASES]
            l2 = floats[l, L2_BIASES]
            if l1 > 0 or l2 > 0:
                if not USE_PENALTIES:
                    raise ValueError(NO_PENALTIES)
                regularization_backward_serial(
                    params[start + n_weights:start + n_weights + width], l1, l2, dbiases)
            if needs_dinputs:
                _dense_dinputs(plans[l, batch_kind, DINPUTS_FORM],
                               plans[l, batch_kind, DINPUTS_PARALLEL] == 1, dvalues, weights,
                               packed, program[l, PACKED],
                               _block(dacts, program[l, IN], m, width_in), scratch)
        if not needs_dinputs:
            continue
        flat_dvalues = _flat(dvalues)
        flat_dinputs = dacts[program[l, IN]:program[l, IN] + n]
        if USE_RELU:
            if kind == RELU:    # (in place: its input's blocks hold its output, its gradient)
                if large:
                    relu_backward_in_place_parallel(flat_dvalues, _flat(inputs))
                else:
                    relu_backward_in_place_serial(flat_dvalues, _flat(inputs))
        if USE_SIGMOID:
            if kind == SIGMOID:
                flat_output = acts[program[l, OUT]:program[l, OUT] + n]
                if large:
                    sigmoid_backward_parallel(flat_dvalues, flat_output, flat_dinputs)
                else:
                    sigmoid_backward_serial(flat_dvalues, flat_output, flat_dinputs)
        if USE_SOFTMAX:
            if kind == SOFTMAX:
                if not USE_SOFTMAX_BACKWARD:
                    raise ValueError(NO_SOFTMAX_BACKWARD)
                output = _block(acts, program[l, OUT], m, width)
                dinputs = _block(dacts, program[l, IN], m, width)
                if large:
                    softmax_backward_parallel(dvalues, output, dinputs)
                else:
                    softmax_backward_serial(dvalues, output, dinputs)
        if USE_DROPOUT:
            if kind == DROPOUT:
                flat_mask = scratch[program[l, MASK]:program[l, MASK] + n]
                if large:
                    dropout_backward_parallel(flat_dvalues, flat_mask, flat_dinputs)
                else:
                    dropout_backward_serial(flat_dvalues, flat_mask, flat_dinputs)
        # LINEAR: its gradient block is its input's (the identity's gradient is a copy)


@register_jitable
def update(settings, hyper, params, grads, state_1, state_2, learning_rate, parallel_min):
    """The optimizer's step over every parameter of the model at once: one call of its kernel
    over the one flat buffer (each parameter's update reads and writes its own element only,
    as when ``Optimizer.update_params`` runs it layer by layer)."""
    n = settings[N_PARAMS]
    large = PARALLEL and n >= parallel_min
    optimizer = settings[OPTIMIZER]
    p = params[:n]
    g = grads[:n]
    if USE_ADAM:
        if optimizer == ADAM:
            # float(...): with an integer exponent numba multiplies (powi), which rounds
            # differently from the libm pow() that Python's ``beta ** (iterations + 1)`` calls.
            iteration = float(settings[ITERATIONS] + 1)
            correction_1 = 1 - math.pow(hyper[BETA_1], iteration)
            correction_2 = 1 - math.pow(hyper[BETA_2], iteration)
            if large:
                adam_update_parallel(p, g, state_1[:n], state_2[:n], learning_rate,
                                     hyper[EPSILON], hyper[BETA_1], hyper[BETA_2],
                                     correction_1, correction_2)
            else:
                adam_update_serial(p, g, state_1[:n], state_2[:n], learning_rate,
                                   hyper[EPSILON], hyper[BETA_1], hyper[BETA_2], correction_1,
                                   correction_2)
    if USE_SGD:
        if optimizer == SGD:
            if large:
                sgd_update_parallel(p, g, learning_rate)
            else:
                sgd_update_serial(p, g, learning_rate)
    if USE_SGD_MOMENTUM:
        if optimizer == SGD_MOMENTUM:
            if large:
                sgd_momentum_update_parallel(p, g, state_1[:n], learning_rate, hyper[MOMENTUM])
            else:
                sgd_momentum_update_serial(p, g, state_1[:n], learning_rate, hyper[MOMENTUM])
    if USE_ADAGRAD:
        if optimizer == ADAGRAD:
            if large:
                adagrad_update_parallel(p, g, state_1[:n], learning_rate, hyper[EPSILON])
            else:
                adagrad_update_serial(p, g, state_1[:n], learning_rate, hyper[EPSILON])
    if USE_RMSPROP:
        if optimizer == RMSPROP:
            if large:
                rmsprop_update_parallel(p, g, state_1[:n], learning_rate, hyper[EPSILON],
                                        hyper[RHO])
            else:
                rmsprop_update_serial(p, g, state_1[:n], learning_rate, hyper[EPSILON],
                                      hyper[RHO])


@register_jitable
def refresh_packed(program, params, packed):
    """Pack ``weights.T`` again for the layers whose forms read it, after an update."""
    for l in range(program.shape[0]):
        if program[l, KIND] == DENSE and program[l, PACKED] >= 0:
            width_in = program[l, WIDTH_IN]
            width = program[l, WIDTH]
            transpose_tiled_serial(_block(params, program[l, WEIGHTS], width_in, width),
                                   _block(packed, program[l, PACKED], width, width_in))


@register_jitable
def _gather(X, y_index, y_values, order, start, m, rows, targets, values):
    """Rows ``order[start:start + m]`` of X and of the targets, copied into the buffers
    (``Model.train``'s ``X[order]`` of a shuffled epoch, batch by batch)."""
    for s in range(m):
        source = order[start + s]
        for i in range(X.shape[1]):
            rows[s, i] = X[source, i]
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
    parallel_min = settings[PARALLEL_MIN_ELEMENTS]
    out = np.zeros(1)       # float64: what ops.mean and ops.regularization_loss read back
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
                if USE_PENALTIES and item == n_steps and n_epochs > 0:   # the epoch is over
                    epoch_log[epoch, EPOCH_REGULARIZATION] = regularization_loss(
                        program, floats, params, out)
                start = (item - n_steps) * val_batch_size
                m = min(val_batch_size, n_val - start)
                kind = VAL_FULL if m == val_batch_size else VAL_LAST
                batch = X_val[start:start + m]
                batch_targets = y_val_index[start:start + m] if y_val_index.shape[0] > 0 \
                    else targets
                batch_values = y_val_values[start:start + m]
                dlast = no_gradient
            output = forward(program, plans, floats, kind, batch, m, training, params, acts,
                             packed, scratch, parallel_min)
            data_loss = 0.0
            accuracy = 0.0
            if training or settings[LOSS] != NO_LOSS:
                data_loss, accuracy = loss_and_accuracy(settings, hyper, output, batch_targets,
                                                        batch_values, m, sample_losses,
                                                        correct, dlast, out)
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
                # (a build without penalties does not compile their sum: 0, as it would add
                # up; given a model with one, its backward raises before any update)
                penalty = 0.0
                if USE_PENALTIES:
                    penalty = regularization_loss(program, floats, params, out)
                row = epoch * n_steps + step
                step_log[row, STEP_DATA_LOSS] = data_loss
                step_log[row, STEP_ACCURACY] = accuracy
                step_log[row, STEP_REGULARIZATION] = penalty
                step_log[row, STEP_LEARNING_RATE] = learning_rate
                if not (math.isfinite(data_loss) and math.isfinite(penalty)):
                    failed = row
                    break
                backward(program, plans, floats, settings, kind, batch, m, params, grads, acts,
                         dacts, packed, scratch, parallel_min)
                update(settings, hyper, params, grads, state_1, state_2, learning_rate,
                       parallel_min)
                hyper[CURRENT_LEARNING_RATE] = learning_rate
                settings[ITERATIONS] += 1
                refresh_packed(program, params, packed)
                if USE_PENALTIES and step == n_steps - 1 and n_val_batches == 0:
                    epoch_log[epoch, EPOCH_REGULARIZATION] = regularization_loss(
                        program, floats, params, out)
        if failed >= 0:
            break
        if n_val > 0:
            epoch_log[epoch, EPOCH_VAL_LOSS] = loss_sum / n_val
            epoch_log[epoch, EPOCH_VAL_ACCURACY] = accuracy_sum / n_val
    return failed


# --- Builds -----------------------------------------------------------------------------------------

# The functions of this module a build copies (bound to the build's constants and kernels):
# numba freezes a function's globals when it compiles it, and a helper reads its own module's
# globals, so each build gets its own copy of every helper.
HELPERS = ("_block", "_panels", "_panels_of", "_dense_forward", "_dense_dweights",
           "_dense_dinputs", "regularization_loss", "forward", "loss_and_accuracy", "backward",
           "update", "refresh_packed", "_gather")


# The helpers ``train_block`` calls from one place are inlined into it before numba types it
# (``njit(inline="always")``: never compiled on their own). numba compiles a called function
# into a library of its own and links a copy of it, with all it calls, into its caller, where
# LLVM optimizes it and makes machine code of it again: a kernel called through
# ``_dense_forward``, ``forward`` and ``train_block`` went through LLVM four times. Inlined, each
# kernel is linked once, into ``train_block`` (a cold chapter-19-sized model compiled 30.6-33.2 s
# before, 25.3-25.8 s after; a cold ``loopnet train`` 11.4-12.1 s, 10.3-11.0 s, alternating
# runs). The helpers called from many places stay functions: inlined, each call would be typed
# again, and typing costs more than the linking saves.
INLINED = ("_dense_forward", "_dense_dweights", "_dense_dinputs", "forward", "loss_and_accuracy",
           "backward", "update", "refresh_packed", "_gather")


def _inlined(function):
    return njit(inline="always")(function)


def build(what: Build, kernels: dict | None = None):
    """``train_block`` and its helpers again, as plain functions bound to a namespace holding
    ``what``'s constants and ``kernels`` (``{"<name>_serial": compiled kernel,
    "<name>_parallel": ...}`` for ``KERNEL_NAMES``: the cpu backend's builds), under names of
    their own (numba names its cache files after the function): ready for ``numba.njit``."""
    suffix = "__" + what.name()
    namespace = dict(globals())
    namespace.update(constants(what))
    if kernels is not None:
        namespace.update(kernels)

    for name in HELPERS:
        wrap = _inlined if name in INLINED else register_jitable
        namespace[name] = wrap(renamed(globals()[name], suffix, namespace))
    return renamed(train_block, suffix, namespace)
