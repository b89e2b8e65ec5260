"""The ``cpu`` device: the loop kernels compiled by numba.

Each ``<op>_loops`` function is wrapped in ``numba.njit(cache=True)``, with ``parallel=True``
when it uses ``prange`` (a kernel without one would only pay the parallel set-up and make numba
warn). numba compiles on the first call for each dtype, and ``cache=True`` stores the machine
code in ``__pycache__`` beside the kernel file, so the next process loads it instead of compiling.
"""

import numba
import numpy as np

from loopnet.backends import collect


def compile_loops(function):
    """``njit`` a loop kernel the way the cpu device runs it."""
    parallel = "prange" in function.__code__.co_names
    return numba.njit(parallel=parallel, cache=True)(function)


globals().update({name: compile_loops(f) for name, f in collect("loops").items()})

empty = np.empty
to_numpy = np.asarray
