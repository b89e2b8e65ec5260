"""The book's models as plain data, shared by every framework the benchmarks time: loopnet
(``bench.py``), PyTorch (``torch_bench.py``) and JAX (``jax_bench.py``) each build their own
version of the same spec, on the same data, so no definition is written twice.

A spec: ``data`` (``["spiral", samples, classes]``, ``["spiral_binary", samples, 2]`` with
labels reshaped to a column, ``["sine", samples]``), ``layers`` (``["dense", n_inputs,
n_neurons, l2]`` with the L2 penalty on weights and biases, ``["relu"]``, ``["dropout", rate]``
and a final ``["softmax"]``, ``["sigmoid"]`` or ``["linear"]``), ``loss``, ``optimizer``
(``["sgd" | "adam", hyper-parameters]``; Adam's epsilon is the book's 1e-7, beta_1 0.9, beta_2
0.999) and ``accuracy``.

This module imports numpy and ``loopnet.datasets`` only (no numba, torch or jax).
"""

from __future__ import annotations

import statistics
import time

MODELS = {
    "ch10": {
        "title": "ch10: spiral 100x3, 2-64-3, SGD(lr 1, decay 1e-3, momentum 0.9)",
        "data": ["spiral", 100, 3],
        "layers": [["dense", 2, 64, 0.0], ["relu"], ["dense", 64, 3, 0.0], ["softmax"]],
        "loss": "categorical_crossentropy",
        "optimizer": ["sgd", {"learning_rate": 1.0, "decay": 1e-3, "momentum": 0.9}],
        "accuracy": "categorical",
    },
    "ch14": {
        "title": "ch14: spiral 100x3, 2-64(L2 5e-4)-3, Adam(lr 0.02, decay 5e-7)",
        "data": ["spiral", 100, 3],
        "layers": [["dense", 2, 64, 5e-4], ["relu"], ["dense", 64, 3, 0.0], ["softmax"]],
        "loss": "categorical_crossentropy",
        "optimizer": ["adam", {"learning_rate": 0.02, "decay": 5e-7}],
        "accuracy": "categorical",
    },
    "ch15": {
        "title": "ch15: spiral 100x3, 2-512(L2 5e-4)-dropout 0.1-3, Adam(lr 0.05, decay 5e-5)",
        "data": ["spiral", 100, 3],
        "layers": [["dense", 2, 512, 5e-4], ["relu"], ["dropout", 0.1], ["dense", 512, 3, 0.0],
                   ["softmax"]],
        "loss": "categorical_crossentropy",
        "optimizer": ["adam", {"learning_rate": 0.05, "decay": 5e-5}],
        "accuracy": "categorical",
    },
    "ch16": {
        "title": "ch16: spiral 100x2, 2-64(L2 5e-4)-1 sigmoid, binary CE, Adam(decay 5e-7)",
        "data": ["spiral_binary", 100, 2],
        "layers": [["dense", 2, 64, 5e-4], ["relu"], ["dense", 64, 1, 0.0], ["sigmoid"]],
        "loss": "binary_crossentropy",
        "optimizer": ["adam", {"learning_rate": 0.001, "decay": 5e-7}],
        "accuracy": "binary",
    },
    "ch17": {
        "title": "ch17: sine 1000, 1-64-64-1 linear, MSE, Adam(lr 0.005, decay 1e-3)",
        "data": ["sine", 1000],
        "layers": [["dense", 1, 64, 0.0], ["relu"], ["dense", 64, 64, 0.0], ["relu"],
                   ["dense", 64, 1, 0.0], ["linear"]],
        "loss": "mean_squared_error",
        "optimizer": ["adam", {"learning_rate": 0.005, "decay": 1e-3}],
        "accuracy": "regression",
    },
    "fused": {
        "title": "fused family: spiral 100x3, 2-64-3 softmax, Adam(lr 0.05, decay 5e-7)",
        "data": ["spiral", 100, 3],
        "layers": [["dense", 2, 64, 0.0], ["relu"], ["dense", 64, 3, 0.0], ["softmax"]],
        "loss": "categorical_crossentropy",
        "optimizer": ["adam", {"learning_rate": 0.05, "decay": 5e-7}],
        "accuracy": "categorical",
    },
}

ADAM_DEFAULTS = {"epsilon": 1e-7, "beta_1": 0.9, "beta_2": 0.999}


def model_data(spec):
    """``(X, y)`` of a spec: float32 inputs; uint8 class indices, a (n, 1) uint8 column of
    0/1 labels, or (n, 1) float32 regression targets."""
    from loopnet.datasets import sine_data, spiral_data

    kind, *args = spec["data"]
    if kind == "spiral":
        return spiral_data(args[0], args[1], seed=0)
    if kind == "spiral_binary":
        X, y = spiral_data(args[0], args[1], seed=0)
        return X, y.reshape(-1, 1)
    if kind == "sine":
        return sine_data(args[0])
    raise ValueError(f"unknown data kind {kind!r}")


def optimizer_settings(spec):
    """``(name, hyper-parameters)`` with every default filled in."""
    name, hyper = spec["optimizer"]
    hyper = dict(hyper)
    hyper.setdefault("decay", 0.0)
    if name == "adam":
        for key, value in ADAM_DEFAULTS.items():
            hyper.setdefault(key, value)
    else:
        hyper.setdefault("momentum", 0.0)
    return name, hyper


def per_epoch_median(run_epochs, *, block_seconds=0.25, repeats=5, pause=0.2):
    """Median seconds per epoch of ``run_epochs(k)`` (trains ``k`` epochs) over ``repeats``
    blocks of ``k`` epochs, ``k`` chosen so a block takes about ``block_seconds``.

    Two warm-up calls first (compiling, first-touch allocations), the second of 10 epochs to
    size the blocks; then a ``pause`` (OpenBLAS's threads spin ~0.1 s after a product and
    would take the cores from the next measurement's threads). Returns ``(median, k)``."""
    run_epochs(2)
    start = time.perf_counter()
    run_epochs(10)
    estimate = max((time.perf_counter() - start) / 10, 1e-7)
    k = max(10, int(block_seconds / estimate))
    time.sleep(pause)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_epochs(k)
        times.append((time.perf_counter() - start) / k)
    return statistics.median(times), k
