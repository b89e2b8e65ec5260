"""The CUDA tests run only under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before
numba is imported), or on a real GPU with ``LOOPNET_CUDA_TESTS=1``. The normal test run skips
collecting them; ``tests/test_cuda_simulator.py`` runs them in a subprocess with the simulator on.

``NumbaPerformanceWarning`` (numba copying host arrays on every launch) is an error here: every
op must find its data on the device or copy it there once, explicitly.
"""

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and os.environ.get("LOOPNET_CUDA_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True)
def _performance_warnings_are_errors():
    import warnings

    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaPerformanceWarning)
        yield
