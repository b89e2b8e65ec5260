"""``Model.to_torch()`` and ``Model.from_torch()``: the same outputs within the floating-point
error bound of two dense implementations, exact weights both ways, named refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import loopnet
from helpers import bits, dense_tolerance, eps
from loopnet.datasets import spiral_data

torch = pytest.importorskip("torch")


def build(dtype, last="softmax", dropout=None):
    model = loopnet.Model()
    model.add(loopnet.Dense(2, 32, dtype=dtype, seed=1))
    model.add(loopnet.ReLU())
    if dropout:
        model.add(loopnet.Dropout(dropout, seed=0))
    model.add(loopnet.Dense(32, 3, dtype=dtype, seed=2))
    model.add({"softmax": loopnet.Softmax, "sigmoid": loopnet.Sigmoid,
               "linear": loopnet.Linear}[last]())
    model.finalize()
    return model


def output_tolerance(model, X, dtype, last):
    """The bound on |loopnet - torch| for Dense-ReLU-Dense-(activation).

    Each dense output is a sum of n_inputs + 1 terms; two implementations of it (loopnet's loops,
    torch's BLAS, either summation order, with or without FMA) lie within ``dense_tolerance``
    of each other (helpers.sum_tolerance: Higham's bound, doubled). The first layer's
    difference e1 passes ReLU unchanged at most (ReLU is 1-Lipschitz) and reaches the second
    layer's outputs as at most ``e1 @ |W2|``, on top of that layer's own rounding. The output
    activation: softmax and sigmoid change by at most 1/2 (softmax: the row sum of
    ``|p_i (delta_ij - p_j)|`` is 2 p_i (1 - p_i)) and 1/4 (the sigmoid's slope) of their
    inputs' change, plus their own rounding (exp, a sum of 3, a division: 16 eps of the
    output, both sides); the identity passes it on."""
    (w1, b1), (w2, b2) = model.get_parameters()
    x = np.asarray(X, dtype=np.float64)
    hidden = np.maximum(0, x @ w1.astype(np.float64) + b1)
    e1 = dense_tolerance(x, w1, b1, dtype)
    e2 = e1 @ np.abs(w2.astype(np.float64)) + dense_tolerance(hidden + e1, w2, b2, dtype)
    logits = hidden @ w2.astype(np.float64) + b2
    if last == "linear":
        return e2
    if last == "sigmoid":
        out = 1 / (1 + np.exp(-logits))
        return 0.25 * e2 + 16 * eps(dtype) * out
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    out = exp / exp.sum(axis=1, keepdims=True)
    return 0.5 * e2.max(axis=1, keepdims=True) + 16 * eps(dtype) * out


@pytest.mark.parametrize("last", ["softmax", "sigmoid", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_gives_the_same_outputs(dtype, last):
    X, _ = spiral_data(40, 3, seed=0, dtype=dtype)
    model = build(dtype, last, dropout=0.2)
    sequential = model.to_torch().eval()            # eval(): dropout off, as predict
    assert isinstance(sequential, torch.nn.Sequential)
    linear = sequential[0]
    assert linear.weight.dtype == (torch.float32 if dtype == np.float32 else torch.float64)
    assert bits(linear.weight.detach().numpy()) == bits(np.ascontiguousarray(
        model.layers[0].weights.T))
    assert bits(linear.bias.detach().numpy()) == bits(model.layers[0].biases[0])
    assert isinstance(sequential[2], torch.nn.Dropout) and sequential[2].p == 0.2
    with torch.no_grad():
        theirs = sequential(torch.from_numpy(X)).numpy()
    ours = model.predict(X)
    tolerance = output_tolerance(model, X, dtype, last)
    assert np.all(np.abs(ours.astype(np.float64) - theirs) <= tolerance)


def test_round_trip_keeps_weights_exactly():
    X, y = spiral_data(20, 3, seed=0)
    model = build(np.float32, dropout=0.1)
    model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(0.05))
    model.train(X, y, epochs=3, print_every=0)      # weights no longer the initial draw
    back = loopnet.Model.from_torch(model.to_torch(), loss=loopnet.CategoricalCrossentropy(),
                                    optimizer=loopnet.Adam(0.05),
                                    accuracy=loopnet.CategoricalAccuracy())
    assert [type(layer) for layer in back.layers] == [type(layer) for layer in model.layers]
    assert back.layers[2].rate == 0.1
    for (w, b), (w2, b2) in zip(model.get_parameters(), back.get_parameters()):
        assert bits(w) == bits(w2) and bits(b) == bits(b2)
    assert bits(back.predict(X)) == bits(model.predict(X))
    assert back.softmax_classifier_output is not None        # ready to train
    back.train(X, y, epochs=1, print_every=0)


def test_from_torch_builds_from_modules_and_names_what_it_cannot():
    nn = torch.nn
    torch.manual_seed(0)
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU()),
                           nn.Linear(5, 2), nn.Softmax(dim=-1))
    model = loopnet.Model.from_torch(nested)
    assert [repr(layer) for layer in model.layers] == ["Dense(4, 5)", "ReLU()", "Dense(5, 2)",
                                                       "Softmax()"]
    assert not model.layers[0].biases.any()                 # no bias: zeros
    with pytest.raises(TypeError, match=r"module 1 \(Conv1d.*no loopnet layer"):
        loopnet.Model.from_torch(nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1)))
    with pytest.raises(TypeError, match="softmax over dim 0"):
        loopnet.Model.from_torch(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=0)))
    with pytest.raises(TypeError, match="float16"):
        loopnet.Model.from_torch(nn.Sequential(nn.Linear(4, 4).half()))
    with pytest.raises(TypeError, match="takes a torch.nn.Sequential"):
        loopnet.Model.from_torch(nn.Linear(4, 4))


def test_a_missing_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)         # import torch now fails
    with pytest.raises(ImportError, match="needs torch: pip install torch"):
        build(np.float32).to_torch()
