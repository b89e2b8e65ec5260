"""Losses: ``forward(y_pred, y_true)`` gives per-sample losses, ``calculate`` their mean,
``backward(dvalues, y_true)`` sets ``dinputs`` (the gradient of the mean loss), and
``regularization_loss`` adds the layers' L1/L2 penalties (the book's ``Loss`` interface)."""

from __future__ import annotations

import numpy as np

from loopnet import ops
from loopnet.activations import Softmax
from loopnet.devices import normalize
from loopnet.validate import dinputs_buffer


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float(dtype) -> np.dtype:
    """float32 or float64 (the dtypes loopnet computes in); anything else reads as float64."""
    if dtype is _FLOATS[0] or dtype is _FLOATS[1]:  # (an array's dtype: at once)
        return dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return np.dtype(np.float64)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _parameter_dtype(layers) -> np.dtype:
    """The dtype the layers' parameters share (float32 when there are none)."""
    if len(layers) == 1:        # (one layer, the book's regularization_loss(layer): at once)
        dtype = getattr(layers[0].weights, "dtype", None)
        return np.dtype(np.float32) if dtype is None else _float(dtype)
    dtypes = [getattr(layer.weights, "dtype", None) for layer in layers]
    dtypes = [_float(d) for d in dtypes if d is not None]
    return np.result_type(*dtypes) if dtypes else np.dtype(np.float32)


def _coefficients(layer) -> tuple:
    """A layer's penalty coefficients: weight l1, weight l2, bias l1, bias l2 (0 for a layer
    without them)."""
    return (getattr(layer, "weight_regularizer_l1", 0), getattr(layer, "weight_regularizer_l2", 0),
            getattr(layer, "bias_regularizer_l1", 0), getattr(layer, "bias_regularizer_l2", 0))


def _working(value: float, dtype):
    """``value`` as a numpy scalar of ``dtype``: printed with the digits the dtype holds."""
    if dtype is _FLOATS[0] or dtype is _FLOATS[1]:    # (a loss's own dtype: at once)
        return dtype.type(value)
    return np.dtype(dtype).type(value)


class Loss:
    """Base class: ``calculate(output, y)`` is the mean of ``forward(output, y)``.

    ``calculate`` also keeps a running sum over the batches of an epoch
    (``calculate_accumulated``, reset by ``new_pass``), as the book's ``Loss`` does.
    """

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)
        self.trainable_layers = []
        # The dtype of the last per-sample losses: ``calculate`` returns numpy scalars of it.
        self.dtype = np.dtype(np.float32)
        self.new_pass()

    def forward(self, y_pred, y_true):  # pragma: no cover - every loss overrides it
        raise NotImplementedError

    def backward(self, dvalues, y_true):  # pragma: no cover - every loss overrides it
        raise NotImplementedError

    def remember_trainable_layers(self, trainable_layers) -> None:
        """The layers whose L1/L2 penalties ``regularization_loss()`` adds up (set by Model)."""
        self.trainable_layers = list(trainable_layers)

    def regularization_loss(self, layer=None):
        """The L1/L2 penalty of ``layer`` (chapter 14's form), or of every remembered trainable
        layer when called without one (chapter 18's form), as a numpy scalar of the layers'
        dtype (``np.float32`` for float32 weights), as the book's ``np.sum`` gives it."""
        if layer is not None:
            weights = getattr(layer, "weights", None)
            total = ops.layer_penalty_direct(weights, getattr(layer, "biases", None),
                                             _coefficients(layer), getattr(layer, "device", None))
            if total is not None:           # (the book's loop, every epoch: at once)
                return weights.dtype.type(total)
        layers = self.trainable_layers if layer is None else [layer]
        return _working(self._regularization_total(layers), _parameter_dtype(layers))

    def _regularization_total(self, layers=None) -> float:
        """The penalty as a Python float (summed in float64): what ``Model`` records."""
        total = 0.0
        for layer in self.trainable_layers if layers is None else layers:
            device = getattr(layer, "device", None)
            weight_l1, weight_l2, bias_l1, bias_l2 = _coefficients(layer)
            for values, l1, l2 in ((layer.weights, weight_l1, weight_l2),
                                   (layer.biases, bias_l1, bias_l2)):
                if l1 > 0 or l2 > 0:
                    total += ops.regularization_loss(values, l1=l1, l2=l2, device=device)
        return total

    def calculate(self, output, y, *, include_regularization: bool = False):
        """The data loss: the mean of the per-sample losses, as a numpy scalar of the outputs'
        dtype (``np.float32`` for float32 outputs, as the book's ``np.mean``); with
        ``include_regularization=True`` the pair ``(data_loss, regularization_loss)``."""
        data_loss = _working(self._data_loss(output, y), self.dtype)
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def _data_loss(self, output, y) -> float:
        """The mean loss as a Python float (summed in float64), added to the running sum:
        what ``Model`` records (``calculate`` rounds it to the working dtype)."""
        sample_losses = self.forward(output, y)
        data_loss = ops.mean(sample_losses, device=self.device)
        n_samples = sample_losses.shape[0]
        self.dtype = _float(getattr(sample_losses, "dtype", None))
        self.accumulated_sum += data_loss * n_samples
        self.accumulated_count += n_samples
        return data_loss

    def new_pass(self) -> None:
        """Forget the running sum (start of an epoch)."""
        self.accumulated_sum = 0.0
        self.accumulated_count = 0

    def calculate_accumulated(self, *, include_regularization: bool = False):
        """The mean loss over every sample ``calculate`` has seen since ``new_pass`` (a numpy
        scalar of the working dtype); with ``include_regularization=True`` the pair
        ``(data_loss, regularization_loss)``, the penalty being that of the current weights."""
        data_loss = _working(self._accumulated(), self.dtype)
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def _accumulated(self) -> float:
        if self.accumulated_count == 0:
            raise RuntimeError("no loss was calculated since new_pass()")
        return self.accumulated_sum / self.accumulated_count

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CategoricalCrossentropy(Loss):
    """``-log(clip(p_correct, 1e-7, 1 - 1e-7))`` per sample; ``y_true`` as class indices or
    one-hot rows (the notes' ``Loss_CategoricalCrossEntropy``)."""

    def forward(self, y_pred, y_true):
        return ops.categorical_crossentropy(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        """``-1 / p_target / n_samples`` on each target class, 0 elsewhere."""
        self.dinputs = ops.categorical_crossentropy_backward(
            dvalues, y_true, out=dinputs_buffer(self, dvalues), device=self.device)
        return self.dinputs


class SoftmaxCategoricalCrossentropy:
    """Softmax and categorical cross-entropy as one step (the book's
    ``Activation_Softmax_Loss_CategoricalCrossentropy``): the backward pass is simply
    ``(softmax_output - one_hot(y_true)) / n_samples``, with no Jacobian.

    ``forward(inputs, y_true)`` runs the softmax (``self.output``) and returns the mean loss;
    ``backward(dvalues, y_true)`` takes the softmax output. ``Model`` uses this automatically
    when a ``Softmax`` layer is followed by ``CategoricalCrossentropy``.
    """

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)
        self.activation = Softmax(device=device)
        self.loss = CategoricalCrossentropy(device=device)

    def forward(self, inputs, y_true):
        self.output = self.activation.forward(inputs)
        return self.loss.calculate(self.output, y_true)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.softmax_crossentropy_backward(
            dvalues, y_true,
            out=dinputs_buffer(self, dvalues),
            device=self.device)
        return self.dinputs

    def __repr__(self) -> str:
        return "SoftmaxCategoricalCrossentropy()"


class BinaryCrossentropy(Loss):
    """``mean_j -(t log p + (1 - t) log(1 - p))`` per sample, ``p`` clipped to
    ``[1e-7, 1 - 1e-7]``: one yes/no question per sigmoid output (``Loss_BinaryCrossentropy``).
    ``y_true`` of shape (n_samples, n_outputs), or (n_samples,) for one output."""

    def forward(self, y_pred, y_true):
        return ops.binary_crossentropy(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.binary_crossentropy_backward(
            dvalues, y_true, out=dinputs_buffer(self, dvalues), device=self.device)
        return self.dinputs


class MeanSquaredError(Loss):
    """``mean_j (y_true - y_pred) ** 2`` per sample: the L2 regression loss
    (``Loss_MeanSquaredError``)."""

    def forward(self, y_pred, y_true):
        return ops.mean_squared_error(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.mean_squared_error_backward(
            dvalues, y_true, out=dinputs_buffer(self, dvalues), device=self.device)
        return self.dinputs


class MeanAbsoluteError(Loss):
    """``mean_j |y_true - y_pred|`` per sample: the L1 regression loss
    (``Loss_MeanAbsoluteError``). Its gradient is ``sign(y_pred - y_true) / n``; the book's code
    prints the opposite sign (an erratum), which would train away from the targets."""

    def forward(self, y_pred, y_true):
        return ops.mean_absolute_error(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.mean_absolute_error_backward(
            dvalues, y_true, out=dinputs_buffer(self, dvalues), device=self.device)
        return self.dinputs
