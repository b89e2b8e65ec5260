"""loopnet.plotting: the decision boundary and the training curves render to real PNG files."""

import struct
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")   # no display here; must come before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

from loopnet import datasets, plotting  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the PNG header: the IHDR chunk right after the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_size(figure, dpi):
    width, height = figure.get_size_inches() * dpi
    return round(width), round(height)


class LinearSoftmax:
    """A stand-in model: three fixed linear scores, softmaxed (any object with predict works)."""

    def predict(self, X):
        scores = np.c_[X[:, 0], X[:, 1], -X[:, 0] - X[:, 1]]
        exp_values = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp_values / exp_values.sum(axis=1, keepdims=True)


class Threshold:
    """A one-sigmoid-output model: probability of class 1 rises with x."""

    def predict(self, X):
        return 1 / (1 + np.exp(-8 * X[:, :1]))


def history(epochs=30, with_validation=True):
    t = np.arange(epochs)
    h = {"loss": list(1.1 * np.exp(-t / 10)), "accuracy": list(1 - 0.7 * np.exp(-t / 8))}
    if with_validation:
        h["val_loss"] = [v + 0.05 for v in h["loss"]]
        h["val_acc"] = [v - 0.05 for v in h["accuracy"]]
        h["lr"] = list(0.05 / (1 + 0.01 * t))
    return h


def distinct_colours(path):
    image = plt.imread(str(path))
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))


def test_decision_boundary_png(tmp_path):
    X, y = datasets.spiral_data(50, 3, seed=0)
    ax = plotting.plot_decision_boundary(LinearSoftmax(), X, y)
    figure = ax.figure
    size = expected_size(figure, 80)
    path = tmp_path / "boundary.png"
    plotting.save_figure(figure, path, dpi=80)
    assert png_size(path) == size
    # Three class regions, three point colours, axes and text: far more than a blank image's 1.
    assert distinct_colours(path) > 10


def test_decision_boundary_regions_follow_the_model():
    """The background is filled with one band per class, centred on the class index."""
    X, y = datasets.spiral_data(30, 3, seed=1)
    ax = plotting.plot_decision_boundary(LinearSoftmax(), X, y, resolution=50)
    filled = ax.collections[0]          # the contourf bands
    levels = getattr(filled, "levels", None)
    assert levels is not None and len(levels) == 4   # 3 classes -> 4 band edges
    plt.close(ax.figure)


def test_decision_boundary_into_given_axes_with_sigmoid_model(tmp_path):
    X, y = datasets.vertical_data(40, 2, seed=0)
    figure, axes = plt.subplots(1, 2, figsize=(6, 3))
    returned = plotting.plot_decision_boundary(Threshold(), X, y, ax=axes[1])
    assert returned is axes[1]
    path = tmp_path / "sigmoid.png"
    plotting.save_figure(figure, path, dpi=50)
    assert png_size(path) == (300, 150)


@pytest.mark.parametrize("layout", ["new", "one", "pair"])
def test_history_png(tmp_path, layout):
    if layout == "new":
        loss_ax, acc_ax = plotting.plot_history(history())
    elif layout == "one":
        _, ax = plt.subplots(figsize=(4, 3))
        loss_ax, acc_ax = plotting.plot_history(history(), ax=ax)
        assert loss_ax is ax and acc_ax is not ax
    else:
        _, pair = plt.subplots(2, 1, figsize=(4, 6))
        loss_ax, acc_ax = plotting.plot_history(history(with_validation=False), ax=pair)
        assert (loss_ax, acc_ax) == tuple(pair)
    labels = {line.get_label() for a in loss_ax.figure.axes for line in a.get_lines()}
    assert {"loss", "accuracy"} <= labels
    figure = loss_ax.figure
    size = expected_size(figure, 60)
    path = tmp_path / f"history_{layout}.png"
    plotting.save_figure(figure, path, dpi=60)
    assert png_size(path) == size
    assert distinct_colours(path) > 10


def test_history_curves_hold_the_values():
    h = history()
    loss_ax, acc_ax = plotting.plot_history(h)
    loss_line = next(line for line in loss_ax.get_lines() if line.get_label() == "loss")
    np.testing.assert_array_equal(loss_line.get_ydata(), h["loss"])
    np.testing.assert_array_equal(loss_line.get_xdata(), np.arange(1, len(h["loss"]) + 1))
    plt.close(loss_ax.figure)


def test_validation_every_k_epochs_and_the_learning_rate_axis_from_zero():
    """NaN marks epochs not validated: the curve goes through the measured epochs only; the
    learning-rate scale starts at 0, so a 1% decay looks like 1%."""
    h = {"epoch": list(range(1, 11)), "loss": list(np.linspace(1, 0.5, 10)),
         "accuracy": list(np.linspace(0.3, 0.8, 10)),
         "val_loss": [np.nan, np.nan, 0.9, np.nan, np.nan, 0.8, np.nan, np.nan, 0.7, 0.65],
         "learning_rate": list(0.05 / (1 + 1e-3 * np.arange(10)))}
    loss_ax, acc_ax = plotting.plot_history(h)
    line = next(l for l in loss_ax.get_lines() if l.get_label() == "validation loss")
    np.testing.assert_array_equal(line.get_xdata(), [3, 6, 9, 10])
    np.testing.assert_array_equal(line.get_ydata(), [0.9, 0.8, 0.7, 0.65])
    lr_ax = next(a for a in loss_ax.figure.axes
                 if any(l.get_label() == "learning rate" for l in a.get_lines()))
    bottom, top = lr_ax.get_ylim()
    assert bottom == 0 and 0.05 <= top <= 0.06
    plt.close(loss_ax.figure)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(n_samples, 2\)"):
        plotting.plot_decision_boundary(LinearSoftmax(), np.zeros((5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="4 labels but X has 5"):
        plotting.plot_decision_boundary(LinearSoftmax(), np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(TypeError, match="predict"):
        plotting.plot_decision_boundary(object(), np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="no 'loss'"):
        plotting.plot_history({"acc": [0.5]})
    plt.close("all")


def test_matplotlib_is_imported_lazily():
    code = ("import sys, loopnet; loopnet.plotting; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
            "assert 'numba' not in sys.modules, 'numba imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
