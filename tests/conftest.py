"""Shared pytest set-up: the hypothesis profile and the ``device`` fixture.

Run the whole suite on other devices with ``LOOPNET_TEST_DEVICES`` (comma list), e.g. the CUDA
kernels under numba's simulator::

    NUMBA_ENABLE_CUDASIM=1 LOOPNET_TEST_DEVICES=cuda python -m pytest

Constants, tolerances and strategies live in ``tests/helpers.py`` (import them from there).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from helpers import CUDASIM, TEST_DEVICES

# No deadline: the first call of a kernel compiles it (~1 s, numba), which hypothesis' default
# 200 ms deadline would report as a flaky failure. 40 examples per property keeps the suite
# quick on 2 cores (20 under the CUDA simulator, which runs every GPU thread in Python);
# HYPOTHESIS_PROFILE=thorough runs 10x more.
settings.register_profile(
    "loopnet",
    deadline=None,
    max_examples=20 if CUDASIM else 40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("loopnet"), max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "loopnet"))


@pytest.fixture(scope="session", params=TEST_DEVICES)
def device(request) -> str:
    """Every test taking ``device`` runs once per device in ``LOOPNET_TEST_DEVICES``.

    Session-scoped so that hypothesis tests can use it (hypothesis rejects function-scoped
    fixtures, which would not be reset between its examples).
    """
    return request.param


_simulator_run = None


def pytest_collection_modifyitems(session, config, items):
    """Under pytest-xdist (the suite's default, one worker per core), the CUDA simulator's test
    goes first: the worker that takes it waits on its subprocess, which needs a core of its
    own for over a minute, while the other workers go on with the rest."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.name != "test_cuda_device_under_the_simulator")


def pytest_collection_finish(session):
    """Without pytest-xdist, start the CUDA simulator's subprocess early, beside the rest of
    the suite (see ``test_cuda_simulator.SimulatorRun``), when its test is among those
    selected. (Each xdist worker collects every test, but only one runs it.)"""
    global _simulator_run
    if CUDASIM or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in session.items:
        if item.name == "test_cuda_device_under_the_simulator":
            _simulator_run = item.module.SimulatorRun
            _simulator_run.start()
            return


def pytest_sessionfinish(session):
    if _simulator_run is not None:      # (a run cut short: its subprocess goes too)
        _simulator_run.stop()
