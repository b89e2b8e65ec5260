"""Plain-numpy layers, losses and optimizers in the style of the "Neural Networks from Scratch"
book: what a learner has typed by chapter 17, for timing the chapter loops against
``loopnet.nnfs`` (``benchmarks/chapter_loops.py`` runs the same loop over both).

Each class computes what the book's class of the same name computes, with the same numpy
operations (so it costs what the book's code costs). Two choices follow ``nnfs.init()`` and
loopnet rather than the book's bare defaults:

- everything is float32 (``nnfs.init()`` makes ``np.random.randn`` and ``np.zeros`` return
  float32; loopnet trains in float32), without ``nnfs.init()``'s patched ``np.dot``;
- weights start at ``0.1 * randn`` from numpy's global generator, the scale of the book's
  chapter 17 on and loopnet's default (chapters 10-16 draw ``0.01 * randn``): with
  ``np.random.seed(0)`` first, both class sets start from the very same weights.
"""

from __future__ import annotations

import numpy as np

DTYPE = np.float32


class Layer_Dense:
    """``output = inputs @ weights + biases``, with the chapter-14 L1/L2 penalties."""

    def __init__(self, n_inputs, n_neurons, weight_regularizer_l1=0, weight_regularizer_l2=0,
                 bias_regularizer_l1=0, bias_regularizer_l2=0):
        self.weights = (0.1 * np.random.randn(n_inputs, n_neurons)).astype(DTYPE)
        self.biases = np.zeros((1, n_neurons), dtype=DTYPE)
        self.weight_regularizer_l1 = weight_regularizer_l1
        self.weight_regularizer_l2 = weight_regularizer_l2
        self.bias_regularizer_l1 = bias_regularizer_l1
        self.bias_regularizer_l2 = bias_regularizer_l2

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        # The penalties' gradients: l1 * sign (with sign(0) taken as +1), 2 * l2 * value.
        if self.weight_regularizer_l1 > 0:
            signs = np.ones_like(self.weights)
            signs[self.weights < 0] = -1
            self.dweights += self.weight_regularizer_l1 * signs
        if self.weight_regularizer_l2 > 0:
            self.dweights += 2 * self.weight_regularizer_l2 * self.weights
        if self.bias_regularizer_l1 > 0:
            signs = np.ones_like(self.biases)
            signs[self.biases < 0] = -1
            self.dbiases += self.bias_regularizer_l1 * signs
        if self.bias_regularizer_l2 > 0:
            self.dbiases += 2 * self.bias_regularizer_l2 * self.biases
        self.dinputs = np.dot(dvalues, self.weights.T)


class Activation_ReLU:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        # Copy first: dvalues belongs to the next layer.
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0


class Activation_Softmax:
    def forward(self, inputs):
        self.inputs = inputs
        # Shift each row by its maximum so exp cannot overflow.
        exponentials = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = exponentials / np.sum(exponentials, axis=1, keepdims=True)


class Activation_Sigmoid:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = 1 / (1 + np.exp(-inputs))

    def backward(self, dvalues):
        self.dinputs = dvalues * (1 - self.output) * self.output


class Activation_Linear:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = inputs

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()


class Loss:
    """``calculate``: the mean of the per-sample losses; ``regularization_loss(layer)``: the
    layer's L1/L2 penalties."""

    def regularization_loss(self, layer):
        penalty = 0
        if layer.weight_regularizer_l1 > 0:
            penalty += layer.weight_regularizer_l1 * np.sum(np.abs(layer.weights))
        if layer.weight_regularizer_l2 > 0:
            penalty += layer.weight_regularizer_l2 * np.sum(layer.weights * layer.weights)
        if layer.bias_regularizer_l1 > 0:
            penalty += layer.bias_regularizer_l1 * np.sum(np.abs(layer.biases))
        if layer.bias_regularizer_l2 > 0:
            penalty += layer.bias_regularizer_l2 * np.sum(layer.biases * layer.biases)
        return penalty

    def calculate(self, output, y):
        return np.mean(self.forward(output, y))


class Loss_CategoricalCrossentropy(Loss):
    def forward(self, y_pred, y_true):
        n_samples = len(y_pred)
        # Clipped on both sides: log(0) is -inf, and clipping only below would bias the mean.
        clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
        if len(y_true.shape) == 1:          # class indices
            confidences = clipped[range(n_samples), y_true]
        else:                               # one-hot rows
            confidences = np.sum(clipped * y_true, axis=1)
        return -np.log(confidences)


class Activation_Softmax_Loss_CategoricalCrossentropy:
    """Softmax and cross-entropy together: the backward pass is ``(output - one_hot) / n``."""

    def __init__(self):
        self.activation = Activation_Softmax()
        self.loss = Loss_CategoricalCrossentropy()

    def forward(self, inputs, y_true):
        self.activation.forward(inputs)
        self.output = self.activation.output
        return self.loss.calculate(self.output, y_true)

    def backward(self, dvalues, y_true):
        n_samples = len(dvalues)
        if len(y_true.shape) == 2:
            y_true = np.argmax(y_true, axis=1)
        self.dinputs = dvalues.copy()
        self.dinputs[range(n_samples), y_true] -= 1
        self.dinputs = self.dinputs / n_samples


class Loss_BinaryCrossentropy(Loss):
    def forward(self, y_pred, y_true):
        clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
        losses = -(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped))
        return np.mean(losses, axis=-1)

    def backward(self, dvalues, y_true):
        n_samples = len(dvalues)
        n_outputs = len(dvalues[0])
        clipped = np.clip(dvalues, 1e-7, 1 - 1e-7)
        self.dinputs = -(y_true / clipped - (1 - y_true) / (1 - clipped)) / n_outputs
        self.dinputs = self.dinputs / n_samples


class Loss_MeanSquaredError(Loss):
    def forward(self, y_pred, y_true):
        return np.mean((y_true - y_pred) ** 2, axis=-1)

    def backward(self, dvalues, y_true):
        n_samples = len(dvalues)
        n_outputs = len(dvalues[0])
        self.dinputs = -2 * (y_true - dvalues) / n_outputs
        self.dinputs = self.dinputs / n_samples


class _Optimizer:
    """The learning-rate decay ``lr / (1 + decay * iterations)`` and the step count."""

    def __init__(self, learning_rate, decay):
        self.learning_rate = learning_rate
        self.current_learning_rate = learning_rate
        self.decay = decay
        self.iterations = 0

    def pre_update_params(self):
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1. / (1. + self.decay * self.iterations))

    def post_update_params(self):
        self.iterations += 1


class Optimizer_SGD(_Optimizer):
    def __init__(self, learning_rate=1., decay=0., momentum=0.):
        super().__init__(learning_rate, decay)
        self.momentum = momentum

    def update_params(self, layer):
        if self.momentum:
            if not hasattr(layer, "weight_momentums"):
                layer.weight_momentums = np.zeros_like(layer.weights)
                layer.bias_momentums = np.zeros_like(layer.biases)
            # The step keeps a share of the previous step and subtracts the new gradient.
            weight_step = (self.momentum * layer.weight_momentums
                           - self.current_learning_rate * layer.dweights)
            layer.weight_momentums = weight_step
            bias_step = (self.momentum * layer.bias_momentums
                         - self.current_learning_rate * layer.dbiases)
            layer.bias_momentums = bias_step
        else:
            weight_step = -self.current_learning_rate * layer.dweights
            bias_step = -self.current_learning_rate * layer.dbiases
        layer.weights += weight_step
        layer.biases += bias_step


class Optimizer_Adam(_Optimizer):
    def __init__(self, learning_rate=0.001, decay=0., epsilon=1e-7, beta_1=0.9, beta_2=0.999):
        super().__init__(learning_rate, decay)
        self.epsilon = epsilon
        self.beta_1 = beta_1
        self.beta_2 = beta_2

    def update_params(self, layer):
        if not hasattr(layer, "weight_cache"):
            layer.weight_momentums = np.zeros_like(layer.weights)
            layer.weight_cache = np.zeros_like(layer.weights)
            layer.bias_momentums = np.zeros_like(layer.biases)
            layer.bias_cache = np.zeros_like(layer.biases)
        step = self.iterations + 1
        # First moments, bias-corrected.
        layer.weight_momentums = (self.beta_1 * layer.weight_momentums
                                  + (1 - self.beta_1) * layer.dweights)
        layer.bias_momentums = (self.beta_1 * layer.bias_momentums
                                + (1 - self.beta_1) * layer.dbiases)
        weight_momentums_corrected = layer.weight_momentums / (1 - self.beta_1 ** step)
        bias_momentums_corrected = layer.bias_momentums / (1 - self.beta_1 ** step)
        # Second moments, bias-corrected.
        layer.weight_cache = (self.beta_2 * layer.weight_cache
                              + (1 - self.beta_2) * layer.dweights ** 2)
        layer.bias_cache = self.beta_2 * layer.bias_cache + (1 - self.beta_2) * layer.dbiases ** 2
        weight_cache_corrected = layer.weight_cache / (1 - self.beta_2 ** step)
        bias_cache_corrected = layer.bias_cache / (1 - self.beta_2 ** step)
        layer.weights += (-self.current_learning_rate * weight_momentums_corrected
                          / (np.sqrt(weight_cache_corrected) + self.epsilon))
        layer.biases += (-self.current_learning_rate * bias_momentums_corrected
                         / (np.sqrt(bias_cache_corrected) + self.epsilon))
