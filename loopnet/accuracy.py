"""Accuracy metrics for ``Model`` (the book's ``Accuracy`` classes, chapter 18).

``calculate(outputs, y)`` takes the model's *outputs* (softmax probabilities, sigmoid outputs or
regression values) and returns the fraction correct as a Python float; the comparison runs as
a loop kernel through ``loopnet.ops``. Like ``Loss``, it keeps a running sum over the batches
of an epoch (``new_pass`` / ``calculate_accumulated``).
"""

from __future__ import annotations

import numpy as np

from loopnet import ops


class Accuracy:
    """Base class: running sum over batches; subclasses define ``compare``."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.new_pass()

    def init(self, y, reinit: bool = False) -> None:
        """Prepare from the training targets (only ``RegressionAccuracy`` needs it)."""

    def compare(self, outputs, y) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def calculate(self, outputs, y) -> float:
        accuracy = self.compare(outputs, y)
        n_samples = outputs.shape[0]
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


class CategoricalAccuracy(Accuracy):
    """Fraction of samples whose most probable class is the target (``Accuracy_Categorical``);
    ``y`` as class indices or one-hot rows. ``binary=True`` compares each output with a 0/1
    target instead (the book's option for a sigmoid output)."""

    def __init__(self, *, binary: bool = False, device: str | None = None):
        super().__init__(device)
        self.binary = bool(binary)

    def compare(self, outputs, y) -> float:
        if self.binary:
            return ops.binary_accuracy(outputs, y, device=self.device)
        return ops.accuracy(outputs, y, device=self.device)

    def get_config(self) -> dict:
        return {"binary": self.binary}


class BinaryAccuracy(Accuracy):
    """Fraction of sigmoid outputs on the right side of 0.5 (``CategoricalAccuracy(binary=True)``)."""

    def compare(self, outputs, y) -> float:
        return ops.binary_accuracy(outputs, y, device=self.device)


class RegressionAccuracy(Accuracy):
    """Fraction of predictions within ``precision`` of their targets (``Accuracy_Regression``).

    ``precision`` defaults to ``std(y) / 250`` of the training targets, as the book chooses it,
    set by ``init(y)`` (``Model.train`` calls it).
    """

    def __init__(self, precision: float | None = None, *, device: str | None = None):
        super().__init__(device)
        if precision is not None:
            if isinstance(precision, bool) or not isinstance(precision, (int, float, np.number)):
                raise TypeError(f"precision must be a number >= 0 or None, got {precision!r}")
            precision = float(precision)
            if not (precision >= 0 and np.isfinite(precision)):
                raise ValueError(f"precision must be a finite number >= 0, got {precision}")
        self.precision = precision

    def init(self, y, reinit: bool = False) -> None:
        if self.precision is None or reinit:
            # A statistic of the (host) training targets, computed once: not a training array.
            self.precision = float(np.std(ops.to_numpy(y))) / 250

    def compare(self, outputs, y) -> float:
        if self.precision is None:
            self.init(y)
        return ops.regression_accuracy(outputs, y, self.precision, device=self.device)

    def get_config(self) -> dict:
        return {"precision": self.precision}


ACCURACIES = {cls.__name__: cls for cls in (CategoricalAccuracy, BinaryAccuracy,
                                            RegressionAccuracy)}
