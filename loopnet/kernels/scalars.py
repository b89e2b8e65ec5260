"""``exp``, ``log`` and ``sqrt`` for the loop bodies: one spelling that runs on every device.

A loop body (``softmax_rows``, ``adam_param``, ...) runs three ways: as plain Python (the
``python`` device, and numba's CUDA simulator), compiled by numba for the CPU (the ``cpu``
device and the compiled training step) and compiled by numba-cuda for the GPU (the ``cuda``
device). Neither
spelling of the library functions fits all three:

- ``np.exp`` keeps a float32 argument float32 in plain Python and is what the ``cpu`` device
  compiles, but numba-cuda cannot compile it;
- ``math.exp`` compiles for the GPU (float32 in, float32 out there), but in plain Python it
  returns a float64, so the ``python`` device would round differently from the others.

So each name below is a plain function that runs numpy's (what Python calls), plus a numba
overload per target: numpy's on the CPU (registered here), ``math``'s on the GPU (registered by
``loopnet.backends.cuda`` with ``register_cuda``, because only that module imports
``numba.cuda``). A body just writes ``exp(x)``.
"""

import math

import numpy as np
from numba.extending import overload


def exp(x):
    """``e ** x`` in the argument's precision."""
    return np.exp(x)


def log(x):
    """The natural logarithm in the argument's precision."""
    return np.log(x)


def sqrt(x):
    """The square root in the argument's precision."""
    return np.sqrt(x)


# The CPU forms are inlined into their caller before numba types it (``inline="always"``). The
# cpu device inlines a body into its kernel (``loopnet.kernels.body``); a form compiled as a
# function of its own then kept the kernel's loop from being vectorized (``adam_update`` of
# 5,000 parameters 21 against 2.9 us, ``adagrad``'s and ``rmsprop``'s likewise). numpy's
# function computes each value either way: the same results.
@overload(exp, target="cpu", inline="always")
def _exp_cpu(x):
    return lambda x: np.exp(x)


@overload(log, target="cpu", inline="always")
def _log_cpu(x):
    return lambda x: np.log(x)


@overload(sqrt, target="cpu", inline="always")
def _sqrt_cpu(x):
    return lambda x: np.sqrt(x)


_cuda_registered = False


def register_cuda():
    """Give ``exp``, ``log`` and ``sqrt`` their GPU forms (``math.exp`` ...); called once by the
    cuda backend before it compiles any kernel."""
    global _cuda_registered
    if _cuda_registered:
        return
    overload(exp, target="cuda")(lambda x: lambda x: math.exp(x))
    overload(log, target="cuda")(lambda x: lambda x: math.log(x))
    overload(sqrt, target="cuda")(lambda x: lambda x: math.sqrt(x))
    _cuda_registered = True
