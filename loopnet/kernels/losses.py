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
"""

import numpy as np
from numba import prange
import math

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
# They are the loop bodies above them, with the ``prange`` index taken from ``cuda.grid(1)``;
# numba-cuda has no ``np.log``, so they call ``math.log`` (float32 in, float32 out on the GPU).
cuda = None

# Threads of the one block that ``mean_kernel`` runs (a power of two, for its tree reduction).
MEAN_THREADS = 128

CLIP = 1e-7


# --- Categorical cross-entropy from class indices ------------------------------------------------
#     sample_losses[s] = -log(clip(y_pred[s, class_targets[s]]))
#     (twin: -np.log(np.clip(y_pred, 1e-7, 1 - 1e-7)[range(n_samples), class_targets]))

def categorical_crossentropy_loops(y_pred, class_targets, sample_losses):
    """Per-sample loss: minus the log of the probability given to the correct class.

    ``class_targets`` must hold valid class indices (checked in ``loopnet.ops``): numba does
    not bounds-check, a label of -1 would silently read the last class.
    """
    lo = y_pred.dtype.type(CLIP)
    hi = y_pred.dtype.type(1 - CLIP)
    for s in prange(y_pred.shape[0]):
        confidence = y_pred[s, class_targets[s]]
        # if/elif rather than min/max so that a NaN probability stays NaN, as np.clip keeps it.
        if confidence < lo:
            confidence = lo
        elif confidence > hi:
            confidence = hi
        sample_losses[s] = -np.log(confidence)


def categorical_crossentropy_kernel(y_pred, class_targets, sample_losses):
    """CUDA: one thread per sample ``s``, the loop body of ``categorical_crossentropy_loops``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        lo = y_pred.dtype.type(CLIP)
        hi = y_pred.dtype.type(1 - CLIP)
        confidence = y_pred[s, class_targets[s]]
        if confidence < lo:
            confidence = lo
        elif confidence > hi:
            confidence = hi
        sample_losses[s] = -math.log(confidence)


def categorical_crossentropy_numpy(y_pred, class_targets, sample_losses):
    """Twin: the notes' fancy indexing ``y_pred_clipped[range(samples), y_true]``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    sample_losses[...] = -np.log(y_pred_clipped[np.arange(len(y_pred)), class_targets])


# --- Categorical cross-entropy from one-hot targets ---------------------------------------------
#     sample_losses[s] = -log(sum_j clip(y_pred[s, j]) * y_true[s, j])
#     (twin: -np.log(np.sum(np.clip(y_pred, 1e-7, 1 - 1e-7) * y_true, axis=1)))

def categorical_crossentropy_onehot_loops(y_pred, y_true, sample_losses):
    """Per-sample loss with one-hot targets: the zeros of ``y_true`` cancel every wrong class."""
    lo = y_pred.dtype.type(CLIP)
    hi = y_pred.dtype.type(1 - CLIP)
    for s in prange(y_pred.shape[0]):
        correct_confidence = y_pred.dtype.type(0)
        for j in range(y_pred.shape[1]):
            confidence = y_pred[s, j]
            if confidence < lo:
                confidence = lo
            elif confidence > hi:
                confidence = hi
            correct_confidence += confidence * y_true[s, j]
        sample_losses[s] = -np.log(correct_confidence)


def categorical_crossentropy_onehot_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``, summing its row in class order (deterministic)."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        lo = y_pred.dtype.type(CLIP)
        hi = y_pred.dtype.type(1 - CLIP)
        correct_confidence = y_pred.dtype.type(0)
        for j in range(y_pred.shape[1]):
            confidence = y_pred[s, j]
            if confidence < lo:
                confidence = lo
            elif confidence > hi:
                confidence = hi
            correct_confidence += confidence * y_true[s, j]
        sample_losses[s] = -math.log(correct_confidence)


def categorical_crossentropy_onehot_numpy(y_pred, y_true, sample_losses):
    """Twin: the notes' one-hot branch ``np.sum(y_pred_clipped * y_true, axis=1)``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    sample_losses[...] = -np.log(np.sum(y_pred_clipped * y_true, axis=1))


# --- Accuracy -----------------------------------------------------------------------------------
#     correct[s] = 1 if argmax_j y_pred[s, j] == class_targets[s] else 0
#     (twin: np.argmax(y_pred, axis=1) == class_targets)

def accuracy_loops(y_pred, class_targets, correct):
    """1 where the most confident class is the target, else 0 (``ops.accuracy`` takes the mean).

    Ties go to the first maximum and a NaN counts as the maximum, as ``np.argmax`` decides.
    """
    for s in prange(y_pred.shape[0]):
        row = y_pred[s]
        best = 0
        for j in range(1, row.shape[0]):
            if row[best] != row[best]:
                break
            if row[j] > row[best] or row[j] != row[j]:
                best = j
        correct[s] = 1 if best == class_targets[s] else 0


def accuracy_kernel(y_pred, class_targets, correct):
    """CUDA: one thread per sample ``s``, the loop body of ``accuracy_loops`` (first maximum)."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        row = y_pred[s]
        best = 0
        for j in range(1, row.shape[0]):
            if row[best] != row[best]:
                break
            if row[j] > row[best] or row[j] != row[j]:
                best = j
        correct[s] = 1 if best == class_targets[s] else 0


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
    """CUDA: one block of ``MEAN_THREADS`` threads. Thread ``t`` sums ``values[t]``,
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

def categorical_crossentropy_backward_loops(dvalues, class_targets, dinputs):
    """d(-log p_target) / dp = -1 / p_target, and 0 for every other class.

    The book writes ``-y_true / dvalues`` on one-hot rows; with class indices only the target
    column is non-zero. (The one-hot form also gives NaN for ``0 / 0`` where a wrong class has
    probability exactly 0; writing the zeros directly avoids it.)
    """
    n_samples = dvalues.shape[0]
    n = dinputs.dtype.type(n_samples)
    zero = dinputs.dtype.type(0)
    minus_one = dinputs.dtype.type(-1)
    for s in prange(n_samples):
        target = class_targets[s]
        for j in range(dvalues.shape[1]):
            if j == target:
                dinputs[s, j] = minus_one / dvalues[s, j] / n
            else:
                dinputs[s, j] = zero


def categorical_crossentropy_backward_kernel(dvalues, class_targets, dinputs):
    """CUDA: one thread per sample ``s``, the row body of
    ``categorical_crossentropy_backward_loops``."""
    s = cuda.grid(1)
    n_samples = dvalues.shape[0]
    if s < n_samples:
        n = dinputs.dtype.type(n_samples)
        minus_one = dinputs.dtype.type(-1)
        target = class_targets[s]
        for j in range(dvalues.shape[1]):
            if j == target:
                dinputs[s, j] = minus_one / dvalues[s, j] / n
            else:
                dinputs[s, j] = 0


def categorical_crossentropy_backward_numpy(dvalues, class_targets, dinputs):
    """Twin: zeros, then ``-1 / dvalues[range(n_samples), class_targets] / n_samples``."""
    rows = np.arange(len(dvalues))
    dinputs[...] = 0
    dinputs[rows, class_targets] = -1 / dvalues[rows, class_targets] / len(dvalues)


# --- Softmax + categorical cross-entropy, fused backward ---------------------------------------------
#     dinputs[s, j] = (softmax_output[s, j] - one_hot[s, j]) / n_samples
#     (twin: dinputs = softmax_output.copy(); dinputs[range(n), class_targets] -= 1; dinputs /= n)

def softmax_crossentropy_backward_loops(softmax_output, class_targets, dinputs):
    """The gradient of the mean cross-entropy with respect to the softmax *inputs*.

    Chaining softmax's Jacobian with ``-1 / p_target`` collapses to ``p - 1`` on the target
    class and ``p`` elsewhere: no Jacobian, no division by a probability (the book measures it
    ~7x faster than the chained form, and it is exact where ``p_target`` is tiny).
    """
    n_samples = softmax_output.shape[0]
    n = dinputs.dtype.type(n_samples)
    one = dinputs.dtype.type(1)
    for s in prange(n_samples):
        target = class_targets[s]
        for j in range(softmax_output.shape[1]):
            dinput = softmax_output[s, j]
            if j == target:
                dinput = dinput - one
            dinputs[s, j] = dinput / n


def softmax_crossentropy_backward_kernel(softmax_output, class_targets, dinputs):
    """CUDA: one thread per sample ``s``, the row body of
    ``softmax_crossentropy_backward_loops``."""
    s = cuda.grid(1)
    n_samples = softmax_output.shape[0]
    if s < n_samples:
        n = dinputs.dtype.type(n_samples)
        one = dinputs.dtype.type(1)
        target = class_targets[s]
        for j in range(softmax_output.shape[1]):
            dinput = softmax_output[s, j]
            if j == target:
                dinput = dinput - one
            dinputs[s, j] = dinput / n


def softmax_crossentropy_backward_numpy(softmax_output, class_targets, dinputs):
    """Twin: the book's ``dinputs[range(samples), y_true] -= 1; dinputs = dinputs / samples``."""
    dinputs[...] = softmax_output
    dinputs[np.arange(len(softmax_output)), class_targets] -= 1
    dinputs[...] = dinputs / len(softmax_output)


# --- Binary cross-entropy -------------------------------------------------------------------------
#     sample_losses[s] = mean_j -(y_true * log(p) + (1 - y_true) * log(1 - p)),  p = clip(y_pred)
#     dinputs[s, j]    = -(y_true / p - (1 - y_true) / (1 - p)) / n_outputs / n_samples
#     (twin: the book's Loss_BinaryCrossentropy, np.mean(..., axis=-1))

def binary_crossentropy_loops(y_pred, y_true, sample_losses):
    """One independent yes/no question per output (a sigmoid each); the sample's loss is the mean
    over its outputs. Clipped on both sides: ``log(0)`` and ``log(1 - 1)`` are both possible."""
    lo = y_pred.dtype.type(CLIP)
    hi = y_pred.dtype.type(1 - CLIP)
    one = y_pred.dtype.type(1)
    n_outputs = y_pred.shape[1]
    for s in prange(y_pred.shape[0]):
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            p = y_pred[s, j]
            if p < lo:
                p = lo
            elif p > hi:
                p = hi
            t = y_true[s, j]
            total += -(t * np.log(p) + (one - t) * np.log(one - p))
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def binary_crossentropy_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``, the row body of ``binary_crossentropy_loops``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        lo = y_pred.dtype.type(CLIP)
        hi = y_pred.dtype.type(1 - CLIP)
        one = y_pred.dtype.type(1)
        n_outputs = y_pred.shape[1]
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            p = y_pred[s, j]
            if p < lo:
                p = lo
            elif p > hi:
                p = hi
            t = y_true[s, j]
            total += -(t * math.log(p) + (one - t) * math.log(one - p))
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def binary_crossentropy_numpy(y_pred, y_true, sample_losses):
    """Twin: the book's ``np.mean(-(y_true * log(p) + (1 - y_true) * log(1 - p)), axis=-1)``."""
    y_pred_clipped = np.clip(y_pred, CLIP, 1 - CLIP)
    losses = -(y_true * np.log(y_pred_clipped) + (1 - y_true) * np.log(1 - y_pred_clipped))
    sample_losses[...] = np.mean(losses, axis=-1)


def binary_crossentropy_backward_loops(dvalues, y_true, dinputs):
    """d/dp of ``-(t log p + (1 - t) log(1 - p))`` is ``-(t / p - (1 - t) / (1 - p))``."""
    lo = dvalues.dtype.type(CLIP)
    hi = dvalues.dtype.type(1 - CLIP)
    one = dvalues.dtype.type(1)
    n_samples = dvalues.shape[0]
    n_outputs = dvalues.shape[1]
    n = dinputs.dtype.type(n_samples)
    outputs = dinputs.dtype.type(n_outputs)
    for s in prange(n_samples):
        for j in range(n_outputs):
            p = dvalues[s, j]
            if p < lo:
                p = lo
            elif p > hi:
                p = hi
            t = y_true[s, j]
            dinputs[s, j] = -(t / p - (one - t) / (one - p)) / outputs / n


def binary_crossentropy_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``, the row body of ``binary_crossentropy_backward_loops``."""
    s = cuda.grid(1)
    n_samples = dvalues.shape[0]
    if s < n_samples:
        lo = dvalues.dtype.type(CLIP)
        hi = dvalues.dtype.type(1 - CLIP)
        one = dvalues.dtype.type(1)
        n_outputs = dvalues.shape[1]
        n = dinputs.dtype.type(n_samples)
        outputs = dinputs.dtype.type(n_outputs)
        for j in range(n_outputs):
            p = dvalues[s, j]
            if p < lo:
                p = lo
            elif p > hi:
                p = hi
            t = y_true[s, j]
            dinputs[s, j] = -(t / p - (one - t) / (one - p)) / outputs / n


def binary_crossentropy_backward_numpy(dvalues, y_true, dinputs):
    """Twin: the book's ``-(y_true / clipped - (1 - y_true) / (1 - clipped)) / outputs / samples``."""
    clipped_dvalues = np.clip(dvalues, CLIP, 1 - CLIP)
    outputs = dvalues.shape[1]
    gradient = -(y_true / clipped_dvalues - (1 - y_true) / (1 - clipped_dvalues)) / outputs
    dinputs[...] = gradient / len(dvalues)


# --- Mean squared error -----------------------------------------------------------------------------
#     sample_losses[s] = mean_j (y_true[s, j] - y_pred[s, j]) ** 2
#     dinputs[s, j]    = -2 * (y_true[s, j] - dvalues[s, j]) / n_outputs / n_samples

def mean_squared_error_loops(y_pred, y_true, sample_losses):
    """The squared distance to the target, averaged over the sample's outputs (L2 loss)."""
    n_outputs = y_pred.shape[1]
    for s in prange(y_pred.shape[0]):
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            error = y_true[s, j] - y_pred[s, j]
            total += error * error
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_squared_error_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``, the row body of ``mean_squared_error_loops``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        n_outputs = y_pred.shape[1]
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            error = y_true[s, j] - y_pred[s, j]
            total += error * error
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_squared_error_numpy(y_pred, y_true, sample_losses):
    """Twin: ``np.mean((y_true - y_pred) ** 2, axis=-1)``."""
    sample_losses[...] = np.mean((y_true - y_pred) ** 2, axis=-1)


def mean_squared_error_backward_loops(dvalues, y_true, dinputs):
    """d/dy_pred of ``(y_true - y_pred) ** 2`` is ``-2 * (y_true - y_pred)``."""
    n_samples = dvalues.shape[0]
    n_outputs = dvalues.shape[1]
    minus_two = dinputs.dtype.type(-2)
    n = dinputs.dtype.type(n_samples)
    outputs = dinputs.dtype.type(n_outputs)
    for s in prange(n_samples):
        for j in range(n_outputs):
            dinputs[s, j] = minus_two * (y_true[s, j] - dvalues[s, j]) / outputs / n


def mean_squared_error_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``, the row body of ``mean_squared_error_backward_loops``."""
    s = cuda.grid(1)
    n_samples = dvalues.shape[0]
    if s < n_samples:
        n_outputs = dvalues.shape[1]
        minus_two = dinputs.dtype.type(-2)
        n = dinputs.dtype.type(n_samples)
        outputs = dinputs.dtype.type(n_outputs)
        for j in range(n_outputs):
            dinputs[s, j] = minus_two * (y_true[s, j] - dvalues[s, j]) / outputs / n


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

def mean_absolute_error_loops(y_pred, y_true, sample_losses):
    """The absolute distance to the target, averaged over the sample's outputs (L1 loss)."""
    n_outputs = y_pred.shape[1]
    for s in prange(y_pred.shape[0]):
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            total += abs(y_true[s, j] - y_pred[s, j])
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_absolute_error_kernel(y_pred, y_true, sample_losses):
    """CUDA: one thread per sample ``s``, the row body of ``mean_absolute_error_loops``."""
    s = cuda.grid(1)
    if s < y_pred.shape[0]:
        n_outputs = y_pred.shape[1]
        total = y_pred.dtype.type(0)
        for j in range(n_outputs):
            total += abs(y_true[s, j] - y_pred[s, j])
        sample_losses[s] = total / y_pred.dtype.type(n_outputs)


def mean_absolute_error_numpy(y_pred, y_true, sample_losses):
    """Twin: ``np.mean(np.abs(y_true - y_pred), axis=-1)``."""
    sample_losses[...] = np.mean(np.abs(y_true - y_pred), axis=-1)


def mean_absolute_error_backward_loops(dvalues, y_true, dinputs):
    """+1 where the prediction is above its target, -1 below, 0 on it (``np.sign``'s choice at
    the kink, where |x| has no derivative); NaN stays NaN."""
    n_samples = dvalues.shape[0]
    n_outputs = dvalues.shape[1]
    n = dinputs.dtype.type(n_samples)
    outputs = dinputs.dtype.type(n_outputs)
    zero = dinputs.dtype.type(0)
    one = dinputs.dtype.type(1)
    for s in prange(n_samples):
        for j in range(n_outputs):
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


def mean_absolute_error_backward_kernel(dvalues, y_true, dinputs):
    """CUDA: one thread per sample ``s``, the row body of ``mean_absolute_error_backward_loops``."""
    s = cuda.grid(1)
    n_samples = dvalues.shape[0]
    if s < n_samples:
        n_outputs = dvalues.shape[1]
        n = dinputs.dtype.type(n_samples)
        outputs = dinputs.dtype.type(n_outputs)
        zero = dinputs.dtype.type(0)
        one = dinputs.dtype.type(1)
        for j in range(n_outputs):
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


def mean_absolute_error_backward_numpy(dvalues, y_true, dinputs):
    """Twin: ``np.sign(dvalues - y_true) / outputs / samples``."""
    gradient = np.sign(dvalues - y_true) / dvalues.shape[1]
    dinputs[...] = gradient / len(dvalues)


# --- Accuracy of binary outputs and of regression -------------------------------------------------------
#     correct[k] = 1 if (y_pred[k] > 0.5) == (y_true[k] == 1) else 0
#     correct[k] = 1 if |y_pred[k] - y_true[k]| < precision else 0
#     (twins: the book's ((output > 0.5) * 1) == y, and np.absolute(predictions - y) < precision)

def binary_accuracy_loops(y_pred, y_true, correct):
    """A sigmoid output above 0.5 predicts 1, else 0; compared with the 0/1 target."""
    half = y_pred.dtype.type(0.5)
    for k in prange(y_pred.shape[0]):
        prediction = 1 if y_pred[k] > half else 0
        correct[k] = 1 if prediction == y_true[k] else 0


def binary_accuracy_kernel(y_pred, y_true, correct):
    """CUDA: one thread per element ``k``, the loop body of ``binary_accuracy_loops``."""
    k = cuda.grid(1)
    if k < y_pred.shape[0]:
        half = y_pred.dtype.type(0.5)
        prediction = 1 if y_pred[k] > half else 0
        correct[k] = 1 if prediction == y_true[k] else 0


def binary_accuracy_numpy(y_pred, y_true, correct):
    """Twin: the book's ``predictions = (output > 0.5) * 1; predictions == y``."""
    correct[...] = ((y_pred > 0.5) * 1) == y_true


def regression_accuracy_loops(y_pred, y_true, precision, correct):
    """A regression prediction counts as right when it is within ``precision`` of its target."""
    limit = y_pred.dtype.type(precision)
    for k in prange(y_pred.shape[0]):
        correct[k] = 1 if abs(y_pred[k] - y_true[k]) < limit else 0


def regression_accuracy_kernel(y_pred, y_true, precision, correct):
    """CUDA: one thread per element ``k``, the loop body of ``regression_accuracy_loops``."""
    k = cuda.grid(1)
    if k < y_pred.shape[0]:
        limit = y_pred.dtype.type(precision)
        correct[k] = 1 if abs(y_pred[k] - y_true[k]) < limit else 0


def regression_accuracy_numpy(y_pred, y_true, precision, correct):
    """Twin: the book's ``np.absolute(predictions - y) < precision``."""
    correct[...] = np.absolute(y_pred - y_true) < y_pred.dtype.type(precision)
