"""Saving and loading: bit-exact round trips (parameters, optimizer state, dropout generator),
resumed training identical to uninterrupted training, atomic writes, no pickle, and clear
``ModelFileError``s for truncated, corrupted, foreign and mismatched files."""

from __future__ import annotations

import errno
import json
import os
import re
import zipfile

import numpy as np
import pytest

import loopnet
from helpers import bits, spiral_classifier
from loopnet import ops
from loopnet.datasets import spiral_data
from loopnet.saving import ModelFileError


def build(device=None, hidden=8):
    return spiral_classifier(device, hidden=hidden, weight_l2=5e-4, bias_l1=1e-4, dropout=0.1,
                             decay=5e-4, seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def data():
    return spiral_data(10, 3, seed=0)


def test_round_trip_is_bit_exact_and_training_resumes_identically(device, data, tmp_path):
    X, y = data
    model = build(device)
    model.train(X, y, epochs=4, print_every=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = loopnet.Model.load(path, device=device)
    assert all(layer.device == device for layer in loaded.layers)
    for a, b in zip(model.trainable_layers, loaded.trainable_layers):
        for name in ("weights", "biases", "weight_momentums", "weight_cache", "bias_momentums",
                     "bias_cache"):
            assert bits(ops.to_numpy(getattr(a, name))) == bits(ops.to_numpy(getattr(b, name)))
        assert a.get_config() == b.get_config()
    assert loaded.optimizer.get_state() == model.optimizer.get_state()
    assert repr(loaded) == repr(model)
    assert loaded.softmax_classifier_output is not None
    assert bits(loaded.predict(X)) == bits(model.predict(X))
    resumed = loaded.train(X, y, epochs=3, print_every=0)
    continued = model.train(X, y, epochs=3, print_every=0)
    assert bits(np.array(resumed["loss"])) == bits(np.array(continued["loss"]))


def test_parameters_round_trip_and_mismatch(data, tmp_path):
    X, y = data
    model = build("numpy")
    model.train(X, y, epochs=2, print_every=0)
    path = tmp_path / "params.npz"
    model.save_parameters(path)
    other = build("numpy")
    other.load_parameters(path)
    for a, b in zip(model.get_parameters(), other.get_parameters()):
        assert bits(a[0]) == bits(b[0]) and bits(a[1]) == bits(b[1])
    wider = build("numpy", hidden=9)
    before = [bits(w) for w, _ in wider.get_parameters()]
    with pytest.raises(ModelFileError, match=r"do not match this model.*\(2, 8\).*\(2, 9\)"):
        wider.load_parameters(path)
    assert [bits(w) for w, _ in wider.get_parameters()] == before      # left unchanged
    with pytest.raises(ModelFileError, match="expected 'loopnet-model'.*load_parameters"):
        loopnet.Model.load(path)


@pytest.fixture
def saved(data, tmp_path):
    model = build("numpy")
    model.train(*data, epochs=2, print_every=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return path


def test_truncated_file(saved):
    raw = saved.read_bytes()
    for size in (0, 10, len(raw) // 2, len(raw) - 5):
        saved.write_bytes(raw[:size])
        with pytest.raises(ModelFileError, match="truncated or corrupted"):
            loopnet.Model.load(saved)


def test_corrupted_bytes(saved):
    raw = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:
        info = archive.getinfo("layers.0.weights.npy")
    # a byte in the middle of the weights' data (after the local header and the .npy header)
    position = info.header_offset + 30 + len(info.filename) + info.compress_size - 8
    raw[position] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="corrupted|CRC"):
        loopnet.Model.load(saved)


def test_not_a_loopnet_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a readable loopnet file"):
        loopnet.Model.load(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a file written by loopnet"):
        loopnet.Model.load(plain)
    with pytest.raises(FileNotFoundError):
        loopnet.Model.load(tmp_path / "missing.npz")


def rewrite_header(path, change):
    """Rewrite the JSON header (and keep everything else) to fake a foreign or broken file."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    header = json.loads(arrays["__loopnet__"].tobytes())
    change(header, arrays)
    arrays["__loopnet__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


def test_future_version_unknown_type_and_mismatched_arrays(saved):
    rewrite_header(saved, lambda h, a: h.update(format_version=99))
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        loopnet.Model.load(saved)
    rewrite_header(saved, lambda h, a: h.update(format_version=1))
    rewrite_header(saved, lambda h, a: h["layers"][1].update(type="os.system"))
    with pytest.raises(ModelFileError, match="unknown layer type 'os.system'"):
        loopnet.Model.load(saved)
    rewrite_header(saved, lambda h, a: h["layers"][1].update(type="ReLU"))

    def swap_weights(header, arrays):
        arrays["layers.0.weights"] = arrays["layers.0.weights"][:, :4].copy()
        header["arrays"]["layers.0.weights"]["shape"] = [2, 4]
    rewrite_header(saved, swap_weights)
    with pytest.raises(ModelFileError, match="SHA-256|shape"):
        loopnet.Model.load(saved)


def test_write_is_atomic(data, tmp_path, monkeypatch):
    """A failure while writing leaves the previous file intact and no temporary file behind."""
    model = build("numpy")
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]
    # a full disk (or quota): the OS's message names no file; loopnet's names the path and
    # says what became of the file there
    def full_disk(file, **arrays):
        file.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez", full_disk)
    for target, left in ((path, "the file there is unchanged"),
                         (tmp_path / "new.npz", "nothing was written")):
        with pytest.raises(OSError, match=rf"^\[Errno {errno.ENOSPC}\] cannot save to "
                                          rf"'{re.escape(str(target))}': .*; {left}$") as caught:
            model.save(target)
        assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def test_files_load_without_pickle(saved):
    with np.load(saved, allow_pickle=False) as npz:
        assert all(npz[key].dtype != object for key in npz.files)
