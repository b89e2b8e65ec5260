"""``Model``: the book's chapter-18/19 training loop around loopnet's layers.

::

    model = loopnet.Model()
    model.add(loopnet.Dense(2, 64)); model.add(loopnet.ReLU())
    model.add(loopnet.Dense(64, 3)); model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(),
              optimizer=loopnet.Adam(learning_rate=0.05, decay=5e-7),
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    history = model.train(X, y, epochs=10_000, print_every=100, validation_data=(X_test, y_test))
    loss, acc = model.evaluate(X_test, y_test)
    probabilities = model.predict(X_test)

Every computation on parameters, activations and gradients runs in the layers, losses and
optimizers through ``loopnet.ops`` (loop kernels on the selected device); this module only
orders the calls, slices batches of the host data and keeps Python floats (losses, accuracies,
the learning rate) for the log and the history.
"""

from __future__ import annotations

import math
import numbers
import sys
import time

import numpy as np

from loopnet import checks, ops
from loopnet.activations import Softmax
from loopnet.losses import CategoricalCrossentropy, SoftmaxCategoricalCrossentropy


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _n_rows(data, name: str) -> int:
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) == 0:
        raise ValueError(f"{name} must be an array with one row per sample, got {data!r}")
    return int(shape[0])


def _paired_rows(X, y, x_name: str, y_name: str):
    """``X`` and ``y`` as arrays (other array-likes converted; device arrays kept) and their
    common number of rows, or a ``ValueError`` naming both counts."""
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    n_samples, n_targets = _n_rows(X, x_name), _n_rows(y, y_name)
    if n_targets != n_samples:
        raise ValueError(f"{x_name} has {n_samples} samples but {y_name} has {n_targets} targets")
    return X, y, n_samples


class _ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal, redrawn at most
    ten times a second (so it costs nothing measurable per epoch)."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.last_draw = 0.0
        self.start = time.monotonic()
        self.drawn = False

    def update(self, epoch: int, loss: float, accuracy: float | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last_draw < 0.1 and epoch != self.total:
            return
        self.last_draw = now
        filled = int(self.WIDTH * epoch / self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        acc = "" if accuracy is None else f" acc {accuracy:.3f}"
        elapsed = now - self.start
        self.stream.write(f"\r[{bar}] {epoch}/{self.total} loss {loss:.3f}{acc} {elapsed:.1f}s")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        """Erase the bar so a log line printed now starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def close(self) -> None:
        self.clear()


class Model:
    """A sequence of layers, a loss, an optimizer and an accuracy (the book's ``Model``)."""

    def __init__(self):
        self.layers = []
        self.loss = None
        self.optimizer = None
        self.accuracy = None
        self.trainable_layers = []
        self.softmax_classifier_output = None
        self.finalized = False

    # --- building ---------------------------------------------------------------------------

    def add(self, layer) -> None:
        """Append a layer (anything with ``forward(inputs, training)`` and ``backward``)."""
        if not callable(getattr(layer, "forward", None)):
            raise TypeError(f"a layer needs a forward() method, got {layer!r}")
        self.layers.append(layer)
        self.finalized = False

    def set(self, *, loss=None, optimizer=None, accuracy=None) -> None:
        """Set the loss, the optimizer and the accuracy (those given; ``None`` keeps the old):
        loopnet objects, or the names Keras uses - ``loss="categorical_crossentropy"``,
        ``"binary_crossentropy"``, ``"mse"``, ``"mae"``; ``optimizer="sgd"``, ``"adagrad"``,
        ``"rmsprop"``, ``"adam"`` (the book's defaults); ``accuracy="categorical"``,
        ``"binary"``, ``"regression"``, or ``"accuracy"`` for the one that fits the loss.
        Anything else raises a ``TypeError``/``ValueError`` listing the valid names."""
        if loss is not None:
            self.loss = checks.loss_from(loss)
        if optimizer is not None:
            self.optimizer = checks.optimizer_from(optimizer)
        if accuracy is not None:
            self.accuracy = checks.accuracy_from(accuracy, self.loss)
        self.finalized = False

    def finalize(self) -> None:
        """Find the trainable layers, tell the loss about them (for the L1/L2 penalties), and
        use the fused softmax + cross-entropy backward when the model ends in ``Softmax`` and
        the loss is ``CategoricalCrossentropy``."""
        if not self.layers:
            raise ValueError("the model has no layers: add() some before finalize()")
        self.trainable_layers = [layer for layer in self.layers if hasattr(layer, "weights")]
        if self.loss is not None:
            self.loss.remember_trainable_layers(self.trainable_layers)
        self.softmax_classifier_output = None
        if isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CategoricalCrossentropy):
            self.softmax_classifier_output = SoftmaxCategoricalCrossentropy(device=self.loss.device)
        self.output_layer_activation = self.layers[-1]
        self.finalized = True

    # --- passes -------------------------------------------------------------------------------

    def forward(self, X, training: bool):
        """Run ``X`` through every layer; returns the last layer's output."""
        output = X
        for layer in self.layers:
            output = layer.forward(output, training)
        return output

    def backward(self, output, y) -> None:
        """Backpropagate from the loss to the first layer (each layer sets its gradients)."""
        if self.softmax_classifier_output is not None:
            self.softmax_classifier_output.backward(output, y)
            dvalues = self.softmax_classifier_output.dinputs
            self.layers[-1].dinputs = dvalues
            layers = self.layers[:-1]
        else:
            dvalues = self.loss.backward(output, y)
            layers = self.layers
        for layer in reversed(layers):
            dvalues = layer.backward(dvalues)

    def _optimize(self) -> None:
        self.optimizer.pre_update_params()
        for layer in self.trainable_layers:
            self.optimizer.update_params(layer)
        self.optimizer.post_update_params()

    # --- training -----------------------------------------------------------------------------

    def train(self, X, y, *, epochs: int = 1, batch_size: int | None = None,
              print_every: int | None = 1, validation_data=None, shuffle: bool = False,
              seed=None, progress: bool | None = None) -> dict:
        """Train for ``epochs`` passes over ``(X, y)``; returns the history, a dict of lists
        with one entry per epoch: ``epoch``, ``loss`` (data + regularization), ``data_loss``,
        ``regularization_loss``, ``accuracy``, ``learning_rate``, and with
        ``validation_data=(X_val, y_val)`` also ``val_loss`` and ``val_accuracy``.

        ``batch_size=None`` trains on the whole set at once (one step per epoch); otherwise
        each epoch takes ``ceil(n / batch_size)`` steps, in order, or in a fresh order drawn
        from ``np.random.default_rng(seed)`` each epoch when ``shuffle=True`` (same seed, same
        run). Every ``print_every`` epochs (``None`` or 0: never) the book's line is printed::

            epoch: 100, acc: 0.713, loss: 0.653 (data_loss: 0.653, reg_loss: 0.000), lr: 0.0499

        A progress bar goes to stderr when it is a terminal (``progress=None``), always
        (``True``) or never (``False``). A NaN or infinite loss stops training with a
        ``FloatingPointError`` naming the epoch and step.
        """
        if self.loss is None or self.optimizer is None:
            raise ValueError("set(loss=..., optimizer=...) before train()")
        if not self.finalized:
            self.finalize()
        epochs = _positive_int(epochs, "epochs")
        X, y, n_samples = _paired_rows(X, y, "X", "y")
        if n_samples == 0:
            raise ValueError("X is empty: nothing to train on")
        checks.check_model(self, X)
        if batch_size is not None:
            batch_size = _positive_int(batch_size, "batch_size")
        steps = 1 if batch_size is None else math.ceil(n_samples / batch_size)
        if print_every is not None and print_every != 0:
            print_every = _positive_int(print_every, "print_every")
        validation_data = checks.check_validation_data(self, validation_data, y)
        if shuffle and not isinstance(X, np.ndarray):
            raise TypeError("shuffle=True needs X and y as host numpy arrays")
        rng = np.random.default_rng(seed) if shuffle else None
        if self.accuracy is not None:
            self.accuracy.init(y)

        history = {"epoch": [], "loss": [], "data_loss": [], "regularization_loss": [],
                   "accuracy": [], "learning_rate": []}
        if validation_data is not None:
            history["val_loss"] = []
            history["val_accuracy"] = []
        trainer, path = self._compiled_trainer(X, y, batch_size, validation_data)
        history["path"] = path
        history["compile_time"] = 0.0
        show = sys.stderr.isatty() if progress is None else bool(progress)
        bar = _ProgressBar(epochs, show)
        try:
            epoch = 1
            while epoch <= epochs:
                if trainer is not None:
                    # a block of epochs in one compiled call, then each epoch's bookkeeping
                    count = trainer.block_size(epochs - epoch + 1, one_at_a_time=False)
                    orders = [rng.permutation(n_samples) if rng is not None else None
                              for _ in range(count)]
                    records = trainer.train(orders)
                    history["compile_time"] = trainer.run.compile_time
                    for record in records:
                        self.loss.new_pass()
                        if self.accuracy is not None:
                            self.accuracy.new_pass()
                        regularization_sum = 0.0
                        for data_loss, accuracy, regularization_loss, _, rows in record.steps:
                            self.loss.accumulated_sum += data_loss * rows
                            self.loss.accumulated_count += rows
                            if self.accuracy is not None:
                                self.accuracy.accumulated_sum += accuracy * rows
                                self.accuracy.accumulated_count += rows
                            regularization_sum += regularization_loss * rows
                        self._end_epoch(history, epoch, regularization_sum / n_samples,
                                        record.steps[-1][3], record.validation, print_every,
                                        bar)
                        epoch += 1
                    if trainer.failure is not None:
                        _, step, (data_loss, _, regularization_loss, _) = trainer.failure
                        self._diverged(epoch, step, steps, data_loss, regularization_loss)
                    continue
                X_epoch, y_epoch = X, y
                if rng is not None:
                    order = rng.permutation(n_samples)
                    X_epoch, y_epoch = X[order], y[order]
                self.loss.new_pass()
                if self.accuracy is not None:
                    self.accuracy.new_pass()
                regularization_sum = 0.0
                for step in range(steps):
                    if batch_size is None:
                        batch_X, batch_y = X_epoch, y_epoch
                    else:
                        batch_X = X_epoch[step * batch_size:(step + 1) * batch_size]
                        batch_y = y_epoch[step * batch_size:(step + 1) * batch_size]
                    output = self.forward(batch_X, training=True)
                    data_loss, regularization_loss = self.loss.calculate(
                        output, batch_y, include_regularization=True)
                    if not (math.isfinite(data_loss) and math.isfinite(regularization_loss)):
                        self._diverged(epoch, step, steps, data_loss, regularization_loss)
                    regularization_sum += regularization_loss * _n_rows(batch_X, "X")
                    if self.accuracy is not None:
                        self.accuracy.calculate(output, batch_y)
                    self.backward(output, batch_y)
                    self._optimize()
                validation = None
                if validation_data is not None:
                    validation = self.evaluate(*validation_data, batch_size=batch_size)
                self._end_epoch(history, epoch, regularization_sum / n_samples,
                                self.optimizer.current_learning_rate, validation, print_every,
                                bar)
                epoch += 1
        finally:
            bar.close()
        if validation_data is not None and print_every:
            print(f"validation, acc: {history['val_accuracy'][-1]:.3f}, "
                  f"loss: {history['val_loss'][-1]:.3f}", flush=True)
        return history

    def _compiled_trainer(self, X, y, batch_size, validation_data):
        """The compiled step for this call (``loopnet.compiled``) and the history's ``path``,
        or ``None`` and the reason the layered path runs (warned about once on cpu)."""
        from loopnet import compiled
        from loopnet.devices import get_device

        devices = {get_device(getattr(owner, "device", None))
                   for owner in [*self.layers, self.loss, self.accuracy] if owner is not None}
        if devices != {"cpu"}:
            return None, f"layered ({', '.join(sorted(devices))})"
        try:
            return (compiled.prepare_training(self, X, y, batch_size, validation_data),
                    "compiled")
        except compiled.Unsupported as reason:
            if compiled.enabled():
                compiled.warn_layered(self, str(reason))
            return None, f"layered: {reason}"

    def _diverged(self, epoch, step, steps, data_loss, regularization_loss):
        where = f"epoch {epoch}" + (f", step {step}" if steps > 1 else "")
        raise FloatingPointError(
            f"training diverged at {where}: data_loss={data_loss}, "
            f"reg_loss={regularization_loss} (learning rate "
            f"{self.optimizer.current_learning_rate}); lower the learning rate "
            "or check the data for NaN/inf values")

    def _end_epoch(self, history, epoch, regularization_loss, learning_rate, validation,
                   print_every, bar):
        """An epoch's figures from the loss's and the accuracy's running sums: the history,
        the validation figures, the book's log line, the progress bar."""
        data_loss = self.loss.calculate_accumulated()
        loss = data_loss + regularization_loss
        accuracy = (self.accuracy.calculate_accumulated()
                    if self.accuracy is not None else float("nan"))
        history["epoch"].append(epoch)
        history["loss"].append(loss)
        history["data_loss"].append(data_loss)
        history["regularization_loss"].append(regularization_loss)
        history["accuracy"].append(accuracy)
        history["learning_rate"].append(learning_rate)
        if validation is not None:
            history["val_loss"].append(validation[0])
            history["val_accuracy"].append(validation[1])
        if print_every and epoch % print_every == 0:
            bar.clear()
            print(f"epoch: {epoch}, acc: {accuracy:.3f}, loss: {loss:.3f} "
                  f"(data_loss: {data_loss:.3f}, reg_loss: {regularization_loss:.3f}), "
                  f"lr: {learning_rate}", flush=True)
        bar.update(epoch, loss, None if self.accuracy is None else accuracy)

    def evaluate(self, X_val, y_val, *, batch_size: int | None = None):
        """``(data_loss, accuracy)`` on ``(X_val, y_val)`` without training (dropout off).
        The accuracy is NaN when the model has none."""
        if self.loss is None:
            raise ValueError("set(loss=...) before evaluate()")
        if not self.finalized:
            self.finalize()
        X_val, y_val, n_samples = _paired_rows(X_val, y_val, "X_val", "y_val")
        if n_samples == 0:
            raise ValueError(f"X_val is empty (shape {tuple(X_val.shape)}): no samples to "
                             "evaluate")
        checks.check_model(self, X_val, name="X_val")
        self.loss.new_pass()
        if self.accuracy is not None:
            self.accuracy.new_pass()
        size = n_samples if batch_size is None else _positive_int(batch_size, "batch_size")
        for start in range(0, n_samples, size):
            batch_X, batch_y = X_val[start:start + size], y_val[start:start + size]
            output = self.forward(batch_X, training=False)
            self.loss.calculate(output, batch_y)
            if self.accuracy is not None:
                self.accuracy.calculate(output, batch_y)
        loss = self.loss.calculate_accumulated()
        accuracy = (self.accuracy.calculate_accumulated() if self.accuracy is not None
                    else float("nan"))
        return loss, accuracy

    def predict(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """The model's outputs for ``X`` (probabilities for a softmax model), as a numpy array
        (``(0, n_outputs)`` for no samples); ``self.output_layer_activation.predictions(...)``
        turns them into classes."""
        if not self.finalized:
            self.finalize()
        if not hasattr(X, "shape"):
            X = np.asarray(X)
        n_samples = _n_rows(X, "X")
        width = checks.check_model(self, X)
        size = n_samples if batch_size is None else _positive_int(batch_size, "batch_size")
        if n_samples == 0:
            if width is None:
                raise ValueError(f"X is empty (shape {tuple(X.shape)}) and the model's output "
                                 "width is unknown")
            return np.empty((0, width), checks.output_dtype(self))
        outputs = [ops.to_numpy(self.forward(X[start:start + size], training=False))
                   for start in range(0, n_samples, size)]
        return outputs[0] if len(outputs) == 1 else np.vstack(outputs)

    # --- parameters, saving and loading --------------------------------------------------------

    def get_parameters(self) -> list:
        """``[(weights, biases), ...]`` of the trainable layers (host numpy arrays)."""
        return [tuple(ops.to_numpy(p) for p in layer.get_parameters())
                for layer in self.trainable_layers or
                [layer for layer in self.layers if hasattr(layer, "weights")]]

    def set_parameters(self, parameters) -> None:
        """Set every trainable layer's ``(weights, biases)``: a list of pairs of arrays (or
        nested lists), converted as ``Dense.set_parameters`` converts them. Every pair is
        checked before any layer changes; a wrong shape names the layer and both shapes."""
        layers = [(index, layer) for index, layer in enumerate(self.layers)
                  if hasattr(layer, "weights")]
        try:
            parameters = list(parameters)
        except TypeError:
            raise TypeError("parameters must be a list of (weights, biases) pairs, got "
                            f"{type(parameters).__name__}") from None
        if len(parameters) != len(layers):
            raise ValueError(f"got parameters for {len(parameters)} layers, the model has "
                             f"{len(layers)} trainable layers")
        converted = []
        for (index, layer), pair in zip(layers, parameters):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"parameters of layer {index} ({layer!r}) must be a pair "
                                f"(weights, biases), got {type(pair).__name__}")
            weights, biases = pair
            if hasattr(layer, "checked_parameters"):    # a Dense layer: convert and check first
                try:
                    weights, biases = layer.checked_parameters(weights, biases)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"layer {index}: {err}") from None
            converted.append((weights, biases))
        for (index, layer), (weights, biases) in zip(layers, converted):
            layer.set_parameters(weights, biases)

    def save_parameters(self, path) -> None:
        """Write the trainable layers' weights and biases to ``path`` (``.npz``, no pickle)."""
        from loopnet import saving

        saving.save_parameters(self, path)

    def load_parameters(self, path) -> None:
        """Read weights and biases written by ``save_parameters`` into this model's layers."""
        from loopnet import saving

        saving.load_parameters(self, path)

    def save(self, path) -> None:
        """Write the whole model - layers, parameters, loss, optimizer with its state,
        accuracy - to ``path`` (``.npz`` with a JSON architecture, no pickle, atomic)."""
        from loopnet import saving

        saving.save_model(self, path)

    @staticmethod
    def load(path, *, device: str | None = None) -> "Model":
        """Rebuild a model written by ``save`` (bit-exact parameters and optimizer state) from
        a path or an open binary file; ``device=`` puts every layer, the loss and the accuracy
        on that device. A damaged or foreign file raises ``loopnet.ModelFileError``."""
        from loopnet import saving

        return saving.load_model(path, device=device)

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Model([{layers}], loss={self.loss!r}, optimizer={self.optimizer!r})"
