"""The ``numpy`` device: the vectorized twins (``np.dot``, ``np.maximum``, ``np.exp`` ...)."""

import numpy as np

from loopnet.backends import collect

globals().update(collect("numpy"))

empty = np.empty
to_numpy = np.asarray
HOST = True     # (ops: arrays live in this process's memory)
