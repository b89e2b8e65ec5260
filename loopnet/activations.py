"""Activation layers: ``forward(inputs)`` sets ``self.output`` and returns it."""

from __future__ import annotations

from loopnet import ops
from loopnet.layers import Layer


class ReLU(Layer):
    """Rectified linear unit: ``max(0, x)`` element-wise (the notes' ``Activation_ReLU``)."""

    def forward(self, inputs):
        self.inputs = inputs
        self.output = ops.relu_forward(inputs, device=self.device)
        return self.output


class Softmax(Layer):
    """Row-wise softmax turning scores into class probabilities (``Activation_Softmax``)."""

    def forward(self, inputs):
        self.inputs = inputs
        self.output = ops.softmax_forward(inputs, device=self.device)
        return self.output
