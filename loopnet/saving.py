"""Saving and loading models and parameters: ``.npz`` arrays plus a JSON header, no pickle.

A file is a numpy ``.npz`` (a zip of ``.npy`` arrays), read without pickle, so opening one can
never run code. Beside the arrays it holds ``__loopnet__``: the JSON header as bytes (a uint8
array) with the format name and version, the architecture (each layer's type and constructor
arguments), the loss, optimizer and accuracy with their settings and counters, and for every
array its shape, dtype and SHA-256. Layer, loss, optimizer, accuracy and random bit generator
types are looked up in fixed tables of loopnet and numpy classes: a file can name a class,
never import one, and loading never touches numpy's global random state.

Loading checks before it allocates: every header field's JSON type, every setting against the
class's constructor, each layer's sizes against the shapes of its arrays, and each array's
stored shape and size against the header and against what the archive can hold; then each
array is read once, its CRC-32 and SHA-256 checked. Any damaged, truncated, foreign or
mismatched file raises ``ModelFileError`` (a ``ValueError``) that says what is wrong; round
trips are bit-exact (arrays keep their dtype and bytes).

Two header entries are optional: the model's ``preprocessing`` (how raw inputs, e.g. image
files, become its inputs) and its ``class_names``; a loader that does not know them ignores
them, so they need no new version.

Files are written atomically: to a temporary file in the same directory, flushed to disk,
then renamed over the target with ``os.replace``; a crash mid-write leaves the old file
intact, and a failed write removes its temporary file (a later save removes those a killed
process left). A symbolic link is followed (its target is written, the link stays); a
read-only file, a directory or a missing directory is refused before anything is written
(``check_writable``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import json
import math
import os
import re
import stat
import tempfile
import zipfile

import numpy as np

from loopnet import ops
from loopnet.validate import file_path, is_device_array

FORMAT_VERSION = 1
MODEL_FORMAT = "loopnet-model"
PARAMETERS_FORMAT = "loopnet-parameters"
HEADER = "__loopnet__"
# Optimizer state a layer may carry (the book's attribute names), saved with the model.
STATE_ARRAYS = ("weight_momentums", "weight_cache", "bias_momentums", "bias_cache")
# Arrays a file may hold: float32/float64 of either byte order (loaded in the native one).
ARRAY_DTYPES = ("<f4", "<f8", ">f4", ">f8")
# Limits that keep a hostile file from making the loader allocate or recurse without end.
MAX_HEADER_BYTES = 16 * 2**20
MAX_NDIM = 32
MAX_COUNT = 2**62
# deflate cannot expand data more than ~1032 times: a member claiming more is corrupted
MAX_DEFLATE_RATIO = 1100
READ_CHUNK = 16 * 2**20
# The bit generators a saved Dropout generator may name (np.random's own, nothing else).
BIT_GENERATORS = {cls.__name__: cls for cls in (
    np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64)}
# What each setting of a saved layer, loss, optimizer or accuracy must be (JSON types).
CONFIG_KINDS = {
    "n_inputs": "count", "n_neurons": "count", "dtype": "dtype", "binary": "bool",
    "precision": "number or null", "rng_state": "object", "rate": "number",
    "seed": "natural", "step": "natural",
    "weight_regularizer_l1": "number", "weight_regularizer_l2": "number",
    "bias_regularizer_l1": "number", "bias_regularizer_l2": "number", "weight_scale": "number",
    "learning_rate": "number", "decay": "number", "momentum": "number", "epsilon": "number",
    "rho": "number", "beta_1": "number", "beta_2": "number",
}


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
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def _describe(arrays: dict) -> dict:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _digest(a)}
            for name, a in arrays.items()}


# --- writing ---------------------------------------------------------------------------------------

# Temporary files of saves running in this process (a finished save removes the stale ones
# other, killed, saves left behind, never these).
_IN_PROGRESS: set = set()


def check_writable(path, what: str | None = None) -> str:
    """The file a save to ``path`` writes - a symbolic link's target, so the link stays a
    link - after checking that it can be written: ``IsADirectoryError`` for a directory,
    ``FileNotFoundError`` for a missing directory, ``PermissionError`` for a read-only file
    (one with no write permission bit, even for root), a file that is not a regular file, or
    a directory without write permission. Each message starts with ``what`` and ``path``
    (``what`` defaults to "cannot save to")."""
    name = file_path(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    prefix = f"{what or 'cannot save to'} {name!r}"
    if not name:
        raise FileNotFoundError(f"{what or 'cannot save to'} an empty path")
    target = os.path.realpath(name)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{prefix}: it is a directory")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(f"{prefix}: {directory!r} is not a directory")
        raise FileNotFoundError(f"{prefix}: directory {directory!r} does not exist")
    if os.path.lexists(target):
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            raise PermissionError(f"{prefix}: it exists and is not a regular file")
        if not (mode & 0o222) or not os.access(target, os.W_OK):
            raise PermissionError(f"{prefix}: the file is read-only")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"{prefix}: directory {directory!r} is not writable")
    return target


def _temporary_name_pattern(basename: str):
    return re.compile(re.escape(f".{basename}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp\Z")


def _remove_stale_temporaries(directory: str, basename: str) -> None:
    """Remove the temporary files that killed saves to ``basename`` left behind: those of
    processes that no longer run, and this process's own that no save is writing now."""
    if os.name != "posix":      # (checking that a process runs is POSIX-only here)
        return
    pattern = _temporary_name_pattern(basename)
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry)
        if match is None:
            continue
        full = os.path.join(directory, entry)
        pid = int(match.group(1))
        if pid == os.getpid():
            stale = full not in _IN_PROGRESS
        else:
            try:
                os.kill(pid, 0)
                stale = False
            except ProcessLookupError:
                stale = True
            except (PermissionError, OverflowError, ValueError):
                stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(full)


def _write(path, header: dict, arrays: dict) -> None:
    """Write ``arrays`` and the JSON ``header`` to ``path`` atomically (see ``check_writable``
    for what is refused)."""
    target = check_writable(path)
    arrays = {name: np.ascontiguousarray(ops.to_numpy(a)) for name, a in arrays.items()}
    header = {**header, "arrays": _describe(arrays)}
    blob = np.frombuffer(json.dumps(header, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    directory, basename = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)    # replacing a file keeps its permissions
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{basename}.{os.getpid()}.", suffix=".tmp",
                               dir=directory)
    _IN_PROGRESS.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{HEADER: blob}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)     # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            # (the OS's own message names no file, and says nothing of the old one)
            left = ("the file there is unchanged" if os.path.exists(target)
                    else "nothing was written")
            raise OSError(error.errno, f"cannot save to {os.fspath(path)!r}: "
                                       f"{error.strerror}; {left}") from error
        raise
    finally:
        _IN_PROGRESS.discard(tmp)
    _remove_stale_temporaries(directory, basename)


# --- reading ---------------------------------------------------------------------------------------

def _reject_constant(text):
    raise ValueError(f"{text} is not a JSON number")


def _describe_value(value) -> str:
    try:
        text = json.dumps(value)      # as the file spells it: true, null, "text"
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(value, kind: str, where: str, name: str):
    """``value`` if it is of JSON ``kind``, else ``ModelFileError`` naming ``where``."""
    ok = {
        "object": lambda v: isinstance(v, dict),
        "list": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_COUNT,
        "natural": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
        "number": _finite_number,
        "number or null": lambda v: v is None or _finite_number(v),
        "dtype": lambda v: v in ("float32", "float64"),
    }[kind](value)
    if not ok:
        wanted = {"count": "a whole number >= 1", "natural": "a whole number in [0, 2**63)",
                  "dtype": "'float32' or 'float64'",
                  "number": "a finite number", "integer": "a whole number"}.get(kind, kind)
        raise ModelFileError(f"{name}: {where} must be {wanted}, got {_describe_value(value)}")
    return value


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:       # an int too large for a float
        return False


def _source_name(source) -> str:
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<file object>"))
    return os.fsdecode(file_path(source))


@contextlib.contextmanager
def _opened(source):
    """A binary file object for ``source`` (a path or an open binary file) and its name."""
    name = _source_name(source)
    if hasattr(source, "read"):
        yield source, name
        return
    if not os.path.exists(name):
        raise FileNotFoundError(f"no such file: {name!r}")
    if os.path.isdir(name):
        raise ModelFileError(f"{name}: is a directory, not a loopnet file")
    with open(name, "rb") as handle:
        yield handle, name


def _read(source, expected_format: str, check=None):
    """``(header, arrays)`` of a loopnet file, every integrity check done. ``check(header,
    name)`` validates the header before any array is read (so sizes are known to agree)."""
    with _opened(source) as (handle, name):
        try:
            return _read_archive(handle, name, expected_format, check)
        except ModelFileError:
            raise
        except MemoryError as err:
            raise ModelFileError(f"{name}: not a readable loopnet file: it asks for more memory "
                                 f"than there is ({err})") from err
        except Exception as err:    # zipfile, numpy's .npy reader or JSON on damaged bytes
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ModelFileError(f"{name}: not a readable loopnet file (truncated or corrupted?):"
                                 f" {type(err).__name__}: {detail}") from err


def _archive_members(archive, name: str, size: int) -> dict:
    members = {}
    for info in archive.infolist():
        key = info.filename
        if not key.endswith(".npy") or key in members:
            raise ModelFileError(f"{name}: unexpected member {key!r} in the archive")
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{name}: member {key!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{name}: member {key!r} uses an unsupported compression "
                                 f"method ({info.compress_type})")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ModelFileError(f"{name}: member {key!r} is stored uncompressed, yet its sizes "
                                 f"differ ({info.compress_size} and {info.file_size} bytes)")
        if (info.compress_size > size
                or info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 4096):
            raise ModelFileError(f"{name}: member {key!r} claims {info.file_size} bytes, "
                                 f"which a {size}-byte file cannot hold")
        members[key[:-4]] = info
    return members


def _read_npy(archive, info, key: str, name: str, description: dict | None = None) -> np.ndarray:
    """One ``.npy`` member, checked against its ``description`` (shape, dtype, SHA-256) before
    anything is allocated; without one (the header), a 1-D uint8 array of any length."""
    if description is None:
        shape, dtype = None, np.dtype(np.uint8)
    else:
        shape, dtype = tuple(description["shape"]), np.dtype(description["dtype"])
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            stored_shape, fortran, stored_dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            stored_shape, fortran, stored_dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ModelFileError(f"{name}: array {key!r} has .npy format version {version}")
        if shape is None and len(stored_shape) == 1:
            shape = tuple(stored_shape)
        if (tuple(stored_shape) != shape or stored_dtype != dtype
                or (fortran and len(shape) > 1)):
            raise ModelFileError(f"{name}: array {key!r} has shape {tuple(stored_shape)} and "
                                 f"dtype {stored_dtype}, the header says {shape} and {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size - member.tell() != nbytes:
            raise ModelFileError(f"{name}: array {key!r} holds {info.file_size - member.tell()} "
                                 f"bytes of data, its shape {shape} needs {nbytes}")
        array = np.empty(shape, dtype)
        flat = array.reshape(-1).view(np.uint8)
        filled = 0
        while filled < nbytes:
            chunk = member.read(min(READ_CHUNK, nbytes - filled))
            if not chunk:
                raise ModelFileError(f"{name}: array {key!r} is truncated")
            flat[filled:filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
            filled += len(chunk)
        if member.read(1):      # (reading to the end also checks the member's CRC-32)
            raise ModelFileError(f"{name}: array {key!r} has data after its end")
    if description is not None and _digest(array) != description["sha256"]:
        raise ModelFileError(f"{name}: array {key!r} is corrupted (SHA-256 mismatch)")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _read_archive(handle, name: str, expected_format: str, check):
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        members = _archive_members(archive, name, size)
        info = members.pop(HEADER, None)
        if info is None:
            raise ModelFileError(f"{name}: no {HEADER!r} header: not a file written by loopnet")
        if info.file_size > MAX_HEADER_BYTES:
            raise ModelFileError(f"{name}: the header claims {info.file_size} bytes")
        blob = _read_npy(archive, info, HEADER, name)
        try:
            header = json.loads(blob.tobytes().decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise ModelFileError(f"{name}: corrupted header: {err}") from err
        if not isinstance(header, dict):
            raise ModelFileError(f"{name}: corrupted header: not a JSON object")
        _check_format(header, name, expected_format)
        described = _check_descriptions(header, name)
        if set(described) != set(members):
            missing = sorted(set(described) - set(members))
            extra = sorted(set(members) - set(described))
            raise ModelFileError(f"{name}: the arrays do not match the header "
                                 f"(missing {missing}, unexpected {extra})")
        if check is not None:
            check(header, name)
        arrays = {key: _read_npy(archive, members[key], key, name, described[key])
                  for key in described}
    return header, arrays


def _check_format(header: dict, name: str, expected_format: str) -> None:
    kind = header.get("format")
    if kind != expected_format:
        hint = {MODEL_FORMAT: " (load it with loopnet.Model.load)",
                PARAMETERS_FORMAT: " (load it with model.load_parameters)"}.get(kind, "")
        raise ModelFileError(f"{name}: holds {_describe_value(kind)}, expected "
                             f"{expected_format!r}{hint}")
    version = header.get("format_version")
    if (not isinstance(version, int) or isinstance(version, bool) or version < 1
            or version > FORMAT_VERSION):
        raise ModelFileError(f"{name}: format version {_describe_value(version)} is not "
                             f"supported by this loopnet (it reads versions 1..{FORMAT_VERSION});"
                             " upgrade loopnet")


def _check_descriptions(header: dict, name: str) -> dict:
    described = _expect(header.get("arrays"), "object", "'arrays'", name)
    for key, info in described.items():
        where = f"the description of array {key!r}"
        _expect(info, "object", where, name)
        shape = _expect(info.get("shape"), "list", f"{where}: shape", name)
        if len(shape) > MAX_NDIM or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_COUNT
                for n in shape):
            raise ModelFileError(f"{name}: {where}: shape {_describe_value(shape)} is not a "
                                 "list of sizes")
        if info.get("dtype") not in ARRAY_DTYPES:
            raise ModelFileError(f"{name}: {where}: dtype {_describe_value(info.get('dtype'))} "
                                 f"is not one of {', '.join(ARRAY_DTYPES)}")
        digest = info.get("sha256")
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ModelFileError(f"{name}: {where}: sha256 {_describe_value(digest)} is not a "
                                 "SHA-256 digest")
    return described


def _array_shape(header: dict, key: str):
    return tuple(header["arrays"][key]["shape"])


def _array_dtype(header: dict, key: str) -> np.dtype:
    return np.dtype(header["arrays"][key]["dtype"]).newbyteorder("=")


def _trainable(model):
    return [(index, layer) for index, layer in enumerate(model.layers) if hasattr(layer, "weights")]


def _check_parameter_arrays(index: int, layer, what: str) -> None:
    for attribute in ("weights", "biases"):
        value = getattr(layer, attribute, None)
        if not (isinstance(value, np.ndarray) or is_device_array(value)):
            raise TypeError(f"cannot {what} layer {index} ({layer!r}): its {attribute} is "
                            f"{type(value).__name__}, not an array")


# --- parameters only ---------------------------------------------------------------------------

def save_parameters(model, path) -> None:
    """The trainable layers' ``weights`` and ``biases`` (the book's ``save_parameters``)."""
    arrays, layers = {}, []
    for index, layer in _trainable(model):
        _check_parameter_arrays(index, layer, "save the parameters of")
        arrays[f"layers.{index}.weights"] = layer.weights
        arrays[f"layers.{index}.biases"] = layer.biases
        layers.append({"index": index, "type": type(layer).__name__})
    _write(path, {"format": PARAMETERS_FORMAT, "format_version": FORMAT_VERSION,
                  "layers": layers}, arrays)


def load_parameters(model, source) -> None:
    """Load parameters written by ``save_parameters`` into ``model``; every layer's position,
    type and shapes must match, else ``ModelFileError`` names the difference (the model is then
    left unchanged). ``source``: a path or an open binary file."""
    ours = []
    for index, layer in _trainable(model):
        _check_parameter_arrays(index, layer, "load parameters into")
        ours.append((index, type(layer).__name__, tuple(layer.weights.shape),
                     tuple(layer.biases.shape)))

    def check(header, name):
        entries = _expect(header.get("layers"), "list", "'layers'", name)
        theirs, expected = [], set()
        for k, entry in enumerate(entries):
            _expect(entry, "object", f"layers[{k}]", name)
            index = _expect(entry.get("index"), "integer", f"layers[{k}].index", name)
            kind = _expect(entry.get("type"), "string", f"layers[{k}].type", name)
            keys = (f"layers.{index}.weights", f"layers.{index}.biases")
            if not all(key in header["arrays"] for key in keys):
                raise ModelFileError(f"{name}: parameters of layer {index} are missing")
            expected.update(keys)
            theirs.append((index, kind, *(_array_shape(header, key) for key in keys)))
        extra = sorted(set(header["arrays"]) - expected)
        if extra:
            raise ModelFileError(f"{name}: unexpected arrays {extra}")
        if ours != theirs:
            raise ModelFileError(
                f"{name}: parameters do not match this model: the file has (layer index, type, "
                f"weights shape, biases shape) {theirs}, the model has {ours}")

    _, arrays = _read(source, PARAMETERS_FORMAT, check)
    layers = _trainable(model)
    converted = []
    for index, layer in layers:     # every layer checked before any is changed
        weights, biases = arrays[f"layers.{index}.weights"], arrays[f"layers.{index}.biases"]
        if hasattr(layer, "checked_parameters"):
            weights, biases = layer.checked_parameters(weights, biases)
        converted.append((weights, biases))
    for (index, layer), (weights, biases) in zip(layers, converted):
        layer.set_parameters(weights, biases)


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


def _check_savable(obj, table: dict, what: str) -> None:
    """``obj`` must be one of loopnet's own classes (a file names a class from a fixed table)."""
    if table.get(type(obj).__name__) is not type(obj):
        kind = type(obj)
        raise TypeError(
            f"cannot save {what} {obj!r}: it is a {kind.__module__}.{kind.__qualname__}, and "
            f"Model.save stores only loopnet's own classes ({', '.join(sorted(table))}); "
            "Model.save_parameters() saves the weights and biases of any layer")


def save_model(model, path) -> None:
    """Everything needed to predict with the model and to resume its training."""
    layer_types, loss_types, optimizer_types, accuracy_types = _registries()
    arrays, layers = {}, []
    for index, layer in enumerate(model.layers):
        _check_savable(layer, layer_types, f"layer {index}")
        entry = {"type": type(layer).__name__, "config": _jsonable(layer.get_config())}
        if hasattr(layer, "weights"):
            _check_parameter_arrays(index, layer, "save")
            arrays[f"layers.{index}.weights"] = layer.weights
            arrays[f"layers.{index}.biases"] = layer.biases
            for state in STATE_ARRAYS:
                if getattr(layer, state, None) is not None:
                    arrays[f"layers.{index}.{state}"] = getattr(layer, state)
        layers.append(entry)
    for obj, table, what in ((model.loss, loss_types, "the loss"),
                             (model.optimizer, optimizer_types, "the optimizer"),
                             (model.accuracy, accuracy_types, "the accuracy")):
        if obj is not None:
            _check_savable(obj, table, what)

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


def _settings(cls) -> set:
    """The settings a file may give ``cls``: its constructor's arguments but the device (and
    the seed, but a Dropout's: the seed of its masks; files of earlier versions kept a numpy
    generator's state, ``rng_state``, instead)."""
    names = {name for name, p in inspect.signature(cls.__init__).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names -= {"self", "device"}
    from loopnet.layers import Dropout

    if issubclass(cls, Dropout):
        names.add("rng_state")
    else:
        names.discard("seed")
    return names


def _check_entry(entry, table: dict, where: str, name: str):
    """``(class, config)`` of a saved layer/loss/optimizer/accuracy, every setting checked."""
    _expect(entry, "object", where, name)
    kind = _expect(entry.get("type"), "string", f"{where}.type", name)
    if kind not in table:
        raise ModelFileError(f"{name}: unknown {where.split('[')[0]} type {kind!r} "
                             f"(known: {', '.join(sorted(table))})")
    cls = table[kind]
    config = _expect(entry.get("config", {}), "object", f"{where}.config", name)
    unknown = sorted(set(config) - _settings(cls))
    if unknown:
        raise ModelFileError(f"{name}: {where} ({kind}) has unknown settings {unknown} "
                             f"(it takes {sorted(_settings(cls))})")
    for key, value in config.items():
        _expect(value, CONFIG_KINDS.get(key, "number"), f"{where}.config.{key}", name)
    if "rng_state" in config:
        generator = config["rng_state"].get("bit_generator")
        if generator not in BIT_GENERATORS:
            raise ModelFileError(
                f"{name}: {where}: bit generator {_describe_value(generator)} is not one of "
                f"{', '.join(BIT_GENERATORS)}")
    return cls, config


def _check_model_header(header: dict, name: str) -> None:
    """Everything ``load_model`` relies on, checked before any array is read or allocated."""
    layer_types, loss_types, optimizer_types, accuracy_types = _registries()
    entries = _expect(header.get("layers"), "list", "'layers'", name)
    expected = set()
    for index, entry in enumerate(entries):
        cls, config = _check_entry(entry, layer_types, f"layer[{index}]", name)
        if cls.__name__ != "Dense":
            continue
        missing = [key for key in ("n_inputs", "n_neurons") if key not in config]
        if missing:
            raise ModelFileError(f"{name}: layer {index} (Dense) has no {' or '.join(missing)}")
        dtype = np.dtype(config.get("dtype", "float32"))
        shapes = {"weights": (config["n_inputs"], config["n_neurons"]),
                  "biases": (1, config["n_neurons"])}
        for parameter, shape in shapes.items():
            key = f"layers.{index}.{parameter}"
            if key not in header["arrays"]:
                raise ModelFileError(f"{name}: parameters of layer {index} are missing ({key})")
            expected.add(key)
            if _array_shape(header, key) != shape or _array_dtype(header, key) != dtype:
                raise ModelFileError(
                    f"{name}: layer {index} is Dense({config['n_inputs']}, {config['n_neurons']})"
                    f" of {dtype}, but its {parameter} array has shape "
                    f"{_array_shape(header, key)} and dtype {_array_dtype(header, key)} (it "
                    f"needs {shape})")
        for state in STATE_ARRAYS:
            key = f"layers.{index}.{state}"
            if key in header["arrays"]:
                expected.add(key)
                shape = shapes["weights" if state.startswith("weight") else "biases"]
                if _array_shape(header, key) != shape or _array_dtype(header, key) != dtype:
                    raise ModelFileError(
                        f"{name}: {key} has shape {_array_shape(header, key)} and dtype "
                        f"{_array_dtype(header, key)}, its parameter has {shape} and {dtype}")
    extra = sorted(set(header["arrays"]) - expected)
    if extra:
        raise ModelFileError(f"{name}: arrays {extra} belong to no layer")
    for part, table in (("loss", loss_types), ("optimizer", optimizer_types),
                        ("accuracy", accuracy_types)):
        if header.get(part) is not None:
            _check_entry(header[part], table, part, name)
    if header.get("optimizer") is not None:
        state = _expect(header["optimizer"].get("state"), "object", "optimizer.state", name)
        rate = _expect(state.get("current_learning_rate"), "number",
                       "optimizer.state.current_learning_rate", name)
        iterations = _expect(state.get("iterations"), "integer", "optimizer.state.iterations",
                             name)
        if rate < 0 or not 0 <= iterations <= MAX_COUNT:
            raise ModelFileError(f"{name}: optimizer state out of range: current_learning_rate "
                                 f"{rate}, iterations {iterations}")


def _build(entry, table, what: str, name: str, arrays: dict, index=None):
    """The object a checked ``entry`` describes (no random draws, no global state touched)."""
    if entry is None:
        return None
    kind, config = entry["type"], dict(entry.get("config", {}))
    cls = table[kind]
    try:
        if kind == "Dense":
            return cls.from_parameters(arrays[f"layers.{index}.weights"],
                                       arrays[f"layers.{index}.biases"], **config)
        from loopnet.layers import Dropout

        if issubclass(cls, Dropout):
            # A file of an earlier version names a numpy generator's state: its masks cannot
            # be drawn again (they now come from a hash of a seed); take the seed from that
            # state, never from (nor touching) numpy's global generator.
            rng_state = config.pop("rng_state", None)
            if "seed" not in config:
                state = rng_state.get("state") if isinstance(rng_state, dict) else None
                value = state.get("state") if isinstance(state, dict) else None
                config["seed"] = value % 2**63 if isinstance(value, int) else 0
            return cls(**config)
        return cls(**config)
    except ModelFileError:
        raise
    except Exception as err:    # a setting out of range, a malformed generator state ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{name}: cannot rebuild {what} {kind}: {detail}") from err


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


def load_model(source, device=None):
    """Rebuild a ``Model`` written by ``save_model``; ``device`` (optional) is given to every
    layer, the loss and the accuracy, and the parameters (with the optimizer's state) are moved
    there once; otherwise they follow the current default device, and when that is a GPU the
    layers with parameters are placed on it, as ``Dense`` made there are.
    ``source``: a path or an open binary file. Loading draws no random numbers and leaves
    numpy's global random state alone."""
    from loopnet.devices import get_device, gpu, normalize
    from loopnet.model import Model

    if device is not None:
        device = normalize(device)
    header, arrays = _read(source, MODEL_FORMAT, _check_model_header)
    name = _source_name(source)
    layer_types, loss_types, optimizer_types, accuracy_types = _registries()

    model = Model()
    for index, entry in enumerate(header["layers"]):
        layer = _build(entry, layer_types, f"layer {index}", name, arrays, index)
        for state in STATE_ARRAYS:
            key = f"layers.{index}.{state}"
            if key in arrays:
                setattr(layer, state, arrays[key])
        model.add(layer)
    loss = _build(header.get("loss"), loss_types, "loss", name, arrays)
    optimizer = _build(header.get("optimizer"), optimizer_types, "optimizer", name, arrays)
    if optimizer is not None:
        optimizer.set_state(header["optimizer"]["state"])
    accuracy = _build(header.get("accuracy"), accuracy_types, "accuracy", name, arrays)
    model.set(loss=loss, optimizer=optimizer, accuracy=accuracy)
    preprocessing, class_names = header.get("preprocessing"), header.get("class_names")
    if preprocessing is not None and not isinstance(preprocessing, dict):
        raise ModelFileError(f"{name}: corrupted header: 'preprocessing' is not an object")
    if class_names is not None and not (isinstance(class_names, list)
                                        and all(isinstance(n, str) for n in class_names)):
        raise ModelFileError(f"{name}: corrupted header: 'class_names' is not a list of strings")
    model.preprocessing, model.class_names = preprocessing, class_names
    if device is not None:
        for obj in [*model.layers, loss, accuracy]:
            if obj is not None and hasattr(obj, "to"):
                obj.to(device)      # (the parameters go over once, not at every op)
            elif obj is not None:
                obj.device = device
    elif gpu(get_device()) is not None:
        where = gpu(get_device())
        for layer in model.layers:
            if hasattr(layer, "weights") and hasattr(layer, "to"):
                layer.to(where)
    if model.layers:
        model.finalize()
    return model
