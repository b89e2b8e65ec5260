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
import math

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
# They are the loop bodies above them, one thread per element ``k = cuda.grid(1)``; numba-cuda has
# no ``np.sqrt``, so they call ``math.sqrt`` (float32 in, float32 out on the GPU).
cuda = None

# Adam moments whose magnitude falls below this become 0 (loops, CUDA form and twin alike; not in
# the book). Left alone, a moment decays by beta each step into float32 subnormals (0.9 ** 800 <
# 1e-37), which CPUs compute ~100x slower: MNIST-size training slowed 2-3x from its second epoch.
# Such a moment would move its parameter by ~1e-30 * lr, i.e. not at all.
FLUSH = 1e-30


def fill_loops(value, output):
    """``output[k] = value`` (optimizer state starts at zero, on whatever device it lives)."""
    filler = output.dtype.type(value)
    for k in prange(output.shape[0]):
        output[k] = filler


def fill_kernel(value, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < output.shape[0]:
        output[k] = output.dtype.type(value)


def fill_numpy(value, output):
    """Twin: ``output[...] = value``."""
    output[...] = value


# --- SGD ----------------------------------------------------------------------------------------

def sgd_update_loops(params, grads, learning_rate):
    """Vanilla SGD: a step against the gradient, ``learning_rate`` long."""
    step = params.dtype.type(-learning_rate)
    for k in prange(params.shape[0]):
        params[k] += step * grads[k]


def sgd_update_kernel(params, grads, learning_rate):
    """CUDA: one thread per element ``k``, the loop body of ``sgd_update_loops``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        step = params.dtype.type(-learning_rate)
        params[k] += step * grads[k]


def sgd_update_numpy(params, grads, learning_rate):
    """Twin: the book's ``weights += -current_learning_rate * dweights``."""
    params += -learning_rate * grads


def sgd_momentum_update_loops(params, grads, momentums, learning_rate, momentum):
    """SGD with momentum: each step keeps a fraction ``momentum`` of the previous step, so the
    parameters roll through small bumps of the loss instead of stopping in them."""
    lr = params.dtype.type(learning_rate)
    keep = params.dtype.type(momentum)
    for k in prange(params.shape[0]):
        update = keep * momentums[k] - lr * grads[k]
        momentums[k] = update
        params[k] += update


def sgd_momentum_update_kernel(params, grads, momentums, learning_rate, momentum):
    """CUDA: one thread per element ``k``, the loop body of ``sgd_momentum_update_loops``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        lr = params.dtype.type(learning_rate)
        keep = params.dtype.type(momentum)
        update = keep * momentums[k] - lr * grads[k]
        momentums[k] = update
        params[k] += update


def sgd_momentum_update_numpy(params, grads, momentums, learning_rate, momentum):
    """Twin: the book's ``updates = momentum * momentums - lr * dweights; momentums = updates;
    weights += updates``."""
    updates = momentum * momentums - learning_rate * grads
    momentums[...] = updates
    params += updates


# --- Adagrad --------------------------------------------------------------------------------------

def adagrad_update_loops(params, grads, cache, learning_rate, epsilon):
    """Adagrad: divide each step by the root of that parameter's summed squared gradients, so
    parameters that moved a lot take smaller steps (the cache only grows)."""
    step = params.dtype.type(-learning_rate)
    eps = params.dtype.type(epsilon)
    for k in prange(params.shape[0]):
        grad = grads[k]
        cache[k] += grad * grad
        params[k] += step * grad / (np.sqrt(cache[k]) + eps)


def adagrad_update_kernel(params, grads, cache, learning_rate, epsilon):
    """CUDA: one thread per element ``k``, the loop body of ``adagrad_update_loops``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        step = params.dtype.type(-learning_rate)
        eps = params.dtype.type(epsilon)
        grad = grads[k]
        cache[k] += grad * grad
        params[k] += step * grad / (math.sqrt(cache[k]) + eps)


def adagrad_update_numpy(params, grads, cache, learning_rate, epsilon):
    """Twin: the book's ``cache += dweights**2;
    weights += -lr * dweights / (np.sqrt(cache) + epsilon)``."""
    cache += grads ** 2
    params += -learning_rate * grads / (np.sqrt(cache) + epsilon)


# --- RMSprop --------------------------------------------------------------------------------------

def rmsprop_update_loops(params, grads, cache, learning_rate, epsilon, rho):
    """RMSprop: like Adagrad, but the cache is a moving average (decay ``rho``), so steps do not
    shrink forever."""
    step = params.dtype.type(-learning_rate)
    eps = params.dtype.type(epsilon)
    keep = params.dtype.type(rho)
    mix = params.dtype.type(1 - rho)
    for k in prange(params.shape[0]):
        grad = grads[k]
        cache[k] = keep * cache[k] + mix * (grad * grad)
        params[k] += step * grad / (np.sqrt(cache[k]) + eps)


def rmsprop_update_kernel(params, grads, cache, learning_rate, epsilon, rho):
    """CUDA: one thread per element ``k``, the loop body of ``rmsprop_update_loops``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        step = params.dtype.type(-learning_rate)
        eps = params.dtype.type(epsilon)
        keep = params.dtype.type(rho)
        mix = params.dtype.type(1 - rho)
        grad = grads[k]
        cache[k] = keep * cache[k] + mix * (grad * grad)
        params[k] += step * grad / (math.sqrt(cache[k]) + eps)


def rmsprop_update_numpy(params, grads, cache, learning_rate, epsilon, rho):
    """Twin: the book's ``cache = rho * cache + (1 - rho) * dweights**2``, then as Adagrad."""
    cache[...] = rho * cache + (1 - rho) * grads ** 2
    params += -learning_rate * grads / (np.sqrt(cache) + epsilon)


# --- Adam -----------------------------------------------------------------------------------------

def adam_update_loops(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                      correction_1, correction_2):
    """Adam: momentum (a moving average of gradients) divided RMSprop-style by a moving average
    of squared gradients. Both averages start at 0 and so are biased towards 0 in the first
    steps; dividing by ``correction = 1 - beta ** (iterations + 1)`` undoes that."""
    step = params.dtype.type(-learning_rate)
    eps = params.dtype.type(epsilon)
    b1 = params.dtype.type(beta_1)
    b2 = params.dtype.type(beta_2)
    mix_1 = params.dtype.type(1 - beta_1)
    mix_2 = params.dtype.type(1 - beta_2)
    c1 = params.dtype.type(correction_1)
    c2 = params.dtype.type(correction_2)
    flush = params.dtype.type(FLUSH)
    for k in prange(params.shape[0]):
        grad = grads[k]
        momentum = b1 * momentums[k] + mix_1 * grad
        cached = b2 * cache[k] + mix_2 * (grad * grad)
        # Flush tiny moments to 0 (see FLUSH): subnormal floats are ~100x slower to compute.
        momentums[k] = params.dtype.type(0) if abs(momentum) < flush else momentum
        cache[k] = params.dtype.type(0) if cached < flush else cached
        momentum_corrected = momentums[k] / c1
        cache_corrected = cache[k] / c2
        params[k] += step * momentum_corrected / (np.sqrt(cache_corrected) + eps)


def adam_update_kernel(params, grads, momentums, cache, learning_rate, epsilon, beta_1, beta_2,
                       correction_1, correction_2):
    """CUDA: one thread per element ``k``, the loop body of ``adam_update_loops``."""
    k = cuda.grid(1)
    if k < params.shape[0]:
        step = params.dtype.type(-learning_rate)
        eps = params.dtype.type(epsilon)
        b1 = params.dtype.type(beta_1)
        b2 = params.dtype.type(beta_2)
        mix_1 = params.dtype.type(1 - beta_1)
        mix_2 = params.dtype.type(1 - beta_2)
        c1 = params.dtype.type(correction_1)
        c2 = params.dtype.type(correction_2)
        flush = params.dtype.type(FLUSH)
        grad = grads[k]
        momentum = b1 * momentums[k] + mix_1 * grad
        cached = b2 * cache[k] + mix_2 * (grad * grad)
        momentums[k] = params.dtype.type(0) if abs(momentum) < flush else momentum
        cache[k] = params.dtype.type(0) if cached < flush else cached
        momentum_corrected = momentums[k] / c1
        cache_corrected = cache[k] / c2
        params[k] += step * momentum_corrected / (math.sqrt(cache_corrected) + eps)


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
