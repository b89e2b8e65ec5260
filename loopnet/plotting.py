"""Pictures of a trained network: its decision boundary and its training curves.

matplotlib is imported inside the functions, not here, so ``import loopnet.plotting`` works
without it (it is the optional extra ``plot``: ``pip install -e ".[plot]"``). Both functions take
``ax=None``, as matplotlib's own helpers do: pass axes to draw into your figure, or get a new
figure. To write a PNG without a display, select the Agg backend before pyplot is imported
(``matplotlib.use("Agg")``; ``save_figure`` and the ``loopnet`` command do).
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_decision_boundary", "plot_history", "save_figure"]

# ``Model.train``'s history keys and the short spellings also accepted.
ALIASES = {"accuracy": "acc", "val_accuracy": "val_acc", "learning_rate": "lr"}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loopnet.plotting needs matplotlib: pip install -e \".[plot]\" (or pip install matplotlib)"
        ) from None
    return plt


def _class_predictions(probabilities: np.ndarray) -> np.ndarray:
    """Class indices from ``predict`` output: argmax of softmax rows, or 0/1 from one sigmoid."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        return (probabilities.reshape(-1) > 0.5).astype(np.intp)
    return np.argmax(probabilities, axis=1)


def plot_decision_boundary(model, X, y, ax=None, *, resolution: int = 200, margin: float = 0.1,
                           cmap: str = "brg", title: str | None = None):
    """Colour the plane by the class the model predicts, with the samples on top.

    ``model``  anything with ``predict(X)`` returning class probabilities, ``(n, n_classes)``
               softmax rows or ``(n, 1)`` sigmoid outputs (a ``loopnet.Model``, for instance)
    ``X``      (n_samples, 2) inputs; ``y`` (n_samples,) class indices (or one-hot rows)
    ``ax``     the matplotlib axes to draw into (default: a new figure's)

    The model is evaluated on a ``resolution x resolution`` grid covering the data plus
    ``margin`` of its extent on each side. Returns the axes.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"plot_decision_boundary needs 2-D inputs of shape (n_samples, 2), "
                         f"got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"y has {len(y)} labels but X has {len(X)} samples")
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"model must have a predict(X) method, got {type(model).__name__}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))

    low, high = X.min(axis=0), X.max(axis=0)
    pad = margin * np.where(high > low, high - low, 1.0)
    xs = np.linspace(low[0] - pad[0], high[0] + pad[0], resolution)
    ys = np.linspace(low[1] - pad[1], high[1] + pad[1], resolution)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid = np.c_[grid_x.ravel(), grid_y.ravel()].astype(X.dtype if X.dtype.kind == "f" else np.float32)
    predicted = _class_predictions(model.predict(grid)).reshape(grid_x.shape)

    n_classes = int(max(predicted.max(), y.max() if y.size else 0)) + 1
    # One colour per class, the same in the background and in the points; levels between the
    # integers so each class gets exactly its own band.
    levels = np.arange(n_classes + 1) - 0.5
    ax.contourf(grid_x, grid_y, predicted, levels=levels, cmap=cmap, alpha=0.25,
                vmin=-0.5, vmax=n_classes - 0.5)
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap=cmap, s=8, edgecolors="none",
               vmin=-0.5, vmax=n_classes - 0.5)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title if title is not None else "decision boundary")
    return ax


def plot_history(history, ax=None, *, title: str | None = None):
    """Loss and accuracy per epoch, as ``Model.train`` returns them.

    ``history``  a dict of per-epoch lists, as ``Model.train`` returns it: ``loss`` and
                 ``accuracy``, optionally ``val_loss``, ``val_accuracy`` (dashed; NaN on epochs
                 not validated, which are left out) and ``learning_rate`` (dotted, its own
                 scale, from 0); ``epoch`` gives the x values; the short names ``acc``,
                 ``val_acc`` and ``lr`` are accepted too
    ``ax``       None (a new figure with a loss panel and an accuracy panel), one axes (loss on
                 the left scale, accuracy on the right), or a pair of axes (loss, accuracy)

    Returns the axes it drew into: ``(loss_ax, acc_ax)``.
    """
    if not hasattr(history, "get"):
        raise TypeError(f"history must be a dict of per-epoch lists, got {type(history).__name__}")
    if "loss" not in history:
        raise ValueError(f"history has no 'loss' entry (it has: {', '.join(map(str, history)) or 'nothing'})")
    plt = _pyplot()
    if ax is None:
        _, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    elif isinstance(ax, (tuple, list, np.ndarray)):
        loss_ax, acc_ax = ax
    else:
        loss_ax, acc_ax = ax, ax.twinx()
    one_axes = acc_ax is not ax and loss_ax is ax     # accuracy drawn on a twin of the given axes

    def series(key):
        """The per-epoch list under ``key`` or its other spelling; None when absent or empty."""
        for name in (key, ALIASES.get(key)):
            values = history.get(name) if name else None
            if values is not None and len(values) > 0:
                return values
        return None

    epochs = history.get("epoch")

    def curve(axes, key, label, **style):
        """The values against their epochs; NaN entries (epochs not validated) left out, so
        a curve measured every K epochs is drawn through its points."""
        values = series(key)
        if values is None:
            return None
        values = np.asarray(values, dtype=np.float64)
        x = (np.asarray(epochs, dtype=np.float64) if epochs is not None
             and len(epochs) == len(values) else np.arange(1, len(values) + 1))
        measured = ~np.isnan(values)
        if not measured.all():
            style.setdefault("marker", ".")
        return axes.plot(x[measured], values[measured], label=label, **style)[0]

    lines = [curve(loss_ax, "loss", "loss", color="tab:blue"),
             curve(loss_ax, "val_loss", "validation loss", color="tab:blue", linestyle="--")]
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    lines += [curve(acc_ax, "accuracy", "accuracy", color="tab:orange"),
              curve(acc_ax, "val_accuracy", "validation accuracy", color="tab:orange",
                    linestyle="--")]
    acc_ax.set_ylabel("accuracy")
    if acc_ax is not loss_ax and acc_ax.get_xlabel() == "":
        acc_ax.set_xlabel("epoch")
    if series("learning_rate") is not None:
        # twinx() moves its parent's ticks to the left: in the one-axes layout twin the loss axes
        # (already on the left), not the accuracy twin, and push the scale past the accuracy one.
        lr_ax = loss_ax.twinx() if one_axes else acc_ax.twinx()
        if one_axes:
            lr_ax.spines["right"].set_position(("axes", 1.15))   # beside the accuracy scale
        lr_line = curve(lr_ax, "learning_rate", "learning rate", color="tab:gray", linestyle=":")
        lines.append(lr_line)
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", useOffset=False)   # 0.04998, not 1e-6 + 4.999e-2
        # The scale starts at 0, so a decay of 0.5% looks like 0.5%, not like a fall to nothing.
        top = np.nanmax(lr_line.get_ydata()) if len(lr_line.get_ydata()) else 1.0
        lr_ax.set_ylim(0, top * 1.05 if top > 0 else 1.0)
    lines = [line for line in lines if line is not None]
    if one_axes:        # one legend for every curve sharing the plot
        acc_ax.legend(lines, [line.get_label() for line in lines], loc="center right",
                      fontsize="small")
    else:               # a legend per panel, for the curves drawn in it
        for panel in {id(loss_ax): loss_ax, id(acc_ax): acc_ax}.values():
            mine = [line for line in lines if line.axes is panel
                    or (panel is acc_ax and line.axes not in (loss_ax, acc_ax))]
            if mine:
                panel.legend(mine, [line.get_label() for line in mine], loc="center right",
                             fontsize="small")
    loss_ax.set_title(title if title is not None else "training")
    return loss_ax, acc_ax


def save_figure(figure, path, dpi: int = 100) -> None:
    """Write ``figure`` to ``path`` (the format from its suffix, e.g. ``.png``) and close it.

    The image is ``figure.get_size_inches() * dpi`` pixels: the layout is tightened inside the
    figure rather than by cropping, so the size is known in advance.
    """
    plt = _pyplot()
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
