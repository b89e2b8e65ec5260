"""The fused fast path of ``Model.train`` on the ``cpu`` device (issue 5).

``Model.train`` asks ``prepare(model, X, y, batch_size, shuffle)`` for a ``FusedRun``; it gets
one when the model is a shape the fused kernel handles, and ``None`` otherwise (then the layered
path runs, unchanged). Handled: ``Dense`` (no L1/L2 penalties) with ``ReLU`` between them, a
final ``Softmax`` with ``CategoricalCrossentropy``, the ``Adam`` optimizer, ``CategoricalAccuracy``
(or none), integer class labels, full batch or minibatches, shuffled or not, every layer, the loss
and the accuracy on the ``cpu`` device, float32 or float64. Anything else (SGD, dropout,
regularizers, other losses, one-hot labels, other devices) takes the layered path.
``LOOPNET_FUSED=0`` turns the fast path off.

The kernel (``loopnet.kernels.fused.train_epochs_fused``) runs a block of epochs per call and
writes each epoch's data loss, accuracy and learning rate into a history buffer; ``epoch()``
hands them to ``Model.train`` one epoch at a time through the very objects the layered path
fills (``loss.accumulated_*``, ``accuracy.accumulated_*``, ``optimizer.current_learning_rate``),
so printing, history and validation code is shared. Parameters and Adam's state are the layers'
own arrays, updated in place: after training the model is exactly where the layered path would
leave it (within float rounding; bit-identical while the layered path uses the simple loops).
"""

from __future__ import annotations

import os

import numpy as np

# A block of epochs is sized to take roughly this many multiply-adds (~0.1 s), so the Python
# side (history, prints, the progress bar) keeps up, while the per-call cost of handing ~20
# arrays to numba (tens of microseconds) is paid once per block, not per epoch.
BLOCK_WORK = 50_000_000


def _structure_ok(model) -> bool:
    from loopnet.accuracy import CategoricalAccuracy
    from loopnet.activations import ReLU, Softmax
    from loopnet.layers import Dense
    from loopnet.losses import CategoricalCrossentropy
    from loopnet.optimizers import Adam

    layers = model.layers
    if (type(model.loss) is not CategoricalCrossentropy or type(model.optimizer) is not Adam
            or model.softmax_classifier_output is None):
        return False
    if model.accuracy is not None and (type(model.accuracy) is not CategoricalAccuracy
                                       or model.accuracy.binary):
        return False
    if len(layers) < 2 or type(layers[-1]) is not Softmax:
        return False
    body = layers[:-1]  # Dense (ReLU Dense)*
    if len(body) % 2 != 1:
        return False
    for k, layer in enumerate(body):
        wanted = Dense if k % 2 == 0 else ReLU
        if type(layer) is not wanted:
            return False
    for dense in body[::2]:
        if (dense.weight_regularizer_l1 or dense.weight_regularizer_l2
                or dense.bias_regularizer_l1 or dense.bias_regularizer_l2):
            return False
    return True


def _on_cpu(model) -> bool:
    from loopnet.devices import get_device

    owners = list(model.layers) + [model.loss]
    if model.accuracy is not None:
        owners.append(model.accuracy)
    return all(get_device(getattr(o, "device", None)) == "cpu" for o in owners)


def prepare(model, X, y, batch_size, shuffle):
    """A ``FusedRun`` for this training call, or ``None`` for the layered path."""
    if os.environ.get("LOOPNET_FUSED", "1") == "0":
        return None
    if not (_structure_ok(model) and _on_cpu(model)):
        return None
    if not (isinstance(X, np.ndarray) and isinstance(y, np.ndarray)):
        return None
    dense = model.layers[:-1:2]
    dtype = dense[0].weights.dtype
    if any(d.weights.dtype != dtype or d.biases.dtype != dtype for d in dense):
        return None
    if not all(isinstance(d.weights, np.ndarray) and d.weights.flags.c_contiguous
               and isinstance(d.biases, np.ndarray) and d.biases.flags.c_contiguous
               for d in dense):
        return None
    if X.ndim != 2 or X.shape[1] != dense[0].n_inputs or X.dtype.kind not in "biuf":
        return None
    if any(a.weights.shape[1] != b.weights.shape[0] for a, b in zip(dense, dense[1:])):
        return None
    n_classes = dense[-1].weights.shape[1]
    if y.ndim != 1 or y.dtype.kind not in "iu" or n_classes < 1:
        return None  # one-hot or float labels: the layered path validates and handles them
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        return None  # the layered path raises its ValueError naming the bad labels
    return FusedRun(model, dense, np.ascontiguousarray(X, dtype=dtype),
                    np.ascontiguousarray(y, dtype=np.intp), batch_size, shuffle)


class FusedRun:
    """Buffers for one ``Model.train`` call, allocated once and reused by every block."""

    def __init__(self, model, dense, X, y, batch_size, shuffle):
        from loopnet.backends import cpu
        from loopnet.kernels import dense as _dense, fused as _fused

        self.cpu = cpu
        self.model = model
        self.X, self.y = X, y
        n_samples = X.shape[0]
        self.batch_size = n_samples if batch_size is None else min(batch_size, n_samples)
        self.shuffle = shuffle
        dtype = X.dtype
        optimizer = model.optimizer
        widths = [X.shape[1]] + [d.weights.shape[1] for d in dense]
        self.weights = tuple(d.weights for d in dense)
        self.biases = tuple(d.biases.reshape(-1) for d in dense)  # views: updated in place

        def state(layer, name, params):
            return optimizer._state(layer, name, params)

        self.weight_momentums = tuple(state(d, "weight_momentums", d.weights) for d in dense)
        self.weight_cache = tuple(state(d, "weight_cache", d.weights) for d in dense)
        self.bias_momentums = tuple(state(d, "bias_momentums", d.biases).reshape(-1) for d in dense)
        self.bias_cache = tuple(state(d, "bias_cache", d.biases).reshape(-1) for d in dense)
        for d in dense:  # the layers keep their gradient buffers, as after a layered step
            d.dweights = np.zeros(d.weights.shape, dtype)
            d.dbiases = np.zeros(d.biases.shape, dtype)
        self.dweights = tuple(d.dweights for d in dense)
        self.dbiases = tuple(d.dbiases.reshape(-1) for d in dense)
        def zeros(shape):  # 64-byte aligned, for the tiled kernel's vector loads
            array = cpu.aligned_empty(shape, dtype)
            array[...] = 0
            return array

        self.acts = tuple(zeros((self.batch_size, w)) for w in widths)
        self.dacts = tuple(zeros((self.batch_size, w)) for w in widths)
        # Large layers run the register-tiled kernel, decided as the cpu backend decides for
        # a dense forward of this batch; they keep weights.T packed (Adam updates both copies).
        forward = [cpu._use_tiled(self.batch_size, a, b) for a, b in zip(widths, widths[1:])]
        # (the broadcast form's tile needs TN_ROWS inputs: fewer run the blocked loops)
        backward = [cpu._use_tiled_dweights(self.batch_size, a, b) and a >= _dense.TN_ROWS
                    for a, b in zip(widths, widths[1:])]
        self.tiled = np.array([_fused.TILED_FORWARD * f + _fused.TILED_DWEIGHTS * b
                               for f, b in zip(forward, backward)], np.int64)
        # the kernel's build without the broadcast-form dweights compiles faster
        self.tiled_dweights = any(backward)
        one = np.zeros(1, dtype)
        # weights.T: read by the tiled forward and by every backward dinputs (layers 1..)
        self.weights_t = tuple(zeros(w.shape[::-1]) if (f or l > 0) else one.reshape(1, 1)
                               for l, (w, f) in enumerate(zip(self.weights, forward)))
        for w, w_t in zip(self.weights, self.weights_t):
            if w_t.shape == w.shape[::-1]:
                w_t[...] = w.T
        panel = _dense.PANEL_WIDTH  # scratch for dvalues packed into panels (tiled dweights)
        self.dvalues_panels = tuple(zeros(-(-n // panel) * panel * self.batch_size) if b else one
                                    for n, b in zip(widths[1:], backward))
        self.sample_losses = np.zeros(self.batch_size, dtype)
        self.correct = np.zeros(self.batch_size, dtype)
        self.hyper = np.array([optimizer.learning_rate, optimizer.decay, optimizer.epsilon,
                               optimizer.beta_1, optimizer.beta_2], np.float64)
        self.step_work = self.batch_size * sum(a * b for a, b in zip(widths, widths[1:]))
        self.steps = -(-n_samples // self.batch_size)
        self.arange = np.arange(n_samples, dtype=np.intp)[None, :]
        self.history = np.zeros((0, 3), dtype=np.float64)
        self.next = 0  # row of self.history the next epoch() returns
        self.failed_step = -1

    def _run(self, n_epochs, order):
        model = self.model
        history = np.zeros((n_epochs, 3), dtype=np.float64)
        orders = self.arange if order is None else order.astype(np.intp)[None, :]
        start_iteration = model.optimizer.iterations
        failed = self.cpu.train_epochs(
            self.step_work, self.tiled_dweights, self.X, self.y, orders, self.batch_size,
            self.weights, self.biases, self.dweights, self.dbiases, self.acts, self.dacts,
            self.weight_momentums, self.weight_cache, self.bias_momentums, self.bias_cache,
            self.hyper, start_iteration, self.sample_losses, self.correct, history, self.tiled,
            self.weights_t, self.dvalues_panels)
        if failed >= 0:
            done_epochs, step = divmod(int(failed), self.steps)
            model.optimizer.iterations = start_iteration + failed
            history = history[:done_epochs]
            self.failed_step = (done_epochs, step)
        else:
            model.optimizer.iterations = start_iteration + n_epochs * self.steps
        if len(history):
            model.optimizer.current_learning_rate = float(history[-1, 2])
        self.history = history
        self.next = 0

    def epoch(self, epoch, epochs, order, one_at_a_time):
        """Train (or take from the current block) one epoch and put its results where the
        layered path leaves them. ``order``: this epoch's row permutation (shuffle) or None."""
        if self.next >= len(self.history):
            if self.failed_step != -1:
                self._raise(epoch)
            remaining = epochs - epoch + 1
            block = 1 if (one_at_a_time or order is not None) else max(
                1, min(remaining, BLOCK_WORK // max(1, 3 * self.step_work * self.steps)))
            self._run(block, order)
            if self.next >= len(self.history):
                self._raise(epoch)
        data_loss, accuracy, learning_rate = self.history[self.next]
        self.next += 1
        model = self.model
        n_samples = self.X.shape[0]
        model.loss.accumulated_sum = float(data_loss)     # sums over the epoch's steps
        model.loss.accumulated_count = n_samples
        if model.accuracy is not None:
            model.accuracy.accumulated_sum = float(accuracy)
            model.accuracy.accumulated_count = n_samples
        model.optimizer.current_learning_rate = float(learning_rate)

    def _raise(self, epoch):
        _, step = self.failed_step
        where = f"epoch {epoch}" + (f", step {step}" if self.steps > 1 else "")
        raise FloatingPointError(
            f"training diverged at {where}: data_loss=nan/inf (learning rate "
            f"{self.model.optimizer.current_learning_rate}); lower the learning rate "
            "or check the data for NaN/inf values")
