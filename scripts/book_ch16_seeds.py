"""Book chapter 16 (binary logistic regression) over several seeds: loopnet against the book's
own code, run in plain float32 numpy on the same data and the same initial weights.

    python scripts/book_ch16_seeds.py cpu 0,1,2,3,4      # loopnet on a device
    python scripts/book_ch16_seeds.py book 0,1,2,3,4     # the book's classes (below), numpy

Why: the 10,000-epoch run is chaotic. A change of the last bit of one weight moves the final
accuracy by a few points (the book's code itself, with nnfs's float64 np.dot or without it, or
with weights rounded differently: 0.935-0.945 train, 0.900-0.920 held-out on the book's data), so
one seed cannot tell a bug from rounding. Over seeds, the two implementations must land in the
same band. (Step by step the numpy device follows the book's code to ~1e-7 in loss.)
"""
import sys
import time

import numpy as np

import loopnet
from loopnet.datasets import spiral_data


# --- The book's chapter-16 classes, abridged to what this run uses (L2 only), for "book" ----


class Layer_Dense:
    def __init__(self, n_inputs, n_neurons, weight_regularizer_l1=0, weight_regularizer_l2=0, bias_regularizer_l1=0, bias_regularizer_l2=0):
        self.weights = 0.01 * np.random.randn(n_inputs, n_neurons)
        self.biases = np.zeros((1, n_neurons))
        self.weight_regularizer_l1 = weight_regularizer_l1; self.weight_regularizer_l2 = weight_regularizer_l2
        self.bias_regularizer_l1 = bias_regularizer_l1; self.bias_regularizer_l2 = bias_regularizer_l2
    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases
    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        if self.weight_regularizer_l2 > 0:
            self.dweights += 2 * self.weight_regularizer_l2 * self.weights
        if self.bias_regularizer_l2 > 0:
            self.dbiases += 2 * self.bias_regularizer_l2 * self.biases
        self.dinputs = np.dot(dvalues, self.weights.T)

class Activation_ReLU:
    def forward(self, inputs):
        self.inputs = inputs; self.output = np.maximum(0, inputs)
    def backward(self, dvalues):
        self.dinputs = dvalues.copy(); self.dinputs[self.inputs <= 0] = 0

class Activation_Sigmoid:
    def forward(self, inputs):
        self.inputs = inputs; self.output = 1 / (1 + np.exp(-inputs))
    def backward(self, dvalues):
        self.dinputs = dvalues * (1 - self.output) * self.output

class Loss:
    def regularization_loss(self, layer):
        r = 0
        if layer.weight_regularizer_l2 > 0: r += layer.weight_regularizer_l2 * np.sum(layer.weights * layer.weights)
        if layer.bias_regularizer_l2 > 0: r += layer.bias_regularizer_l2 * np.sum(layer.biases * layer.biases)
        return r
    def calculate(self, output, y):
        return np.mean(self.forward(output, y))

class Loss_BinaryCrossentropy(Loss):
    def forward(self, y_pred, y_true):
        y_pred_clipped = np.clip(y_pred, 1e-7, 1 - 1e-7)
        sample_losses = -(y_true * np.log(y_pred_clipped) + (1 - y_true) * np.log(1 - y_pred_clipped))
        return np.mean(sample_losses, axis=-1)
    def backward(self, dvalues, y_true):
        samples = len(dvalues); outputs = len(dvalues[0])
        clipped = np.clip(dvalues, 1e-7, 1 - 1e-7)
        self.dinputs = -(y_true / clipped - (1 - y_true) / (1 - clipped)) / outputs
        self.dinputs = self.dinputs / samples

class Optimizer_Adam:
    def __init__(self, learning_rate=0.001, decay=0., epsilon=1e-7, beta_1=0.9, beta_2=0.999):
        self.learning_rate = learning_rate; self.current_learning_rate = learning_rate
        self.decay = decay; self.iterations = 0; self.epsilon = epsilon; self.beta_1 = beta_1; self.beta_2 = beta_2
    def pre_update_params(self):
        if self.decay: self.current_learning_rate = self.learning_rate * (1. / (1. + self.decay * self.iterations))
    def update_params(self, layer):
        if not hasattr(layer, 'weight_cache'):
            layer.weight_momentums = np.zeros_like(layer.weights); layer.weight_cache = np.zeros_like(layer.weights)
            layer.bias_momentums = np.zeros_like(layer.biases); layer.bias_cache = np.zeros_like(layer.biases)
        layer.weight_momentums = self.beta_1 * layer.weight_momentums + (1 - self.beta_1) * layer.dweights
        layer.bias_momentums = self.beta_1 * layer.bias_momentums + (1 - self.beta_1) * layer.dbiases
        wmc = layer.weight_momentums / (1 - self.beta_1 ** (self.iterations + 1))
        bmc = layer.bias_momentums / (1 - self.beta_1 ** (self.iterations + 1))
        layer.weight_cache = self.beta_2 * layer.weight_cache + (1 - self.beta_2) * layer.dweights**2
        layer.bias_cache = self.beta_2 * layer.bias_cache + (1 - self.beta_2) * layer.dbiases**2
        wcc = layer.weight_cache / (1 - self.beta_2 ** (self.iterations + 1))
        bcc = layer.bias_cache / (1 - self.beta_2 ** (self.iterations + 1))
        layer.weights += -self.current_learning_rate * wmc / (np.sqrt(wcc) + self.epsilon)
        layer.biases += -self.current_learning_rate * bmc / (np.sqrt(bcc) + self.epsilon)
    def post_update_params(self):
        self.iterations += 1


# --- The comparison ----------------------------------------------------------------------------
device = sys.argv[1]
seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3,4").split(",")]
for seed in seeds:
    np.random.seed(seed)
    X, y = spiral_data(100, 2); y = y.reshape(-1, 1)
    W1 = (0.01 * np.random.randn(2, 64)).astype(np.float32); W2 = (0.01 * np.random.randn(64, 1)).astype(np.float32)
    Xt, yt = spiral_data(100, 2); yt = yt.reshape(-1, 1)
    t = time.perf_counter()
    if device == "book":
        d1 = Layer_Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4); d1.weights = W1.copy(); d1.biases = np.zeros((1, 64), np.float32)
        a1 = Activation_ReLU(); d2 = Layer_Dense(64, 1); d2.weights = W2.copy(); d2.biases = np.zeros((1, 1), np.float32)
        a2 = Activation_Sigmoid(); lf = Loss_BinaryCrossentropy(); opt = Optimizer_Adam(decay=5e-7)
        for epoch in range(10000):
            d1.forward(X); a1.forward(d1.output); d2.forward(a1.output); a2.forward(d2.output)
            lf.backward(a2.output, y); a2.backward(lf.dinputs); d2.backward(a2.dinputs); a1.backward(d2.dinputs); d1.backward(a1.dinputs)
            opt.pre_update_params(); opt.update_params(d1); opt.update_params(d2); opt.post_update_params()
        def acc(Xs, ys):
            d1.forward(Xs); a1.forward(d1.output); d2.forward(a1.output); a2.forward(d2.output)
            return np.mean((a2.output > 0.5) * 1 == ys)
        train_acc, val_acc = acc(X, y), acc(Xt, yt)
    else:
        m = loopnet.Model()
        m.add(loopnet.Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4, device=device)); m.add(loopnet.ReLU(device=device))
        m.add(loopnet.Dense(64, 1, device=device)); m.add(loopnet.Sigmoid(device=device))
        m.set(loss=loopnet.BinaryCrossentropy(device=device), optimizer=loopnet.Adam(decay=5e-7), accuracy=loopnet.CategoricalAccuracy(binary=True))
        m.finalize(); m.layers[0].weights[...] = W1; m.layers[2].weights[...] = W2
        m.train(X, y, epochs=10000, print_every=0)
        train_acc = m.evaluate(X, y, verbose=False)[1]; val_acc = m.evaluate(Xt, yt, verbose=False)[1]
    print(f"{device} seed {seed}: train acc {train_acc:.3f}, held-out acc {val_acc:.3f} ({time.perf_counter()-t:.1f} s)", flush=True)
