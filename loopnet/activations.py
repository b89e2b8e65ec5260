"""Activation layers: ``forward(inputs, training)`` sets ``self.output``, ``backward(dvalues)``
sets ``self.dinputs``, and ``predictions(outputs)`` turns outputs into the model's answers."""

from __future__ import annotations

import numpy as np

from loopnet import ops
from loopnet.layers import Layer, not_set_yet
from loopnet.validate import dinputs_buffer


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
        self.dinputs = ops.relu_backward(dvalues, inputs,
                                         out=dinputs_buffer(self, dvalues, inputs),
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
                                            out=dinputs_buffer(self, dvalues, output),
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
                                            out=dinputs_buffer(self, dvalues, output),
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
        self.dinputs = ops.linear_backward(dvalues, out=dinputs_buffer(self, dvalues),
                                           device=self.device)
        return self.dinputs

    def predictions(self, outputs):
        return ops.to_numpy(outputs)
