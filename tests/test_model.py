"""Model: the README's model trains on every device, logs the book's lines, returns a history,
uses the fused softmax + cross-entropy backward, is deterministic (runs, thread counts, shuffled
minibatches, dropout), and stops with a clear error when the loss becomes NaN/inf.

Runs are short and small (a 60-sample spiral, tens of epochs) so the uncompiled ``python``
device stays quick; the long book runs are in ``scripts/acceptance_training.py``.
"""

from __future__ import annotations

import contextlib
import re
import threading

import numpy as np
import pytest

import loopnet
from helpers import HOST_DEVICES, assert_within, bits, spiral_classifier
from loopnet import ops
from loopnet.datasets import sine_data, spiral_data


def classifier(device=None, dropout=None, l2=0.0, lr=0.05):
    return spiral_classifier(device, weight_l2=l2, bias_l2=l2, dropout=dropout, lr=lr,
                             decay=5e-7)


@contextlib.contextmanager
def training_held(model, X, y, on_hold=None, **options):
    """``model.train(X, y, **options)`` in a thread of its own, held at the end of its first
    epoch (after ``on_hold(model)`` ran there, in the training thread) while the ``with``
    block runs; released and joined when it ends. Yields a dict that receives ``history``."""
    inside, release = threading.Event(), threading.Event()
    outcome = {}

    class Hold(loopnet.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                if on_hold is not None:
                    on_hold(self.model)
                inside.set()
                release.wait(60)

    thread = threading.Thread(target=lambda: outcome.setdefault("history", model.train(
        X, y, print_every=0, callbacks=[Hold()], **options)))
    thread.start()
    try:
        assert inside.wait(60)
        yield outcome
    finally:
        release.set()
        thread.join(60)


@pytest.fixture(scope="module")
def spiral():
    return spiral_data(20, 3, seed=0), spiral_data(10, 3, seed=1)


def test_readme_model_trains_and_reports(device, spiral, capsys):
    (X, y), (X_test, y_test) = spiral
    model = classifier(device, l2=5e-4)
    assert model.softmax_classifier_output is not None       # fused backward chosen
    history = model.train(X, y, epochs=60, print_every=20, validation_data=(X_test, y_test))
    out = capsys.readouterr().out.splitlines()
    line = re.compile(r"epoch: (\d+), acc: \d\.\d{3}, loss: \d+\.\d{3} \(data_loss: \d+\.\d{3}, "
                      r"reg_loss: \d+\.\d{3}\), lr: [0-9.e-]+$")
    epochs = [int(line.match(text).group(1)) for text in out if line.match(text)]
    assert epochs == [20, 40, 60]
    assert re.fullmatch(r"validation, acc: \d\.\d{3}, loss: \d+\.\d{3}", out[-1])
    lists = {"epoch", "loss", "data_loss", "regularization_loss", "accuracy", "learning_rate",
             "val_loss", "val_accuracy"}
    assert lists <= set(history) <= lists | {"path", "compile_time"}
    assert all(len(history[key]) == 60 for key in lists)
    # on cpu the compiled step ran (and said so), elsewhere the layered ops
    assert history["path"] == ("compiled" if device == "cpu" else f"layered: device {device}")
    assert history["epoch"] == list(range(1, 61))
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    assert all(r > 0 for r in history["regularization_loss"])
    assert_within(np.array(history["loss"]),
                  np.array(history["data_loss"]) + np.array(history["regularization_loss"]),
                  1e-12, "loss = data + reg")
    loss, acc = model.evaluate(X_test, y_test)
    assert (loss, acc) == (history["val_loss"][-1], history["val_accuracy"][-1])
    probabilities = model.predict(X_test)
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (30, 3)
    assert acc == ops.accuracy(probabilities, y_test, device="numpy")
    assert_within(probabilities.sum(axis=1), np.ones(30), 1e-6, "softmax rows")
    batched = model.predict(X_test, batch_size=7)
    assert bits(batched) == bits(probabilities)


def test_fused_backward_equals_chained_in_a_model(device, spiral):
    """The fused path gives the same gradients as Softmax.backward after the loss's backward."""
    (X, y), _ = spiral
    fused, chained = classifier(device), classifier(device)
    chained.softmax_classifier_output = None
    for model in (fused, chained):
        output = model.forward(X, training=True)
        model.backward(output, y)
    for a, b in zip(fused.trainable_layers, chained.trainable_layers):
        assert_within(ops.to_numpy(a.dweights), ops.to_numpy(b.dweights), 1e-6, "dweights")
        assert_within(ops.to_numpy(a.dbiases), ops.to_numpy(b.dbiases), 1e-6, "dbiases")


def history_bits(history):
    return bits(np.array(history["loss"])) + bits(np.array(history["accuracy"]))


def test_same_seed_same_history(device, spiral):
    (X, y), _ = spiral
    runs = []
    for _ in range(2):
        model = classifier(device, dropout=0.1)
        runs.append(history_bits(model.train(X, y, epochs=15, batch_size=16, shuffle=True,
                                             seed=5, print_every=0)))
    assert runs[0] == runs[1]
    other = classifier(device, dropout=0.1).train(X, y, epochs=15, batch_size=16, shuffle=True,
                                                  seed=6, print_every=0)
    assert history_bits(other) != runs[0]       # the seed does pick the order


@pytest.mark.parametrize("force_parallel", [False, True], ids=["by-size", "parallel-builds"])
def test_history_is_identical_across_thread_counts(spiral, force_parallel, monkeypatch):
    numba = pytest.importorskip("numba")
    if force_parallel:  # small arrays normally run serial builds: make every kernel go parallel
        from loopnet.backends import cpu

        for name in ("PARALLEL_MIN_ELEMENTS", "PARALLEL_MIN", "PARALLEL_MIN_ROWS"):
            monkeypatch.setattr(cpu, name, 0)
    (X, y), _ = spiral
    X, y = np.vstack([X] * 4), np.concatenate([y] * 4)     # enough rows for both threads
    original = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1, 1):
            numba.set_num_threads(threads)
            model = classifier("cpu", dropout=0.1, l2=5e-4)
            history = model.train(X, y, epochs=20, batch_size=100, shuffle=True, seed=1,
                                  print_every=0)
            runs.append(history_bits(history) + bits(model.layers[0].weights))
    finally:
        numba.set_num_threads(original)
    assert runs[0] == runs[1]


def test_devices_agree_on_a_short_run(device, spiral):
    """Every device follows the numpy device's loss history within float32 tolerance."""
    (X, y), _ = spiral
    ours = classifier(device).train(X, y, epochs=10, print_every=0)["loss"]
    reference = classifier("numpy").train(X, y, epochs=10, print_every=0)["loss"]
    assert_within(np.array(ours), np.array(reference), 1e-4, "loss histories")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_nan_loss_stops_training_naming_the_epoch(device):
    X, y = sine_data(40)
    model = loopnet.Model()
    model.add(loopnet.Dense(1, 8, seed=0, device=device))
    model.add(loopnet.ReLU(device=device))
    model.add(loopnet.Dense(8, 1, seed=1, device=device))
    model.add(loopnet.Linear(device=device))
    model.set(loss=loopnet.MeanSquaredError(device=device),
              optimizer=loopnet.SGD(learning_rate=100.0))
    model.finalize()
    with pytest.raises(FloatingPointError, match=r"diverged at epoch \d+: data_loss=(inf|nan)"):
        model.train(X, y, epochs=200, print_every=0)
    X_bad = X.copy()
    X_bad[3] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 0"):
        model.train(X_bad, y, epochs=2, batch_size=20, print_every=0)


def test_binary_and_regression_models_train(device):
    X, y = spiral_data(15, 2, seed=0)
    model = loopnet.Model()
    model.add(loopnet.Dense(2, 16, seed=0, device=device))
    model.add(loopnet.ReLU(device=device))
    model.add(loopnet.Dense(16, 1, seed=1, device=device))
    model.add(loopnet.Sigmoid(device=device))
    model.set(loss=loopnet.BinaryCrossentropy(device=device),
              optimizer=loopnet.Adam(learning_rate=0.05), accuracy=loopnet.BinaryAccuracy())
    model.finalize()
    history = model.train(X, y.reshape(-1, 1), epochs=40, print_every=0)
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    assert 0.0 <= history["accuracy"][-1] <= 1.0

    X, y = sine_data(50)
    model = loopnet.Model()
    model.add(loopnet.Dense(1, 16, seed=0, device=device))
    model.add(loopnet.ReLU(device=device))
    model.add(loopnet.Dense(16, 1, seed=1, device=device))
    model.add(loopnet.Linear(device=device))
    model.set(loss=loopnet.MeanSquaredError(device=device),
              optimizer=loopnet.Adam(learning_rate=0.01), accuracy=loopnet.RegressionAccuracy())
    model.finalize()
    history = model.train(X, y, epochs=40, print_every=0)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert model.accuracy.precision == pytest.approx(np.std(y) / 250)
    # a precision from targets it cannot come from is refused, and the old one kept
    for targets, what in ((np.array([[np.nan], [1.0]]), "holds NaN or infinite values"),
                          (np.zeros((0, 1)), "is empty")):
        with pytest.raises(ValueError, match=rf"^the regression accuracy's precision is "
                                             rf"std\(y\) / 250, but y {what}: "):
            model.accuracy.init(targets, reinit=True)
        assert model.accuracy.precision == pytest.approx(np.std(y) / 250)


def test_progress_bar_only_when_asked_or_on_a_terminal(spiral, capsys):
    (X, y), _ = spiral
    model = classifier("numpy")
    model.train(X, y, epochs=3, print_every=0)           # stderr is captured: not a TTY
    assert capsys.readouterr().err == ""
    model.train(X, y, epochs=3, print_every=0, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "epoch/s" in err          # tqdm's bar: count and rate


def test_train_validates_its_arguments(spiral):
    (X, y), _ = spiral
    model = classifier("numpy")
    with pytest.raises(ValueError, match="60 samples but y has 59"):
        model.train(X, y[:-1])
    with pytest.raises(ValueError, match="epochs"):
        model.train(X, y, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        model.train(X, y, batch_size=-3)
    with pytest.raises(ValueError, match="set\\(loss"):
        loopnet.Model().train(X, y)


def test_book_names_run_the_books_code(spiral, capsys):
    """Chapter-18 code with its class definitions replaced by ``from loopnet.nnfs import *``."""
    from loopnet.nnfs import (Accuracy_Categorical, Activation_ReLU, Activation_Softmax,
                              Activation_Softmax_Loss_CategoricalCrossentropy, Layer_Dense,
                              Layer_Dropout, Loss_CategoricalCrossentropy, Model, Optimizer_Adam)

    (X, y), (X_test, y_test) = spiral
    with loopnet.device("numpy"):
        model = Model()
        model.add(Layer_Dense(2, 16, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4))
        model.add(Activation_ReLU())
        model.add(Layer_Dropout(0.1))
        model.add(Layer_Dense(16, 3))
        model.add(Activation_Softmax())
        model.set(loss=Loss_CategoricalCrossentropy(),
                  optimizer=Optimizer_Adam(learning_rate=0.05, decay=5e-5),
                  accuracy=Accuracy_Categorical())
        model.finalize()
        model.train(X, y, validation_data=(X_test, y_test), epochs=5, print_every=5)
        assert isinstance(model.softmax_classifier_output,
                          Activation_Softmax_Loss_CategoricalCrossentropy)
        predictions = model.output_layer_activation.predictions(model.predict(X_test))
        assert predictions.shape == (30,)
        # Chapter 10's standalone form of the fused class: forward returns the loss.
        fused = Activation_Softmax_Loss_CategoricalCrossentropy()
        loss = fused.forward(np.zeros((3, 3)), [0, 1, 2])
        assert loss == pytest.approx(np.log(3))
        assert fused.backward(fused.output, [0, 1, 2]).shape == (3, 3)
    assert "epoch: 5, acc:" in capsys.readouterr().out


@pytest.mark.parametrize("device_name", HOST_DEVICES)
def test_dropout_is_off_outside_training(device_name):
    layer = loopnet.Dropout(0.5, seed=0, device=device_name)
    x = np.ones((4, 6), np.float32)
    assert layer.forward(x, training=False) is x
    out = ops.to_numpy(layer.forward(x))
    assert set(np.unique(out)) <= {0.0, 2.0} and (out == 0).any() and (out == 2).any()
    assert bits(ops.to_numpy(layer.backward(np.ones_like(x)))) == bits(out)


def test_summary_counts_parameters_by_hand():
    model = classifier("numpy", dropout=0.1)   # Dense(2, 16) ReLU Dropout Dense(16, 3) Softmax
    assert model.count_params() == (2 * 16 + 16) + (16 * 3 + 3) == 99
    text = model.summary(print_fn=None)
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.startswith(("Dense", "ReLU", "Dropout", "Softmax"))}
    assert rows["Dense(2,"][-3:] == ["(None,", "16)", "48"]
    assert rows["Dense(16,"][-3:] == ["(None,", "3)", "51"]
    assert rows["Dropout(0.1)"][-3:] == ["(None,", "16)", "0"]
    assert "Total params: 99" in text and "Trainable params: 99" in text
    assert "Device: numpy; dtype: float32" in text
    wide = loopnet.Model()
    wide.add(loopnet.Dense(784, 128, seed=0))
    wide.add(loopnet.ReLU())
    wide.add(loopnet.Dense(128, 10, dtype=np.float64, seed=0))
    assert wide.count_params() == 784 * 128 + 128 + 128 * 10 + 10 == 101_770
    assert "Total params: 101,770" in wide.summary(print_fn=None)
    assert "dtype: float32, float64" in wide.summary(print_fn=None)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_one_model_trains_in_one_thread_at_a_time(device, spiral, tmp_path):
    """A second thread's ``train``, ``predict`` or ``evaluate`` of a model that is training is
    refused with a ``RuntimeError`` (the layered path would otherwise mix the two runs'
    activations into wrong gradients or a shape error from inside a layer), and so are its
    saves and reads of the parameters (a state halfway through an update) and its writes to
    them; the training thread's own callback may predict, a copy trains beside it, and the
    first run ends as it would alone."""
    import copy

    (X, y), _ = spiral
    model, alone = classifier(device), classifier(device)
    alone.train(X, y, epochs=3, batch_size=16, print_every=0)
    saved = tmp_path / "alone.npz"
    alone.save_parameters(saved)
    outcome = {}

    def on_hold(held):
        outcome["copy"] = copy.deepcopy(held)
        outcome["own"] = held.predict(X[:4])

    def other(call, key):
        try:
            outcome[key] = call()
        except RuntimeError as error:
            outcome[key] = error

    with training_held(model, X, y, on_hold, epochs=3, batch_size=16):
        for key, call in (
                ("same", lambda: model.train(X, y, epochs=1, print_every=0)),
                ("predict", lambda: model.predict(X)),
                ("evaluate", lambda: model.evaluate(X, y, verbose=False)),
                ("copied", lambda: outcome["copy"].train(X, y, epochs=1, print_every=0)),
                ("save", lambda: model.save(tmp_path / "m.npz")),
                ("save_parameters", lambda: model.save_parameters(tmp_path / "p.npz")),
                ("get_parameters", model.get_parameters),
                ("to_torch", model.to_torch),
                ("set_parameters", lambda: model.set_parameters(alone.get_parameters())),
                ("load_parameters", lambda: model.load_parameters(saved))):
            thread = threading.Thread(target=other, args=(call, key))
            thread.start()
            thread.join(60)
    assert isinstance(outcome["same"], RuntimeError)
    assert "already training in another thread" in str(outcome["same"])
    for key, why in (("predict", "would run its layers"), ("evaluate", "would run its layers"),
                     ("save", "would read parameters"), ("save_parameters", "would read"),
                     ("get_parameters", "would read"), ("to_torch", "would read"),
                     ("set_parameters", "would change parameters under the running updates"),
                     ("load_parameters", "would change parameters")):
        assert isinstance(outcome[key], RuntimeError), key
        assert f"training in another thread: {key}() now {why}" in str(outcome[key])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alone.npz"]   # none written
    assert outcome["own"].shape == (4, 3)
    assert not isinstance(outcome["copied"], Exception)
    assert [bits(layer.weights) for layer in model.trainable_layers] == \
        [bits(layer.weights) for layer in alone.trainable_layers]
    model.train(X, y, epochs=1, print_every=0)            # free again once the first returned


def test_one_layer_object_stands_at_one_place():
    """The same layer object added twice is refused, by ``add`` and (for a list edited by
    hand) by ``finalize``, naming both places: a layer keeps its last forward's inputs for its
    backward, so a reused one backpropagated the second place's inputs through the first."""
    dense, relu = loopnet.Dense(4, 4, seed=0), loopnet.ReLU()
    model = loopnet.Model()
    for layer in (loopnet.Dense(2, 4, seed=1), relu, dense):
        model.add(layer)
    for again, position in ((relu, 1), (dense, 2)):
        with pytest.raises(ValueError, match=rf"would stand at layers {position} and 3 of the "
                                             r"model: .*add a new"):
            model.add(again)
    assert len(model.layers) == 3
    model.add(loopnet.ReLU())
    model.layers.append(dense)                          # past add(): finalize finds it
    model.set(loss="mse", optimizer="adam")
    with pytest.raises(ValueError, match=r"Dense\(4, 4\) would stand at layers 2 and 4"):
        model.finalize()
    with pytest.raises(ValueError, match=r"would stand at layers 2 and 4"):
        model.train(np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32), epochs=1,
                    print_every=0)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_a_loss_optimizer_or_accuracy_two_models_share(spiral, device):
    """A loss object two models share reports the penalties of the model that trains (the
    book's loss keeps the layers the last ``finalize`` gave it: the layered path reported the
    other model's); while one model trains in a thread, another thread's ``train`` of a model
    holding its optimizer, loss or accuracy is refused, naming it, and its ``evaluate`` when
    it holds the loss or the accuracy (``predict`` touches neither)."""
    (X, y), _ = spiral

    def model_with(l2, **parts):
        model = loopnet.Model()
        for layer in (loopnet.Dense(2, 8, seed=0, weight_regularizer_l2=l2, device=device),
                      loopnet.ReLU(device=device), loopnet.Dense(8, 3, seed=1, device=device),
                      loopnet.Softmax(device=device)):
            model.add(layer)
        model.set(loss=parts.get("loss", loopnet.CategoricalCrossentropy(device=device)),
                  optimizer=parts.get("optimizer", loopnet.Adam(learning_rate=0.01)),
                  accuracy=parts.get("accuracy", loopnet.CategoricalAccuracy(device=device)))
        model.finalize()
        return model

    alone = model_with(1e-2).train(X, y, epochs=3, print_every=0)
    loss = loopnet.CategoricalCrossentropy(device=device)
    first = model_with(1e-2, loss=loss)
    model_with(0.0, loss=loss)                      # finalized after the first
    history = first.train(X, y, epochs=3, print_every=0)
    assert alone["regularization_loss"][-1] > 0
    assert history["regularization_loss"] == alone["regularization_loss"]
    assert history["loss"] == alone["loss"]

    optimizer, accuracy = loopnet.Adam(), loopnet.CategoricalAccuracy(device=device)
    first = model_with(0.0, optimizer=optimizer, accuracy=accuracy)
    others = {"optimizer": model_with(0.0, optimizer=optimizer),
              "accuracy": model_with(0.0, accuracy=accuracy)}
    outcome = {}
    with training_held(first, X, y, epochs=1):
        for part, other in others.items():
            for call in ("train", "evaluate", "predict"):
                try:
                    if call == "train":
                        other.train(X, y, epochs=1, print_every=0)
                    elif call == "evaluate":
                        other.evaluate(X, y, verbose=False)
                    else:
                        other.predict(X)
                    outcome[part, call] = "ran"
                except RuntimeError as error:
                    outcome[part, call] = str(error)
    assert outcome.pop(("optimizer", "evaluate")) == "ran"
    assert outcome.pop(("optimizer", "predict")) == outcome.pop(("accuracy", "predict")) == "ran"
    for (part, call), message in outcome.items():
        shown = repr(optimizer if part == "optimizer" else accuracy)
        assert message.startswith(f"its {part} ({shown}), which another model holds too, is "
                                  + ("already " if call == "train" else "") + "training in "
                                  "another thread"), (part, call, message)
    assert len(outcome) == 3
    assert len(others["optimizer"].train(X, y, epochs=1, print_every=0)["loss"]) == 1


def test_a_layer_two_models_share_trains_in_one_thread_at_a_time(spiral):
    """Two models holding one layer object: while one trains in a thread, another thread's
    ``train`` or ``predict`` of the other is refused, naming the shared layer (the layer keeps
    the training run's activations); once the first returns, the second trains."""
    (X, y), _ = spiral
    shared = loopnet.Dense(16, 16, seed=5)

    def model_with(seed):
        model = loopnet.Model()
        for layer in (loopnet.Dense(2, 16, seed=seed), loopnet.ReLU(), shared, loopnet.ReLU(),
                      loopnet.Dense(16, 3, seed=seed + 1), loopnet.Softmax()):
            model.add(layer)
        model.set(loss="categorical_crossentropy", optimizer="adam", accuracy="categorical")
        return model

    first, second = model_with(1), model_with(3)
    outcome = {}
    with training_held(first, X, y, epochs=1):
        for key, call in (("train", lambda: second.train(X, y, epochs=1, print_every=0)),
                          ("predict", lambda: second.predict(X))):
            try:
                call()
            except RuntimeError as error:
                outcome[key] = str(error)
    for key in ("train", "predict"):
        assert re.match(r"layer 2 \(Dense\(16, 16\)\), which another model holds too, is "
                        + ("already " if key == "train" else "") + "training in another "
                        "thread", outcome[key]), outcome
    assert len(second.train(X, y, epochs=1, print_every=0)["loss"]) == 1     # free again
