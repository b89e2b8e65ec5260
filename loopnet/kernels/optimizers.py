"""Optimizers: how each parameter moves, given its gradient, as element-wise loops.

Index legend: k = flat element index (``loopnet.ops`` hands these kernels flattened parameters:
a weights matrix and a biases row go through the same loops). Every kernel updates ``params``
and its state arrays in place; the one iteration that owns element ``k`` reads and writes only
element ``k``, so the result cannot depend on the thread count.

Scalars (learning rate, momentum, rho, betas, epsilon) arrive as Python floats and are rounded
to the parameters' dtype once, exactly as numpy rounds a Python scalar in ``float32_array *
0.9``: loops and twins then compute the very same float32 operations. The learning-rate decay
``lr / (1 + decay * iterations)`` and Adam's bias corrections ``1 - beta ** (iterations + 1)``
are host-side scalars computed by the optimizer classes (``loopnet.optimizers``).

Each update is a body owning one parameter (``sgd_param``, ``adam_param``, ...), run by a
``prange`` (``<op>_update_loops``), by one CUDA thread per parameter (``<op>_update_kernel``) and
by the compiled training step over its one flat buffer of every parameter of a model.

    SGD:       params += -lr * grads
    momentum:  updates = momentum * momentums - lr * grads;  momentums = updates; params += updates
    Adagrad:   cache += grads ** 2;  params += -lr * grads / (sqrt(cache) + epsilon)
    RMSprop:   cache = rho * cache + (1 - rho) * grads ** 2;  params as Adagrad
    Adam:      momentums = beta_1 * momentums + (1 - beta_1) * grads
               cache     = beta_2 * cache + (1 - beta_2) * grads ** 2
               params   += -lr * (momentums / correction_1) / (sqrt(cache / correction_2) + epsilon)
               (moments below FLUSH = 1e-30 in magnitude are set to 0: see FLUSH)
"""

import numpy as np
from numba import prange

from loopnet.kernels import body
from loopnet.kernels.scalars import sqrt

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
cuda = None

# Adam moments whose magnitude falls below this become 0 (loops, CUDA form and twin alike; not in
# the book). Left alone, a moment decays by beta each step into float32 subnormals (0.9 ** 800 <
# 1e-37), which CPUs compute ~100x slower: MNIST-size training slowed 2-3x from its second epoch.
# Such a moment would move its parameter by ~1e-30 * lr, i.e. not at all.
FLUSH = 1e-30


@body
def fill_element(value, output, k):
    """``output[k] = value``."""
    output[k] = output.dtype.type(value)


def fill_loops(value, output):
    """``fill_element`` for every element (optimizer state starts at zero, on whatever device
    it lives)."""
    for k in prange(output.shape[0]):
        fill_element(value, output, k)


def fill_kernel(value, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < output.shape[0]:
        fill_element(value, output, k)


def fill_numpy(value, output):
    """Twin: ``output[...] = value``."""
    output[...] = value


# --- SGD ----------------------------------------------------------------------------------------

@body
def sgd_param(params, grads, learning_rate, k):
    """Vanilla SGD: a step against the gradient, ``learning_rate`` long."""
    params[k] += params.dtype.type(-learning_rate) * grads[k]


def sgd_update_loops(params, grads, learning_rate):
    """``sgd_param`` for every parameter."""
    for k in prange(params.shape[0]):
        sgd_param(params, grads, learning_rate, k)


def sgd_update_kernel(params, grads, learning_rate):
    """CUDA: one thread per parameter ``k``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        sgd_param(params, grads, learning_rate, k)


def sgd_update_numpy(params, grads, learning_rate):
    """Twin: the book's ``weights += -current_learning_rate * dweights``."""
    params += -learning_rate * grads


@body
def sgd_momentum_param(params, grads, momentums, learning_rate, momentum, k):
    """SGD with momentum: each step keeps a fraction ``momentum`` of the previous step, so the
    parameters roll through small bumps of the loss instead of stopping in them."""
    lr = params.dtype.type(learning_rate)
    keep = params.dtype.type(momentum)
    update = keep * momentums[k] - lr * grads[k]
    momentums[k] = update
    params[k] += update


def sgd_momentum_update_loops(params, grads, momentums, learning_rate, momentum):
    """``sgd_momentum_param`` for every parameter."""
    for k in prange(params.shape[0]):
        sgd_momentum_param(params, grads, momentums, learning_rate, momentum, k)


def sgd_momentum_update_kernel(params, grads, momentums, learning_rate, momentum):
    """CUDA: one thread per parameter ``k``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        sgd_momentum_param(params, grads, momentums, learning_rate, momentum, k)


def sgd_momentum_update_numpy(params, grads, momentums, learning_rate, momentum):
    """Twin: the book's ``updates = momentum * momentums - lr * dweights; momentums = updates;
    weights += updates``."""
    updates = momentum * momentums - learning_rate * grads
    momentums[...] = updates
    params += updates


# --- Adagrad --------------------------------------------------------------------------------------

@body
def adagrad_param(params, grads, cache, learning_rate, epsilon, k):
    """Adagrad: divide each step by the root of that parameter's summed squared gradients, so
    parameters that moved a lot take smaller steps (the cache only grows)."""
    grad = grads[k]
    cache[k] += grad * grad
    params[k] += (params.dtype.type(-learning_rate) * grad
                  / (sqrt(cache[k]) + params.dtype.type(epsilon)))


def adagrad_update_loops(params, grads, cache, learning_rate, epsilon):
    """``adagrad_param`` for every parameter."""
    for k in prange(params.shape[0]):
        adagrad_param(params, grads, cache, learning_rate, epsilon, k)


def adagrad_update_kernel(params, grads, cache, learning_rate, epsilon):
    """CUDA: one thread per parameter ``k``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        adagrad_param(params, grads, cache, learning_rate, epsilon, k)


def adagrad_update_numpy(params, grads, cache, learning_rate, epsilon):
    """Twin: the book's ``cache += dweights**2;
    weights += -lr * dweights / (np.sqrt(cache) + epsilon)``."""
    cache += grads ** 2
    params += -learning_rate * grads / (np.sqrt(cache) + epsilon)


# --- RMSprop --------------------------------------------------------------------------------------

@body
def rmsprop_param(params, grads, cache, learning_rate, epsilon, rho, k):
    """RMSprop: like Adagrad, but the cache is a moving average (decay ``rho``), so steps do not
    shrink forever."""
    keep = params.dtype.type(rho)
    mix = params.dtype.type(1 - rho)
    grad = grads[k]
    cache[k] = keep * cache[k] + mix * (grad * grad)
    params[k] += (params.dtype.type(-learning_rate) * grad
                  / (sqrt(cache[k]) + params.dtype.type(epsilon)))


def rmsprop_update_loops(params, grads, cache, learning_rate, epsilon, rho):
    """``rmsprop_param`` for every parameter."""
    for k in prange(params.shape[0]):
        rmsprop_param(params, grads, cache, learning_rate, epsilon, rho, k)


def rmsprop_update_kernel(params, grads, cache, learning_rate, epsilon, rho):
    """CUDA: one thread per parameter ``k``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        rmsprop_param(params, grads, cache, learning_rate, epsilon, rho, k)


def rmsprop_update_numpy(params, grads, cache, learning_rate, epsilon, rho):
    """Twin: the book's ``cache = rho * cache + (1 - rho) * dweights**2``, then as Adagrad."""
    cache[...] = rho * cache + (1 - rho) * grads ** 2
    params += -learning_rate * grads / (np.sqrt(cache) + epsilon)


# --- Adam -----------------------------------------------------------------------------------------

@body
def adam_param(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
               correction_1, correction_2, k):
    """Adam: momentum (a moving average of gradients) divided RMSprop-style by a moving average
    of squared gradients. Both averages start at 0 and so are biased towards 0 in the first
    steps; dividing by ``correction = 1 - beta ** (iterations + 1)`` undoes that."""
    dtype = params.dtype.type
    flush = dtype(FLUSH)
    grad = grads[k]
    momentum = dtype(beta_1) * momentums[k] + dtype(1 - beta_1) * grad
    cached = dtype(beta_2) * cache[k] + dtype(1 - beta_2) * (grad * grad)
    # Flush tiny moments to 0 (see FLUSH): subnormal floats are ~100x slower to compute.
    if abs(momentum) < flush:
        momentum = dtype(0)
    if cached < flush:
        cached = dtype(0)
    momentums[k] = momentum
    cache[k] = cached
    momentum_corrected = momentum / dtype(correction_1)
    cache_corrected = cached / dtype(correction_2)
    params[k] += dtype(-learning_rate) * momentum_corrected / (sqrt(cache_corrected)
                                                               + dtype(epsilon))


def adam_update_loops(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                      correction_1, correction_2):
    """``adam_param`` for every parameter."""
    for k in prange(params.shape[0]):
        adam_param(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                   correction_1, correction_2, k)


def adam_update_kernel(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                       correction_1, correction_2):
    """CUDA: one thread per parameter ``k``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        adam_param(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                   correction_1, correction_2, k)


def adam_update_numpy(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                      correction_1, correction_2):
    """Twin: the book's ``Optimizer_Adam.update_params`` (``weight_momentums``,
    ``weight_cache``, ``*_corrected``)."""
    momentums[...] = beta_1 * momentums + (1 - beta_1) * grads
    cache[...] = beta_2 * cache + (1 - beta_2) * grads ** 2
    momentums[np.abs(momentums) < FLUSH] = 0   # (not in the book) see FLUSH
    cache[cache < FLUSH] = 0
    momentums_corrected = momentums / correction_1
    cache_corrected = cache / correction_2
    params += -learning_rate * momentums_corrected / (np.sqrt(cache_corrected) + epsilon)
