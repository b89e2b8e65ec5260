"""JAX side of the benchmarks, run by ``bench.py`` in a process of its own (XLA's CPU backend,
``JAX_PLATFORMS=cpu``)::

    python benchmarks/jax_bench.py '{"models": ["ch10", ...], "mnist": {...}}'

Each ``book_models`` spec trains as one ``jax.jit``-compiled block: a ``lax.fori_loop`` of 100
full-batch steps, each the book's step: forward (dropout masks drawn per step from
``jax.random``), the data loss plus the L2 penalty (``l2 * sum of squares`` of weights and
biases, so its gradient is the book's ``2 * l2 * value``), ``jax.value_and_grad``, the book's
optimizer (learning rate ``lr / (1 + decay * step)``; SGD's momentum ``v = momentum * v - lr *
g``, ``p += v``; Adam with epsilon 1e-7 and the corrections ``1 - beta ** (step + 1)``), and the
step's loss and accuracy written into the block's history (as ``Model.train`` records every
epoch). Seconds per epoch = the median block time / 100, after a compiling call.

The MNIST-size run is one epoch of 784-128-10, Adam(lr 1e-3), batches of 128 over 60,000 rows:
a jitted ``fori_loop`` over the full batches plus a jitted step for the last partial one.

Prints one JSON line: ``jax``, ``jaxlib``, ``devices``, ``models`` (name -> {"epoch",
"compile"} seconds) and ``mnist`` (seconds per epoch).
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from book_models import MODELS, model_data, optimizer_settings  # noqa: E402

STEPS = 100


def init_params(spec):
    """Weights ``0.1 * randn`` (as loopnet's ``Dense(seed=k)``), biases 0, float32."""
    params = []
    k = 0
    for kind, *args in spec["layers"]:
        if kind == "dense":
            w = 0.1 * np.random.RandomState(k).randn(args[0], args[1])
            params.append((jnp.asarray(w, jnp.float32), jnp.zeros((1, args[1]), jnp.float32)))
            k += 1
    return params


def forward(spec, params, X, key):
    h = X
    k = 0
    for kind, *args in spec["layers"]:
        if kind == "dense":
            weights, biases = params[k]
            h = h @ weights + biases
            k += 1
        elif kind == "relu":
            h = jnp.maximum(0, h)
        elif kind == "dropout":
            keep = 1.0 - args[0]
            key, sub = jax.random.split(key)
            h = h * (jax.random.bernoulli(sub, keep, h.shape).astype(h.dtype) / keep)
        elif kind == "softmax":
            e = jnp.exp(h - jnp.max(h, axis=1, keepdims=True))
            h = e / jnp.sum(e, axis=1, keepdims=True)
        elif kind == "sigmoid":
            h = 1 / (1 + jnp.exp(-h))
        # "linear": the identity
    return h


def data_loss(spec, out, y):
    if spec["loss"] == "categorical_crossentropy":
        clipped = jnp.clip(out, 1e-7, 1 - 1e-7)
        return jnp.mean(-jnp.log(jnp.take_along_axis(clipped, y[:, None], axis=1)))
    if spec["loss"] == "binary_crossentropy":
        clipped = jnp.clip(out, 1e-7, 1 - 1e-7)
        return jnp.mean(jnp.mean(-(y * jnp.log(clipped) + (1 - y) * jnp.log(1 - clipped)),
                                 axis=-1))
    return jnp.mean(jnp.mean((y - out) ** 2, axis=-1))


def accuracy(spec, out, y, precision):
    if spec["accuracy"] == "categorical":
        return jnp.mean(jnp.argmax(out, axis=1) == y)
    if spec["accuracy"] == "binary":
        return jnp.mean((out > 0.5).astype(jnp.float32) == y)
    return jnp.mean(jnp.abs(out - y) < precision)


def make_step(spec, precision):
    """``step(params, state, iteration, key, X, y) -> (params, state, loss, accuracy)``."""
    l2s = [args[2] for kind, *args in spec["layers"] if kind == "dense"]
    name, hyper = optimizer_settings(spec)
    lr0, decay = hyper["learning_rate"], hyper["decay"]

    def loss_fn(params, X, y, key):
        out = forward(spec, params, X, key)
        loss = data_loss(spec, out, y)
        for (weights, biases), l2 in zip(params, l2s):
            if l2:
                loss = loss + l2 * (jnp.sum(weights * weights) + jnp.sum(biases * biases))
        return loss, out

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, state, iteration, key, X, y):
        (loss, out), grads = grad_fn(params, X, y, key)
        lr = lr0 / (1.0 + decay * iteration)
        if name == "sgd":
            if hyper["momentum"]:
                state = jax.tree_util.tree_map(lambda v, g: hyper["momentum"] * v - lr * g,
                                               state, grads)
                params = jax.tree_util.tree_map(lambda p, v: p + v, params, state)
            else:
                params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        else:
            b1, b2, eps = hyper["beta_1"], hyper["beta_2"], hyper["epsilon"]
            t = iteration + 1.0
            m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state[0], grads)
            c = jax.tree_util.tree_map(lambda c, g: b2 * c + (1 - b2) * g * g, state[1], grads)
            params = jax.tree_util.tree_map(
                lambda p, m, c: p - lr * (m / (1 - b1 ** t)) / (jnp.sqrt(c / (1 - b2 ** t)) + eps),
                params, m, c)
            state = (m, c)
        return params, state, loss, accuracy(spec, out, y, precision)

    return step


def initial_state(spec, params):
    name, hyper = optimizer_settings(spec)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    if name == "adam":
        return (zeros, jax.tree_util.tree_map(jnp.zeros_like, params))
    return zeros


def time_model(spec, repeats):
    X_np, y_np = model_data(spec)
    X = jnp.asarray(X_np)
    if spec["loss"] == "categorical_crossentropy":
        y = jnp.asarray(y_np.astype(np.int32))
    else:
        y = jnp.asarray(y_np.astype(np.float32))
    step = make_step(spec, float(np.std(y_np)) / 250)

    @jax.jit
    def block(params, state, iteration, key, X, y):
        def body(i, carry):
            params, state, iteration, key, losses, accuracies = carry
            key, sub = jax.random.split(key)
            params, state, loss, acc = step(params, state, iteration, sub, X, y)
            return (params, state, iteration + 1.0, key, losses.at[i].set(loss),
                    accuracies.at[i].set(acc))

        history = jnp.zeros(STEPS, jnp.float32)
        return lax.fori_loop(0, STEPS, body, (params, state, iteration, key, history, history))

    params = init_params(spec)
    carry = (params, initial_state(spec, params), jnp.float32(0.0), jax.random.PRNGKey(0))
    start = time.perf_counter()
    result = jax.block_until_ready(block(*carry, X, y))
    compile_seconds = time.perf_counter() - start
    times = []
    budget_start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - budget_start < 0.5:
        carry = result[:4]
        start = time.perf_counter()
        result = jax.block_until_ready(block(*carry, X, y))
        times.append(time.perf_counter() - start)
        if time.perf_counter() - budget_start > 5 and len(times) >= 3:
            break
    return {"epoch": statistics.median(times) / STEPS, "compile": compile_seconds,
            "final_loss": float(result[4][-1]), "final_accuracy": float(result[5][-1])}


def time_mnist(X_np, y_np, n_epochs, batch_size=128):
    spec = {"layers": [["dense", 784, 128, 0.0], ["relu"], ["dense", 128, 10, 0.0],
                       ["softmax"]],
            "loss": "categorical_crossentropy", "accuracy": "categorical",
            "optimizer": ["adam", {"learning_rate": 1e-3}]}
    step = make_step(spec, 0.0)
    X = jnp.asarray(X_np)
    y = jnp.asarray(y_np.astype(np.int32))
    n = X.shape[0]
    full = n // batch_size
    key = jax.random.PRNGKey(0)

    @jax.jit
    def full_batches(params, state, iteration, X, y):
        def body(i, carry):
            params, state, iteration, loss_sum, acc_sum = carry
            xb = lax.dynamic_slice_in_dim(X, i * batch_size, batch_size)
            yb = lax.dynamic_slice_in_dim(y, i * batch_size, batch_size)
            params, state, loss, acc = step(params, state, iteration, key, xb, yb)
            return (params, state, iteration + 1.0, loss_sum + loss * batch_size,
                    acc_sum + acc * batch_size)

        return lax.fori_loop(0, full, body, (params, state, iteration, 0.0, 0.0))

    last = jax.jit(lambda params, state, iteration, X, y: step(params, state, iteration, key,
                                                               X, y))
    X_tail, y_tail = X[full * batch_size:], y[full * batch_size:]

    def epoch(params, state, iteration):
        params, state, iteration, loss_sum, acc_sum = full_batches(params, state, iteration, X, y)
        if X_tail.shape[0]:
            params, state, loss, acc = last(params, state, iteration, X_tail, y_tail)
            iteration = iteration + 1.0
            loss_sum = loss_sum + loss * X_tail.shape[0]
            acc_sum = acc_sum + acc * X_tail.shape[0]
        jax.block_until_ready(params)
        return params, state, iteration, float(loss_sum) / n, float(acc_sum) / n

    params = init_params(spec)
    carry = (params, initial_state(spec, params), jnp.float32(0.0))
    start = time.perf_counter()
    params, state, iteration, _, _ = epoch(*carry)   # compiles, and the first epoch
    first = time.perf_counter() - start
    times = []
    for _ in range(n_epochs):
        start = time.perf_counter()
        params, state, iteration, loss, acc = epoch(params, state, iteration)
        times.append(time.perf_counter() - start)
    return {"epoch": statistics.median(times), "first_epoch": first, "accuracy": acc}


def main():
    args = json.loads(sys.argv[1])
    import jaxlib

    out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
           "models": {}}
    for name in args.get("models", []):
        out["models"][name] = time_model(MODELS[name], args.get("repeats", 7))
    if args.get("mnist"):
        out["mnist"] = time_mnist(np.load(args["mnist"]["x"]), np.load(args["mnist"]["y"]),
                                  args["mnist"]["epochs"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
