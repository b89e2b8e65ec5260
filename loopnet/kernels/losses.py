"""Losses and metrics: categorical and binary cross-entropy, mean squared and mean absolute
error (forward and backward), the fused softmax + cross-entropy backward, and accuracies.

Index legend: s = sample, j = class or output (column), k = flat element index.
Shapes: y_pred (n_samples, n_classes) probabilities; class_targets (n_samples,) integer labels;
        y_true (n_samples, n_classes) one-hot, or (n_samples, n_outputs) targets for the binary
        and regression losses; sample_losses / correct (n_samples,).
Backward kernels take ``dvalues`` (the loss's input, i.e. ``y_pred``, as the book names it) and
write ``dinputs``, the gradient of the *mean* loss: every one is divided by ``n_samples`` so the
step size does not depend on the batch size.

Predictions are clipped to [1e-7, 1 - 1e-7] before the log, as the notes do: a confident wrong
prediction of exactly 0 would give log(0) = -inf and one such sample would make the mean loss
infinite; clipping caps one sample's loss at -log(1e-7) ~= 16.118. The upper bound is clipped too
so the clipping does not bias the loss towards the confident side.

Each op is a body owning one sample's row (``crossentropy_sample``, ``accuracy_sample`` ...)
or one element (``squared_error_backward_element`` ...), run by ``<op>_loops`` (a ``prange``
over it: cpu and python), by ``<op>_kernel`` (one CUDA thread per row or element) and by the
compiled training step; see ``loopnet/kernels/activations.py`` for the pattern.
"""

import numpy as np
from numba import prange

from loopnet.kernels import ROW_BLOCK, body
from loopnet.kernels.scalars import log

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
cuda = None

# Threads of the one block that ``mean_kernel`` runs (a power of two, for its tree reduction).
MEAN_THREADS = 128

# Probabilities are clipped to [CLIP, 1 - CLIP] before a log or a division (see above).
CLIP = 1e-7


@body
def clipped(y_pred, s, j):
    """``y_pred[s, j]`` clipped to ``[CLIP, 1 - CLIP]`` in its own precision. ``if``/``elif``
    rather than ``min``/``max`` so that a NaN stays NaN, as ``np.clip`` keeps it."""
    p = y_pred[s, j]
    lo = y_pred.dtype.type(CLIP)
    hi = y_pred.dtype.type(1 - CLIP)
    if p < lo:
        return lo
    if p > hi:
        return hi
    return p


# --- Categorical cross-entropy from class indices ------------------------------------------------
#     sample_losses[s] = -log(clip(y_pred[s, class_targets[s]]))
#     (twin: -np.log(np.clip(y_pred, 1e-7, 1 - 1e-7)[range(n_samples), class_targets]))

# (Not inlined into its kernel on the cpu device, see ``body``: inlined it ran 8% slower, 300
# and 3,000 samples.)
@body(inline=False)
def crossentropy_sample(y_pred, class_targets, sample_losses, s):
    """Sample ``s``'s loss: minus the log of the probability given to its correct class.

    ``class_targets`` must hold valid class indices (checked in ``loopnet.ops``): numba does
    not bounds-check, a label of -1 would silently read the last class.
    """
    sample_losses[s] = -log(clipped(y_pred, s, class_targets[s]))


def categorical_crossentropy_loops(y_pred, class_targets, sample_losses):
    """``crossentropy_sample`` for every sample."""
    for s in prange(y_pred.shape[0]):
        crossentropy_sample(y_pred, class_targets, sample_losses, s)


def categorical_crossentropy_kernel(y_pred, class_targets, sample_losses):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        crossentropy_sample(y_pred, class_targets, sample_losses, s)


def categorical_crossentropy_numpy(y_pred, class_targets, sample_losses):
    """Twin: the notes' fancy indexing ``y_pred_clipped[range(samples), y_true]``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    sample_losses[...] = -np.log(y_pred_clipped[np.arange(len(y_pred)), class_targets])


# --- Categorical cross-entropy from one-hot targets ---------------------------------------------
#     sample_losses[s] = -log(sum_j clip(y_pred[s, j]) * y_true[s, j])
#     (twin: -np.log(np.sum(np.clip(y_pred, 1e-7, 1 - 1e-7) * y_true, axis=1)))

@body
def crossentropy_onehot_samples(y_pred, y_true, sample_losses, s0, s1):
    """The losses of samples ``s0 .. s1 - 1`` with one-hot target rows: the zeros of
    ``y_true`` cancel every wrong class (summed in class order)."""
    for s in range(s0, s1):
        correct_confidence = y_pred.dtype.type(0)
        for j in range(y_pred.shape[1]):
            correct_confidence += clipped(y_pred, s, j) * y_true[s, j]
        sample_losses[s] = -log(correct_confidence)


def categorical_crossentropy_onehot_loops(y_pred, y_true, sample_losses):
    """``crossentropy_onehot_samples`` for every sample, ROW_BLOCK samples per ``prange``
    iteration (a call per sample cost ~20 ns, most of a sample of a few classes)."""
    n_samples = y_pred.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        crossentropy_onehot_samples(y_pred, y_true, sample_losses, s0,
                                    min(n_samples, s0 + ROW_BLOCK))


def categorical_crossentropy_onehot_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        crossentropy_onehot_samples(y_pred, y_true, sample_losses, s, s + 1)


def categorical_crossentropy_onehot_numpy(y_pred, y_true, sample_losses):
    """Twin: the notes' one-hot branch ``np.sum(y_pred_clipped * y_true, axis=1)``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    sample_losses[...] = -np.log(np.sum(y_pred_clipped * y_true, axis=1))


# --- Accuracy -----------------------------------------------------------------------------------
#     correct[s] = 1 if argmax_j y_pred[s, j] == class_targets[s] else 0
#     (twin: np.argmax(y_pred, axis=1) == class_targets)

@body
def predicted_class(y_pred, s):
    """The most confident class of sample ``s``: the first maximum, a NaN counting as the
    maximum, as ``np.argmax`` decides."""
    best = 0
    for j in range(1, y_pred.shape[1]):
        # (y_pred[s, j], not a view of the row: a view per sample costs more than its loop)
        if y_pred[s, best] != y_pred[s, best]:
            break
        if y_pred[s, j] > y_pred[s, best] or y_pred[s, j] != y_pred[s, j]:
            best = j
    return best


@body
def accuracy_sample(y_pred, class_targets, correct, s):
    """1 where the most confident class is the target, else 0 (``ops.accuracy`` takes the mean)."""
    correct[s] = 1 if predicted_class(y_pred, s) == class_targets[s] else 0


def accuracy_loops(y_pred, class_targets, correct):
    """``accuracy_sample`` for every sample."""
    for s in prange(y_pred.shape[0]):
        accuracy_sample(y_pred, class_targets, correct, s)


def accuracy_kernel(y_pred, class_targets, correct):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        accuracy_sample(y_pred, class_targets, correct, s)


def accuracy_numpy(y_pred, class_targets, correct):
    """Twin: ``np.argmax(y_pred, axis=1) == class_targets``."""
    correct[...] = np.argmax(y_pred, axis=1) == class_targets


# --- Mean -----------------------------------------------------------------------------------------
#     output[0] = sum_s values[s] / n_samples      (twin: np.mean(values, dtype=np.float64))

def mean_loops(values, output):
    """Mean in float64, summed serially in index order (a parallel sum would depend on the
    thread count; this is the one loop here that is deliberately not a ``prange``)."""
    # output's dtype (float64), not a bare 0.0: run as plain Python, 0.0 + np.float32 gives
    # np.float32 (NEP 50), so the python device would silently sum in float32.
    total = output.dtype.type(0)
    for s in range(values.shape[0]):
        total += values[s]
    output[0] = total / values.shape[0]


def mean_kernel(values, output):
    """CUDA (a different launch from the loops': a sum has one owner, which on a GPU would be
    one thread): one block of ``MEAN_THREADS`` threads. Thread ``t`` sums ``values[t]``,
    ``values[t + MEAN_THREADS]``, ... in float64; then the partial sums are added pairwise in a
    fixed tree (``partial[t] += partial[t + step]``, step = 64, 32, ..., 1), the block waiting
    between steps. Always the same order: the same bits on every run (it differs from the serial
    ``mean_loops`` only by float64 rounding)."""
    partial = cuda.shared.array(MEAN_THREADS, dtype=output.dtype)
    t = cuda.threadIdx.x
    total = output.dtype.type(0)
    for s in range(t, values.shape[0], MEAN_THREADS):
        total += values[s]
    partial[t] = total
    cuda.syncthreads()
    step = MEAN_THREADS // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        output[0] = partial[0] / values.shape[0]


def mean_numpy(values, output):
    """Twin: ``np.mean(values, dtype=np.float64)`` (numpy sums pairwise: equal within rounding)."""
    output[0] = np.mean(values, dtype=np.float64)


# --- Categorical cross-entropy backward --------------------------------------------------------------
#     dinputs[s, j] = -y_true[s, j] / dvalues[s, j] / n_samples
#                   = -1 / dvalues[s, class_targets[s]] / n_samples for the target class, else 0
#     (twin: dinputs = 0; dinputs[range(n_samples), class_targets] = -1 / p_correct / n_samples)

@body
def crossentropy_backward_element(dvalues, class_targets, dinputs, s, j):
    """d(-log p_target) / dp = -1 / p_target, and 0 for every other class, over ``n_samples``.

    The book writes ``-y_true / dvalues`` on one-hot rows; with class indices only the target
    column is non-zero. (The one-hot form also gives NaN for ``0 / 0`` where a wrong class has
    probability exactly 0; writing the zeros directly avoids it.) A target probability of
    exactly 0 gives -inf, as numpy's division does.
    """
    n = dinputs.dtype.type(dvalues.shape[0])
    minus_one = dinputs.dtype.type(-1)
    if j == class_targets[s]:
        dinputs[s, j] = minus_one / dvalues[s, j] / n
    else:
        dinputs[s, j] = 0


def categorical_crossentropy_backward_loops(dvalues, class_targets, dinputs):
    """``crossentropy_backward_element`` for every element, a ``prange`` over samples (an
    element body: see ``binary_crossentropy_backward_loops``)."""
    for s in prange(dvalues.shape[0]):
        for j in range(dvalues.shape[1]):
            crossentropy_backward_element(dvalues, class_targets, dinputs, s, j)


def categorical_crossentropy_backward_kernel(dvalues, class_targets, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < dvalues.shape[0]:
        for j in range(dvalues.shape[1]):
            crossentropy_backward_element(dvalues, class_targets, dinputs, s, j)


def categorical_crossentropy_backward_numpy(dvalues, class_targets, dinputs):
    """Twin: zeros, then ``-1 / dvalues[range(n_samples), class_targets] / n_samples``."""
    rows = np.arange(len(dvalues))
    dinputs[...] = 0
    with np.errstate(divide="ignore"):
        dinputs[rows, class_targets] = -1 / dvalues[rows, class_targets] / len(dvalues)


# --- Softmax + categorical cross-entropy, fused backward ---------------------------------------------
#     dinputs[s, j] = (softmax_output[s, j] - one_hot[s, j]) / n_samples
#     (twin: dinputs = softmax_output.copy(); dinputs[range(n), class_targets] -= 1; dinputs /= n)

@body
def softmax_crossentropy_backward_element(softmax_output, class_targets, dinputs, s, j):
    """The gradient of the mean cross-entropy with respect to the softmax *inputs*, element
    ``(s, j)``.

    Chaining softmax's Jacobian with ``-1 / p_target`` collapses to ``p - 1`` on the target
    class and ``p`` elsewhere: no Jacobian, no division by a probability (the book measures it
    ~7x faster than the chained form, and it is exact where ``p_target`` is tiny).
    ``dinputs`` may be ``softmax_output`` itself (each value is read, then written).
    """
    n = dinputs.dtype.type(softmax_output.shape[0])
    one = dinputs.dtype.type(1)
    dinput = softmax_output[s, j]
    if j == class_targets[s]:
        dinput = dinput - one
    dinputs[s, j] = dinput / n


def softmax_crossentropy_backward_loops(softmax_output, class_targets, dinputs):
    """``softmax_crossentropy_backward_element`` for every element, a ``prange`` over samples
    (an element body: see ``binary_crossentropy_backward_loops``)."""
    for s in prange(softmax_output.shape[0]):
        for j in range(softmax_output.shape[1]):
            softmax_crossentropy_backward_element(softmax_output, class_targets, dinputs, s, j)


def softmax_crossentropy_backward_kernel(softmax_output, class_targets, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < softmax_output.shape[0]:
        for j in range(softmax_output.shape[1]):
            softmax_crossentropy_backward_element(softmax_output, class_targets, dinputs, s, j)


def softmax_crossentropy_backward_numpy(softmax_output, class_targets, dinputs):
    """Twin: the book's ``dinputs[range(samples), y_true] -= 1; dinputs = dinputs / samples``."""
    dinputs[...] = softmax_output
    dinputs[np.arange(len(softmax_output)), class_targets] -= 1
    dinputs[...] = dinputs / len(softmax_output)


# --- Binary cross-entropy -------------------------------------------------------------------------
#     sample_losses[s] = mean_j -(y_true * log(p) + (1 - y_true) * log(1 - p)),  p = clip(y_pred)
#     dinputs[s, j]    = -(y_true / p - (1 - y_true) / (1 - p)) / n_outputs / n_samples
#     (twin: the book's Loss_BinaryCrossentropy, np.mean(..., axis=-1))

@body
def binary_crossentropy_samples(y_pred, y_true, sample_losses, s0, s1):
    """One independent yes/no question per output (a sigmoid each); a sample's loss is the mean
    over its outputs, for the samples ``s0 .. s1 - 1``. Clipped on both sides: ``log(0)`` and
    ``log(1 - 1)`` are both possible."""
    one = y_pred.dtype.type(1)
    zero = y_pred.dtype.type(0)
    n_outputs = y_pred.shape[1]
    for s in range(s0, s1):
        total = zero
        for j in range(n_outputs):
            p = clipped(y_pred, s, j)
            t = y_true[s, j]
            if t == one or t == zero:
                # A 0/1 target (every target of the book's): one logarithm, the same bits. With
                # t = 1, ``t * log(p) + (1 - t) * log(1 - p)`` is ``log(p) + -0.0``, which is
                # ``log(p)`` (clipped, log(1 - p) is finite and < 0, and log(p) != 0); with
                # t = 0 it is ``-0.0 + log(1 - p)``. (A logarithm was half a sample's time.)
                total += -log(p if t == one else one - p)
            else:
                total += -(t * log(p) + (one - t) * log(one - p))
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def binary_crossentropy_loops(y_pred, y_true, sample_losses):
    """``binary_crossentropy_samples`` for every sample, ROW_BLOCK samples per ``prange``
    iteration (a call per sample cost ~10 ns, half of a sample of one output)."""
    n_samples = y_pred.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        binary_crossentropy_samples(y_pred, y_true, sample_losses, s0,
                                    min(n_samples, s0 + ROW_BLOCK))


def binary_crossentropy_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        binary_crossentropy_samples(y_pred, y_true, sample_losses, s, s + 1)


def binary_crossentropy_numpy(y_pred, y_true, sample_losses):
    """Twin: the book's ``np.mean(-(y_true * log(p) + (1 - y_true) * log(1 - p)), axis=-1)``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    losses = -(y_true * np.log(y_pred_clipped) + (1 - y_true) * np.log(1 - y_pred_clipped))
    sample_losses[...] = np.mean(losses, axis=-1)


# (Not inlined on the cpu device: 2.5x slower inlined, 3,000x10.)
@body(inline=False)
def binary_crossentropy_backward_element(dvalues, y_true, dinputs, s, j):
    """d/dp of ``-(t log p + (1 - t) log(1 - p))`` is ``-(t / p - (1 - t) / (1 - p))``."""
    one = dvalues.dtype.type(1)
    n = dinputs.dtype.type(dvalues.shape[0])
    outputs = dinputs.dtype.type(dvalues.shape[1])
    p = clipped(dvalues, s, j)
    t = y_true[s, j]
    dinputs[s, j] = -(t / p - (one - t) / (one - p)) / outputs / n


def binary_crossentropy_backward_loops(dvalues, y_true, dinputs):
    """``binary_crossentropy_backward_element`` for every element, a ``prange`` over samples.
    (An element body, not a row body: a row body's loop over the outputs is vectorized where
    it is compiled, which makes it too large for LLVM to inline into this loop, and a call per
    sample cost ~15 ns, 15 of the 16 us of 1000 samples of one output.)"""
    for s in prange(dvalues.shape[0]):
        for j in range(dvalues.shape[1]):
            binary_crossentropy_backward_element(dvalues, y_true, dinputs, s, j)


def binary_crossentropy_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < dvalues.shape[0]:
        for j in range(dvalues.shape[1]):
            binary_crossentropy_backward_element(dvalues, y_true, dinputs, s, j)


def binary_crossentropy_backward_numpy(dvalues, y_true, dinputs):
    """Twin: the book's ``-(y_true / clipped - (1 - y_true) / (1 - clipped)) / outputs / samples``."""
    clipped_dvalues = np.clip(dvalues, CLIP, 1 - CLIP)
    outputs = dvalues.shape[1]
    gradient = -(y_true / clipped_dvalues - (1 - y_true) / (1 - clipped_dvalues)) / outputs
    dinputs[...] = gradient / len(dvalues)


# --- Mean squared error -----------------------------------------------------------------------------
#     sample_losses[s] = mean_j (y_true[s, j] - y_pred[s, j]) ** 2
#     dinputs[s, j]    = -2 * (y_true[s, j] - dvalues[s, j]) / n_outputs / n_samples

# (Not inlined on the cpu device: 9% slower inlined, 300x3.)
@body(inline=False)
def squared_error_sample(y_pred, y_true, sample_losses, s):
    """The squared distance to the target, averaged over the sample's outputs (L2 loss)."""
    n_outputs = y_pred.shape[1]
    total = y_pred.dtype.type(0)
    for j in range(n_outputs):
        error = y_true[s, j] - y_pred[s, j]
        total += error * error
    sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_squared_error_loops(y_pred, y_true, sample_losses):
    """``squared_error_sample`` for every sample."""
    for s in prange(y_pred.shape[0]):
        squared_error_sample(y_pred, y_true, sample_losses, s)


def mean_squared_error_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        squared_error_sample(y_pred, y_true, sample_losses, s)


def mean_squared_error_numpy(y_pred, y_true, sample_losses):
    """Twin: ``np.mean((y_true - y_pred) ** 2, axis=-1)``."""
    sample_losses[...] = np.mean((y_true - y_pred) ** 2, axis=-1)


@body
def squared_error_backward_element(dvalues, y_true, dinputs, s, j):
    """d/dy_pred of ``(y_true - y_pred) ** 2`` is ``-2 * (y_true - y_pred)``."""
    minus_two = dinputs.dtype.type(-2)
    n = dinputs.dtype.type(dvalues.shape[0])
    outputs = dinputs.dtype.type(dvalues.shape[1])
    dinputs[s, j] = minus_two * (y_true[s, j] - dvalues[s, j]) / outputs / n


def mean_squared_error_backward_loops(dvalues, y_true, dinputs):
    """``squared_error_backward_element`` for every element, a ``prange`` over samples (an
    element body: see ``binary_crossentropy_backward_loops``)."""
    for s in prange(dvalues.shape[0]):
        for j in range(dvalues.shape[1]):
            squared_error_backward_element(dvalues, y_true, dinputs, s, j)


def mean_squared_error_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < dvalues.shape[0]:
        for j in range(dvalues.shape[1]):
            squared_error_backward_element(dvalues, y_true, dinputs, s, j)


def mean_squared_error_backward_numpy(dvalues, y_true, dinputs):
    """Twin: the book's ``-2 * (y_true - dvalues) / outputs / samples``."""
    gradient = -2 * (y_true - dvalues) / dvalues.shape[1]
    dinputs[...] = gradient / len(dvalues)


# --- Mean absolute error ----------------------------------------------------------------------------
#     sample_losses[s] = mean_j |y_true[s, j] - y_pred[s, j]|
#     dinputs[s, j]    = sign(dvalues[s, j] - y_true[s, j]) / n_outputs / n_samples
#
# Note: the book's code writes ``np.sign(y_true - dvalues)``, the *negative* gradient (training
# with it walks away from the targets). d|y_true - y_pred| / dy_pred = sign(y_pred - y_true);
# the finite-difference test in tests/test_backward.py checks the sign used here.

# (Not inlined on the cpu device: 16% slower inlined, 300x3.)
@body(inline=False)
def absolute_error_sample(y_pred, y_true, sample_losses, s):
    """The absolute distance to the target, averaged over the sample's outputs (L1 loss)."""
    n_outputs = y_pred.shape[1]
    total = y_pred.dtype.type(0)
    for j in range(n_outputs):
        total += abs(y_true[s, j] - y_pred[s, j])
    sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_absolute_error_loops(y_pred, y_true, sample_losses):
    """``absolute_error_sample`` for every sample."""
    for s in prange(y_pred.shape[0]):
        absolute_error_sample(y_pred, y_true, sample_losses, s)


def mean_absolute_error_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        absolute_error_sample(y_pred, y_true, sample_losses, s)


def mean_absolute_error_numpy(y_pred, y_true, sample_losses):
    """Twin: ``np.mean(np.abs(y_true - y_pred), axis=-1)``."""
    sample_losses[...] = np.mean(np.abs(y_true - y_pred), axis=-1)


@body
def absolute_error_backward_element(dvalues, y_true, dinputs, s, j):
    """+1 where the prediction is above its target, -1 below, 0 on it (``np.sign``'s choice at
    the kink, where |x| has no derivative); NaN stays NaN."""
    n = dinputs.dtype.type(dvalues.shape[0])
    outputs = dinputs.dtype.type(dvalues.shape[1])
    zero = dinputs.dtype.type(0)
    one = dinputs.dtype.type(1)
    difference = dvalues[s, j] - y_true[s, j]
    if difference > 0:
        sign = one
    elif difference < 0:
        sign = -one
    elif difference == 0:
        sign = zero
    else:
        sign = difference  # NaN
    dinputs[s, j] = sign / outputs / n


def mean_absolute_error_backward_loops(dvalues, y_true, dinputs):
    """``absolute_error_backward_element`` for every element, a ``prange`` over samples (an
    element body: see ``binary_crossentropy_backward_loops``)."""
    for s in prange(dvalues.shape[0]):
        for j in range(dvalues.shape[1]):
            absolute_error_backward_element(dvalues, y_true, dinputs, s, j)


def mean_absolute_error_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < dvalues.shape[0]:
        for j in range(dvalues.shape[1]):
            absolute_error_backward_element(dvalues, y_true, dinputs, s, j)


def mean_absolute_error_backward_numpy(dvalues, y_true, dinputs):
    """Twin: ``np.sign(dvalues - y_true) / outputs / samples``."""
    gradient = np.sign(dvalues - y_true) / dvalues.shape[1]
    dinputs[...] = gradient / len(dvalues)


# --- Accuracy of binary outputs and of regression -------------------------------------------------------
#     correct[k] = 1 if (y_pred[k] > 0.5) == (y_true[k] == 1) else 0
#     correct[k] = 1 if |y_pred[k] - y_true[k]| < precision else 0
#     (twins: the book's ((output > 0.5) * 1) == y, and np.absolute(predictions - y) < precision)

@body
def binary_accuracy_element(y_pred, y_true, correct, k):
    """A sigmoid output above 0.5 predicts 1, else 0; compared with the 0/1 target."""
    prediction = 1 if y_pred[k] > y_pred.dtype.type(0.5) else 0
    correct[k] = 1 if prediction == y_true[k] else 0


def binary_accuracy_loops(y_pred, y_true, correct):
    """``binary_accuracy_element`` for every element."""
    for k in prange(y_pred.shape[0]):
        binary_accuracy_element(y_pred, y_true, correct, k)


def binary_accuracy_kernel(y_pred, y_true, correct):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < y_pred.shape[0]:
        binary_accuracy_element(y_pred, y_true, correct, k)


def binary_accuracy_numpy(y_pred, y_true, correct):
    """Twin: the book's ``predictions = (output > 0.5) * 1; predictions == y``."""
    correct[...] = ((y_pred > 0.5) * 1) == y_true


@body
def regression_accuracy_element(y_pred, y_true, precision, correct, k):
    """A regression prediction counts as right when it is within ``precision`` of its target."""
    correct[k] = 1 if abs(y_pred[k] - y_true[k]) < y_pred.dtype.type(precision) else 0


def regression_accuracy_loops(y_pred, y_true, precision, correct):
    """``regression_accuracy_element`` for every element."""
    for k in prange(y_pred.shape[0]):
        regression_accuracy_element(y_pred, y_true, precision, correct, k)


def regression_accuracy_kernel(y_pred, y_true, precision, correct):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < y_pred.shape[0]:
        regression_accuracy_element(y_pred, y_true, precision, correct, k)


def regression_accuracy_numpy(y_pred, y_true, precision, correct):
    """Twin: the book's ``np.absolute(predictions - y) < precision``."""
    correct[...] = np.absolute(y_pred - y_true) < y_pred.dtype.type(precision)
