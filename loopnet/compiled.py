"""``Model.train``, ``evaluate`` and ``predict`` on the ``cpu`` device, in one compiled call.

``plan(model, ...)`` turns a model into the layer program of ``loopnet.kernels.step`` and
sets up every buffer once per call (borrowed from a pool of the calling thread's arrays and
given back when the call ends: fresh memory would cost a page fault per 4 KB on every call;
where the buffers lie and which build runs are worked out once per model sizes, ``Layout``);
``CompiledRun.train`` then runs blocks of epochs through
``train_block`` and hands back, per step, the numbers the layered path would have produced
(mean data loss, mean accuracy, penalty, learning rate; a ``Block`` of them per call), so that
``Model.train`` prints, records and validates the same way whichever path ran. Parameters,
gradients and the optimizer's state are copied from the layers into flat buffers when a call
starts and back (into the very same arrays) after every block: between blocks the model is
exactly where the layered path would have left it.

Covered: every model ``Model`` builds from Dense (with L1/L2 penalties), Dropout, ReLU, Sigmoid,
Linear and Softmax; CategoricalCrossentropy (class indices or one-hot), BinaryCrossentropy,
MeanSquaredError, MeanAbsoluteError; SGD (decay, momentum), Adagrad, RMSprop, Adam;
categorical, binary and regression accuracy; full batch or minibatches, shuffled or not, with
validation data; float32 or float64. Anything else (another device, a layer class of your own,
arrays on a GPU, layers whose parameters share memory) runs on the layered path, and
``Unsupported`` says why: ``Model.train`` records it in the history under ``"path"`` and warns
once (``SlowPathWarning``).
``LOOPNET_COMPILED_STEP=0`` switches the compiled path off.
"""

from __future__ import annotations

import os

import numpy as np

from loopnet import checks
from loopnet.devices import get_device
from loopnet.validate import number, warn

ENV_VAR = "LOOPNET_COMPILED_STEP"
# LOOPNET_STEP_BUILD=full: one build with every branch for every model (one compile serves
# them all, e.g. for tests that train many kinds of models), instead of a build per kind.
FULL_BUILD_VAR = "LOOPNET_STEP_BUILD"

# A block of epochs is sized to take roughly this many multiply-adds (a step's forward and
# backward: 3x the forward's), 0.01-0.2 s here (the book's models run 2.5-40 G of them a
# second), so the Python side (the log, the history, the progress bar) keeps up, while a
# block's own cost (~0.1 ms: its arguments, the parameters copied in and out, its records)
# is spread over its epochs: ch17's 1-64-64-1 on 1,000 rows, one thread, ran blocks of 3
# epochs at 50M (386 us an epoch) and of 39 at 500M (354-361 us; all 300 in one block 344).
BLOCK_WORK = 500_000_000
# ... and at most this many steps (the step log: 40 bytes a step).
BLOCK_STEPS = 100_000


class Unsupported(Exception):
    """The model (or this call) is not one the compiled step covers; the message says why."""


class Changed(Unsupported):
    """The model changed during training (in a callback, between two epochs) in a way the
    compiled step cannot follow: the remaining epochs take the layered path."""


class SlowPathWarning(UserWarning):
    """A model trained on the ``cpu`` device takes the layered path (one op after another, each
    validated in Python) instead of the compiled step; the message says which layer or setting."""


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1") != "0"


def _kinds():
    from loopnet.activations import Linear, ReLU, Sigmoid, Softmax
    from loopnet.kernels import step
    from loopnet.layers import Dense, Dropout

    return ((Dense, step.DENSE), (Dropout, step.DROPOUT), (ReLU, step.RELU),
            (Sigmoid, step.SIGMOID), (Linear, step.LINEAR), (Softmax, step.SOFTMAX))


def _describe(obj) -> str:
    return type(obj).__name__


def _check_device(model):
    owners = [("layer", layer) for layer in model.layers]
    owners += [("loss", model.loss), ("accuracy", model.accuracy)]
    for what, owner in owners:
        if owner is None:
            continue
        device = get_device(getattr(owner, "device", None))
        if device != "cpu":
            raise Unsupported(f"the {what} {_describe(owner)} runs on {device!r}")


def _check_array(array, name):
    if not isinstance(array, np.ndarray):
        raise Unsupported(f"{name} is a {type(array).__name__}, not a numpy array")


# A dense layer's arrays the compiled step copies in and writes back.
_LAYER_ARRAYS = ("weights", "biases", *(state for state, _ in checks.STATE_ARRAYS))


def _same(these, those) -> bool:
    """Whether two lists hold the same objects (``is``, not ``==``: arrays compare element by
    element), in order. (A plain loop: ``all()`` over a generator costs twice as much, before
    every block of epochs.)"""
    if len(these) != len(those):
        return False
    for a, b in zip(these, those):
        if a is not b:
            return False
    return True


class Program:
    """A model as ``loopnet.kernels.step``'s layer program, with its parameter layout."""

    def __init__(self, model, dtype, n_inputs):
        from loopnet.kernels import step

        self.step = step
        self.model = model
        self.dtype = np.dtype(dtype)
        kinds = _kinds()
        rows = []
        self.dense = []        # (layer index, layer)
        self.dropout = []
        width = n_inputs
        self.n_params = 0
        for index, layer in enumerate(model.layers):
            cls = checks.known_class(layer, [c for c, _ in kinds], ("forward", "backward"))
            if cls is None:
                raise Unsupported(f"layer {index} ({_describe(layer)}) is not one of loopnet's "
                                  "Dense, Dropout, ReLU, Sigmoid, Linear, Softmax")
            kind = dict(kinds)[cls]
            row = np.zeros(step.N_FIELDS, np.int64)
            row[step.KIND] = kind
            row[step.WIDTH_IN] = width
            row[step.PACKED] = -1
            if kind == step.DENSE:
                weights, biases = layer.weights, layer.biases
                _check_array(weights, f"layer {index}'s weights")
                _check_array(biases, f"layer {index}'s biases")
                if weights.dtype != self.dtype or biases.dtype != self.dtype:
                    raise Unsupported(f"layer {index}'s parameters are {weights.dtype}/"
                                      f"{biases.dtype}, other layers' {self.dtype}")
                if weights.ndim != 2 or weights.shape[0] != width:
                    raise Unsupported(f"layer {index}'s weights have shape {weights.shape}, "
                                      f"its input has {width} columns")
                if biases.shape not in ((1, weights.shape[1]), (weights.shape[1],)):
                    raise Unsupported(f"layer {index}'s biases have shape {biases.shape}, "
                                      f"its weights {weights.shape}")
                width = weights.shape[1]
                row[step.WEIGHTS] = self.n_params
                self.n_params += weights.size + width
                self.dense.append((index, layer))
            elif kind == step.DROPOUT:
                row[step.SEED] = layer.seed
                row[step.STEP] = layer.step
                self.dropout.append((index, layer))
            row[step.WIDTH] = width
            rows.append(row)
        if not self.dense:
            raise Unsupported("the model has no Dense layer")
        self.program = np.array(rows, np.int64).reshape(len(rows), step.N_FIELDS)
        self.floats = np.zeros((len(rows), step.N_FLOATS), np.float64)
        self.read_settings()
        self.n_outputs = width
        last = self.program[-1, step.KIND]
        if last == step.LINEAR and len(rows) == 1:
            raise Unsupported("the model is a single Linear layer")
        first_dense = self.dense[0][0]
        for index in range(len(rows)):
            self.program[index, step.NEEDS_DINPUTS] = int(index > first_dense)
        self._check_apart()
        self._loss_and_accuracy()
        self.optimizer = None

    def read_settings(self):
        """The settings a layer may change between two epochs (a callback's
        ``dense.weight_regularizer_l2 = 1e-3``, a dropout layer's ``rate``, ``seed`` or
        ``step``): read into the program's floats and rows, as the layered path reads them at
        every step. (Each was checked when it was assigned.)"""
        step = self.step
        self.penalized = False      # (any penalty: the build then has their code)
        for index, layer in self.dense:
            penalties = (layer.weight_regularizer_l1, layer.weight_regularizer_l2,
                         layer.bias_regularizer_l1, layer.bias_regularizer_l2)
            self.floats[index] = (*penalties, 0.0)
            self.penalized = self.penalized or max(penalties) > 0
        for index, layer in self.dropout:
            self.floats[index, step.RATE] = layer.drop_rate
            self.program[index, step.SEED] = layer.seed
            self.program[index, step.STEP] = layer.step

    def parts(self):
        """What the program and its parameter layout were made from: ``(the layers, the
        loss, the optimizer and the accuracy; each dense layer's arrays; the two settings
        that choose a kernel: whether SGD has momentum and the accuracy is binary)``, the
        objects themselves (held, so that none is freed and its ``id`` reused by a
        newcomer)."""
        model = self.model
        return ([*model.layers, model.loss, model.optimizer, model.accuracy],
                [arrays.get(name) for arrays in [layer.__dict__ for _, layer in self.dense]
                 for name in _LAYER_ARRAYS],
                (bool(getattr(model.optimizer, "momentum", 0.0)),
                 bool(getattr(model.accuracy, "binary", False))))

    def follow(self, parts, X, moved=False):
        """Before a block of epochs that is not the first: ``parts`` (those after the first
        block) when the model is still made of them, else its parts now (``parts()``), after
        raising ``Changed`` where the program cannot follow the change; either way the
        layers' settings read again. A dense layer's array replaced by one that fits (same
        shape, dtype and layout, apart from the others) is followed: the next block copies
        the new arrays. ``moved``: something changed in place (``checks.fingerprint``: an
        array's shape, dtype, strides or writeability, the object staying the same); the
        arrays are then checked as new ones would be."""
        now = self.parts()
        if moved or not (_same(now[1], parts[1]) and _same(now[0], parts[0])
                         and now[2] == parts[2]):
            if not _same(now[0], parts[0]):
                raise Changed("the model's layers, loss, optimizer or accuracy changed during "
                              "training")
            if now[2] != parts[2]:
                raise Changed("SGD's momentum or the accuracy's binary setting was switched "
                              "during training")
            step = self.step
            try:
                checks.check_model(self.model, X)
                for index, layer in self.dense:
                    row = self.program[index]
                    if (layer.weights.shape != (row[step.WIDTH_IN], row[step.WIDTH])
                            or layer.weights.dtype != self.dtype
                            or layer.biases.dtype != self.dtype):
                        raise Unsupported(f"layer {index}'s parameters changed shape or dtype")
                self._check_apart()
            except (Unsupported, ValueError, TypeError) as reason:
                raise Changed(f"a layer's arrays changed during training: {reason}") from None
            parts = now
        self.read_settings()
        return parts

    def _check_apart(self):
        """``Unsupported`` when two of the dense layers' arrays (parameters, optimizer state)
        share memory, as tied weights do (``dense2.weights = dense1.weights``): the compiled
        step keeps a copy of each layer's arrays and writes them back one after the other, so
        the layer written last would win, where the layered path updates the one array once
        per layer."""
        # Arrays that share memory are the same array or views of one owner (numpy points a
        # view's ``base`` at the array that owns the memory): only those are compared
        # (np.may_share_memory for every pair would cost ~0.3 us a pair, every call).
        by_owner = {}
        for index, layer in self.dense:
            for name in _LAYER_ARRAYS:
                array = layer.__dict__.get(name)
                if type(array) is not np.ndarray:
                    continue
                owner = id(array if array.base is None else array.base)
                for other, other_index, other_name in by_owner.get(owner, ()):
                    if np.may_share_memory(array, other):
                        raise Unsupported(f"layer {index}'s {name} and layer {other_index}'s "
                                          f"{other_name} share memory (tied parameters)")
                by_owner.setdefault(owner, []).append((array, index, name))

    def _loss_and_accuracy(self):
        from loopnet.accuracy import BinaryAccuracy, CategoricalAccuracy, RegressionAccuracy
        from loopnet.losses import (BinaryCrossentropy, CategoricalCrossentropy,
                                    MeanAbsoluteError, MeanSquaredError)

        step = self.step
        model = self.model
        losses = ((CategoricalCrossentropy, step.CATEGORICAL_CROSSENTROPY),
                  (BinaryCrossentropy, step.BINARY_CROSSENTROPY),
                  (MeanSquaredError, step.MEAN_SQUARED_ERROR),
                  (MeanAbsoluteError, step.MEAN_ABSOLUTE_ERROR))
        self.loss = None
        if model.loss is not None:
            cls = checks.known_class(model.loss, [c for c, _ in losses], checks.LOSS_METHODS)
            if cls is None:
                raise Unsupported(f"the loss {_describe(model.loss)} is not one of loopnet's")
            self.loss = dict(losses)[cls]
        accuracies = ((CategoricalAccuracy, step.CATEGORICAL_ACCURACY),
                      (BinaryAccuracy, step.BINARY_ACCURACY),
                      (RegressionAccuracy, step.REGRESSION_ACCURACY))
        self.accuracy = step.NO_ACCURACY
        if model.accuracy is not None:
            cls = checks.known_class(model.accuracy, [c for c, _ in accuracies],
                                     checks.ACCURACY_METHODS)
            if cls is None:
                raise Unsupported(f"the accuracy {_describe(model.accuracy)} is not one of "
                                  "loopnet's")
            self.accuracy = dict(accuracies)[cls]
            if cls is CategoricalAccuracy and model.accuracy.binary:
                self.accuracy = step.BINARY_ACCURACY
        self.fused_softmax = int(self.loss == step.CATEGORICAL_CROSSENTROPY
                                 and model.softmax_classifier_output is not None
                                 and self.program[-1, step.KIND] == step.SOFTMAX)

    def check_optimizer(self):
        """The optimizer's code in ``loopnet.kernels.step``, or ``Unsupported``."""
        from loopnet.optimizers import SGD, Adagrad, Adam, RMSprop

        step = self.step
        optimizer = self.model.optimizer
        if optimizer is not None:
            optimizers = (SGD, Adagrad, RMSprop, Adam)
            cls = checks.known_class(optimizer, optimizers,
                                     ("update_params", "pre_update_params", "post_update_params"))
            if cls is None:
                raise Unsupported(f"the optimizer {_describe(optimizer)} is not one of "
                                  "loopnet's")
            self.optimizer = {SGD: step.SGD, Adagrad: step.ADAGRAD, RMSprop: step.RMSPROP,
                              Adam: step.ADAM}[cls]
            if cls is SGD and optimizer.momentum:
                self.optimizer = step.SGD_MOMENTUM

    # --- targets --------------------------------------------------------------------------------

    def targets(self, y, n_samples, name="y"):
        """``(class indices, values)`` for the loss and the accuracy, validated and converted
        as the layered ops would (``checks.check_targets``: the same errors, raised before
        anything runs, naming ``y`` or ``y_val``); empty arrays for a form neither reads."""
        index = np.zeros(0, np.intp)
        values = np.zeros((0, self.n_outputs), self.dtype)
        if y is None:
            return index, values
        _check_array(y, name)
        # checked and converted from a copy, never ``y`` itself (int64 labels would pass as
        # they are): the kernels index with the labels, unchecked, and a callback or another
        # thread may write into ``y``, even between the check and a copy made after it
        y = y.copy()
        classes, converted = checks.check_targets(self.model, y, n_samples, self.n_outputs,
                                                  self.dtype, name)
        if classes is not None:
            index = classes
        if converted is not None:
            values = np.ascontiguousarray(converted)
        return index, values


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


class Layout:
    """Where a run's layers, plans and scratch regions lie (``_layout``): what a
    ``CompiledRun`` makes of its model's sizes and its batches, the same for every run of the
    same sizes, so made once and shared (with the compiled steps such runs call)."""

    def __init__(self, columns, fields, plans, batch_rows, work, acts, packed, scratch,
                 settings):
        self.columns, self.fields = columns, fields     # (the program's columns it fills in)
        self.plans, self.batch_rows, self.work = plans, batch_rows, work
        self.acts, self.packed, self.scratch, self.settings = acts, packed, scratch, settings
        self.builds = {}


_LAYOUTS: dict = {}
LAYOUTS_KEPT = 64       # (made again beyond that: a few hundred bytes and ~15 us each)


def _layout(program, n_samples, batch_size, val_rows, val_batch_size):
    """The ``Layout`` of a run of ``program`` over these rows: made by ``_make_layout`` on the
    first run of such sizes, then looked up (~15 us of a ``train(epochs=1)`` call saved, and
    the choice of its compiled step, ~10 us more). A forked child starts afresh, as
    ``cpu.dense_plan`` does: its plans may run serial where the parent's ran in parallel."""
    from loopnet.backends import cpu

    step = program.step
    table = program.program
    # (the layers' kinds and widths give the parameters' count and the outputs' width too)
    key = (table[:, [step.KIND, step.WIDTH_IN, step.WIDTH, step.NEEDS_DINPUTS]].tobytes(),
           n_samples, batch_size, val_rows, val_batch_size, program.dtype,
           getattr(program, "loss", None),
           getattr(program, "accuracy", None), getattr(program, "optimizer", None),
           getattr(program, "fused_softmax", 0),
           cpu.dense_plan, cpu.PARALLEL_MIN_ELEMENTS)     # (what tests may stand in for)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _make_layout(program, n_samples, batch_size, val_rows, val_batch_size)
        if len(_LAYOUTS) >= LAYOUTS_KEPT:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_LAYOUTS.clear)


def _make_layout(program, n_samples, batch_size, val_rows, val_batch_size):
    from loopnet.backends import cpu
    from loopnet.kernels import dense_fast as fast

    step = program.step
    dtype = program.dtype
    rows = max(batch_size, val_batch_size)
    align = 64 // dtype.itemsize  # a region per 64-byte line: aligned for vector loads
    double = dtype.itemsize == 8    # float64: no broadcast form (``cpu.dense_plan``)
    table = program.program.copy()
    n_layers = table.shape[0]
    steps_per_epoch = -(-n_samples // batch_size) if n_samples else 0
    kinds = [(step.TRAIN_FULL, batch_size),
             (step.TRAIN_LAST, n_samples - (steps_per_epoch - 1) * batch_size
              if n_samples else batch_size),
             (step.VAL_FULL, val_batch_size),
             (step.VAL_LAST, val_rows - (-(-val_rows // val_batch_size) - 1)
              * val_batch_size if val_rows else val_batch_size)]
    plans = np.zeros((n_layers, 4, 6), np.int64)
    offset = 0
    previous = -1
    panels = 0
    dweights_t = 0
    packed = 0
    for l in range(n_layers):
        width_in, width = int(table[l, step.WIDTH_IN]), int(table[l, step.WIDTH])
        table[l, step.IN] = previous
        if table[l, step.KIND] in step.SHARED_BLOCK_KINDS and previous >= 0:
            table[l, step.OUT] = previous   # the same block (``step.forward``)
        else:
            table[l, step.OUT] = offset
            offset += _round_up(rows * width, align)
        previous = int(table[l, step.OUT])
        if table[l, step.KIND] != step.DENSE:
            continue
        reads_transpose = False
        for kind, m in kinds:
            plan = cpu.dense_plan(max(m, 1), width_in, width, double)
            plans[l, kind] = (plan.forward.form, plan.forward.parallel,
                              plan.dweights.form, plan.dweights.parallel,
                              plan.dinputs.form, plan.dinputs.parallel)
            training = kind in (step.TRAIN_FULL, step.TRAIN_LAST)
            if plan.forward.form == fast.BROADCAST:
                panels = max(panels, -(-width // 64) * width_in * 64)
            if plan.forward.form in (fast.DOT_TILES, fast.DOT_PLAIN):
                reads_transpose = True
            if not training:
                continue
            if plan.dweights.form == fast.BROADCAST:
                panels = max(panels, -(-width // 64) * m * 64)
            if plan.dweights.form == fast.NARROW:
                dweights_t = max(dweights_t, width * width_in)
            if table[l, step.NEEDS_DINPUTS]:
                if plan.dinputs.form == fast.BROADCAST:
                    panels = max(panels, -(-width_in // 64) * width * 64)
                if plan.dinputs.form == fast.NARROW:
                    reads_transpose = True
        if reads_transpose:
            table[l, step.PACKED] = packed
            packed += _round_up(width * width_in, align)
    settings = np.zeros(step.N_SETTINGS, np.int64)
    scratch = _round_up(panels, align)
    settings[step.DWEIGHTS_T] = scratch
    scratch += _round_up(dweights_t, align)
    for index in range(n_layers):
        if table[index, step.KIND] == step.DROPOUT:
            table[index, step.MASK] = scratch
            scratch += _round_up(rows * int(table[index, step.WIDTH]), align)
    settings[step.SAMPLE_LOSSES] = scratch
    scratch += _round_up(rows, align)
    settings[step.CORRECT] = scratch
    scratch += rows * program.n_outputs
    settings[step.PARALLEL_MIN_ELEMENTS] = cpu.PARALLEL_MIN_ELEMENTS
    settings[step.N_PARAMS] = program.n_params
    settings[step.LOSS] = step.NO_LOSS if getattr(program, "loss", None) is None \
        else program.loss
    settings[step.ACCURACY] = getattr(program, "accuracy", step.NO_ACCURACY)
    settings[step.OPTIMIZER] = getattr(program, "optimizer", None) or 0
    settings[step.FUSED_SOFTMAX] = getattr(program, "fused_softmax", 0)
    work = batch_size * sum(int(table[i, step.WIDTH_IN] * table[i, step.WIDTH])
                            for i in range(n_layers) if table[i, step.KIND] == step.DENSE)
    # where each layer reads and writes, its packed transpose, its dropout mask
    columns = [step.IN, step.OUT, step.PACKED, step.MASK]
    return Layout(columns, table[:, columns].copy(), plans, dict(kinds), work, max(offset, 1),
                  max(packed, 1), scratch, settings)


class CompiledRun:
    """The buffers of one ``Model.train`` / ``evaluate`` / ``predict`` call."""

    def __init__(self, program: Program, X, batch_size, val_rows, val_batch_size):
        from loopnet.backends import cpu

        step = program.step
        self.cpu = cpu
        self.program = program
        self.step = step
        dtype = program.dtype
        self.X = X
        self.val_rows = val_rows
        n_samples = X.shape[0]
        self.batch_size = max(1, min(batch_size or n_samples, n_samples)) if n_samples else 1
        self.val_batch_size = max(1, min(val_batch_size or val_rows, val_rows)) if val_rows else 1
        table = program.program
        layout = _layout(program, n_samples, self.batch_size, val_rows, self.val_batch_size)
        table[:, layout.columns] = layout.fields
        self.plans = layout.plans.copy()
        self.batch_rows = layout.batch_rows
        self._work = layout.work
        # (the buffers are borrowed from this thread's pool and given back by ``release``)
        self.borrowed = []
        self.acts = self._borrow(layout.acts, dtype)
        self.dacts = self._borrow(layout.acts, dtype)
        self.packed = self._borrow(layout.packed, dtype)
        self.scratch = self._borrow(layout.scratch, dtype)
        self.scratch[...] = 0
        self.settings = layout.settings.copy()
        self.params = self._borrow(program.n_params, dtype)
        self.grads = self._borrow(program.n_params, dtype)
        self.state_1 = np.zeros(program.n_params if _uses_state(program, 1) else 1, dtype)
        self.state_2 = np.zeros(program.n_params if _uses_state(program, 2) else 1, dtype)
        self.hyper = np.zeros(step.N_HYPER, np.float64)
        n_inputs = int(table[0, step.WIDTH_IN])
        self.rows = self._borrow(self.batch_size * n_inputs, dtype).reshape(
            (self.batch_size, n_inputs))
        self.targets = np.zeros(self.batch_size, np.intp)
        self.values = np.zeros((self.batch_size, program.n_outputs), dtype)
        self.compile_time = 0.0
        self._pairs = None          # what ``load`` and ``store`` copy (``_make_pairs``)
        self._kernels = {}          # (parallel, penalized, ...) -> its compiled step (``_kernel``)
        # ... and the ``Build`` each asks for: a training run's shared by the runs of its layout
        self._builds = layout.builds if program.optimizer is not None else {}
        self._compiled = None       # the kernel compile_for last saw this run's arguments for

    def _borrow(self, size, dtype):
        array = self.cpu.borrow(size, dtype)
        self.borrowed.append(array)
        return array

    def release(self):
        """Give the borrowed buffers back to this thread's pool; the run is unusable after."""
        borrowed, self.borrowed = self.borrowed, []
        self.acts = self.dacts = self.packed = self.scratch = None
        self.params = self.grads = self.rows = None
        self.cpu.give_back(borrowed)

    def steps_per_epoch(self):
        n_samples = self.X.shape[0]
        return -(-n_samples // self.batch_size) if n_samples else 0

    # --- moving parameters in and out ----------------------------------------------------------

    def read_precision(self):
        """The regression accuracy's precision into the hyper-parameters the step compares
        with (for training and for ``evaluate`` alike: left at 0, no prediction would be
        within it)."""
        precision = getattr(self.program.model.accuracy, "precision", None)
        if precision is not None:
            self.hyper[self.step.PRECISION] = precision

    def load(self):
        """Copy the layers' parameters (and the optimizer's state) into the flat buffers."""
        if self._pairs is None:
            self._pairs = self._make_pairs()
        for array, flat in self._pairs:
            flat[...] = array
        self.refresh_packed()

    def _make_pairs(self):
        """``[(a layer's array as a flat view, its slice of a flat buffer)]`` for the dense
        layers' parameters and the optimizer's state (made here where missing), in the
        program's layout. Made by a run's first ``load`` and kept while the layers hold those
        very arrays (``forget_pairs`` when a callback changed one): each block then copies in
        and out with no look-up (a copy by look-ups cost ~12 us each way for chapter 16's
        model, as much as its epoch). The arrays are C-contiguous (``checks.check_model``),
        so each flat view writes into its array."""
        step = self.step
        table = self.program.program
        optimizer = self.program.model.optimizer
        names = optimizer.state_names if self.program.optimizer is not None else ()
        pairs = []
        for index, layer in self.program.dense:
            start = int(table[index, step.WEIGHTS])
            for params, prefix in ((layer.weights, "weight"), (layer.biases, "bias")):
                size = params.size
                pairs.append((params.reshape(-1), self.params[start:start + size]))
                for buffer, name in zip((self.state_1, self.state_2), names):
                    state = optimizer._state(layer, f"{prefix}_{name}", params)
                    pairs.append((np.asarray(state).reshape(-1), buffer[start:start + size]))
                start += size
        return pairs

    def forget_pairs(self):
        """The layers hold other arrays than the last ``load`` copied: the next one looks
        them up again."""
        self._pairs = None

    def refresh_packed(self):
        step = self.step
        table = self.program.program
        for index, layer in self.program.dense:
            if table[index, step.PACKED] >= 0:
                width_in, width = layer.weights.shape
                start = int(table[index, step.PACKED])
                self.packed[start:start + width * width_in] = layer.weights.T.reshape(-1)

    def store(self, gradients: bool):
        """Copy the flat buffers back into the layers' own arrays (in place)."""
        step = self.step
        table = self.program.program
        for array, flat in self._pairs:
            array[...] = flat
        if gradients:
            for index, layer in self.program.dense:
                start = int(table[index, step.WEIGHTS])
                for params, grad_name in ((layer.weights, "dweights"), (layer.biases, "dbiases")):
                    size = params.size
                    grad = layer.__dict__.get(grad_name)
                    if (type(grad) is not np.ndarray or grad.shape != params.shape
                            or grad.dtype != params.dtype or not grad.flags.writeable
                            or not grad.flags.c_contiguous):
                        grad = np.zeros(params.shape, params.dtype)
                        setattr(layer, grad_name, grad)
                    grad.reshape(-1)[...] = self.grads[start:start + size]
                    start += size
        for index, layer in self.program.dropout:
            layer.step = int(table[index, step.STEP])

    # --- running ---------------------------------------------------------------------------------

    def build(self):
        """The ``loopnet.kernels.step.Build`` this run needs: what its model is made of and
        which dense forms its plans pick (only those get compiled)."""
        step = self.step
        program = self.program
        table = program.program
        forms = {"forward": set(), "dweights": set(), "dinputs": set()}
        training = program.optimizer is not None
        parallel = self.cpu.parallel_step(self._work_per_step())
        # the batch kinds this run meets: training batches when it trains, validation (or
        # evaluation) batches when it has such rows
        kinds = ((step.TRAIN_FULL, step.TRAIN_LAST) if self.X.shape[0] else ()) + (
            (step.VAL_FULL, step.VAL_LAST) if self.val_rows else ())
        from loopnet.kernels import dense_fast as fast

        wide = False        # a broadcast product walks a wide way (``dense_fast.tn_paths``)
        for l in range(table.shape[0]):
            if table[l, step.KIND] != step.DENSE:
                continue
            width_in, width = int(table[l, step.WIDTH_IN]), int(table[l, step.WIDTH])
            for kind in kinds:
                plan = self.plans[l, kind]
                m = max(self.batch_rows[kind], 1)
                # each product this batch runs: its plan's fields and, for ``tn_wide``, its
                # (summed, rows, columns) sides
                products = [("forward", step.FORWARD_FORM, step.FORWARD_PARALLEL,
                             (width_in, m, width))]
                if training and kind in (step.TRAIN_FULL, step.TRAIN_LAST):
                    products.append(("dweights", step.DWEIGHTS_FORM, step.DWEIGHTS_PARALLEL,
                                     (m, width_in, width)))
                    if table[l, step.NEEDS_DINPUTS]:
                        products.append(("dinputs", step.DINPUTS_FORM, step.DINPUTS_PARALLEL,
                                         (width, m, width_in)))
                for product, form, in_parallel, sides in products:
                    forms[product].add((int(plan[form]), parallel and bool(plan[in_parallel])))
                    wide = wide or (plan[form] == fast.BROADCAST and fast.tn_wide(*sides))
        layers = {int(k) for k in table[:, step.KIND]} - {step.DENSE, step.LINEAR}
        if wide:
            layers.add(step.WIDE_BROADCAST)
        if parallel:
            # (forward's and backward's `large`: a layer's rows x width, the parameters' count)
            rows = max((self.batch_rows[kind] for kind in kinds), default=0)
            widest = int(table[:, step.WIDTH].max()) if table.shape[0] else 0
            if rows * widest >= self.cpu.PARALLEL_MIN_ELEMENTS:
                layers.add(step.LAYERS_IN_PARALLEL)
            if training and program.n_params >= self.cpu.PARALLEL_MIN_ELEMENTS:
                layers.add(step.PARAMETERS_IN_PARALLEL)
        if program.penalized:
            layers.add(step.PENALTIES)
        if table[0, step.KIND] in step.SHARED_BLOCK_KINDS:
            layers.add(step.BATCH_COPY)
        if training:
            # the layers the backward reaches: all but a last Softmax the fused gradient
            # replaces, and only those after the first layer with parameters
            reached = table.shape[0] - (1 if program.fused_softmax else 0)
            if any(table[l, step.KIND] == step.SOFTMAX and table[l, step.NEEDS_DINPUTS]
                   for l in range(reached)):
                layers.add(step.SOFTMAX_BACKWARD)
        if os.environ.get(FULL_BUILD_VAR) == "full":
            return step.FULL._replace(parallel=parallel)
        return step.Build(
            loss=step.NO_LOSS if program.loss is None else program.loss,
            accuracy=program.accuracy, optimizer=-1 if program.optimizer is None
            else program.optimizer, fused_softmax=bool(program.fused_softmax),
            layers=frozenset(layers), forward_forms=frozenset(forms["forward"]),
            dweights_forms=frozenset(forms["dweights"]),
            dinputs_forms=frozenset(forms["dinputs"]), parallel=parallel)

    def _kernel(self):
        """The compiled step for this run's next block: made once per run and per the things
        that may change between its blocks (whether it runs in parallel, whether a callback
        gave the model a penalty, and ``LOOPNET_STEP_BUILD``), not rebuilt before every
        block; the ``Build`` it asks for is the layout's, made by the first run of its sizes."""
        key = (self.cpu.parallel_step(self._work_per_step()), self.program.penalized,
               os.environ.get(FULL_BUILD_VAR))
        kernel = self._kernels.get(key)
        if kernel is None:
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = self.build()
            kernel = self._kernels[key] = self._new_kernel(build)
        return kernel

    def _new_kernel(self, build):
        if build.loss == self.step.FULL.loss:
            return self.cpu.training_step(build)
        if self.program.optimizer is not None:
            return self.cpu.training_step(build)
        # evaluate / predict: a build this process already has serves it when it holds every
        # branch the run takes (a model's training build does: no second compile for loopnet
        # train's final evaluation, nor for a predict after training); the newest first, of
        # the same serial or parallel kind first; otherwise a forward-only build of its own
        made_here = sorted(reversed(self.cpu.step_builds()),
                           key=lambda made: made.parallel != build.parallel)
        for made in made_here:
            if made.serves(build):
                return self.cpu.training_step(made)
        return self.cpu.training_step(build.forward_only())

    def _work_per_step(self):
        return self._work       # (the layout's: a run's widths and batch size stay)

    def call(self, n_epochs, orders, y_index, y_values, X_val, y_val_index, y_val_values,
             predictions):
        """One ``train_block`` call; returns ``(step_log, epoch_log, failed)``."""
        step = self.step
        n_steps = self.steps_per_epoch()
        step_log = np.zeros((max(n_epochs * n_steps, 1), step.N_STEP_LOG), np.float64)
        epoch_log = np.zeros((max(n_epochs, 1), step.N_EPOCH_LOG), np.float64)
        args = (self.X, y_index, y_values, orders, self.batch_size, n_epochs,
                self.program.program, self.plans, self.program.floats, self.settings,
                self.hyper, self.params, self.grads, self.state_1, self.state_2, self.acts,
                self.dacts, self.packed, self.scratch, self.rows, self.targets, self.values,
                X_val, y_val_index, y_val_values, self.val_batch_size, predictions, step_log,
                epoch_log)
        kernel = self._kernel()
        if kernel is not self._compiled:    # (a run's blocks pass arguments of the same kinds)
            self.compile_time += self.cpu.compile_for(kernel, args)
            self._compiled = kernel
        failed = int(kernel(*args))
        return step_log, epoch_log, failed


def _uses_state(program, which):
    step = program.step
    optimizer = getattr(program, "optimizer", None)
    if optimizer in (step.SGD, None):
        return False
    if which == 2:
        return optimizer == step.ADAM
    return True


# --- The three entry points -----------------------------------------------------------------------

def _inputs(program, X, name="X"):
    _check_array(X, name)
    if X.ndim != 2:
        raise Unsupported(f"{name} is {X.ndim}-D")
    if X.dtype.kind not in "biuf":
        raise Unsupported(f"{name} has dtype {X.dtype}")
    width = int(program.program[0, program.step.WIDTH_IN])
    if X.shape[1] != width:
        raise Unsupported(f"{name} has {X.shape[1]} columns, the first layer takes {width}")
    if X.dtype != program.dtype and program.program[0, program.step.KIND] != program.step.DENSE:
        raise Unsupported(f"{name} is {X.dtype} and the first layer is not Dense")
    return np.ascontiguousarray(X, dtype=program.dtype)


def _model_dtype(model):
    for layer in model.layers:
        weights = getattr(layer, "weights", None)
        if weights is not None:
            return np.dtype(getattr(weights, "dtype", np.float32))
    raise Unsupported("the model has no Dense layer")


def prepare_training(model, X, y, batch_size, validation_data):
    """A ``Trainer`` for this ``Model.train`` call, or ``Unsupported`` saying why not."""
    if not enabled():
        raise Unsupported(f"{ENV_VAR}=0")
    _check_device(model)
    program = Program(model, _model_dtype(model), np.shape(X)[1] if np.ndim(X) == 2 else -1)
    if model.optimizer is None or model.loss is None:
        raise Unsupported("the model has no loss or no optimizer")
    program.check_optimizer()
    X_given = X
    X = _inputs(program, X)
    y_index, y_values = program.targets(y, X.shape[0])
    X_val = np.zeros((0, X.shape[1]), program.dtype)
    val_index = np.zeros(0, np.intp)
    val_values = np.zeros((0, program.n_outputs), program.dtype)
    if validation_data is not None:
        X_val = _inputs(program, validation_data[0], "X_val")
        val_index, val_values = program.targets(validation_data[1], X_val.shape[0], "y_val")
    run = CompiledRun(program, X, batch_size, X_val.shape[0], batch_size)
    return Trainer(run, y_index, y_values, X_val, val_index, val_values,
                   sources=(X_given, y, validation_data))


class Trainer:
    """Runs ``Model.train``'s epochs in blocks and gives them back one at a time."""

    def __init__(self, run: CompiledRun, y_index, y_values, X_val, val_index, val_values,
                 sources=None):
        self.run = run
        self.y_index, self.y_values = y_index, y_values
        self.X_val, self.val_index, self.val_values = X_val, val_index, val_values
        self.no_predictions = np.zeros((0, run.program.n_outputs), run.program.dtype)
        self.pending = []
        self.failure = None
        self.parts = None       # the program's parts (``Program.parts``); None before a block
        # the caller's (X, y, validation_data), and the bytes of y and y_val as checked: where
        # a callback rewrites them, they are checked again (``_read_data``)
        self.sources = sources
        self.seen = [None, None]
        self.data_layout = [(a.shape, a.dtype, a.strides) for a in self._data()]
        if sources is not None:
            _, y, validation = sources
            self.seen = [y.tobytes(), None if validation is None else validation[1].tobytes()]

    def _data(self):
        """The caller's ``X``, ``y``, ``X_val`` and ``y_val`` (those given)."""
        if self.sources is None:
            return ()
        X, y, validation = self.sources
        return (X, y) + (() if validation is None else tuple(validation))

    def follow(self, users: bool = False, moved: bool = False):
        """Before each block after the first: follow what a callback changed since the last
        (``Program.follow``; ``Changed`` when the compiled step cannot), and with ``users``
        (callbacks of the user's own ran) what one may have written into ``X``, ``y`` or the
        validation data, or changed of their shape or dtype. ``moved``: the model's
        ``checks.fingerprint`` moved (``Model.train`` compares it), so that arrays changed in
        place (their shape, dtype, strides, writeability) are checked as new ones."""
        if self.parts is None:
            return
        now = self.run.program.follow(self.parts, self.run.X, moved)
        if now is not self.parts:       # (other arrays: copy those)
            self.parts = now
            self.run.forget_pairs()
        if users:
            self._read_data()

    def _read_data(self):
        """The inputs converted again where the run holds a converted copy, and the targets
        checked and converted again where their bytes changed (the layered path reads the
        caller's arrays at every step, so a callback that rewrites them in place, as an
        augmentation or a relabelling might, is seen there): before each block of a run with
        callbacks. (A comparison of the targets' bytes costs ~0.1 us for the book's models,
        their checks 5-7 us.)"""
        run, program = self.run, self.run.program
        X, y, validation = self.sources
        for name, array, layout in zip(("X", "y", "X_val", "y_val"), self._data(),
                                       self.data_layout):
            if (array.shape, array.dtype, array.strides) != layout:
                raise Changed(f"{name} changed its shape or dtype in place during training "
                              f"({layout[0]} {layout[1]} -> {array.shape} {array.dtype})")
        if run.X is not X:
            run.X[...] = X
        seen = y.tobytes()
        if seen != self.seen[0]:
            self.y_index, self.y_values = program.targets(y, run.X.shape[0])
            self.seen[0] = seen
        if validation is not None:
            X_val, y_val = validation
            if self.X_val is not X_val:
                self.X_val[...] = X_val
            seen = y_val.tobytes()
            if seen != self.seen[1]:
                self.val_index, self.val_values = program.targets(
                    y_val, self.X_val.shape[0], "y_val")
                self.seen[1] = seen

    @property
    def steps(self):
        return self.run.steps_per_epoch()

    def block_size(self, remaining, one_at_a_time):
        if one_at_a_time:
            return 1
        work = 3 * self.run._work_per_step() * max(1, self.steps)
        if self.X_val.shape[0]:
            work += self.run._work_per_step() * -(-self.X_val.shape[0] // self.run.batch_size)
        return max(1, min(remaining, BLOCK_WORK // max(1, work),
                          BLOCK_STEPS // max(1, self.steps)))

    def train(self, orders):
        """Run ``len(orders)`` epochs (``orders`` (n_epochs, n) row orders, or ``None`` rows for
        epochs in order); returns a list of per-epoch records; a divergence stops the block
        and leaves ``self.failure`` = (epoch within the block, step)."""
        run = self.run
        model = run.program.model
        optimizer = model.optimizer
        step = run.step
        n_epochs = len(orders)
        n_samples = run.X.shape[0]
        if all(order is None for order in orders):
            order_array = np.arange(n_samples, dtype=np.intp)[None, :]
        else:
            order_array = np.stack([np.arange(n_samples, dtype=np.intp) if o is None
                                    else np.asarray(o, dtype=np.intp) for o in orders])
        run.hyper[:] = 0
        run.hyper[step.LEARNING_RATE] = optimizer.learning_rate
        # (the hyper-parameters were checked when they were set; this one is the optimizer's
        # own running value, which a user may still set by hand)
        run.hyper[step.CURRENT_LEARNING_RATE] = number(optimizer.current_learning_rate,
                                                       "current_learning_rate")
        run.hyper[step.DECAY] = optimizer.decay
        for name, field in (("epsilon", step.EPSILON), ("beta_1", step.BETA_1),
                            ("beta_2", step.BETA_2), ("momentum", step.MOMENTUM),
                            ("rho", step.RHO)):
            run.hyper[field] = getattr(optimizer, name, 0.0)
        run.read_precision()
        run.settings[step.ITERATIONS] = optimizer.iterations
        run.load()
        step_log, epoch_log, failed = run.call(
            n_epochs, order_array, self.y_index, self.y_values, self.X_val, self.val_index,
            self.val_values, self.no_predictions)
        run.store(gradients=True)
        optimizer.iterations = int(run.settings[step.ITERATIONS])
        optimizer.current_learning_rate = float(run.hyper[step.CURRENT_LEARNING_RATE])
        if self.parts is None:      # (the first block made the optimizer's missing arrays)
            self.parts = run.program.parts()
        steps = self.steps
        done = n_epochs if failed < 0 else failed // steps
        if failed >= 0:
            self.failure = (failed // steps, failed % steps, step_log[failed])
        return Block(step_log[:done * steps], epoch_log[:done], steps, run.batch_size, n_samples,
                     bool(self.X_val.shape[0]))


class Block:
    """The epochs one compiled call completed: ``step_log`` (one row per step: mean data loss,
    mean accuracy, penalty, learning rate) and ``epoch_log`` (one row per epoch: the penalty
    after its last update, the validation loss and accuracy), read epoch by epoch
    (``records``) or, for a full-batch run, as whole columns (``columns``)."""

    def __init__(self, step_log, epoch_log, steps, batch_size, n_samples, validated):
        self.step_log, self.epoch_log = step_log, epoch_log
        self.steps, self.batch_size, self.n_samples = steps, batch_size, n_samples
        self.validated = validated
        self.epochs = epoch_log.shape[0]

    def records(self):
        """One ``EpochRecord`` per epoch."""
        steps = self.steps
        return [EpochRecord(self.step_log[epoch * steps:(epoch + 1) * steps], self.batch_size,
                            self.n_samples, self.epoch_log[epoch], self.validated)
                for epoch in range(self.epochs)]

    def columns(self):
        """``(data_loss, accuracy, regularization_loss, learning_rate, validation)`` of a
        full-batch block (one step per epoch): float64 arrays with one value per epoch;
        ``validation`` is ``(loss, accuracy)`` arrays, or None without validation data."""
        from loopnet.kernels import step

        log = self.step_log
        validation = ((self.epoch_log[:, step.EPOCH_VAL_LOSS],
                       self.epoch_log[:, step.EPOCH_VAL_ACCURACY]) if self.validated else None)
        return (log[:, step.STEP_DATA_LOSS], log[:, step.STEP_ACCURACY],
                log[:, step.STEP_REGULARIZATION], log[:, step.STEP_LEARNING_RATE], validation)


class EpochRecord:
    """One epoch of the compiled step, as the layered path's numbers: per step ``(data_loss,
    accuracy, regularization_loss, learning_rate, n_rows)``, the penalty after the epoch's last
    update, and the validation loss and accuracy (when there was validation data)."""

    def __init__(self, rows, batch_size, n_samples, epoch_row, validated):
        from loopnet.kernels import step

        self.steps = []
        for k, row in enumerate(rows):
            m = min(batch_size, n_samples - k * batch_size)
            self.steps.append((float(row[step.STEP_DATA_LOSS]), float(row[step.STEP_ACCURACY]),
                               float(row[step.STEP_REGULARIZATION]),
                               float(row[step.STEP_LEARNING_RATE]), m))
        self.final_regularization = float(epoch_row[step.EPOCH_REGULARIZATION])
        self.validation = ((float(epoch_row[step.EPOCH_VAL_LOSS]),
                            float(epoch_row[step.EPOCH_VAL_ACCURACY])) if validated else None)


def forward_only(model, X, y=None, *, batch_size=None, outputs=False):
    """``Model.evaluate`` (``y`` given: ``(loss, accuracy)``) or ``Model.predict``
    (``outputs=True``: the outputs) through the compiled step; ``Unsupported`` when the model
    is not one it covers."""
    if not enabled():
        raise Unsupported(f"{ENV_VAR}=0")
    _check_device(model)
    program = Program(model, _model_dtype(model), np.shape(X)[1] if np.ndim(X) == 2 else -1)
    X = _inputs(program, X)
    n = X.shape[0]
    y_index, y_values = program.targets(y, n, "y_val")   # (evaluate's)
    if y is None:
        program.loss = None
        program.accuracy = program.step.NO_ACCURACY
    run = CompiledRun(program, np.zeros((0, X.shape[1]), program.dtype), None, n, batch_size)
    try:
        if program.accuracy == program.step.REGRESSION_ACCURACY:
            model.accuracy.init(y)          # (from these targets, where never set)
        run.read_precision()
        run.load()
        predictions = (np.zeros((n, program.n_outputs), program.dtype) if outputs
                       else np.zeros((0, program.n_outputs), program.dtype))
        _, epoch_log, _ = run.call(0, np.zeros((1, 0), np.intp), np.zeros(0, np.intp),
                                   np.zeros((0, program.n_outputs), program.dtype), X, y_index,
                                   y_values, predictions)
    finally:
        run.release()
    if outputs:
        return predictions
    step = program.step
    return float(epoch_log[0, step.EPOCH_VAL_LOSS]), float(epoch_log[0, step.EPOCH_VAL_ACCURACY])


_warned: set = set()


def warn_layered(model, reason: str) -> None:
    """Say once per model and reason that ``Model.train`` takes the layered path on cpu."""
    key = (id(model), reason)
    if key in _warned:
        return
    _warned.add(key)
    warn(f"training on the layered path (one op at a time, slower): {reason}",
         SlowPathWarning)
