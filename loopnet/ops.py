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

import importlib

import numpy as np

from loopnet.devices import backend as _backend
from loopnet.devices import host_backend  # noqa: F401  (the fast paths' backend; GPU: None)
from loopnet.validate import count, is_device_array, number
from loopnet.validate import penalties as checked_penalties

__all__ = [
    "dense_forward",
    "relu_forward",
    "softmax_forward",
    "categorical_crossentropy",
    "accuracy",
    "mean",
    "to_numpy",
    "to_device",
    # training (backward passes, losses, regularization, dropout, optimizer updates)
    "dense_backward",
    "relu_backward",
    "softmax_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "linear_forward",
    "linear_backward",
    "categorical_crossentropy_backward",
    "softmax_crossentropy_backward",
    "binary_crossentropy",
    "binary_crossentropy_backward",
    "mean_squared_error",
    "mean_squared_error_backward",
    "mean_absolute_error",
    "mean_absolute_error_backward",
    "binary_accuracy",
    "regression_accuracy",
    "regularization_loss",
    "regularization_backward",
    "dropout_mask",
    "dropout_forward",
    "dropout_backward",
    "zeros",
    "sgd_update",
    "adagrad_update",
    "rmsprop_update",
    "adam_update",
]


# --- Validation helpers ------------------------------------------------------------------------

def _gpu():
    """The cuda backend module (imported only once a GPU array is seen)."""
    return importlib.import_module("loopnet.backends.cuda")


def _host(arr):
    """A host copy of a GPU array (labels are validated on the host, then copied over once)."""
    return _gpu().to_numpy(arr) if is_device_array(arr) else arr


def _array(x, name: str) -> np.ndarray:
    """``x`` as an ndarray of numbers, with errors that name the argument."""
    if is_device_array(x):
        arr = x if hasattr(x, "copy_to_host") else _gpu().asarray(x)  # CuPy/torch: numba view
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except ValueError as err:
            raise ValueError(
                f"{name} is ragged: every row must have the same length ({err})"
            ) from None
    if arr.dtype == object:
        raise TypeError(f"{name} must hold numbers only, {_first_non_number(arr)}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _first_non_number(arr: np.ndarray) -> str:
    """What made numpy fall back to dtype object, for ``_array``'s message."""
    for index, value in np.ndenumerate(arr):
        if isinstance(value, int) and not -2**63 <= value < 2**64:  # beyond int64/uint64
            return (f"got the integer {value} at index {index}, too large for a fixed-size "
                    f"integer (write it as a float: {float(value):g})")
        if not isinstance(value, (int, float, np.number)):
            return f"got {type(value).__name__} {value!r} at index {index}"
    return "got a ragged or mixed sequence (dtype object)"


def _result_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 when every argument fits in it (float32, float16, small ints), else float64."""
    first = arrays[0].dtype
    if first in _FLOATS and all(a.dtype == first for a in arrays):  # the common case, fast
        return first
    dtype = np.result_type(*(a.dtype for a in arrays), np.float32)
    return dtype if dtype in _FLOATS else np.dtype(np.float64)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ndarray = np.ndarray       # (a module global: read in ~17 ns, np.ndarray in ~35)


# --- The fast path -----------------------------------------------------------------------------
# A layer calls its ops with arrays that already are what the kernels take: numpy arrays of one
# float dtype, C-contiguous, not empty. ``_ready`` says so with a few attribute reads (no
# conversion, no copy), and an op then hands them to a host backend's kernel at once; every
# other input takes the full path below (conversions, messages). The fast path's conditions
# are the very checks of the full path, so no bad input gets through it.

def _ready(arrays, dtype=None) -> bool:
    """Every array is a non-empty C-contiguous numpy array of one float dtype (``dtype`` when
    given)."""
    for arr in arrays:
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous or not arr.size:
            return False
        if dtype is None:
            dtype = arr.dtype
            if dtype not in _FLOATS:
                return False
        elif arr.dtype != dtype:
            return False
    return True


def _fresh(be, out, shape, dtype, inputs):
    """The fast path's ``_output``: a new array from the backend when ``out`` is None; ``out``
    when it is a usable buffer of this shape and dtype that shares no memory with ``inputs``;
    else None (the caller then takes the full path, which copies or explains)."""
    if out is None:
        return be.empty(shape, dtype)
    if type(out) is not np.ndarray or out.shape != shape or out.dtype != dtype:
        return None
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable):
        return None
    # Views of numpy-owned memory name the array that owns it as their ``base``: arrays of
    # different owners do not overlap (a few attribute reads); anything else asks
    # np.may_share_memory. Written out, ``out``'s owner found once: this runs on every op, up
    # to three outputs against three inputs (a function per pair cost ~1 us a dense backward).
    base = out.base
    root = out if base is None else base
    known = type(root) is np.ndarray and root.base is None
    for a in inputs:
        base = a.base
        root_a = a if base is None else base
        if (not known or root_a is root or type(root_a) is not np.ndarray
                or root_a.base is not None) and np.may_share_memory(out, a):
            return None
    return out


def _three_ready(first, second, third) -> bool:
    """``_ready`` for a dense layer's three arrays, written out (its forward and backward ask
    at every step: 1.0 against 0.5 us with their shapes): numpy arrays of one float dtype,
    C-contiguous (their callers check the shapes, and that none is empty)."""
    if type(first) is not _ndarray or type(second) is not _ndarray \
            or type(third) is not _ndarray:
        return False
    dtype = first.dtype
    return (second.dtype == dtype and third.dtype == dtype and dtype in _FLOATS
            and first.flags.c_contiguous and second.flags.c_contiguous
            and third.flags.c_contiguous)


def _dense_backward_ready(dvalues, inputs, weights) -> bool:
    """``dense_backward``'s arrays already are what its kernels take: 2-D numpy arrays of one
    float dtype, C-contiguous, not empty, their shapes aligned."""
    if not _three_ready(dvalues, inputs, weights):
        return False
    shape, sides = dvalues.shape, weights.shape
    if len(shape) != 2 or len(sides) != 2:
        return False
    n_samples = shape[0]
    # (dvalues (n_samples, n_neurons), inputs (n_samples, n_inputs), weights (n_inputs,
    # n_neurons), none of the three sides 0)
    return bool(inputs.shape == (n_samples, sides[0]) and shape[1] == sides[1]
                and n_samples and sides[0] and sides[1])


def _buffer(be, out, shape, dtype):
    """``out`` when it is a C-contiguous writeable numpy array of this shape and dtype, else a
    new array from the backend (the direct paths' reuse of a layer's gradient buffers)."""
    if type(out) is _ndarray and out.shape == shape and out.dtype == dtype:
        flags = out.flags
        if flags.c_contiguous and flags.writeable:
            return out
    return be.empty(shape, dtype)


def dense_backward_direct(dvalues, inputs, weights, biases, dweights, dbiases, dinputs, device,
                          penalties=None):
    """``Dense.backward``'s direct path: ``(dweights, dbiases, dinputs)`` computed by
    the backend's kernels at once, when the backend runs them in one call and checks buffers
    for overlap in one (``cpu``: ``dense_gradients``, ``overlapping``) and every array already
    is what the kernels take: the checks of ``dense_backward``'s fast path, and ``biases``
    (given when the layer has penalties to add) of shape ``(1, n_neurons)`` and the same
    dtype. The previous buffers ``dweights``, ``dbiases``, ``dinputs`` are reused where they
    fit and share no memory with an input or with each other, else new ones are made.
    ``penalties``: the layer's checked ``(weight_l1, weight_l2, bias_l1, bias_l2)`` (with
    ``biases``), whose gradients are then added in the same call (the backend's
    ``dense_penalties``). Otherwise None: the layer then calls ``dense_backward``, which
    converts or explains. (On ``cpu`` a small layer's pass first tries its lane, the whole of
    it in one compiled call: ``cpu.dense_backward_lane``.)"""
    be = host_backend(device)
    lane = getattr(be, "dense_backward_lane", None)
    if lane is not None:        # (cpu: a small layer's backward in one compiled call)
        grads = lane(dvalues, inputs, weights, biases, dweights, dbiases, dinputs, penalties)
        if grads is not None:
            return grads
    gradients = getattr(be, "dense_gradients", None)
    if gradients is None or not _dense_backward_ready(dvalues, inputs, weights):
        return None
    dtype = dvalues.dtype
    bias_shape = (1, weights.shape[1])
    if biases is None:
        biases = weights                     # (only read by the overlap check)
    elif (type(biases) is not np.ndarray or biases.shape != bias_shape
            or biases.dtype != dtype or not biases.flags.c_contiguous):
        return None
    dw = _buffer(be, dweights, weights.shape, dtype)
    db = _buffer(be, dbiases, bias_shape, dtype)
    di = _buffer(be, dinputs, inputs.shape, dtype)
    if be.overlapping(dw, db, di, dvalues, inputs, weights, biases):
        dw, db, di = (be.empty(weights.shape, dtype), be.empty(bias_shape, dtype),
                      be.empty(inputs.shape, dtype))
    gradients(inputs, dvalues, weights, dw, db.reshape(-1), di)
    if penalties is not None:
        be.dense_penalties(weights, biases, *penalties, dw, db)   # (a host backend with
    return dw, db, di                                             # dense_gradients has it)


# A cold pass of a learner's loop on cpu, while one lasts: the ``cpu_helper.Ahead`` the cpu
# device opens when numba compiles one of its kernels here (a cold cache), else None, which is
# all a layer's forward and backward look at.
ahead = None


def ahead_forward(layer, inputs) -> None:
    """A dense ``layer``'s training forward on ``inputs`` in a cold pass: its backward's kernels
    are handed to the compile helper, to be made while this process goes on (a layer whose
    jobs were all handed over before ends the pass's hand-overs, until the next compile)."""
    cold = ahead
    if cold is None or not cold.wanted:
        return
    be = host_backend(layer.device)
    jobs_of = getattr(be, "ahead_jobs", None)
    if jobs_of is None or type(inputs) is not np.ndarray or inputs.ndim != 2:
        return
    penalties = (layer.weight_regularizer_l1 > 0 or layer.weight_regularizer_l2 > 0
                 or layer.bias_regularizer_l1 > 0 or layer.bias_regularizer_l2 > 0)
    if not cold.add(jobs_of(inputs.shape[0], layer.n_inputs, layer.n_neurons, inputs.dtype,
                            penalties)):
        cold.wanted = False


def ahead_backward() -> None:
    """A backward in a cold pass: the pass ends once every job handed over is done (the
    helper's waited for, the rest run here)."""
    global ahead
    cold, ahead = ahead, None
    if cold is not None:
        cold.finish()


def _check_host(be, *arrays) -> None:
    """A GPU array given to a host device: a clear error, not numba's 'can't unbox array'."""
    if be.HOST:
        for a in arrays:     # (a loop, not any() over a generator: 0.17 against 0.34 us)
            if type(a) is not np.ndarray and is_device_array(a):
                raise TypeError("an input is a GPU array but the op runs on a host device "
                                f"({be.__name__.rsplit('.', 1)[-1]}): run it with "
                                "device='cuda', or bring the array back with "
                                "loopnet.to_numpy(...)")


def _checked_backend(device, *arrays):
    """The backend of ``device``, after ``_check_host`` of ``arrays`` (host arrays, or None,
    on a host device: at once, as the losses ask at every call)."""
    be = host_backend(device)
    if be is not None:
        for a in arrays:
            if a is not None and type(a) is not _ndarray:
                break
        else:
            return be
    be = _backend(device)
    _check_host(be, *arrays)
    return be


def _unshared(inputs, outputs):
    """``inputs``, each replaced by a copy where it shares memory with an output (so that a
    kernel never reads an input it has already overwritten)."""
    return tuple(a.copy() if isinstance(a, np.ndarray) and any(
        isinstance(o, np.ndarray) and np.may_share_memory(a, o) for o in outputs) else a
        for a in inputs)


def as_dtype(x, dtype, name: str = "x"):
    """``x`` (any array-like, or an array on the GPU) as an array of ``dtype``, converted once
    and C-contiguous, validated as every op validates its inputs (the layers' input cast)."""
    return _contiguous(_array(x, name), dtype)


def _contiguous(arr: np.ndarray, dtype) -> np.ndarray:
    if is_device_array(arr):  # converted on the GPU if needed, never through the host
        return _gpu().asarray(arr, dtype)
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_not_empty(arr: np.ndarray, name: str) -> None:
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): nothing to compute on an empty batch")


def _check_ndim(arr: np.ndarray, name: str, allowed: tuple[int, ...], meaning: str) -> None:
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must be {meaning}, got a {arr.ndim}-D array of shape {arr.shape}")


def class_targets(y_true, n_samples: int, n_classes: int, y_pred_shape, be=None, *,
                  name: str = "y_true", pred: str = "y_pred") -> np.ndarray:
    """Labels as a contiguous intp array of class indices in ``[0, n_classes)``.

    Accepts class indices ``(n_samples,)`` (integers, or floats holding whole numbers) or one-hot
    rows ``(n_samples, n_classes)``, which are turned into indices after checking each row is
    one-hot. ``be``, a host backend that has ``class_indices`` (cpu), checks and converts
    integer labels in one compiled pass. Messages call the labels ``name`` and the predictions
    ``pred`` (``Model.train``: ``y`` or ``y_val``, and "the model's output").
    """
    if (type(y_true) is np.ndarray and y_true.ndim == 1 and y_true.dtype.kind in "iu"
            and y_true.shape[0] == n_samples and n_samples):
        # class indices (the fast path; out of range: the messages below)
        # (numba reads native byte order only: big-endian labels take numpy's checks)
        convert = getattr(be, "class_indices", None) if y_true.dtype.isnative else None
        if convert is not None:
            targets = convert(y_true, n_classes)
            if targets is not None:
                return targets
        elif (y_true.dtype.kind == "u" or y_true.min() >= 0) and y_true.max() < n_classes:
            return y_true if y_true.dtype == np.intp and y_true.flags.c_contiguous \
                else np.ascontiguousarray(y_true, dtype=np.intp)
    labels = _host(_array(y_true, name))
    if labels.ndim == 2:
        if labels.shape != tuple(y_pred_shape):
            raise ValueError(
                f"one-hot {name} has shape {labels.shape} but {pred} has shape "
                f"{tuple(y_pred_shape)}; "
                "they must match (or pass class indices of shape (n_samples,))"
            )
        _check_one_hot(labels, name)
        return np.ascontiguousarray(np.argmax(labels, axis=1), dtype=np.intp)
    if labels.ndim != 1:
        raise ValueError(
            f"{name} must be class indices (n_samples,) or one-hot (n_samples, n_classes), "
            f"got shape {labels.shape}"
        )
    if labels.shape[0] != n_samples:
        raise ValueError(
            f"{name} has {labels.shape[0]} labels but {pred} has {n_samples} samples"
        )
    if labels.dtype.kind == "b":
        # numpy would read booleans as a mask, not as classes 0/1: almost surely a mistake.
        raise TypeError(
            f"{name} must hold integer class indices (or one-hot rows), got booleans (dtype bool)"
        )
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            s = int(np.argmax(bad))
            raise ValueError(
                f"{name} must hold integer class indices, got {labels[s].item()!r} at position {s}"
            )
    if labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0:
            s = int(np.argmin(labels))
            raise ValueError(
                f"{name} has a negative class index {labels[s].item()} at position {s}; "
                f"labels must be in [0, {n_classes})"
            )
        if hi >= n_classes:
            s = int(np.argmax(labels))
            raise ValueError(
                f"{name} has class index {labels[s].item()} at position {s}, but {pred} has only "
                f"{n_classes} classes (valid labels: 0..{n_classes - 1})"
            )
    return np.ascontiguousarray(labels, dtype=np.intp)


def _check_one_hot(labels: np.ndarray, name: str = "y_true") -> None:
    """Every row of a one-hot array holds a single 1 and zeros elsewhere."""
    ones = labels == 1
    valid = ((labels == 0) | ones).all(axis=1) & (ones.sum(axis=1) == 1)
    if not valid.all():
        s = int(np.argmin(valid))
        raise ValueError(f"{name} row {s} is not one-hot: {labels[s].tolist()}")


def _probabilities(y_pred, name: str = "y_pred") -> np.ndarray:
    probs = _array(y_pred, name)
    _check_ndim(probs, name, (2,), "2-D (n_samples, n_classes)")
    _check_not_empty(probs, name)
    return _contiguous(probs, _result_dtype(probs))


def _output(be, out, shape, dtype, name: str = "out"):
    """A fresh output array from the backend, or ``out`` after checking it fits (so a training
    loop can hand the same buffer back every step instead of allocating one)."""
    if type(shape) is not tuple:
        shape = tuple(shape)
    if out is None:
        return be.empty(shape, dtype)
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(
            f"{name} buffer has shape {tuple(out.shape)} and dtype {out.dtype}, "
            f"but this result needs shape {shape} and dtype {np.dtype(dtype)}"
        )
    if isinstance(out, np.ndarray) and not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name} buffer must be a writeable C-contiguous array")
    return out


def _same_shape(arr: np.ndarray, name: str, shape, other: str) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(arr.shape)} but {other} has shape {tuple(shape)}; "
            "they must match"
        )


def _writable(arr, name: str):
    """An array a kernel updates in place (parameters, gradients, optimizer state): it must
    already be a contiguous float array, because updating a converted copy would be lost."""
    dtype = getattr(arr, "dtype", None)
    if dtype is None or not hasattr(arr, "shape"):
        raise TypeError(f"{name} must be a float32 or float64 array updated in place, "
                        f"got {type(arr).__name__}")
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64 to be updated in place, got {dtype}")
    if isinstance(arr, np.ndarray) and not (arr.flags.c_contiguous and arr.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous array to be updated in place")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    return arr


def targets_like(y_true, y_pred_shape, dtype, *, name: str = "y_true",
                 pred: str = "y_pred") -> np.ndarray:
    """Targets of a binary or regression loss: the shape of ``y_pred`` (n_samples, n_outputs);
    a vector (n_samples,) is accepted for a single output and reshaped to (n_samples, 1)
    (the book reshapes ``y`` itself; numpy would silently broadcast (n,) against (n, 1) to
    (n, n)). Messages call the targets ``name`` and the predictions ``pred``."""
    labels = _array(y_true, name)
    n_samples, n_outputs = y_pred_shape
    if labels.ndim == 1 and n_outputs == 1 and labels.shape[0] == n_samples:
        labels = labels.reshape(n_samples, 1)
    if tuple(labels.shape) != tuple(y_pred_shape):
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} but {pred} has shape {tuple(y_pred_shape)}; "
            "binary and regression targets need one value per output (n_samples, n_outputs)"
        )
    return _contiguous(labels, dtype)


def _flat_like(x, name: str, dtype=None):
    """An array flattened for an element-wise kernel, plus its original shape."""
    arr = _array(x, name)
    _check_not_empty(arr, name)
    dtype = _result_dtype(arr) if dtype is None else dtype
    return _contiguous(arr, dtype).reshape(-1), arr.shape


# --- Dense ----------------------------------------------------------------------------------------

def _dense_forward_ready(inputs, weights, biases) -> bool:
    """``dense_forward``'s arrays already are what its kernels take: 2-D ``inputs`` and
    ``weights`` whose sides align, ``biases`` of shape (n_neurons,) or (1, n_neurons), numpy
    arrays of one float dtype, C-contiguous, not empty."""
    if not _three_ready(inputs, weights, biases):
        return False
    shape, sides, bias_shape = inputs.shape, weights.shape, biases.shape
    if len(shape) != 2 or len(sides) != 2:
        return False
    return bool((bias_shape == (sides[1],) or bias_shape == (1, sides[1]))
                and shape[1] == sides[0] and shape[0] and sides[0] and sides[1])


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
    be = host_backend(device)
    lane = getattr(be, "dense_forward_lane", None)
    if lane is not None:        # (cpu: a small layer's forward in one compiled call)
        output = lane(inputs, weights, biases)
        if output is not None:
            return output
    if _dense_forward_ready(inputs, weights, biases):
        if be is not None:
            output = be.empty((inputs.shape[0], weights.shape[1]), inputs.dtype)
            be.dense_forward(inputs, weights, biases.ravel(), output)
            return output
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
        b = np.full(n_neurons, b, dtype=b.dtype)
    elif b.shape not in ((n_neurons,), (1, n_neurons)):
        raise ValueError(
            f"biases must have shape ({n_neurons},) or (1, {n_neurons}) to match the "
            f"{n_neurons} neurons of weights {w.shape}, got shape {b.shape}"
        )
    dtype = _result_dtype(x, w, b)
    be = _backend(device)
    _check_host(be, x, w, b)
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


def dense_backward(dvalues, inputs, weights, *, dweights=None, dbiases=None, dinputs=None,
                   device: str | None = None):
    """The three gradients of a dense layer, given ``dvalues`` = dLoss/d(output).

    ``dvalues`` (n_samples, n_neurons), ``inputs`` (n_samples, n_inputs) the layer's forward
    inputs, ``weights`` (n_inputs, n_neurons). Returns ``(dweights, dbiases, dinputs)``::

        dweights = inputs.T @ dvalues        (n_inputs, n_neurons)
        dbiases  = dvalues.sum(axis=0)       (1, n_neurons), as the notes' keepdims=True
        dinputs  = dvalues @ weights.T       (n_samples, n_inputs)

    ``dweights=``, ``dbiases=``, ``dinputs=`` take buffers of those shapes to write into.
    Each element is summed in a fixed order by one thread: same bits for any thread count.
    """
    if _dense_backward_ready(dvalues, inputs, weights):
        be = host_backend(device)
        if be is not None:
            dtype = dvalues.dtype
            sources = (dvalues, inputs, weights)
            # (each buffer also apart from those before it: else the full path explains)
            dw = _fresh(be, dweights, weights.shape, dtype, sources)
            db = (None if dw is None
                  else _fresh(be, dbiases, (1, weights.shape[1]), dtype, sources + (dw,)))
            di = None if db is None else _fresh(be, dinputs, inputs.shape, dtype,
                                                sources + (dw, db))
            if dw is not None and db is not None and di is not None:
                be.dense_backward_weights(inputs, dvalues, dw)
                be.dense_backward_biases(dvalues, db.reshape(-1))
                be.dense_backward_inputs(dvalues, weights, di)
                return dw, db, di
    d = _array(dvalues, "dvalues")
    x = _array(inputs, "inputs")
    w = _array(weights, "weights")
    _check_ndim(d, "dvalues", (2,), "2-D (n_samples, n_neurons)")
    _check_ndim(x, "inputs", (2,), "2-D (n_samples, n_inputs)")
    _check_ndim(w, "weights", (2,), "2-D (n_inputs, n_neurons)")
    _check_not_empty(d, "dvalues")
    _check_not_empty(w, "weights")
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"inputs {x.shape} and weights {w.shape} not aligned: "
            f"{x.shape[1]} (dim 1) != {w.shape[0]} (dim 0)"
        )
    if d.shape != (x.shape[0], w.shape[1]):
        raise ValueError(
            f"dvalues has shape {d.shape} but inputs {x.shape} @ weights {w.shape} gives "
            f"{(x.shape[0], w.shape[1])}: dvalues must have the shape of the layer's output"
        )
    n_samples, n_inputs = x.shape
    n_neurons = w.shape[1]
    dtype = _result_dtype(d, x, w)
    d = _contiguous(d, dtype)
    x = _contiguous(x, dtype)
    w = _contiguous(w, dtype)
    be = _backend(device)
    _check_host(be, d, x, w)
    dweights = _output(be, dweights, (n_inputs, n_neurons), dtype, "dweights")
    dbiases = _output(be, dbiases, (1, n_neurons), dtype, "dbiases")
    dinputs = _output(be, dinputs, (n_samples, n_inputs), dtype, "dinputs")
    outputs = (("dweights", dweights), ("dbiases", dbiases), ("dinputs", dinputs))
    for k, (name, out) in enumerate(outputs):
        for other_name, other in outputs[k + 1:]:
            if out is other or (isinstance(out, np.ndarray) and isinstance(other, np.ndarray)
                                and np.may_share_memory(out, other)):
                raise ValueError(f"the {name} and {other_name} buffers share memory: each "
                                 "gradient needs a buffer of its own")
    # an output that is an input (dinputs=dvalues ...) would be read after it was overwritten:
    # the kernels read a copy of that input instead
    d, x, w = _unshared((d, x, w), (dweights, dbiases, dinputs))
    be.dense_backward_weights(x, d, dweights)
    be.dense_backward_biases(d, dbiases.reshape(n_neurons))
    be.dense_backward_inputs(d, w, dinputs)
    return dweights, dbiases, dinputs


# --- Activations ---------------------------------------------------------------------------------

def relu_forward(inputs, *, device: str | None = None):
    """Rectified linear unit, element-wise: ``max(0, x)``; any shape; NaN stays NaN."""
    return _unary("relu_forward", inputs, "inputs", None, device)


def softmax_forward(inputs, *, device: str | None = None):
    """Softmax of each row (or of one 1-D vector), max-subtracted so large values cannot overflow.

    Rows of the result lie in [0, 1] and sum to 1; adding a constant to a row changes nothing.
    """
    if type(inputs) is np.ndarray and inputs.ndim == 2 and _ready((inputs,)):
        be = host_backend(device)
        if be is not None:
            output = be.empty(inputs.shape, inputs.dtype)
            be.softmax_forward(inputs, output)
            return output
    x = _array(inputs, "inputs")
    _check_ndim(x, "inputs", (1, 2), "1-D (n_classes,) or 2-D (n_samples, n_classes)")
    _check_not_empty(x, "inputs")
    dtype = _result_dtype(x)
    rows = _contiguous(x.reshape(-1, x.shape[-1]), dtype)
    be = _backend(device)
    _check_host(be, rows)
    output = be.empty(rows.shape, dtype)
    be.softmax_forward(rows, output)
    return output.reshape(x.shape)


def _unary(kernel: str, x, name, out, device):
    """Run the element-wise ``kernel`` on one array, flattened; returns the result in its
    shape (in ``out`` when given)."""
    if (type(x) is _ndarray and x.dtype in _FLOATS and x.size
            and x.flags.c_contiguous):                                    # (_ready's checks)
        be = host_backend(device)
        if be is not None:
            result = _fresh(be, out, x.shape, x.dtype, ())
            if result is not None:              # (an element-wise kernel may run in place)
                # (ravel: a view of these C-contiguous arrays, 0.09 against reshape's 0.16 us)
                getattr(be, kernel)(x.ravel(), result.ravel())
                return result
    flat, shape = _flat_like(x, name)
    be = _backend(device)
    _check_host(be, flat)
    result = _output(be, out, shape, flat.dtype)
    getattr(be, kernel)(flat, result.reshape(-1))
    return result


def _elementwise(kernel: str, first, first_name, second, second_name, out, device):
    """Run the element-wise ``kernel`` on two same-shaped arrays (a gradient or an input, and a
    forward array or mask), flattened, in a common dtype; returns the result in their shape."""
    if (type(first) is _ndarray and type(second) is _ndarray and first.shape == second.shape
            and first.dtype in _FLOATS and second.dtype == first.dtype and first.size
            and first.flags.c_contiguous and second.flags.c_contiguous):  # (_ready's checks)
        be = host_backend(device)
        if be is not None:
            result = _fresh(be, out, first.shape, first.dtype, ())
            if result is not None:              # (an element-wise kernel may run in place)
                getattr(be, kernel)(first.ravel(), second.ravel(), result.ravel())
                return result
    a = _array(first, first_name)
    b = _array(second, second_name)
    _check_not_empty(a, first_name)
    _same_shape(a, first_name, b.shape, second_name)
    dtype = _result_dtype(a, b)
    be = _backend(device)
    _check_host(be, a, b)
    result = _output(be, out, a.shape, dtype)
    getattr(be, kernel)(_contiguous(a, dtype).reshape(-1), _contiguous(b, dtype).reshape(-1),
                        result.reshape(-1))
    return result


def relu_backward(dvalues, inputs, *, out=None, device: str | None = None):
    """ReLU's gradient: ``dvalues`` where the forward ``inputs`` were > 0, else 0; any shape."""
    return _elementwise("relu_backward", dvalues, "dvalues", inputs, "inputs", out, device)


def softmax_backward(dvalues, output, *, out=None, device: str | None = None):
    """Softmax's gradient through its full Jacobian: ``dinputs[s] = J(output[s]) @ dvalues[s]``
    with ``J = diagflat(output[s]) - output[s] output[s]^T``. ``output`` is the forward result
    (n_samples, n_classes)."""
    if (type(dvalues) is np.ndarray and type(output) is np.ndarray and output.ndim == 2
            and dvalues.shape == output.shape and _ready((dvalues, output))):
        be = host_backend(device)
        if be is not None:
            dinputs = _fresh(be, out, output.shape, output.dtype, (dvalues, output))
            if dinputs is not None:
                be.softmax_backward(dvalues, output, dinputs)
                return dinputs
    d = _array(dvalues, "dvalues")
    o = _array(output, "output")
    _check_ndim(o, "output", (2,), "2-D (n_samples, n_classes)")
    _check_not_empty(o, "output")
    _same_shape(d, "dvalues", o.shape, "output")
    dtype = _result_dtype(d, o)
    be = _backend(device)
    _check_host(be, d, o)
    dinputs = _output(be, out, o.shape, dtype)
    # each row reads the whole of its dvalues and output rows while it writes dinputs: an
    # out= that is one of them is read from a copy
    d, o = _unshared((_contiguous(d, dtype), _contiguous(o, dtype)), (dinputs,))
    be.softmax_backward(d, o, dinputs)
    return dinputs


def sigmoid_forward(inputs, *, out=None, device: str | None = None):
    """The logistic function ``1 / (1 + exp(-x))``, element-wise; any shape."""
    return _unary("sigmoid_forward", inputs, "inputs", out, device)


def sigmoid_backward(dvalues, output, *, out=None, device: str | None = None):
    """Sigmoid's gradient ``dvalues * (1 - output) * output`` from the forward ``output``."""
    return _elementwise("sigmoid_backward", dvalues, "dvalues", output, "output", out, device)


def linear_forward(inputs, *, out=None, device: str | None = None):
    """The identity activation: a copy of ``inputs`` (a regression model's output layer)."""
    return _unary("linear_forward", inputs, "inputs", out, device)


def linear_backward(dvalues, *, out=None, device: str | None = None):
    """The identity's gradient: a copy of ``dvalues``."""
    return _unary("linear_backward", dvalues, "dvalues", out, device)


# --- Losses and metrics --------------------------------------------------------------------------

def categorical_crossentropy(y_pred, y_true, *, device: str | None = None):
    """Per-sample categorical cross-entropy ``-log(clip(p_correct, 1e-7, 1 - 1e-7))``.

    ``y_pred`` (n_samples, n_classes) probabilities (a softmax output); ``y_true`` class indices
    (n_samples,) or one-hot (n_samples, n_classes). Returns (n_samples,); ``mean`` of it is the
    notes' loss.
    """
    if type(y_pred) is np.ndarray and y_pred.ndim == 2 and _ready((y_pred,)):
        be = host_backend(device)
        if be is not None and type(y_true) is np.ndarray and y_true.ndim == 1:
            targets = class_targets(y_true, y_pred.shape[0], y_pred.shape[1], y_pred.shape, be)
            sample_losses = be.empty((y_pred.shape[0],), y_pred.dtype)
            be.categorical_crossentropy(y_pred, targets, sample_losses)
            return sample_losses
    probs = _probabilities(y_pred)
    n_samples, n_classes = probs.shape
    labels = _host(_array(y_true, "y_true"))
    be = _backend(device)
    _check_host(be, probs)
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
        targets = class_targets(labels, n_samples, n_classes, probs.shape)
        be.categorical_crossentropy(probs, targets, sample_losses)
    return sample_losses


def accuracy(y_pred, y_true, *, device: str | None = None) -> float:
    """Fraction of samples whose most confident class (first maximum) is the target class."""
    probs = _probabilities(y_pred)
    targets = class_targets(y_true, probs.shape[0], probs.shape[1], probs.shape)
    be = _backend(device)
    _check_host(be, probs)
    correct = be.empty((probs.shape[0],), probs.dtype)
    be.accuracy(probs, targets, correct)
    return mean(correct, device=device)


def mean(values, *, device: str | None = None) -> float:
    """Mean of a 1-D array as a Python float, summed in float64 in a fixed order."""
    if (type(values) is _ndarray and values.ndim == 1 and values.size
            and values.dtype in _FLOATS and values.flags.c_contiguous):   # (_ready's checks)
        be = host_backend(device)
        if be is not None:
            output = np.empty(1)
            be.mean(values, output)
            return float(output[0])
    v = _array(values, "values")
    _check_not_empty(v, "values")
    v = _contiguous(v.reshape(-1), _result_dtype(v))
    be = _backend(device)
    _check_host(be, v)
    output = be.empty((1,), np.float64)
    be.mean(v, output)
    return float(be.to_numpy(output)[0])


def categorical_crossentropy_backward(dvalues, y_true, *, out=None, device: str | None = None):
    """Gradient of the mean categorical cross-entropy with respect to the probabilities
    ``dvalues`` (n_samples, n_classes): ``-1 / p_target / n_samples`` on the target class, 0
    elsewhere. ``y_true`` as class indices or one-hot rows."""
    return _class_gradient("categorical_crossentropy_backward", dvalues, "dvalues", y_true, out,
                           device)


def softmax_crossentropy_backward(softmax_output, y_true, *, out=None,
                                  device: str | None = None):
    """The fused softmax + categorical cross-entropy gradient with respect to the softmax
    *inputs*: ``(softmax_output - one_hot(y_true)) / n_samples``."""
    return _class_gradient("softmax_crossentropy_backward", softmax_output, "softmax_output",
                           y_true, out, device)


def _class_gradient(kernel_name, probabilities, name, y_true, out, device):
    """Run a cross-entropy gradient kernel on (n_samples, n_classes) ``probabilities`` and
    class targets (indices or one-hot rows), validated."""
    if (type(probabilities) is np.ndarray and probabilities.ndim == 2
            and _ready((probabilities,))):
        be = host_backend(device)
        if be is not None:
            targets = class_targets(y_true, probabilities.shape[0], probabilities.shape[1],
                                     probabilities.shape, be)
            # (each row reads its own values before it writes them: in place is fine)
            dinputs = _fresh(be, out, probabilities.shape, probabilities.dtype, ())
            if dinputs is not None:
                getattr(be, kernel_name)(probabilities, targets, dinputs)
                return dinputs
    probs = _probabilities(probabilities, name)
    targets = class_targets(y_true, probs.shape[0], probs.shape[1], probs.shape)
    be = _backend(device)
    _check_host(be, probs, out)
    dinputs = _output(be, out, probs.shape, probs.dtype)
    getattr(be, kernel_name)(probs, targets, dinputs)
    return dinputs


def _loss_inputs(y_pred, y_true, name: str = "y_pred"):
    if (type(y_pred) is _ndarray and y_pred.ndim == 2 and type(y_true) is _ndarray
            and y_pred.dtype in _FLOATS and y_true.dtype.kind in "biuf" and y_pred.size
            and y_pred.flags.c_contiguous):                               # (_ready's checks)
        # (the fast path: what the checks below hand back for such arrays, in fewer steps)
        shape, given = y_pred.shape, y_true.shape
        if given == shape or (len(given) == 1 and shape[1] == 1 and given[0] == shape[0]):
            dtype = y_pred.dtype
            # (astype: 0.24 us for the book's 200 labels, np.ascontiguousarray 0.42)
            targets = y_true if y_true.dtype == dtype and y_true.flags.c_contiguous \
                else y_true.astype(dtype, order="C")
            return y_pred, targets if given == shape else targets.reshape(shape)
    pred = _array(y_pred, name)
    _check_ndim(pred, name, (2,), "2-D (n_samples, n_outputs)")
    _check_not_empty(pred, name)
    dtype = _result_dtype(pred)
    return _contiguous(pred, dtype), targets_like(y_true, pred.shape, dtype)


def _sample_loss(kernel_name, y_pred, y_true, device):
    pred, targets = _loss_inputs(y_pred, y_true)
    be = _checked_backend(device, pred, targets)
    sample_losses = be.empty((pred.shape[0],), pred.dtype)
    getattr(be, kernel_name)(pred, targets, sample_losses)
    return sample_losses


def _loss_gradient(kernel_name, dvalues, y_true, out, device):
    pred, targets = _loss_inputs(dvalues, y_true, "dvalues")
    be = _checked_backend(device, pred, targets, out)
    dinputs = _output(be, out, pred.shape, pred.dtype)
    getattr(be, kernel_name)(pred, targets, dinputs)
    return dinputs


def binary_crossentropy(y_pred, y_true, *, device: str | None = None):
    """Per-sample binary cross-entropy, the mean over outputs of
    ``-(t log p + (1 - t) log(1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.
    ``y_pred`` (n_samples, n_outputs) sigmoid outputs; ``y_true`` 0/1 of the same shape (or
    (n_samples,) for one output). Returns (n_samples,)."""
    return _sample_loss("binary_crossentropy", y_pred, y_true, device)


def binary_crossentropy_backward(dvalues, y_true, *, out=None, device: str | None = None):
    """Gradient of the mean binary cross-entropy with respect to the sigmoid outputs."""
    return _loss_gradient("binary_crossentropy_backward", dvalues, y_true, out, device)


def mean_squared_error(y_pred, y_true, *, device: str | None = None):
    """Per-sample mean squared error ``mean_j (y_true - y_pred) ** 2``. Returns (n_samples,)."""
    return _sample_loss("mean_squared_error", y_pred, y_true, device)


def mean_squared_error_backward(dvalues, y_true, *, out=None, device: str | None = None):
    """Gradient of the mean MSE: ``-2 * (y_true - dvalues) / n_outputs / n_samples``."""
    return _loss_gradient("mean_squared_error_backward", dvalues, y_true, out, device)


def mean_absolute_error(y_pred, y_true, *, device: str | None = None):
    """Per-sample mean absolute error ``mean_j |y_true - y_pred|``. Returns (n_samples,)."""
    return _sample_loss("mean_absolute_error", y_pred, y_true, device)


def mean_absolute_error_backward(dvalues, y_true, *, out=None, device: str | None = None):
    """Gradient of the mean MAE: ``sign(dvalues - y_true) / n_outputs / n_samples`` (the book
    prints the opposite sign, an erratum)."""
    return _loss_gradient("mean_absolute_error_backward", dvalues, y_true, out, device)


def binary_accuracy(y_pred, y_true, *, device: str | None = None) -> float:
    """Fraction of outputs where ``y_pred > 0.5`` agrees with the 0/1 target."""
    pred, targets = _loss_inputs(y_pred, y_true)
    be = _backend(device)
    _check_host(be, pred, targets)
    correct = be.empty((pred.size,), pred.dtype)
    be.binary_accuracy(pred.reshape(-1), targets.reshape(-1), correct)
    return mean(correct, device=device)


def regression_accuracy(y_pred, y_true, precision, *, device: str | None = None) -> float:
    """Fraction of outputs within ``precision`` of their target (the book uses ``std(y) / 250``)."""
    precision = number(precision, "precision", minimum=0.0)
    pred, targets = _loss_inputs(y_pred, y_true)
    be = _backend(device)
    _check_host(be, pred, targets)
    correct = be.empty((pred.size,), pred.dtype)
    be.regression_accuracy(pred.reshape(-1), targets.reshape(-1), precision, correct)
    return mean(correct, device=device)


# --- Regularization and dropout ------------------------------------------------------------------

def regularization_loss(values, *, l1=0.0, l2=0.0, device: str | None = None) -> float:
    """The penalty ``l1 * sum|values| + l2 * sum(values ** 2)`` as a Python float (summed in
    float64 in index order). ``values`` is a weights or biases array of any shape."""
    l1 = number(l1, "l1", minimum=0.0)
    l2 = number(l2, "l2", minimum=0.0)
    if type(values) is np.ndarray and _ready((values,)):
        be = host_backend(device)
        if be is not None:
            output = np.empty(1)
            be.regularization_loss(values.reshape(-1), l1, l2, output)
            return float(output[0])
    flat, _ = _flat_like(values, "values")
    be = _backend(device)
    _check_host(be, flat)
    output = be.empty((1,), np.float64)
    be.regularization_loss(flat, l1, l2, output)
    return float(be.to_numpy(output)[0])


def layer_penalty_direct(weights, biases, penalties, device):
    """``Loss.regularization_loss(layer)``'s direct path: the penalty of a layer's ``weights``
    and ``biases`` (``penalties``: weight l1, weight l2, bias l1, bias l2; an array's terms only
    when one of its two is > 0) as a Python float, in one call of the backend's
    ``dense_penalties_loss`` (the bits of ``regularization_loss`` of the weights plus that of
    the biases; a learner's loop calls it every epoch: two ``regularization_loss`` calls cost
    ~3.5 us, this ~2.7 us). None when the backend has no such kernel or the arrays are not a
    layer's C-contiguous, non-empty 2-D ``weights`` and ``(1, n_neurons)`` ``biases`` of one
    float dtype: the caller then takes ``regularization_loss`` for each, which converts or
    explains."""
    weight_l1, weight_l2, bias_l1, bias_l2 = penalties
    if not (weight_l1 > 0 or weight_l2 > 0 or bias_l1 > 0 or bias_l2 > 0):
        # (a layer without penalties, the book's loop asks every epoch: ``regularization_loss``
        # would look at none of its arrays either)
        return 0.0 if type(weights) is _ndarray and weights.dtype in _FLOATS else None
    in_one_call = getattr(host_backend(device), "dense_penalties_loss", None)
    if (in_one_call is None or not _ready((weights, biases)) or weights.ndim != 2
            or biases.shape != (1, weights.shape[1])):
        return None
    output = np.empty(1)
    in_one_call(weights, biases, *checked_penalties(*penalties), output)
    return float(output[0])


def regularization_backward(values, dvalues, *, l1=0.0, l2=0.0, device: str | None = None):
    """Add the penalty's gradient ``l1 * sign(values) + 2 * l2 * values`` to ``dvalues`` *in
    place* (``sign`` is +1 at 0, as the book's) and return ``dvalues``."""
    l1 = number(l1, "l1", minimum=0.0)
    l2 = number(l2, "l2", minimum=0.0)
    if (type(values) is np.ndarray and type(dvalues) is np.ndarray
            and values.shape == dvalues.shape and _ready((values, dvalues))
            and dvalues.flags.writeable):
        be = host_backend(device)
        if be is not None:
            if l1 != 0 or l2 != 0:
                be.regularization_backward(values.reshape(-1), l1, l2, dvalues.reshape(-1))
            return dvalues
    d = _writable(dvalues, "dvalues")
    v = _array(values, "values")
    _same_shape(v, "values", d.shape, "dvalues")
    if l1 == 0 and l2 == 0:
        return d
    be = _backend(device)
    _check_host(be, v, d)
    be.regularization_backward(_contiguous(v, d.dtype).reshape(-1), l1, l2, d.reshape(-1))
    return d


def dropout_mask(shape, rate: float, *, seed: int, step: int = 0, dtype=np.float32,
                 device: str | None = None):
    """The dropout mask of training batch number ``step``: each element is 0 with probability
    ``rate``, else ``1 / (1 - rate)``, decided by a hash of ``(seed, step, sample, element)``
    (a counter-based generator: the same mask on every device and for any thread count; see
    ``loopnet.kernels.regularization``). ``shape``: the batch's shape, samples first."""
    rate = dropout_rate(rate)
    seed = count(seed, "seed")
    step = count(step, "step")
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(shape)
    if not shape or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                        for n in shape):
        raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}")
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    be = _backend(device)
    mask = be.empty(shape, dtype)
    rows = shape[0] if len(shape) > 1 else 1
    be.dropout_mask(seed, step, keep_below(rate), rate, mask.reshape(rows, -1))
    return mask


def keep_below(rate: float) -> int:
    """The dropout hash's threshold: an element is kept when the top 53 bits of its hash are
    below ``(1 - rate) * 2**53``."""
    return int((1.0 - rate) * 2.0 ** 53)


def dropout_rate(rate) -> float:
    """A dropout rate checked: the fraction dropped, in [0, 1) (the op and the layer both take
    it through here)."""
    rate = number(rate, "rate", minimum=0.0)
    if rate >= 1:
        raise ValueError(f"dropout rate must be in [0, 1): the fraction dropped, got {rate}")
    return rate


def dropout_forward(inputs, mask, *, out=None, device: str | None = None):
    """``inputs * mask`` element-wise (``mask`` from ``dropout_mask``); any shape."""
    return _elementwise("dropout_forward", inputs, "inputs", mask, "mask", out, device)


def dropout_backward(dvalues, mask, *, out=None, device: str | None = None):
    """``dvalues * mask``: dropped neurons pass no gradient back."""
    return _elementwise("dropout_backward", dvalues, "dvalues", mask, "mask", out, device)


# --- Optimizer updates (in place) ------------------------------------------------------------------

def zeros(shape, dtype=np.float32, *, device: str | None = None):
    """An array of zeros allocated on ``device`` (optimizer state lives beside its parameters).

    ``shape``: an int or a tuple of ints >= 0; ``dtype``: float32 or float64 (what the kernels
    compute in). Anything else raises ``TypeError``/``ValueError`` naming it."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}") from None
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
               for n in dims):
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}")
    dims = tuple(int(n) for n in dims)
    if any(n < 0 for n in dims):
        raise ValueError(f"shape {dims} has a negative size")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    be = _backend(device)
    output = be.empty(dims, dtype)
    if output.size:
        if type(output) is np.ndarray:
            # in memory numpy reaches (cpu, numpy, python): numpy's fill, where the cpu
            # device's fill kernel would be compiled (~0.06 s of a first run) for one use
            output.fill(0)
        else:
            be.fill(0.0, output.reshape(-1))
    return output


def _update_arrays(params, grads, states, names):
    """Parameters and optimizer state updated in place, gradients converted to their dtype."""
    views = update_views(params, grads, states)
    if views is not None:                                       # (the fast path)
        return views[0], views[1], list(views[2:])
    p = _writable(params, "params")
    g = _array(grads, "grads")
    _same_shape(g, "grads", p.shape, "params")
    flat_states = []
    for state, name in zip(states, names):
        state = _writable(state, name)
        _same_shape(state, name, p.shape, "params")
        if state.dtype != p.dtype:
            raise TypeError(f"{name} has dtype {state.dtype} but params have dtype {p.dtype}")
        flat_states.append(state.reshape(-1))
    return p.reshape(-1), _contiguous(g, p.dtype).reshape(-1), flat_states


def sgd_update(params, grads, *, learning_rate, momentum=0.0, momentums=None,
               device: str | None = None):
    """SGD step in place: ``params += -learning_rate * grads``; with ``momentum`` > 0,
    ``momentums = momentum * momentums - learning_rate * grads; params += momentums``."""
    learning_rate = number(learning_rate, "learning_rate")
    momentum = number(momentum, "momentum", minimum=0.0)
    be = _backend(device)
    if momentum == 0 and momentums is None:
        p, g, _ = _update_arrays(params, grads, (), ())
        _check_host(be, p, g)
        be.sgd_update(p, g, learning_rate)
        return params
    if momentums is None:
        raise ValueError("momentum > 0 needs a momentums array (ops.zeros(params.shape))")
    p, g, (m,) = _update_arrays(params, grads, (momentums,), ("momentums",))
    _check_host(be, p, g, m)
    be.sgd_momentum_update(p, g, m, learning_rate, momentum)
    return params


def adagrad_update(params, grads, cache, *, learning_rate, epsilon=1e-7,
                   device: str | None = None):
    """Adagrad step in place: ``cache += grads**2; params += -lr * grads / (sqrt(cache) + eps)``."""
    learning_rate = number(learning_rate, "learning_rate")
    epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)
    p, g, (c,) = _update_arrays(params, grads, (cache,), ("cache",))
    _checked_backend(device, p, g, c).adagrad_update(p, g, c, learning_rate, epsilon)
    return params


def rmsprop_update(params, grads, cache, *, learning_rate, epsilon=1e-7, rho=0.9,
                   device: str | None = None):
    """RMSprop step in place: ``cache = rho * cache + (1 - rho) * grads**2``, then as Adagrad."""
    learning_rate = number(learning_rate, "learning_rate")
    epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)
    rho = rmsprop_rho(rho)
    p, g, (c,) = _update_arrays(params, grads, (cache,), ("cache",))
    _checked_backend(device, p, g, c).rmsprop_update(p, g, c, learning_rate, epsilon, rho)
    return params


def rmsprop_rho(rho) -> float:
    """RMSprop's decay rate checked: a number in [0, 1] (the op and the optimizer class both
    take it through here)."""
    rho = number(rho, "rho", minimum=0.0)
    if rho > 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    return rho


def adam_update(params, grads, momentums, cache, *, learning_rate, iteration, epsilon=1e-7,
                beta_1=0.9, beta_2=0.999, device: str | None = None):
    """Adam step in place (the book's ``Optimizer_Adam.update_params``); ``iteration`` counts
    the updates made before this one (0 for the first), for the bias corrections
    ``1 - beta ** (iteration + 1)``."""
    learning_rate = number(learning_rate, "learning_rate")
    epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)
    beta_1 = number(beta_1, "beta_1", minimum=0.0, below=1.0)
    beta_2 = number(beta_2, "beta_2", minimum=0.0, below=1.0)
    if beta_1 >= 1 or beta_2 >= 1:
        raise ValueError(f"beta_1 and beta_2 must be in [0, 1), got {beta_1} and {beta_2}")
    correction_1, correction_2 = adam_corrections(beta_1, beta_2, iteration)
    p, g, (m, c) = _update_arrays(params, grads, (momentums, cache), ("momentums", "cache"))
    be = _checked_backend(device, p, g, m, c)
    be.adam_update(p, g, m, c, learning_rate, epsilon, beta_1, beta_2, correction_1, correction_2)
    return params


def optimizer_update(kernel: str, params, grads, states, scalars, *, names,
                     device: str | None = None):
    """One optimizer step in place by the backend kernel named ``kernel`` (``sgd_update``,
    ``adam_update`` ... of ``loopnet.kernels.optimizers``): ``params``, ``grads`` and the state
    arrays ``states`` (named ``names`` in messages) checked and flattened as the update
    functions above check them, then ``scalars`` (already checked) after them. The optimizer
    classes run their steps through it."""
    p, g, flat_states = _update_arrays(params, grads, states, names)
    getattr(_checked_backend(device, p, g, *flat_states), kernel)(p, g, *flat_states, *scalars)
    return params


def adam_corrections(beta_1: float, beta_2: float, iteration: int) -> tuple[float, float]:
    """Adam's bias corrections ``1 - beta ** (iteration + 1)`` after ``iteration`` updates:
    host-side scalars computed once in float64 (Python's pow), so that every device, and the
    optimizer's direct path, rounds the very same numbers to the parameters' dtype."""
    iteration = count(iteration, "iteration")
    return 1 - beta_1 ** (iteration + 1), 1 - beta_2 ** (iteration + 1)


def update_views(params, grads, states):
    """Flat views ``(params, grads, *states)`` for an optimizer kernel when every array already
    is what the kernels take (numpy arrays of one float dtype, C-contiguous, not empty, of one
    shape, params and states writable), else None: the arrays ``_update_arrays``' fast path
    would hand over as they are, so views of them stay right while the arrays are the same."""
    arrays = (params, grads, *states)
    if (type(params) is np.ndarray and type(grads) is np.ndarray and _ready(arrays)
            and all(a.shape == params.shape for a in arrays)
            and params.flags.writeable and all(s.flags.writeable for s in states)):
        return tuple(a.reshape(-1) for a in arrays)
    return None


def to_numpy(array) -> np.ndarray:
    """Any loopnet output (host or device array) as a numpy array on the host."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "__cuda_array_interface__"):
        return _gpu().to_numpy(array)
    return np.asarray(array)


def to_device(array, device: str | None = None):
    """``array`` where ``device`` computes: on ``cuda`` a device array (a host array is copied
    over once; a device array stays as it is), on the host devices a numpy array. Move the
    training data once with it, so that no op has to copy it again::

        X = loopnet.ops.to_device(X, "cuda")
    """
    from loopnet.devices import base_name, get_device

    device = get_device(device)
    if base_name(device) == "cuda":
        be = _backend(device)
        return be.asarray(_array(array, "array"))  # keeps the dtype (labels stay integers)
    return to_numpy(array)
