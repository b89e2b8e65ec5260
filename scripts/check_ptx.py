"""Compile every CUDA kernel to PTX without a GPU: proof that the loop bodies the kernels share
with the cpu device also compile for the GPU (the CUDA simulator runs them as Python, so it
cannot tell).

Needs numba-cuda with the CUDA toolkit's NVVM library, e.g. in a side virtualenv:

    python -m venv /tmp/ptx && /tmp/ptx/bin/pip install -e . "numba-cuda[cu12]"
    /tmp/ptx/bin/python scripts/check_ptx.py            # float32 and float64, compute 9.0

Prints one line per kernel and dtype, and for float32 how many float64 arithmetic instructions
there are (a bare ``0.0`` accumulator would show up here: slow on most GPUs; the hyper-parameter
scalars arrive as float64 and ``mean``/``regularization_loss`` sum in float64 on purpose).
Exit status 1 if any kernel failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    args = parser.parse_args()
    cc = tuple(int(part) for part in args.cc.split("."))

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("unset NUMBA_ENABLE_CUDASIM: the simulator compiles nothing")
        return 2
    import numba
    from numba import cuda
    import numba.cuda.dispatcher as cuda_dispatcher

    # A kernel calling a loop body compiles the body for "the current device", which needs a
    # driver; without a GPU, say which compute capability to compile for.
    class _Device:
        compute_capability = cc

    cuda_dispatcher.get_current_device = lambda: _Device()

    from loopnet.kernels import MODULES, scalars
    import importlib

    for name in MODULES:
        importlib.import_module(f"loopnet.kernels.{name}").cuda = cuda
    scalars.register_cuda()

    from loopnet.backends import collect
    from loopnet.kernels.examples import kernel_arguments

    failures = 0
    for op, function in sorted(collect("kernel").items()):
        for dtype in (np.float32, np.float64):
            host = kernel_arguments(op.removesuffix("_tiled"), function, dtype,
                                    np.random.default_rng(0), n_samples=5, n_inputs=4,
                                    n_neurons=3, n_classes=3, n_elements=7)
            signature = tuple(numba.typeof(a) for a in host)
            try:
                ptx, _ = cuda.compile_ptx(function, signature, cc=cc)
            except Exception as err:  # noqa: BLE001 - report every kernel
                failures += 1
                print(f"FAIL {op:40s} {np.dtype(dtype).name}: {type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]}")
                continue
            note = ""
            if dtype is np.float32:
                f64 = [line.strip() for line in ptx.splitlines()
                       if re.match(r"\s*(add|sub|mul|div|fma|sqrt|rcp|ex2|lg2)\S*\.f64\b", line)]
                note = f"  float64 arithmetic: {len(f64)}" + (f" ({f64[0]})" if f64 else "")
            print(f"ok   {op:40s} {np.dtype(dtype).name}{note}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
