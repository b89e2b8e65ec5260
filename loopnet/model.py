"""``Model``: the book's training loop (chapters 18-22) around loopnet's layers.

::

    model = loopnet.Model()
    model.add(loopnet.Dense(2, 64)); model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 3)); model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(),
              optimizer=loopnet.Adam(learning_rate=0.05, decay=5e-7),
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    history = model.train(X, y, epochs=10_000, print_every=100, validation_data=(X_test, y_test))
    loss, acc = model.evaluate(X_test, y_test)          # prints the book's validation line
    probabilities = model.predict(X_test)

Every computation on parameters, activations and gradients runs in the layers, losses and
optimizers through ``loopnet.ops`` (loop kernels on the selected device); this module only
orders the calls and slices batches of the host data. The numbers of each step and epoch go
to ``loopnet.training`` (sums, the book's log, the history, validation, callbacks, the
progress bar); ``model.summary()``, ``model.to_torch()`` and the saving functions live in
``loopnet.summary``, ``loopnet.interop`` and ``loopnet.saving``.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time

import numpy as np

from loopnet import checks, ops, training
from loopnet.activations import Softmax
from loopnet.devices import gpu
from loopnet.layers import Input
from loopnet.losses import CategoricalCrossentropy, Loss, SoftmaxCategoricalCrossentropy
from loopnet.validate import flag, generator, is_device_array, positive_int, warn


def _n_rows(data, name: str) -> int:
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) == 0:
        raise ValueError(f"{name} must be an array with one row per sample, got {data!r}")
    return int(shape[0])


def _paired_rows(X, y, x_name: str, y_name: str):
    """``X`` and ``y`` as arrays (other array-likes converted; device arrays kept) and their
    common number of rows, or a ``ValueError`` naming both counts."""
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    n_samples, n_targets = _n_rows(X, x_name), _n_rows(y, y_name)
    if n_targets != n_samples:
        raise ValueError(f"{x_name} has {n_samples} samples but {y_name} has {n_targets} targets")
    return X, y, n_samples


def _losses(loss, output, y, regularization: bool = True):
    """The data loss and the L1/L2 penalty as Python floats (loopnet's losses keep them
    unrounded; any object with the book's ``Loss`` interface works too)."""
    if isinstance(loss, Loss):
        return loss._data_loss(output, y), (loss._regularization_total() if regularization
                                            else 0.0)
    if not regularization:
        return float(loss.calculate(output, y)), 0.0
    data_loss, regularization_loss = loss.calculate(output, y, include_regularization=True)
    return float(data_loss), float(regularization_loss)


def _callbacks(callbacks) -> list:
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}")
    for callback in callbacks:
        if not all(callable(getattr(callback, name, None))
                   for name in ("set_model", "on_train_begin", "on_epoch_end", "on_train_end")):
            raise TypeError(f"{callback!r} is not a callback: subclass "
                            "loopnet.callbacks.Callback")
    return list(callbacks)


def _users_callbacks(callbacks) -> bool:
    """Whether a callback of the user's own runs between epochs: it may write into ``X`` or
    ``y`` (an augmentation), so that the compiled step reads them again before each block,
    or change a layer's arrays in place (``weights.shape = ...``), so that both paths check
    the model again (``_Watch``); loopnet's ``EarlyStopping`` and
    ``ModelCheckpoint`` do neither. (Reading a float64 ``X`` again is a pass over the data
    each epoch: 18 ms for 60,000 x 784, ~9% of that epoch.)"""
    from loopnet.callbacks import EarlyStopping, ModelCheckpoint

    return any(type(callback) not in (EarlyStopping, ModelCheckpoint) for callback in callbacks)


def _check_compiled(model) -> None:
    """A ``ValueError`` unless ``model`` has the loss and the optimizer ``train`` needs."""
    if model.loss is None or model.optimizer is None:
        raise ValueError("set(loss=..., optimizer=...) before train()")


class _Watch:
    """What a callback of the user's own may change between epochs, watched for both paths:
    ``checks.fingerprint`` of the model and the data, taken after the first epoch (or block:
    it made the optimizer's state arrays) and compared before each later one. Where it moved,
    the checks ``train`` runs at its start run again (a callback may have left an array no
    kernel can take, ``weights.shape = (16, 2)`` or ``weights.flags.writeable = False`` in
    place, written a label out of range, or taken the loss, the optimizer or a layer away),
    and where the model's part moved it is finalized again, its layers linked as they stand.
    The error is the one ``train`` gives at its start, saying when."""

    def __init__(self, model, X, y, validation_data):
        self.model, self.X, self.y, self.validation_data = model, X, y, validation_data
        self.inputs, self.targets = ((X,), (y,)) if validation_data is None else (
            (X, validation_data[0]), (y, validation_data[1]))
        self.seen = None

    def take(self) -> None:
        self.seen = checks.fingerprint(self.model, self.inputs, self.targets)

    def check(self, epoch: int) -> bool:
        """Before ``epoch``: whether the model's part of the fingerprint moved (False before
        one was taken), after the checks where any part did."""
        if self.seen is None:
            return False
        now = checks.fingerprint(self.model, self.inputs, self.targets)
        if now == self.seen:
            return False
        moved = now[0] != self.seen[0]
        try:
            self._check(moved)
        except (TypeError, ValueError) as error:
            raise type(error)(f"after epoch {epoch - 1}'s callbacks: {error}") from None
        self.seen = now
        return moved

    def _check(self, relink: bool) -> None:
        model, X, y = self.model, self.X, self.y
        _check_compiled(model)
        for index, layer in enumerate(model.layers):
            if isinstance(layer, type) or not (callable(getattr(layer, "forward", None))
                                               and callable(getattr(layer, "backward", None))):
                raise TypeError(f"layer {index} needs forward() and backward() methods, got "
                                f"{layer!r}")
        if relink:
            model.finalize()
        width = checks.check_model(model, X)
        _paired_rows(X, y, "X", "y")
        model._check_targets(width, y, "y")
        if self.validation_data is not None:
            _, y_val = checks.check_validation_data(model, self.validation_data, y)
            model._check_targets(width, y_val, "y_val")


# The thread each training model, and each of its layers, is training in: by ``id`` (an entry
# lives only while its train() runs, and the model holds the objects until then), kept apart
# from the objects so that a copy made during training is free to train elsewhere; and the
# lock around its check-and-set.
_TRAINING_THREAD = {}
_TRAINING_LOCK = threading.Lock()


def _after_fork_in_child():
    # the child has only the thread that forked: no other thread trains there, and the lock
    # may have been held by one that did not come along
    global _TRAINING_THREAD, _TRAINING_LOCK
    me = threading.get_ident()
    _TRAINING_THREAD = {key: owner for key, owner in _TRAINING_THREAD.items() if owner == me}
    _TRAINING_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _parts(model, names):
    """``(where, object)`` for each of ``model``'s layers (``where`` its index) and each of
    its ``names`` (``loss``, ``optimizer``, ``accuracy``) it has: what another model may hold
    too."""
    parts = list(enumerate(model.layers))
    for name in names:
        part = getattr(model, name, None)
        if part is not None:
            parts.append((name, part))
    return parts


def _busy_elsewhere(model, names=()):
    """``None``, or what of ``model`` (the model, or one of its layers, or of its ``names``
    parts, that another model holds too) is training in a thread other than this one, for a
    message."""
    me = threading.get_ident()
    owner = _TRAINING_THREAD.get(id(model))
    if owner is not None and owner != me:
        return "this model"
    for where, part in _parts(model, names):
        owner = _TRAINING_THREAD.get(id(part))
        if owner is not None and owner != me:
            label = f"layer {where}" if isinstance(where, int) else f"its {where}"
            return f"{label} ({part!r}), which another model holds too,"
    return None


# What a call made while the model trains in another thread would do wrong, by kind of call.
_WHY_NOT_NOW = {
    "run": "would run its layers over that run's activations (wrong gradients there)",
    "read": "would read parameters halfway through an update (a state no step produced)",
    "write": "would change parameters under the running updates",
}


def _refuse_while_training(model, what: str, names=(), why: str = "run") -> None:
    """``predict``/``evaluate`` (``why="run"``), the parameters' readers (``"read"``: save,
    get) and writers (``"write"``: load, set) refused while ``model`` (or a layer of it, or
    one of its ``names`` parts) trains in another thread: the layers keep the training run's
    inputs and outputs for its backward pass, evaluate sums in the loss and the accuracy, and
    the run updates the parameters in place."""
    busy = _busy_elsewhere(model, names)
    if busy is not None:
        raise RuntimeError(
            f"{busy} is training in another thread: {what} now {_WHY_NOT_NOW[why]}; call it "
            "from the training thread (a callback), on a copy (copy.deepcopy), or after "
            "train() returns")


# What of a model besides its layers a training run writes to (evaluate: the last two).
_TRAINING_PARTS = ("optimizer", "loss", "accuracy")


def _one_trainer(train):
    """``Model.train`` refused (``RuntimeError``) while the same model, or a layer, loss,
    optimizer or accuracy it shares with another model, trains in another thread.

    A model's layers keep their inputs, outputs and gradients as attributes, its optimizer
    its step count, its loss and accuracy their sums over an epoch: two threads training one
    model would interleave them into wrong gradients, wrong figures or a shape error from
    deep inside a layer. One thread may still call ``train`` again from a callback of its
    own run."""
    @functools.wraps(train)
    def guarded(self, *args, **kwargs):
        me = threading.get_ident()
        keys = [id(self), *(id(part) for _, part in _parts(self, _TRAINING_PARTS))]
        with _TRAINING_LOCK:
            busy = _busy_elsewhere(self, _TRAINING_PARTS)
            if busy is not None:
                raise RuntimeError(
                    f"{busy} is already training in another thread: train one model per "
                    "thread (Model.load or copy.deepcopy make another), or wait for the first "
                    "train() to return")
            new = [key for key in keys if key not in _TRAINING_THREAD]
            for key in new:
                _TRAINING_THREAD[key] = me
        try:
            return train(self, *args, **kwargs)
        finally:
            with _TRAINING_LOCK:
                for key in new:
                    _TRAINING_THREAD.pop(key, None)
    return guarded


def _diverged(error: FloatingPointError, X) -> FloatingPointError:
    """The divergence error, with the first sample of ``X`` holding a NaN or an infinity when
    there is one: found only once training has diverged (a check of every sample before every
    ``train`` call would cost a large X tens of milliseconds)."""
    if isinstance(X, np.ndarray) and X.dtype.kind == "f":
        bad = ~np.isfinite(X).all(axis=tuple(range(1, X.ndim)))
        if bad.any():
            return FloatingPointError(f"{error}; X has a NaN or infinite value in sample "
                                      f"{int(np.argmax(bad))}")
    return error


def _check_once(layers) -> None:
    """Each layer object at one place in the model: a layer keeps the inputs and outputs of its
    last forward for its backward (and its ``prev``/``next``), so an object standing at two
    places would backpropagate the second place's inputs through the first."""
    seen = {}
    for position, layer in enumerate(layers):
        first = seen.setdefault(id(layer), position)
        if first != position:
            raise ValueError(
                f"{layer!r} would stand at layers {first} and {position} of the model: a layer "
                "keeps its last forward's inputs for its backward, so one object cannot stand "
                f"in two places; add a new {type(layer).__name__} (give it the first's weights "
                "to tie them: such a model trains layer by layer)")


class Model:
    """A sequence of layers, a loss, an optimizer and an accuracy (the book's ``Model``)."""

    def __init__(self):
        self.layers = []
        self.loss = None
        self.optimizer = None
        self.accuracy = None
        self.trainable_layers = []
        self.softmax_classifier_output = None
        self.input_layer = None
        self.output_layer_activation = None
        self.finalized = False
        self.stop_training = False
        # Optional, saved with the model: how raw inputs become X (e.g. an image folder's
        # size, colour and scaling; see loopnet.datasets) and the name of each class.
        self.preprocessing = None
        self.class_names = None

    # --- building ---------------------------------------------------------------------------

    def add(self, layer) -> None:
        """Append a layer (anything with ``forward(inputs, training)`` and ``backward``)."""
        if isinstance(layer, type):
            raise TypeError(f"add() takes a layer object, got the class {layer.__name__}: "
                            f"write add({layer.__name__}(...))")
        if not callable(getattr(layer, "forward", None)):
            raise TypeError(f"a layer needs a forward() method, got {layer!r}")
        _check_once(self.layers + [layer])
        self.layers.append(layer)
        self.finalized = False

    def set(self, *, loss=None, optimizer=None, accuracy=None) -> None:
        """Set the loss, the optimizer and the accuracy (those given; ``None`` keeps the old):
        loopnet objects, or the names Keras uses - ``loss="categorical_crossentropy"``,
        ``"binary_crossentropy"``, ``"mse"``, ``"mae"``; ``optimizer="sgd"``, ``"adagrad"``,
        ``"rmsprop"``, ``"adam"`` (the book's defaults); ``accuracy="categorical"``,
        ``"binary"``, ``"regression"``, or ``"accuracy"`` for the one that fits the loss.
        Anything else raises a ``TypeError``/``ValueError`` listing the valid names."""
        if loss is not None:
            self.loss = checks.loss_from(loss)
        if optimizer is not None:
            self.optimizer = checks.optimizer_from(optimizer)
        if accuracy is not None:
            self.accuracy = checks.accuracy_from(accuracy, self.loss)
        self.finalized = False

    def finalize(self) -> None:
        """Link the layers as the book does (``model.input_layer``, an ``Input``, then each
        layer's ``prev`` and ``next``; the last layer's ``next`` is the loss), find the
        trainable layers, tell the loss about them (for the L1/L2 penalties), and use the
        fused softmax + cross-entropy backward when the model ends in ``Softmax`` and the
        loss is ``CategoricalCrossentropy``. A loss or accuracy made without a ``device``
        runs where the layers' outputs are: on the layers' device when they name one."""
        if not self.layers:
            raise ValueError("the model has no layers: add() some before finalize()")
        _check_once(self.layers)
        device = self._layers_device()
        if device is not None:      # (a host-device loss could not read the GPU's outputs)
            for part in (self.loss, self.accuracy):
                if part is not None and getattr(part, "device", "") is None:
                    part.device = device
        self.input_layer = Input()
        chain = [self.input_layer, *self.layers, self.loss]
        for previous, layer, following in zip(chain, chain[1:], chain[2:]):
            layer.prev = previous
            layer.next = following
        self.trainable_layers = [layer for layer in self.layers if hasattr(layer, "weights")]
        if self.loss is not None:
            self.loss.remember_trainable_layers(self.trainable_layers)
        self.softmax_classifier_output = None
        if isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CategoricalCrossentropy):
            self.softmax_classifier_output = SoftmaxCategoricalCrossentropy(device=self.loss.device)
        self.output_layer_activation = self.layers[-1]
        problem = checks.loss_input_problem(self)
        if problem is not None:
            warn(problem)
        self.finalized = True

    def _layers_device(self):
        """The device every layer with a device of its own names, or None (none do, or they
        disagree)."""
        devices = {layer.device for layer in self.layers
                   if getattr(layer, "device", None) is not None}
        return next(iter(devices)) if len(devices) == 1 else None

    # --- passes -------------------------------------------------------------------------------

    def forward(self, X, training: bool):
        """Run ``X`` through every layer; returns the last layer's output. Each layer reads
        the previous one's ``output`` attribute, as the book chains them (so a layer written
        as the book writes it, returning nothing, works too)."""
        if self.input_layer is None:
            self.finalize()
        output = self.input_layer.forward(X, training)
        for layer in self.layers:
            layer.forward(output, training)
            output = layer.output
        return output

    def backward(self, output, y) -> None:
        """Backpropagate from the loss to the first layer (each layer sets its gradients and
        ``dinputs``, which the layer before it reads)."""
        if self.softmax_classifier_output is not None:
            self.softmax_classifier_output.backward(output, y)
            dvalues = self.softmax_classifier_output.dinputs
            self.layers[-1].dinputs = dvalues
            layers = self.layers[:-1]
        else:
            self.loss.backward(output, y)
            dvalues = self.loss.dinputs
            layers = self.layers
        for layer in reversed(layers):
            layer.backward(dvalues)
            dvalues = layer.dinputs

    def _optimize(self) -> None:
        self.optimizer.pre_update_params()
        for layer in self.trainable_layers:
            self.optimizer.update_params(layer)
        self.optimizer.post_update_params()

    # --- training -----------------------------------------------------------------------------

    @_one_trainer
    def train(self, X, y, *, epochs: int = 1, batch_size: int | None = None,
              print_every: int | None = 1, validation_data=None, shuffle: bool = False,
              seed=None, progress=None, callbacks=None, validate_every: int = 1) -> dict:
        """Train for ``epochs`` passes over ``(X, y)``; returns the history.

        ``batch_size=None`` trains on the whole set at once (one step per epoch); otherwise
        each epoch takes ``ceil(n / batch_size)`` steps, in order, or in a fresh order drawn
        from ``np.random.default_rng(seed)`` each epoch when ``shuffle=True`` (same seed, same
        run; ``seed``: None, an int >= 0 or a ``np.random.Generator``, drawn from as it is).
        ``validation_data=(X_val, y_val)`` is evaluated every ``validate_every`` epochs and
        after the last one.

        The book's lines are printed (``print_every=None`` or 0: none), with the learning rate
        in full as the book prints ``current_learning_rate``. Full batch: chapter 18's line
        every ``print_every`` epochs, and the validation line once at the end::

            epoch: 100, acc: 0.713, loss: 0.653 (data_loss: 0.653, reg_loss: 0.000), lr: 0.0499
            validation, acc: 0.700, loss: 0.671

        In batches: chapter 19's, for every epoch ``epoch: N``, a ``step: ...`` line every
        ``print_every`` steps and at the last step, ``training, ...`` and ``validation, ...``.

        The history is a dict of per-epoch lists:

        - ``epoch``: 1, 2, ...
        - ``data_loss``, ``accuracy``: the mean over the epoch's samples of each step's loss
          and accuracy (each step measured before its update), the book's
          ``calculate_accumulated()``; ``accuracy`` is NaN for a model without one
        - ``regularization_loss``: the L1/L2 penalty printed on the epoch's line: full batch,
          that of the weights the epoch's step started from (chapter 18); in batches, that of
          the weights at the end of the epoch (chapter 19's ``training`` line)
        - ``loss``: ``data_loss + regularization_loss``
        - ``learning_rate``: the rate of the epoch's last step
        - ``val_loss``, ``val_accuracy`` (with ``validation_data``): the data loss and accuracy
          on the held-out data at the end of the epoch, NaN on epochs not validated

        and, when a callback stopped training, ``stopped_epoch`` (an int; the lists then end
        there); ``compile_time`` (seconds) on the compiled path: compiling its step, or loading it
        from numba's cache, with the set-up before it (numba's own start-up on a first use);
        ``path``: which path trained, ``"compiled"`` (one compiled call per block of epochs),
        ``"layered: <why>"`` (layer by layer, and why: the device, a layer or setting the
        compiled step does not cover), or ``"compiled, then layered: <why>"`` (a callback
        changed the model in a way the compiled step cannot follow; a ``SlowPathWarning`` says
        so too).

        ``callbacks``: ``loopnet.callbacks`` objects (``EarlyStopping``, ``ModelCheckpoint``,
        your own ``Callback``); one stops training by setting ``model.stop_training = True``.
        After a callback of your own, the model and the targets are checked again before the
        next epoch: an array no kernel can take or a label out of range raises the error
        ``train`` gives at its start, prefixed "after epoch N's callbacks: ".

        A progress bar (tqdm: rate and ETA) is shown when stderr is a terminal or in a
        notebook (``progress=None``), always (``True``, on stderr, or on the stream given as
        ``progress``) or never (``False``); log lines are then printed above it. A NaN or
        infinite loss stops training with a ``FloatingPointError`` naming the epoch and step.
        """
        _check_compiled(self)
        if not self.finalized:
            self.finalize()
        elif getattr(self.loss, "trainable_layers", None) != self.trainable_layers:
            # a loss object another model finalized since: it would add up that model's
            # penalties (the book's loss keeps the layers finalize gave it)
            self.loss.remember_trainable_layers(self.trainable_layers)
        epochs = positive_int(epochs, "epochs")
        X, y, n_samples = _paired_rows(X, y, "X", "y")
        if n_samples == 0:
            raise ValueError("X is empty: nothing to train on")
        width = checks.check_model(self, X)
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        steps = 1 if batch_size is None else math.ceil(n_samples / batch_size)
        if print_every is not None and print_every != 0:
            print_every = positive_int(print_every, "print_every")
        validation_data = checks.check_validation_data(self, validation_data, y)
        validate_every = positive_int(validate_every, "validate_every")
        callbacks = _callbacks(callbacks)
        shuffle = flag(shuffle, "shuffle")
        if shuffle and not isinstance(X, np.ndarray):
            raise TypeError("shuffle=True needs X and y as host numpy arrays")
        rng = generator(seed, "seed") if shuffle or seed is not None else None
        if not shuffle:     # (a bad seed is refused even where it is not used)
            rng = None

        # The bookkeeping (sums, the book's lines, history, validation, callbacks, progress
        # bar) lives in loopnet/training.py; the steps run here, through the compiled step
        # (loopnet/compiled.py) when it covers the model, else layer by layer.
        run = training.TrainingRun(self, epochs=epochs, steps=steps, batch_size=batch_size,
                                   print_every=print_every, validation_data=validation_data,
                                   validate_every=validate_every, callbacks=callbacks,
                                   progress=progress)
        started = time.perf_counter()
        trainer, run.history["path"] = self._compiled_trainer(X, y, batch_size,
                                                              validation_data)
        if trainer is None:     # (the compiled step checks them in its set-up)
            self._check_targets(width, y, "y")
            if validation_data is not None:
                self._check_targets(width, validation_data[1], "y_val")
        if self.accuracy is not None:   # (after the checks: a regression accuracy's
            self.accuracy.init(y)       # precision is a statistic of y)
        # (the compiled step's set-up counts with its compile: on a first use it is mostly
        # numba's own start-up and loading kernels from its cache, ~0.5 s, not training)
        set_up = time.perf_counter() - started
        try:
            run.begin()
            epoch = 1
            # a callback of the user's own may change what the checks read between epochs
            users = _users_callbacks(callbacks)
            watch = _Watch(self, X, y, validation_data)
            if trainer is not None:
                from loopnet import compiled
            while epoch <= epochs and trainer is not None:
                # a block of epochs in one compiled call, then each epoch's bookkeeping from
                # the numbers of its steps
                moved = watch.check(epoch)
                try:
                    trainer.follow(users, moved)
                except compiled.Changed as reason:
                    # the rest on the layered path, which reads the model as it is now
                    compiled.warn_layered(self, f"{reason} (from epoch {epoch} on)")
                    run.history["path"] = f"compiled, then layered: {reason}"
                    trainer.run.release()
                    trainer = None
                    break
                count = trainer.block_size(epochs - epoch + 1, run.epoch_by_epoch)
                orders = [rng.permutation(n_samples) if rng is not None else None
                          for _ in range(count)]
                block = trainer.train(orders)
                if users and watch.seen is None:
                    watch.take()
                run.compile_time = set_up + trainer.run.compile_time
                stop = False
                # full batch, no callback, no bar (and the block's own validation figures):
                # every epoch of the block recorded at once, from its columns
                bulk = run.in_bulk and (validation_data is None or block.validated)
                if bulk:
                    stop = run.end_epochs(epoch, n_samples, *block.columns())
                    epoch += block.epochs
                for record in () if bulk else block.records():
                    run.start_epoch(epoch)
                    for step, (data_loss, accuracy, regularization_loss, learning_rate,
                               rows) in enumerate(record.steps):
                        run.step(step, data_loss,
                                 None if self.accuracy is None else accuracy,
                                 regularization_loss, learning_rate, rows)
                    stop = run.end_epoch(epoch, record.final_regularization,
                                         validation=record.validation)
                    epoch += 1
                    if stop:
                        break
                if trainer.failure is not None:
                    _, step, (data_loss, _, regularization_loss, _) = trainer.failure
                    training.check_finite(epoch, step, steps, data_loss, regularization_loss,
                                          self.optimizer.current_learning_rate)
                if stop:
                    return run.finish()
            # layers on a GPU: the samples go over once (once an epoch when shuffled), not at
            # every op that reads them
            on_gpu = gpu(self._layers_device())
            if on_gpu is not None and rng is None and not is_device_array(X):
                X = ops.to_device(X, on_gpu)
            watch.seen = None       # (taken again after this path's first epoch)
            for epoch in range(epoch, epochs + 1):
                watch.check(epoch)
                X_epoch, y_epoch = X, y
                if rng is not None:
                    order = rng.permutation(n_samples)
                    X_epoch, y_epoch = X[order], y[order]
                    if on_gpu is not None:
                        X_epoch = ops.to_device(X_epoch, on_gpu)
                self.loss.new_pass()
                if self.accuracy is not None:
                    self.accuracy.new_pass()
                run.start_epoch(epoch)
                for step in range(steps):
                    if batch_size is None:
                        batch_X, batch_y = X_epoch, y_epoch
                    else:
                        batch_X = X_epoch[step * batch_size:(step + 1) * batch_size]
                        batch_y = y_epoch[step * batch_size:(step + 1) * batch_size]
                    output = self.forward(batch_X, training=True)
                    data_loss, regularization_loss = _losses(self.loss, output, batch_y)
                    training.check_finite(epoch, step, steps, data_loss, regularization_loss,
                                          self.optimizer.current_learning_rate)
                    accuracy = (None if self.accuracy is None
                                else self.accuracy.calculate(output, batch_y))
                    self.backward(output, batch_y)
                    self._optimize()
                    run.step(step, data_loss, accuracy, regularization_loss,
                             self.optimizer.current_learning_rate, _n_rows(batch_X, "X"))
                if users and watch.seen is None:
                    watch.take()
                if run.end_epoch(epoch):        # (the callbacks)
                    break
            return run.finish()
        except FloatingPointError as error:
            raise _diverged(error, X) from None
        finally:
            run.close()
            if trainer is not None:
                trainer.run.release()   # (its buffers back to this thread's pool)

    # A compiled forward pass (``evaluate``, ``predict``) first lays out the model's program
    # and buffers in Python (~100-140 us for the book's models), while the layers run one by
    # one at a few microseconds of Python per layer and batch: measured with 1, 2, 4, 8 and
    # 16 batches, the layers were faster up to ~8 batches of ch16's 4 layers (45 -> 132 us
    # against 134 us) and ~2-4 batches of ch15's and ch17's 6 (155 -> 296 us against 251-288;
    # 263 -> 402 us against 381-383). So the compiled pass runs from this many layer calls
    # (batches x layers) on; both give the same numbers.
    COMPILED_FORWARD_MIN_CALLS = 24

    def _compiled_forward(self, X, y, batch_size, outputs=False):
        """``evaluate``'s ``(loss, accuracy)`` or ``predict``'s outputs through the compiled
        step, or None where it does not cover the model or the layers run it faster (few
        batches: ``COMPILED_FORWARD_MIN_CALLS``); the layers then run one by one."""
        from loopnet import compiled

        if not compiled.enabled():
            return None
        n_samples = X.shape[0]
        n_batches = 1 if batch_size is None else -(-n_samples // positive_int(batch_size,
                                                                            "batch_size"))
        if n_batches * len(self.layers) < self.COMPILED_FORWARD_MIN_CALLS:
            return None
        try:
            return compiled.forward_only(self, X, y, batch_size=batch_size, outputs=outputs)
        except compiled.Unsupported:
            return None

    def _check_targets(self, width, y, name):
        """``y`` checked as the loss and the accuracy will read it (``checks.check_targets``),
        before the layers run: a bad label names ``y`` or ``y_val`` and is found before any
        parameter changes. ``width``: the model's output width (None: not known, the loss
        checks ``y`` when it runs)."""
        if width is not None:
            checks.check_targets(self, y, int(y.shape[0]), width, checks.output_dtype(self), name)

    def _compiled_trainer(self, X, y, batch_size, validation_data):
        """The compiled step for this call (``loopnet.compiled``) and the history's ``path``:
        ``"compiled"``, or ``None`` and ``"layered: <why>"`` (warned about once on cpu, where
        the compiled step would have been the fast path)."""
        from loopnet import compiled
        from loopnet.devices import get_device

        devices = {get_device(getattr(owner, "device", None))
                   for owner in [*self.layers, self.loss, self.accuracy] if owner is not None}
        if devices != {"cpu"}:
            return None, f"layered: device {', '.join(sorted(devices))}"
        try:
            return (compiled.prepare_training(self, X, y, batch_size, validation_data),
                    "compiled")
        except compiled.Unsupported as reason:
            if compiled.enabled():
                compiled.warn_layered(self, str(reason))
            return None, f"layered: {reason}"

    def evaluate(self, X_val, y_val, *, batch_size: int | None = None, verbose: bool = True):
        """``(data_loss, accuracy)`` on ``(X_val, y_val)`` without training (dropout off), as
        Python floats; prints the book's ``validation, acc: ..., loss: ...`` line unless
        ``verbose=False``. The accuracy is NaN when the model has none."""
        if self.loss is None:
            raise ValueError("set(loss=...) before evaluate()")
        _refuse_while_training(self, "evaluate()", _TRAINING_PARTS[1:])
        if not self.finalized:
            self.finalize()
        X_val, y_val, n_samples = _paired_rows(X_val, y_val, "X_val", "y_val")
        if n_samples == 0:
            raise ValueError(f"X_val is empty (shape {tuple(X_val.shape)}): no samples to "
                             "evaluate")
        width = checks.check_model(self, X_val, name="X_val")
        result = self._compiled_forward(X_val, y_val, batch_size)
        if result is not None:      # (the compiled step: the very numbers of the loop below)
            loss, accuracy = result
            if verbose:
                print(training.validation_line(loss, accuracy), flush=True)
            return loss, accuracy
        self._check_targets(width, y_val, "y_val")
        self.loss.new_pass()
        if self.accuracy is not None:
            # a regression accuracy never trained takes its precision from all of y_val, not
            # from the first batch its compare() would see
            self.accuracy.init(y_val)
            self.accuracy.new_pass()
        size = n_samples if batch_size is None else positive_int(batch_size, "batch_size")
        for start in range(0, n_samples, size):
            batch_X, batch_y = X_val[start:start + size], y_val[start:start + size]
            output = self.forward(batch_X, training=False)
            _losses(self.loss, output, batch_y, regularization=False)
            if self.accuracy is not None:
                self.accuracy.calculate(output, batch_y)
        loss = (self.loss._accumulated() if isinstance(self.loss, Loss)
                else float(self.loss.calculate_accumulated()))
        accuracy = (self.accuracy.calculate_accumulated() if self.accuracy is not None
                    else float("nan"))
        if verbose:
            print(training.validation_line(loss, accuracy), flush=True)
        return loss, accuracy

    def predict(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """The model's outputs for ``X`` (probabilities for a softmax model), as a numpy array
        (``(0, n_outputs)`` for no samples); ``self.output_layer_activation.predictions(...)``
        turns them into classes."""
        _refuse_while_training(self, "predict()")
        if not self.finalized:
            self.finalize()
        if not hasattr(X, "shape"):
            X = np.asarray(X)
        n_samples = _n_rows(X, "X")
        width = checks.check_model(self, X)
        size = n_samples if batch_size is None else positive_int(batch_size, "batch_size")
        if n_samples == 0:
            if width is None:
                raise ValueError(f"X is empty (shape {tuple(X.shape)}) and the model's output "
                                 "width is unknown")
            return np.empty((0, width), checks.output_dtype(self))
        if batch_size is not None:
            positive_int(batch_size, "batch_size")
        result = self._compiled_forward(X, None, batch_size, outputs=True)
        if result is not None:
            return result
        outputs = [ops.to_numpy(self.forward(X[start:start + size], training=False))
                   for start in range(0, n_samples, size)]
        return outputs[0] if len(outputs) == 1 else np.vstack(outputs)

    # --- parameters, saving and loading --------------------------------------------------------

    def get_parameters(self) -> list:
        """``[(weights, biases), ...]`` of the trainable layers (host numpy arrays)."""
        _refuse_while_training(self, "get_parameters()", why="read")
        return [tuple(ops.to_numpy(p) for p in layer.get_parameters())
                for layer in self.trainable_layers or
                [layer for layer in self.layers if hasattr(layer, "weights")]]

    def set_parameters(self, parameters) -> None:
        """Set every trainable layer's ``(weights, biases)``: a list of pairs of arrays (or
        nested lists), converted as ``Dense.set_parameters`` converts them. Every pair is
        checked before any layer changes; a wrong shape names the layer and both shapes."""
        _refuse_while_training(self, "set_parameters()", why="write")
        layers = [(index, layer) for index, layer in enumerate(self.layers)
                  if hasattr(layer, "weights")]
        try:
            parameters = list(parameters)
        except TypeError:
            raise TypeError("parameters must be a list of (weights, biases) pairs, got "
                            f"{type(parameters).__name__}") from None
        if len(parameters) != len(layers):
            raise ValueError(f"got parameters for {len(parameters)} layers, the model has "
                             f"{len(layers)} trainable layers")
        converted = []
        for (index, layer), pair in zip(layers, parameters):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"parameters of layer {index} ({layer!r}) must be a pair "
                                f"(weights, biases), got {type(pair).__name__}")
            weights, biases = pair
            if hasattr(layer, "checked_parameters"):    # a Dense layer: convert and check first
                try:
                    weights, biases = layer.checked_parameters(weights, biases)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"layer {index}: {err}") from None
            converted.append((weights, biases))
        for (index, layer), (weights, biases) in zip(layers, converted):
            layer.set_parameters(weights, biases)

    def save_parameters(self, path) -> None:
        """Write the trainable layers' weights and biases to ``path`` (``.npz``, no pickle)."""
        from loopnet import saving

        _refuse_while_training(self, "save_parameters()", why="read")
        saving.save_parameters(self, path)

    def load_parameters(self, path) -> None:
        """Read weights and biases written by ``save_parameters`` into this model's layers."""
        from loopnet import saving

        _refuse_while_training(self, "load_parameters()", why="write")
        saving.load_parameters(self, path)

    def save(self, path) -> None:
        """Write the whole model - layers, parameters, loss, optimizer with its state,
        accuracy - to ``path`` (``.npz`` with a JSON architecture, no pickle, atomic)."""
        from loopnet import saving

        _refuse_while_training(self, "save()", ("optimizer",), why="read")
        saving.save_model(self, path)

    @staticmethod
    def load(path, *, device: str | None = None) -> "Model":
        """Rebuild a model written by ``save`` (bit-exact parameters and optimizer state) from
        a path or an open binary file; ``device=`` puts every layer, the loss and the accuracy
        on that device. A damaged or foreign file raises ``loopnet.ModelFileError``."""
        from loopnet import saving

        return saving.load_model(path, device=device)

    # --- description and PyTorch ------------------------------------------------------------------

    def count_params(self) -> int:
        """The number of parameters (weights and biases, all trainable)."""
        from loopnet import summary

        return summary.count_params(self)

    def summary(self, print_fn=print) -> str:
        """A Keras-like table of the layers (output shapes, parameter counts, totals, loss,
        optimizer, device and dtype): printed with ``print_fn`` (None: not printed) and
        returned as a string."""
        from loopnet import summary

        text = summary.summary(self)
        if print_fn is not None:
            print_fn(text)
        return text

    def to_torch(self):
        """A ``torch.nn.Sequential`` with the same layers and copies of the weights
        (``Linear.weight = weights.T``); see ``loopnet.interop``. Needs torch."""
        from loopnet import interop

        _refuse_while_training(self, "to_torch()", why="read")
        return interop.to_torch(self)

    @staticmethod
    def from_torch(sequential, *, loss=None, optimizer=None, accuracy=None,
                   device: str | None = None) -> "Model":
        """A model with the layers of a ``torch.nn.Sequential`` (Linear, ReLU, Softmax,
        Sigmoid, Identity, Dropout) and copies of its weights; see ``loopnet.interop``."""
        from loopnet import interop

        return interop.from_torch(sequential, loss=loss, optimizer=optimizer,
                                  accuracy=accuracy, device=device)

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Model([{layers}], loss={self.loss!r}, optimizer={self.optimizer!r})"
