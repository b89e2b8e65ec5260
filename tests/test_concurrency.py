"""loopnet under Python threads and ``fork()``, on each of numba's threading layers.

A threading layer is chosen once per process, so each layer runs ``tests/concurrency_cases.py``
in a process of its own (``NUMBA_THREADING_LAYER``), which does every case and prints one JSON
line per case: ops, ``Model.predict`` and ``Model.train`` from several threads at once, and a
``multiprocessing`` Pool forked after the parent ran parallel kernels, each compared bit for bit
with the same work done one call after another. A crash, an abort or a hang (the subprocess has
a timeout) fails the layer's test. Layers that cannot be loaded on this machine (no ``tbb``
package, no OpenMP runtime) are reported as skipped; workqueue, numba's own, always runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = ("tbb", "omp", "workqueue")
CASES = ("threads: ops.dense_forward 512x512x512", "threads: Model.predict, 4 models",
         "threads: Model.predict, one shared model",
         "threads: Model.predict in batches (compiled), one shared model",
         "threads: Model.train, 3 SGD models", "threads: a learner's loop, 4 models",
         "fork: ops, predict and train in a Pool")
# Generous: the cases take ~1 s with a warm numba cache; a cold cache compiles the kernels
# first (tens of seconds on 2 cores). A hang must fail, not block the suite.
TIMEOUT = 240


def _run(layer: str) -> tuple[subprocess.CompletedProcess, dict]:
    # The thresholds at the sizes they were tuned for under spinning OpenMP: loopnet raises
    # them for the other layers, which would run these small models' kernels serially, and
    # it is the parallel builds (they release the GIL) that let threads interleave.
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, OMP_DISPLAY_ENV="true",
               LOOPNET_PARALLEL_MIN="50000", LOOPNET_PARALLEL_MIN_ELEMENTS="50000")
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_NUM_THREADS"):
        env.pop(name, None)
    try:
        result = subprocess.run([sys.executable, os.path.join(HERE, "concurrency_cases.py")],
                                env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{layer}: the cases did not finish within {TIMEOUT} s (a hang); "
                    f"output so far: {err.stdout!r}")
    cases = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            cases[record.pop("case")] = record
    return result, cases


@pytest.fixture(scope="module")
def layer_runs():
    """Each layer's subprocess, one after another (the first fills numba's cache)."""
    return {layer: _run(layer) for layer in LAYERS}


@pytest.mark.parametrize("layer", LAYERS)
def test_threads_and_fork_give_the_sequential_results(layer_runs, layer):
    result, cases = layer_runs[layer]
    if "unavailable" in cases:
        assert layer != "workqueue", cases["unavailable"]   # numba's own layer always loads
        pytest.skip(f"the {layer} threading layer cannot be loaded here: "
                    f"{cases['unavailable']['error']}")
    assert result.returncode == 0 and "done" in cases, (
        f"{layer}: exit status {result.returncode}, cases {list(cases)}\n{result.stderr[-3000:]}")
    assert cases["info"]["layer"] == layer          # the user's NUMBA_THREADING_LAYER wins
    for case in CASES:
        assert cases[case]["mismatches"] == 0, f"{layer}, {case}: {cases[case]}"
    fork = cases["fork: ops, predict and train in a Pool"]
    # A forked child keeps the parallel builds where the layer survives fork() (tbb,
    # workqueue); under GNU OpenMP it runs the serial builds (numba would stop it otherwise).
    assert fork["parallel_in_child"] == [cases["info"]["fork_safe"]] * 2
    if layer == "omp" and "OMP_WAIT_POLICY" in result.stderr:   # libgomp's OMP_DISPLAY_ENV
        # loopnet asked OpenMP's threads to sleep between kernels before the runtime started
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr
    # ... and took the variable out of the environment again (other libraries, children)
    assert cases["info"]["OMP_WAIT_POLICY"] is None


def test_info_reports_the_running_layer():
    import numba

    import loopnet

    info = loopnet.threads.info()
    assert info["layer"] == numba.threading_layer()
    assert info["threads"] == numba.get_num_threads() >= 1
    assert info["parallel"] is loopnet.threads.parallel_allowed() is True
    assert info["thread_safe"] == (info["layer"] in ("tbb", "omp"))
    if _installed("tbb") and os.environ.get("NUMBA_THREADING_LAYER", "default") == "default":
        # the tbb package is installed: loopnet finds its library, so numba's default picks it
        assert info["layer"] == "tbb" and info["fork_safe"]


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_an_unknown_threading_layer_is_a_one_line_error():
    env = dict(os.environ, NUMBA_THREADING_LAYER="openmp")
    result = subprocess.run([sys.executable, "-m", "loopnet", "forward"], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "loopnet: error: NUMBA_THREADING_LAYER='openmp' is not a numba threading layer; use one "
        "of default, tbb, omp, workqueue, safe, threadsafe, forksafe")
