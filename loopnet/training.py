"""The bookkeeping of ``Model.train``: accumulating, the book's log lines, the history,
validation, callbacks and the progress bar, fed with plain numbers.

``Model.train`` runs the steps; after each step it hands this module the step's numbers, and
after each epoch the epoch's, through four calls of a ``TrainingRun``::

    run = TrainingRun(model, epochs=..., steps=..., ...)
    run.begin()
    for epoch in range(1, epochs + 1):
        run.start_epoch(epoch)
        for step in range(steps):
            ...                                    # forward, loss, backward, update
            run.step(step, data_loss, accuracy, regularization_loss, learning_rate, n_batch)
        # (or, for a path that only has the epoch's sums: run.epoch_totals(...))
        if run.end_epoch(epoch):                    # True: a callback stopped training
            break
    history = run.finish()                          # and run.close() in a finally

so any way of running the steps (the layered ops, a compiled training step) reports the same
way. A path that ran a block of full-batch epochs at once may hand them over together,
``run.end_epochs(first, n_samples, data_loss, accuracy, regularization_loss, learning_rate,
validation)`` with arrays of one value per epoch, where ``run.in_bulk`` (no callbacks, no
progress bar): the same history and lines, without a Python round per epoch. The numbers are
Python floats: ``data_loss`` the batch's mean loss, ``accuracy`` its fraction right (``None``
without an accuracy), ``regularization_loss`` the L1/L2 penalty of the weights the step
started from, ``learning_rate`` the rate the step used.

The log follows the book. Full-batch training (``batch_size=None``) prints chapter 18's line
every ``print_every`` epochs and the validation line once, after training::

    epoch: 100, acc: 0.713, loss: 0.653 (data_loss: 0.653, reg_loss: 0.000), lr: 0.0499

Training in batches prints chapter 19's lines: ``epoch: N``, a ``step: ...`` line every
``print_every`` steps and at the last step, then the epoch's ``training, ...`` line (its
``reg_loss`` is the penalty of the weights at the end of the epoch, the book's
``calculate_accumulated(include_regularization=True)``) and, when validated, ``validation,
...``. Learning rates are printed in full (``lr: {current_learning_rate}``, as the book).
"""

from __future__ import annotations

import math
import sys
import warnings

HISTORY_KEYS = ("epoch", "loss", "data_loss", "regularization_loss", "accuracy",
                "learning_rate")


def write(line: str) -> None:
    """Print ``line`` to stdout, above the progress bar when one is shown (tqdm's ``write``
    moves the bar out of the way); callbacks print their lines with it."""
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is None:     # no bar can be shown: tqdm was never imported
        print(line, flush=True)
        return
    tqdm_std.tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def numbers(accuracy, data_loss, regularization_loss, learning_rate) -> str:
    """The book's ``acc: ..., loss: ... (data_loss: ..., reg_loss: ...), lr: ...``."""
    return (f"acc: {accuracy:.3f}, loss: {data_loss + regularization_loss:.3f} "
            f"(data_loss: {data_loss:.3f}, reg_loss: {regularization_loss:.3f}), "
            f"lr: {learning_rate}")


def validation_line(loss, accuracy) -> str:
    """The book's ``validation, acc: ..., loss: ...``."""
    return f"validation, acc: {accuracy:.3f}, loss: {loss:.3f}"


def check_finite(epoch: int, step: int, steps: int, data_loss: float,
                 regularization_loss: float, learning_rate) -> None:
    """Raise ``FloatingPointError`` naming the epoch and step when a loss is NaN or infinite."""
    if math.isfinite(data_loss) and math.isfinite(regularization_loss):
        return
    where = f"epoch {epoch}" + (f", step {step}" if steps > 1 else "")
    raise FloatingPointError(
        f"training diverged at {where}: data_loss={data_loss}, reg_loss={regularization_loss} "
        f"(learning rate {learning_rate}); lower the learning rate or check the data for "
        "NaN/inf values")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a progress bar renders although stderr is no TTY)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def progress_bar(progress, total: int, unit: str):
    """A tqdm bar (rate and ETA included), or None when none is to be shown.

    ``progress``: ``None`` shows one when stderr is a terminal or in a notebook (``tqdm.auto``
    then picks the text or the notebook bar), ``True`` always (on stderr), ``False`` never; a
    stream (anything with ``write``) shows the text bar on that stream."""
    stream = None
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        show = bool(isatty and isatty()) or in_notebook()
    elif isinstance(progress, bool):
        show = progress
    elif callable(getattr(progress, "write", None)):
        show, stream = True, progress
    else:
        raise TypeError(f"progress must be None, True, False or a stream with write(), "
                        f"got {progress!r}")
    if not show:
        return None
    if stream is not None:
        from tqdm.std import tqdm
    else:
        with warnings.catch_warnings():     # no ipywidgets: tqdm.auto warns, then draws text
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
    return tqdm(total=total, unit=unit, file=stream, disable=False, dynamic_ncols=True,
                leave=True)


class TrainingRun:
    """One ``Model.train`` call's bookkeeping: see the module docstring.

    ``steps``          steps per epoch; ``batch_size`` None (full batch: chapter 18's log) or
                       the batch size (chapter 19's log)
    ``print_every``    0/None: print nothing; else the book's cadence (epochs or steps)
    ``validation_data`` ``(X_val, y_val)`` or None, evaluated every ``validate_every`` epochs
                       and after the last one
    ``callbacks``      ``loopnet.callbacks.Callback`` objects
    ``progress``       None, True, False or a stream (see ``progress_bar``)
    """

    def __init__(self, model, *, epochs: int, steps: int, batch_size, print_every,
                 validation_data=None, validate_every: int = 1, callbacks=(), progress=None):
        self.model = model
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.by_steps = batch_size is not None
        self.print_every = print_every or 0
        self.validation_data = validation_data
        self.validate_every = validate_every
        self.callbacks = list(callbacks)
        self.progress = progress
        self.has_accuracy = getattr(model, "accuracy", None) is not None
        self.history = {key: [] for key in HISTORY_KEYS}
        if validation_data is not None:
            self.history["val_loss"] = []
            self.history["val_accuracy"] = []
        self.last_validation = None      # (loss, accuracy) of the latest validation
        self.stopped_epoch = None
        # Seconds a compiled training path spent compiling, when it knows (it sets this);
        # recorded as history["compile_time"] for reports that tell compiling from training.
        self.compile_time = None
        self.bar = None
        self.start_epoch(0)

    @property
    def epoch_by_epoch(self) -> bool:
        """Whether the model must be exactly at the end of each epoch when ``end_epoch`` runs
        (callbacks that read the parameters): a path that runs several epochs per call must
        then run one at a time (it hands ``end_epoch`` its own validation figures)."""
        return any(getattr(callback, "reads_parameters", True) for callback in self.callbacks)

    # --- the calls -----------------------------------------------------------------------------

    def begin(self) -> None:
        """Start: callbacks' ``on_train_begin``, then the progress bar."""
        self.model.stop_training = False
        params = {"epochs": self.epochs, "steps": self.steps, "batch_size": self.batch_size,
                  "validation": self.validation_data is not None,
                  "validate_every": self.validate_every}
        for callback in self.callbacks:
            callback.set_model(self.model)
            callback.params = params
            callback.on_train_begin({})
        if self.steps > 1:
            self.bar = progress_bar(self.progress, self.epochs * self.steps, "step")
        else:
            self.bar = progress_bar(self.progress, self.epochs, "epoch")

    def start_epoch(self, epoch: int) -> None:
        """Reset the epoch's sums; chapter 19 prints ``epoch: N``."""
        self.epoch = epoch
        self.data_loss_sum = 0.0
        self.accuracy_sum = 0.0
        self.count = 0
        self.regularization_sum = 0.0       # step penalties weighted by their batch sizes
        self.learning_rate = None
        self.steps_seen = 0
        if epoch and self.by_steps and self.print_every:
            self.write(f"epoch: {epoch}")

    def step(self, step: int, data_loss: float, accuracy, regularization_loss: float,
             learning_rate, n_batch: int) -> None:
        """One step's numbers (after its update); prints chapter 19's step line when due."""
        self.data_loss_sum += data_loss * n_batch
        if accuracy is not None:
            self.accuracy_sum += accuracy * n_batch
        self.count += n_batch
        self.regularization_sum += regularization_loss * n_batch
        self.learning_rate = learning_rate
        self.steps_seen += 1
        if (self.by_steps and self.print_every
                and (step % self.print_every == 0 or step == self.steps - 1)):
            shown = float("nan") if accuracy is None else accuracy
            self.write(f"step: {step}, "
                       + numbers(shown, data_loss, regularization_loss, learning_rate))
        if self.bar is not None and self.steps > 1:
            self.bar.update(1)

    def epoch_totals(self, data_loss_sum: float, accuracy_sum, n_samples: int, learning_rate,
                     regularization_loss: float = 0.0) -> None:
        """The whole epoch at once, for a path that has only its sums: the losses and
        accuracies summed over samples, the last step's learning rate and (full batch) the
        penalty of the weights the step started from."""
        self.data_loss_sum = data_loss_sum
        self.accuracy_sum = 0.0 if accuracy_sum is None else accuracy_sum
        self.count = n_samples
        self.regularization_sum = regularization_loss * n_samples
        self.learning_rate = learning_rate
        self.steps_seen = self.steps

    def end_epoch(self, epoch: int, regularization_loss: float | None = None,
                  validation=None) -> bool:
        """Close the epoch: validate when due, record the history, print, update the bar and
        run the callbacks. ``regularization_loss``: the penalty of the weights at the end of
        the epoch (training in batches; computed from the model when not given);
        ``validation``: ``(loss, accuracy)`` on the validation data at the end of the epoch,
        when the training path measured them itself (else ``Model.evaluate`` runs when due).
        Returns True when a callback asked training to stop."""
        model = self.model
        data_loss = self.data_loss_sum / self.count
        accuracy = self.accuracy_sum / self.count if self.has_accuracy else float("nan")
        if not self.by_steps:     # full batch: the one step's penalty
            regularization_loss = self.regularization_sum / self.count
        elif regularization_loss is None:
            regularization_loss = final_regularization_loss(model)
        loss = data_loss + regularization_loss
        logs = {"epoch": epoch, "loss": loss, "data_loss": data_loss,
                "regularization_loss": regularization_loss, "accuracy": accuracy,
                "learning_rate": self.learning_rate}
        for key in HISTORY_KEYS:
            self.history[key].append(logs[key])
        validated = self.validation_data is not None and (
            epoch % self.validate_every == 0 or epoch == self.epochs)
        if self.validation_data is not None:
            val_loss = val_accuracy = float("nan")
            if validated:
                val_loss, val_accuracy = validation or model.evaluate(
                    *self.validation_data, batch_size=self.batch_size, verbose=False)
                logs["val_loss"], logs["val_accuracy"] = val_loss, val_accuracy
                self.last_validation = (val_loss, val_accuracy)
            self.history["val_loss"].append(val_loss)
            self.history["val_accuracy"].append(val_accuracy)

        if self.bar is not None:
            postfix = f"loss {loss:.3f}" + ("" if not self.has_accuracy
                                            else f", acc {accuracy:.3f}")
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(epoch * (self.steps if self.steps > 1 else 1) - self.bar.n)
        if self.print_every:
            if self.by_steps:
                self.write("training, " + numbers(accuracy, data_loss, regularization_loss,
                                                  self.learning_rate))
                if validated:
                    self.write(validation_line(*self.last_validation))
            elif epoch % self.print_every == 0:
                self.write(f"epoch: {epoch}, " + numbers(accuracy, data_loss,
                                                         regularization_loss,
                                                         self.learning_rate))
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)
        if getattr(model, "stop_training", False):
            self.stopped_epoch = epoch
            return True
        return False

    @property
    def in_bulk(self) -> bool:
        """Whether ``end_epochs`` may record a block of epochs at once: full batch (one step
        per epoch), no callbacks and no progress bar (nothing that runs between epochs)."""
        return not self.by_steps and not self.callbacks and self.bar is None

    def end_epochs(self, first: int, n_samples: int, data_loss, accuracy, regularization_loss,
                   learning_rate, validation=None) -> bool:
        """Epochs ``first``, ``first + 1``, ... of a full-batch run (``in_bulk``) at once, from
        float64 arrays of one value per epoch (``validation``: ``(loss, accuracy)`` arrays,
        given whenever the run has validation data): the history, lines and validation that
        ``start_epoch``, ``step`` and ``end_epoch`` would give epoch by epoch, computed with
        their float64 operations on whole arrays (the same bits; a compiled block's epochs
        then cost no Python each). Returns True when training was asked to stop."""
        import numpy as np

        k = len(data_loss)
        if k == 0:
            return False
        epochs = np.arange(first, first + k)
        # step's sums (from 0.0, weighted by the batch's rows) over end_epoch's count
        data = (0.0 + data_loss * n_samples) / n_samples
        penalty = (0.0 + regularization_loss * n_samples) / n_samples
        if self.has_accuracy:
            accuracy = (0.0 + accuracy * n_samples) / n_samples
        else:
            accuracy = np.full(k, float("nan"))
        lists = {"epoch": epochs.tolist(), "loss": (data + penalty).tolist(),
                 "data_loss": data.tolist(), "regularization_loss": penalty.tolist(),
                 "accuracy": accuracy.tolist(), "learning_rate": learning_rate.tolist()}
        for key in HISTORY_KEYS:
            self.history[key].extend(lists[key])
        if self.validation_data is not None:
            validated = (epochs % self.validate_every == 0) | (epochs == self.epochs)
            val_loss = np.where(validated, validation[0], np.nan)
            val_accuracy = np.where(validated, validation[1], np.nan)
            self.history["val_loss"].extend(val_loss.tolist())
            self.history["val_accuracy"].extend(val_accuracy.tolist())
            if validated.any():
                last = int(np.flatnonzero(validated)[-1])
                self.last_validation = (float(validation[0][last]),
                                        float(validation[1][last]))
        self.learning_rate = float(learning_rate[-1])
        if self.print_every:
            for j in np.flatnonzero(epochs % self.print_every == 0).tolist():
                self.write(f"epoch: {first + j}, " + numbers(
                    lists["accuracy"][j], lists["data_loss"][j],
                    lists["regularization_loss"][j], lists["learning_rate"][j]))
        if getattr(self.model, "stop_training", False):
            self.stopped_epoch = first + k - 1
            return True
        return False

    def finish(self) -> dict:
        """Close the bar, print chapter 18's final validation line, run the callbacks'
        ``on_train_end``; returns the history (with ``stopped_epoch`` when a callback
        stopped training, ``compile_time`` when the training path set one)."""
        self.close()
        if (self.validation_data is not None and self.print_every and not self.by_steps
                and self.last_validation is not None):
            self.write(validation_line(*self.last_validation))
        if self.stopped_epoch is not None:
            self.history["stopped_epoch"] = self.stopped_epoch
        if self.compile_time is not None:
            self.history["compile_time"] = float(self.compile_time)
        logs = {"stopped_epoch": self.stopped_epoch}
        for callback in self.callbacks:
            callback.on_train_end(logs)
        return self.history

    def close(self) -> None:
        """Remove the progress bar (also after an error)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, line: str) -> None:
        """Print a log line (through the bar's ``write`` when a bar is shown)."""
        if self.bar is None and "tqdm.std" not in sys.modules:
            print(line, flush=True)
        else:
            write(line)


def final_regularization_loss(model) -> float:
    """The L1/L2 penalty of the model's weights as they are now, as a Python float."""
    loss = model.loss
    total = getattr(loss, "_regularization_total", None)
    if total is not None:
        return total()
    return float(loss.regularization_loss())
