"""loopnet from several Python threads and from forked processes, compared with the same work
done one call after another: run by ``tests/test_concurrency.py`` once per threading layer
(``NUMBA_THREADING_LAYER``), in a process of its own (a layer is chosen once per process).

    NUMBA_THREADING_LAYER=workqueue python tests/concurrency_cases.py

Prints one JSON line per case: ``{"case": ..., "mismatches": N, "total": M, ...}`` (every
result compared bit for bit), after a first line ``{"case": "info", ...}`` with
``loopnet.threads.info()``, or ``{"case": "unavailable", "error": ...}`` when the layer cannot
be loaded here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading

import numpy as np

import loopnet
from loopnet import ops

N_THREADS = 4
# 512 x 512 x 512 runs the parallel broadcast-form kernel, with its scratch panels; the spiral
# model's 300 x 64 x 3 layer runs the parallel narrow kernel on packed weights.T (scratch too).
BIG = 512
ROUNDS = 10            # calls per thread
PREDICTIONS = 100      # predictions per thread
SGD_EPOCHS = 60
LOOP_EPOCHS = 40       # steps of a learner's loop
SAMPLES = 100          # spiral samples per class: 300 rows, enough for the parallel builds


def emit(case, **fields):
    print(json.dumps({"case": case, **fields}), flush=True)


def in_threads(work, n_threads):
    """Run ``work(k)`` for k in range(n_threads), each in its own thread, all started together;
    returns their results (an exception in a thread is re-raised here)."""
    results = [None] * n_threads
    errors = []
    barrier = threading.Barrier(n_threads)

    def run(k):
        try:
            barrier.wait()
            results[k] = work(k)
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def big_operands():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((BIG, BIG)).astype(np.float32)
    weights = [rng.standard_normal((BIG, BIG)).astype(np.float32) for _ in range(N_THREADS)]
    biases = rng.standard_normal((1, BIG)).astype(np.float32)
    return inputs, weights, biases


def spiral():
    return loopnet.datasets.spiral_data(SAMPLES, 3, seed=0)


def classifier(seed, optimizer=None):
    """The README's model: Dense(2, 64)-ReLU-Dense(64, 3)-Softmax."""
    rng = np.random.RandomState(seed)
    model = loopnet.Model()
    model.add(loopnet.Dense(2, 64, seed=rng))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 3, seed=rng))
    model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(),
              optimizer=optimizer or loopnet.SGD(learning_rate=1.0, decay=1e-3, momentum=0.9),
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    return model


def train_sgd(seed):
    """A model trained with SGD (the layered path: one op after another), its history and
    parameters as bytes."""
    X, y = spiral()
    model = classifier(seed)
    history = model.train(X, y, epochs=SGD_EPOCHS, print_every=0)
    return (np.array(history["loss"]).tobytes() + np.array(history["accuracy"]).tobytes()
            + b"".join(w.tobytes() + b.tobytes() for w, b in model.get_parameters()))


def dense_case():
    inputs, weights, biases = big_operands()
    want = [ops.dense_forward(inputs, w, biases) for w in weights]
    got = in_threads(lambda k: [ops.dense_forward(inputs, weights[k], biases)
                                for _ in range(ROUNDS)], N_THREADS)
    bad = sum(not np.array_equal(out, want[k]) for k in range(N_THREADS) for out in got[k])
    emit("threads: ops.dense_forward 512x512x512", mismatches=bad, total=N_THREADS * ROUNDS)


def predict_case():
    X, _ = loopnet.datasets.spiral_data(1000, 3, seed=1)   # the README's 3000 samples
    models = [classifier(seed) for seed in range(N_THREADS)]
    want = [model.predict(X) for model in models]
    got = in_threads(lambda k: [models[k].predict(X) for _ in range(PREDICTIONS)], N_THREADS)
    bad = sum(not np.array_equal(out, want[k]) for k in range(N_THREADS) for out in got[k])
    emit("threads: Model.predict, 4 models", mismatches=bad, total=N_THREADS * PREDICTIONS)
    # one model shared by every thread, each predicting other data (a layer keeps its last
    # output as an attribute, but forward() returns its own)
    inputs = [loopnet.datasets.spiral_data(1000, 3, seed=2 + k)[0] for k in range(N_THREADS)]
    want = [models[0].predict(x) for x in inputs]
    got = in_threads(lambda k: [models[0].predict(inputs[k]) for _ in range(PREDICTIONS)],
                     N_THREADS)
    bad = sum(not np.array_equal(out, want[k]) for k in range(N_THREADS) for out in got[k])
    emit("threads: Model.predict, one shared model", mismatches=bad,
         total=N_THREADS * PREDICTIONS)
    # in batches of 100: enough layer calls for the compiled pass, each thread borrowing
    # buffers of its own (the calls above, one batch each, run the layers one by one)
    want = [models[0].predict(x, batch_size=100) for x in inputs]
    got = in_threads(lambda k: [models[0].predict(inputs[k], batch_size=100)
                                for _ in range(PREDICTIONS)], N_THREADS)
    bad = sum(not np.array_equal(out, want[k]) for k in range(N_THREADS) for out in got[k])
    emit("threads: Model.predict in batches (compiled), one shared model", mismatches=bad,
         total=N_THREADS * PREDICTIONS)


def learners_loop(seed):
    """A learner's loop as the book writes it (forward, loss, backward, update: each layer's
    pass on cpu in one compiled call, a lane, from the third step on), its parameters as
    bytes."""
    X, y = spiral()
    rng = np.random.RandomState(seed)
    dense1 = loopnet.Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4,
                           seed=rng)
    activation1 = loopnet.ReLU()
    dense2 = loopnet.Dense(64, 3, seed=rng)
    loss_activation = loopnet.SoftmaxCategoricalCrossentropy()
    optimizer = loopnet.Adam(learning_rate=0.02, decay=5e-7)
    for _ in range(LOOP_EPOCHS):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        loss_activation.forward(dense2.output, y)
        loss_activation.backward(loss_activation.output, y)
        dense2.backward(loss_activation.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)
        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.post_update_params()
    return b"".join(a.tobytes() for layer in (dense1, dense2)
                    for a in (layer.weights, layer.biases, layer.dinputs))


def train_case():
    want = [train_sgd(seed) for seed in range(3)]
    got = in_threads(train_sgd, 3)
    bad = sum(g != w for g, w in zip(got, want))
    emit("threads: Model.train, 3 SGD models", mismatches=bad, total=3)
    want = [learners_loop(seed) for seed in range(N_THREADS)]
    got = in_threads(learners_loop, N_THREADS)
    bad = sum(g != w for g, w in zip(got, want))
    emit("threads: a learner's loop, 4 models", mismatches=bad, total=N_THREADS)


def child_work(k):
    """What a forked worker does: an op large enough for the parallel builds, a prediction and
    a short training run; plus whether it may run parallel builds."""
    inputs, weights, biases = big_operands()
    X, _ = spiral()
    return (ops.dense_forward(inputs, weights[k], biases).tobytes(),
            classifier(k).predict(X).tobytes(), train_sgd(k),
            loopnet.threads.parallel_allowed())


def fork_case():
    # the parent runs parallel kernels first (and has started the threading layer)
    want = [child_work(k)[:3] for k in range(2)]
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        got = pool.map_async(child_work, range(2)).get(timeout=30)
    bad = sum(g[:3] != w for g, w in zip(got, want))
    emit("fork: ops, predict and train in a Pool", mismatches=bad, total=2,
         parallel_in_child=[g[3] for g in got])


def main():
    try:
        info = loopnet.threads.info()
    except ValueError as err:  # numba: the requested layer cannot be loaded here
        emit("unavailable", error=str(err).splitlines()[0])
        return
    emit("info", **info, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY"))
    for case in (dense_case, predict_case, train_case, fork_case):
        case()
    emit("done")


if __name__ == "__main__":
    sys.exit(main())
