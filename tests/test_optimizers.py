"""Optimizer updates: each loop kernel equals its numpy twin over several steps (bit for bit on the
host devices, where both run the same IEEE operations in the same order), the classes follow the
book (defaults, learning-rate decay, state on the layer), and every optimizer descends."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import loopnet
from helpers import HOST_DEVICES, arrays, assert_within, bits, eps, float_dtypes
from loopnet import ops
from loopnet.kernels import optimizers as kernels


def host(x) -> np.ndarray:
    return np.asarray(ops.to_numpy(x))


UPDATES = {
    # name: (ops call, numpy twin call, state names)
    "sgd": (lambda p, g, s, it, device: ops.sgd_update(p, g, learning_rate=0.5, device=device),
            lambda p, g, s, it, device: kernels.sgd_update_numpy(p, g, 0.5), ()),
    "momentum": (lambda p, g, s, it, device: ops.sgd_update(p, g, learning_rate=0.5, momentum=0.9,
                                                    momentums=s[0], device=device),
                 lambda p, g, s, it, device: kernels.sgd_momentum_update_numpy(p, g, s[0], 0.5, 0.9),
                 ("momentums",)),
    "adagrad": (lambda p, g, s, it, device: ops.adagrad_update(p, g, s[0], learning_rate=1.0,
                                                       device=device),
                lambda p, g, s, it, device: kernels.adagrad_update_numpy(p, g, s[0], 1.0, 1e-7),
                ("cache",)),
    "rmsprop": (lambda p, g, s, it, device: ops.rmsprop_update(p, g, s[0], learning_rate=0.02, rho=0.95,
                                                       device=device),
                lambda p, g, s, it, device: kernels.rmsprop_update_numpy(p, g, s[0], 0.02, 1e-7, 0.95),
                ("cache",)),
    "adam": (lambda p, g, s, it, device: ops.adam_update(p, g, s[0], s[1], learning_rate=0.05,
                                                 iteration=it, device=device),
             lambda p, g, s, it, device: kernels.adam_update_numpy(
                 p, g, s[0], s[1], 0.05, 1e-7, 0.9, 0.999, 1 - 0.9 ** (it + 1),
                 1 - 0.999 ** (it + 1)),
             ("momentums", "cache")),
}


@pytest.mark.parametrize("name", sorted(UPDATES))
@given(data=st.data())
def test_update_equals_twin_over_three_steps(device, name, data):
    update, twin, state_names = UPDATES[name]
    dtype = data.draw(float_dtypes)
    shape = data.draw(st.sampled_from([(3,), (1, 4), (5, 2), (7, 3)]))
    params = data.draw(arrays(dtype, shape, 10.0))
    grads = [data.draw(arrays(dtype, shape, 10.0)) for _ in range(3)]
    ours, theirs = params.copy(), params.copy()
    our_state = [ops.zeros(shape, dtype, device=device) for _ in state_names]
    their_state = [np.zeros(shape, dtype) for _ in state_names]
    for iteration, g in enumerate(grads):
        update(ours, g, our_state, iteration, device)
        twin(theirs, g, their_state, iteration, None)
    results = [host(ours)] + [host(s) for s in our_state]
    expected = [theirs] + their_state
    for what, actual, wanted in zip(("params",) + state_names, results, expected):
        if device in HOST_DEVICES:
            assert bits(actual) == bits(wanted), f"{name} {what}: not bit-identical to the twin"
        else:   # GPUs may fuse multiply-adds: a few roundings apart per step
            scale = np.abs(wanted) + np.abs(params) + 1.0
            assert_within(actual, wanted, 64 * eps(dtype) * scale, f"{name} {what}")


def test_updates_validate_their_arrays(device):
    params = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"grads has shape \(3, 2\)"):
        ops.sgd_update(params, np.zeros((3, 2)), learning_rate=0.1, device=device)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.sgd_update(np.zeros(3, np.int64), np.zeros(3), learning_rate=0.1, device=device)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.sgd_update(np.zeros((3, 4), np.float32)[:, ::2], np.zeros((3, 2)),
                       learning_rate=0.1, device=device)
    with pytest.raises(TypeError, match="cache has dtype float64"):
        ops.adagrad_update(params, params, np.zeros((2, 3)), learning_rate=0.1, device=device)
    with pytest.raises(ValueError, match="momentums array"):
        ops.sgd_update(params, params, learning_rate=0.1, momentum=0.9, device=device)
    with pytest.raises(ValueError, match="iteration"):
        ops.adam_update(params, params, params.copy(), params.copy(), learning_rate=0.1,
                        iteration=-1, device=device)


def test_book_defaults():
    assert (loopnet.SGD().learning_rate, loopnet.SGD().decay, loopnet.SGD().momentum) == (1.0, 0, 0)
    assert (loopnet.Adagrad().learning_rate, loopnet.Adagrad().epsilon) == (1.0, 1e-7)
    rms = loopnet.RMSprop()
    assert (rms.learning_rate, rms.epsilon, rms.rho) == (0.001, 1e-7, 0.9)
    adam = loopnet.Adam()
    assert (adam.learning_rate, adam.epsilon, adam.beta_1, adam.beta_2) == (0.001, 1e-7, 0.9, 0.999)


def test_learning_rate_decay_is_the_books():
    """``lr / (1 + decay * iterations)``; the book's chapter-18 run (Adam(0.05, decay 5e-7)) prints
    0.04975126853296942 at epoch 10,000, when 9,999 updates were made before the last one."""
    adam = loopnet.Adam(learning_rate=0.05, decay=5e-7)
    adam.iterations = 9_999
    adam.pre_update_params()
    assert repr(adam.current_learning_rate) == "0.04975126853296942"
    sgd = loopnet.SGD(learning_rate=1.0, decay=0.1)
    rates = []
    for _ in range(3):
        sgd.pre_update_params()
        rates.append(sgd.current_learning_rate)
        sgd.post_update_params()
    assert rates == [1.0, 1 / 1.1, 1 / 1.2]


def test_hyper_parameters_are_validated():
    with pytest.raises(ValueError, match="learning_rate"):
        loopnet.Adam(learning_rate=0)
    with pytest.raises(ValueError, match="beta_1"):
        loopnet.Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="decay"):
        loopnet.SGD(decay=-1)
    with pytest.raises(TypeError, match="momentum"):
        loopnet.SGD(momentum="0.9")


def test_hyper_parameters_are_checked_when_assigned():
    """Every hyper-parameter of the optimizers, the dense layers' penalties, the dropout
    layers' rate, seed and step and the regression accuracy's precision is checked whenever it
    is assigned, not only by the constructor: a
    bad value raises at the assignment, naming the attribute, and the old value stays (the
    compiled step copies these values without a check of its own, and the layered path read a
    negative or NaN penalty as none)."""
    from loopnet import nnfs

    nan = float("nan")
    cases = [
        (loopnet.Adam, "learning_rate", ((0.0, ValueError, "> 0"), (nan, ValueError, "finite"),
                                         ("0.1", TypeError, "a number"))),
        (loopnet.Adam, "decay", ((-1.0, ValueError, ">= 0"),)),
        (loopnet.Adam, "iterations", ((-1, ValueError, "in \\[0, 2\\*\\*63\\)"),
                                      (2.5, TypeError, "an integer"),
                                      (True, TypeError, "an integer"),
                                      (None, TypeError, "an integer"),
                                      (2**63, ValueError, "in \\[0, 2\\*\\*63\\)"))),
        (loopnet.Adam, "epsilon", ((0.0, ValueError, "> 0"),)),
        (loopnet.Adam, "beta_1", ((1.0, ValueError, "< 1"),)),
        (loopnet.Adam, "beta_2", ((-0.1, ValueError, ">= 0"),)),
        (loopnet.Adagrad, "epsilon", ((-1.0, ValueError, "> 0"),)),
        (loopnet.RMSprop, "rho", ((1.5, ValueError, "in \\[0, 1\\]"),)),
        (loopnet.SGD, "momentum", ((-0.5, ValueError, ">= 0"), (nan, ValueError, "finite"))),
        (lambda: loopnet.Dropout(0.1, seed=0), "rate", ((1.0, ValueError, "\\[0, 1\\)"),
                                                        (-0.1, ValueError, ">= 0"))),
        (lambda: loopnet.Dropout(0.1, seed=0), "step", ((-1, ValueError, "in \\[0, 2"),
                                                        (1.5, TypeError, "an integer"))),
        (lambda: loopnet.Dropout(0.1, seed=0), "seed", ((-1, ValueError, "2\\*\\*63"),
                                                        (0.5, TypeError, "an int"))),
        (loopnet.RegressionAccuracy, "precision", ((-1.0, ValueError, ">= 0"),
                                                   (nan, ValueError, "finite"),
                                                   ("a", TypeError, "a number"))),
        (lambda: nnfs.Layer_Dropout(0.1, seed=0), "rate", ((0.0, ValueError, "> 0"),
                                                           (1.5, ValueError, "fraction kept"))),
    ]
    cases += [(lambda: loopnet.Dense(2, 3, seed=0), name,
               ((-1.0, ValueError, ">= 0"), (nan, ValueError, "finite"),
                ("x", TypeError, "a number")))
              for name in ("weight_regularizer_l1", "weight_regularizer_l2",
                           "bias_regularizer_l1", "bias_regularizer_l2")]
    for make, name, bad_values in cases:
        owner = make()
        before = getattr(owner, name)
        for value, error, message in bad_values:
            with pytest.raises(error, match=f"{name}.* must be.*{message}|{message}"):
                setattr(owner, name, value)
            assert getattr(owner, name) == before, (name, value)
    adam = loopnet.Adam()
    adam.iterations = np.int64(7)                 # numpy scalars are converted
    adam.beta_1 = np.float32(0.5)
    assert type(adam.iterations) is int and adam.iterations == 7
    assert type(adam.beta_1) is float and adam.beta_1 == 0.5
    kept = nnfs.Layer_Dropout(0.1, seed=0)
    kept.rate = 0.75
    assert kept.drop_rate == 0.25


@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("decay", [0.0, 1e-2])
def test_a_learning_rate_set_after_construction_takes_effect(device, decay):
    """``optimizer.learning_rate = x`` after some steps is the rate of the next step (decayed
    to the step count, as ``pre_update_params`` decays it), without decay too, where the
    book's optimizer would go on with the old rate; the compiled step and the layered path
    take it alike."""
    X, y = loopnet.datasets.spiral_data(20, 3, seed=0)
    model, unchanged = spiral_classifier_for(device, decay), spiral_classifier_for(device, decay)
    for each in (model, unchanged):
        each.train(X, y, epochs=4, print_every=0)
    model.optimizer.learning_rate = 0.2            # 4x the 0.05 it was built with
    expected = 0.2 * (1.0 / (1.0 + decay * 4)) if decay else 0.2
    assert model.optimizer.current_learning_rate == expected
    before = model.layers[0].weights.copy()
    assert bits(before) == bits(unchanged.layers[0].weights)
    assert model.train(X, y, epochs=1, print_every=0)["learning_rate"] == [expected]
    unchanged.train(X, y, epochs=1, print_every=0)
    # Adam's step is the rate times what the (identical) gradients and state give: 4x here.
    # The steps are ~1e-3 to 1e-2 of weights ~0.1, so each difference of float32 weights
    # carries a relative error of up to ~eps32 * 0.1 / 1e-3 ~ 1e-5: 1e-3 is ample.
    step, reference = model.layers[0].weights - before, unchanged.layers[0].weights - before
    large = np.abs(reference) > 1e-4
    assert large.sum() >= before.size // 2
    np.testing.assert_allclose(step[large], 4 * reference[large], rtol=1e-3)


def spiral_classifier_for(device, decay):
    from helpers import spiral_classifier

    return spiral_classifier(device, hidden=8, lr=0.05, decay=decay)


OPTIMIZERS = {
    "SGD": lambda: loopnet.SGD(learning_rate=0.1),
    "SGD momentum": lambda: loopnet.SGD(learning_rate=0.1, decay=1e-3, momentum=0.5),
    "Adagrad": lambda: loopnet.Adagrad(learning_rate=0.3),
    "RMSprop": lambda: loopnet.RMSprop(learning_rate=0.02),
    "Adam": lambda: loopnet.Adam(learning_rate=0.05),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_classes_descend_and_keep_state_on_the_layer(device, name):
    """Minimise ``|inputs @ weights + biases - targets|^2`` with the class API; the state
    arrays are the book's attributes on the layer, on the layer's device."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((16, 3)).astype(np.float32)
    targets = (inputs @ rng.standard_normal((3, 2)) + 0.5).astype(np.float32)
    layer = loopnet.Dense(3, 2, seed=1, device=device)
    loss = loopnet.MeanSquaredError(device=device)
    optimizer = OPTIMIZERS[name]()
    losses = []
    for _ in range(40):
        output = layer.forward(inputs)
        losses.append(loss.calculate(output, targets))
        layer.backward(loss.backward(output, targets))
        optimizer.pre_update_params()
        optimizer.update_params(layer)
        optimizer.post_update_params()
    assert losses[-1] < 0.5 * losses[0], losses
    assert optimizer.iterations == 40
    for prefix in ("weight", "bias"):
        for state in optimizer.state_names:
            assert host(getattr(layer, f"{prefix}_{state}")).shape == \
                (layer.weights if prefix == "weight" else layer.biases).shape


ALL_OPTIMIZERS = {**OPTIMIZERS,
                  "SGD momentum": lambda: loopnet.SGD(learning_rate=0.5, decay=1e-2, momentum=0.9)}


def _stepped_layer(make_optimizer, steps, device, *, switch=None):
    """A Dense(3, 2) layer after ``steps`` updates from fixed gradients; ``switch(layer, step)``
    may replace or change its arrays between steps."""
    rng = np.random.default_rng(3)
    layer = loopnet.Dense(3, 2, seed=1, device=device)
    optimizer = make_optimizer()
    layer.dweights = np.zeros((3, 2), np.float32)
    layer.dbiases = np.zeros((1, 2), np.float32)
    for step in range(steps):
        # in place, as Dense.backward writes its gradients
        layer.dweights[...] = rng.standard_normal((3, 2)).astype(np.float32)
        layer.dbiases[...] = rng.standard_normal((1, 2)).astype(np.float32)
        if switch is not None:
            switch(layer, step)
        optimizer.pre_update_params()
        optimizer.update_params(layer)
        optimizer.post_update_params()
    return layer, optimizer


def _reference(make_optimizer, steps, device):
    """The same steps through ``loopnet.ops`` alone (the checked path), no optimizer object
    remembered between steps: a fresh one each step, carrying the iteration count."""
    rng = np.random.default_rng(3)
    layer = loopnet.Dense(3, 2, seed=1, device=device)
    template = make_optimizer()
    for step in range(steps):
        layer.dweights = rng.standard_normal((3, 2)).astype(np.float32)
        layer.dbiases = rng.standard_normal((1, 2)).astype(np.float32)
        optimizer = make_optimizer()
        optimizer.iterations = step
        optimizer.pre_update_params()
        optimizer.update_params(layer)   # (a new optimizer: its first call checks everything)
    return layer, template


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_update_params_direct_path_gives_the_checked_paths_bits(name, monkeypatch):
    """From the third step on ``update_params`` runs the kernel on the views it kept (the
    learner's loop): the parameters and state equal, bit for bit, those of updates that each
    went through every check."""
    make = ALL_OPTIMIZERS[name]
    checked = []
    original = ops._update_arrays
    monkeypatch.setattr(ops, "_update_arrays", lambda *a: checked.append(1) or original(*a))
    layer, optimizer = _stepped_layer(make, 6, "cpu")
    # two arrays per step; with state arrays to create, the first two steps are checked
    assert len(checked) <= 4, f"{len(checked)} checked updates: the kept views were not used"
    monkeypatch.undo()
    reference, _ = _reference(make, 6, "cpu")
    assert bits(layer.weights) == bits(reference.weights)
    assert bits(layer.biases) == bits(reference.biases)
    for prefix in ("weight", "bias"):
        for state in optimizer.state_names:
            assert bits(getattr(layer, f"{prefix}_{state}")) == \
                bits(getattr(reference, f"{prefix}_{state}"))


def test_update_params_follows_new_arrays_and_refuses_read_only_ones():
    """A kept view never outlives its array: weights replaced by ``set_parameters`` are the ones
    updated (the old array is left alone), a gradient replaced by a float64 array is converted
    as the checked path converts it, and weights made read-only raise instead of changing."""
    old = {}

    def replace(layer, step):
        if step == 3:
            old["weights"] = layer.weights
            old["bits"] = bits(layer.weights)
            layer.set_parameters(layer.weights.copy(), layer.biases)
        if step == 4:
            layer.dweights = layer.dweights.astype(np.float64)

    layer, optimizer = _stepped_layer(lambda: loopnet.Adam(learning_rate=0.05), 6, "cpu",
                                      switch=replace)
    assert bits(old["weights"]) == old["bits"]           # the replaced array: not touched
    reference, _ = _reference(lambda: loopnet.Adam(learning_rate=0.05), 6, "cpu")
    np.testing.assert_array_equal(layer.biases, reference.biases)
    # weights: same steps, except step 4's gradient went through float64 and back (exact here)
    np.testing.assert_allclose(layer.weights, reference.weights, rtol=0, atol=0)

    layer.weights.flags.writeable = False
    before = bits(layer.weights)
    with pytest.raises(ValueError, match="read-only|writ"):
        optimizer.update_params(layer)
    assert bits(layer.weights) == before


def test_update_params_follows_new_state_arrays_and_refuses_read_only_ones():
    """The kept views follow the optimizer's state arrays too: a state array replaced on the
    layer is the one updated (the old one is left alone), and one made read-only raises."""
    layer, optimizer = _stepped_layer(lambda: loopnet.Adam(learning_rate=0.05), 4, "cpu")
    old = layer.bias_cache
    old_bits = bits(old)
    layer.bias_cache = old.copy()
    layer.dbiases[...] = 1.0
    optimizer.update_params(layer)
    assert bits(old) == old_bits
    assert bits(layer.bias_cache) != old_bits
    for _ in range(2):    # views of the new arrays kept again
        optimizer.update_params(layer)
    assert optimizer._views(layer) is not None
    layer.weight_momentums.flags.writeable = False
    before = bits(layer.weights)
    with pytest.raises(ValueError, match="read-only|writ"):
        optimizer.update_params(layer)
    assert bits(layer.weights) == before


def test_an_optimizer_with_kept_views_pickles_and_copies():
    """The kept views stay behind when an optimizer is pickled or deep-copied; the copies then
    train on exactly as the original does."""
    import copy
    import pickle

    layer, optimizer = _stepped_layer(lambda: loopnet.Adam(learning_rate=0.05), 4, "cpu")
    assert optimizer._layer_views
    clones = [pickle.loads(pickle.dumps((layer, optimizer))), copy.deepcopy((layer, optimizer))]
    assert all("_layer_views" not in twin.__dict__ for _, twin in clones)
    for trained, step in [(layer, optimizer)] + clones:
        for _ in range(3):
            step.pre_update_params()
            step.update_params(trained)
            step.post_update_params()
    for twin_layer, twin in clones:
        assert bits(twin_layer.weights) == bits(layer.weights)
        assert bits(twin_layer.bias_cache) == bits(layer.bias_cache)


def test_a_setting_changed_between_steps_takes_the_checked_path():
    """Momentum switched off after the views were kept (the state arrays stay on the layer):
    the next step is the plain SGD step the checked path gives, not a momentum step."""
    layer, optimizer = _stepped_layer(
        lambda: loopnet.SGD(learning_rate=0.5, momentum=0.9), 4, "cpu")
    expected = layer.weights.copy()
    ops.sgd_update(expected, layer.dweights, learning_rate=0.5)
    optimizer.momentum = 0.0
    optimizer.update_params(layer)
    assert bits(layer.weights) == bits(expected)


def test_momentum_switched_on_later_keeps_its_state_on_the_layer():
    """SGD's state arrays follow ``momentum``: switched on after plain steps, the next step
    creates ``weight_momentums`` (from zeros) and takes the momentum step of ``ops``."""
    layer, optimizer = _stepped_layer(lambda: loopnet.SGD(learning_rate=0.5), 4, "cpu")
    assert not hasattr(layer, "weight_momentums")
    expected = layer.weights.copy()
    momentums = np.zeros_like(expected)
    ops.sgd_update(expected, layer.dweights, learning_rate=0.5, momentum=0.9,
                   momentums=momentums)
    optimizer.momentum = 0.9
    optimizer.update_params(layer)
    assert bits(layer.weights) == bits(expected)
    assert bits(layer.weight_momentums) == bits(momentums)


def _changed_between_layers(make, change, spoil, error, match):
    """Two layers' ``update_params`` in one step with ``change(optimizer)`` between them: the
    second layer gets the bits of a fresh optimizer changed the same way; then, after
    ``spoil(optimizer)``, its update raises ``error`` matching ``match`` at once (nothing made
    for the step's first layer is reused stale)."""
    first, optimizer = _stepped_layer(make, 3, "cpu")
    second = loopnet.Dense(2, 3, seed=1)
    second.dweights = np.full((2, 3), 0.5, np.float32)
    second.dbiases = np.full((1, 3), -0.25, np.float32)
    twin = copy.deepcopy(second)
    fresh = copy.deepcopy(optimizer)
    optimizer.pre_update_params()
    optimizer.update_params(first)
    change(optimizer)
    optimizer.update_params(second)
    fresh.pre_update_params()
    change(fresh)
    fresh.update_params(twin)
    assert bits(second.weights) == bits(twin.weights)
    assert bits(second.biases) == bits(twin.biases)
    spoil(optimizer)
    with pytest.raises(error, match=match):
        optimizer.update_params(second)


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_a_setting_changed_within_a_step_reaches_the_next_layer(name):
    """A learning rate changed between two layers' ``update_params`` of one step is the one
    the next layer gets, and a bad one raises at once."""

    def third(optimizer):
        optimizer.current_learning_rate = optimizer.current_learning_rate / 3

    def spoil(optimizer):
        optimizer.current_learning_rate = "0.1"

    _changed_between_layers(ALL_OPTIMIZERS[name], third, spoil, TypeError, "learning_rate")


@pytest.mark.parametrize("name, value", [("epsilon", 1e-3), ("beta_1", 0.5), ("beta_2", 0.9)])
def test_adams_settings_changed_within_a_step_reach_the_next_layer(name, value):
    """Adam checks its settings and makes its bias corrections for a step's first layer and
    keeps them while the numbers are the very same objects: ``epsilon``, ``beta_1`` or
    ``beta_2`` changed between two layers of a step is the one the next layer gets; a bad
    value is refused when assigned, and one written past that check (into the instance's
    dict) raises at the next update."""
    bad = 1.5 if name != "epsilon" else -1.0

    def spoil(optimizer):
        with pytest.raises(ValueError, match=name):
            setattr(optimizer, name, bad)
        assert getattr(optimizer, name) != bad
        vars(optimizer)[name] = bad

    _changed_between_layers(lambda: loopnet.Adam(learning_rate=0.01, decay=1e-3),
                            lambda optimizer: setattr(optimizer, name, value), spoil,
                            ValueError, name)


def test_a_subclass_reading_its_own_setting_gets_it_every_layer():
    """A subclass's ``_kernel`` may read attributes loopnet does not know: a change of one
    between two layers reaches the next one."""

    class Scaled(loopnet.SGD):
        scale = 1.0

        def _kernel(self):
            kernel, (learning_rate,) = super()._kernel()
            return kernel, (learning_rate * self.scale,)

    optimizer = Scaled(learning_rate=1.0)
    layers = [loopnet.Dense(2, 2, seed=k) for k in range(2)]
    for layer in layers:
        layer.dweights = np.ones((2, 2), np.float32)
        layer.dbiases = np.ones((1, 2), np.float32)
    before = [layer.weights.copy() for layer in layers]
    optimizer.update_params(layers[0])
    optimizer.scale = 0.5
    optimizer.update_params(layers[1])
    np.testing.assert_array_equal(before[0] - layers[0].weights, np.float32(1.0))
    np.testing.assert_array_equal(before[1] - layers[1].weights, np.float32(0.5))
