"""Callbacks: early stopping stops and puts back the best epoch's parameters, the checkpoint
file holds the best epoch's model, a callback can stop training, bad monitors are named; and
the progress bar (tqdm) only where asked, with the log lines printed beside it.

Tiny runs on the numpy device (and one on cpu, where the compiled fast path runs epochs in
blocks unless a callback reads the parameters)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

import loopnet
from helpers import bits, spiral_classifier
from loopnet.callbacks import Callback, EarlyStopping, ModelCheckpoint
from loopnet.datasets import spiral_data


@pytest.fixture(scope="module")
def spiral():
    return spiral_data(20, 3, seed=0), spiral_data(10, 3, seed=1)


def classifier(device="numpy", lr=0.05):
    return spiral_classifier(device, lr=lr)


class Snapshots(Callback):
    """Every epoch's parameters, copied (to compare with what the others keep)."""

    def on_train_begin(self, logs=None):
        self.parameters = {}

    def on_epoch_end(self, epoch, logs=None):
        self.parameters[epoch] = [(w.copy(), b.copy()) for w, b in self.model.get_parameters()]


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_early_stopping_stops_and_restores_the_best_parameters(spiral, device):
    """A learning rate of 1.0 makes the held-out loss bounce, so it stops improving soon."""
    (X, y), (X_test, y_test) = spiral
    model = classifier(device, lr=1.0)
    snapshots = Snapshots()
    stopper = EarlyStopping("val_loss", patience=3)
    history = model.train(X, y, epochs=200, print_every=0, validation_data=(X_test, y_test),
                          callbacks=[snapshots, stopper])
    stopped = stopper.stopped_epoch
    assert stopped is not None and stopped < 200
    assert history["stopped_epoch"] == stopped == len(history["epoch"])
    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss)) + 1
    assert stopper.best_epoch == best and stopper.best == val_loss[best - 1]
    assert stopped == best + 3          # three epochs in a row without improvement
    restored = model.get_parameters()
    for (w, b), (best_w, best_b) in zip(restored, snapshots.parameters[best]):
        assert bits(w) == bits(best_w) and bits(b) == bits(best_b)
    assert bits(restored[0][0]) != bits(snapshots.parameters[stopped][0][0])
    assert model.evaluate(X_test, y_test, verbose=False)[0] == pytest.approx(stopper.best,
                                                                            rel=1e-12)


def test_checkpoint_holds_the_best_epoch(spiral, tmp_path):
    (X, y), (X_test, y_test) = spiral
    model = classifier(lr=1.0)
    snapshots = Snapshots()
    path = tmp_path / "best.npz"
    checkpoint = ModelCheckpoint(path, monitor="val_accuracy")
    history = model.train(X, y, epochs=25, print_every=0, validation_data=(X_test, y_test),
                          callbacks=[snapshots, checkpoint])
    best = int(np.argmax(history["val_accuracy"])) + 1       # the first of the best
    assert checkpoint.best_epoch == best
    saved = loopnet.Model.load(path)
    for (w, b), (best_w, best_b) in zip(saved.get_parameters(), snapshots.parameters[best]):
        assert bits(w) == bits(best_w) and bits(b) == bits(best_b)
    every = ModelCheckpoint(tmp_path / "epoch-{epoch:02d}.npz", monitor="loss",
                            save_best_only=False)
    classifier().train(X, y, epochs=3, print_every=0, callbacks=[every])
    assert sorted(p.name for p in tmp_path.glob("epoch-*.npz")) == [
        "epoch-01.npz", "epoch-02.npz", "epoch-03.npz"]


def test_a_checkpoint_path_that_cannot_be_formatted_fails_when_made(tmp_path):
    """A checkpoint path with an unknown field, a positional field or a format its value does
    not take is refused by the constructor, naming the path and the fields it may hold (it
    failed with a bare KeyError at the first save, after an epoch of training)."""
    for path, problem in (("ck-{foo}.npz", "KeyError: 'foo'"),
                          ("ck-{}.npz", "IndexError"),
                          ("ck-{loss:03d}.npz", "Unknown format code 'd'"),
                          ("ck-{epoch.npz", "expected '}'")):
        with pytest.raises(ValueError, match=rf"ModelCheckpoint path .*{re.escape(path)}.* "
                                             rf"\(.*{re.escape(problem)}.*fields may be "
                                             r"\{epoch\} \(an int\)"):
            ModelCheckpoint(tmp_path / path)
    ModelCheckpoint(tmp_path / "ck-{epoch:03d}-{val_loss:.3f}-{learning_rate:g}.npz")


def test_a_callback_stops_training_and_sees_the_logs(spiral):
    (X, y), _ = spiral

    class StopAtThree(Callback):
        reads_parameters = False

        def on_train_begin(self, logs=None):
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append((epoch, sorted(logs)))
            if epoch == 3:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.end = logs

    callback = StopAtThree()
    history = classifier().train(X, y, epochs=10, print_every=0, callbacks=[callback])
    assert len(history["loss"]) == 3 and history["stopped_epoch"] == 3
    assert callback.seen[0] == (1, ["accuracy", "data_loss", "epoch", "learning_rate", "loss",
                                    "regularization_loss"])
    assert callback.end == {"stopped_epoch": 3}
    assert callback.params["epochs"] == 10 and callback.params["validation"] is False


def test_bad_callbacks_and_monitors_are_named(spiral):
    (X, y), _ = spiral
    model = classifier()
    with pytest.raises(ValueError, match="monitors 'val_loss': give train\\(\\) validation_data"):
        model.train(X, y, epochs=1, print_every=0, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="monitors 'val_acc', which training does not report"):
        model.train(X, y, epochs=1, print_every=0, callbacks=[EarlyStopping("val_acc")])
    with pytest.raises(TypeError, match="is not a callback"):
        model.train(X, y, epochs=1, print_every=0, callbacks=[object()])
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="lowest")
    assert EarlyStopping("val_accuracy").mode == "max" and EarlyStopping("loss").mode == "min"


# --- The progress bar ---------------------------------------------------------------------------

def test_no_bar_and_no_escape_codes_off_a_terminal(spiral, capsys):
    (X, y), _ = spiral
    for progress in (None, False):      # captured streams are no terminal
        classifier().train(X, y, epochs=4, print_every=2, progress=progress)
        captured = capsys.readouterr()
        assert captured.err == ""
        assert "\r" not in captured.out and "\x1b" not in captured.out
        assert [line.split(",")[0] for line in captured.out.splitlines()] == ["epoch: 2",
                                                                               "epoch: 4"]


def test_bar_on_a_given_stream_with_rate_and_the_log_beside_it(spiral, capsys):
    (X, y), _ = spiral
    stream = io.StringIO()
    classifier().train(X, y, epochs=4, batch_size=16, print_every=2, progress=stream)
    bar = stream.getvalue()
    assert "16/16" in bar and "step/s" in bar           # 4 epochs x 4 steps, and the rate
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bar)      # elapsed < remaining (the ETA)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["epoch: 1", out[1], out[2]] and out[1].startswith("step: 0, acc: ")
    assert "epoch: 4" in out and out[-1].startswith("training, acc: ")
