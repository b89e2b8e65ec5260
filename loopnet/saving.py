"""Saving and loading models and parameters: ``.npz`` arrays plus a JSON header, no pickle.

A file is a numpy ``.npz`` (a zip of ``.npy`` arrays) loaded with ``allow_pickle=False``, so
opening one can never run code. Beside the arrays it holds ``__loopnet__``: the JSON header as
bytes (a uint8 array) with the format name and version, the architecture (each layer's type and
constructor arguments), the loss, optimizer and accuracy with their settings and counters, and
for every array its shape, dtype and SHA-256, checked on load. Two entries are optional: the
model's ``preprocessing`` (how raw inputs, e.g. image files, become its inputs) and its
``class_names``; a loader that does not know them ignores them, so they need no new version.
Layer, loss, optimizer and accuracy types are looked up in fixed tables of loopnet classes: a
file can name a class, never import one.

Files are written atomically: to a temporary file in the same directory, flushed to disk,
then renamed over ``path`` with ``os.replace``; a crash mid-write leaves the old file intact.
A truncated, corrupted or mismatched file raises ``ModelFileError`` (a ``ValueError``) that
says what is wrong. Round trips are bit-exact (arrays keep their dtype and bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from loopnet import ops

FORMAT_VERSION = 1
MODEL_FORMAT = "loopnet-model"
PARAMETERS_FORMAT = "loopnet-parameters"
HEADER = "__loopnet__"
# Optimizer state a layer may carry (the book's attribute names), saved with the model.
STATE_ARRAYS = ("weight_momentums", "weight_cache", "bias_momentums", "bias_cache")


class ModelFileError(ValueError):
    """A loopnet file that cannot be loaded: truncated, corrupted, of another kind or version,
    or not matching the model it is loaded into."""


def _registries():
    from loopnet import accuracy, activations, layers, losses, nnfs, optimizers

    layer_types = {cls.__name__: cls for cls in (
        layers.Dense, layers.Dropout, nnfs.Layer_Dropout, activations.ReLU,
        activations.Softmax, activations.Sigmoid, activations.Linear)}
    loss_types = {cls.__name__: cls for cls in (
        losses.CategoricalCrossentropy, losses.BinaryCrossentropy, losses.MeanSquaredError,
        losses.MeanAbsoluteError)}
    return layer_types, loss_types, optimizers.OPTIMIZERS, accuracy.ACCURACIES


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _describe(arrays: dict) -> dict:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)}
            for name, a in arrays.items()}


def _write(path, header: dict, arrays: dict) -> None:
    """Write ``arrays`` and the JSON ``header`` to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {name: np.ascontiguousarray(ops.to_numpy(a)) for name, a in arrays.items()}
    header = {**header, "arrays": _describe(arrays)}
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{HEADER: blob}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read(path, expected_format: str):
    """``(header, arrays)`` of a loopnet file, every integrity check done."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"no such file: {name!r}")
    try:
        with zipfile.ZipFile(name) as archive:
            bad = archive.testzip()     # reads every member and checks its CRC-32
        if bad is not None:
            raise ModelFileError(f"{name}: corrupted file: array {bad!r} fails its CRC check")
        with np.load(name, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError,
            KeyError) as err:
        raise ModelFileError(
            f"{name}: not a readable loopnet file (truncated or corrupted?): {err}") from err
    blob = arrays.pop(HEADER, None)
    if blob is None:
        raise ModelFileError(f"{name}: no {HEADER!r} header: not a file written by loopnet")
    try:
        header = json.loads(blob.tobytes().decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{name}: corrupted header: {err}") from err
    kind = header.get("format")
    if kind != expected_format:
        hint = {MODEL_FORMAT: " (load it with loopnet.Model.load)",
                PARAMETERS_FORMAT: " (load it with model.load_parameters)"}.get(kind, "")
        raise ModelFileError(f"{name}: holds {kind!r}, expected {expected_format!r}{hint}")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ModelFileError(f"{name}: format version {version!r} is not supported by this "
                             f"loopnet (it reads versions 1..{FORMAT_VERSION}); upgrade loopnet")
    described = header.get("arrays")
    if not isinstance(described, dict) or set(described) != set(arrays):
        missing = sorted(set(described or {}) - set(arrays))
        extra = sorted(set(arrays) - set(described or {}))
        raise ModelFileError(f"{name}: the arrays do not match the header "
                             f"(missing {missing}, unexpected {extra})")
    for key, info in described.items():
        array = arrays[key]
        if list(array.shape) != info.get("shape") or array.dtype.str != info.get("dtype"):
            raise ModelFileError(f"{name}: array {key!r} has shape {array.shape} and dtype "
                                 f"{array.dtype}, the header says {info.get('shape')} and "
                                 f"{info.get('dtype')}")
        if _digest(array) != info.get("sha256"):
            raise ModelFileError(f"{name}: array {key!r} is corrupted (SHA-256 mismatch)")
        arrays[key] = np.require(array, requirements=["C", "W", "O"])
    return header, arrays


def _trainable(model):
    return [(index, layer) for index, layer in enumerate(model.layers) if hasattr(layer, "weights")]


# --- parameters only ---------------------------------------------------------------------------

def save_parameters(model, path) -> None:
    """The trainable layers' ``weights`` and ``biases`` (the book's ``save_parameters``)."""
    arrays, layers = {}, []
    for index, layer in _trainable(model):
        arrays[f"layers.{index}.weights"] = layer.weights
        arrays[f"layers.{index}.biases"] = layer.biases
        layers.append({"index": index, "type": type(layer).__name__})
    _write(path, {"format": PARAMETERS_FORMAT, "format_version": FORMAT_VERSION,
                  "layers": layers}, arrays)


def load_parameters(model, path) -> None:
    """Load parameters written by ``save_parameters`` into ``model``; every layer's position,
    type and shapes must match, else ``ModelFileError`` names the difference (the model is then
    left unchanged)."""
    header, arrays = _read(path, PARAMETERS_FORMAT)
    name = os.fspath(path)
    ours = [(index, type(layer).__name__, tuple(layer.weights.shape), tuple(layer.biases.shape))
            for index, layer in _trainable(model)]
    theirs = []
    for entry in header.get("layers", []):
        index = entry.get("index")
        weights = arrays.get(f"layers.{index}.weights")
        biases = arrays.get(f"layers.{index}.biases")
        if weights is None or biases is None:
            raise ModelFileError(f"{name}: parameters of layer {index} are missing")
        theirs.append((index, entry.get("type"), weights.shape, biases.shape))
    if ours != theirs:
        raise ModelFileError(
            f"{name}: parameters do not match this model: the file has (layer index, type, "
            f"weights shape, biases shape) {theirs}, the model has {ours}")
    for index, layer in _trainable(model):
        layer.set_parameters(arrays[f"layers.{index}.weights"], arrays[f"layers.{index}.biases"])


# --- whole model -----------------------------------------------------------------------------------

def _jsonable(value):
    """Generator states hold numpy ints/arrays in some bit generators: plain JSON values."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_model(model, path) -> None:
    """Everything needed to predict with the model and to resume its training."""
    arrays, layers = {}, []
    for index, layer in enumerate(model.layers):
        entry = {"type": type(layer).__name__, "config": _jsonable(layer.get_config())}
        if hasattr(layer, "weights"):
            arrays[f"layers.{index}.weights"] = layer.weights
            arrays[f"layers.{index}.biases"] = layer.biases
            for state in STATE_ARRAYS:
                if getattr(layer, state, None) is not None:
                    arrays[f"layers.{index}.{state}"] = getattr(layer, state)
        layers.append(entry)

    def part(obj, with_state=False):
        if obj is None:
            return None
        entry = {"type": type(obj).__name__, "config": obj.get_config()}
        if with_state:
            entry["state"] = obj.get_state()
        return entry

    header = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "layers": layers,
              "loss": part(model.loss), "optimizer": part(model.optimizer, with_state=True),
              "accuracy": part(model.accuracy)}
    # Optional entries (a loader that does not know them ignores them: still version 1).
    header.update(_extras(model))
    from loopnet import __version__

    header["loopnet_version"] = __version__
    _write(path, header, arrays)


def _extras(model) -> dict:
    """``preprocessing`` (a JSON object: how raw inputs become X) and ``class_names`` (a list
    of strings), when the model has them."""
    extras = {}
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        if not isinstance(preprocessing, dict):
            raise TypeError(f"model.preprocessing must be a dict (JSON object) or None, got "
                            f"{type(preprocessing).__name__}")
        try:
            extras["preprocessing"] = json.loads(json.dumps(_jsonable(preprocessing)))
        except (TypeError, ValueError) as err:
            raise TypeError(f"model.preprocessing cannot be saved as JSON: {err}") from None
    class_names = getattr(model, "class_names", None)
    if class_names is not None:
        names = list(class_names)
        if not all(isinstance(name, str) for name in names):
            raise TypeError(f"model.class_names must be strings, got {names!r}")
        extras["class_names"] = names
    return extras


def load_model(path, device=None):
    """Rebuild a ``Model`` written by ``save_model``; ``device`` (optional) is given to every
    layer, the loss and the accuracy (otherwise they follow the current default device)."""
    from loopnet.devices import normalize
    from loopnet.model import Model

    header, arrays = _read(path, MODEL_FORMAT)
    name = os.fspath(path)
    layer_types, loss_types, optimizer_types, accuracy_types = _registries()

    def build(entry, table, what):
        if entry is None:
            return None
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in table:
            raise ModelFileError(f"{name}: unknown {what} type {kind!r} "
                                 f"(known: {', '.join(sorted(table))})")
        config = dict(entry.get("config") or {})
        try:
            if kind == "Dense":
                # seed=0: building must not draw from numpy's global RNG (weights are replaced)
                return table[kind](**config, seed=0)
            if kind in ("Dropout", "Layer_Dropout"):
                rng_state = config.pop("rng_state", None)
                # (files written before the seed was saved: building must not draw one from
                # numpy's global generator, the state below replaces the generator anyway)
                config.setdefault("seed", 0)
                obj = table[kind](**config)
                if rng_state is not None:
                    obj.rng = np.random.Generator(
                        getattr(np.random, rng_state["bit_generator"])())
                    obj.rng.bit_generator.state = rng_state
                return obj
            return table[kind](**config)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ModelFileError(f"{name}: cannot rebuild {what} {kind}: {err}") from err

    model = Model()
    for index, entry in enumerate(header.get("layers", [])):
        layer = build(entry, layer_types, "layer")
        if hasattr(layer, "weights"):
            try:
                layer.set_parameters(arrays[f"layers.{index}.weights"],
                                     arrays[f"layers.{index}.biases"])
            except KeyError as err:
                raise ModelFileError(f"{name}: parameters of layer {index} are missing") from err
            except ValueError as err:
                raise ModelFileError(f"{name}: layer {index} ({layer!r}): {err}") from err
            for state in STATE_ARRAYS:
                key = f"layers.{index}.{state}"
                if key in arrays:
                    params = layer.weights if state.startswith("weight") else layer.biases
                    if arrays[key].shape != params.shape:
                        raise ModelFileError(f"{name}: {key} has shape {arrays[key].shape}, "
                                             "not its parameter's shape")
                    setattr(layer, state, arrays[key])
        model.add(layer)
    loss = build(header.get("loss"), loss_types, "loss")
    optimizer = build(header.get("optimizer"), optimizer_types, "optimizer")
    if optimizer is not None:
        try:
            optimizer.set_state(header["optimizer"]["state"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{name}: corrupted optimizer state: {err}") from err
    accuracy = build(header.get("accuracy"), accuracy_types, "accuracy")
    model.set(loss=loss, optimizer=optimizer, accuracy=accuracy)
    preprocessing, class_names = header.get("preprocessing"), header.get("class_names")
    if preprocessing is not None and not isinstance(preprocessing, dict):
        raise ModelFileError(f"{name}: corrupted header: 'preprocessing' is not an object")
    if class_names is not None and not (isinstance(class_names, list)
                                        and all(isinstance(n, str) for n in class_names)):
        raise ModelFileError(f"{name}: corrupted header: 'class_names' is not a list of strings")
    model.preprocessing, model.class_names = preprocessing, class_names
    if device is not None:
        device = normalize(device)
        for obj in [*model.layers, loss, accuracy]:
            if obj is not None:
                obj.device = device
    if model.layers:
        model.finalize()
    return model
