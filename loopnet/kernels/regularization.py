"""Regularization: L1/L2 penalties on weights and biases, and dropout.

Index legend: k = flat element index (``loopnet.ops`` hands these kernels flattened arrays, so a
weights matrix and a biases row go through the same loops).

    penalty      = l1 * sum_k |values[k]| + l2 * sum_k values[k] ** 2
    (twin: l1 * np.sum(np.abs(values)) + l2 * np.sum(values * values))
    dvalues[k]  += l1 * (1 if values[k] >= 0 else -1) + 2 * l2 * values[k]
    (twin: the book's dL1 = np.ones_like(w); dL1[w < 0] = -1; dw += l1 * dL1; dw += 2 * l2 * w)

    dropout: output[k] = inputs[k] * mask[k],  dinputs[k] = dvalues[k] * mask[k]
    where mask[k] is 0 (dropped) or 1 / (1 - rate) (kept, scaled so the expected sum is unchanged)

Dropout masks come from a counter-based generator (as Philox or threefry do): whether element
``(s, n)`` of the ``step``-th training batch is kept is a hash of ``(seed, step, s, n)``, not a
draw from a stream. Every element can be decided on its own, by any thread in any order, so the
mask is the same on every device and for any thread count, and the GPU never waits for a mask
drawn on the host.

The element-wise ops are bodies (``penalty_gradient_element``, ``mask_element``) run by a
``prange`` (``<op>_loops``), by one CUDA thread each (``<op>_kernel``) and by the compiled
training step; see ``loopnet/kernels/activations.py`` for the pattern.
"""

import numpy as np
from numba import prange

from loopnet.kernels import body

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
cuda = None

# Threads of the one block that ``regularization_loss_kernel`` runs (a power of two).
PENALTY_THREADS = 128


# --- L1 / L2 penalty --------------------------------------------------------------------------------

@body
def penalty(values, l1, l2):
    """The penalty of a 1-D ``values``, in float64, summed serially in index order (a parallel
    sum would depend on the thread count)."""
    sum_abs = 0.0
    sum_squares = 0.0
    for k in range(values.shape[0]):
        value = values[k]
        sum_abs += abs(value)
        sum_squares += value * value
    return l1 * sum_abs + l2 * sum_squares


def regularization_loss_loops(values, l1, l2, output):
    """The penalty added to the data loss (``penalty``). ``output`` is a float64 array of
    one."""
    output[0] = penalty(values, l1, l2)


def dense_penalties_loss(weights, biases, weight_l1, weight_l2, bias_l1, bias_l2, output):
    """A dense layer's penalty in one call, into ``output`` (a float64 array of one): the
    weights' ``penalty`` plus the biases', each only when one of its two coefficients is > 0,
    as ``Loss.regularization_loss`` adds up two ``regularization_loss`` calls (so their bits).
    The cpu device's direct path for the book's loop, which asks every epoch (two calls and
    their Python: ~3.5 us)."""
    total = 0.0
    if weight_l1 > 0 or weight_l2 > 0:
        total += penalty(weights.reshape(weights.size), weight_l1, weight_l2)
    if bias_l1 > 0 or bias_l2 > 0:
        total += penalty(biases.reshape(biases.size), bias_l1, bias_l2)
    output[0] = total


def regularization_loss_kernel(values, l1, l2, output):
    """CUDA (a different launch from the loops': a sum has one owner, which on a GPU would be
    one thread): one block of ``PENALTY_THREADS`` threads. Thread ``t`` sums ``|values[k]|`` and
    ``values[k] ** 2`` over ``k = t, t + PENALTY_THREADS, ...`` in float64, then both partial
    sums are added pairwise in a fixed tree: the same bits on every run (equal to the serial
    ``regularization_loss_loops`` within float64 rounding)."""
    abs_partial = cuda.shared.array(PENALTY_THREADS, dtype=output.dtype)
    square_partial = cuda.shared.array(PENALTY_THREADS, dtype=output.dtype)
    t = cuda.threadIdx.x
    sum_abs = output.dtype.type(0)
    sum_squares = output.dtype.type(0)
    for k in range(t, values.shape[0], PENALTY_THREADS):
        value = values[k]
        sum_abs += abs(value)
        sum_squares += value * value
    abs_partial[t] = sum_abs
    square_partial[t] = sum_squares
    cuda.syncthreads()
    step = PENALTY_THREADS // 2
    while step > 0:
        if t < step:
            abs_partial[t] += abs_partial[t + step]
            square_partial[t] += square_partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        output[0] = l1 * abs_partial[0] + l2 * square_partial[0]


def regularization_loss_numpy(values, l1, l2, output):
    """Twin: ``l1 * np.sum(np.abs(values)) + l2 * np.sum(values * values)`` (summed in float64)."""
    output[0] = (l1 * np.sum(np.abs(values), dtype=np.float64)
                 + l2 * np.sum(values * values, dtype=np.float64))


@body
def penalty_gradient_element(values, l1, l2, dvalues, k):
    """Add the penalty's gradient at element ``k`` to ``dvalues[k]`` (the layer's
    ``dweights``/``dbiases``).

    d|w|/dw is taken as +1 at w = 0, as the book does (``dL1[weights < 0] = -1`` on ones).
    The L1 and L2 terms are added one after the other, as the book's two ``+=`` do.
    """
    if l1 > 0:
        l1_step = dvalues.dtype.type(l1)
        if values[k] < 0:
            dvalues[k] += -l1_step
        else:
            dvalues[k] += l1_step
    if l2 > 0:
        dvalues[k] += dvalues.dtype.type(2 * l2) * values[k]


def regularization_backward_loops(values, l1, l2, dvalues):
    """``penalty_gradient_element`` for every element, in place."""
    for k in prange(values.shape[0]):
        penalty_gradient_element(values, l1, l2, dvalues, k)


def regularization_backward_kernel(values, l1, l2, dvalues):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < values.shape[0]:
        penalty_gradient_element(values, l1, l2, dvalues, k)


def dense_penalties_backward(weights, biases, weight_l1, weight_l2, bias_l1, bias_l2,
                             dweights, dbiases):
    """A dense layer's two penalties' gradients in one call: ``penalty_gradient_element`` over
    the rows of ``weights`` into ``dweights``, then over ``biases`` (1, n_neurons) into
    ``dbiases``: each element as ``regularization_backward_loops`` adds it, so its bits. The
    cpu device's layers run it on their direct path, where two ``regularization_backward``
    calls on flat views cost ~1.5 us of a small layer's backward, one call ~0.5 us."""
    for i in prange(weights.shape[0]):
        for k in range(weights.shape[1]):
            penalty_gradient_element(weights[i], weight_l1, weight_l2, dweights[i], k)
    for k in range(biases.shape[1]):
        penalty_gradient_element(biases[0], bias_l1, bias_l2, dbiases[0], k)


def regularization_backward_numpy(values, l1, l2, dvalues):
    """Twin: the book's ``dL1 = np.ones_like(w); dL1[w < 0] = -1; dw += l1 * dL1;
    dw += 2 * l2 * w``."""
    if l1 > 0:
        dL1 = np.ones_like(values)
        dL1[values < 0] = -1
        dvalues += l1 * dL1
    if l2 > 0:
        dvalues += 2 * l2 * values


# --- Dropout ----------------------------------------------------------------------------------------
#     mask[s, n] = 1 / (1 - rate) if hash(seed, step, s, n) >> 11 < keep_below else 0
#     keep_below = (1 - rate) * 2**53: the top 53 bits of the hash are a uniform integer, kept
#     with probability 1 - rate (compared as integers: no rounding that a device could do
#     differently)

# splitmix64's constants (Steele, Lea and Flood, "Fast splittable pseudorandom number
# generators", 2014): the golden-ratio increment and the two multipliers of its finalizer,
# which turns any 64-bit counter into 64 bits that look random.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


@body
def mix64(z):
    """splitmix64's finalizer: every input bit moves about half of the output bits. Unsigned
    64-bit arithmetic, wrapping around (numpy's and numba's uint64 both do)."""
    z = (z ^ (z >> np.uint64(30))) * MIX_1
    z = (z ^ (z >> np.uint64(27))) * MIX_2
    return z ^ (z >> np.uint64(31))


@body
def dropout_mask_row(seed, step, keep_below, rate, mask, s):
    """Row ``s`` of the dropout mask of training batch number ``step`` (see above): ``1 / (1 -
    rate)`` where the element is kept, 0 where it is dropped."""
    scale = mask.dtype.type(1.0 / (1.0 - rate))
    zero = mask.dtype.type(0)
    stream = mix64(mix64(np.uint64(seed) + GOLDEN) + np.uint64(step) * GOLDEN)
    row = mix64(stream + np.uint64(s) * GOLDEN)
    limit = np.uint64(keep_below)
    for n in range(mask.shape[1]):
        h = mix64(row + np.uint64(n) * GOLDEN)
        mask[s, n] = scale if (h >> np.uint64(11)) < limit else zero


def dropout_mask_loops(seed, step, keep_below, rate, mask):
    """``dropout_mask_row`` for every sample."""
    for s in prange(mask.shape[0]):
        dropout_mask_row(seed, step, keep_below, rate, mask, s)


def dropout_mask_kernel(seed, step, keep_below, rate, mask):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < mask.shape[0]:
        dropout_mask_row(seed, step, keep_below, rate, mask, s)


def dropout_mask_numpy(seed, step, keep_below, rate, mask):
    """Twin: the same hash on whole arrays of indices (numpy's uint64 arrays wrap around too)."""
    with np.errstate(over="ignore"):
        stream = mix64(mix64(np.uint64(seed) + GOLDEN) + np.uint64(step) * GOLDEN)
        rows = mix64(stream + np.arange(mask.shape[0], dtype=np.uint64)[:, None] * GOLDEN)
        h = mix64(rows + np.arange(mask.shape[1], dtype=np.uint64)[None, :] * GOLDEN)
    scale = mask.dtype.type(1.0 / (1.0 - rate))
    mask[...] = np.where((h >> np.uint64(11)) < np.uint64(keep_below), scale, mask.dtype.type(0))



@body
def mask_element(values, mask, output, k):
    """``output[k] = values[k] * mask[k]``: forward, a dropped neuron's output becomes 0 and a
    kept one is scaled by ``1 / (1 - rate)``; backward, a dropped neuron passes no gradient
    back and a kept one passes it scaled like its output."""
    output[k] = values[k] * mask[k]


def dropout_forward_loops(inputs, mask, output):
    """``mask_element`` for every element."""
    for k in prange(inputs.shape[0]):
        mask_element(inputs, mask, output, k)


def dropout_forward_kernel(inputs, mask, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < inputs.shape[0]:
        mask_element(inputs, mask, output, k)


def dropout_forward_numpy(inputs, mask, output):
    """Twin: the book's ``output = inputs * binary_mask``."""
    output[...] = inputs * mask


def dropout_backward_loops(dvalues, mask, dinputs):
    """``mask_element`` for every element of the gradient."""
    for k in prange(dvalues.shape[0]):
        mask_element(dvalues, mask, dinputs, k)


def dropout_backward_kernel(dvalues, mask, dinputs):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < dvalues.shape[0]:
        mask_element(dvalues, mask, dinputs, k)


def dropout_backward_numpy(dvalues, mask, dinputs):
    """Twin: the book's ``dinputs = dvalues * binary_mask``."""
    dinputs[...] = dvalues * mask
