"""The functional API: validate, convert, allocate, then run the selected device's kernel.

This is the only place where shapes, dtypes and labels are checked. numba does not bounds-check,
so nothing reaches a kernel before it is known to fit: a wrong shape or an out-of-range label
gets a ``ValueError``/``TypeError`` here that names the shapes or values, never a crash or
garbage from foreign memory.

Conversions: lists and integer arrays become float64 arrays (float32 stays float32, as numpy
would keep it); mixed float32/float64 arguments compute in float64; non-contiguous arrays are
copied to contiguous ones. Every function takes ``device=`` (see ``loopnet.devices``).
"""

from __future__ import annotations

import numpy as np

from loopnet.devices import backend as _backend

__all__ = [
    "dense_forward",
    "relu_forward",
    "softmax_forward",
    "categorical_crossentropy",
    "accuracy",
    "mean",
    "to_numpy",
]


# --- Validation helpers ------------------------------------------------------------------------

def _array(x, name: str) -> np.ndarray:
    """``x`` as an ndarray of numbers, with errors that name the argument."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except ValueError as err:
            raise ValueError(
                f"{name} is ragged: every row must have the same length ({err})"
            ) from None
    if arr.dtype == object:
        raise TypeError(f"{name} must hold numbers only, got a ragged or mixed sequence (dtype object)")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 when every argument fits in it (float32, float16, small ints), else float64."""
    dtype = np.result_type(*(a.dtype for a in arrays), np.float32)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _contiguous(arr: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_not_empty(arr: np.ndarray, name: str) -> None:
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): nothing to compute on an empty batch")


def _check_ndim(arr: np.ndarray, name: str, allowed: tuple[int, ...], meaning: str) -> None:
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must be {meaning}, got a {arr.ndim}-D array of shape {arr.shape}")


def _class_targets(y_true, n_samples: int, n_classes: int, y_pred_shape) -> np.ndarray:
    """Labels as a contiguous intp array of class indices in ``[0, n_classes)``.

    Accepts class indices ``(n_samples,)`` (integers, or floats holding whole numbers) or one-hot
    rows ``(n_samples, n_classes)``, which are turned into indices after checking each row is
    one-hot.
    """
    labels = _array(y_true, "y_true")
    if labels.ndim == 2:
        if labels.shape != tuple(y_pred_shape):
            raise ValueError(
                f"one-hot y_true has shape {labels.shape} but y_pred has shape {tuple(y_pred_shape)}; "
                "they must match (or pass class indices of shape (n_samples,))"
            )
        _check_one_hot(labels)
        return np.ascontiguousarray(np.argmax(labels, axis=1), dtype=np.intp)
    if labels.ndim != 1:
        raise ValueError(
            f"y_true must be class indices (n_samples,) or one-hot (n_samples, n_classes), "
            f"got shape {labels.shape}"
        )
    if labels.shape[0] != n_samples:
        raise ValueError(
            f"y_true has {labels.shape[0]} labels but y_pred has {n_samples} samples"
        )
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            s = int(np.argmax(bad))
            raise ValueError(
                f"y_true must hold integer class indices, got {labels[s]!r} at position {s}"
            )
    if labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0:
            s = int(np.argmin(labels))
            raise ValueError(
                f"y_true has a negative class index {labels[s]:g} at position {s}; "
                f"labels must be in [0, {n_classes})"
            )
        if hi >= n_classes:
            s = int(np.argmax(labels))
            raise ValueError(
                f"y_true has class index {labels[s]:g} at position {s}, but y_pred has only "
                f"{n_classes} classes (valid labels: 0..{n_classes - 1})"
            )
    return np.ascontiguousarray(labels, dtype=np.intp)


def _check_one_hot(labels: np.ndarray) -> None:
    """Every row of a one-hot array holds a single 1 and zeros elsewhere."""
    ones = labels == 1
    valid = ((labels == 0) | ones).all(axis=1) & (ones.sum(axis=1) == 1)
    if not valid.all():
        s = int(np.argmin(valid))
        raise ValueError(f"y_true row {s} is not one-hot: {labels[s].tolist()}")


def _probabilities(y_pred, name: str = "y_pred") -> np.ndarray:
    probs = _array(y_pred, name)
    _check_ndim(probs, name, (2,), "2-D (n_samples, n_classes)")
    _check_not_empty(probs, name)
    return _contiguous(probs, _float_dtype(probs))


# --- Dense ----------------------------------------------------------------------------------------

def dense_forward(inputs, weights, biases, *, device: str | None = None):
    """A layer of neurons: ``output = inputs @ weights + biases`` as loops.

    ``inputs``  (n_samples, n_inputs), or one sample (n_inputs,)
    ``weights`` (n_inputs, n_neurons), or one neuron's weights (n_inputs,)
    ``biases``  (n_neurons,) or (1, n_neurons); a scalar is used for every neuron

    Returns (n_samples, n_neurons); one sample gives a vector (n_neurons,), and one sample into
    one neuron gives a scalar, as ``np.dot`` does in the notes::

        >>> dense_forward([1.2, 5.1, 2.1], [3.1, 2.1, 8.7], 3)     # the notes' first neuron
        35.7
    """
    x = _array(inputs, "inputs")
    w = _array(weights, "weights")
    b = _array(biases, "biases")
    _check_ndim(x, "inputs", (1, 2), "1-D (n_inputs,) or 2-D (n_samples, n_inputs)")
    _check_ndim(w, "weights", (1, 2), "1-D (n_inputs,) or 2-D (n_inputs, n_neurons)")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"shapes {x.shape} and {w.shape} not aligned: "
            f"{x.shape[-1]} (dim {x.ndim - 1}) != {w.shape[0]} (dim 0)"
        )
    _check_not_empty(x, "inputs")
    _check_not_empty(w, "weights")
    n_inputs = w.shape[0]
    n_neurons = w.shape[1] if w.ndim == 2 else 1
    if b.ndim == 0:
        b = np.full(n_neurons, b)
    elif b.shape not in ((n_neurons,), (1, n_neurons)):
        raise ValueError(
            f"biases must have shape ({n_neurons},) or (1, {n_neurons}) to match the "
            f"{n_neurons} neurons of weights {w.shape}, got shape {b.shape}"
        )
    dtype = _float_dtype(x, w, b)
    be = _backend(device)
    x2 = _contiguous(x.reshape(-1, n_inputs), dtype)
    w2 = _contiguous(w.reshape(n_inputs, n_neurons), dtype)
    b1 = _contiguous(b.reshape(n_neurons), dtype)
    output = be.empty((x2.shape[0], n_neurons), dtype)
    be.dense_forward(x2, w2, b1, output)
    if x.ndim == 1 and w.ndim == 1:
        return output[0, 0]
    if x.ndim == 1:
        return output[0]
    if w.ndim == 1:
        return output[:, 0]
    return output


# --- Activations ---------------------------------------------------------------------------------

def relu_forward(inputs, *, device: str | None = None):
    """Rectified linear unit, element-wise: ``max(0, x)``; any shape; NaN stays NaN."""
    x = _array(inputs, "inputs")
    _check_not_empty(x, "inputs")
    dtype = _float_dtype(x)
    flat = _contiguous(x, dtype).reshape(-1)
    be = _backend(device)
    output = be.empty(flat.shape, dtype)
    be.relu_forward(flat, output)
    return output.reshape(x.shape)


def softmax_forward(inputs, *, device: str | None = None):
    """Softmax of each row (or of one 1-D vector), max-subtracted so large values cannot overflow.

    Rows of the result lie in [0, 1] and sum to 1; adding a constant to a row changes nothing.
    """
    x = _array(inputs, "inputs")
    _check_ndim(x, "inputs", (1, 2), "1-D (n_classes,) or 2-D (n_samples, n_classes)")
    _check_not_empty(x, "inputs")
    dtype = _float_dtype(x)
    rows = _contiguous(x.reshape(-1, x.shape[-1]), dtype)
    be = _backend(device)
    output = be.empty(rows.shape, dtype)
    be.softmax_forward(rows, output)
    return output.reshape(x.shape)


# --- Losses and metrics --------------------------------------------------------------------------

def categorical_crossentropy(y_pred, y_true, *, device: str | None = None):
    """Per-sample categorical cross-entropy ``-log(clip(p_correct, 1e-7, 1 - 1e-7))``.

    ``y_pred`` (n_samples, n_classes) probabilities (a softmax output); ``y_true`` class indices
    (n_samples,) or one-hot (n_samples, n_classes). Returns (n_samples,); ``mean`` of it is the
    notes' loss.
    """
    probs = _probabilities(y_pred)
    n_samples, n_classes = probs.shape
    labels = _array(y_true, "y_true")
    be = _backend(device)
    sample_losses = be.empty((n_samples,), probs.dtype)
    if labels.ndim == 2:
        if labels.shape != probs.shape:
            raise ValueError(
                f"one-hot y_true has shape {labels.shape} but y_pred has shape {probs.shape}; "
                "they must match (or pass class indices of shape (n_samples,))"
            )
        _check_one_hot(labels)
        be.categorical_crossentropy_onehot(probs, _contiguous(labels, probs.dtype), sample_losses)
    else:
        targets = _class_targets(labels, n_samples, n_classes, probs.shape)
        be.categorical_crossentropy(probs, targets, sample_losses)
    return sample_losses


def accuracy(y_pred, y_true, *, device: str | None = None) -> float:
    """Fraction of samples whose most confident class (first maximum) is the target class."""
    probs = _probabilities(y_pred)
    targets = _class_targets(y_true, probs.shape[0], probs.shape[1], probs.shape)
    be = _backend(device)
    correct = be.empty((probs.shape[0],), probs.dtype)
    be.accuracy(probs, targets, correct)
    return mean(correct, device=device)


def mean(values, *, device: str | None = None) -> float:
    """Mean of a 1-D array as a Python float, summed in float64 in a fixed order."""
    v = _array(values, "values")
    _check_not_empty(v, "values")
    v = _contiguous(v.reshape(-1), _float_dtype(v))
    be = _backend(device)
    output = be.empty((1,), np.float64)
    be.mean(v, output)
    return float(be.to_numpy(output)[0])


def to_numpy(array) -> np.ndarray:
    """Any loopnet output (host or device array) as a numpy array on the host."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.asarray(array)
