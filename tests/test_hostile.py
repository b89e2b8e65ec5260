"""A hostile user: damaged and crafted model files, wrong-typed headers, saves through links and
onto read-only files, model state broken by assignment, Keras-style names, odd parameter
arrays, and command lines asking for terabytes, NaN data or a closed pipe.

Every case must end in a clear ``ModelFileError``/``TypeError``/``ValueError`` (or, on the
command line, one line on stderr and exit status 2), never a traceback from inside loopnet,
garbage numbers or a crash. Cases that could crash the interpreter if a check regressed run in
one child process per group (``tests/hostile_children.py``), which reports each case on its own
line, so a crash names its case.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import loopnet
from helpers import bits, spiral_classifier
from loopnet import ops
from loopnet.datasets import spiral_data, vertical_data
from loopnet.saving import ModelFileError

CHILDREN = Path(__file__).with_name("hostile_children.py")


def build(device="numpy", hidden=8):
    return spiral_classifier(device, hidden=hidden, weight_l2=5e-4, dropout=0.1, decay=5e-4,
                             seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def data():
    return spiral_data(10, 3, seed=0)


@pytest.fixture(scope="module")
def saved_bytes(data, tmp_path_factory):
    model = build()
    model.train(*data, epochs=2, print_every=0)
    path = tmp_path_factory.mktemp("hostile") / "model.npz"
    model.save(path)
    return path.read_bytes()


def fingerprint(model):
    """Everything a loaded model consists of, comparable with ``==``."""
    parts = [repr(model), model.optimizer.get_state(), model.optimizer.get_config(),
             model.loss.get_config(), model.accuracy.get_config()]
    for layer in model.layers:
        parts.append(repr(layer.get_config()))
        for name in ("weights", "biases", "weight_momentums", "weight_cache",
                     "bias_momentums", "bias_cache"):
            value = getattr(layer, name, None)
            if value is not None:
                parts.append((name, value.dtype.str, value.shape, value.tobytes()))
    return parts


# --- 1. damaged files ---------------------------------------------------------------------------

def test_every_single_bit_flip_is_refused_or_harmless(saved_bytes):
    """Every bit of the zip structure most likely to slip through (the first two central
    directory entries, the end record, the first member's local and .npy headers) and a
    seeded sample of the rest: each load raises ModelFileError or gives the very same model."""
    raw = saved_bytes
    reference = fingerprint(loopnet.Model.load(io.BytesIO(raw)))
    central = raw.find(b"PK\x01\x02")
    end = raw.rfind(b"PK\x05\x06")
    structure = [*range(central, central + 150), *range(end, len(raw)), *range(0, 200)]
    positions = {8 * byte + bit for byte in structure for bit in range(8)}
    rest = np.random.default_rng(0).choice(8 * len(raw), 1500, replace=False)
    positions |= set(int(p) for p in rest)
    refused = same = 0
    for position in sorted(positions):
        flipped = bytearray(raw)
        flipped[position // 8] ^= 1 << (position % 8)
        try:
            loaded = loopnet.Model.load(io.BytesIO(bytes(flipped)))
        except ModelFileError:
            refused += 1
            continue
        assert fingerprint(loaded) == reference, f"bit {position} changed the model silently"
        same += 1
    # both outcomes occur (flips in timestamps or attributes are harmless); most are refused
    assert refused > len(positions) // 2 and same > 0, (refused, same)


def crafted_zip(members, compress_type=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress_type) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def header_bytes(header) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    return npy_bytes(np.frombuffer(text.encode("utf-8"), np.uint8))


def patch(raw: bytes, offset: int, new: bytes) -> bytes:
    return raw[:offset] + new + raw[offset + len(new):]


def test_raw_zip_errors_become_model_file_errors(saved_bytes):
    def load(raw):
        return loopnet.Model.load(io.BytesIO(raw))

    raw = saved_bytes
    central = raw.find(b"PK\x01\x02")
    cases = {
        # compression method 99 in the central directory (zipfile: NotImplementedError)
        "unsupported compression": (patch(raw, central + 10, b"\x63\x00"), "compression"),
        # the encryption flag (zipfile: RuntimeError, password required)
        "encrypted": (patch(raw, central + 8, b"\x01\x00"), "encrypted"),
        # the first member's name garbled in its local header only (zipfile: BadZipFile)
        "names differ": (patch(raw, 30, b"X"), "truncated or corrupted"),
        # cut inside the central directory (zipfile: BadZipFile)
        "truncated": (raw[:central + 20], "truncated or corrupted"),
    }
    for what, (damaged, message) in cases.items():
        with pytest.raises(ModelFileError, match=message):
            load(damaged)
    # a deflated member whose stream is garbage (zlib.error)
    deflated = crafted_zip({"__loopnet__.npy": header_bytes({"format": "loopnet-model"})},
                           zipfile.ZIP_DEFLATED)
    info = zipfile.ZipFile(io.BytesIO(deflated)).getinfo("__loopnet__.npy")
    start = info.header_offset + 30 + len(info.filename)
    garbage = patch(deflated, start, b"\xff" * 8)
    with pytest.raises(ModelFileError):
        load(garbage)
    # a header that is not UTF-8 (UnicodeDecodeError), or not JSON, or nested without end
    for text in (b"\xff\xfe{}", b"{not json", b"[" * 100_000):
        blob = npy_bytes(np.frombuffer(text, np.uint8))
        with pytest.raises(ModelFileError, match="corrupted header"):
            load(crafted_zip({"__loopnet__.npy": blob}))
    # members that are not .npy arrays
    with pytest.raises(ModelFileError, match="unexpected member"):
        load(crafted_zip({"__loopnet__.npy": header_bytes({}), "evil.py": b"import os"}))


def test_absurd_sizes_fail_before_allocating():
    """A consistent header and .npy header both claiming 10**12 float64 values in a tiny file:
    refused from the sizes alone, allocating nothing large."""
    digest = "0" * 64
    header = {"format": "loopnet-model", "format_version": 1, "layers": [],
              "arrays": {"x": {"shape": [10**12], "dtype": "<f8", "sha256": digest}}}
    npy = npy_bytes(np.zeros(1))
    npy = npy.replace(b"(1,)", b"(1000000000000,)".ljust(4))    # the .npy header lies too
    raw = crafted_zip({"__loopnet__.npy": header_bytes(header), "x.npy": npy})
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError):
            loopnet.Model.load(io.BytesIO(raw))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak       # a few MB of Python objects, not 8 TB
    # the JSON header's own .npy header claiming 10**12 bytes
    blob = header_bytes({}).replace(b"(2,)", b"(1000000000000,)")
    with pytest.raises(ModelFileError, match=r"'__loopnet__' holds \d+ bytes of data, its shape \(1000000000000,\)"):
        loopnet.Model.load(io.BytesIO(crafted_zip({"__loopnet__.npy": blob})))


def rewrite(raw: bytes, change) -> bytes:
    """The file with its JSON header changed by ``change(header, arrays)`` (which may return
    replacement header text, e.g. with numbers JSON cannot spell)."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    header = json.loads(arrays.pop("__loopnet__").tobytes())
    text = change(header, arrays)
    text = json.dumps(header) if text is None else text
    buffer = io.BytesIO()
    np.savez(buffer, __loopnet__=np.frombuffer(text.encode(), np.uint8), **arrays)
    return buffer.getvalue()


def layer_config(index, **changes):
    def change(header, arrays):
        header["layers"][index]["config"].update(changes)
    return change


HEADER_CASES = {
    "layers_is_a_number": (lambda h, a: h.update(layers=5), "'layers' must be list"),
    "config_is_a_string": (lambda h, a: h["layers"][0].update(config="xyz"),
                           r"layer\[0\].config must be object"),
    "layer_type_is_a_number": (lambda h, a: h["layers"][1].update(type=5),
                               r"layer\[1\].type must be string"),
    "format_version_true": (lambda h, a: h.update(format_version=True), "format version true"),
    "iterations_infinity": (lambda h, a: json.dumps(h).replace(
        '"iterations": 2', '"iterations": Infinity'), "Infinity is not a JSON number"),
    "iterations_nan": (lambda h, a: json.dumps(h).replace(
        '"iterations": 2', '"iterations": NaN'), "NaN is not a JSON number"),
    "iterations_1e400": (lambda h, a: json.dumps(h).replace(
        '"iterations": 2', '"iterations": 1e400'), "iterations must be a whole number"),
    "iterations_negative": (lambda h, a: h["optimizer"]["state"].update(iterations=-1),
                            "out of range"),
    "learning_rate_1e400": (lambda h, a: json.dumps(h).replace(
        '"learning_rate": 0.05', '"learning_rate": 1e400'), "learning_rate must be a finite"),
    "array_entry_is_a_string": (lambda h, a: h["arrays"].update({"layers.0.weights": "abc"}),
                                "array 'layers.0.weights' must be object"),
    "shape_of_strings": (lambda h, a: h["arrays"]["layers.0.weights"].update(shape=["2", 8]),
                         "is not a list of sizes"),
    "dtype_object": (lambda h, a: h["arrays"]["layers.0.weights"].update(dtype="|O"),
                     "is not one of"),
    "n_inputs_a_list": (layer_config(0, n_inputs=[2]), "n_inputs must be a whole number"),
    "n_inputs_zero": (layer_config(0, n_inputs=0), "n_inputs must be a whole number >= 1"),
    "rate_an_object": (layer_config(2, rate={"a": 1}), "rate must be a finite number"),
    "layer_dtype_U3": (layer_config(0, dtype="U3"), "dtype must be 'float32' or 'float64'"),
    "unknown_setting": (layer_config(0, evil=1), r"unknown settings \['evil'\]"),
    "device_setting": (layer_config(0, device="cuda"), r"unknown settings \['device'\]"),
    "regularizer_negative": (layer_config(0, weight_regularizer_l2=-1.0),
                             "cannot rebuild layer 0 Dense"),
    "accuracy_binary_a_string": (lambda h, a: h["accuracy"]["config"].update(binary="yes"),
                                 "binary must be bool"),
    "optimizer_beta_1_too_large": (lambda h, a: h["optimizer"]["config"].update(beta_1=2.0),
                                   "cannot rebuild optimizer Adam"),
    "optimizer_state_a_list": (lambda h, a: h["optimizer"].update(state=[1, 2]),
                               "optimizer.state must be object"),
    "loss_type_unknown": (lambda h, a: h["loss"].update(type="__import__"),
                          "unknown loss type '__import__'"),
    "bit_generator_seed": (layer_config(2, rng_state={"bit_generator": "seed", "state": {}}),
                           "bit generator \"seed\" is not one of"),
    "bit_generator_random": (layer_config(2, rng_state={"bit_generator": "RandomState"}),
                             "is not one of"),
    "dropout_seed_negative": (layer_config(2, seed=-1),
                              r"seed must be a whole number in \[0, 2\*\*63\)"),
    "dropout_step_a_string": (layer_config(2, step="x"), "step must be a whole number"),
    "dropout_rate_one": (layer_config(2, rate=1.0), "cannot rebuild layer 2 Dropout"),
    "dense_claims_10**7_by_10**7": (layer_config(0, n_inputs=10**7, n_neurons=10**7),
                                    r"Dense\(10000000, 10000000\).*shape \(2, 8\)"),
    "momentum_of_other_shape": (lambda h, a: h["arrays"]["layers.0.weight_momentums"].update(
        shape=[8, 2]), "shape"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_wrong_header_fields_raise_model_file_error(saved_bytes, case):
    change, message = HEADER_CASES[case]
    raw = rewrite(saved_bytes, change)
    state = np.random.get_state()
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=message):
            loopnet.Model.load(io.BytesIO(raw))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak       # no layer of the claimed size was drawn
    after = np.random.get_state()
    assert after[0] == state[0] and bits(after[1]) == bits(state[1]) and after[2:] == state[2:]


def test_loading_never_touches_numpys_global_random_state(saved_bytes, monkeypatch):
    calls = []
    for name in ("seed", "randn", "standard_normal", "set_state"):
        monkeypatch.setattr(np.random, name, lambda *a, name=name, **k: calls.append(name))
    np.random.random()      # (the global generator stays usable and moves only when asked)
    state = np.random.get_state()
    model = loopnet.Model.load(io.BytesIO(saved_bytes))
    raw = rewrite(saved_bytes, layer_config(2, rng_state={"bit_generator": "seed"}))
    with pytest.raises(ModelFileError):
        loopnet.Model.load(io.BytesIO(raw))
    after = np.random.get_state()
    assert calls == []
    assert after[0] == state[0] and bits(after[1]) == bits(state[1]) and after[2:] == state[2:]
    assert model.layers[2].seed == 1 and model.layers[2].step == 2   # two epochs trained


def test_parameters_file_fields_are_checked(data, tmp_path):
    model = build()
    path = tmp_path / "params.npz"
    model.save_parameters(path)
    raw = path.read_bytes()
    for change, message in (
            (lambda h, a: h.update(layers={"index": 0}), "'layers' must be list"),
            (lambda h, a: h["layers"][0].update(index="0"), r"layers\[0\].index must be"),
            (lambda h, a: h["layers"][0].update(type=None), r"layers\[0\].type must be"),
    ):
        with pytest.raises(ModelFileError, match=message):
            model.load_parameters(io.BytesIO(rewrite(raw, change)))


# --- 5. saving ------------------------------------------------------------------------------------

def test_save_through_a_symlink_writes_its_target(tmp_path):
    model = build()
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    target.write_bytes(b"old")
    link.symlink_to(target)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert fingerprint(loopnet.Model.load(target)) == fingerprint(model)
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "new.npz")
    model.save(dangling)
    assert dangling.is_symlink() and (tmp_path / "new.npz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.npz", "link.npz",
                                                         "new.npz", "real.npz"]


def test_save_refuses_read_only_files_directories_and_missing_directories(tmp_path):
    model = build()
    read_only = tmp_path / "read_only.npz"
    read_only.write_bytes(b"keep me")
    read_only.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):
        model.save(read_only)
    assert read_only.read_bytes() == b"keep me"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="directory .*missing.* does not exist"):
        model.save(tmp_path / "missing" / "model.npz")
    with pytest.raises(PermissionError, match="not a regular file"):
        model.save_parameters("/dev/null")
    private = tmp_path / "private.npz"
    private.write_bytes(b"")
    private.chmod(0o600)
    model.save(private)     # replacing a file keeps its permissions
    assert (private.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.npz", "read_only.npz"]
    # no path at all: named, as numpy's "expected str, bytes or os.PathLike" does not
    for call in (model.save, model.save_parameters, loopnet.Model.load, model.load_parameters,
                 loopnet.callbacks.ModelCheckpoint):
        with pytest.raises(TypeError, match=r"^path must be a file path \(a str or an "
                                            r"os\.PathLike\), got int 5$"):
            call(5)


@pytest.mark.parametrize("failure", ["disk_full", "exception_in_savez", "keyboard_interrupt"])
def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch, failure):
    model = build()
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()
    if failure == "disk_full":
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", fsync)
        expected = OSError
    else:
        expected = KeyboardInterrupt if failure == "keyboard_interrupt" else RuntimeError

        def savez(file, **arrays):
            file.write(b"PK partial")
            raise expected("interrupted mid-write")
        monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(expected):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_a_save_removes_the_temporary_files_killed_saves_left(tmp_path):
    model = build()
    dead = 4194305      # above Linux's largest pid_max (2**22): no such process can exist
    stale = [tmp_path / f".model.npz.{dead}.abc123.tmp",
             tmp_path / f".model.npz.{os.getpid()}.zz_9.tmp"]   # ours, but no save is running
    alive = tmp_path / ".model.npz.1.live01.tmp"                # pid 1 runs: maybe a save
    other = tmp_path / ".other.npz.4194305.abc123.tmp"          # another file's
    for path in (*stale, alive, other):
        path.write_bytes(b"partial")
    model.save(tmp_path / "model.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, other.name, "model.npz"])


# --- 6. layers Model.save cannot name -------------------------------------------------------------

class OwnLayer:
    """A user's layer: the interface, but unknown to loopnet's registry."""

    def forward(self, inputs, training=True):
        self.output = inputs
        return inputs

    def backward(self, dvalues):
        self.dinputs = dvalues
        return dvalues


class OwnDense(loopnet.Dense):
    pass


def test_saving_a_layer_of_the_users_own_names_it(tmp_path):
    model = build()
    model.layers.insert(1, OwnLayer())
    with pytest.raises(TypeError, match=r"cannot save layer 1 .*OwnLayer.*save_parameters"):
        model.save(tmp_path / "model.npz")
    model.layers[1] = OwnDense(8, 8)
    with pytest.raises(TypeError, match="cannot save layer 1 .*OwnDense"):
        model.save(tmp_path / "model.npz")
    half = OwnLayer()
    half.weights = np.zeros((2, 2), np.float32)     # weights but no biases
    model.layers[1] = half
    with pytest.raises(TypeError, match="layer 1 .*biases is NoneType"):
        model.save_parameters(tmp_path / "params.npz")
    assert os.listdir(tmp_path) == []


# --- 15-21. the Python API ------------------------------------------------------------------------

def test_empty_inputs(data):
    model = build()
    out = model.predict(np.zeros((0, 2), np.float32))
    assert out.shape == (0, 3) and out.dtype == np.float32
    assert model.predict(np.zeros((0, 2)), batch_size=4).shape == (0, 3)
    with pytest.raises(ValueError, match="X_val is empty .*no samples"):
        model.evaluate(np.zeros((0, 2)), np.zeros(0, int))
    with pytest.raises(ValueError, match="X is empty"):
        model.train(np.zeros((0, 2)), np.zeros(0, int))


def test_validation_data_is_checked_before_training(data, capsys):
    X, y = data
    model = build()
    before = bits(model.layers[0].weights)

    def pairs():
        yield X
        yield y

    for bad, error, message in (
            (pairs(), TypeError, "pair .*got a generator"),
            ((X, y, y), TypeError, "pair .*tuple of length 3"),
            (X, TypeError, "pair .*got a ndarray"),
            ((X[:, :1], y), ValueError, r"X_val \(shape \(30, 1\)\) has 1 features but layer 0"),
            ((X, y[:5]), ValueError, "X_val has 30 samples but y_val has 5"),
            ((X, np.eye(3)[y]), ValueError, r"y_val has shape \(30, 3\) but y has shape \(30,\)"),
            ((X[:0], y[:0]), ValueError, "validation_data is empty"),
    ):
        with pytest.raises(error, match=message):
            model.train(X, y, epochs=2, print_every=1, validation_data=bad)
    assert bits(model.layers[0].weights) == before      # nothing trained
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"y_val has shape \(30, 1\) but y has shape \(30,\)"):
        model.train(X, y, epochs=2, print_every=1, validation_data=(X, y.reshape(-1, 1)))
    assert bits(model.layers[0].weights) == before      # nothing trained
    assert capsys.readouterr().out == ""
    history = model.train(X, y, epochs=1, print_every=0, validation_data=[X.tolist(), y])
    assert len(history["val_loss"]) == 1


def _one_output(device, binary=False):
    """2-4-1 with a linear output, MSE and regression accuracy, or (``binary``) 2-1 with a
    sigmoid, binary cross-entropy and binary accuracy."""
    model = loopnet.Model()
    layers = ([loopnet.Dense(2, 1, seed=0, device=device), loopnet.Sigmoid(device=device)]
              if binary else
              [loopnet.Dense(2, 4, seed=0, device=device), loopnet.ReLU(device=device),
               loopnet.Dense(4, 1, seed=1, device=device), loopnet.Linear(device=device)])
    for layer in layers:
        model.add(layer)
    model.set(loss=(loopnet.BinaryCrossentropy if binary else loopnet.MeanSquaredError)(
                  device=device),
              optimizer=loopnet.Adam(),
              accuracy=(loopnet.BinaryAccuracy if binary else loopnet.RegressionAccuracy)(
                  device=device))
    model.finalize()
    return model


@pytest.mark.parametrize("path", ["compiled", "layered", "numpy"])
def test_bad_targets_name_y_or_y_val_and_stop_before_training(data, path, monkeypatch, capsys):
    """A bad label in ``y`` or ``y_val`` is named as such (not as the loss's ``y_true``) and
    found before anything trains, on the compiled step, the layered path on ``cpu`` and the
    numpy device alike: the layered path would otherwise meet ``y_val`` only when it first
    validates (here after 3 epochs), with the parameters already changed."""
    X, y = data
    y = y.astype(np.int64)
    device = "numpy" if path == "numpy" else "cpu"
    if path == "layered":
        monkeypatch.setenv("LOOPNET_COMPILED_STEP", "0")
    one_hot = np.eye(3)[y]
    twice = one_hot.copy()
    twice[4, 0] = 1 - twice[4, 0]
    for model, targets, validation, message in (
            (build(device), np.where(y == 1, 3, y), y,
             r"^y has class index 3 at position 10, but the model's output has only 3 classes "
             r"\(valid labels: 0\.\.2\)$"),
            (build(device), y, np.where(y == 2, 7, y), r"^y_val has class index 7 at position"),
            (build(device), y, y - 1, r"^y_val has a negative class index -1 at position 0"),
            (build(device), y, y + 0.5, r"^y_val must hold integer class indices, got 0\.5"),
            (build(device), one_hot, twice, r"^y_val row 4 is not one-hot"),
            (_one_output(device), X, X, r"^y has shape \(30, 2\) but the model's output has "
                                        r"shape \(30, 1\)"),
            (_one_output(device), X[:, :1], np.where(X[:, :1] > 0.5, np.nan, X[:, :1]),
             r"^y_val has a NaN or infinite target in sample \d+: \[nan\]$"),
            # binary cross-entropy: labels 0 and 1 or probabilities, not class indices
            (_one_output(device, binary=True), y[:, None], (y == 1)[:, None],
             r"^y has the target 2 in sample 20 \(output 0\), but binary cross-entropy takes "
             r"targets in \[0, 1\] \(labels 0 and 1, or probabilities\)$"),
            (_one_output(device, binary=True), (y == 1)[:, None],
             np.where(y == 2, -0.5, 0.5)[:, None],
             r"^y_val has the target -0\.5 in sample 20 \(output 0\)")):
        before = [bits(layer.weights) for layer in model.layers if hasattr(layer, "weights")]
        with pytest.raises(ValueError, match=message):
            model.train(X, targets, epochs=5, print_every=1, validate_every=3,
                        validation_data=(X, validation))
        assert [bits(layer.weights) for layer in model.layers
                if hasattr(layer, "weights")] == before                   # nothing trained
        assert capsys.readouterr().out == ""
    model = build(device)
    with pytest.raises(ValueError, match=r"^y_val has class index 7 at position 20"):
        model.evaluate(X, y + 5, verbose=False)
    for batch_size in (None, 4):        # evaluate's compiled and layered forms on cpu
        with pytest.raises(ValueError, match=r"^one-hot y_val has shape \(30, 2\) but the "
                                             r"model's output has shape \(30, 3\)"):
            model.evaluate(X, one_hot[:, :2], batch_size=batch_size, verbose=False)
        with pytest.raises(ValueError, match=r"^y_val has the target 1\.5 in sample 0"):
            _one_output(device, binary=True).evaluate(X, np.full((30, 1), 1.5),
                                                      batch_size=batch_size, verbose=False)


@pytest.mark.parametrize("device", ["cpu", "numpy"])
def test_train_checks_shuffle_and_seed_before_training(data, device):
    """``shuffle`` takes a bool (the string ``"no"`` is truthy), ``seed`` None, an int >= 0 or
    a ``np.random.Generator``; the message names them (numpy's ``expected non-negative
    integer`` does not), and a bad seed is refused even while shuffling is off."""
    X, y = data
    model = build(device)
    before = bits(model.layers[0].weights)
    for kwargs, error, message in (
            (dict(shuffle="no"), TypeError, r"^shuffle must be True or False, got 'no'$"),
            (dict(shuffle=1), TypeError, r"^shuffle must be True or False, got 1$"),
            (dict(shuffle=True, seed=-1), ValueError, r"^seed must be an integer >= 0, got -1$"),
            (dict(shuffle=True, seed=True), TypeError, r"^seed must be None, an integer >= 0 "
                                                       r"or a np\.random\.Generator, got True$"),
            (dict(seed="a"), TypeError, r"^seed must be None, an integer >= 0 or a "
                                        r"np\.random\.Generator, got 'a'$")):
        with pytest.raises(error, match=message):
            model.train(X, y, epochs=2, batch_size=8, print_every=0, **kwargs)
        assert bits(model.layers[0].weights) == before
    # a Generator shuffles as np.random.default_rng(seed) would; np.bool_ is a bool
    runs = [build(device).train(X, y, epochs=3, batch_size=8, shuffle=np.True_, seed=seed,
                                print_every=0)["loss"]
            for seed in (7, np.random.default_rng(7))]
    assert runs[0] == runs[1]


def test_add_refuses_a_class():
    with pytest.raises(TypeError, match=r"^add\(\) takes a layer object, got the class ReLU: "
                                        r"write add\(ReLU\(\.\.\.\)\)$"):
        loopnet.Model().add(loopnet.ReLU)


def test_a_cross_entropy_after_other_values_than_probabilities_warns(data, recwarn):
    """loopnet's cross-entropies read probabilities, as the book's do; a PyTorch user's
    Dense-then-loss model (logits) gets a warning at the line that finalizes or trains it,
    and the models that end in Softmax or Sigmoid, or use another loss, get none."""
    X, y = data

    def model(loss, *layers):
        built = loopnet.Model()
        for layer in layers:
            built.add(layer)
        built.set(loss=loss, optimizer="adam")
        return built

    for last, loss, end, torch in (
            (loopnet.Dense(3, 3), "categorical_crossentropy", "Softmax", "CrossEntropyLoss"),
            (loopnet.Dropout(0.1), "categorical_crossentropy", "Softmax", "CrossEntropyLoss"),
            (loopnet.Linear(), "binary_crossentropy", "Sigmoid", "BCEWithLogitsLoss"),
            (loopnet.ReLU(), "binary_crossentropy", "Sigmoid", "BCEWithLogitsLoss")):
        with pytest.warns(UserWarning) as caught:
            model(loss, loopnet.Dense(2, 3), last).finalize()
        [warning] = caught
        assert str(warning.message) == (
            f"{'Categorical' if end == 'Softmax' else 'Binary'}Crossentropy reads "
            f"probabilities, but the model's last layer, {last!r}, gives other values: end "
            f"the model with {end}() (loopnet's cross-entropies take probabilities, not the "
            f"logits PyTorch's {torch} takes)")
        assert warning.filename == __file__            # the user's line, not loopnet's
    recwarn.clear()
    for loss, last in (("categorical_crossentropy", loopnet.Softmax()),
                       ("binary_crossentropy", loopnet.Sigmoid()), ("mse", loopnet.Linear()),
                       ("mae", loopnet.Dense(3, 3))):
        model(loss, loopnet.Dense(2, 3), last).finalize()
    assert not recwarn.list
    with pytest.warns(UserWarning, match="reads probabilities") as caught:     # from train()
        model("categorical_crossentropy", loopnet.Dense(2, 3)).train(X, y, print_every=0)
    assert [w.filename for w in caught] == [__file__]


def test_keras_names_in_set(data):
    X, y = data
    model = build()
    names = {
        ("loss", "categorical_crossentropy"): loopnet.CategoricalCrossentropy,
        ("loss", "binary_crossentropy"): loopnet.BinaryCrossentropy,
        ("loss", "mse"): loopnet.MeanSquaredError,
        ("loss", "Mean-Squared-Error"): loopnet.MeanSquaredError,
        ("loss", "mae"): loopnet.MeanAbsoluteError,
        ("loss", "mean_absolute_error"): loopnet.MeanAbsoluteError,
        ("optimizer", "sgd"): loopnet.SGD, ("optimizer", "adagrad"): loopnet.Adagrad,
        ("optimizer", "RMSprop"): loopnet.RMSprop, ("optimizer", "adam"): loopnet.Adam,
        ("accuracy", "categorical"): loopnet.CategoricalAccuracy,
        ("accuracy", "binary"): loopnet.BinaryAccuracy,
        ("accuracy", "regression"): loopnet.RegressionAccuracy,
    }
    for (part, name), cls in names.items():
        model.set(**{part: name})
        assert type(getattr(model, part)) is cls, (part, name)
    for loss, cls in (("binary_crossentropy", loopnet.BinaryAccuracy),
                      ("mse", loopnet.RegressionAccuracy),
                      ("categorical_crossentropy", loopnet.CategoricalAccuracy)):
        model.set(loss=loss, accuracy="accuracy")
        assert type(model.accuracy) is cls, loss
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'; valid names: sgd, adagrad"):
        model.set(optimizer="adamw")
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*categorical_crossentropy"):
        model.set(loss="hinge")
    with pytest.raises(TypeError, match="optimizer must be a loopnet Optimizer .*got object"):
        model.set(optimizer=object())
    with pytest.raises(TypeError, match=r"got the class Adam: write Adam\(\)"):
        model.set(optimizer=loopnet.Adam)
    with pytest.raises(TypeError, match="accuracy must be a loopnet Accuracy .*got int 3"):
        model.set(accuracy=3)
    model.set(loss="categorical_crossentropy", optimizer="adam", accuracy="categorical")
    model.finalize()
    assert model.softmax_classifier_output is not None
    history = model.train(X, y, epochs=3, print_every=0)
    assert all(np.isfinite(history["loss"]))


def test_set_parameters_converts_and_names_wrong_shapes():
    model = build(hidden=4)
    first, second = model.layers[0], model.layers[3]
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 2))
    cases = {
        "nested lists": (weights.T.tolist(), [[0.5] * 4]),
        "int64": (np.arange(8, dtype=np.int64).reshape(2, 4), np.arange(4, dtype=np.int64)),
        "read-only": (np.ones((2, 4), np.float32), np.zeros((1, 4), np.float32)),
        "non-contiguous view": (weights.T, np.arange(8.0)[::2]),
    }
    cases["read-only"][0].setflags(write=False)
    for what, (w, b) in cases.items():
        first.set_parameters(w, b)
        for value, expected in ((first.weights, w), (first.biases, b)):
            assert value.dtype == np.float32 and value.flags.c_contiguous, what
            assert value.flags.writeable and value.shape in ((2, 4), (1, 4)), what
            np.testing.assert_array_equal(value, np.asarray(expected, np.float32).reshape(
                value.shape), err_msg=what)
    kept = np.zeros((2, 4), np.float32)
    first.set_parameters(kept, np.zeros((1, 4), np.float32))
    assert first.weights is kept        # already in the layer's form: not copied
    with pytest.raises(ValueError, match=r"weights have shape \(4, 2\), .*needs \(2, 4\)"):
        first.set_parameters(weights, np.zeros(4))
    with pytest.raises(ValueError, match="beyond the range of float32"):
        first.set_parameters(np.full((2, 4), 1e300), np.zeros(4))
    with pytest.raises(TypeError, match="real numbers"):
        first.set_parameters(np.full((2, 4), "a"), np.zeros(4))
    # Model.set_parameters: every layer checked before any changes
    before = [bits(first.weights), bits(second.weights)]
    with pytest.raises(ValueError, match=r"layer 3: biases have shape \(1, 5\), .*needs \(1, 3\)"):
        model.set_parameters([(np.ones((2, 4)), np.ones(4)), (np.ones((4, 3)), np.ones((1, 5)))])
    assert [bits(first.weights), bits(second.weights)] == before
    with pytest.raises(TypeError, match="layer 0 .* must be a pair"):
        model.set_parameters([np.ones((2, 4)), (np.ones((4, 3)), np.ones(3))])
    with pytest.raises(TypeError, match="list of .* pairs, got int"):
        model.set_parameters(3)
    model.set_parameters([([[1.0] * 4] * 2, [0.0] * 4), (np.ones((4, 3), np.int64), [0, 0, 0])])
    assert second.weights.dtype == np.float32 and second.biases.shape == (1, 3)


@pytest.mark.parametrize("cls", [loopnet.Adagrad, loopnet.RMSprop, loopnet.Adam])
def test_epsilon_must_be_positive(cls):
    for epsilon in (0, 0.0, -1e-7, float("inf")):
        with pytest.raises(ValueError, match="epsilon must be > 0"):
            cls(epsilon=epsilon)
    assert cls(epsilon=1e-12).epsilon == 1e-12


def test_zeros_checks_shape_and_dtype():
    assert ops.zeros(3).shape == (3,) and ops.zeros(np.int64(2)).shape == (2,)
    assert ops.zeros((2, 0)).shape == (2, 0)
    assert ops.zeros((2, 3), np.float64).dtype == np.float64
    for shape, dtype, error, message in (
            ((2, -1), np.float32, ValueError, "negative"),
            ((2.0, 3), np.float32, TypeError, "tuple of ints"),
            (None, np.float32, TypeError, "tuple of ints"),
            ((True,), np.float32, TypeError, "tuple of ints"),
            ((3,), object, TypeError, "float32 or float64, got object"),
            ((3,), "U3", TypeError, "float32 or float64, got <U3"),
            ((3,), np.float16, TypeError, "float32 or float64, got float16"),
            ((3,), np.int64, TypeError, "float32 or float64, got int64"),
            ((3,), "no such dtype", TypeError, "float32 or float64"),
    ):
        with pytest.raises(error, match=message):
            ops.zeros(shape, dtype)


def test_a_seed_numpy_would_refuse_is_named():
    """A layer's and a dataset's ``seed`` (a ``np.random.RandomState`` seed) out of range or of
    the wrong type is named, as numpy's "Seed must be between 0 and 2**32 - 1" does not; a
    Generator draws as it is."""
    for seed, error, message in (
            (-1, ValueError, r"^seed must be in \[0, 2\*\*32\) \(a np\.random\.RandomState "
                             r"seed\), got -1$"),
            (2**32, ValueError, r"got 4294967296$"),
            ("a", TypeError, r"^seed must be None, an int, a np\.random\.Generator or a "
                             r"np\.random\.RandomState, got 'a'$")):
        for make in (lambda: loopnet.Dense(2, 3, seed=seed), lambda: spiral_data(4, 3, seed=seed),
                     lambda: vertical_data(4, 3, seed=seed)):
            with pytest.raises(error, match=message):
                make()
    drawn = spiral_data(4, 3, seed=np.random.default_rng(7))[0]
    np.testing.assert_array_equal(drawn, spiral_data(4, 3, seed=np.random.default_rng(7))[0])


def test_datasets_label_dtype_fits_the_class_count():
    for make in (spiral_data, vertical_data):
        X, y = make(2, 3, seed=0)
        assert y.dtype == np.uint8          # nnfs's dtype, kept for the book's class counts
        X, y = make(2, 300, seed=0)
        assert y.dtype == np.uint16
        np.testing.assert_array_equal(y, np.repeat(np.arange(300), 2))


# --- children: model state and the command line ------------------------------------------------

def run_child(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "LOOPNET_DEBUG"}
    result = subprocess.run([sys.executable, str(CHILDREN), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    outcomes, started = {}, None
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            started = record["start"]
        else:
            outcomes[record["case"]] = record
            started = None
    return outcomes, started, result


@pytest.fixture(scope="module")
def model_state_outcomes():
    return run_child("model_state")


MODEL_STATE = {
    "biases_1x1": (ValueError, r"layer 0 \(Dense\(2, 16\)\).biases has shape \(1, 1\), "
                               r"the layer needs \(1, 16\)"),
    "biases_view_of_larger": (ValueError, r"layer 2 .*biases has shape \(1, 1\).*\(1, 3\)"),
    "weights_3x16_on_2_inputs": (ValueError, r"layer 0 .*weights has shape \(3, 16\), "
                                             r"the layer needs \(2, 16\)"),
    "weights_int64": (TypeError, "layer 0 .*weights has dtype int64, the layer computes in "
                                 "float32"),
    "weights_read_only": (ValueError, "layer 0 .*weights is read-only"),
    "weights_fortran": (ValueError, r"layer 2 .*weights \(shape \(16, 3\)\) is not C-contig"),
    "weights_float64_in_float32_layer": (TypeError, "layer 2 .*weights has dtype float64"),
    "weights_a_list": (TypeError, "layer 0 .*weights is a list, not an array"),
    "momentum_wrong_shape": (ValueError, r"layer 2 .*weight_momentums has shape \(3, 16\), "
                                         r"the layer needs \(16, 3\)"),
    "cache_wrong_dtype": (TypeError, "layer 0 .*bias_cache has dtype float64"),
    "layers_do_not_chain": (ValueError, r"layer 0 .* gives 16 outputs .*but layer 2 "
                                        r"\(Dense\(5, 3\)\) takes 5 inputs"),
}
MODEL_STATE_CASES = [f"{name}/{call}" for name in MODEL_STATE
                     for call in ("train", "evaluate", "predict")]
MODEL_STATE_CASES += [f"biases_view_of_larger/{call}/{device}" for call in ("train", "predict")
                      for device in ("numpy", "python")]


@pytest.mark.parametrize("case", MODEL_STATE_CASES)
def test_broken_model_state_is_refused(model_state_outcomes, case):
    outcomes, crashed_in, result = model_state_outcomes
    assert case in outcomes, f"the child died in case {crashed_in}: {result.stderr[-2000:]}"
    error, message = MODEL_STATE[case.split("/")[0]]
    outcome = outcomes[case]
    assert outcome["raised"] == error.__name__, outcome.get("traceback", outcome)
    assert __import__("re").search(message, outcome["message"]), outcome["message"]


def test_inputs_of_the_wrong_width_are_refused(model_state_outcomes):
    outcomes, crashed_in, result = model_state_outcomes
    assert "X_one_dimensional/predict" in outcomes, (crashed_in, result.stderr[-2000:])
    wide, flat = outcomes["X_too_wide/predict"], outcomes["X_one_dimensional/predict"]
    assert wide["raised"] == "ValueError"
    assert wide["message"].startswith("X (shape (4, 3)) has 3 features but layer 0")
    assert flat["raised"] == "ValueError" and "reshape(-1, 1)" in flat["message"]


def test_a_label_a_callback_writes_into_y_is_checked(model_state_outcomes):
    """The compiled step's kernels index with the labels unchecked: a callback writing an
    out-of-range label into the caller's ``y`` (or ``y_val``) between epochs is refused with
    the error of a bad label before the next epoch (it once reached the kernel: a crash)."""
    outcomes, crashed_in, result = model_state_outcomes
    for name in ("y", "y_val"):
        case = f"label_written_by_a_callback/{name}"
        assert case in outcomes, (crashed_in, result.stderr[-2000:])
        assert outcomes[case]["raised"] == "ValueError", outcomes[case]
        assert outcomes[case]["message"].startswith(
            f"after epoch 1's callbacks: {name} has class index 1000000000 at position 0, but "
            "the model's output has only 3 classes"), outcomes[case]


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory):
    return run_child("cli", tmp_path_factory.mktemp("cli"))


# case: (fragments of the one error line, whether training may have started)
CLI_ERRORS = {
    "diverging": (["training diverged at epoch", "lower the learning rate"], True),
    "train_value_beyond_float32": (["1e+300 in sample 30, column 0", "float32"], False),
    "train_npz_value_beyond_float32": (["huge.npz", "1e+300", "float32"], False),
    "train_target_beyond_float32": (["y has the value 1e+300", "float32"], False),
    "train_nan": (["NaN or infinite value in sample 30"], False),
    "train_inf": (["NaN or infinite value in sample 30"], False),
    "predict_value_beyond_float32": (["1e+300", "float32"], False),
    "predict_nan": (["NaN or infinite"], False),
    "predict_inf": (["NaN or infinite"], False),
    "predict_outputs_overflow": (["outputs for sample 0", "not finite"], False),
    "predict_nan_parameters": (["nan_weights.npz", "weights of layer 0", "NaN"], False),
    "labels_1e12": (["labels go up to 1e+12", "1000000000001 classes", "--task regression"],
                    False),
    "labels_1e20": (["labels go up to 1e+20", "--task regression"], False),
    "labels_2e9": (["memory", "Dense(64, 2000000001)", "2000000001 classes"], False),
    "labels_negative": (["not class indices"], False),
    "labels_fraction": (["not class indices"], False),
    "hidden_1e12": (["--hidden", "'1e12'"], False),
    "hidden_0": (["--hidden", "'0'"], False),
    "hidden_10**12": (["memory", "layers of 2, 1000000000000, 3 units"], False),
    "samples_10**12": (["memory", "3,300,000,000,000 samples"], False),
    "classes_10**9": (["memory", "1000000000 units"], False),
    "learning_rate_inf": (["--learning-rate", "'inf'"], False),
    "seed_negative": (["--seed", "'-1'"], False),
    "save_directory": (["--save", "a_directory", "is a directory"], False),
    "save_missing_directory": (["--save", "does not exist"], False),
    "save_read_only_file": (["--save", "read-only"], False),
    "save_unwritable_directory": (["--save", "locked", "not writable"], False),
    "plot_directory": (["--plot", "is a directory"], False),
    "plot_without_matplotlib": (["--plot needs matplotlib", "pip install matplotlib"], False),
    "output_missing_directory": (["--output", "does not exist"], False),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_command_line_errors_are_one_line_and_status_2(cli_outcomes, case):
    outcomes, crashed_in, result = cli_outcomes
    assert case in outcomes, f"the child died in case {crashed_in}: {result.stderr[-2000:]}"
    outcome = outcomes[case]
    assert outcome["raised"] is None, outcome.get("traceback")
    run = outcome["result"]
    fragments, may_train = CLI_ERRORS[case]
    lines = run["stderr"].strip().splitlines()
    assert run["status"] == 2 and len(lines) == 1, run
    assert lines[0].startswith("loopnet") and "Traceback" not in run["stderr"], run
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert run["trained"] == may_train, run      # found before training (or diverged in it)
    assert "nan" not in run["stdout"].lower()


def test_three_hundred_classes_train(cli_outcomes):
    outcomes, crashed_in, result = cli_outcomes
    assert "classes_300" in outcomes, (crashed_in, result.stderr[-2000:])
    run = outcomes["classes_300"]["result"]
    assert run["status"] == 0 and run["trained"], run
    assert "on 300 samples" in run["stdout"]    # one held-out sample per class, all 300


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`loopnet predict ... | head -1` and `loopnet train | head -1`: the reader goes away
    after one line; loopnet stops without a traceback, with SIGPIPE's status 141."""
    model = tmp_path / "model.npz"
    subprocess.run([sys.executable, "-m", "loopnet", "train", "--samples", "10", "--epochs", "2",
                    "--quiet", "--save", str(model)], check=True, capture_output=True)
    rows = tmp_path / "rows.csv"
    rows.write_text("".join(f"{k / 5000},{-k / 5000}\n" for k in range(5000)))  # > a pipe's 64 KB
    commands = {
        "predict": ["predict", "--model", model, "--data", rows],
        "train": ["train", "--samples", "10", "--epochs", "3000", "--print-every", "1"],
    }
    for what, args in commands.items():
        child = subprocess.Popen([sys.executable, "-m", "loopnet", *map(str, args)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = child.stdout.readline()
        child.stdout.close()            # `head -1` exits
        stderr = child.stderr.read()
        status = child.wait(timeout=120)
        assert first.strip(), what
        assert stderr == "" and status == 141, (what, status, stderr)
