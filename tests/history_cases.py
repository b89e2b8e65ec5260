"""The training runs whose per-epoch histories are pinned bit for bit (``tests/data/histories.json``).

Each case builds a model and its data from fixed seeds and trains it; ``run_case`` returns the
history with every float written exactly (``float.hex``) and a SHA-256 of the final parameters.
The fixture was recorded before the kernel layer was rewritten around shared loop bodies and
before the compiled training step replaced the fused trainer, so ``tests/test_histories.py``
proves neither changed a result on ``cpu``, ``numpy`` and ``python``. (The numpy device's were
recorded again under one OpenBLAS kernel, ``BLAS_ENV``, when a machine whose OpenBLAS chose
another gave other last bits.) The dropout case alone was
recorded again when dropout masks moved from a numpy ``Generator`` to the counter-based hash
(a change meant to move its results). Regenerate only for such a change:

    python tests/history_cases.py > tests/data/histories.json
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

# Sizes: the python device runs uncompiled loops, so it gets a few samples and epochs.
SIZES = {
    "cpu": {"spiral": 100, "main": 1000, "sine": 1000, "epochs": 12},
    "numpy": {"spiral": 100, "main": 1000, "sine": 1000, "epochs": 12},
    "python": {"spiral": 8, "main": 8, "sine": 40, "epochs": 2},
}
CASES = ("main", "main_minibatch", "sgd", "l2", "dropout", "binary", "regression")
# On cpu these cases also run with the compiled training step switched off (the layered path:
# one op after another through ``loopnet.ops``).
LAYERED = ("main", "main_minibatch", "dropout")
LAYERED_ENV = "LOOPNET_COMPILED_STEP"
# The numpy device's products go through numpy's OpenBLAS, whose kernel is chosen by the CPU:
# SkylakeX on AVX-512 Xeons and Zen 4, Haswell on Zen 5 (which OpenBLAS 0.3.31 does not name),
# each summing in its own order, and one thread or two round apart too, so the same run differs
# in the last bits from one machine to another. Its cases run in a process of their own under
# the Haswell kernel (AVX2 and FMA: every x86-64 machine of the last decade) on one thread, its
# rounding the same wherever the tests run.
# (numpy's own float32 exp and log give the same bits on AVX2 and AVX-512: measured.)
BLAS_ENV = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1"}


def build(case: str, device: str):
    import loopnet
    from loopnet import datasets

    size = SIZES[device]
    l2 = dict(weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4)
    model = loopnet.Model()
    accuracy = loopnet.CategoricalAccuracy()
    train = {}
    if case in ("main", "main_minibatch"):
        X, y = datasets.spiral_data(size["main"], 3, seed=0)
        model.add(loopnet.Dense(2, 64, seed=1))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dense(64, 3, seed=2))
        model.add(loopnet.Softmax())
        loss, optimizer = loopnet.CategoricalCrossentropy(), loopnet.Adam(0.05, decay=5e-7)
        if case == "main_minibatch":
            train = dict(batch_size=max(size["main"] * 3 // 4, 1), shuffle=True, seed=3)
    elif case in ("sgd", "l2", "dropout"):
        X, y = datasets.spiral_data(size["spiral"], 3, seed=0)
        model.add(loopnet.Dense(2, 64, seed=1, **(l2 if case != "sgd" else {})))
        model.add(loopnet.ReLU())
        if case == "dropout":
            model.add(loopnet.Dropout(0.1, seed=4))
        model.add(loopnet.Dense(64, 3, seed=2))
        model.add(loopnet.Softmax())
        loss = loopnet.CategoricalCrossentropy()
        optimizer = {"sgd": loopnet.SGD(1.0, decay=1e-3, momentum=0.9),
                     "l2": loopnet.Adam(0.02, decay=5e-7),
                     "dropout": loopnet.Adam(0.05, decay=5e-5)}[case]
    elif case == "binary":
        X, y = datasets.spiral_data(size["spiral"], 2, seed=0)
        y = y.reshape(-1, 1)
        model.add(loopnet.Dense(2, 64, seed=1, **l2))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dense(64, 1, seed=2))
        model.add(loopnet.Sigmoid())
        loss, optimizer = loopnet.BinaryCrossentropy(), loopnet.Adam(decay=5e-7)
        accuracy = loopnet.BinaryAccuracy()
    elif case == "regression":
        X, y = datasets.sine_data(size["sine"])
        model.add(loopnet.Dense(1, 64, seed=1))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dense(64, 64, seed=2))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dense(64, 1, seed=3))
        model.add(loopnet.Linear())
        loss, optimizer = loopnet.MeanSquaredError(), loopnet.Adam(0.005, decay=1e-3)
        accuracy = loopnet.RegressionAccuracy()
    else:
        raise ValueError(case)
    model.set(loss=loss, optimizer=optimizer, accuracy=accuracy)
    model.finalize()
    return model, X, y, train


def run_case(case: str, device: str, layered: bool = False) -> dict:
    import loopnet

    saved = os.environ.get(LAYERED_ENV)
    if layered:
        os.environ[LAYERED_ENV] = "0"
    try:
        with loopnet.device(device):
            model, X, y, train = build(case, device)
            history = model.train(X, y, epochs=SIZES[device]["epochs"], print_every=0,
                                  progress=False, **train)
    finally:
        if saved is None:
            os.environ.pop(LAYERED_ENV, None)
        else:
            os.environ[LAYERED_ENV] = saved
    digest = hashlib.sha256()
    for weights, biases in model.get_parameters():
        digest.update(np.ascontiguousarray(weights).tobytes())
        digest.update(np.ascontiguousarray(biases).tobytes())
    keys = ("loss", "data_loss", "regularization_loss", "accuracy", "learning_rate")
    return {"history": {k: [float(v).hex() for v in history[k]] for k in keys},
            "parameters_sha256": digest.hexdigest()}


def run_apart(device: str) -> dict:
    """Every case of ``device`` in a new process (the numpy device's with ``BLAS_ENV``, set
    before numpy loads OpenBLAS): ``{case: run_case(...)}``, or a ``RuntimeError`` with the
    process's output where it failed."""
    import subprocess

    env = dict(os.environ, **(BLAS_ENV if device == "numpy" else {}))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--device", device],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the {device} cases exited with {done.returncode}:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def record() -> dict:
    recorded = {device: ({case: run_case(case, device) for case in CASES}
                         if device != "numpy" else run_apart(device)) for device in SIZES}
    for case in LAYERED:
        recorded["cpu"][case + "_layered"] = run_case(case, "cpu", layered=True)
    return recorded


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.argv[1:2] == ["--device"]:     # (one device's cases, for run_apart)
        result = {case: run_case(case, sys.argv[2]) for case in CASES}
    else:
        result = record()
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
