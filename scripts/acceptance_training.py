"""The book's long training runs on the ``cpu`` device, printing the figures to compare with
the book's recorded ones (not a unit test: the full runs take minutes).

    python scripts/acceptance_training.py            # everything
    python scripts/acceptance_training.py spiral     # one or more of: spiral ch14 binary sine
                                                     #                 determinism nan

Data: like the book, ``np.random.seed(0)`` (what ``nnfs.init()`` does to the global RNG), the
training set, the layers' weights from the same global stream, then a fresh draw as the
held-out set, in the book's order (``loopnet.datasets`` draws exactly what ``nnfs.datasets``
draws). loopnet never calls
``nnfs.init()`` (it also patches ``np.dot``), so long runs match the book as a band, not digits.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import loopnet
from loopnet.datasets import sine_data, spiral_data


def spiral_classifier(samples, layers_l2=0.0, dropout=None, lr=0.05, decay=5e-7,
                      weight_scale=0.1):
    model = loopnet.Model()
    model.add(loopnet.Dense(2, 64, weight_regularizer_l2=layers_l2, bias_regularizer_l2=layers_l2,
                            weight_scale=weight_scale))
    model.add(loopnet.ReLU())
    if dropout:
        model.add(loopnet.Dropout(dropout, seed=0))
    model.add(loopnet.Dense(64, 3, weight_scale=weight_scale))
    model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(),
              optimizer=loopnet.Adam(learning_rate=lr, decay=decay),
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    return model


def report(name, history, model, X_val, y_val, started):
    val_loss, val_acc = model.evaluate(X_val, y_val, verbose=False)
    print(f"== {name}: train acc {history['accuracy'][-1]:.3f}, loss {history['loss'][-1]:.3f} "
          f"(data {history['data_loss'][-1]:.3f}, reg {history['regularization_loss'][-1]:.3f}); "
          f"held-out acc {val_acc:.3f}, loss {val_loss:.3f}; lr {history['learning_rate'][-1]}; "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return val_acc


def run_spiral():
    """The main job's run: spiral 1000x3, Dense(2,64)-ReLU-Dense(64,3)-Softmax (notes' 0.1 init),
    Adam(0.05, decay 5e-7), 10,000 full-batch epochs. Needs train acc >= 0.90, held-out >= 0.85."""
    np.random.seed(0)
    X, y = spiral_data(samples=1000, classes=3)
    X_test, y_test = spiral_data(samples=100, classes=3)
    model = spiral_classifier(1000)
    started = time.perf_counter()
    history = model.train(X, y, epochs=10_000, print_every=1000)
    val_acc = report("spiral 1000x3 (main job)", history, model, X_test, y_test, started)
    ok = history["accuracy"][-1] >= 0.90 and val_acc >= 0.85
    print(f"   acceptance (train >= 0.90, held-out >= 0.85): {'PASS' if ok else 'FAIL'}")
    return ok


def run_ch14():
    """Book ch14: spiral 100x3, L2 5e-4 on the first layer, Adam(0.02, decay 5e-7), 0.01 init."""
    np.random.seed(0)
    X, y = spiral_data(samples=100, classes=3)
    model = spiral_classifier(100, layers_l2=5e-4, lr=0.02, weight_scale=0.01)
    X_test, y_test = spiral_data(samples=100, classes=3)     # the book draws it after training
    started = time.perf_counter()
    history = model.train(X, y, epochs=10_000, print_every=2000)
    report("ch14 spiral 100x3 + L2 (book: acc 0.947, loss 0.217, val 0.830)", history, model,
           X_test, y_test, started)
    return True


def run_binary():
    """Book ch16: binary spiral 100x2, Dense(2,64, L2 5e-4)-ReLU-Dense(64,1)-Sigmoid, BCE,
    Adam(decay 5e-7), 0.01 init, 10,000 epochs (book: acc 0.965, loss 0.219; val 0.945)."""
    np.random.seed(0)
    X, y = spiral_data(samples=100, classes=2)
    model = loopnet.Model()
    model.add(loopnet.Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4,
                            weight_scale=0.01))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 1, weight_scale=0.01))
    model.add(loopnet.Sigmoid())
    model.set(loss=loopnet.BinaryCrossentropy(), optimizer=loopnet.Adam(decay=5e-7),
              accuracy=loopnet.CategoricalAccuracy(binary=True))
    model.finalize()
    X_test, y_test = spiral_data(samples=100, classes=2)     # the book draws it after training
    y, y_test = y.reshape(-1, 1), y_test.reshape(-1, 1)
    started = time.perf_counter()
    history = model.train(X, y, epochs=10_000, print_every=2000)
    val_acc = report("ch16 binary (book: acc 0.965 loss 0.219, val 0.945; same code here: "
                     "0.945 / 0.260, val 0.920)", history, model, X_test, y_test, started)
    ok = history["accuracy"][-1] >= 0.92 and val_acc >= 0.90
    print(f"   within a small margin of the book (train >= 0.92, held-out >= 0.90): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def run_sine():
    """Book ch17: sine regression, Dense(1,64)-ReLU-Dense(64,64)-ReLU-Dense(64,1)-Linear, MSE,
    Adam(0.005, decay 1e-3), 0.1 init, 10,000 epochs; accuracy within std(y)/250."""
    np.random.seed(0)
    X, y = sine_data()
    model = loopnet.Model()
    model.add(loopnet.Dense(1, 64))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 64))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 1))
    model.add(loopnet.Linear())
    model.set(loss=loopnet.MeanSquaredError(),
              optimizer=loopnet.Adam(learning_rate=0.005, decay=1e-3),
              accuracy=loopnet.RegressionAccuracy())
    model.finalize()
    started = time.perf_counter()
    history = model.train(X, y, epochs=10_000, print_every=2000)
    report("ch17 sine (same book code here: acc 0.981, data_loss ~1e-6)", history, model, X, y,
           started)
    ok = history["accuracy"][-1] >= 0.95 and history["data_loss"][-1] < 1e-4
    print(f"   within a small margin (acc >= 0.95, data_loss < 1e-4): {'PASS' if ok else 'FAIL'}")
    return ok


def run_determinism():
    """Same seed, same device: identical loss history bit for bit across two runs and across
    numba thread counts (minibatches, shuffling and dropout included)."""
    import numba

    def once(threads):
        numba.set_num_threads(threads)
        X, y = spiral_data(samples=200, classes=3, seed=0)
        model = loopnet.Model()
        model.add(loopnet.Dense(2, 64, seed=1))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dropout(0.1, seed=2))
        model.add(loopnet.Dense(64, 3, seed=3))
        model.add(loopnet.Softmax())
        model.set(loss=loopnet.CategoricalCrossentropy(),
                  optimizer=loopnet.Adam(learning_rate=0.05, decay=5e-7),
                  accuracy=loopnet.CategoricalAccuracy())
        model.finalize()
        history = model.train(X, y, epochs=300, batch_size=128, shuffle=True, seed=4,
                              print_every=0)
        return np.array(history["loss"]).tobytes(), model.layers[0].weights.tobytes()

    original = numba.get_num_threads()
    try:
        runs = {f"threads={t} run {r}": once(t) for t in sorted({1, original}) for r in (1, 2)}
    finally:
        numba.set_num_threads(original)
    first = next(iter(runs.values()))
    ok = all(run == first for run in runs.values())
    print(f"== determinism: {len(runs)} runs ({', '.join(runs)}), 300 epochs: loss histories "
          f"and weights {'bit-identical' if ok else 'DIFFER'}: {'PASS' if ok else 'FAIL'}")
    return ok


def run_nan():
    """A regression trained with far too large a step diverges: training must stop with an
    error naming the epoch, not go on with NaN weights."""
    X, y = sine_data(100)
    model = loopnet.Model()
    model.add(loopnet.Dense(1, 16, seed=0))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(16, 1, seed=1))
    model.add(loopnet.Linear())
    model.set(loss=loopnet.MeanSquaredError(), optimizer=loopnet.SGD(learning_rate=50.0))
    model.finalize()
    try:
        model.train(X, y, epochs=100, print_every=0)
    except FloatingPointError as err:
        print(f"== NaN/inf loss: FloatingPointError: {err}: PASS")
        return True
    print("== NaN/inf loss: no error raised: FAIL")
    return False


RUNS = {"spiral": run_spiral, "ch14": run_ch14, "binary": run_binary, "sine": run_sine,
        "determinism": run_determinism, "nan": run_nan}


def main(argv):
    loopnet.set_device("cpu")
    names = argv or list(RUNS)
    results = {name: RUNS[name]() for name in names}
    print("summary:", ", ".join(f"{n} {'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
