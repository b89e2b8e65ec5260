"""The book's chapter training loops as a learner writes them (no ``Model``): one function per
chapter, run over a namespace of classes, so ``loopnet.nnfs`` and the plain-numpy classes of
``book_numpy`` run the very same code::

    import loopnet.nnfs, book_numpy
    run_chapter("ch10", loopnet.nnfs, epochs=2000)
    run_chapter("ch10", book_numpy, epochs=2000)

Each loop is its chapter's ``for epoch in range(10001)`` body (forward, loss, regularization
loss, accuracy, backward, the optimizer's three calls) without the ``print`` every 100 epochs.
The data are ``loopnet.datasets``' float32 ``spiral_data(..., seed=0)`` and ``sine_data()``;
``np.random.seed(0)`` comes before the layers, so both namespaces draw the same weights.
"""

from __future__ import annotations

import time

import numpy as np

CHAPTERS = {
    "ch10": "spiral 100x3, Dense(2,64)-ReLU-Dense(64,3), softmax + CE, "
            "SGD(lr 1, decay 1e-3, momentum 0.9)",
    "ch14": "spiral 100x3, Dense(2,64, L2 5e-4)-ReLU-Dense(64,3), softmax + CE, "
            "Adam(lr 0.02, decay 5e-7)",
    "ch16": "spiral 100x2, Dense(2,64, L2 5e-4)-ReLU-Dense(64,1)-Sigmoid, binary CE, "
            "Adam(decay 5e-7)",
    "ch17": "sine 1000, Dense(1,64)-ReLU-Dense(64,64)-ReLU-Dense(64,1)-Linear, MSE, "
            "Adam(lr 0.005, decay 1e-3)",
}


def chapter_data(name):
    """``(X, y)`` of a chapter (float32 inputs; labels as the chapter shapes them)."""
    from loopnet.datasets import sine_data, spiral_data

    if name in ("ch10", "ch14"):
        return spiral_data(100, 3, seed=0)
    if name == "ch16":
        X, y = spiral_data(100, 2, seed=0)
        return X, y.reshape(-1, 1)
    if name == "ch17":
        return sine_data()
    raise ValueError(f"unknown chapter {name!r}; known: {', '.join(CHAPTERS)}")


class Result:
    """What a run leaves: loop seconds, the first epoch's seconds, the last loss and accuracy."""

    def __init__(self, seconds, first_epoch, loss, accuracy):
        self.seconds = seconds
        self.first_epoch = first_epoch
        self.loss = float(loss)
        self.accuracy = float(accuracy)


def _softmax_classifier(ns, X, y, epochs, dense1, dense2, optimizer, regularized):
    """Chapters 10 and 14: Dense-ReLU-Dense, the combined softmax + cross-entropy; chapter 14
    (``regularized``) adds the layers' penalties to the loss."""
    activation1 = ns.Activation_ReLU()
    loss_activation = ns.Activation_Softmax_Loss_CategoricalCrossentropy()
    start = time.perf_counter()
    first = None
    for epoch in range(epochs):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        loss = loss_activation.forward(dense2.output, y)
        if regularized:
            regularization_loss = (loss_activation.loss.regularization_loss(dense1)
                                   + loss_activation.loss.regularization_loss(dense2))
            loss = loss + regularization_loss
        predictions = np.argmax(loss_activation.output, axis=1)
        if len(y.shape) == 2:
            y = np.argmax(y, axis=1)
        accuracy = np.mean(predictions == y)

        loss_activation.backward(loss_activation.output, y)
        dense2.backward(loss_activation.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)

        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.post_update_params()
        if first is None:
            first = time.perf_counter() - start
    return Result(time.perf_counter() - start, first, loss, accuracy)


def chapter10(ns, epochs, X, y):
    np.random.seed(0)
    dense1 = ns.Layer_Dense(2, 64)
    dense2 = ns.Layer_Dense(64, 3)
    optimizer = ns.Optimizer_SGD(decay=1e-3, momentum=0.9)
    return _softmax_classifier(ns, X, y, epochs, dense1, dense2, optimizer, regularized=False)


def chapter14(ns, epochs, X, y):
    np.random.seed(0)
    dense1 = ns.Layer_Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4)
    dense2 = ns.Layer_Dense(64, 3)
    optimizer = ns.Optimizer_Adam(learning_rate=0.02, decay=5e-7)
    return _softmax_classifier(ns, X, y, epochs, dense1, dense2, optimizer, regularized=True)


def chapter16(ns, epochs, X, y):
    np.random.seed(0)
    dense1 = ns.Layer_Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4)
    activation1 = ns.Activation_ReLU()
    dense2 = ns.Layer_Dense(64, 1)
    activation2 = ns.Activation_Sigmoid()
    loss_function = ns.Loss_BinaryCrossentropy()
    optimizer = ns.Optimizer_Adam(decay=5e-7)
    start = time.perf_counter()
    first = None
    for epoch in range(epochs):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        activation2.forward(dense2.output)
        data_loss = loss_function.calculate(activation2.output, y)
        regularization_loss = (loss_function.regularization_loss(dense1)
                               + loss_function.regularization_loss(dense2))
        loss = data_loss + regularization_loss
        predictions = (activation2.output > 0.5) * 1
        accuracy = np.mean(predictions == y)

        loss_function.backward(activation2.output, y)
        activation2.backward(loss_function.dinputs)
        dense2.backward(activation2.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)

        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.post_update_params()
        if first is None:
            first = time.perf_counter() - start
    return Result(time.perf_counter() - start, first, loss, accuracy)


def chapter17(ns, epochs, X, y):
    np.random.seed(0)
    dense1 = ns.Layer_Dense(1, 64)
    activation1 = ns.Activation_ReLU()
    dense2 = ns.Layer_Dense(64, 64)
    activation2 = ns.Activation_ReLU()
    dense3 = ns.Layer_Dense(64, 1)
    activation3 = ns.Activation_Linear()
    loss_function = ns.Loss_MeanSquaredError()
    optimizer = ns.Optimizer_Adam(learning_rate=0.005, decay=1e-3)
    accuracy_precision = np.std(y) / 250
    start = time.perf_counter()
    first = None
    for epoch in range(epochs):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        activation2.forward(dense2.output)
        dense3.forward(activation2.output)
        activation3.forward(dense3.output)
        data_loss = loss_function.calculate(activation3.output, y)
        regularization_loss = (loss_function.regularization_loss(dense1)
                               + loss_function.regularization_loss(dense2)
                               + loss_function.regularization_loss(dense3))
        loss = data_loss + regularization_loss
        predictions = activation3.output
        accuracy = np.mean(np.absolute(predictions - y) < accuracy_precision)

        loss_function.backward(activation3.output, y)
        activation3.backward(loss_function.dinputs)
        dense3.backward(activation3.dinputs)
        activation2.backward(dense3.dinputs)
        dense2.backward(activation2.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)

        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.update_params(dense3)
        optimizer.post_update_params()
        if first is None:
            first = time.perf_counter() - start
    return Result(time.perf_counter() - start, first, loss, accuracy)


LOOPS = {"ch10": chapter10, "ch14": chapter14, "ch16": chapter16, "ch17": chapter17}


def run_chapter(name, ns, epochs, data=None):
    """Build chapter ``name``'s network from the classes in ``ns`` and train it ``epochs``
    epochs; returns a ``Result`` (the timing covers the loop, not the set-up)."""
    X, y = chapter_data(name) if data is None else data
    return LOOPS[name](ns, epochs, X, y)
