"""The compiled training step (``loopnet/kernels/step.py`` through ``loopnet/compiled.py``) gives
the layered path's numbers: random layer programs (layer kinds, sizes, losses, optimizers,
batches, validation) train to the very same bits as the ops run one by one, and within float
rounding of the numpy device; it says when it does not run and why.

The random programs train through the one build with every branch (``LOOPNET_STEP_BUILD=full``:
one compile serves them all); the builds a kind of model gets of its own run the same code with
the other branches left out, and ``tests/test_histories.py`` pins what they give.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loopnet
from helpers import bits
from loopnet import compiled
from loopnet.backends import cpu
from loopnet.datasets import spiral_data
from loopnet.kernels import dense_fast

LOSSES = ("categorical", "categorical_onehot", "binary", "mse", "mae")
OPTIMIZERS = ("sgd", "sgd_momentum", "adagrad", "rmsprop", "adam")
HIDDEN = ("relu", "sigmoid", "linear", "dropout")


def optimizer_of(name):
    # (rates small enough that these models, a few epochs on standard-normal data, do not
    # diverge: a diverging run is compared too, but by its error alone)
    return {"sgd": lambda: loopnet.SGD(0.1, decay=1e-2),
            "sgd_momentum": lambda: loopnet.SGD(0.05, decay=1e-2, momentum=0.5),
            "adagrad": lambda: loopnet.Adagrad(0.05, decay=1e-3),
            "rmsprop": lambda: loopnet.RMSprop(0.005, decay=1e-3, rho=0.8),
            "adam": lambda: loopnet.Adam(0.01, decay=1e-3)}[name]()


@st.composite
def programs(draw):
    """A model description: input width, hidden layers (width, activation, penalties),
    loss, optimizer, batch size, shuffle, validation, dtype."""
    n_inputs = draw(st.integers(1, 5))
    # a layer before the first Dense, sometimes (it then reads the batch itself)
    lead = draw(st.sampled_from([None, None, *HIDDEN]))
    hidden = [(draw(st.integers(1, 12)), draw(st.sampled_from(HIDDEN)),
               draw(st.sampled_from([0.0, 5e-4])), draw(st.sampled_from([0.0, 1e-3])))
              for _ in range(draw(st.integers(0, 2)))]
    loss = draw(st.sampled_from(LOSSES))
    n_outputs = draw(st.integers(2, 4)) if loss.startswith("categorical") \
        else draw(st.integers(1, 3))
    return dict(n_inputs=n_inputs, lead=lead, hidden=hidden, loss=loss, n_outputs=n_outputs,
                optimizer=draw(st.sampled_from(OPTIMIZERS)),
                n_samples=draw(st.integers(1, 30)),
                batch_size=draw(st.sampled_from([None, 1, 4, 7])),
                shuffle=draw(st.booleans()), validation=draw(st.booleans()),
                epochs=draw(st.integers(1, 4)), seed=draw(st.integers(0, 1000)))


def activation_of(name, seed, device):
    if name == "relu":
        return loopnet.ReLU(device=device)
    if name == "sigmoid":
        return loopnet.Sigmoid(device=device)
    if name == "linear":
        return loopnet.Linear(device=device)
    return loopnet.Dropout(0.25, seed=seed, device=device)


def build_model(spec, dtype=np.float32, device=None):
    model = loopnet.Model()
    width = spec["n_inputs"]
    if spec.get("lead"):
        model.add(activation_of(spec["lead"], spec["seed"] + 11, device))
    for k, (n, activation, l2, l1) in enumerate(spec["hidden"]):
        model.add(loopnet.Dense(width, n, weight_regularizer_l2=l2, bias_regularizer_l1=l1,
                                seed=spec["seed"] + k, dtype=dtype, device=device))
        model.add(activation_of(activation, spec["seed"], device))
        width = n
    model.add(loopnet.Dense(width, spec["n_outputs"], seed=spec["seed"] + 7, dtype=dtype,
                            device=device))
    loss = spec["loss"]
    if loss.startswith("categorical"):
        model.add(loopnet.Softmax(device=device))
        model.set(loss=loopnet.CategoricalCrossentropy(device=device),
                  accuracy=loopnet.CategoricalAccuracy(device=device))
    elif loss == "binary":
        model.add(loopnet.Sigmoid(device=device))
        model.set(loss=loopnet.BinaryCrossentropy(device=device),
                  accuracy=loopnet.BinaryAccuracy(device=device))
    else:
        model.add(loopnet.Linear(device=device))
        model.set(loss=(loopnet.MeanSquaredError if loss == "mse"
                        else loopnet.MeanAbsoluteError)(device=device),
                  accuracy=loopnet.RegressionAccuracy(device=device))
    model.set(optimizer=optimizer_of(spec["optimizer"]))
    model.finalize()
    return model


def data_of(spec, rows, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, spec["n_inputs"])).astype(np.float32)
    loss = spec["loss"]
    if loss.startswith("categorical"):
        y = rng.integers(0, spec["n_outputs"], rows)
        if loss == "categorical_onehot":
            y = np.eye(spec["n_outputs"], dtype=np.float32)[y]
    elif loss == "binary":
        y = rng.integers(0, 2, (rows, spec["n_outputs"]))
    else:
        y = rng.standard_normal((rows, spec["n_outputs"])).astype(np.float32)
    return X, y


@contextlib.contextmanager
def environment(**values):
    """Set environment variables for the ``with`` block (hypothesis tests cannot take
    pytest's function-scoped ``monkeypatch``)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def train(spec, compiled_step: bool, device=None, dtype=np.float32, build="full"):
    """(history, parameters, optimizer state, dropout steps) of one training run (with every
    kind of model in one build of the compiled step, or ``build="own"``: the model's own), or
    the message of its ``FloatingPointError`` when it diverged."""
    with environment(**{compiled.ENV_VAR: "1" if compiled_step else "0",
                        compiled.FULL_BUILD_VAR: build}):
        try:
            return _train(spec, device, dtype)
        except FloatingPointError as error:
            return str(error)


def _train(spec, device, dtype):
    X, y = data_of(spec, spec["n_samples"], spec["seed"])
    options = dict(epochs=spec["epochs"], batch_size=spec["batch_size"], print_every=0,
                   shuffle=spec["shuffle"], seed=spec["seed"], progress=False)
    if spec["validation"]:
        options["validation_data"] = data_of(spec, 5, spec["seed"] + 1)
    with loopnet.device(device or "cpu"):
        model = build_model(spec, dtype, device)
        history = model.train(X, y, **options)
    state = [loopnet.to_numpy(getattr(layer, name)) for layer in model.trainable_layers
             for name in ("weight_momentums", "weight_cache", "bias_momentums", "bias_cache")
             if getattr(layer, name, None) is not None]
    steps = [layer.step for layer in model.layers if isinstance(layer, loopnet.Dropout)]
    return history, model.get_parameters(), state, model.optimizer.get_state(), steps


def same_bits(first, second):
    history_1, params_1, state_1, optimizer_1, steps_1 = first
    history_2, params_2, state_2, optimizer_2, steps_2 = second
    lists = [key for key in history_1 if isinstance(history_1[key], list)]
    assert lists == [key for key in history_2 if isinstance(history_2[key], list)]
    for key in lists:
        assert bits(np.array(history_1[key])) == bits(np.array(history_2[key])), key
    assert optimizer_1 == optimizer_2 and steps_1 == steps_2
    assert len(state_1) == len(state_2)
    for a, b in zip([p for pair in params_1 for p in pair] + state_1,
                    [p for pair in params_2 for p in pair] + state_2):
        assert bits(a) == bits(b)


@settings(max_examples=40)
@given(spec=programs())
def test_random_programs_train_to_the_layered_paths_bits(spec):
    """Layer kinds and sizes, the four losses (one-hot labels too), the five optimizers, L1/L2,
    dropout, full batch or minibatches, shuffled or not, with validation: the compiled step
    runs the layered path's very loops in the same order (these sizes take the blocked and
    narrow forms, the loops' bits), so history, parameters and state are the same bits."""
    with_compiled = train(spec, True)
    layered = train(spec, False)
    if isinstance(with_compiled, str) or isinstance(layered, str):    # diverged: both, alike
        assert with_compiled == layered
        return
    assert with_compiled[0]["path"] == "compiled"
    assert layered[0]["path"].startswith("layered")
    same_bits(with_compiled, layered)


@pytest.mark.parametrize("lead", HIDDEN)
def test_a_layer_before_the_first_dense_trains_to_the_layered_paths_bits(lead):
    """A Linear, ReLU, Sigmoid or Dropout as the first layer reads the batch itself (Linear and
    ReLU, which otherwise work in the block of the layer before them, copy the batch into a
    block of their own first: a ReLU never overwrites the caller's data)."""
    spec = dict(n_inputs=3, lead=lead, hidden=[(8, "relu", 5e-4, 0.0), (5, "linear", 0.0, 0.0)],
                loss="categorical", n_outputs=3, optimizer="adam", n_samples=24, batch_size=7,
                shuffle=True, validation=True, epochs=3, seed=5)
    with_compiled = train(spec, True)
    assert with_compiled[0]["path"] == "compiled"
    same_bits(with_compiled, train(spec, False))
    X, y = data_of(spec, spec["n_samples"], spec["seed"])
    before = X.copy()
    with environment(**{compiled.ENV_VAR: "1", compiled.FULL_BUILD_VAR: "full"}):
        history = build_model(spec).train(X, y, epochs=2, print_every=0, progress=False)
    assert history["path"] == "compiled"
    assert bits(X) == bits(before)


@pytest.mark.parametrize("between, last", [
    (["relu", "relu"], None), (["linear", "relu"], None), (["sigmoid", "relu"], None),
    (["dropout", "relu"], None), (["relu"], "relu")])
def test_layers_sharing_one_block_train_to_the_layered_paths_bits(between, last):
    """Layers that work in the block of the layer before them, stacked (a ReLU after a Linear,
    a Sigmoid, a Dropout or a ReLU), or a ReLU last (the loss's gradient then lands in the
    dense layer's block): the layered path's history, parameters and predictions."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = np.abs(rng.standard_normal((40, 1))).astype(np.float32)

    def run(compiled_step):     # (the build with every branch: one compile for every case)
        with environment(**{compiled.ENV_VAR: "1" if compiled_step else "0",
                            compiled.FULL_BUILD_VAR: "full"}):
            model = loopnet.Model()
            model.add(loopnet.Dense(3, 8, seed=1))
            for name in between:
                model.add(activation_of(name, 4, None))
            model.add(loopnet.Dense(8, 1, seed=2))
            if last:
                model.add(activation_of(last, 4, None))
            model.set(loss=loopnet.MeanSquaredError(), optimizer=loopnet.Adam(0.01),
                      accuracy=loopnet.RegressionAccuracy())
            model.finalize()
            history = model.train(X, y, epochs=4, batch_size=16, shuffle=True, seed=0,
                                  validation_data=(X[:9], y[:9]), print_every=0,
                                  progress=False)
            return history, model.get_parameters(), model.predict(X[:7])

    (history, parameters, predictions), layered = run(True), run(False)
    assert history["path"] == "compiled" and layered[0]["path"].startswith("layered")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert bits(np.array(history[key])) == bits(np.array(layered[0][key])), key
    for mine, theirs in zip(parameters, layered[1]):
        assert all(bits(a) == bits(b) for a, b in zip(mine, theirs))
    assert bits(predictions) == bits(layered[2])


@settings(max_examples=15)
@given(spec=programs())
def test_random_programs_are_within_rounding_of_the_numpy_device(spec):
    """The compiled step against the numpy twins (``np.dot``: other summation orders): the
    first epoch's data loss, measured before any update, agrees within float32 rounding.
    Its terms are sums of at most 12 products of values below ~10 (weights 0.1 * randn),
    through exp/log: a relative 1e-4 bounds a few dozen float32 roundings (eps 6e-8 each)
    with room for the 3-layer growth."""
    spec = dict(spec, epochs=1, batch_size=None)     # one step: its loss comes before updates
    history_cpu = train(spec, True)[0]
    history_numpy = train(spec, False, device="numpy")[0]
    cpu_loss, numpy_loss = history_cpu["data_loss"][0], history_numpy["data_loss"][0]
    assert abs(cpu_loss - numpy_loss) <= 1e-4 * max(1.0, abs(numpy_loss))


def test_float64_and_larger_layers_take_the_compiled_step_too():
    """float64 parameters, and layers wide enough for the dot-product forms (forward of few
    neurons, dinputs of many) and for the broadcast form: the same forms on both paths, and
    with the same bits where they are the loops' (here every form: each product runs the very
    kernel of the layered path). The float64 model trains on its own build: the full build
    in float64 would compile every kernel of every branch in float64 too."""
    for dtype, hidden, build in ((np.float64, [(40, "relu", 5e-4, 0.0)], "own"),
                                 (np.float32, [(70, "relu", 0.0, 0.0), (64, "relu", 0.0, 0.0)],
                                  "full")):
        spec = dict(n_inputs=70, hidden=hidden, loss="categorical", n_outputs=3,
                    optimizer="adam", n_samples=150, batch_size=None, shuffle=False,
                    validation=True, epochs=3, seed=4)
        first = train(spec, True, dtype=dtype, build=build)
        assert first[0]["path"] == "compiled"
        same_bits(first, train(spec, False, dtype=dtype))


def test_middle_sized_layers_take_the_broadcast_form_on_both_paths():
    """Layers of 32 and 48 on 1,000 rows: their products take the broadcast form from 128k
    multiply-adds (``cpu.MIDDLE_MIN``), in the compiled step as in the layered ops, so the
    same bits; a step of 2.7M multiply-adds runs the parallel build."""
    spec = dict(n_inputs=32, hidden=[(32, "relu", 5e-4, 0.0), (48, "relu", 0.0, 0.0)],
                loss="categorical", n_outputs=3, optimizer="adam", n_samples=1000,
                batch_size=None, shuffle=False, validation=True, epochs=3, seed=5)
    for shape in ((1000, 32, 32), (1000, 32, 48)):
        assert dense_fast.BROADCAST in {product.form for product in cpu.dense_plan(*shape)}
    assert cpu.parallel_step(1000 * (32 * 32 + 32 * 48 + 48 * 3)) == \
        cpu.threads.parallel_allowed()
    first = train(spec, True)
    assert first[0]["path"] == "compiled"
    same_bits(first, train(spec, False))


def test_the_step_and_the_layered_ops_ask_one_plan(monkeypatch):
    """Over the crossover table's shapes (benchmarks/bench.py --crossover), the forms the
    compiled step is given for each dense product are those the layered ops get from
    ``cpu.dense_plan`` for the same shape and float type: one decision, asked by both (float64
    on a few of them: its plans never name the broadcast form)."""
    asked = []
    original = cpu.dense_plan

    def spy(n_samples, n_inputs, n_neurons, double=False):
        plan = original(n_samples, n_inputs, n_neurons, double)
        asked.append(((n_samples, n_inputs, n_neurons, double), plan))
        return plan

    monkeypatch.setattr(cpu, "dense_plan", spy)
    rng = np.random.default_rng(0)
    cases = [(np.float32, n_inputs, n_neurons, n_samples)
             for n_inputs, n_neurons in ((2, 64), (64, 3), (16, 32), (32, 32), (32, 64),
                                         (48, 48), (64, 64), (256, 256), (784, 128))
             for n_samples in (4, 32, 128, 300, 1024, 4096)]
    cases += [(np.float64, n_inputs, n_neurons, n_samples)
              for n_inputs, n_neurons in ((32, 32), (64, 64), (256, 256))
              for n_samples in (128, 1024)]
    for dtype, n_inputs, n_neurons, n_samples in cases:
        double = dtype == np.float64
        spec = dict(n_inputs=3, hidden=[(n_inputs, "relu", 0.0, 0.0)], loss="mse",
                    n_outputs=n_neurons, optimizer="sgd", seed=0)
        model = build_model(spec, dtype)
        X = rng.standard_normal((n_samples, 3)).astype(dtype)
        y = rng.standard_normal((n_samples, n_neurons)).astype(dtype)
        trainer = compiled.prepare_training(model, X, y, None, None)
        step = trainer.run.step
        for layer, shape in ((0, (n_samples, 3, n_inputs)),
                             (2, (n_samples, n_inputs, n_neurons))):
            plan = original(*shape, double)
            forms = trainer.run.plans[layer, step.TRAIN_FULL]
            assert tuple(forms) == (plan.forward.form, plan.forward.parallel,
                                    plan.dweights.form, plan.dweights.parallel,
                                    plan.dinputs.form, plan.dinputs.parallel), shape
            if double:
                assert dense_fast.BROADCAST not in {product.form for product in plan}
        asked.clear()   # the layered ops: one step, each product through the plan
        model.loss.calculate(model.forward(X, training=True), y)
        model.backward(model.layers[-1].output, y)
        layered = dict(asked)
        assert layered[(n_samples, n_inputs, n_neurons, double)] == original(
            n_samples, n_inputs, n_neurons, double)


def test_evaluate_in_batches_reads_the_regression_accuracys_precision(monkeypatch):
    """``evaluate`` in batches runs the compiled step (from 24 layer calls): it left the
    regression accuracy's precision at 0, so its accuracy was 0.0 where the layered path's was
    not. A regression accuracy never trained takes its precision from all of ``y_val`` on both
    paths (the layered path took it from the first batch)."""
    from loopnet.datasets import sine_data

    X, y = sine_data(400)

    def model(trained):
        built = loopnet.Model()
        for layer in (loopnet.Dense(1, 32, seed=0), loopnet.ReLU(), loopnet.Dense(32, 1, seed=1),
                      loopnet.Linear()):
            built.add(layer)
        built.set(loss="mse", optimizer=loopnet.Adam(learning_rate=0.01),
                  accuracy=loopnet.RegressionAccuracy())
        if trained:
            built.train(X, y, epochs=300, print_every=0)
        return built

    results = {}
    for path in ("compiled", "layered"):
        if path == "layered":
            monkeypatch.setenv(compiled.ENV_VAR, "0")
        trained, fresh = model(True), model(False)
        results[path] = (trained.evaluate(X, y, batch_size=8, verbose=False),
                         fresh.evaluate(X, y, batch_size=8, verbose=False),
                         fresh.accuracy.precision)
    assert results["compiled"] == results["layered"]
    (_, accuracy), _, precision = results["compiled"]
    assert accuracy > 0      # (the bug: exactly 0.0, no prediction within a precision of 0)
    assert precision == pytest.approx(float(np.std(y)) / 250)


def test_the_history_says_which_path_ran_and_why(monkeypatch):
    """Nothing takes the slow path silently: the history names the path, and on cpu the
    layered path is warned about once, with the layer or setting that caused it."""
    X, y = spiral_data(10, 3, seed=0)

    class Doubling(loopnet.ReLU):         # a layer class of the user's own
        def forward(self, inputs, training=True):
            self.output = 2 * np.asarray(inputs)
            return self.output

        def backward(self, dvalues):
            self.dinputs = 2 * np.asarray(dvalues)
            return self.dinputs

    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    model = build_model(spec)
    assert model.train(X, y, epochs=2, print_every=0)["path"] == "compiled"
    model = build_model(spec)
    model.layers[1] = Doubling()
    model.finalize()
    with pytest.warns(compiled.SlowPathWarning, match=r"layer 1 \(Doubling\)") as caught:
        history = model.train(X, y, epochs=2, print_every=0)
    assert [w.filename for w in caught] == [__file__]      # the user's line, not loopnet's
    assert history["path"] == ("layered: layer 1 (Doubling) is not one of loopnet's Dense, "
                               "Dropout, ReLU, Sigmoid, Linear, Softmax")
    with loopnet.device("numpy"):
        history = build_model(spec, device="numpy").train(X, y, epochs=1, print_every=0)
    assert history["path"] == "layered: device numpy"
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    history = build_model(spec).train(X, y, epochs=1, print_every=0)
    assert history["path"] == f"layered: {compiled.ENV_VAR}=0"


# What a callback changes between two epochs (after epoch 2 of 5): settings the compiled step
# reads again before each block, and parts it cannot follow (the rest then runs layered).
MIDWAY = {
    "learning_rate": lambda m: setattr(m.optimizer, "learning_rate", 0.001),
    "beta_1": lambda m: setattr(m.optimizer, "beta_1", 0.5),
    "l2": lambda m: setattr(m.layers[0], "weight_regularizer_l2", 0.1),
    "l1_bias": lambda m: setattr(m.layers[3], "bias_regularizer_l1", 0.01),
    "dropout_rate": lambda m: setattr(m.layers[2], "rate", 0.5),
    "dropout_seed": lambda m: setattr(m.layers[2], "seed", 7),
    "dropout_step": lambda m: setattr(m.layers[2], "step", 0),
    "weights_in_place": lambda m: m.layers[0].weights.__setitem__(Ellipsis, 0.5),
    "new_weights": lambda m: setattr(m.layers[0], "weights", np.full((2, 16), 0.5, np.float32)),
    "new_momentums": lambda m: setattr(m.layers[0], "weight_momentums",
                                       np.zeros((2, 16), np.float32)),
    "tied_biases": lambda m: setattr(m.layers[3], "biases", m.layers[0].biases[:, :3]),
    "new_optimizer": lambda m: m.set(optimizer=loopnet.SGD()),
    "weights_wider": lambda m: setattr(m.layers[3], "weights", np.zeros((16, 4), np.float32)),
    "weights_float64": lambda m: setattr(m.layers[3], "weights",
                                         m.layers[3].weights.astype(np.float64)),
    "momentum_on": lambda m: setattr(m.optimizer, "momentum", 0.9),    # (SGD: see below)
    "accuracy_binary": lambda m: setattr(m.accuracy, "binary", True),
    # in place, the object staying the same: the kernels would read the old layout
    "weights_reshaped_in_place": lambda m: setattr(m.layers[0].weights, "shape", (16, 2)),
    "weights_retyped_in_place": lambda m: setattr(m.layers[0].weights, "dtype", np.int32),
    "weights_read_only": lambda m: setattr(m.layers[3].weights.flags, "writeable", False),
    "biases_reshaped_in_place": lambda m: setattr(m.layers[3].biases, "shape", (3,)),
    "cache_reshaped_in_place": lambda m: setattr(m.layers[0].weight_cache, "shape", (16, 2)),
}
FOLLOWED = ("learning_rate", "beta_1", "l2", "l1_bias", "dropout_rate", "dropout_seed",
            "dropout_step", "weights_in_place", "new_weights", "new_momentums")


@pytest.mark.parametrize("change", sorted(MIDWAY))
def test_a_callback_changing_the_model_between_epochs(change, monkeypatch):
    """A callback's change to the model between two epochs (a penalty or dropout schedule, new
    weights, another optimizer ...) gives the layered path's numbers bit for bit, or its very
    error: the compiled step reads the layers' settings again before each block and copies
    the arrays in afresh, and where it cannot follow a change (other parts, tied arrays) the
    remaining epochs take the layered path and say so. It read the penalties and the dropout
    settings once, at the start of train()."""
    X, y = spiral_data(50, 3, seed=0)

    class Midway(loopnet.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                MIDWAY[change](self.model)

    def run():
        model = loopnet.Model()
        for layer in (loopnet.Dense(2, 16, seed=0), loopnet.ReLU(), loopnet.Dropout(0.1, seed=3),
                      loopnet.Dense(16, 3, seed=1), loopnet.Softmax()):
            model.add(layer)
        model.set(loss="categorical_crossentropy",
                  optimizer=loopnet.SGD(learning_rate=0.5) if change == "momentum_on"
                  else loopnet.Adam(learning_rate=0.05), accuracy="categorical")
        try:
            history = model.train(X, y, epochs=5, batch_size=40, print_every=0,
                                  callbacks=[Midway()])
        except (ValueError, TypeError) as error:
            return repr(error), None
        return ([bits(np.array(history[key])) for key in ("loss", "accuracy")],
                history["path"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled_run, path = run()
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    layered_run, _ = run()
    assert compiled_run == layered_run
    slow = [str(w.message) for w in caught if w.category is compiled.SlowPathWarning]
    if change in FOLLOWED:
        assert path == "compiled" and not slow
    elif path is None and "after epoch 2's callbacks: " in compiled_run:
        # an array no kernel takes, or targets the accuracy cannot read: refused where the
        # change is found, on both paths, as train() refuses such a model at its start
        # (checks.check_model, checks.check_targets), naming the array
        assert not slow
    else:
        assert len(slow) == 1 and slow[0].endswith("(from epoch 3 on)"), slow
        assert path is None or path.startswith("compiled, then layered: ")


@pytest.mark.parametrize("rewrite", ["X_float32", "X_float64", "y", "X_val", "y_val"])
def test_a_callback_rewriting_the_data_in_place(rewrite, monkeypatch):
    """A callback that rewrites ``X``, ``y`` or the validation data in place between epochs
    (an augmentation, a relabelling) trains on the new values on the compiled step as on the
    layered path, which reads the caller's arrays at every step: the compiled step converts
    and checks them again before each block of a run with callbacks (it had converted
    float64 inputs and the labels once, and trained on the old values)."""
    def run():
        X, y = spiral_data(40, 3, seed=0)
        X = X.astype(np.float64 if rewrite == "X_float64" else np.float32)
        X_val, y_val = X[::2].copy(), y[::2].astype(np.int64)

        class Rewrite(loopnet.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                if rewrite.startswith("X"):
                    (X_val if rewrite == "X_val" else X)[...] *= 1.5
                else:
                    labels = y_val if rewrite == "y_val" else y
                    labels[...] = (labels + 1) % 3

        model = build_model(dict(n_inputs=2, hidden=[(16, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        history = model.train(X, y, epochs=4, batch_size=32, print_every=0,
                              callbacks=[Rewrite()], validation_data=(X_val, y_val))
        return [bits(np.array(history[key])) for key in ("loss", "accuracy", "val_loss",
                                                          "val_accuracy")], history["path"]

    compiled_run, path = run()
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    layered_run, _ = run()
    assert path == "compiled"
    assert compiled_run == layered_run


@pytest.mark.parametrize("change", ["X_shape", "X_dtype", "y_shape", "y_dtype", "X_val_shape",
                                    "y_val_dtype"])
def test_a_callback_reshaping_or_retyping_the_data_in_place(change, monkeypatch):
    """A callback that sets ``X.shape`` or ``y.dtype`` (the same object, another layout) gives
    the layered path's numbers or its very error: the compiled step had converted and
    checked the arrays in their first layout (an int32 view of float32 ``X`` failed numba's
    typing; a reshaped ``X`` trained on, silently), and now hands such a run to the layered
    path, which reads the arrays as they are."""
    def run():
        X, y = spiral_data(40, 3, seed=0)
        X_val, y_val = X[::2].copy(), y[::2].astype(np.int64)
        arrays = dict(X=X, y=y, X_val=X_val, y_val=y_val)
        name, what = change.rsplit("_", 1)

        class Reshape(loopnet.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                if epoch == 2:
                    array = arrays[name]
                    if what == "shape":
                        array.shape = (array.shape[0] // 2, -1) if array.ndim == 2 else (2, -1)
                    else:
                        array.dtype = {4: np.int32, 1: np.int8, 8: np.uint64}[
                            array.dtype.itemsize]

        model = build_model(dict(n_inputs=2, hidden=[(16, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        try:
            history = model.train(X, y, epochs=4, batch_size=32, print_every=0,
                                  callbacks=[Reshape()], validation_data=(X_val, y_val))
        except (ValueError, TypeError) as error:
            return repr(error), None
        return [bits(np.array(history[key])) for key in ("loss", "accuracy", "val_loss",
                                                          "val_accuracy")], history["path"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", compiled.SlowPathWarning)
        compiled_run, path = run()
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    layered_run, _ = run()
    assert compiled_run == layered_run
    assert path is None or path.startswith(
        f"compiled, then layered: {change.rsplit('_', 1)[0]} changed its shape or dtype"), path


FINGERPRINTED = {
    "weights_reshaped_in_place": lambda m, X, y: setattr(m.layers[0].weights, "shape", (8, 2)),
    "weights_retyped_in_place": lambda m, X, y: setattr(m.layers[0].weights, "dtype", np.int32),
    "weights_read_only": lambda m, X, y: setattr(m.layers[2].weights.flags, "writeable", False),
    "new_biases": lambda m, X, y: setattr(m.layers[2], "biases", m.layers[2].biases.copy()),
    "momentums_dropped": lambda m, X, y: delattr(m.layers[0], "weight_momentums"),
    "layer_removed": lambda m, X, y: m.layers.pop(1),
    "n_inputs": lambda m, X, y: setattr(m.layers[2], "n_inputs", 9),
    "accuracy_binary": lambda m, X, y: setattr(m.accuracy, "binary", True),
    "new_loss": lambda m, X, y: setattr(m, "loss", loopnet.CategoricalCrossentropy()),
    "label": lambda m, X, y: y.__setitem__(0, 7),
    "X_reshaped_in_place": lambda m, X, y: setattr(X, "shape", (X.shape[0] // 2, 4)),
}


@pytest.mark.parametrize("change", sorted(FINGERPRINTED))
def test_a_fingerprint_moves_with_whatever_the_checks_read(change):
    """The layered path checks the model and the targets again between epochs of a run with
    a callback of the user's own only where ``checks.fingerprint`` moved: it must move with
    every change ``check_model`` or ``check_targets`` would refuse or read differently, and
    stay put when nothing changed (a weight's value is not among them)."""
    from loopnet import checks

    X, y = spiral_data(10, 3, seed=0)
    model = build_model(dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical",
                             n_outputs=3, optimizer="adam", seed=0))
    model.train(X, y, epochs=1, print_every=0)     # (the optimizer's state arrays made)
    before = checks.fingerprint(model, (X,), (y,))
    model.layers[0].weights[...] += 1.0
    assert checks.fingerprint(model, (X,), (y,)) == before
    FINGERPRINTED[change](model, X, y)
    assert checks.fingerprint(model, (X,), (y,)) != before


BROKEN = {
    "loss_none": (lambda m: setattr(m, "loss", None),
                  "ValueError: set(loss=..., optimizer=...) before train()"),
    "optimizer_none": (lambda m: setattr(m, "optimizer", None),
                       "ValueError: set(loss=..., optimizer=...) before train()"),
    "layers_emptied": (lambda m: m.layers.clear(),
                       "ValueError: the model has no layers: add() some before finalize()"),
    "layer_none": (lambda m: m.layers.__setitem__(1, None),
                   "TypeError: layer 1 needs forward() and backward() methods, got None"),
}


@pytest.mark.parametrize("change", sorted(BROKEN))
def test_a_callback_breaking_the_model_is_one_error_on_both_paths(change, monkeypatch):
    """A callback that takes the model's loss or optimizer away, or empties or breaks its
    layers, stops training before the next epoch with the error ``train`` (or ``finalize``,
    or ``add``) gives such a model, on both paths (an AttributeError from deep inside the
    layered loop once, ``'NoneType' object has no attribute 'new_pass'``)."""
    def run():
        X, y = spiral_data(10, 3, seed=0)

        class Break(loopnet.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                if epoch == 2:
                    BROKEN[change][0](self.model)

        model = build_model(dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        with pytest.raises((TypeError, ValueError)) as raised:
            model.train(X, y, epochs=4, print_every=0, callbacks=[Break()])
        return f"{type(raised.value).__name__}: {raised.value}"

    compiled_error = run()
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    assert run() == compiled_error == BROKEN[change][1].replace(
        ": ", ": after epoch 2's callbacks: ", 1)


@pytest.mark.parametrize("layered", [False, True])
def test_a_callback_that_changes_nothing_costs_no_checks(layered, monkeypatch):
    """A run with a callback of the user's own that changes nothing runs the checks between
    epochs never (the fingerprint is taken after the first epoch, which made the optimizer's
    state arrays), on either path; one that changes the model runs them once, after it."""
    from loopnet import model as model_module

    checked = []        # (whether each round of checks relinked the model)
    original = model_module._Watch._check
    monkeypatch.setattr(model_module._Watch, "_check",
                        lambda self, relink: checked.append(relink) or original(self, relink))
    if layered:
        monkeypatch.setenv(compiled.ENV_VAR, "0")
    X, y = spiral_data(10, 3, seed=0)

    class NewWeights(loopnet.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:
                self.model.layers[0].weights = self.model.layers[0].weights.copy()

    for callback, expected in ((loopnet.callbacks.Callback(), []), (NewWeights(), [True])):
        checked.clear()
        model = build_model(dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        history = model.train(X, y, epochs=5, print_every=0, callbacks=[callback])
        assert checked == expected
        assert history["path"] == ("layered: LOOPNET_COMPILED_STEP=0" if layered
                                   else "compiled")


def test_a_layer_of_ones_own_with_slots_trains_with_a_callback():
    """A layer class of the user's own without an instance ``__dict__`` (``__slots__``) trains
    on the layered path with a callback of the user's own: the fingerprint compared between
    epochs reads what it can of it (it read ``layer.__dict__``: an AttributeError)."""
    class Doubling:
        __slots__ = ("inputs", "output", "dinputs", "prev", "next", "device")

        def __init__(self):
            self.device = None

        def forward(self, inputs, training=True):
            self.inputs, self.output = inputs, inputs * 2
            return self.output

        def backward(self, dvalues):
            self.dinputs = dvalues * 2
            return self.dinputs

    X, y = spiral_data(10, 3, seed=0)
    model = loopnet.Model()
    for layer in (loopnet.Dense(2, 8, seed=0), Doubling(), loopnet.ReLU(),
                  loopnet.Dense(8, 3, seed=1), loopnet.Softmax()):
        model.add(layer)
    model.set(loss="categorical_crossentropy", optimizer="adam", accuracy="categorical")
    with pytest.warns(compiled.SlowPathWarning):
        history = model.train(X, y, epochs=3, print_every=0,
                              callbacks=[loopnet.callbacks.Callback()])
    assert history["path"].startswith("layered: layer 1 (Doubling)")
    assert len(history["loss"]) == 3 and np.isfinite(history["loss"]).all()


@pytest.mark.parametrize("name", ["y", "y_val"])
def test_a_label_a_callback_writes_out_of_range_is_one_error_on_both_paths(name, monkeypatch):
    """A label out of range written by a callback is refused before the next epoch with the
    error ``train`` gives a bad label at its start, on the compiled step (which checks the
    targets as it reads them again) and on the layered path (which checks them before each
    epoch of such a run; its loss named ``y_true`` once, in the middle of an epoch)."""
    def run():
        X, y = spiral_data(20, 3, seed=0)
        y_val = y[::2].copy()

        class Relabel(loopnet.callbacks.Callback):
            def on_epoch_end(self, epoch, logs):
                if epoch == 2:
                    (y_val if name == "y_val" else y)[3] = 7

        model = build_model(dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        with pytest.raises(ValueError) as raised:
            model.train(X, y, epochs=4, batch_size=16, print_every=0, callbacks=[Relabel()],
                        validation_data=(X[::2], y_val))
        return str(raised.value)

    compiled_error = run()
    monkeypatch.setenv(compiled.ENV_VAR, "0")
    assert run() == compiled_error == (
        f"after epoch 2's callbacks: {name} has class index 7 at position 3, but the model's "
        "output has only 3 classes (valid labels: 0..2)")


def test_the_data_is_read_again_only_where_a_callback_of_ones_own_may_write_it(monkeypatch):
    """Reading a converted ``X`` again is a pass over the data each epoch: done for a run with
    a callback of the user's own, not for one with loopnet's EarlyStopping or ModelCheckpoint
    only, nor without callbacks."""
    X, y = spiral_data(20, 3, seed=0)
    reads = []
    original = compiled.Trainer._read_data
    monkeypatch.setattr(compiled.Trainer, "_read_data",
                        lambda self: reads.append(1) or original(self))
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    for callbacks, expected in (
            (None, 0), ([loopnet.callbacks.EarlyStopping("loss", patience=100)], 0),
            ([loopnet.callbacks.Callback()], 3),
            ([loopnet.callbacks.EarlyStopping("loss", patience=100),
              loopnet.callbacks.Callback()], 3)):
        reads.clear()
        history = build_model(spec).train(X.astype(np.float64), y, epochs=4, print_every=0,
                                          callbacks=callbacks)
        assert history["path"] == "compiled" and len(reads) == expected, (callbacks, reads)


def test_tied_parameters_take_the_layered_path_and_say_so(monkeypatch):
    """Two dense layers whose arrays share memory (tied weights: the same array, or a view of
    it; biases likewise) train on the layered path, with the history and the warning naming
    both arrays, and end with the numbers of a run with the compiled step switched off (the
    compiled step, which writes each layer's copy back in turn, gave other numbers). Arrays
    cut from one buffer without overlapping still take the compiled step."""
    X, y = spiral_data(10, 3, seed=0)
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)] * 3, loss="categorical",
                n_outputs=3, optimizer="adam", seed=0)

    def tie(model, how):            # layers 2 and 4 are the two Dense(8, 8)
        first, second = model.layers[2], model.layers[4]
        if how == "same":
            second.weights = first.weights
        elif how == "view":
            second.weights = first.weights[:, :]
        elif how == "biases":
            second.biases = first.biases
        else:                           # one buffer, cut into two arrays that do not overlap
            buffer = np.concatenate([first.weights.ravel(), second.weights.ravel()])
            first.weights, second.weights = buffer[:64].reshape(8, 8), buffer[64:].reshape(8, 8)
        return model

    for how, names in (("same", "layer 4's weights and layer 2's weights"),
                       ("view", "layer 4's weights and layer 2's weights"),
                       ("biases", "layer 4's biases and layer 2's biases")):
        monkeypatch.setenv(compiled.ENV_VAR, "0")
        reference = tie(build_model(spec), how)
        expected = reference.train(X, y, epochs=3, batch_size=8, print_every=0)
        monkeypatch.setenv(compiled.ENV_VAR, "1")
        model = tie(build_model(spec), how)
        with pytest.warns(compiled.SlowPathWarning, match=re.escape(names)):
            history = model.train(X, y, epochs=3, batch_size=8, print_every=0)
        assert history["path"] == f"layered: {names} share memory (tied parameters)"
        assert bits(np.array(history["loss"])) == bits(np.array(expected["loss"])), how
        for (w, b), (w_ref, b_ref) in zip(model.get_parameters(), reference.get_parameters()):
            assert bits(w) == bits(w_ref) and bits(b) == bits(b_ref), how
    model = tie(build_model(spec), "apart")
    assert model.train(X, y, epochs=1, print_every=0)["path"] == "compiled"


def test_training_stops_on_nan_at_the_same_step_on_both_paths(monkeypatch):
    X, y = spiral_data(10, 3, seed=0)
    X = X.copy()
    X[7, 1] = np.nan
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    messages = []
    for flag in ("1", "0"):
        monkeypatch.setenv(compiled.ENV_VAR, flag)
        with pytest.raises(FloatingPointError) as error:
            build_model(spec).train(X, y, epochs=5, batch_size=4, print_every=0)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("training diverged at epoch 1, step 1: data_loss=nan")
    # the data's first bad sample, looked for once training has diverged
    assert messages[0].endswith("; X has a NaN or infinite value in sample 7")


THREAD_COUNTS = sorted({1, numba.config.NUMBA_NUM_THREADS})


def test_the_parallel_build_gives_the_same_bits_for_any_thread_count(monkeypatch):
    """Forced onto the parallel build (every loop of the step shared out, the element-wise
    kernels' too: their parallel builds from 64 elements), the results do not depend on the
    thread count, and equal the serial build's: each output element has one owner, every
    sum one fixed order."""
    X, y = spiral_data(30, 3, seed=0)
    spec = dict(n_inputs=2, hidden=[(16, "relu", 5e-4, 0.0), (8, "dropout", 0.0, 0.0)],
                loss="categorical", n_outputs=3, optimizer="adam", seed=1)
    results = set()
    parallel_runs = 0
    before = numba.get_num_threads()
    try:
        for minimum in (cpu.PARALLEL_STEP_MIN, 0):
            monkeypatch.setattr(cpu, "PARALLEL_STEP_MIN", minimum)
            if minimum == 0:
                monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", 64)
            for threads in THREAD_COUNTS:
                numba.set_num_threads(threads)
                model = build_model(spec)
                history = model.train(X, y, epochs=6, batch_size=32, print_every=0,
                                      shuffle=True, seed=2)
                build = compiled.prepare_training(model, X, y, 32, None).run.build()
                if build.parallel:
                    from loopnet.kernels import step

                    assert {step.LAYERS_IN_PARALLEL, step.PARAMETERS_IN_PARALLEL} <= \
                        build.layers
                    parallel_runs += 1
                results.add(repr({k: v for k, v in history.items() if k != "compile_time"})
                            .encode() + b"".join(bits(p) for pair in model.get_parameters()
                                                 for p in pair))
    finally:
        numba.set_num_threads(before)
    assert len(results) == 1
    assert parallel_runs >= (1 if max(THREAD_COUNTS) > 1 else 0)


def test_builds_of_other_kinds_compile_under_other_names():
    """A build per kind of model, each with its own name (numba names its cache files after
    the function: two builds under one name would overwrite each other's cache)."""
    from loopnet.kernels import step

    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    X, y = spiral_data(5, 3, seed=0)
    names = set()
    for optimizer in ("adam", "sgd"):
        for n_samples in (15, 200_000):
            model = build_model(dict(spec, optimizer=optimizer))
            X_run = np.resize(X, (n_samples, 2))
            run = compiled.prepare_training(model, X_run, np.resize(y, n_samples), None,
                                            None).run
            build = run.build()
            assert build.parallel == (n_samples == 200_000)
            names.add(step.build(build).__qualname__)
    assert len(names) == 4


# Run twice, in two processes over one fresh numba cache: the first compiles the step, the second
# loads it (and binds its kernels' symbols through the step's reload hooks).
_BY_ADDRESS_CHILD = """
import json, time
import loopnet
from loopnet.backends import cpu, cpu_helper
from loopnet.datasets import spiral_data

finish = cpu_helper.Handover.finish

def finish_once_the_helper_holds_a_kernel(handover):
    # (on a loaded machine the helper may start after this process has compiled every kernel)
    deadline = time.monotonic() + 120
    while (handover.process is not None and not handover.held
           and handover.process.poll() is None and time.monotonic() < deadline):
        time.sleep(0.005)
    finish(handover)

cpu_helper.Handover.finish = finish_once_the_helper_holds_a_kernel

X, y = spiral_data(20, 3, seed=0)
model = loopnet.Model()
for layer in (loopnet.Dense(2, 8, seed=0), loopnet.ReLU(), loopnet.Dense(8, 3, seed=1),
              loopnet.Softmax()):
    model.add(layer)
model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(0.05),
          accuracy=loopnet.CategoricalAccuracy())
model.finalize()
history = model.train(X, y, epochs=3, print_every=0, progress=False)
(build, step), = cpu._step_builds.items()
(signature, compiled), = step.overloads.items()
kernels = {getattr(k, "kernel", k).py_func.__qualname__
           for k in cpu._kernels_of_the_step(build).values()}
print(json.dumps({
    "path": history["path"], "loss": [float(v).hex() for v in history["loss"]],
    "hits": sum(step.stats.cache_hits.values()), "misses": sum(step.stats.cache_misses.values()),
    "linked": sorted(library.name for library in compiled.library._linking_libraries),
    "kernels": sorted(kernels), "bound": sorted(cpu._bound_symbols),
    "params": [p.tobytes().hex() for layer in model.trainable_layers
               for p in (layer.weights, layer.biases)],
    "helper": cpu_helper.last}))
"""


def test_the_step_calls_its_kernels_by_symbol_and_a_new_process_loads_it_from_the_cache(
        tmp_path):
    """A build of the step holds no kernel's code: it calls each kernel through a symbol bound
    to the kernel's own machine code. Compiled in one process, it is loaded from numba's cache
    in the next, which binds those symbols before loading it (its reload hooks) and trains to
    the same bits.

    The first process compiles the kernels with a helper process (``cpu_helper``) that hands
    them over through the cache; a third, without a helper, in a cache of its own, compiles
    every kernel itself and trains to the same bits."""
    import json
    import subprocess
    import sys

    from loopnet.backends import cpu_helper

    def run(cache, helper="1"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / cache))
        env.pop(compiled.FULL_BUILD_VAR, None)
        env[cpu_helper.ENV_VAR] = helper
        return json.loads(subprocess.run(
            [sys.executable, "-c", _BY_ADDRESS_CHILD], env=env, capture_output=True, text=True,
            check=True, timeout=300).stdout.splitlines()[-1])

    runs = [run("cache"), run("cache")]
    first, second = runs
    alone = run("alone", helper="0")
    assert first["path"] == second["path"] == alone["path"] == "compiled"
    assert (first["hits"], first["misses"]) == (0, 1)       # compiled, then cached
    assert (second["hits"], second["misses"]) == (1, 0)     # loaded
    assert second["loss"] == first["loss"] == alone["loss"]
    assert second["params"] == first["params"] == alone["params"]
    # the helper compiled some of the step's kernels, this process the others
    if cpu_helper.enabled():
        assert first["helper"]["helper"]
        assert first["helper"]["helped"]
        assert set(first["helper"]["helped"]) <= set(first["helper"]["kernels"])
    assert set(first["helper"]["kernels"]) <= set(first["kernels"])
    assert not alone["helper"]["helper"] and alone["helper"]["helped"] == []
    assert alone["helper"]["kernels"] == first["helper"]["kernels"]
    assert second["helper"]["kernels"] == []                # loaded: nothing to compile
    # the first process linked helpers into the step, never a kernel; each run bound a
    # symbol for every kernel the model runs (the second before loading the step)
    assert first["linked"] and not set(first["linked"]) & set(first["kernels"])
    assert second["linked"] == []
    for run in runs:
        for kernel in ("relu_forward_in_place_loops__serial", "adam_update_loops__serial"):
            assert kernel in run["kernels"]
            assert any(symbol.startswith(f"loopnet.kernel.{kernel}.") for symbol in run["bound"])
    assert first["bound"] == second["bound"]


def test_a_build_holds_penalties_the_softmax_backward_and_the_copy_only_when_needed(
        monkeypatch):
    """The penalty kernels, the softmax's Jacobian and the batch's copy are compiled into a
    build only for models that run them; a build without them given a model that needs them
    raises instead of training without them."""
    from loopnet.kernels import step

    monkeypatch.delenv(compiled.FULL_BUILD_VAR, raising=False)
    X, y = spiral_data(10, 3, seed=0)
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)

    def build_of(model):
        return compiled.prepare_training(model, X, y, None, None).run.build()

    plain = build_of(build_model(spec))       # softmax last, fused gradient: neither
    assert plain.fused_softmax and step.SOFTMAX in plain.layers
    assert not {step.PENALTIES, step.SOFTMAX_BACKWARD} & plain.layers
    for l2, l1 in ((5e-4, 0.0), (0.0, 1e-3)):
        penalized = build_of(build_model(dict(spec, hidden=[(8, "relu", l2, l1)])))
        assert penalized == plain._replace(layers=plain.layers | {step.PENALTIES})
    # a Softmax inside the model: the backward reaches it
    model = loopnet.Model()
    for layer in (loopnet.Dense(2, 8, seed=0), loopnet.Softmax(), loopnet.Dense(8, 3, seed=1),
                  loopnet.Softmax()):
        model.add(layer)
    model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam())
    model.finalize()
    assert step.SOFTMAX_BACKWARD in build_of(model).layers

    model = build_model(dict(spec, hidden=[(8, "relu", 5e-4, 0.0)]))
    trainer = compiled.prepare_training(model, X, y, None, None)
    monkeypatch.setattr(trainer.run, "build", lambda: plain)   # the build of a model without
    with pytest.raises(ValueError, match="without penalties"):
        trainer.train([None])
    # a first Linear or ReLU copies the batch into its block: only its build holds the copy
    assert step.BATCH_COPY not in plain.layers
    for lead in ("linear", "relu"):
        leading = build_of(build_model(dict(spec, lead=lead)))
        assert leading.layers == plain.layers | {step.BATCH_COPY}
    assert step.BATCH_COPY not in build_of(build_model(dict(spec, lead="sigmoid"))).layers
    trainer = compiled.prepare_training(build_model(dict(spec, lead="linear")), X, y, None, None)
    monkeypatch.setattr(trainer.run, "build", lambda: plain)
    with pytest.raises(ValueError, match="without the batch's copy"):
        trainer.train([None])


def test_a_parallel_build_holds_the_parallel_element_wise_kernels_only_for_sizes_that_run_them(
        monkeypatch):
    """In a parallel build, the element-wise kernels of the layers and of the parameters get
    their parallel builds only when the run's blocks (rows x width) or its parameters reach
    ``PARALLEL_MIN_ELEMENTS``: otherwise their parallel names give the serial builds, which
    the step would run at those sizes anyway."""
    from loopnet.kernels import step

    monkeypatch.delenv(compiled.FULL_BUILD_VAR, raising=False)
    monkeypatch.setattr(cpu, "PARALLEL_STEP_MIN", 1)      # every step a parallel build
    monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", 2000)
    rng = np.random.default_rng(0)

    def build_of(n_inputs, width, n_samples, batch_size):
        model = build_model(dict(n_inputs=n_inputs, hidden=[(width, "relu", 0.0, 0.0)],
                                 loss="categorical", n_outputs=3, optimizer="adam", seed=0))
        X = rng.standard_normal((n_samples, n_inputs)).astype(np.float32)
        return compiled.prepare_training(model, X, np.arange(n_samples) % 3, batch_size,
                                         None).run.build()

    in_parallel = {step.LAYERS_IN_PARALLEL, step.PARAMETERS_IN_PARALLEL}
    # 16 rows x 8 wide, 2*8+8+8*3+3 = 51 parameters: neither
    small = build_of(2, 8, 64, 16)
    assert small.parallel and not in_parallel & small.layers
    # 300 rows x 8 wide = 2400 elements; 51 parameters
    assert build_of(2, 8, 300, None).layers & in_parallel == {step.LAYERS_IN_PARALLEL}
    # 16 rows x 64 = 1024; 100*64+64+64*3+3 = 6659 parameters
    assert build_of(100, 64, 64, 16).layers & in_parallel == {step.PARAMETERS_IN_PARALLEL}
    if loopnet.threads.parallel_allowed():
        kernels = cpu._kernels_of_the_step(small)
        for name in step.LAYER_KERNELS + step.PARAMETER_KERNELS:
            assert kernels[f"{name}_parallel"] is kernels[f"{name}_serial"]
        kernels = cpu._kernels_of_the_step(small._replace(layers=small.layers | in_parallel))
        assert (kernels["relu_forward_in_place_parallel"]
                is not kernels["relu_forward_in_place_serial"])
        assert kernels["adam_update_parallel"] is not kernels["adam_update_serial"]


def test_a_softmax_inside_the_model_trains_on_its_build_to_the_layered_paths_bits(monkeypatch):
    """A build of its own (penalties, and a Softmax the backward reaches beside the last one
    the fused gradient replaces), not the build with every branch: the layered path's bits."""
    from loopnet.kernels import step

    monkeypatch.delenv(compiled.FULL_BUILD_VAR, raising=False)
    X, y = spiral_data(20, 3, seed=0)

    def trained(compiled_step):
        model = loopnet.Model()
        for layer in (loopnet.Dense(2, 8, weight_regularizer_l1=1e-3, seed=0),
                      loopnet.Softmax(), loopnet.Dense(8, 3, seed=1), loopnet.Softmax()):
            model.add(layer)
        model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(),
                  accuracy=loopnet.CategoricalAccuracy())
        model.finalize()
        with environment(**{compiled.ENV_VAR: "1" if compiled_step else "0"}):
            history = model.train(X, y, epochs=4, print_every=0, progress=False)
        return model, history

    model, history = trained(True)
    assert history["path"] == "compiled"
    assert any({step.PENALTIES, step.SOFTMAX_BACKWARD} <= build.layers
               for build in cpu.step_builds())
    layered_model, layered = trained(False)
    assert bits(history["loss"]) == bits(layered["loss"])
    assert bits(model.layers[0].weights) == bits(layered_model.layers[0].weights)


def test_evaluate_and_predict_run_on_a_build_the_process_has(monkeypatch):
    """After training, a model's evaluate and predict run on its training build: no second
    compile. A model the process has no build for gets a forward-only build, which then
    serves other models of the same kinds and forms (their sizes may differ); a build
    without the run's loss, layer kinds or forms serves nothing."""
    from loopnet.kernels import step

    monkeypatch.delenv(compiled.FULL_BUILD_VAR, raising=False)
    monkeypatch.setattr(cpu, "_step_builds", {})    # as in a fresh process
    X, y = spiral_data(10, 3, seed=0)
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    model = build_model(spec)
    model.train(X, y, epochs=2, print_every=0, progress=False)
    trained = cpu.step_builds()
    assert len(trained) == 1 and trained[0].optimizer == step.ADAM
    # (batches of 2: enough layer calls for the compiled pass, COMPILED_FORWARD_MIN_CALLS)
    predictions = model.predict(X, batch_size=2)
    evaluation = model.evaluate(X, y, batch_size=2, verbose=False)
    assert cpu.step_builds() == trained
    with environment(**{compiled.ENV_VAR: "0"}):     # the layered path: the same numbers
        assert bits(model.predict(X, batch_size=2)) == bits(predictions)
        assert model.evaluate(X, y, batch_size=2, verbose=False) == evaluation

    others = [build_model(dict(spec, hidden=[(width, "sigmoid", 0.0, 0.0)], optimizer="sgd"))
              for width in (8, 6)]
    others[0].predict(X, batch_size=2)          # sigmoid: the training build lacks it
    made = cpu.step_builds()[1:]
    assert len(made) == 1 and made[0].optimizer == -1 and step.SIGMOID in made[0].layers
    others[1].predict(X, batch_size=2)          # same kinds and forms: the same build
    assert cpu.step_builds()[1:] == made

    request = made[0]._replace(layers=frozenset({step.RELU}))
    assert trained[0].serves(request) and not made[0].serves(request)
    assert not trained[0].serves(request._replace(layers=frozenset({step.SIGMOID})))
    assert not trained[0].serves(request._replace(loss=step.MEAN_SQUARED_ERROR))
    missing = min({0, 1, 2, 3} - {form for form, _ in trained[0].forward_forms})
    assert not trained[0].serves(request._replace(forward_forms=frozenset({(missing, False)})))
    assert not made[0].serves(trained[0])       # a training run is never served


def test_a_forward_pass_of_few_batches_runs_the_layers_of_many_the_compiled_step(monkeypatch):
    """``predict``/``evaluate`` of a batch or a few run the layers one by one (the compiled
    pass's set-up would cost more than their Python: no build is made for them); of many
    batches (``Model.COMPILED_FORWARD_MIN_CALLS`` layer calls) the compiled step. Both give
    the same bits, and a bad ``batch_size`` is refused the same way on both."""
    monkeypatch.delenv(compiled.FULL_BUILD_VAR, raising=False)
    monkeypatch.setattr(cpu, "_step_builds", {})    # as in a fresh process
    X, y = spiral_data(10, 3, seed=0)
    model = build_model(dict(n_inputs=2, hidden=[(8, "sigmoid", 0.0, 0.0)],
                             loss="categorical", n_outputs=3, optimizer="sgd", seed=0))
    n_layers = len(model.layers)
    few = -(-X.shape[0] // max(1, (model.COMPILED_FORWARD_MIN_CALLS - 1) // n_layers))
    many = max(1, X.shape[0] // -(-model.COMPILED_FORWARD_MIN_CALLS // n_layers))
    layered = [model.predict(X), model.predict(X, batch_size=few),
               model.evaluate(X, y, verbose=False)]
    assert cpu.step_builds() == ()
    compiled_pass = [model.predict(X, batch_size=many)]
    assert len(cpu.step_builds()) == 1
    compiled_pass.append(model.evaluate(X, y, batch_size=many, verbose=False))
    assert len(cpu.step_builds()) == 2              # (with the loss, which predict has not)
    with environment(**{compiled.ENV_VAR: "0"}):
        assert bits(compiled_pass[0]) == bits(model.predict(X, batch_size=many))
        assert compiled_pass[1] == model.evaluate(X, y, batch_size=many, verbose=False)
    assert bits(layered[0]) == bits(model.predict(X, batch_size=X.shape[0]))
    for bad in (0, -3, 2.5, "2"):
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            model.predict(X, batch_size=bad)
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            model.evaluate(X, y, batch_size=bad, verbose=False)


class _LogsOnly(loopnet.callbacks.Callback):
    """Reads the logs only: the compiled step still runs blocks of epochs, but each epoch's
    bookkeeping runs one by one (``end_epoch``), not in bulk."""

    reads_parameters = False


@pytest.mark.parametrize("accuracy", [True, False])
def test_full_batch_blocks_are_recorded_in_bulk_as_epoch_by_epoch(capsys, monkeypatch,
                                                                   accuracy):
    """A full-batch run without callbacks or progress bar records each compiled block's
    epochs at once (``TrainingRun.end_epochs``): the history (validated every third epoch and
    after the last, NaN between), the printed lines and the stop on a NaN loss are those of
    the epoch-by-epoch bookkeeping, bit for bit."""
    X, y = spiral_data(20, 3, seed=1)
    X_val, y_val = spiral_data(5, 3, seed=2)
    spec = dict(n_inputs=2, hidden=[(6, "relu", 5e-4, 1e-3)], loss="categorical",
                n_outputs=3, optimizer="adam", seed=3)

    from loopnet.training import TrainingRun

    blocks = []
    end_epochs = TrainingRun.end_epochs

    def counted(self, first, *args):
        blocks.append(first)
        return end_epochs(self, first, *args)

    monkeypatch.setattr(TrainingRun, "end_epochs", counted)

    def run(callbacks, X=X):
        model = build_model(spec)
        if not accuracy:
            model.accuracy = None
        history = model.train(X, y, epochs=10, print_every=4, validation_data=(X_val, y_val),
                              validate_every=3, progress=False, callbacks=callbacks)
        return history, capsys.readouterr().out

    bulk, bulk_out = run(None)
    assert blocks and blocks[0] == 1
    blocks.clear()
    one_by_one, one_by_one_out = run([_LogsOnly()])
    assert not blocks
    assert bulk["path"] == one_by_one["path"] == "compiled"
    assert bulk_out == one_by_one_out and "epoch: 8, " in bulk_out and "validation, " in bulk_out
    assert sorted(bulk) == sorted(one_by_one)
    for key in bulk:
        if isinstance(bulk[key], list):
            assert bits(np.array(bulk[key])) == bits(np.array(one_by_one[key])), key
    assert np.isnan(bulk["val_loss"][1]) and not np.isnan(bulk["val_loss"][2])
    assert np.isnan(bulk["accuracy"][0]) != accuracy
    # a NaN input: both stop with the same message, after the same epochs
    X_bad = X.copy()
    X_bad[3, 0] = np.nan
    messages = []
    for callbacks in (None, [_LogsOnly()]):
        with pytest.raises(FloatingPointError) as error:
            run(callbacks, X_bad)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and messages[0].startswith("training diverged at epoch 1")


@pytest.mark.parametrize("batch_size", [None, 7])
def test_blocks_of_any_size_train_to_the_same_bits(monkeypatch, batch_size):
    """``Model.train`` runs its epochs in compiled blocks sized by their work (``BLOCK_WORK``,
    ``BLOCK_STEPS``); where the blocks end never changes a number: one epoch per block gives
    the bits of the whole run in one block (shuffled minibatches, dropout, L1/L2, validation,
    Adam's state, the dropout step counters)."""
    spec = dict(n_inputs=2, hidden=[(9, "relu", 5e-4, 1e-3), (6, "dropout", 0.0, 0.0)],
                loss="categorical", n_outputs=3, optimizer="adam", n_samples=23,
                batch_size=batch_size, shuffle=True, validation=True, epochs=7, seed=5)
    calls = []
    train_block = compiled.Trainer.train

    def counted(self, orders):
        calls.append(len(orders))
        return train_block(self, orders)

    monkeypatch.setattr(compiled.Trainer, "train", counted)
    whole = train(spec, compiled_step=True, build="own")
    assert calls == [7]
    calls.clear()
    monkeypatch.setattr(compiled, "BLOCK_WORK", 1)
    one_by_one = train(spec, compiled_step=True, build="own")
    assert calls == [1] * 7
    calls.clear()
    monkeypatch.setattr(compiled, "BLOCK_WORK", 10**12)
    monkeypatch.setattr(compiled, "BLOCK_STEPS", 2 * (-(-23 // (batch_size or 23))))
    in_twos = train(spec, compiled_step=True, build="own")
    assert calls == [2, 2, 2, 1]
    assert whole[0]["path"] == "compiled"
    same_bits(whole, one_by_one)
    same_bits(whole, in_twos)


def test_compile_for_remembers_the_kinds_of_arguments_it_compiled(monkeypatch):
    """``cpu.compile_for`` (the training step's compile, timed apart from training) asks
    numba for the arguments' types only for kinds of arguments it has not compiled yet: the
    same kinds again cost no ``numba.typeof`` (~6 us an array); a new kind (another dtype, a
    read-only array) is typed and compiled."""
    kernel = numba.njit(lambda values, n: values.sum() + n)
    values = np.ones(4, np.float32)
    assert cpu.compile_for(kernel, (values, 2)) > 0
    typed = []
    typeof = numba.typeof

    def counted(value):
        typed.append(value)
        return typeof(value)

    monkeypatch.setattr(numba, "typeof", counted)
    assert cpu.compile_for(kernel, (np.zeros(9, np.float32), 5)) == 0.0
    assert typed == []
    read_only = np.ones(4, np.float32)
    read_only.flags.writeable = False
    for other in (np.ones(4, np.float64), read_only):
        assert cpu.compile_for(kernel, (other, 2)) > 0
        assert typed[-2] is other
    assert len(kernel.overloads) == 3
    assert cpu.compile_for(kernel, (read_only, 3)) == 0.0 and len(typed) == 4


class _Predicts(loopnet.callbacks.Callback):
    """Runs the model's ``predict`` after every epoch, in the middle of its training run."""

    def __init__(self, X):
        super().__init__()
        self.X = X
        self.outputs = []

    def on_epoch_end(self, epoch, logs=None):
        self.outputs.append(self.model.predict(self.X))


def test_runs_of_the_same_sizes_share_one_layout(monkeypatch):
    """Where a run's layers, plans and scratch regions lie (``compiled.Layout``) is made once
    for a model's sizes and its batches, then shared: a second run of the same sizes (the same
    model again, or another of its shape) makes none and gives the very bits of a run whose
    layout was made afresh; other widths, rows, batches, validation rows or dtype make their
    own. (A ``train(epochs=1)`` call lays its run out anew each time otherwise.)"""
    made = []
    original = compiled._make_layout
    monkeypatch.setattr(compiled, "_make_layout",
                        lambda program, *sizes: made.append(sizes) or original(program, *sizes))
    monkeypatch.setattr(compiled, "_LAYOUTS", {})
    X, y = spiral_data(20, 3, seed=0)

    def run(width=8, rows=60, batch_size=None, validation=False, dtype=np.float32,
            model=None):
        model = model or build_model(dict(n_inputs=2, hidden=[(width, "relu", 0.0, 0.0)],
                                          loss="categorical", n_outputs=3, optimizer="adam",
                                          seed=0), dtype=dtype)
        history = model.train(X[:rows], y[:rows], epochs=3, batch_size=batch_size,
                              print_every=0, progress=False,
                              validation_data=(X[:7], y[:7]) if validation else None)
        assert history["path"] == "compiled"
        return [bits(np.array(history[key])) for key in ("loss", "accuracy")], [
            bits(np.asarray(a)) for pair in model.get_parameters() for a in pair]

    first = run()
    assert len(made) == 1
    assert run() == first and len(made) == 1
    compiled._LAYOUTS.clear()
    assert run() == first and len(made) == 2
    model = build_model(dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical",
                             n_outputs=3, optimizer="adam", seed=0))
    once = [run(model=model) for _ in range(3)]
    assert len(made) == 2 and once[0] == first and once[1] != once[0]    # (trained on)
    for count, other in enumerate((dict(width=6), dict(rows=40), dict(batch_size=16),
                                   dict(validation=True), dict(dtype=np.float64)), start=3):
        run(**other)
        assert len(made) == count, other
        run(**other)
        assert len(made) == count, other


def test_runs_borrow_their_buffers_and_never_share_them(monkeypatch):
    """The compiled step's buffers are borrowed from a pool of this thread's arrays
    (``cpu.borrow``) and given back when ``train``, ``evaluate`` or ``predict`` ends: no array
    is lent to two runs at once (a callback's ``predict`` in the middle of ``train``, whose
    buffers have the very sizes of the training run's, gets others), every one comes back, a
    second ``predict`` allocates none, and the numbers are those of a run without the
    callback; another thread never gets this thread's arrays."""
    spec = dict(n_inputs=2, hidden=[(40, "relu", 5e-4, 0.0), (8, "dropout", 0.0, 0.0)],
                loss="categorical", n_outputs=3, optimizer="adam", n_samples=60,
                batch_size=None, shuffle=False, validation=False, epochs=4, seed=9)
    alone = train(spec, compiled_step=True, build="own")
    X, y = data_of(spec, spec["n_samples"], spec["seed"])
    outstanding, reused, given = set(), [], set()
    borrow, give_back = cpu.borrow, cpu.give_back

    def tracked_borrow(size, dtype):
        array = borrow(size, dtype)
        assert id(array) not in outstanding        # lent to two runs at once
        outstanding.add(id(array))
        reused.append(id(array) in given)
        return array

    def tracked_give_back(arrays):
        for array in arrays:
            outstanding.remove(id(array))
            given.add(id(array))
        give_back(arrays)

    monkeypatch.setattr(cpu, "borrow", tracked_borrow)
    monkeypatch.setattr(cpu, "give_back", tracked_give_back)
    # a predict of one batch on the compiled pass too: its buffers then have the very sizes
    # of the training run's
    monkeypatch.setattr(loopnet.Model, "COMPILED_FORWARD_MIN_CALLS", 1)
    callback = _Predicts(X)
    with environment(**{compiled.FULL_BUILD_VAR: "own"}), loopnet.device("cpu"):
        model = build_model(spec)
        history = model.train(X, y, epochs=4, print_every=0, progress=False,
                              callbacks=[callback])
        assert outstanding == set() and len(callback.outputs) == 4 and any(reused)
        assert history["path"] == "compiled"
        assert bits(np.array(history["loss"])) == bits(np.array(alone[0]["loss"]))
        for mine, theirs in zip(model.get_parameters(), alone[1]):
            assert bits(mine[0]) == bits(theirs[0]) and bits(mine[1]) == bits(theirs[1])
        expected = model.predict(X)
        allocated = []
        aligned_empty = cpu.aligned_empty
        monkeypatch.setattr(cpu, "aligned_empty",
                            lambda *args: allocated.append(args) or aligned_empty(*args))
        for _ in range(3):
            assert bits(model.predict(X)) == bits(expected)
        assert allocated == [] and outstanding == set()
    first = borrow(1000, np.float32)
    second = borrow(1000, np.float32)
    assert first is not second
    give_back([first, second])
    others = []
    thread = threading.Thread(target=lambda: others.append(borrow(1000, np.float32)))
    thread.start()
    thread.join()
    assert others[0] is not first and others[0] is not second
    assert {id(borrow(1000, np.float32)), id(borrow(1000, np.float32))} == {id(first),
                                                                          id(second)}


def test_the_compile_time_counts_the_set_up_before_the_first_block(monkeypatch):
    """``history["compile_time"]`` covers what comes before the first epoch on the compiled
    path (its set-up: on a first use mostly numba's start-up and cache loads), so the summary
    line's epochs/s is that of the epochs: here a set-up made 0.3 s slower is in it."""
    X, y = spiral_data(10, 3, seed=0)
    spec = dict(n_inputs=2, hidden=[(8, "relu", 0.0, 0.0)], loss="categorical", n_outputs=3,
                optimizer="adam", seed=0)
    prepare = compiled.prepare_training

    def slow_prepare(*args):
        time.sleep(0.3)
        return prepare(*args)

    monkeypatch.setattr(compiled, "prepare_training", slow_prepare)
    history = build_model(spec).train(X, y, epochs=2, print_every=0, progress=False)
    assert history["path"] == "compiled" and history["compile_time"] >= 0.3
