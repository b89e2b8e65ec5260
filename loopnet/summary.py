"""``Model.summary()`` and ``Model.count_params()``: a Keras-like table of the layers."""

from __future__ import annotations

import numpy as np


def _size(array) -> int:
    return int(np.prod(getattr(array, "shape", np.shape(array)), dtype=np.int64))


def layer_params(layer) -> int:
    """Parameters of one layer: its weights and biases (0 for an activation or dropout)."""
    if not hasattr(layer, "weights"):
        return 0
    return _size(layer.weights) + (_size(layer.biases) if hasattr(layer, "biases") else 0)


def count_params(model) -> int:
    """Every trainable parameter of the model (all of its parameters are trainable)."""
    return sum(layer_params(layer) for layer in model.layers)


def _output_widths(model) -> list:
    """Each layer's output width (None while unknown: layers before the first Dense)."""
    width, widths = None, []
    for layer in model.layers:
        weights = getattr(layer, "weights", None)
        shape = getattr(weights, "shape", None)
        if shape is not None and len(shape) == 2:
            width = int(shape[1])
        widths.append(width)
    return widths


def _devices(model) -> str:
    from loopnet.devices import get_device

    names = []
    for layer in model.layers:
        name = get_device(getattr(layer, "device", None))
        if name not in names:
            names.append(name)
    return ", ".join(names) if names else get_device()


def _dtypes(model) -> str:
    names = []
    for layer in model.layers:
        for array in (getattr(layer, "weights", None), getattr(layer, "biases", None)):
            dtype = getattr(array, "dtype", None)
            if dtype is not None and str(dtype) not in names:
                names.append(str(dtype))
    return ", ".join(names) if names else "none (no parameters)"


def summary(model) -> str:
    """The table: each layer, its output shape (``None`` is the batch dimension), its
    parameter count; the totals; the loss, optimizer and accuracy; device and dtype."""
    rows = [("Layer (type)", "Output shape", "Param #")]
    for layer, width in zip(model.layers, _output_widths(model)):
        shape = "(None, ?)" if width is None else f"(None, {width})"
        rows.append((repr(layer), shape, f"{layer_params(layer):,}"))
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    widths[0] = max(widths[0], 24)
    line_width = widths[0] + widths[1] + widths[2] + 6

    def row(cells):
        return (f"{cells[0]:<{widths[0]}}   {cells[1]:<{widths[1]}}   "
                f"{cells[2]:>{widths[2]}}")

    total = count_params(model)
    lines = [f"Model: {len(model.layers)} layers", row(rows[0]), "=" * line_width]
    lines += [row(cells) for cells in rows[1:]]
    lines += ["=" * line_width,
              f"Total params: {total:,}",
              f"Trainable params: {total:,}",
              "Non-trainable params: 0",
              "_" * line_width,
              f"Loss: {model.loss!r}; optimizer: {model.optimizer!r}; "
              f"accuracy: {model.accuracy!r}",
              f"Device: {_devices(model)}; dtype: {_dtypes(model)}"]
    return "\n".join(lines)
