#!/usr/bin/env python
"""Check the cuda device on a real GPU: every op against its numpy twin, then timings.

    python scripts/gpu_check.py            # on a GPU machine (finishes well under 3 minutes)
    NUMBA_ENABLE_CUDASIM=1 python scripts/gpu_check.py --quick   # anywhere, in the simulator

1. Every CUDA kernel on random data (shapes that are not multiples of the block sizes), float32
   and float64, against the numpy twin: max |difference| and OK/FAIL.
2. Dense forward, ``n_samples x n_inputs x n_neurons``: the tiled kernel (the default), the
   simple one-thread-per-output kernel, and CuPy / PyTorch matmul where installed.
3. A full forward pass of the notes' spiral network (Dense(2, 64), ReLU, Dense(64, 3), Softmax,
   cross-entropy), data and parameters on the GPU, against the ``cpu`` device.
4. ``Model.train`` of the same network (Adam), per epoch, full batch, on ``cuda`` and ``cpu``,
   for a small and a large spiral set; and that the two devices' losses after those epochs
   agree (the same arithmetic in a different summation order).

Timings are medians of repeated runs after a warm-up (compilation excluded), each run ended by
``cuda.synchronize()`` (kernel launches return before the kernel finishes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from loopnet.kernels.examples import kernel_arguments

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def check_ops(gpu, twins, quick):
    """Every kernel against its twin; returns the number of failures."""
    n_samples, n_inputs, n_neurons, n_classes = (19, 21, 18, 7) if quick else (1000, 301, 77, 10)
    failures = 0
    print(f"{'op':36s} {'dtype':8s} {'max |cuda - numpy|':>20s} {'bound':>10s}")
    for op in sorted(gpu.KERNELS):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            host = kernel_arguments(op, gpu.KERNEL_FUNCTIONS[op], dtype, rng,
                                    n_samples=n_samples, n_inputs=n_inputs, n_neurons=n_neurons,
                                    n_classes=n_classes, n_elements=n_samples * n_classes)
            expected = [a.copy() if isinstance(a, np.ndarray) else a for a in host]
            getattr(twins, "dense_forward" if op == "dense_forward_tiled" else op)(*expected)
            device = [gpu.asarray(a) if isinstance(a, np.ndarray) else a for a in host]
            getattr(gpu, op)(*device)
            worst, ok = 0.0, True
            for position in gpu._written_arguments(gpu.KERNEL_FUNCTIONS[op]):
                got = gpu.to_numpy(device[position]).astype(np.float64)
                want = expected[position].astype(np.float64)
                # up to n_inputs (or n_samples) products of standard-normal numbers summed in a
                # different order (or with FMA) than BLAS: a K*eps*magnitude bound, K = n_samples.
                bound = 4 * max(n_samples, n_inputs) * np.finfo(dtype).eps * (np.abs(want) + 10)
                diff = np.abs(got - want)
                worst = max(worst, float(np.nanmax(diff, initial=0)))
                ok &= bool(np.all((diff <= bound) | (np.isnan(got) & np.isnan(want))))
            failures += not ok
            print(f"{op:36s} {np.dtype(dtype).name:8s} {worst:20.3g} "
                  f"{'OK' if ok else 'FAIL':>10s}")
    return failures


def median_ms(run, synchronize, repeats):
    run()
    synchronize()  # warm-up: compiles, allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_dense(gpu, quick, rows):
    shapes = [(37, 19, 23)] if quick else [(300, 2, 64), (4096, 784, 128), (1024, 1024, 1024),
                                           (8192, 4096, 1024)]
    repeats = 2 if quick else 20
    rng = np.random.default_rng(0)
    for n_samples, n_inputs, n_neurons in shapes:
        x = rng.standard_normal((n_samples, n_inputs)).astype(np.float32)
        w = rng.standard_normal((n_inputs, n_neurons)).astype(np.float32)
        b = rng.standard_normal(n_neurons).astype(np.float32)
        dx, dw, db = gpu.asarray(x), gpu.asarray(w), gpu.asarray(b)
        out = gpu.empty((n_samples, n_neurons), np.float32)
        flops = 2 * n_samples * n_inputs * n_neurons
        label = f"dense {n_samples}x{n_inputs}x{n_neurons}"
        for name, run in (("tiled kernel", lambda: gpu.dense_forward(dx, dw, db, out)),
                          ("simple kernel", lambda: gpu.dense_forward_simple(dx, dw, db, out))):
            ms = median_ms(run, gpu.synchronize, repeats)
            rows.append((label, name, ms, flops / ms / 1e6))
        try:
            import cupy
            cx, cw, cb = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
            ms = median_ms(lambda: cx @ cw + cb, cupy.cuda.Device().synchronize, repeats)
            rows.append((label, "cupy x @ w + b", ms, flops / ms / 1e6))
        except Exception:  # noqa: BLE001 - not installed or no GPU: skip the row
            pass
        try:
            import torch
            if torch.cuda.is_available():
                tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
                torch.backends.cuda.matmul.allow_tf32 = False  # the same float32 arithmetic
                ms = median_ms(lambda: torch.addmm(tb, tx, tw), torch.cuda.synchronize, repeats)
                rows.append((label, "torch addmm (fp32)", ms, flops / ms / 1e6))
        except Exception:  # noqa: BLE001
            pass


def time_spiral(gpu, quick, rows):
    import loopnet
    from loopnet.datasets import spiral_data

    repeats = 2 if quick else 50
    X, y = spiral_data(samples=10 if quick else 100, classes=3, seed=0)
    for device in ("cuda", "cpu"):
        dense1 = loopnet.Dense(2, 64, seed=1, device=device)
        dense2 = loopnet.Dense(64, 3, seed=2, device=device)
        relu, softmax = loopnet.ReLU(device=device), loopnet.Softmax(device=device)
        loss = loopnet.CategoricalCrossentropy(device=device)
        data = loopnet.ops.to_device(X, device)
        labels = loopnet.ops.to_device(y, device) if device != "cuda" else y

        def forward():
            dense1.forward(data)
            relu.forward(dense1.output)
            dense2.forward(relu.output)
            softmax.forward(dense2.output)
            return loss.calculate(softmax.output, labels)  # a float: waits for the GPU

        ms = median_ms(forward, gpu.synchronize, repeats)
        rows.append((f"spiral forward+loss ({len(X)} samples)", device, ms, float("nan")))


def time_training(quick, rows):
    """Per-epoch milliseconds of ``Model.train`` (median of ``rounds`` blocks of ``epochs``)."""
    import loopnet
    from loopnet.cli import build_model
    from loopnet.datasets import spiral_data

    rounds, epochs = (1, 2) if quick else (5, 20)
    worst = 0.0
    for samples in ((10,) if quick else (100, 10_000)):
        X, y = spiral_data(samples=samples, classes=3, seed=0)
        losses = {}
        for device in ("cuda", "cpu"):
            times = []
            with loopnet.device(device):
                model = build_model(2, 3, [64], regression=False, learning_rate=0.05, seed=0)
                for _ in range(rounds + 1):  # the first block compiles: not timed
                    start = time.perf_counter()
                    history = model.train(X, y, epochs=epochs, print_every=None)
                    times.append((time.perf_counter() - start) * 1e3 / epochs)
                print(f"Model.train on {device}: {history.get('path', '')}")
            losses[device] = float(history["loss"][-1])
            rows.append((f"Model.train 2-64-3 ({len(X)} samples)", f"{device}, per epoch",
                         statistics.median(times[1:]), float("nan")))
        worst = max(worst, abs(losses["cuda"] - losses["cpu"]) / max(abs(losses["cpu"]), 1e-6))
    print(f"\nModel.train: largest relative loss difference cuda vs cpu "
          f"after {(rounds + 1) * epochs} epochs: {worst:.3g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats (default under NUMBA_ENABLE_CUDASIM=1)")
    args = parser.parse_args(argv)
    quick = args.quick or SIMULATOR
    started = time.perf_counter()
    from loopnet.backends import cuda as gpu
    from loopnet.backends import numpy as twins

    from numba import cuda
    name = "numba's CUDA simulator" if SIMULATOR else cuda.get_current_device().name
    print("GPU:", name.decode() if isinstance(name, bytes) else name)
    failures = check_ops(gpu, twins, quick)
    rows = []
    time_dense(gpu, quick, rows)
    time_spiral(gpu, quick, rows)
    time_training(quick, rows)
    print(f"\n{'case':40s} {'implementation':22s} {'median ms':>10s} {'GFLOP/s':>9s}")
    for case, name, ms, gflops in rows:
        print(f"{case:40s} {name:22s} {ms:10.4f} {gflops:9.1f}")
    print(f"\n{failures} op(s) failed; total {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
