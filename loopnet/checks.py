"""What ``Model`` is given, checked before anything runs.

The compiled kernels (and the fused training step) read and write parameters and optimizer
state through raw pointers, without bounds checks: they trust that each Dense layer's
``weights`` is ``(n_inputs, n_neurons)`` and its ``biases`` ``(1, n_neurons)``, in the layer's
dtype, C-contiguous and writeable, that the optimizer's state arrays match them, and that one
layer's outputs are as wide as the next layer's inputs. A user can break any of that by
assigning an attribute, so ``check_model`` verifies it once at the start of every
``Model.train``, ``evaluate`` and ``predict`` call (attribute look-ups only, no copies), and
raises a ``TypeError``/``ValueError`` naming the layer, the attribute and both shapes or dtypes.

It also turns the names Keras users write into loopnet's objects:
``model.set(loss="categorical_crossentropy", optimizer="adam", accuracy="categorical")``.
"""

from __future__ import annotations

import numpy as np

from loopnet.validate import is_device_array

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# Optimizer state a layer may carry (the book's attribute names): each matches its parameter.
STATE_ARRAYS = (("weight_momentums", "weights"), ("weight_cache", "weights"),
                ("bias_momentums", "biases"), ("bias_cache", "biases"))


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or is_device_array(value)


def _c_contiguous(array) -> bool:
    if isinstance(array, np.ndarray):
        return array.flags.c_contiguous
    check = getattr(array, "is_c_contiguous", None)     # numba device arrays
    if callable(check):
        return bool(check())
    flags = getattr(array, "flags", None)
    try:
        return bool(flags["C_CONTIGUOUS"])
    except (TypeError, KeyError, IndexError):
        return bool(getattr(flags, "c_contiguous", True))


def _writeable(array) -> bool:
    return array.flags.writeable if isinstance(array, np.ndarray) else True


def _check_array(index: int, layer, attribute: str, array, shape, dtype) -> None:
    """One array a kernel updates in place: type, shape, dtype, layout, writeability."""
    if (type(array) is np.ndarray and (shape is None or array.shape == shape)
            and (dtype is None or array.dtype == dtype) and array.dtype in _FLOATS
            and array.flags.c_contiguous and array.flags.writeable):
        return      # (the common case, in a few look-ups: the messages below name the layer
        #              by its repr, which costs more than all of this, so only on an error)
    where = f"layer {index} ({layer!r}).{attribute}"
    if not _is_array(array):
        raise TypeError(f"{where} is a {type(array).__name__}, not an array "
                        "(set_parameters() converts lists and other arrays)")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{where} has shape {tuple(array.shape)}, the layer needs "
                         f"{tuple(shape)}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(f"{where} has dtype {array.dtype}, the layer computes in {dtype}")
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"{where} has dtype {array.dtype}; it must be float32 or float64")
    if not _c_contiguous(array):
        raise ValueError(f"{where} (shape {tuple(array.shape)}) is not C-contiguous; "
                         "set_parameters() stores a C-contiguous copy")
    if not _writeable(array):
        raise ValueError(f"{where} is read-only; training updates it in place "
                         "(set_parameters() stores a writeable copy)")


def check_layer(index: int, layer) -> None:
    """A trainable layer's ``weights``, ``biases`` and optimizer state (see the module)."""
    from loopnet.layers import Dense

    weights, biases = layer.weights, getattr(layer, "biases", None)
    if isinstance(layer, Dense):
        weights_shape, biases_shape = (layer.n_inputs, layer.n_neurons), (1, layer.n_neurons)
        dtype = layer.dtype
    else:       # a layer of the user's own: its parameters need only agree with each other
        weights_shape = biases_shape = None
        dtype = getattr(weights, "dtype", None)
    _check_array(index, layer, "weights", weights, weights_shape, dtype)
    _check_array(index, layer, "biases", biases, biases_shape, dtype)
    for state, parameter in STATE_ARRAYS:
        value = getattr(layer, state, None)
        if value is not None:
            _check_array(index, layer, state,
                         value, (weights if parameter == "weights" else biases).shape, dtype)


_FINGERPRINTED = ("weights", "biases", *(state for state, _ in STATE_ARRAYS))


def fingerprint(model, inputs=(), targets=()) -> tuple:
    """What ``check_model`` and ``check_targets`` read of ``model``, the ``inputs`` (``X``,
    ``X_val``) and the ``targets`` (``y``, ``y_val``), in a few look-ups: each layer, its
    sizes and dtype, and each of its arrays' identity, shape, dtype, strides and
    writeability; the layout of the inputs and of the targets, and the targets' bytes. Two
    equal fingerprints: nothing those checks read changed (``Model.train`` checks again
    between epochs only where a callback changed something: ~3.4 us against ~11 us of checks
    for chapter 16's model and its labels). The loss, the optimizer and the accuracy count by
    identity, and the accuracy's ``binary`` setting: the forms of the targets they read.
    Two lists: the model's marks and the data's (a relabelled ``y`` moves only the second)."""
    accuracy = model.accuracy
    marks = [id(model.loss), id(model.optimizer), id(accuracy), getattr(accuracy, "binary", None),
             len(model.layers)]
    for layer in model.layers:
        state = getattr(layer, "__dict__", None)    # (None: a layer class with __slots__)
        if state is None or "weights" not in state:
            marks.append((id(layer), type(layer)))
            continue
        marks.append((id(layer), type(layer), state.get("n_inputs"), state.get("n_neurons"),
                      state.get("dtype")))
        for name in _FINGERPRINTED:
            value = state.get(name)
            marks.append((id(value), value.shape, value.dtype, value.strides,
                          value.flags.writeable) if type(value) is np.ndarray else id(value))
    data = []
    for array in (*inputs, *targets):
        if type(array) is np.ndarray:
            data.append((id(array), array.shape, array.dtype, array.strides))
        else:
            data.append(id(array))
    for array in targets:
        if type(array) is np.ndarray:
            data.append(array.tobytes())
    return marks, data


_PASS_THROUGH = None


def _pass_through(layer) -> bool:
    """Layers whose output is as wide as their input."""
    global _PASS_THROUGH
    if _PASS_THROUGH is None:   # (imported on first use: those modules import this one)
        from loopnet.activations import Linear, ReLU, Sigmoid, Softmax
        from loopnet.layers import Dropout

        _PASS_THROUGH = (ReLU, Softmax, Sigmoid, Linear, Dropout)
    return isinstance(layer, _PASS_THROUGH)


def check_model(model, X=None, *, name: str = "X"):
    """Check every trainable layer (``check_layer``), that consecutive Dense layers' sizes
    chain (through activations and dropout), and that ``X`` (when given) is 2-D and as wide
    as the first Dense layer. Returns the model's output width when it is known, else None."""
    from loopnet.layers import Dense

    width, source = None, None
    first = next((layer for layer in model.layers if not _pass_through(layer)), None)
    if X is not None and isinstance(first, Dense):
        shape = tuple(getattr(X, "shape", ()))
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {shape}"
                             + ("; for one feature per sample use reshape(-1, 1)"
                                if len(shape) == 1 else ""))
        dtype = getattr(X, "dtype", None)
        if dtype is not None and dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")
        width, source = shape[1], ("X", shape)  # (the message is made only on an error)
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "weights"):
            check_layer(index, layer)
        if isinstance(layer, Dense):
            if width is not None and width != layer.n_inputs:
                raise ValueError(f"{_width_source(source, name)} but layer {index} "
                                 f"({layer!r}) takes {layer.n_inputs} inputs (weights shape "
                                 f"{tuple(layer.weights.shape)})")
            width = layer.n_neurons
            source = ("layer", index, layer)
        elif not _pass_through(layer):
            width, source = None, None
    return width


def _width_source(source, name: str) -> str:
    """Where the width a Dense layer disagrees with comes from: ``("X", shape)`` or
    ``("layer", index, layer)``, the Dense layer before."""
    if source[0] == "X":
        shape = source[1]
        return f"{name} (shape {shape}) has {shape[1]} features"
    _, index, layer = source
    return (f"layer {index} ({layer!r}) gives {layer.n_neurons} outputs (weights shape "
            f"{tuple(layer.weights.shape)})")


def output_dtype(model):
    """The dtype of the model's outputs: its last Dense layer's (float32 when it has none)."""
    from loopnet.layers import Dense

    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    return dense[-1].dtype if dense else np.dtype(np.float32)


def check_validation_data(model, validation_data, y):
    """``validation_data`` as a pair ``(X_val, y_val)`` of arrays that fit the model and the
    training targets ``y``, or ``None``; a ``TypeError``/``ValueError`` before training
    starts otherwise (rather than after the first epoch)."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        got = (f"a {type(validation_data).__name__} of length {len(validation_data)}"
               if isinstance(validation_data, (tuple, list)) else
               f"a {type(validation_data).__name__}")
        raise TypeError(f"validation_data must be a pair (X_val, y_val), got {got}")
    X_val, y_val = (value if hasattr(value, "shape") else np.asarray(value)
                    for value in validation_data)
    for value, label in ((X_val, "X_val"), (y_val, "y_val")):
        if len(value.shape) == 0:
            raise ValueError(f"{label} must be an array with one row per sample, got {value!r}")
    if X_val.shape[0] != y_val.shape[0]:
        raise ValueError(f"X_val has {X_val.shape[0]} samples but y_val has "
                         f"{y_val.shape[0]} targets")
    if X_val.shape[0] == 0:
        raise ValueError(f"validation_data is empty (X_val shape {tuple(X_val.shape)})")
    check_model(model, X_val, name="X_val")
    if tuple(y_val.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(f"y_val has shape {tuple(y_val.shape)} but y has shape "
                         f"{tuple(y.shape)}: validation targets must have the training "
                         "targets' form (class indices, one-hot rows or target columns)")
    return X_val, y_val


def known_class(obj, classes, methods):
    """The loopnet class ``obj`` is (or subclasses without changing ``methods``), else None."""
    for cls in classes:
        if isinstance(obj, cls):
            if all(getattr(type(obj), name, None) is getattr(cls, name) for name in methods):
                return cls
            return None
    return None


# How loopnet's losses and accuracies read targets (the methods a subclass must keep for it to
# read them the same way).
LOSS_METHODS = ("forward", "backward", "calculate", "regularization_loss")
ACCURACY_METHODS = ("compare", "calculate")


def target_forms(model) -> tuple[bool, bool]:
    """Whether the model's loss or accuracy reads ``y`` as class indices (categorical
    cross-entropy, categorical accuracy) and whether as values shaped like the outputs (binary
    cross-entropy, the regression losses, binary and regression accuracy). A loss or accuracy
    of a user's own reads ``y`` its own way and counts for neither."""
    return _forms(model)[:2]


def _forms(model) -> tuple[bool, bool, type | None]:
    """``target_forms``, and the loopnet loss class the model's loss is (or None)."""
    global _TARGET_CLASSES
    if _TARGET_CLASSES is None:     # (imported once: those modules import this one)
        from loopnet import accuracy, losses

        _TARGET_CLASSES = ((losses.CategoricalCrossentropy, losses.BinaryCrossentropy,
                            losses.MeanSquaredError, losses.MeanAbsoluteError),
                           (accuracy.CategoricalAccuracy, accuracy.BinaryAccuracy,
                            accuracy.RegressionAccuracy))
    (categorical_loss, *value_losses), (categorical, *value_accuracies) = _TARGET_CLASSES
    loss = known_class(model.loss, _TARGET_CLASSES[0], LOSS_METHODS)
    accuracy = known_class(model.accuracy, _TARGET_CLASSES[1], ACCURACY_METHODS)
    binary = accuracy is categorical and model.accuracy.binary
    classes = loss is categorical_loss or (accuracy is categorical and not binary)
    values = loss in value_losses or accuracy in value_accuracies or binary
    return classes, values, loss


_TARGET_CLASSES = None


def check_targets(model, y, n_samples: int, n_outputs: int, dtype, name: str = "y"):
    """``(class indices, values)``: ``y`` converted as the model's loss and accuracy read it
    (``target_forms``; None for a form neither reads), checked as the ops check it, with
    ``name`` (``y``, ``y_val``) in the messages. ``Model.train`` runs it before training
    starts, so that a bad label in ``y_val`` is not found epochs later, after the parameters
    have changed."""
    from loopnet import ops

    classes, values, loss = _forms(model)
    shape = (n_samples, n_outputs)
    pred = "the model's output"
    index = (ops.class_targets(y, n_samples, n_outputs, shape, name=name, pred=pred)
             if classes else None)
    converted = ops.targets_like(y, shape, dtype, name=name, pred=pred) if values else None
    if converted is not None and not is_device_array(converted):
        # binary cross-entropy's -(y log p + (1 - y) log(1 - p)) is a loss only for y in
        # [0, 1] (a label 2 would train towards a bound it can never reach); its range check
        # finds a NaN (min and max propagate it) or an infinity too
        if not (converted.min() >= 0 and converted.max() <= 1
                if loss is _TARGET_CLASSES[0][1] else np.isfinite(converted).all()):
            finite = np.isfinite(converted)
            if not finite.all():
                row = int(np.argmin(finite.all(axis=1)))
                raise ValueError(f"{name} has a NaN or infinite target in sample {row}: "
                                 f"{ops.to_numpy(converted[row]).tolist()}")
            row, column = np.argwhere((converted < 0) | (converted > 1))[0]
            raise ValueError(
                f"{name} has the target {float(converted[row, column]):g} in sample {row} "
                f"(output {column}), but binary cross-entropy takes targets in [0, 1] "
                "(labels 0 and 1, or probabilities)")
    return index, converted


def loss_input_problem(model):
    """A sentence when a cross-entropy loss follows a layer whose outputs are not
    probabilities, else None (``Model.finalize`` warns with it).

    loopnet's cross-entropies read probabilities, as the book's do: ``-log`` of the clipped
    prediction, and a backward that divides by it. Fed a ``Dense``, ``ReLU``, ``Linear`` or
    ``Dropout`` output (PyTorch's ``CrossEntropyLoss`` and ``BCEWithLogitsLoss`` take such
    logits), they train on a clipped loss, or divide by zero and diverge."""
    from loopnet import activations, layers, losses

    loss = known_class(model.loss, (losses.CategoricalCrossentropy, losses.BinaryCrossentropy),
                       LOSS_METHODS)
    if loss is None or not model.layers:
        return None
    last = model.layers[-1]
    if known_class(last, (layers.Dense, layers.Dropout, activations.ReLU, activations.Linear),
                   ("forward",)) is None:
        return None
    end, torch = (("Softmax()", "CrossEntropyLoss") if loss is losses.CategoricalCrossentropy
                  else ("Sigmoid()", "BCEWithLogitsLoss"))
    return (f"{type(model.loss).__name__} reads probabilities, but the model's last layer, "
            f"{last!r}, gives other values: end the model with {end} (loopnet's "
            f"cross-entropies take probabilities, not the logits PyTorch's {torch} takes)")


# --- names ------------------------------------------------------------------------------------

def _names():
    from loopnet import accuracy, losses, optimizers

    loss_names = {
        "categorical_crossentropy": losses.CategoricalCrossentropy,
        "binary_crossentropy": losses.BinaryCrossentropy,
        "mse": losses.MeanSquaredError, "mean_squared_error": losses.MeanSquaredError,
        "mae": losses.MeanAbsoluteError, "mean_absolute_error": losses.MeanAbsoluteError,
    }
    optimizer_names = {"sgd": optimizers.SGD, "adagrad": optimizers.Adagrad,
                       "rmsprop": optimizers.RMSprop, "adam": optimizers.Adam}
    accuracy_names = {
        "categorical": accuracy.CategoricalAccuracy,
        "categorical_accuracy": accuracy.CategoricalAccuracy,
        "binary": accuracy.BinaryAccuracy, "binary_accuracy": accuracy.BinaryAccuracy,
        "regression": accuracy.RegressionAccuracy,
        "accuracy": None,   # the one that fits the loss, as Keras chooses it
    }
    return loss_names, optimizer_names, accuracy_names


def _from(value, names: dict, base: type, what: str):
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_").replace(" ", "_")
        if key in names:
            return names[key]()
        raise ValueError(f"unknown {what} {value!r}; valid names: {', '.join(names)} "
                         f"(or a loopnet {base.__name__} object)")
    if isinstance(value, base):
        return value
    if isinstance(value, type) and issubclass(value, base):
        raise TypeError(f"{what} must be an object, got the class {value.__name__}: "
                        f"write {value.__name__}()")
    raise TypeError(f"{what} must be a loopnet {base.__name__} object or one of the names "
                    f"{', '.join(names)}; got {type(value).__name__} {value!r}")


def loss_from(value):
    """A ``Loss`` object: ``value`` itself, or the loss a Keras name stands for."""
    from loopnet.losses import Loss

    return _from(value, _names()[0], Loss, "loss")


def optimizer_from(value):
    """An ``Optimizer`` object: ``value`` itself, or a new one for ``"sgd"``, ``"adagrad"``,
    ``"rmsprop"`` or ``"adam"`` (with the book's default settings)."""
    from loopnet.optimizers import Optimizer

    return _from(value, _names()[1], Optimizer, "optimizer")


def accuracy_from(value, loss=None):
    """An ``Accuracy`` object: ``value`` itself, or the one its name stands for; ``"accuracy"``
    picks the one that fits ``loss`` (binary for binary cross-entropy, regression for the
    mean squared/absolute errors, categorical otherwise)."""
    from loopnet import accuracy, losses

    names = dict(_names()[2])
    if isinstance(loss, losses.BinaryCrossentropy):
        names["accuracy"] = accuracy.BinaryAccuracy
    elif isinstance(loss, (losses.MeanSquaredError, losses.MeanAbsoluteError)):
        names["accuracy"] = accuracy.RegressionAccuracy
    else:
        names["accuracy"] = accuracy.CategoricalAccuracy
    return _from(value, names, accuracy.Accuracy, "accuracy")
