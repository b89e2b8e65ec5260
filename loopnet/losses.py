"""Losses: ``forward(y_pred, y_true)`` gives per-sample losses, ``calculate`` their mean,
``backward(dvalues, y_true)`` sets ``dinputs`` (the gradient of the mean loss), and
``regularization_loss`` adds the layers' L1/L2 penalties (the book's ``Loss`` interface)."""

from __future__ import annotations

from loopnet import ops
from loopnet.activations import Softmax
from loopnet.devices import normalize
from loopnet.layers import _buffer


class Loss:
    """Base class: ``calculate(output, y)`` is the mean of ``forward(output, y)``.

    ``calculate`` also keeps a running sum over the batches of an epoch
    (``calculate_accumulated``, reset by ``new_pass``), as the book's ``Loss`` does.
    """

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)
        self.trainable_layers = []
        self.new_pass()

    def forward(self, y_pred, y_true):  # pragma: no cover - every loss overrides it
        raise NotImplementedError

    def backward(self, dvalues, y_true):  # pragma: no cover - every loss overrides it
        raise NotImplementedError

    def remember_trainable_layers(self, trainable_layers) -> None:
        """The layers whose L1/L2 penalties ``regularization_loss()`` adds up (set by Model)."""
        self.trainable_layers = list(trainable_layers)

    def regularization_loss(self, layer=None) -> float:
        """The L1/L2 penalty of ``layer`` (chapter 14's form), or of every remembered trainable
        layer when called without one (chapter 18's form)."""
        layers = self.trainable_layers if layer is None else [layer]
        total = 0.0
        for layer in layers:
            for values, l1, l2 in (
                (layer.weights, layer.weight_regularizer_l1, layer.weight_regularizer_l2),
                (layer.biases, layer.bias_regularizer_l1, layer.bias_regularizer_l2),
            ):
                if l1 > 0 or l2 > 0:
                    total += ops.regularization_loss(values, l1=l1, l2=l2, device=layer.device)
        return total

    def calculate(self, output, y, *, include_regularization: bool = False):
        """The data loss: the mean of the per-sample losses, as a Python float; with
        ``include_regularization=True`` the pair ``(data_loss, regularization_loss)``."""
        sample_losses = self.forward(output, y)
        data_loss = ops.mean(sample_losses, device=self.device)
        n_samples = sample_losses.shape[0]
        self.accumulated_sum += data_loss * n_samples
        self.accumulated_count += n_samples
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def new_pass(self) -> None:
        """Forget the running sum (start of an epoch)."""
        self.accumulated_sum = 0.0
        self.accumulated_count = 0

    def calculate_accumulated(self, *, include_regularization: bool = False):
        """The mean loss over every sample ``calculate`` has seen since ``new_pass``."""
        if self.accumulated_count == 0:
            raise RuntimeError("no loss was calculated since new_pass()")
        data_loss = self.accumulated_sum / self.accumulated_count
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def _dinputs_buffer(self, dvalues):
        return _buffer(getattr(self, "dinputs", None), getattr(dvalues, "shape", ()),
                       getattr(dvalues, "dtype", None))

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
            dvalues, y_true, out=self._dinputs_buffer(dvalues), device=self.device)
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

    def forward(self, inputs, y_true) -> float:
        self.output = self.activation.forward(inputs)
        return self.loss.calculate(self.output, y_true)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.softmax_crossentropy_backward(
            dvalues, y_true,
            out=_buffer(getattr(self, "dinputs", None), getattr(dvalues, "shape", ()),
                        getattr(dvalues, "dtype", None)),
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
            dvalues, y_true, out=self._dinputs_buffer(dvalues), device=self.device)
        return self.dinputs


class MeanSquaredError(Loss):
    """``mean_j (y_true - y_pred) ** 2`` per sample: the L2 regression loss
    (``Loss_MeanSquaredError``)."""

    def forward(self, y_pred, y_true):
        return ops.mean_squared_error(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.mean_squared_error_backward(
            dvalues, y_true, out=self._dinputs_buffer(dvalues), device=self.device)
        return self.dinputs


class MeanAbsoluteError(Loss):
    """``mean_j |y_true - y_pred|`` per sample: the L1 regression loss
    (``Loss_MeanAbsoluteError``). Its gradient is ``sign(y_pred - y_true) / n``; the book's code
    prints the opposite sign (an erratum), which would train away from the targets."""

    def forward(self, y_pred, y_true):
        return ops.mean_absolute_error(y_pred, y_true, device=self.device)

    def backward(self, dvalues, y_true):
        self.dinputs = ops.mean_absolute_error_backward(
            dvalues, y_true, out=self._dinputs_buffer(dvalues), device=self.device)
        return self.dinputs
