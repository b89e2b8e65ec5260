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
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DEVICE_TESTS = ["cuda", "test_notes_numbers.py", "test_properties.py"]


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "LOOPNET_DEVICE")}
    env.update(changes)
    return env


def test_cuda_device_under_the_simulator():
    paths = [str(TESTS / name) for name in DEVICE_TESTS if (TESTS / name).exists()]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
        env=_env(NUMBA_ENABLE_CUDASIM="1", LOOPNET_TEST_DEVICES="cuda"),
        cwd=TESTS.parent, capture_output=True, text=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the simulator run failed:\n{output}"
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
