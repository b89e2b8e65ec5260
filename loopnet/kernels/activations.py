"""Activation functions: ReLU and softmax.

Index legend: s = sample, j = class (softmax column), k = flat element index (ReLU works on any
shape: ``loopnet.ops`` hands it the flattened array).
"""

import numpy as np
from numba import prange


# --- ReLU ---------------------------------------------------------------------------------------
#     output[k] = max(0, inputs[k])        (twin: np.maximum(0, inputs))

def relu_forward_loops(inputs, output):
    """Keep positive values, replace the rest by 0.

    ``x > 0 or x != x`` instead of ``max(0, x)``: a NaN must come out as NaN, as
    ``np.maximum`` gives, not be silently turned into 0 (``x != x`` is only true for NaN).
    """
    zero = output.dtype.type(0)
    for k in prange(inputs.shape[0]):
        x = inputs[k]
        if x > 0 or x != x:
            output[k] = x
        else:
            output[k] = zero


def relu_forward_numpy(inputs, output):
    """Twin: ``np.maximum(0, inputs)``."""
    output[...] = np.maximum(0, inputs)


# --- Softmax ------------------------------------------------------------------------------------
#     output[s, j] = exp(inputs[s, j] - max_j inputs[s]) / sum_j exp(inputs[s, j] - max_j inputs[s])
#     (twin: exp_values = np.exp(inputs - inputs.max(axis=1, keepdims=True));
#            exp_values / exp_values.sum(axis=1, keepdims=True))

def softmax_forward_loops(inputs, output):
    """Row-wise softmax, one sample per ``prange`` iteration.

    Subtracting the row's maximum first keeps every exponent <= 0, so ``exp`` lies in (0, 1]
    and cannot overflow for large finite inputs (the notes' overflow trick); the result is the
    same because the factor ``exp(-max)`` cancels in the division. Each row is summed in
    column order by the one iteration that owns it: deterministic for any thread count.
    """
    n_classes = inputs.shape[1]
    for s in prange(inputs.shape[0]):
        row = inputs[s]
        row_max = row[0]
        for j in range(1, n_classes):
            # `or row_max != row_max`: once a NaN is seen it stays the maximum, so the whole
            # row becomes NaN, as the twin's np.max (which propagates NaN) makes it.
            if row[j] > row_max or row[j] != row[j]:
                row_max = row[j]
        norm_base = output.dtype.type(0)
        for j in range(n_classes):
            exp_value = np.exp(row[j] - row_max)
            output[s, j] = exp_value
            norm_base += exp_value
        for j in range(n_classes):
            output[s, j] = output[s, j] / norm_base


def softmax_forward_numpy(inputs, output):
    """Twin: the notes' max-subtracted ``np.exp`` divided by its row sums."""
    exp_values = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
    output[...] = exp_values / np.sum(exp_values, axis=1, keepdims=True)
