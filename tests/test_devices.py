"""The device flag: precedence, parsing, the context manager, layers' ``device=``; the host
devices agree with each other; the cpu device is deterministic whatever the thread count; and
``import loopnet`` stays free of numba.

The ``device`` fixture is not used here: these tests are about the host devices themselves.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import loopnet
from helpers import (
    HOST_DEVICES,
    assert_within,
    bits,
    dense_tolerance,
    log_rtol,
    softmax_rtol,
    sum_tolerance,
)
from loopnet import devices, ops


@pytest.fixture
def clean_flag(monkeypatch):
    """No set_device default, no LOOPNET_DEVICE: each test sets what it needs; restored after."""
    monkeypatch.setattr(devices, "_default", None)
    monkeypatch.delenv(devices.ENV_VAR, raising=False)
    assert devices._context.get() is None


@pytest.fixture
def ran_on(monkeypatch):
    """Record which backend each ``relu_forward`` call reached: a spy on every host backend."""
    import importlib

    calls = []
    for name in HOST_DEVICES:
        module = importlib.import_module(f"loopnet.backends.{name}")
        original = module.relu_forward

        def spy(*args, _name=name, _original=original):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, "relu_forward", spy)

    def last_call(run):
        run()
        return calls[-1]

    return last_call


@pytest.fixture(params=["list", "array"])
def relu(request):
    """``ops.relu_forward`` of a list (the ops' full path, ``devices.backend``) or of a
    C-contiguous float32 array (their fast path, ``devices.host_backend``): both resolve the
    device the same way."""
    if request.param == "list":
        return lambda device=None: ops.relu_forward([1.0, -1.0], device=device)
    values = np.array([1.0, -1.0], np.float32)
    return lambda device=None: ops.relu_forward(values, device=device)


# --- Precedence: argument > context > set_device > env > cpu ------------------------------------

def test_default_is_cpu(clean_flag, ran_on, relu):
    assert loopnet.get_device() == "cpu"
    assert ran_on(relu) == "cpu"


def test_precedence(clean_flag, ran_on, relu, monkeypatch):
    monkeypatch.setenv("LOOPNET_DEVICE", "python")
    assert loopnet.get_device() == "python"
    assert ran_on(relu) == "python"                                          # env > cpu

    loopnet.set_device("numpy")
    assert ran_on(relu) == "numpy"                                           # set_device > env

    with loopnet.device("python"):
        assert loopnet.get_device() == "python"
        assert ran_on(relu) == "python"                                      # context > set_device
        assert ran_on(lambda: relu("cpu")) == "cpu"                             # argument > all
        for name, module in (("numpy", "numpy"), (" CPU ", "cpu"), ("cpu", "cpu")):
            # (the host modules are looked up by their names once imported: a name as given
            # still wins, and any spelling of one still reaches it)
            assert ran_on(lambda: relu(name)) == module
        with pytest.raises(TypeError, match="device must be a string"):
            relu(["cpu"])
        with loopnet.device("cpu"):                                          # the innermost wins
            assert ran_on(relu) == "cpu"
        assert ran_on(relu) == "python"
    assert ran_on(relu) == "numpy"

    loopnet.set_device("cpu")
    assert ran_on(relu) == "cpu"


def test_env_var_is_read_at_call_time(clean_flag, ran_on, relu, monkeypatch):
    monkeypatch.setenv("LOOPNET_DEVICE", " NumPy ")                          # normalized
    assert ran_on(relu) == "numpy"
    monkeypatch.setenv("LOOPNET_DEVICE", "")                                 # empty = unset
    assert ran_on(relu) == "cpu"


def test_context_manager_restores_on_exceptions(clean_flag, ran_on, relu):
    loopnet.set_device("numpy")
    with pytest.raises(ZeroDivisionError):
        with loopnet.device("python"):
            assert loopnet.get_device() == "python"
            1 / 0
    assert loopnet.get_device() == "numpy"
    with pytest.raises(ValueError):                # a bad op inside the block: also restored
        with loopnet.device("python"):
            ops.relu_forward([])
    assert ran_on(relu) == "numpy"


def test_failed_set_device_changes_nothing(clean_flag):
    loopnet.set_device("python")
    with pytest.raises(ValueError):
        loopnet.set_device("gpu")
    assert loopnet.get_device() == "python"


@pytest.mark.parametrize("name, canonical", [
    ("cpu", "cpu"), ("CPU", "cpu"), (" numpy ", "numpy"), ("Python", "python"),
    ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("CUDA:1", "cuda:1"), ("cuda:01", "cuda:1"),
    (" cuda:12 ", "cuda:12"),
])
def test_device_names_are_normalized(name, canonical):
    assert devices.normalize(name) == canonical
    assert loopnet.get_device(name) == canonical        # an explicit argument is only parsed
    assert devices.base_name(canonical) == canonical.partition(":")[0]


@pytest.mark.parametrize("name", ["cuda:", "cuda:-1", "cuda:1.5", "cuda:a", "cpu:0", "cuda0",
                                  "cuda::0", "gpu:0"])
def test_bad_cuda_style_names(name):
    with pytest.raises(ValueError, match=r"'cuda:N' for GPU N"):
        devices.normalize(name)


def test_layers_device_argument(clean_flag, ran_on):
    """A layer's ``device=`` beats the context and the default; without it the layer follows
    whatever is current when ``forward`` runs."""
    pinned = loopnet.ReLU(device="python")
    floating = loopnet.ReLU()
    loopnet.set_device("numpy")
    with loopnet.device("cpu"):
        assert ran_on(lambda: pinned.forward([1.0])) == "python"
        assert ran_on(lambda: floating.forward([1.0])) == "cpu"
    assert ran_on(lambda: floating.forward([1.0])) == "numpy"
    assert loopnet.Dense(2, 3, device="NUMPY").device == "numpy"
    assert loopnet.Softmax(device="cpu").device == "cpu"
    assert loopnet.CategoricalCrossentropy(device="python").device == "python"


@pytest.mark.parametrize("layer_device", HOST_DEVICES)
def test_layer_device_reaches_every_op(clean_flag, layer_device, monkeypatch):
    """Dense, ReLU, Softmax and the loss each run their op on their own device."""
    import importlib

    module = importlib.import_module(f"loopnet.backends.{layer_device}")
    seen = []

    def spy(op, original):
        def run(*args):
            result = original(*args)
            if result is not None or not op.endswith("_lane"):   # (a lane that ran)
                seen.append(op.replace("_lane", ""))
            return result
        return run

    for op in ("dense_forward", "relu_forward", "softmax_forward", "categorical_crossentropy",
               "mean", "dense_forward_lane"):
        original = getattr(module, op, None)
        if original is not None:    # (cpu's lane: a small layer's forward in one call)
            monkeypatch.setattr(module, op, spy(op, original))
    loopnet.set_device("python" if layer_device != "python" else "numpy")   # not the layer's
    x = np.ones((2, 3), np.float32)
    h = loopnet.ReLU(device=layer_device).forward(
        loopnet.Dense(3, 4, seed=0, device=layer_device).forward(x))
    p = loopnet.Softmax(device=layer_device).forward(h)
    loopnet.CategoricalCrossentropy(device=layer_device).calculate(p, [0, 1])
    assert seen == ["dense_forward", "relu_forward", "softmax_forward",
                    "categorical_crossentropy", "mean"]


# --- All host devices agree -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_devices_agree(dtype):
    """The same inputs on cpu, numpy and python give the same results within float tolerance."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 7)).astype(dtype) * 10
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    probs = rng.uniform(size=(9, 5)).astype(dtype)
    probs[0, 0], probs[1, 1] = 0.0, 1.0                           # both clip edges
    labels = rng.integers(0, 5, size=9)

    def run(device):
        return {
            "dense": ops.dense_forward(x, w, b, device=device),
            "relu": ops.relu_forward(x, device=device),
            "softmax": ops.softmax_forward(x, device=device),
            "ce": ops.categorical_crossentropy(probs, labels, device=device),
            "ce_one_hot": ops.categorical_crossentropy(probs, np.eye(5)[labels], device=device),
            "accuracy": ops.accuracy(probs, labels, device=device),
            "mean": ops.mean(x[:, 0], device=device),
        }

    results = {device: run(device) for device in HOST_DEVICES}
    twin = results["numpy"]
    tolerances = {
        "dense": dense_tolerance(x, w, b, dtype),
        "relu": 0.0,
        "softmax": softmax_rtol(5, dtype) * np.abs(twin["softmax"]),
        "ce": log_rtol(dtype) * np.abs(twin["ce"]),
        "ce_one_hot": log_rtol(dtype) * np.abs(twin["ce_one_hot"]),
        "accuracy": 0.0,
        "mean": sum_tolerance(9, np.abs(x[:, 0]).astype(np.float64).sum(), np.float64) / 9,
    }
    for device in ("cpu", "python"):
        for op, value in results[device].items():
            assert_within(value, twin[op], tolerances[op], f"{device} {op}")
            assert np.asarray(value).dtype == np.asarray(twin[op]).dtype, (device, op)
    # cpu and python run the same loops, so wherever no exp/log is involved the bits agree
    # (exp and log come from LLVM/libm compiled, from numpy's ufuncs uncompiled: a few ulp).
    for op in ("dense", "relu", "accuracy", "mean"):
        assert bits(results["cpu"][op]) == bits(results["python"][op]), op


# --- Determinism: the same bits whatever numba's thread count -------------------------------------

@pytest.mark.parametrize("parallel_min_elements", [0, None], ids=["parallel-builds", "by-size"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_results_do_not_depend_on_the_thread_count(dtype, parallel_min_elements, monkeypatch):
    """Each output element is owned by one prange iteration and summed in a fixed order, so
    ``numba.set_num_threads(1)`` and ``(2)`` (or more) give identical bits for every op.

    The cpu backend runs small arrays through a serial build of each kernel (see
    ``PARALLEL_MIN_ELEMENTS``); with the threshold at 0 every op takes its parallel build, so
    both builds are checked, and they must agree with each other too."""
    import numba

    from loopnet.backends import cpu

    if parallel_min_elements is not None:
        monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", parallel_min_elements)

    counts = sorted({1, 2, numba.config.NUMBA_NUM_THREADS} & set(
        range(1, numba.config.NUMBA_NUM_THREADS + 1)))
    if len(counts) < 2:
        pytest.skip("numba runs with a single thread here: nothing to compare")
    rng = np.random.default_rng(2)
    # sizes that do not split evenly between threads, with long sums (order would show)
    x = rng.standard_normal((67, 301)).astype(dtype)
    w = rng.standard_normal((301, 33)).astype(dtype)
    b = rng.standard_normal(33).astype(dtype)
    scores = (rng.standard_normal((67, 33)) * 5).astype(dtype)
    probs = rng.uniform(size=(67, 33)).astype(dtype)
    labels = rng.integers(0, 33, size=67)
    values = rng.standard_normal(1001).astype(dtype)

    def run():
        return [bits(r) for r in (
            ops.dense_forward(x, w, b, device="cpu"),
            ops.relu_forward(x, device="cpu"),
            ops.softmax_forward(scores, device="cpu"),
            ops.categorical_crossentropy(probs, labels, device="cpu"),
            ops.categorical_crossentropy(probs, np.eye(33)[labels], device="cpu"),
            np.float64(ops.accuracy(probs, labels, device="cpu")),
            np.float64(ops.mean(values, device="cpu")),
        )]

    before = numba.get_num_threads()
    try:
        results = []
        for count in counts:
            numba.set_num_threads(count)
            results.append(run())
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        assert other == results[0]
    if parallel_min_elements is not None:  # the serial builds give the same bits
        monkeypatch.setattr(cpu, "PARALLEL_MIN_ELEMENTS", 2**62)
        assert run() == results[0]


# --- import loopnet stays light -------------------------------------------------------------------

def test_import_loopnet_does_not_import_numba():
    code = ("import sys, loopnet; "
            "heavy = [m for m in ('numba', 'matplotlib', 'torch', 'tqdm', 'PIL') "
            "         if m in sys.modules]; "
            "assert not heavy, f'imported by import loopnet: {heavy}'; "
            "loopnet.set_device('numpy'); loopnet.Dense(2, 3); loopnet.ReLU(); "
            "assert 'numba' not in sys.modules, 'numba imported by the classes'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
