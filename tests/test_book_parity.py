"""What a reader of the book's later chapters meets: accuracy from the book's predictions,
chapter 19's log, the validation line, ``Layer_Input`` and the layer links, optimizers on a
reader's own layer, ``Layer_Dropout``'s kept-fraction ``rate`` and its repeatable masks, numpy
scalars from the losses, and learning rates printed exactly after ``nnfs.init()``.

Runs are tiny (a 60-sample spiral, a few epochs) on the numpy device unless the compiled
training path itself is under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import loopnet
from helpers import bits, spiral_classifier
from loopnet import ops
from loopnet.datasets import spiral_data

BOOK_NUMBERS = (r"acc: \d\.\d{3}, loss: \d+\.\d{3} \(data_loss: \d+\.\d{3}, "
                r"reg_loss: \d+\.\d{3}\), lr: [0-9.e-]+")


@pytest.fixture(scope="module")
def spiral():
    return spiral_data(20, 3, seed=0), spiral_data(10, 3, seed=1)


def classifier(l2=0.0, dropout=None, device="numpy"):
    return spiral_classifier(device, weight_l2=l2, bias_l2=l2, dropout=dropout, decay=5e-3)


# --- Accuracy: the book's predictions or the model's outputs --------------------------------------

def test_categorical_accuracy_takes_predictions_or_probabilities():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08],
                              [0.3, 0.3, 0.4]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    predictions = loopnet.Softmax().predictions(probabilities)      # [0, 1, 1, 2]
    accuracy = loopnet.CategoricalAccuracy()
    assert accuracy.calculate(predictions, y) == 0.75
    assert accuracy.calculate(probabilities, y) == 0.75
    assert accuracy.calculate(predictions, np.eye(3)[y]) == 0.75          # one-hot targets
    assert accuracy.calculate_accumulated() == 0.75
    compared = accuracy.compare(predictions, y)
    assert compared.dtype == np.bool_ and compared.tolist() == [True, True, True, False]
    assert accuracy.compare(probabilities, y).tolist() == compared.tolist()
    with pytest.raises(ValueError, match=r"class indices.*got 0\.5 at position 1"):
        accuracy.calculate(np.array([0.0, 0.5, 1.0, 2.0]), y)
    with pytest.raises(ValueError, match=r"shape \(4, 1\).*binary=True"):
        accuracy.calculate(np.zeros((4, 1)), y)
    with pytest.raises(ValueError, match="4 targets but there are 3 predictions"):
        accuracy.compare(predictions[:3], y)


def test_binary_and_regression_accuracy_take_predictions_or_outputs():
    outputs = np.array([[0.9], [0.2], [0.6], [0.4]], dtype=np.float32)      # sigmoid outputs
    y = np.array([[1], [0], [0], [0]])
    predictions = loopnet.Sigmoid().predictions(outputs)                     # 0/1 ints
    for accuracy in (loopnet.CategoricalAccuracy(binary=True), loopnet.BinaryAccuracy()):
        assert accuracy.calculate(predictions, y) == accuracy.calculate(outputs, y) == 0.75
        assert accuracy.compare(predictions, y).tolist() == [[True], [True], [False], [True]]
        assert accuracy.compare(outputs, y.reshape(-1)).shape == (4, 1)     # (n,) targets too
    regression = loopnet.RegressionAccuracy(precision=0.1)
    values = np.array([[1.0], [2.05], [3.5]], dtype=np.float32)
    targets = np.array([[1.02], [2.0], [3.0]], dtype=np.float32)
    assert regression.compare(values, targets).tolist() == [[True], [True], [False]]
    assert regression.calculate(values, targets) == pytest.approx(2 / 3, abs=1e-15)


# --- The book's log lines ------------------------------------------------------------------------

def test_evaluate_prints_the_books_line_unless_quiet(spiral, capsys):
    (X, y), (X_test, y_test) = spiral
    model = classifier()
    loss, accuracy = model.evaluate(X_test, y_test)
    assert capsys.readouterr().out == f"validation, acc: {accuracy:.3f}, loss: {loss:.3f}\n"
    assert type(loss) is float and type(accuracy) is float
    assert model.evaluate(X_test, y_test, verbose=False) == (loss, accuracy)
    assert capsys.readouterr().out == ""


def test_batches_print_chapter_19s_lines_and_record_the_final_penalty(spiral, capsys):
    """60 samples in batches of 16: 4 steps per epoch; with print_every=2 the book prints
    steps 0, 2 and the last (3), then the epoch's training and validation lines."""
    (X, y), (X_test, y_test) = spiral
    model = classifier(l2=5e-3)
    history = model.train(X, y, epochs=2, batch_size=16, print_every=2,
                          validation_data=(X_test, y_test))
    out = capsys.readouterr().out.splitlines()
    shape = [re.sub(BOOK_NUMBERS, "<numbers>", line) for line in out]
    validation = r"validation, acc: \d\.\d{3}, loss: \d+\.\d{3}"
    assert [re.sub(validation, "validation, <numbers>", line) for line in shape] == [
        "epoch: 1", "step: 0, <numbers>", "step: 2, <numbers>", "step: 3, <numbers>",
        "training, <numbers>", "validation, <numbers>",
        "epoch: 2", "step: 0, <numbers>", "step: 2, <numbers>", "step: 3, <numbers>",
        "training, <numbers>", "validation, <numbers>"]
    # The training line's reg_loss is the penalty of the weights at the end of the epoch, and
    # the history holds what was printed.
    final_penalty = model.loss.regularization_loss()
    assert final_penalty > 0
    assert history["regularization_loss"][-1] == pytest.approx(float(final_penalty),
                                                               rel=1e-6)  # float32 rounding
    training_line = out[-2]
    assert f"reg_loss: {history['regularization_loss'][-1]:.3f})" in training_line
    assert f"acc: {history['accuracy'][-1]:.3f}, loss: {history['loss'][-1]:.3f}" in training_line
    assert training_line.endswith(f"lr: {history['learning_rate'][-1]}")      # in full
    assert out[-1] == (f"validation, acc: {history['val_accuracy'][-1]:.3f}, "
                       f"loss: {history['val_loss'][-1]:.3f}")
    assert model.optimizer.iterations == 8


def test_full_batch_keeps_chapter_18s_lines(spiral, capsys):
    (X, y), (X_test, y_test) = spiral
    classifier().train(X, y, epochs=4, print_every=2, validation_data=(X_test, y_test))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert re.fullmatch(r"epoch: 2, " + BOOK_NUMBERS, out[0])
    assert re.fullmatch(r"epoch: 4, " + BOOK_NUMBERS, out[1])
    assert out[2].startswith("validation, acc: ")


def test_validate_every_k_epochs_leaves_nan_between(spiral):
    (X, y), (X_test, y_test) = spiral
    history = classifier().train(X, y, epochs=7, print_every=0, validation_data=(X_test, y_test),
                                 validate_every=3)
    measured = [not np.isnan(v) for v in history["val_loss"]]
    assert measured == [False, False, True, False, False, True, True]   # and the last epoch


# --- The book's Model internals ------------------------------------------------------------------

def test_layer_input_and_the_layer_links():
    from loopnet.nnfs import Layer_Input

    model = classifier()
    assert isinstance(model.input_layer, Layer_Input)
    chain = [model.input_layer, *model.layers, model.loss]
    for previous, layer, following in zip(chain, chain[1:], chain[2:]):
        assert layer.prev is previous and layer.next is following
    X = np.ones((2, 2), np.float32)
    model.forward(X, training=False)
    assert model.input_layer.output is X
    assert model.output_layer_activation is model.layers[-1]


class ReadersDense:
    """A dense layer as a reader writes it in plain numpy: no ``device``, ``forward`` and
    ``backward`` return nothing, float64 parameters."""

    def __init__(self, n_inputs, n_neurons, rng):
        self.weights = 0.1 * rng.standard_normal((n_inputs, n_neurons))
        self.biases = np.zeros((1, n_neurons))
        self.weight_regularizer_l1 = self.weight_regularizer_l2 = 0
        self.bias_regularizer_l1 = self.bias_regularizer_l2 = 0

    def forward(self, inputs, training):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)

    def get_parameters(self):
        return self.weights, self.biases

    def set_parameters(self, weights, biases):
        self.weights, self.biases = weights, biases


def readers_model(optimizer):
    rng = np.random.default_rng(0)
    model = loopnet.Model()
    model.add(ReadersDense(2, 16, rng))
    model.add(loopnet.ReLU())
    model.add(ReadersDense(16, 3, rng))
    model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=optimizer,
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    return model


def test_optimizers_update_a_readers_own_layer(spiral):
    (X, y), _ = spiral
    X = X.astype(np.float64)
    # One plain SGD step is exactly weights - lr * dweights, up to the one rounding of the
    # update (with or without a fused multiply-add): eps * (|w| + |lr * dw|).
    model = readers_model(loopnet.SGD(learning_rate=0.5))
    before = [layer.weights.copy() for layer in model.trainable_layers]
    with pytest.warns(loopnet.SlowPathWarning, match=r"layer 0 \(ReadersDense\) is not one of"):
        model.train(X, y, epochs=1, print_every=0)
    for layer, weights in zip(model.trainable_layers, before):
        step = 0.5 * layer.dweights
        tolerance = np.finfo(np.float64).eps * (np.abs(weights) + np.abs(step))
        assert np.all(np.abs(layer.weights - (weights - step)) <= tolerance)
        assert layer.weights.dtype == np.float64
    # Adam keeps its state on the reader's layer, under the book's names, and learns.
    model = readers_model(loopnet.Adam(learning_rate=0.05))
    with pytest.warns(loopnet.SlowPathWarning):
        history = model.train(X, y, epochs=30, print_every=0)
    assert history["path"].startswith("layered: layer 0 (ReadersDense)")
    assert history["loss"][-1] < 0.95 * history["loss"][0]
    assert model.layers[0].weight_cache.shape == (2, 16)


# --- Dropout ------------------------------------------------------------------------------------

def test_layer_dropout_rate_is_the_fraction_kept_and_masks_are_loopnets():
    from loopnet.nnfs import Layer_Dropout

    book, ours = Layer_Dropout(0.1, seed=3), loopnet.Dropout(0.1, seed=3)
    assert book.rate == pytest.approx(0.9, abs=1e-15) and ours.rate == 0.1
    assert book.get_config()["rate"] == ours.get_config()["rate"] == 0.1
    x = np.ones((50, 40), np.float32)
    assert bits(book.forward(x)) == bits(ours.forward(x))
    dropped = np.mean(ops.to_numpy(book.output) == 0)
    assert 0.05 < dropped < 0.15          # 2000 draws of p=0.1: 0.1 +- 7 standard deviations
    assert repr(book) == "Layer_Dropout(0.1)"


def test_dropout_without_seed_repeats_after_seeding_numpy():
    def masks():
        np.random.seed(0)
        layer = loopnet.Dropout(0.5)
        assert isinstance(layer.seed, int)
        return layer.seed, bits(layer.forward(np.ones((8, 8), np.float32)))

    first, second = masks(), masks()
    assert first == second
    np.random.seed(1)
    assert loopnet.Dropout(0.5).seed != first[0]
    assert loopnet.Dropout(0.5, seed=7).seed == 7
    with pytest.raises(TypeError, match="seed must be"):
        loopnet.Dropout(0.5, seed="7")


def test_layer_dropout_is_saved_and_loaded(tmp_path):
    from loopnet.nnfs import Layer_Dropout

    model = classifier()
    model.layers.insert(2, Layer_Dropout(0.2, seed=4))
    model.finalize()
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = loopnet.Model.load(path)
    assert type(loaded.layers[2]) is Layer_Dropout
    assert loaded.layers[2].rate == pytest.approx(0.8) and loaded.layers[2].seed == 4


# --- Losses as numpy scalars --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_return_numpy_scalars_of_the_working_dtype(dtype):
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]], dtype=dtype)
    loss = loopnet.CategoricalCrossentropy()
    value = loss.calculate(probabilities, np.array([0, 1]))
    assert type(value) is np.dtype(dtype).type
    assert float(value) == pytest.approx((-np.log(0.7) - np.log(0.5)) / 2,
                                         rel=8 * float(np.finfo(dtype).eps))  # 2 logs, a mean
    assert type(loss.calculate_accumulated()) is np.dtype(dtype).type
    layer = loopnet.Dense(2, 3, weight_regularizer_l2=1e-3, dtype=dtype, seed=0)
    loss.remember_trainable_layers([layer])
    penalty = loss.regularization_loss()
    assert type(penalty) is np.dtype(dtype).type
    assert float(penalty) == pytest.approx(1e-3 * np.sum(layer.weights.astype(np.float64) ** 2),
                                           rel=4 * float(np.finfo(dtype).eps))
    data_loss, reg_loss = loss.calculate(probabilities, np.array([0, 1]),
                                         include_regularization=True)
    assert type(data_loss) is type(reg_loss) is np.dtype(dtype).type
    if dtype == np.float32:     # print(loss) shows float32's digits, as the book's does
        assert str(value) == str(np.float32(float(value))) and len(str(value)) <= 10


# --- nnfs.init() changes nothing ----------------------------------------------------------------

NNFS_PROGRAM = textwrap.dedent("""
    import contextlib, io, json, re
    import nnfs
    nnfs.init()
    import loopnet
    from loopnet.nnfs import *
    from nnfs.datasets import spiral_data

    X, y = spiral_data(20, 3)
    cases = [("cpu", None), ("numpy", None), ("cpu", 16)]
    for device, batch_size in cases:
        with loopnet.device(device):
            model = Model()
            model.add(Layer_Dense(2, 8))
            model.add(Activation_ReLU())
            model.add(Layer_Dense(8, 3))
            model.add(Activation_Softmax())
            model.set(loss=Loss_CategoricalCrossentropy(),
                      optimizer=Optimizer_Adam(learning_rate=0.001, decay=1e-3),
                      accuracy=Accuracy_Categorical())
            model.finalize()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                history = model.train(X, y, epochs=3, batch_size=batch_size, print_every=1,
                                      progress=False)
            printed = re.findall(r"lr: (\\S+)$", out.getvalue(), re.M)
            print(json.dumps({"device": device, "batch_size": batch_size, "printed": printed,
                              "history": [repr(v) for v in history["learning_rate"]],
                              "iterations": model.optimizer.iterations}))
""")


def test_nnfs_init_leaves_printed_learning_rates_exact():
    """nnfs.init() makes np.zeros float32 for the whole process; loopnet gives its arrays
    explicit dtypes, so the learning rate printed is the book's Python float, in full."""
    proc = subprocess.run([sys.executable, "-c", NNFS_PROGRAM], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 3
    for result in results:
        steps = 1 if result["batch_size"] is None else 4      # 60 samples in batches of 16
        expected = [repr(0.001 * (1.0 / (1.0 + 1e-3 * (epoch * steps - 1))))
                    for epoch in (1, 2, 3)]
        assert steps > 1 or expected[0] == "0.001"
        assert result["history"] == expected, result
        assert result["printed"][-1] == expected[-1], result
        assert result["iterations"] == 3 * steps
