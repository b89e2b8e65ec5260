"""loopnet.explain: an op's loops beside its numpy twin, run on the same input."""

import io
import subprocess
import sys

import numpy as np
import pytest

import loopnet
from loopnet import explain as explain_module

ALL_OPS = explain_module.list_ops()


def test_list_finds_the_kernels_by_naming_convention():
    from loopnet import kernels

    assert {"dense_forward", "relu_forward", "softmax_forward", "categorical_crossentropy",
            "accuracy"} <= set(ALL_OPS)
    # Every op listed really has a loop form or a twin in one of the kernel files.
    for op in ALL_OPS:
        found = [m for m in kernels.MODULES
                 if hasattr(__import__(f"loopnet.kernels.{m}", fromlist=["_"]), f"{op}_loops")
                 or hasattr(__import__(f"loopnet.kernels.{m}", fromlist=["_"]), f"{op}_numpy")]
        assert found, op


@pytest.mark.parametrize("name, op", [
    ("dense", "dense_forward"),
    ("Dense", "dense_forward"),
    ("relu", "relu_forward"),
    ("softmax", "softmax_forward"),
    ("crossentropy", "categorical_crossentropy"),
    ("cross-entropy", "categorical_crossentropy"),
    ("categorical_crossentropy", "categorical_crossentropy"),
])
def test_friendly_names(name, op):
    assert explain_module.resolve(name) == [op]


def test_backward_names_resolve_when_the_kernels_exist():
    if "relu_backward" not in ALL_OPS:
        pytest.skip("no relu_backward kernel yet")
    assert explain_module.resolve("relu_backward") == ["relu_backward"]
    family = [op for op in ALL_OPS if op.startswith("dense_backward")]
    if len(family) > 1:   # one kernel per gradient: the family name gives them all
        assert explain_module.resolve("dense_backward") == family


def test_unknown_op_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown op 'convolution'.*dense_forward"):
        explain_module.resolve("convolution")


def test_a_bad_seed_is_named():
    for seed, error in ((-1, ValueError), ("a", TypeError), (2.5, TypeError)):
        with pytest.raises(error, match=r"^seed must be "):
            explain_module.explain("relu", seed=seed, quiet=True)


def test_explain_dense_prints_both_sources_and_the_difference():
    out = io.StringIO()
    result = loopnet.explain("dense", file=out, width=200)
    text = out.getvalue()
    assert "def dense_forward_loops" in text and "def dense_forward_numpy" in text
    assert "np.dot(inputs, weights)" in text
    assert "largest difference" in text
    # Side by side: some line holds the loops on the left and the twin on the right.
    assert any("def dense_forward_loops" in line and "def dense_forward_numpy" in line
               for line in text.splitlines())
    assert result.op == "dense_forward"
    assert result.shapes["weights"] == (explain_module.N_INPUTS, explain_module.N_NEURONS)
    # float32 sums of N_INPUTS standard-normal products differ from np.dot's only in rounding:
    # a few units of float32 epsilon (1.2e-7) times the size of the terms (|x w| < ~20).
    assert result.max_difference is not None
    assert result.max_difference < N_ULPS * np.finfo(np.float32).eps * 20
    # and the notes' zip-loop neuron gives the loops' bits exactly (same sums, same order)
    assert result.notes_difference == 0.0


N_ULPS = 4 * explain_module.N_INPUTS


def test_narrow_width_stacks_the_sources():
    out = io.StringIO()
    loopnet.explain("relu", file=out, width=70)
    lines = out.getvalue().splitlines()
    loops_line = next(k for k, line in enumerate(lines) if "def relu_forward_loops" in line)
    numpy_line = next(k for k, line in enumerate(lines) if "def relu_forward_numpy" in line)
    assert numpy_line > loops_line
    assert "|" not in lines[loops_line]


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_runs_on_python_device(op):
    """Each op gets an example input, and loops and twin agree on it.

    Uncompiled loops (the python device) are the same code the cpu device compiles. In float64
    the two forms differ only by the rounding of a different summation order: the tolerance is
    a generous 1e-9 (values here are at most ~20 in size; float64 epsilon is 2.2e-16).
    """
    result = explain_module.explain(op, device="python", dtype=np.float64, quiet=True)
    assert result.max_difference is not None, result.message
    assert result.max_difference < 1e-9, result.differences


def test_op_without_buildable_input_is_reported_not_raised(monkeypatch):
    def mystery_loops(foo, bar):
        bar[0, 99] = foo[0, 0]        # an index no example shape has

    def mystery_numpy(foo, bar):
        bar[0, 99] = foo[0, 0]

    from loopnet.kernels import dense

    forms = explain_module._forms()
    forms["mystery"] = {"module": dense, "loops": mystery_loops, "numpy": mystery_numpy}
    monkeypatch.setattr(explain_module, "_forms", lambda: forms)
    out = io.StringIO()
    result = explain_module.explain("mystery", file=out)
    assert result.max_difference is None
    assert "cannot build an example input for mystery" in out.getvalue()
    assert "def mystery_loops" in out.getvalue()


def test_module_is_callable_and_import_stays_light():
    code = ("import sys, loopnet; "
            "assert 'numba' not in sys.modules; "
            "r = loopnet.explain('relu', device='python', quiet=True); "
            "assert r.op == 'relu_forward', r")
    subprocess.run([sys.executable, "-c", code], check=True)
