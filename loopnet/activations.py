"""Activation layers: ``forward(inputs, training)`` sets ``self.output``, ``backward(dvalues)``
sets ``self.dinputs``, and ``predictions(outputs)`` turns outputs into the model's answers."""

from __future__ import annotations

import numpy as np

from loopnet import ops
from loopnet.layers import Layer, not_set_yet
from loopnet.validate import reusable


def _dinputs_buffer(layer, dvalues, other=None):
    """The previous step's ``dinputs`` when it fits this ``dvalues`` (see ``validate.reusable``),
    and ``other``, the array the gradient is computed with, has their dtype: the result of a
    float32 ``dvalues`` and a float64 ``other`` is float64 (the layer before it was given
    float64 weights between two steps), which a float32 buffer cannot hold."""
    dtype = getattr(dvalues, "dtype", None)
    if other is not None and getattr(other, "dtype", dtype) != dtype:
        return None
    return reusable(getattr(layer, "dinputs", None), getattr(dvalues, "shape", ()), dtype)


class ReLU(Layer):
    """Rectified linear unit: ``max(0, x)`` element-wise (the notes' ``Activation_ReLU``)."""

    def forward(self, inputs, training: bool = True):
        self.inputs = inputs
        self.output = output = ops.relu_forward(inputs, device=self.device)
        return output

    def backward(self, dvalues):
        """Pass ``dvalues`` where the input was positive, 0 elsewhere."""
        try:
            inputs = self.inputs
        except AttributeError:
            raise not_set_yet(self, "inputs") from None
        self.dinputs = ops.relu_backward(dvalues, inputs, out=_dinputs_buffer(self, dvalues, inputs),
                                         device=self.device)
        return self.dinputs

    def predictions(self, outputs):
        return ops.to_numpy(outputs)


class Softmax(Layer):
    """Row-wise softmax turning scores into class probabilities (``Activation_Softmax``)."""

    def forward(self, inputs, training: bool = True):
        self.inputs = inputs
        self.output = output = ops.softmax_forward(inputs, device=self.device)
        return output

    def backward(self, dvalues):
        """The full-Jacobian gradient (``Model`` uses the fused softmax + cross-entropy
        gradient instead when a categorical cross-entropy follows)."""
        try:
            output = self.output
        except AttributeError:
            raise not_set_yet(self, "output") from None
        self.dinputs = ops.softmax_backward(dvalues, output,
                                            out=_dinputs_buffer(self, dvalues, output),
                                            device=self.device)
        return self.dinputs

    def predictions(self, outputs):
        """The most confident class of each sample."""
        return np.argmax(ops.to_numpy(outputs), axis=1)


class Sigmoid(Layer):
    """The logistic function ``1 / (1 + exp(-x))``: one independent probability per output
    (binary logistic regression; the book's ``Activation_Sigmoid``)."""

    def forward(self, inputs, training: bool = True):
        self.inputs = inputs
        self.output = output = ops.sigmoid_forward(inputs, device=self.device)
        return output

    def backward(self, dvalues):
        """``dvalues * (1 - output) * output``."""
        try:
            output = self.output
        except AttributeError:
            raise not_set_yet(self, "output") from None
        self.dinputs = ops.sigmoid_backward(dvalues, output,
                                            out=_dinputs_buffer(self, dvalues, output),
                                            device=self.device)
        return self.dinputs

    def predictions(self, outputs):
        """1 where the probability is above 0.5, else 0."""
        return (ops.to_numpy(outputs) > 0.5) * 1


class Linear(Layer):
    """The identity ``y = x``, a regression model's output activation (``Activation_Linear``).

    ``forward`` and ``backward`` run the identity's ops (``ops.linear_forward``/``_backward``),
    which copy: the book's ``self.output = inputs`` shares the array, so a later in-place change
    of one would show in the other."""

    def forward(self, inputs, training: bool = True):
        self.inputs = inputs
        self.output = ops.linear_forward(inputs, device=self.device)
        return self.output

    def backward(self, dvalues):
        self.dinputs = ops.linear_backward(dvalues, out=_dinputs_buffer(self, dvalues),
                                           device=self.device)
        return self.dinputs

    def predictions(self, outputs):
        return ops.to_numpy(outputs)
