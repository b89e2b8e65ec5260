"""The ``loopnet`` command line (``DESCRIPTION`` below is its help text)."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import zipfile

DESCRIPTION = """\
loopnet: a neural network whose every operation is an explicit loop, compiled by numba.

  loopnet train                     train the book's spiral classifier, print a summary
  loopnet train --data my.csv       ... on your own data (.npz with X and y, or .csv)
  loopnet train --data images/      ... on an image folder (images/<class>/<file>.png,
                                    or images/train/... and images/test/...)
  loopnet predict --model model.npz --data new.csv
  loopnet predict --model model.npz --image a.png b.png
  loopnet explain dense             the loops beside their numpy twin, run on the same input
  loopnet explain --list            every op
  loopnet forward                   the notes' forward pass on spiral data, printing the loss

Bad arguments, a bad data or model file, sizes that cannot be allocated and a diverging run
give a one-line error and exit status 2; output paths and --plot's matplotlib are checked
before training starts. A closed output pipe (loopnet predict ... | head -1) ends the command
quietly with status 141, as a command killed by SIGPIPE does.
"""

# Data sets built in (loopnet.datasets) and how the book trains on each.
DATASETS = ("spiral", "vertical", "sine")
LABEL_NAMES = ("label", "labels", "y", "class", "target")
FLOAT32_MAX = 3.4028234663852886e38
# Status of a command whose output pipe closed (128 + SIGPIPE), as `yes | head -1` leaves it.
BROKEN_PIPE_STATUS = 141


class UsageError(ValueError):
    """A problem with what the user asked for: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage first, then the error)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- Data files -----------------------------------------------------------------------------------

def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: str):
    """Rows of a CSV file as lists of strings, and its header (None when the first row is data)."""
    try:
        with open(path, newline="") as handle:
            sample = handle.read(4096)
            handle.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
            except csv.Error:
                dialect = csv.excel
            rows = [row for row in csv.reader(handle, dialect) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise UsageError(f"data file {path!r} is not a text CSV file") from None
    rows = [[cell.strip() for cell in row] for row in rows]
    if not rows:
        raise UsageError(f"data file {path!r} is empty")
    header = None
    if any(_number(cell) is None for cell in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise UsageError(f"data file {path!r} has a header but no data rows")
    width = len(header) if header is not None else len(rows[0])
    for k, row in enumerate(rows):
        if len(row) != width:
            line = k + (2 if header is not None else 1)
            raise UsageError(f"data file {path!r}: line {line} has {len(row)} columns, "
                             f"expected {width}")
    return header, rows


def _label_index(path, header, width, label_column):
    """Which CSV column holds the labels: ``label_column`` (a name or an index), a column named
    label/y/class/target, or else the last one."""
    if label_column is not None:
        if header is not None and label_column in header:
            return header.index(label_column)
        try:
            index = int(label_column)
        except ValueError:
            names = ", ".join(header) if header else "none (the file has no header)"
            raise UsageError(f"data file {path!r} has no column {label_column!r} "
                             f"(columns: {names})") from None
        if not -width <= index < width:
            raise UsageError(f"--label-column {index} is out of range: {path!r} has {width} columns")
        return index % width
    if header is not None:
        for k, name in enumerate(header):
            if name.lower() in LABEL_NAMES:
                return k
    return width - 1


def _csv_matrix(path, header, rows, columns):
    import numpy as np

    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            value = _number(row[column])
            if value is None:
                line = r + (2 if header is not None else 1)
                name = repr(header[column]) if header is not None else str(column)
                raise UsageError(f"data file {path!r}: line {line}, column {name}: "
                                 f"{row[column]!r} is not a number")
            out[r, c] = value
    return out


def _load_npz(path, require_labels: bool):
    import numpy as np

    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):     # every .npz is a zip archive
        raise UsageError(f"data file {path!r} is not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "X" not in names or (require_labels and "y" not in names):
                missing = "X" if "X" not in names else "y"
                raise UsageError(f"data file {path!r} has no array {missing!r} (it has: "
                                 f"{', '.join(names) or 'nothing'}); expected arrays named X and y")
            X = archive["X"]
            y = archive["y"] if "y" in names else None
    except UsageError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise UsageError(f"data file {path!r} is not a readable .npz archive ({err})") from None
    except ValueError as err:
        if "pickle" in str(err):    # object arrays need pickle, which could run code: refused
            raise UsageError(f"data file {path!r} holds object arrays, which loopnet does not "
                             "load (unpickling can run code); save plain numeric arrays") from None
        raise UsageError(f"data file {path!r}: {err}") from None
    return X, y


def load_data(path: str, *, label_column=None, require_labels: bool = True, n_features=None):
    """``(X, y)`` from a ``.npz`` (arrays ``X`` and ``y``) or a ``.csv`` (one label column).

    ``require_labels=False`` (for prediction) allows a file without labels: ``y`` is then None;
    a CSV holding exactly ``n_features`` columns is then all features. Every problem raises
    ``UsageError`` with a one-line message naming the file.
    """
    if not os.path.exists(path):
        raise UsageError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"data file {path!r} is a directory")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        X, y = _load_npz(path, require_labels)
    elif suffix in (".csv", ".txt", ".tsv"):
        header, rows = _read_csv(path)
        width = len(rows[0])
        has_labels = require_labels or n_features is None or width != n_features
        if has_labels and width < 2:
            raise UsageError(f"data file {path!r} has {width} column: it needs at least one "
                             "feature column and a label column")
        if has_labels:
            label = _label_index(path, header, width, label_column)
            features = [c for c in range(width) if c != label]
            y = _csv_matrix(path, header, rows, [label])[:, 0]
        else:
            features, y = list(range(width)), None
        X = _csv_matrix(path, header, rows, features)
    else:
        raise UsageError(f"data file {path!r}: unknown format {suffix or '(no suffix)'!r}; "
                         "use .npz (arrays X and y) or .csv (a label column)")
    return _check_data(path, X, y, n_features)


def _check_data(path, X, y, n_features):
    import numpy as np

    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise UsageError(f"data file {path!r}: X must hold numbers, got dtype {X.dtype}")
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise UsageError(f"data file {path!r}: X must be a non-empty 2-D array "
                         f"(n_samples, n_features), got shape {X.shape}")
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise UsageError(f"data file {path!r}: X has a NaN or infinite value in sample {row}")
    _check_float32_range(path, "X", X)
    if n_features is not None and X.shape[1] != n_features:
        raise UsageError(f"data file {path!r} has {X.shape[1]} features but the model expects "
                         f"{n_features}")
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise UsageError(f"data file {path!r}: y must hold numbers (class indices 0..K-1, or "
                             f"targets for regression), got dtype {y.dtype}")
        if y.ndim == 2 and y.shape[1] == 1 and _is_classes(y):
            y = y.reshape(-1)
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise UsageError(f"data file {path!r}: y has shape {y.shape} but X has "
                             f"{X.shape[0]} samples; expected y of shape ({X.shape[0]},)")
        if not np.isfinite(y).all():
            raise UsageError(f"data file {path!r}: y has a NaN or infinite value")
        _check_float32_range(path, "y", y)
    return X.astype(np.float32), y


def _check_float32_range(path, name, values):
    """loopnet computes in float32: a value beyond its range (3.4e38) would become inf."""
    import numpy as np

    if values.dtype.kind != "f" or values.dtype.itemsize <= 4 or values.size == 0:
        return
    too_large = np.abs(values) > FLOAT32_MAX
    if too_large.any():
        index = np.unravel_index(int(np.argmax(too_large)), values.shape)
        where = f"sample {index[0]}" + (f", column {index[1]}" if values.ndim > 1 else "")
        raise UsageError(f"data file {path!r}: {name} has the value {values[index]:g} in {where},"
                         f" beyond float32's range (+-3.4e38) in which loopnet computes")


def _is_classes(y) -> bool:
    """Class labels: one whole number >= 0 per sample (anything else is a regression target)."""
    import numpy as np

    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or y.size == 0 or not np.isfinite(y).all():
        return False
    return bool((y >= 0).all() and (y == np.round(y)).all())


# --- train ------------------------------------------------------------------------------------

def _builtin_data(args):
    """Training and held-out data from loopnet.datasets; held out = fresh samples, as the book
    validates on a newly generated spiral."""
    from loopnet import datasets

    if args.dataset == "sine":
        X, y = datasets.sine_data(args.samples)
        # The book tests the sine model on the same curve at other points.
        X_test, y_test = datasets.sine_data(max(args.samples // 10, 2))
        X_test = X_test + 0.5 / args.samples
        return X, y, X_test, y_test
    make = datasets.spiral_data if args.dataset == "spiral" else datasets.vertical_data
    X, y = make(args.samples, args.classes, seed=args.seed)
    X_test, y_test = make(max(args.samples // 10, 1), args.classes, seed=args.seed + 1)
    return X, y, X_test, y_test


def _split(X, y, fraction, seed):
    """A seeded shuffle, then the last ``fraction`` of the samples held out."""
    import numpy as np

    n = len(X)
    n_test = int(round(n * fraction))
    if n_test < 1 or n - n_test < 1:
        raise UsageError(f"{n} samples cannot be split into training and held-out parts "
                         f"with --test-fraction {fraction}")
    order = np.random.RandomState(seed).permutation(n)
    train, test = order[: n - n_test], order[n - n_test:]
    return X[train], y[train], X[test], y[test]


def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or a comma list of them such as 64,64, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {2**32 - 2}, "
                                         f"got {text!r}")
    return value


def _image_size(text):
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"must be N or WxH in pixels, such as 28 or 32x24, "
                                         f"got {text!r}")
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def _version() -> str:
    import loopnet

    return loopnet.__version__


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def _device(text):
    from loopnet.devices import normalize

    try:
        return normalize(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def _check_output_path(path, what):
    """``path`` can be written (checked before any work, so a long run is not lost)."""
    from loopnet.saving import check_writable

    try:
        check_writable(path, what)
    except OSError as err:
        raise UsageError(str(err)) from None


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise UsageError(f"--plot needs matplotlib, which cannot be imported ({err}); install "
                         "it (pip install matplotlib) or leave out --plot") from None


def _memory_limit() -> int:
    """This machine's physical memory in bytes (1 TiB where it cannot be found)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**40


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1000 or unit == "PB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""  # pragma: no cover


def _check_sizes(n_samples, n_features, hidden, n_outputs, batch_size, *, outputs_from):
    """A rough count of the bytes a run allocates - parameters with their gradients, Adam's
    state and a transposed copy, activations and their gradients for a batch, the data - and a
    ``UsageError`` naming the sizes responsible when it exceeds this machine's memory, before
    anything is allocated. ``outputs_from`` says where the output width comes from."""
    widths = [n_features, *hidden, n_outputs]
    n_parameters = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    batch = n_samples if batch_size is None else min(batch_size, n_samples)
    layers = " -> ".join(f"Dense({a}, {b})" for a, b in zip(widths, widths[1:]))
    parts = [
        (4 * 5 * n_parameters, f"the {n_parameters:,} parameters of {layers} and their "
                               f"optimizer state ({outputs_from})"),
        (4 * 4 * batch * sum(widths), f"the activations of {batch:,} samples at a time "
                                      f"({'--batch-size' if batch_size else 'the whole data set'})"
                                      f" through layers of {', '.join(map(str, widths))} units"),
        (4 * 3 * n_samples * (n_features + 1), f"{n_samples:,} samples of {n_features} features"),
    ]
    total = sum(n_bytes for n_bytes, _ in parts)
    limit = _memory_limit()
    if total <= limit:
        return
    parts.sort(key=lambda part: -part[0])
    culprits = "; ".join(f"{_size(n_bytes)} for {what}" for n_bytes, what in parts
                         if n_bytes >= total / 100)
    raise UsageError(f"this run would need about {_size(total)} of memory, more than this "
                     f"machine's {_size(limit)}: {culprits}")


def build_model(n_inputs: int, n_outputs: int, hidden, *, regression: bool, learning_rate,
                seed: int, device=None, decay=None):
    """The book's networks: Dense-ReLU blocks, then Softmax + categorical cross-entropy for
    classes or Linear + mean squared error for regression, trained with Adam (``decay``:
    1e-3 for regression, 5e-7 for classes, unless given)."""
    import numpy as np

    import loopnet

    rng = np.random.RandomState(seed)
    model = loopnet.Model()
    width = n_inputs
    for size in hidden:
        model.add(loopnet.Dense(width, size, seed=rng))
        model.add(loopnet.ReLU())
        width = size
    model.add(loopnet.Dense(width, n_outputs, seed=rng))
    if regression:
        model.add(loopnet.Linear())
        model.set(loss=loopnet.MeanSquaredError(),
                  optimizer=loopnet.Adam(learning_rate=learning_rate,
                                         decay=1e-3 if decay is None else decay),
                  accuracy=loopnet.RegressionAccuracy())
    else:
        model.add(loopnet.Softmax())
        model.set(loss=loopnet.CategoricalCrossentropy(),
                  optimizer=loopnet.Adam(learning_rate=learning_rate,
                                         decay=5e-7 if decay is None else decay),
                  accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    return model


def _describe(model) -> str:
    layers = getattr(model, "layers", None)
    if not layers:
        return "the model"
    return " -> ".join(repr(layer) for layer in layers)


def _image_data(args):
    """Training and held-out data from an image folder: its ``test`` split when it has
    ``train/`` and ``test/``, else a ``--test-fraction`` share of it. Returns
    ``(X, y, X_test, y_test, data)``, ``data`` the training ``ImageData``."""
    from loopnet import datasets

    options = {"size": args.image_size, "grayscale": not args.color}
    root = args.data
    if all(os.path.isdir(os.path.join(root, part)) for part in ("train", "test")):
        train, test = datasets.load_image_dataset(root, shuffle=True, seed=args.seed, **options)
        return train.X, train.y, test.X, test.y, train
    data = datasets.load_image_folder(root, **options)
    X, y, X_test, y_test = _split(data.X, data.y, args.test_fraction, args.seed)
    return X, y, X_test, y_test, data


class _Log:
    """The command's log and clock, a callback of ``Model.train`` (the interface of
    ``loopnet.callbacks.Callback``): the book's line every ``print_every`` epochs with the
    learning rate to 6 significant digits, the held-out line when that epoch was validated,
    and the time the first epoch ended (its time includes the compile)."""

    reads_parameters = False          # reads the logs only: the fast path keeps its pace

    def __init__(self, print_every: int):
        self.print_every = print_every
        self.first_epoch_end = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.first_epoch_end = time.perf_counter()
        if not self.print_every or epoch % self.print_every:
            return
        from loopnet import training

        training.write(f"epoch: {epoch}, " + training.numbers(
            logs["accuracy"], logs["data_loss"], logs["regularization_loss"],
            f"{logs['learning_rate']:.6g}"))
        if "val_loss" in logs:
            training.write(training.validation_line(logs["val_loss"], logs["val_accuracy"]))

    def on_train_end(self, logs=None):
        pass


def _timing(history, elapsed: float, first_epoch_end, start: float, device: str) -> str:
    """``N epochs in T s on DEVICE``, with the compile time apart: the history's
    ``compile_time`` when the training path reports one, else the first epoch's time."""
    n_epochs = len(history.get("epoch", [])) if hasattr(history, "get") else 0
    text = f"{n_epochs} epoch{'s' if n_epochs != 1 else ''} in {elapsed:.2f} s on {device}"
    compile_time = history.get("compile_time") if hasattr(history, "get") else None
    if isinstance(compile_time, (int, float)) and compile_time >= 0:
        rest = elapsed - compile_time
        rate = n_epochs / rest if rest > 0 else float("inf")
        return text + f": compile {compile_time:.2f} s, then {rate:,.0f} epochs/s"
    if first_epoch_end is None or n_epochs < 2:
        return text + " (compile included)"
    first = first_epoch_end - start
    rest = elapsed - first
    rate = (n_epochs - 1) / rest if rest > 0 else float("inf")
    return text + (f": compile + first epoch {first:.2f} s, then {n_epochs - 1} epochs at "
                   f"{rate:,.0f} epochs/s")


def _data_options(args) -> None:
    """``--dataset``, ``--samples`` and ``--classes`` shape the built-in data, ``--task`` and
    ``--test-fraction`` read ``--data``: one given where it does not apply is an error rather
    than ignored. Then their defaults."""
    if args.data:
        split = os.path.isdir(args.data) and all(
            os.path.isdir(os.path.join(args.data, part)) for part in ("train", "test"))
        for flag, value in (("--dataset", args.dataset), ("--samples", args.samples),
                            ("--classes", args.classes)):
            if value is not None:
                raise UsageError(f"{flag} is for the built-in data; --data brings its own")
        if split and args.test_fraction is not None:
            raise UsageError("--test-fraction does not apply: the image folder's test/ split "
                             "is the held-out data")
    else:
        for flag, value in (("--task", args.task), ("--test-fraction", args.test_fraction)):
            if value is not None:
                raise UsageError(f"{flag} needs --data (the built-in data holds out fresh "
                                 "samples of its own)")
        if args.dataset == "sine" and args.classes is not None:
            raise UsageError("--classes does not apply to --dataset sine (one output: a "
                             "regression)")
    defaults = {"dataset": "spiral", "samples": 1000, "classes": 3, "task": "auto",
                "test_fraction": 0.2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _train(args) -> int:
    import numpy as np

    import loopnet

    _data_options(args)
    if args.save:
        _check_output_path(args.save, "--save")
    if args.plot:
        _check_output_path(args.plot, "--plot")
        _check_matplotlib()
    images = None
    if args.data and os.path.isdir(args.data):
        if args.label_column is not None:
            raise UsageError("--label-column is for .csv data, not an image folder")
        if args.task == "regression":
            raise UsageError("an image folder holds classes: --task regression does not apply")
        X, y, X_test, y_test, images = _image_data(args)
        source = args.data
        regression = False
    elif args.data:
        if args.image_size is not None or args.color:
            raise UsageError("--image-size and --color are for an image folder (--data DIR)")
        X, y = load_data(args.data, label_column=args.label_column)
        source = args.data
        regression = not _is_classes(y)
        if regression and args.task == "classification":
            raise UsageError(f"data file {args.data!r}: the labels are not class indices "
                             "0..K-1 (whole numbers >= 0), so they cannot be classified")
        if args.task == "regression":
            regression = True
        X, y, X_test, y_test = _split(X, y, args.test_fraction, args.seed)
    else:
        if args.label_column is not None:
            raise UsageError("--label-column needs --data")
        if args.image_size is not None or args.color:
            raise UsageError("--image-size and --color are for an image folder (--data DIR)")
        regression = args.dataset == "sine"
        n_samples = args.samples * (1 if regression else args.classes)
        _check_sizes(n_samples + n_samples // 10, 1 if regression else 2,
                     args.hidden or ([64, 64] if regression else [64]),
                     1 if regression else args.classes, args.batch_size,
                     outputs_from="1 output" if regression else f"--classes {args.classes}")
        X, y, X_test, y_test = _builtin_data(args)
        source = args.dataset
        regression = args.dataset == "sine"
    if regression:
        y, y_test = (np.asarray(a, dtype=np.float32).reshape(len(a), -1) for a in (y, y_test))
        n_outputs = y.shape[1]
        what = f"{n_outputs} regression target{'s' if n_outputs > 1 else ''}"
    else:
        largest = max(float(np.max(y)), float(np.max(y_test)))
        if largest >= 2**31:
            raise UsageError(f"{source}: the labels go up to {largest:g}, so a classifier would "
                             f"need {largest + 1:.0f} classes; for numeric targets use "
                             "--task regression")
        n_outputs = int(largest) + 1
        y, y_test = (np.asarray(a).astype(np.intp).reshape(-1) for a in (y, y_test))
        if images is not None:
            n_outputs = len(images.class_names)
        if n_outputs < 2:
            raise UsageError(f"{source}: every label is 0; a classifier needs at least 2 classes")
        what = f"{n_outputs} classes"
    # The book's settings: chapter 19's for images (10 epochs of batches of 128, 128-128
    # hidden, Adam lr 0.001 decay 1e-3), else the spiral's and the sine's.
    epochs = args.epochs or (10 if images is not None else 10_000)
    batch_size = args.batch_size or (min(128, len(X)) if images is not None else None)
    hidden = args.hidden or ([128, 128] if images is not None
                             else [64, 64] if regression else [64])
    learning_rate = args.learning_rate or (0.001 if images is not None
                                           else 0.005 if regression else 0.05)
    decay = 1e-3 if images is not None else None
    if batch_size is not None and batch_size > len(X):
        raise UsageError(f"--batch-size {batch_size} is larger than the {len(X)} "
                         "training samples")
    _check_sizes(len(X) + len(X_test), X.shape[1], hidden, n_outputs, batch_size,
                 outputs_from=(f"{n_outputs} regression targets" if regression else
                               f"labels up to {n_outputs - 1}, so {n_outputs} classes"))
    validate_every = args.validate_every or (1 if args.early_stopping else None)
    if args.early_stopping and validate_every != 1:
        raise UsageError("--early-stopping needs the held-out loss every epoch: leave out "
                         "--validate-every or give --validate-every 1")

    with loopnet.device(args.device):
        model = build_model(X.shape[1], n_outputs, hidden, regression=regression,
                            learning_rate=learning_rate, seed=args.seed, decay=decay)
        if images is not None:
            model.preprocessing = images.preprocessing
            model.class_names = images.class_names
        if not args.quiet:
            kind = ""
            if images is not None:
                width, height = images.preprocessing["size"]
                colour = "grayscale" if images.preprocessing["grayscale"] else "RGB"
                kind = f"{width}x{height} {colour} images, "
            print(f"loopnet train: {source}, {len(X)} samples ({kind}{X.shape[1]} features, "
                  f"{what}), {len(X_test)} held out; Adam lr {learning_rate:g}; "
                  f"{epochs} epochs"
                  + (f" of batches of {batch_size}" if batch_size else "")
                  + f" on {args.device}", flush=True)
            model.summary()
        # On a terminal a progress bar (and log lines only if --print-every asks for them);
        # otherwise (a pipe, a CI log) the book's lines, ten per run unless told otherwise.
        terminal = sys.stderr.isatty()
        progress = terminal and not args.quiet
        if args.quiet:
            print_every = 0
        elif args.print_every:
            print_every = args.print_every
        elif terminal:
            print_every = 0
        else:
            print_every = max(epochs // 10, 1)
            if validate_every:      # log the epochs that are validated
                print_every = max(validate_every, print_every // validate_every * validate_every)
        log = _Log(print_every)
        callbacks = [log]
        stopper = None
        if args.early_stopping:
            stopper = loopnet.callbacks.EarlyStopping("val_loss", patience=args.early_stopping,
                                                      restore_best_weights=True)
            callbacks.append(stopper)
        # Without --validate-every the held-out data is evaluated once, after training:
        # validating every epoch would double the cost of a run whose point is to be quick.
        start = time.perf_counter()
        history = model.train(X, y, epochs=epochs, batch_size=batch_size, print_every=0,
                              seed=args.seed, shuffle=batch_size is not None,
                              progress=progress, callbacks=callbacks,
                              validation_data=(X_test, y_test) if validate_every else None,
                              validate_every=validate_every or 1)
        elapsed = time.perf_counter() - start
        test_loss, test_acc = model.evaluate(X_test, y_test, verbose=False)
    if stopper is not None and stopper.stopped_epoch is not None and not args.quiet:
        print(f"early stopping at epoch {stopper.stopped_epoch}: the held-out loss did not "
              f"improve for {args.early_stopping} epochs; restored epoch {stopper.best_epoch} "
              f"(held-out loss {stopper.best:.3f})", flush=True)
    train_acc = _last(history, "accuracy")
    train_loss = _last(history, "loss")
    summary = [f"held-out accuracy: {test_acc:.3f} (loss {test_loss:.3f}) on {len(X_test)} samples"]
    if train_acc is not None:
        summary.append(f"training accuracy: {train_acc:.3f} (loss {train_loss:.3f})")
    summary.append(_timing(history, elapsed, log.first_epoch_end, start, args.device))
    print("; ".join(summary), flush=True)
    if args.save:
        model.save(args.save)
        if not args.quiet:
            print(f"saved the model to {args.save}")
    if args.plot:
        _plot(args.plot, model, history, X, y, regression)
        if not args.quiet:
            print(f"wrote {args.plot}")
    return 0


def _last(history, key):
    values = history.get(key) if hasattr(history, "get") else None
    return float(values[-1]) if values else None


def _plot(path, model, history, X, y, regression):
    """Decision boundary (2-D inputs) or fit (1-D regression) beside the loss/accuracy curves."""
    import matplotlib

    matplotlib.use("Agg")     # write files; never open a window
    import matplotlib.pyplot as plt

    from loopnet import plotting

    data_panel = X.shape[1] == 2 and not regression or (regression and X.shape[1] == 1)
    figure, axes = plt.subplots(1, 3 if data_panel else 2, figsize=(15 if data_panel else 10, 4.5))
    if data_panel and not regression:
        plotting.plot_decision_boundary(model, X, y, ax=axes[0])
    elif data_panel:
        import numpy as np

        order = np.argsort(X[:, 0])
        axes[0].plot(X[order, 0], y[order, 0], label="data", color="tab:blue")
        axes[0].plot(X[order, 0], np.asarray(model.predict(X[order]))[:, 0], label="prediction",
                     color="tab:orange", linestyle="--")
        axes[0].legend(fontsize="small")
        axes[0].set_title("fit")
    plotting.plot_history(history, ax=(axes[-2], axes[-1]))
    plotting.save_figure(figure, path)


# --- predict ----------------------------------------------------------------------------------

def _predict(args) -> int:
    import numpy as np

    import loopnet

    if not os.path.exists(args.model):
        raise UsageError(f"model file {args.model!r} does not exist")
    if args.output:
        _check_output_path(args.output, "--output")
    if args.invert and not args.image:
        raise UsageError("--invert is for --image files")
    try:
        model = loopnet.Model.load(args.model)
    except (zipfile.BadZipFile, EOFError, KeyError, OSError) as err:
        raise UsageError(f"model file {args.model!r} cannot be read ({err})") from None
    _check_finite_parameters(args.model, model)
    n_features = _model_inputs(model)
    if args.image:
        return _predict_images(args, model, n_features)
    X, y = load_data(args.data, label_column=args.label_column, require_labels=False,
                     n_features=n_features)
    with loopnet.device(args.device):
        probabilities = np.asarray(loopnet.to_numpy(model.predict(X)))
    finite = np.isfinite(probabilities).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise UsageError(f"the model's outputs for sample {row} of {args.data!r} are not finite "
                         "(NaN or inf): its values are too large for this model")
    classes = _is_softmax(model)
    if classes:
        predictions = np.argmax(probabilities, axis=1)
        columns = ["prediction"] + [f"p{k}" for k in range(probabilities.shape[1])]
        table = np.c_[predictions, probabilities]
    else:
        predictions = probabilities
        columns = [f"prediction{k}" if probabilities.shape[1] > 1 else "prediction"
                   for k in range(probabilities.shape[1])]
        table = probabilities
    if args.output:
        if args.output.lower().endswith(".npz"):
            np.savez(args.output, predictions=predictions, probabilities=probabilities)
        else:
            _write_table(args.output, columns, table, classes)
        print(f"wrote {len(X)} predictions to {args.output}", file=sys.stderr)
    else:
        _write_table(sys.stdout, columns, table, classes)
    if y is not None and classes and _is_classes(y):
        labels = np.asarray(y).reshape(-1)
        if labels.max() >= probabilities.shape[1]:     # (not this model's labels: say so)
            print(f"no accuracy: the labels in {args.data} go up to {labels.max():g}, but the "
                  f"model has {probabilities.shape[1]} classes", file=sys.stderr)
        else:
            accuracy = float(np.mean(predictions == labels))
            print(f"accuracy against the labels in {args.data}: {accuracy:.3f}",
                  file=sys.stderr)
    return 0


def _check_finite_parameters(path, model):
    import numpy as np

    import loopnet

    for index, layer in enumerate(getattr(model, "layers", None) or []):
        for name in ("weights", "biases"):
            values = getattr(layer, name, None)
            if values is not None and not np.isfinite(loopnet.to_numpy(values)).all():
                raise UsageError(f"model file {path!r}: the {name} of layer {index} "
                                 f"({layer!r}) hold NaN or infinite values")


def _predict_images(args, model, n_features) -> int:
    """One row per image file: the file, the predicted class's name, every class's
    probability; each file preprocessed as the model's training images were."""
    import numpy as np

    import loopnet
    from loopnet import datasets

    settings = model.preprocessing
    if not isinstance(settings, dict) or settings.get("kind") != "image":
        raise UsageError(f"model file {args.model!r} stores no image preprocessing (it was not "
                         "trained on an image folder); predict on features with --data")
    X = datasets.load_images(args.image, settings, invert=args.invert)
    if n_features is not None and X.shape[1] != n_features:
        raise UsageError(f"the images give {X.shape[1]} features but the model expects "
                         f"{n_features}")
    with loopnet.device(args.device):
        outputs = np.asarray(loopnet.to_numpy(model.predict(X)))
    names = list(model.class_names or [str(k) for k in range(outputs.shape[1])])
    if _is_softmax(model) and len(names) == outputs.shape[1]:
        columns = ["file", "prediction", *names]
        rows = [[file, names[int(np.argmax(row))], *(f"{v:.6g}" for v in row)]
                for file, row in zip(args.image, outputs)]
    else:
        columns = ["file", *(f"output{k}" for k in range(outputs.shape[1]))]
        rows = [[file, *(f"{v:.6g}" for v in row)] for file, row in zip(args.image, outputs)]
    if args.output and args.output.lower().endswith(".npz"):
        np.savez(args.output, files=np.array([str(f) for f in args.image]),
                 outputs=outputs, class_names=np.array(names))
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
        return 0
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    finally:
        if handle is not sys.stdout:
            handle.close()
    if args.output:
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    return 0


def _model_inputs(model):
    layers = getattr(model, "layers", None) or []
    for layer in layers:
        if hasattr(layer, "n_inputs"):
            return int(layer.n_inputs)
    return None


def _is_softmax(model) -> bool:
    layers = getattr(model, "layers", None) or []
    return bool(layers) and type(layers[-1]).__name__ in ("Softmax", "Activation_Softmax")


def _write_table(target, columns, table, classes):
    handle = open(target, "w", newline="") if isinstance(target, str) else target
    try:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in table:
            if classes:
                writer.writerow([int(row[0])] + [f"{v:.6g}" for v in row[1:]])
            else:
                writer.writerow([f"{v:.6g}" for v in row])
    finally:
        if handle is not target:
            handle.close()


# --- explain and forward ----------------------------------------------------------------------

def _explain(args) -> int:
    from loopnet import explain

    if args.list:
        forms = explain._forms()
        modules: dict[str, list[str]] = {}
        for op in explain.list_ops():
            modules.setdefault(forms[op]["module"].__name__, []).append(op)
        for module, ops in modules.items():
            print(f"{module}: {', '.join(ops)}")
        return 0
    if not args.op:
        raise UsageError("name an op (loopnet explain dense), or list them: loopnet explain --list")
    explain.explain(args.op, device=args.device, dtype="float64" if args.float64 else "float32",
                    width=args.width, seed=args.seed)
    return 0


def _forward(args) -> int:
    import numpy as np

    import loopnet

    X, y = loopnet.datasets.spiral_data(args.samples, args.classes, seed=args.seed)
    rng = np.random.RandomState(args.seed)
    with loopnet.device(args.device):
        start = time.perf_counter()
        dense1 = loopnet.Dense(2, 3, seed=rng)
        dense2 = loopnet.Dense(3, args.classes, seed=rng)
        probabilities = loopnet.Softmax().forward(
            dense2.forward(loopnet.ReLU().forward(dense1.forward(X))))
        loss = loopnet.CategoricalCrossentropy().calculate(probabilities, y)
        acc = loopnet.ops.accuracy(probabilities, y)
        elapsed = time.perf_counter() - start
    print(f"device: {args.device}, samples: {len(X)}, loss: {loss:.7f}, acc: {acc:.3f}, "
          f"time: {elapsed:.3f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loopnet", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"loopnet {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a classifier (the book's spiral run by default)",
                           description="Train the book's network and print a summary. With no "
                           "options: the spiral data (1000 samples per class, 3 classes), "
                           "Dense(2, 64)-ReLU-Dense(64, 3)-Softmax, Adam lr 0.05 decay 5e-7, "
                           "10,000 full-batch epochs, held-out accuracy on fresh spiral samples.")
    train.add_argument("--dataset", choices=DATASETS, default=None,
                       help="built-in data (default: spiral)")
    train.add_argument("--data", metavar="FILE|DIR",
                       help="your own data: .npz with arrays X and y, .csv with a label column, "
                       "or an image folder DIR/<class>/<image> (DIR/train/... and DIR/test/...: "
                       "the test split is held out); images need Pillow (loopnet[images])")
    train.add_argument("--image-size", type=_image_size, default=None, metavar="N|WxH",
                       help="image folder: resize every image to N x N or W x H pixels "
                       "(default: they must all have one size)")
    train.add_argument("--color", action="store_true",
                       help="image folder: keep RGB (default: grayscale)")
    train.add_argument("--label-column", metavar="NAME|INDEX",
                       help="the CSV column with the labels (default: one named label/y/class/"
                       "target, else the last)")
    train.add_argument("--task", choices=("auto", "classification", "regression"), default=None,
                       help="--data: auto (the default) takes classes when every label is a "
                       "whole number >= 0")
    train.add_argument("--test-fraction", type=_fraction, default=None, metavar="F",
                       help="share of --data held out for the final accuracy (default 0.2)")
    train.add_argument("--samples", type=_positive(int), default=None,
                       help="built-in data: samples per class (default 1000)")
    train.add_argument("--classes", type=_positive(int), default=None,
                       help="built-in data: number of classes (default 3)")
    train.add_argument("--device", type=_device, default="cpu",
                       help="cpu (compiled loops), numpy (the twins), python (uncompiled loops; "
                       "slow) or cuda (default: cpu)")
    train.add_argument("--epochs", type=_positive(int), default=None,
                       help="passes over the training data (default 10000; 10 for images)")
    train.add_argument("--batch-size", type=_positive(int), default=None,
                       help="samples per step (default: the whole data set, as the book; "
                       "128 for images)")
    train.add_argument("--learning-rate", type=_positive(float), default=None,
                       help="Adam's learning rate (default 0.05; 0.005 for regression; 0.001 "
                       "with decay 1e-3 for images)")
    train.add_argument("--hidden", type=_hidden_sizes, default=None, metavar="N[,N...]",
                       help="hidden layer sizes (default 64; 64,64 for regression; 128,128 "
                       "for images)")
    train.add_argument("--seed", type=_seed, default=0,
                       help="seeds data, weights and shuffling")
    train.add_argument("--print-every", type=_positive(int), default=None, metavar="N",
                       help="log every N epochs (default: epochs / 10)")
    train.add_argument("--validate-every", type=_positive(int), default=None, metavar="K",
                       help="evaluate the held-out data every K epochs: its curve is then "
                       "logged and plotted (default: once, after training)")
    train.add_argument("--early-stopping", type=_positive(int), default=None, metavar="N",
                       help="stop when the held-out loss has not improved for N epochs and "
                       "keep the best epoch's parameters (validates every epoch)")
    train.add_argument("--save", metavar="MODEL.npz", help="save the trained model")
    train.add_argument("--plot", metavar="OUT.png",
                       help="save the decision boundary (2-D inputs) and loss/accuracy curves")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(run=_train)

    predict = sub.add_parser("predict", help="predict with a saved model",
                             description="Print (or write) one prediction per sample: the class "
                             "and its probabilities, or the regression outputs. Image files are "
                             "preprocessed as the model's training images were (size, colour, "
                             "scaling: stored in the model file).")
    predict.add_argument("--model", required=True, metavar="MODEL.npz",
                         help="a model saved by loopnet train --save or Model.save")
    inputs = predict.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--data", metavar="FILE",
                        help=".npz with X (y optional) or .csv (a label column optional)")
    inputs.add_argument("--image", nargs="+", metavar="FILE",
                        help="image files (a model trained on an image folder): prints each "
                        "file's class name and the probabilities")
    predict.add_argument("--invert", action="store_true",
                         help="invert the images first (255 - image, the book's trick for a "
                         "dark drawing on a light background)")
    predict.add_argument("--label-column", metavar="NAME|INDEX",
                         help="the CSV column with labels, left out of the features")
    predict.add_argument("--output", metavar="FILE", help="write a .csv or .npz instead of printing")
    predict.add_argument("--device", type=_device, default="cpu")
    predict.set_defaults(run=_predict)

    explain = sub.add_parser("explain", help="an op's loops beside its numpy twin, run on one input",
                             description="Print an op's loop source beside its numpy twin, run "
                             "both on a small random input and print the largest difference.")
    explain.add_argument("op", nargs="?", help="dense, relu, softmax, crossentropy, "
                         "relu_backward, adam, ... (see --list)")
    explain.add_argument("--list", action="store_true", help="name every op")
    explain.add_argument("--device", choices=("cpu", "python"), default="cpu",
                         help="run the loops compiled (cpu) or as plain Python")
    explain.add_argument("--float64", action="store_true", help="run in float64 (default float32)")
    explain.add_argument("--width", type=_positive(int), default=None,
                         help="line width (default: the terminal's)")
    explain.add_argument("--seed", type=_seed, default=0)
    explain.set_defaults(run=_explain)

    forward = sub.add_parser("forward", help="the notes' forward pass on spiral data, printing the loss")
    forward.add_argument("--device", type=_device, default="cpu")
    forward.add_argument("--samples", type=_positive(int), default=100)
    forward.add_argument("--classes", type=_positive(int), default=3)
    forward.add_argument("--seed", type=_seed, default=0)
    forward.set_defaults(run=_forward)
    return parser


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still
    buffered does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):     # stdout is not a file (a test captures it)
        pass


def _error(message: str) -> None:
    try:
        print(message, file=sys.stderr)
    except (OSError, ValueError):   # stderr itself is closed: nothing more can be said
        pass


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from loopnet.interrupts import EXIT_STATUS, interruptible

    try:
        with interruptible():  # Ctrl-C stops within a second, also while numba compiles
            return args.run(args)
    except BrokenPipeError:
        # The reader of our output went away (`loopnet predict ... | head -1`): stop quietly.
        _stdout_to_devnull()
        return BROKEN_PIPE_STATUS
    except (ValueError, TypeError, RuntimeError, OSError, ImportError, ArithmeticError,
            MemoryError) as err:
        # One line, no traceback: these are problems with the input, the data, the device, a
        # diverging run (FloatingPointError) or a size beyond memory. LOOPNET_DEBUG=1 shows
        # the traceback instead (for bugs in loopnet itself).
        if os.environ.get("LOOPNET_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, MemoryError):
            message = f"out of memory{': ' + message if str(err).strip() else ''}"
        _error(f"loopnet: error: {message}")
        return 2
    except KeyboardInterrupt:
        _error("loopnet: interrupted")
        if argv is None:    # the loopnet command itself, not a call from Python code
            _end_interrupted_process(EXIT_STATUS)
        return EXIT_STATUS


def _end_interrupted_process(status: int) -> None:
    """End the process at once with the interrupted status, without unwinding further.

    The interrupt may have stopped numba half way through a compile, between an LLVM call and
    the Python line that records who owns its result. Freeing those objects (when this handler
    drops the traceback, or when the interpreter shuts down) can then crash the process with a
    segfault after it printed its message, rarely. Nothing remains to be done: flush what was
    printed and leave, as the watchdog of ``loopnet.interrupts`` does."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)
