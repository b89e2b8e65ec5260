"""The ``python`` device: the loop kernels run as ordinary, uncompiled Python.

Slow (every multiply is an interpreted bytecode), but a debugger can step through every loop.
Use it on tiny inputs to watch what the ``cpu`` device computes.
"""

import numpy as np

from loopnet.backends import collect

LOOPS = collect("loops")
globals().update(LOOPS)

empty = np.empty
to_numpy = np.asarray
HOST = True     # (ops: arrays live in this process's memory)


def dropout_mask(*args):
    """``dropout_mask_loops``: its hash wraps unsigned 64-bit products around on purpose, which
    numpy's scalars (this device runs the loops on them) would warn about."""
    with np.errstate(over="ignore"):
        LOOPS["dropout_mask"](*args)
