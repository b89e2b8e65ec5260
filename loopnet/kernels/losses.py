"""Losses and metrics on class probabilities: categorical cross-entropy and accuracy.

Index legend: s = sample, j = class.
Shapes: y_pred (n_samples, n_classes) probabilities; class_targets (n_samples,) integer labels;
        y_true (n_samples, n_classes) one-hot; sample_losses / correct (n_samples,).

Predictions are clipped to [1e-7, 1 - 1e-7] before the log, as the notes do: a confident wrong
prediction of exactly 0 would give log(0) = -inf and one such sample would make the mean loss
infinite; clipping caps one sample's loss at -log(1e-7) ~= 16.118. The upper bound is clipped too
so the clipping does not bias the loss towards the confident side.
"""

import numpy as np
from numba import prange

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


def accuracy_numpy(y_pred, class_targets, correct):
    """Twin: ``np.argmax(y_pred, axis=1) == class_targets``."""
    correct[...] = np.argmax(y_pred, axis=1) == class_targets


# --- Mean -----------------------------------------------------------------------------------------
#     output[0] = sum_s values[s] / n_samples      (twin: np.mean(values, dtype=np.float64))

def mean_loops(values, output):
    """Mean in float64, summed serially in index order (a parallel sum would depend on the
    thread count; this is the one loop here that is deliberately not a ``prange``)."""
    total = 0.0
    for s in range(values.shape[0]):
        total += values[s]
    output[0] = total / values.shape[0]


def mean_numpy(values, output):
    """Twin: ``np.mean(values, dtype=np.float64)`` (numpy sums pairwise: equal within rounding)."""
    output[0] = np.mean(values, dtype=np.float64)
