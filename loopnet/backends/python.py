"""The ``python`` device: the loop kernels run as ordinary, uncompiled Python.

Slow (every multiply is an interpreted bytecode), but a debugger can step through every loop.
Use it on tiny inputs to watch what the ``cpu`` device computes.
"""

import numpy as np

from loopnet.backends import collect

globals().update(collect("loops"))

empty = np.empty
to_numpy = np.asarray
