"""The cuda device, checked without a GPU.

1. ``tests/cuda/`` and the device-parametrized notes/property tests run again with
   ``LOOPNET_TEST_DEVICES=cuda`` under numba's CUDA simulator. The simulator must be switched on
   before numba is imported, so they run in a fresh ``pytest`` subprocess.
2. Asking for ``cuda`` where no GPU is usable (and the simulator is off) raises the clear
   ``RuntimeError`` that names both ways out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DEVICE_TESTS = ["cuda", "test_notes_numbers.py", "test_properties.py"]


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LOOPNET_DEVICE")}
    env.update(changes)
    return env


class SimulatorRun:
    """The simulator's ``pytest`` subprocess. It runs Python for every GPU thread on one core
    for over a minute, while the rest of the suite mostly waits on numba's single-threaded
    compiles: so ``conftest.py`` starts it as soon as the suite is collected (when this test
    is selected), the two overlap on the two cores, and the test below collects its result."""

    process = None
    output = None

    @classmethod
    def start(cls) -> None:
        if cls.process is not None:
            return
        paths = [str(TESTS / name) for name in DEVICE_TESTS if (TESTS / name).exists()]
        cls.output = tempfile.TemporaryFile("w+")
        # (-k cuda: the tests of those files that take no device run in the suite itself)
        cls.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
             "-k", "cuda", *paths],
            env=_env(NUMBA_ENABLE_CUDASIM="1", LOOPNET_TEST_DEVICES="cuda"),
            cwd=TESTS.parent, stdout=cls.output, stderr=subprocess.STDOUT, text=True)

    @classmethod
    def result(cls, timeout: float) -> tuple[int, str]:
        cls.start()
        try:
            returncode = cls.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            cls.stop()
            raise
        cls.output.seek(0)
        return returncode, cls.output.read()

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.kill()
            cls.process.wait()


def test_cuda_device_under_the_simulator():
    returncode, output = SimulatorRun.result(timeout=900)
    assert returncode == 0, f"the simulator run failed:\n{output}"
    assert " passed" in output and "no tests ran" not in output, output


NO_GPU_SCRIPT = """
from numba import cuda
if cuda.is_available():
    print("HAS-GPU")
    raise SystemExit(0)
import loopnet
for ask in (lambda: loopnet.set_device("cuda"), lambda: loopnet.Dense(2, 3, device="cuda"),
            lambda: loopnet.ops.relu_forward([1.0], device="cuda")):
    try:
        ask()
    except RuntimeError as err:
        print("ERROR:", err)
    else:
        print("NO ERROR")
"""


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    result = subprocess.run([sys.executable, "-c", NO_GPU_SCRIPT], env=_env(),
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    if "HAS-GPU" in output:
        pytest.skip("a GPU is usable here: there is no error to check")
    assert result.returncode == 0, output
    assert "NO ERROR" not in output, output
    assert output.count("ERROR: the 'cuda' device is not usable here") == 3, output
    for way_out in ('pip install "loopnet[cuda]"', "numba-cuda[cu12]", "numba-cuda[cu13]",
                    "NUMBA_ENABLE_CUDASIM=1"):
        assert way_out in output, (way_out, output)
