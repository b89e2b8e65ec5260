"""Training results do not move: seven runs (the main job, its shuffled minibatch form, SGD with
momentum and decay, L2, dropout, a binary and a regression model) give, epoch by epoch, the very
histories and final parameters pinned in ``tests/data/histories.json`` (see
``tests/history_cases.py``), on the cpu, numpy and python devices (numpy's under one OpenBLAS
kernel on one thread, in a process of its own); on cpu also with the compiled training step
switched off."""

from __future__ import annotations

import json
import os

import pytest

import history_cases

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "histories.json")
with open(FIXTURE) as handle:
    PINNED = json.load(handle)

PARAMS = [(device, case) for device in history_cases.SIZES for case in history_cases.CASES]
PARAMS += [("cpu", case + "_layered") for case in history_cases.LAYERED]


@pytest.fixture(scope="module")
def numpy_runs():
    """The numpy device's cases, all in one process under one OpenBLAS kernel on one thread
    (``history_cases.BLAS_ENV``): each test below then checks its own case."""
    return history_cases.run_apart("numpy")


@pytest.mark.parametrize("device, case", PARAMS)
def test_history_is_bit_identical(device, case, request):
    layered = case.endswith("_layered")
    if device == "numpy":
        got = request.getfixturevalue("numpy_runs")[case]
    else:
        got = history_cases.run_case(case.removesuffix("_layered"), device, layered=layered)
    assert got["history"] == PINNED[device][case]["history"]
    assert got["parameters_sha256"] == PINNED[device][case]["parameters_sha256"]
