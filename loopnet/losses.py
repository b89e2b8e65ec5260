"""Losses: ``forward(y_pred, y_true)`` gives per-sample losses, ``calculate`` their mean."""

from __future__ import annotations

from loopnet import ops
from loopnet.devices import normalize


class Loss:
    """Base class: ``calculate(output, y)`` is the mean of ``forward(output, y)``."""

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)

    def forward(self, y_pred, y_true):  # pragma: no cover - every loss overrides it
        raise NotImplementedError

    def calculate(self, output, y) -> float:
        """The data loss: the mean of the per-sample losses, as a Python float."""
        sample_losses = self.forward(output, y)
        return ops.mean(sample_losses, device=self.device)


class CategoricalCrossentropy(Loss):
    """``-log(clip(p_correct, 1e-7, 1 - 1e-7))`` per sample; ``y_true`` as class indices or
    one-hot rows (the notes' ``Loss_CategoricalCrossEntropy``)."""

    def forward(self, y_pred, y_true):
        return ops.categorical_crossentropy(y_pred, y_true, device=self.device)
