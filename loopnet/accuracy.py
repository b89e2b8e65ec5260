"""Accuracy metrics for ``Model`` (the book's ``Accuracy`` classes, chapter 18).

``calculate(values, y)`` returns the fraction correct as a Python float and, like ``Loss``,
keeps a running sum over the batches of an epoch (``new_pass`` / ``calculate_accumulated``).
``values`` may be either of two things, told apart by their shape alone:

- the book's *predictions*, ``model.output_layer_activation.predictions(output)``: class
  indices of shape ``(n,)`` (a softmax model), 0/1 of shape ``(n, 1)`` (a sigmoid model) or
  the regression values themselves;
- the model's *outputs*: softmax probabilities (or any scores) of shape ``(n, n_classes)``,
  sigmoid probabilities, regression values (what ``Model`` passes, so the comparison runs as a
  loop kernel through ``loopnet.ops`` on the model's device).

The rule: ``CategoricalAccuracy`` reads a 1-D array as predicted class indices and a 2-D array
of two or more columns as per-class scores (the class is the first maximum of each row); a
single column is refused (a binary output: use ``binary=True``). A binary accuracy counts an
element as class 1 when it is above 0.5, so sigmoid probabilities and 0/1 predictions give the
same answer. A regression accuracy compares values, which predictions and outputs both are.

``compare(predictions, y)`` returns the boolean array of right answers, as the book's does.
"""

from __future__ import annotations

import numbers

import numpy as np

from loopnet import ops
from loopnet.validate import Checked


def _host(values, name: str) -> np.ndarray:
    array = np.asarray(ops.to_numpy(values))
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


def _rows(values) -> int:
    shape = getattr(values, "shape", None)
    if shape is None:
        shape = np.shape(values)
    if len(shape) == 0:
        raise ValueError(f"predictions must be an array with one row per sample, got {values!r}")
    return int(shape[0])


class Accuracy:
    """Base class: running sum over batches; subclasses define ``compare`` (the book's
    boolean comparison) and ``_fraction`` (the fraction right, as a Python float)."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.new_pass()

    def init(self, y, reinit: bool = False) -> None:
        """Prepare from the training targets (only ``RegressionAccuracy`` needs it)."""

    def compare(self, predictions, y) -> np.ndarray:  # pragma: no cover - overridden
        """The boolean array of right answers (the book's ``compare``)."""
        raise NotImplementedError

    def _fraction(self, values, y) -> float:
        """The fraction right as a Python float (a loop kernel for outputs)."""
        return float(np.mean(self.compare(values, y)))

    def calculate(self, predictions, y) -> float:
        """The fraction of right answers among ``predictions`` (or outputs: see the module
        docstring), added to the running sum of the epoch."""
        accuracy = self._fraction(predictions, y)
        n_samples = _rows(predictions)
        self.accumulated_sum += accuracy * n_samples
        self.accumulated_count += n_samples
        return accuracy

    def new_pass(self) -> None:
        self.accumulated_sum = 0.0
        self.accumulated_count = 0

    def calculate_accumulated(self) -> float:
        if self.accumulated_count == 0:
            raise RuntimeError("no accuracy was calculated since new_pass()")
        return self.accumulated_sum / self.accumulated_count

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _targets_like(y, shape) -> np.ndarray:
    """Targets in the shape of the predictions ((n,) accepted for one output)."""
    targets = _host(y, "y")
    if targets.ndim == 1 and len(shape) == 2 and shape[1] == 1 and targets.shape[0] == shape[0]:
        targets = targets.reshape(shape)
    if targets.shape != tuple(shape):
        raise ValueError(f"y has shape {targets.shape} but the predictions have shape "
                         f"{tuple(shape)}; they must match")
    return targets


def _binary_compare(values, y) -> np.ndarray:
    values = _host(values, "predictions")
    # as the kernel (and the book): the 0/1 prediction equals the target
    return np.where(values > 0.5, 1, 0) == _targets_like(y, values.shape)


class CategoricalAccuracy(Accuracy):
    """Fraction of samples whose predicted class is the target (``Accuracy_Categorical``);
    ``y`` as class indices or one-hot rows. ``binary=True`` compares each output with a 0/1
    target instead (the book's option for a sigmoid output).

    Takes the book's predictions (class indices, shape ``(n,)``) or the model's outputs
    (probabilities, shape ``(n, n_classes)``): see the module docstring."""

    def __init__(self, *, binary: bool = False, device: str | None = None):
        super().__init__(device)
        self.binary = bool(binary)

    def _classes(self, values, y):
        """Predicted and target class indices, both host arrays of shape (n,)."""
        values = _host(values, "predictions")
        if values.ndim == 2 and values.shape[1] >= 2:
            predicted = np.argmax(values, axis=1)
        elif values.ndim == 1:
            if values.dtype.kind == "f" and not np.all(values == np.round(values)):
                bad = int(np.argmax(values != np.round(values)))
                raise ValueError("1-D predictions are class indices; got "
                                 f"{values[bad].item()!r} at position {bad}")
            predicted = values
        else:
            hint = (" (one column is a binary output: use CategoricalAccuracy(binary=True))"
                    if values.ndim == 2 else "")
            raise ValueError("predictions must be class indices (n_samples,) or per-class "
                             f"scores (n_samples, n_classes >= 2), got shape {values.shape}"
                             + hint)
        targets = _host(y, "y")
        if targets.ndim == 2:
            targets = np.argmax(targets, axis=1)
        if targets.shape != predicted.shape:
            raise ValueError(f"y has {targets.shape[0] if targets.ndim else 0} targets but "
                             f"there are {predicted.shape[0]} predictions")
        return predicted, targets

    def compare(self, predictions, y) -> np.ndarray:
        if self.binary:
            return _binary_compare(predictions, y)
        predicted, targets = self._classes(predictions, y)
        return predicted == targets

    def _fraction(self, values, y) -> float:
        if self.binary:
            return ops.binary_accuracy(values, y, device=self.device)
        if len(getattr(values, "shape", np.shape(values))) == 2 and values.shape[1] >= 2:
            return ops.accuracy(values, y, device=self.device)    # outputs: the loop kernel
        return super()._fraction(values, y)

    def get_config(self) -> dict:
        return {"binary": self.binary}


class BinaryAccuracy(Accuracy):
    """Fraction of sigmoid outputs (or 0/1 predictions) on the target's side of 0.5
    (``CategoricalAccuracy(binary=True)``)."""

    def compare(self, predictions, y) -> np.ndarray:
        return _binary_compare(predictions, y)

    def _fraction(self, values, y) -> float:
        return ops.binary_accuracy(values, y, device=self.device)


def _precision(value, name):
    """A regression accuracy's ``precision``: a finite number >= 0, or None (``init`` sets it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0 or None, got {value!r}")
    value = float(value)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class RegressionAccuracy(Accuracy):
    """Fraction of predictions within ``precision`` of their targets (``Accuracy_Regression``).

    ``precision`` defaults to ``std(y) / 250`` of the training targets, as the book chooses it,
    set by ``init(y)`` (``Model.train`` calls it).
    """

    # checked whenever it is assigned (the compiled step reads it without a check of its own)
    precision = Checked(_precision)

    def __init__(self, precision: float | None = None, *, device: str | None = None):
        super().__init__(device)
        self.precision = precision

    def init(self, y, reinit: bool = False) -> None:
        if self.precision is None or reinit:
            # A statistic of the (host) training targets, computed once: not a training array.
            values = np.asarray(ops.to_numpy(y))
            if values.size == 0 or not np.isfinite(values).all():
                raise ValueError(
                    "the regression accuracy's precision is std(y) / 250, but y "
                    f"{'is empty' if values.size == 0 else 'holds NaN or infinite values'}: "
                    "call init() with the training targets, or give RegressionAccuracy("
                    "precision=...)")
            self.precision = float(np.std(values)) / 250

    def compare(self, predictions, y) -> np.ndarray:
        if self.precision is None:
            self.init(y)
        values = _host(predictions, "predictions")
        if values.dtype.kind != "f":
            values = values.astype(np.float64)
        # In the predictions' dtype, as the loop kernel compares
        targets = _targets_like(y, values.shape).astype(values.dtype)
        return np.absolute(values - targets) < values.dtype.type(self.precision)

    def _fraction(self, values, y) -> float:
        if self.precision is None:
            self.init(y)
        return ops.regression_accuracy(values, y, self.precision, device=self.device)

    def get_config(self) -> dict:
        return {"precision": self.precision}


ACCURACIES = {cls.__name__: cls for cls in (CategoricalAccuracy, BinaryAccuracy,
                                            RegressionAccuracy)}
