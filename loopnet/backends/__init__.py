"""Backends: one module per device, each exporting every op under its plain name.

``cpu``, ``python`` and ``numpy`` are not written out op by op: they are built from the kernel
files by naming convention (``dense_forward_loops`` becomes ``cpu.dense_forward`` compiled and
``python.dense_forward`` as-is; ``dense_forward_numpy`` becomes ``numpy.dense_forward``), so a new
kernel is picked up by every host backend the moment it is written.

Every backend also exports ``empty(shape, dtype)`` (where outputs are allocated) and
``to_numpy(array)``, so ``loopnet.ops`` never needs to know which device it is talking to.
"""

import importlib

from loopnet import kernels


def collect(suffix):
    """``{op_name: function}`` for every ``<op_name>_<suffix>`` function in the kernel files."""
    found = {}
    for module_name in kernels.MODULES:
        module = importlib.import_module(f"loopnet.kernels.{module_name}")
        for name, obj in vars(module).items():
            if (name.endswith("_" + suffix) and callable(obj)
                    and getattr(obj, "__module__", None) == module.__name__):
                found[name[: -len(suffix) - 1]] = obj
    return found
