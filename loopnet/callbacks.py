"""Callbacks for ``Model.train(..., callbacks=[...])``: small and explicit, Keras-like.

A callback is told when training starts, after every epoch and when training ends::

    class PrintEvery100(loopnet.callbacks.Callback):
        reads_parameters = False          # looks at the logs only (see below)

        def on_epoch_end(self, epoch, logs):
            if epoch % 100 == 0:
                self.write(f"{epoch}: loss {logs['loss']:.4f}")

``epoch`` counts from 1, as the book's log does. ``logs`` holds this epoch's numbers under the
history's keys (``loss``, ``data_loss``, ``regularization_loss``, ``accuracy``,
``learning_rate``, and ``val_loss``/``val_accuracy`` on epochs that were validated). A callback
stops training by setting ``self.model.stop_training = True``; the history then ends at that
epoch and records it as ``history["stopped_epoch"]``.

``reads_parameters`` (default True) says the callback looks at the model itself (its weights,
as ``EarlyStopping`` and ``ModelCheckpoint`` do): the compiled fast path then runs one epoch
per call so the model is exactly at the end of the epoch; a callback reading only ``logs``
can set it to False.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from loopnet import ops, training
from loopnet.validate import file_path


class Callback:
    """Base class: every hook does nothing. ``self.model`` is the model being trained and
    ``self.params`` the run's settings (``epochs``, ``steps``, ``batch_size``, ``validation``,
    ``validate_every``), both set before ``on_train_begin``."""

    reads_parameters = True

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs=None) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        """After epoch ``epoch`` (1, 2, ...), its validation included."""

    def on_train_end(self, logs=None) -> None:
        """After the last epoch (``logs["stopped_epoch"]``: the epoch a callback stopped
        training at, or None)."""

    @staticmethod
    def write(line: str) -> None:
        """Print a line above the progress bar (when one is shown)."""
        training.write(line)


def _monitor_mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _check_monitor(owner: str, monitor: str, params: dict) -> None:
    known = set(training.HISTORY_KEYS) - {"epoch"} | {"val_loss", "val_accuracy"}
    if monitor not in known:
        raise ValueError(f"{owner} monitors {monitor!r}, which training does not report "
                         f"(it reports: {', '.join(sorted(known))})")
    if monitor.startswith("val_") and not params.get("validation", False):
        raise ValueError(f"{owner} monitors {monitor!r}: give train() validation_data")


def _number(value, name: str, minimum=0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    return float(value)


class _Improvement:
    """Tracks the best value of a monitored quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a history key such as 'val_loss', got {monitor!r}")
        self.monitor = monitor
        self.mode = _monitor_mode(monitor, mode)
        self.min_delta = _number(min_delta, "min_delta")
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` checks.

    ``monitor``   a history key: ``"val_loss"`` (default), ``"val_accuracy"``, ``"loss"``,
                  ``"accuracy"``, ...; an epoch where it is absent (not validated, with
                  ``validate_every``) is not a check
    ``min_delta`` how much better a value must be to count as an improvement
    ``patience``  checks in a row without improvement after which training stops (0 and 1:
                  at the first, as Keras counts)
    ``mode``      ``"min"``, ``"max"`` or ``"auto"`` (max for accuracies, else min)
    ``restore_best_weights``  put back, when training ends, the parameters of the best epoch

    After training: ``best_epoch``, ``best`` (its value) and ``stopped_epoch`` (None when
    training ran all its epochs).
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.tracker = _Improvement(monitor, mode, min_delta)
        self.monitor = monitor
        self.mode = self.tracker.mode
        self.min_delta = self.tracker.min_delta
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self.tracker.best = math.inf if self.mode == "min" else -math.inf
        self.best = None
        self.best_epoch = None
        self.best_parameters = None
        self.stopped_epoch = None
        self.wait = 0

    def on_train_begin(self, logs=None) -> None:
        _check_monitor("EarlyStopping", self.monitor, self.params)
        self._reset()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value):
            return
        if self.tracker.improved(value):
            self.tracker.best = value
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_parameters = [(np.array(w, copy=True), np.array(b, copy=True))
                                        for w, b in self.model.get_parameters()]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        if self.restore_best_weights and self.best_parameters is not None:
            restore_parameters(self.model, self.best_parameters)


def _check_path_format(path: str) -> None:
    """A checkpoint path's fields are ``{epoch}`` and the history's keys, each with a format
    its value takes: a path that cannot be formatted fails here, when the callback is made,
    not at the first save after an epoch of training."""
    keys = sorted(set(training.HISTORY_KEYS) - {"epoch"} | {"val_loss", "val_accuracy"})
    try:
        path.format(epoch=1, **{key: 0.5 for key in keys})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"ModelCheckpoint path {path!r} cannot be formatted "
                         f"({type(err).__name__}: {err}): its fields may be {{epoch}} (an int) "
                         f"and the history's {', '.join(keys)} (floats)") from None


class ModelCheckpoint(Callback):
    """Save the model with ``Model.save`` (loopnet's ``.npz`` + JSON format, no pickle) after
    epochs where ``monitor`` improved (``save_best_only=True``), or after every epoch.

    ``path`` may hold ``{epoch}`` and any log key, formatted with the epoch's values
    (``"model-{epoch:03d}.npz"``). After training, ``best_epoch`` and ``best`` say what the
    file holds."""

    def __init__(self, path, *, monitor: str = "val_loss", save_best_only: bool = True,
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__()
        self.path = file_path(path)
        if "{" in self.path:
            _check_path_format(self.path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.tracker = _Improvement(monitor, mode, min_delta)
        self.best = None
        self.best_epoch = None

    def on_train_begin(self, logs=None) -> None:
        _check_monitor("ModelCheckpoint", self.monitor, self.params)
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(f"ModelCheckpoint path {self.path!r}: directory {directory!r} "
                             "does not exist")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if self.save_best_only:
            if value is None or math.isnan(value) or not self.tracker.improved(value):
                return
            self.tracker.best = value
            self.best, self.best_epoch = value, epoch
        path = self.path.format(**{**logs, "epoch": epoch}) if "{" in self.path else self.path
        self.model.save(path)


def restore_parameters(model, parameters) -> None:
    """Copy ``[(weights, biases), ...]`` into the model's trainable layers, in place (the
    arrays stay where they live, on the host or the GPU)."""
    layers = [layer for layer in model.layers if hasattr(layer, "weights")]
    if len(layers) != len(parameters):
        raise ValueError(f"got parameters for {len(parameters)} layers, the model has "
                         f"{len(layers)} trainable layers")
    for layer, (weights, biases) in zip(layers, parameters):
        for name, values in (("weights", weights), ("biases", biases)):
            target = getattr(layer, name)
            if tuple(target.shape) != tuple(values.shape):
                raise ValueError(f"{name} of shape {tuple(values.shape)} do not fit "
                                 f"{layer!r}'s {tuple(target.shape)}")
            if isinstance(target, np.ndarray) and target.flags.writeable:
                target[...] = values
            elif hasattr(target, "copy_to_device"):     # a GPU array
                target.copy_to_device(np.ascontiguousarray(values, dtype=target.dtype))
            else:
                setattr(layer, name, ops.to_device(np.array(values, copy=True),
                                                   getattr(layer, "device", None)))
