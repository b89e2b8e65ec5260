"""loopnet benchmark suite (issue 5): per-op medians on every host device and PyTorch, training
epochs, start-up times, with the machine and library versions.

    python benchmarks/bench.py                 # everything (a few minutes on 2 cores)
    python benchmarks/bench.py --quick         # fewer repeats, no 10,001-epoch runs
    python benchmarks/bench.py --crossover     # serial/parallel and simple/tiled crossover table

Run it on a quiet machine (``uptime`` load average below ~1.5): every number is a median, but
two cores shared with other work still move them 10-50%. PyTorch is optional (``pip install
torch``): it runs in a subprocess of its own, so its OpenMP threads, OpenBLAS's threads and
numba's threads never compete inside one process. numpy and loopnet run side by side in this
process, alternating, as the issue's ratios are defined; ``OPENBLAS_NUM_THREADS`` and
``NUMBA_NUM_THREADS`` are left at their defaults (2 on the reference machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DENSE_SHAPES = [(1024, 1024, 1024), (4096, 784, 128), (32, 784, 128), (300, 2, 64), (300, 64, 3)]
PYTHON_DEVICE_MAX_WORK = 100_000      # the uncompiled python device only for tiny shapes


def median_time(function, repeats=7, budget=2.0, warmup=1):
    """Median wall time of ``function()`` over ``repeats`` runs (fewer if over ``budget`` s).

    Sleeps 0.2 s first: OpenBLAS's threads keep spinning after a numpy product (up to 2^28
    cycles, ~0.1 s, by default) and steal the two cores from numba's threads measured next:
    a 60 us loopnet call then took 5-7 ms here. Then warms up for at least ``warmup`` calls
    and 20 ms: after the pause the cores have gone idle, and the first few short calls run
    slow (a 56 us dinputs took 0.7-1.5 ms, then ~100, 83, 83, ... us), numpy's and loopnet's
    alike; with one warm-up call their median measured the wake-up."""
    time.sleep(0.2)
    start = time.perf_counter()
    done = 0
    while done < warmup or (warmup and time.perf_counter() - start < 0.02):
        function()
        done += 1
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        function()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times)


def fmt(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


# --- machine ---------------------------------------------------------------------------------------

def machine_info():
    import numba

    from loopnet.backends import cpu  # noqa: F401  (sets numba's CPU features first)

    info = {"python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "cores": os.cpu_count()}
    try:
        import llvmlite

        info["llvmlite"] = llvmlite.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["numba CPU_FEATURES -prefer-256-bit"] = "-prefer-256-bit" in (
        numba.config.CPU_FEATURES or "")
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
                        f"threads={p.get('num_threads')}" for p in threadpool_info()
                        if p.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "threadpoolctl not installed (pip install 'loopnet[bench]')"
    info["env"] = {k: v for k, v in os.environ.items()
                   if k.startswith(("OPENBLAS", "OMP_", "NUMBA_", "LOOPNET_", "MKL"))}
    info["load average"] = os.getloadavg()
    return info


# --- PyTorch (in its own process) ------------------------------------------------------------------

TORCH_SCRIPT = r'''
import json, statistics, sys, time
import numpy as np
import torch
import torch.nn.functional as F
torch.set_num_threads(2)
torch.set_flush_denormal(True)
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
from loopnet.datasets import spiral_data

def median_time(function, repeats=7, budget=2.0):
    start = time.perf_counter()
    function()
    while time.perf_counter() - start < 0.02:  # warm up as the main process does
        function()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter(); function(); times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times)

out = {"torch": torch.__version__, "ops": {}, "train": {}}
g = torch.Generator().manual_seed(0)
for M, K, N in args["shapes"]:
    x = torch.randn(M, K, generator=g); w = torch.randn(K, N, generator=g)
    b = torch.randn(N, generator=g); d = torch.randn(M, N, generator=g)
    out["ops"][f"{M}x{K}x{N}"] = {
        "forward": median_time(lambda: torch.addmm(b, x, w), args["repeats"]),
        "dweights": median_time(lambda: x.T @ d, args["repeats"]),
        "dinputs": median_time(lambda: d @ w.T, args["repeats"]),
    }

def model(sizes):
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)

def epochs(X, y, sizes, n_epochs, batch_size=None, lr=0.05):
    X = torch.from_numpy(X); y = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    net = model(sizes)
    opt = torch.optim.Adam(net.parameters(), lr=lr, eps=1e-7)
    n = X.shape[0]; bs = n if batch_size is None else batch_size
    def one():
        for start in range(0, n, bs):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(X[start:start + bs]), y[start:start + bs])
            loss.backward(); opt.step()
    t = time.perf_counter()
    for _ in range(n_epochs):
        one()
    return (time.perf_counter() - t) / n_epochs

for name, spc, n_epochs in args["spiral"]:
    X, y = spiral_data(spc, 3, seed=0)
    epochs(X, y, [2, 64, 3], 20)
    out["train"][name] = epochs(X, y, [2, 64, 3], n_epochs)
if args["full_run"]:
    X, y = spiral_data(100, 3, seed=0)
    t = time.perf_counter(); epochs(X, y, [2, 64, 3], 10001); out["train"]["spiral 10,001 epochs"] = time.perf_counter() - t
X = np.load(args["mnist_x"]); y = np.load(args["mnist_y"])
epochs(X[:1280], y[:1280], [784, 128, 10], 1, 128, 1e-3)
out["train"]["mnist epoch"] = epochs(X, y, [784, 128, 10], args["mnist_epochs"], 128, 1e-3)
print(json.dumps(out))
'''


def run_torch(args_dict):
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, json.dumps(args_dict)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        print("torch benchmark failed:\n" + result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- data --------------------------------------------------------------------------------------------

def mnist_like(n=60_000, n_inputs=784, n_classes=10, seed=0):
    """Learnable synthetic MNIST-sized data: each class a random 784-pixel prototype in [0, 1],
    each sample its class prototype plus noise, clipped to [0, 1] (like scaled pixels)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((n_classes, n_inputs), dtype=np.float32)
    y = rng.integers(0, n_classes, n)
    X = prototypes[y] + rng.normal(0, 0.6, (n, n_inputs)).astype(np.float32)
    return np.clip(X, 0, 1).astype(np.float32), y.astype(np.int64)


# --- loopnet training ----------------------------------------------------------------------------------

def build(sizes, lr, device=None, decay=0.0):
    import loopnet

    model = loopnet.Model()
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        model.add(loopnet.Dense(a, b, seed=k, device=device))
        if k < len(sizes) - 2:
            model.add(loopnet.ReLU(device=device))
    model.add(loopnet.Softmax(device=device))
    model.set(loss=loopnet.CategoricalCrossentropy(device=device),
              optimizer=loopnet.Adam(learning_rate=lr, decay=decay),
              accuracy=loopnet.CategoricalAccuracy(device=device))
    model.finalize()
    return model


def loopnet_epochs(X, y, sizes, n_epochs, device=None, batch_size=None, lr=0.05, warm=1):
    """Seconds per epoch of ``Model.train`` (after ``warm`` epochs of a warm-up model)."""
    build(sizes, lr, device).train(X[:1280], y[:1280], epochs=warm, batch_size=batch_size,
                                   print_every=0, progress=False)
    model = build(sizes, lr, device, decay=5e-7 if batch_size is None else 0.0)
    t = time.perf_counter()
    model.train(X, y, epochs=n_epochs, batch_size=batch_size, print_every=0, progress=False)
    return (time.perf_counter() - t) / n_epochs, model


# --- start-up ---------------------------------------------------------------------------------------

def startup_times():
    """import time, first dense forward with a warm cache, cold compile of a training run."""
    py = sys.executable
    code_import = "import time; t=time.perf_counter(); import loopnet; print(time.perf_counter()-t)"
    code_first = textwrap.dedent("""
        import time; t = time.perf_counter()
        import numpy as np, loopnet
        loopnet.ops.dense_forward(np.ones((4, 3), np.float32), np.ones((3, 2), np.float32),
                                  np.zeros(2, np.float32))
        print(time.perf_counter() - t)""")
    code_train = textwrap.dedent("""
        import time; t = time.perf_counter()
        import sys; sys.path.insert(0, %r)
        from bench import build
        from loopnet.datasets import spiral_data
        X, y = spiral_data(20, 3, seed=0)
        build([2, 64, 3], 0.05).train(X, y, epochs=2, print_every=0, progress=False)
        print(time.perf_counter() - t)""" % HERE)
    out = {}

    def run(code, env=None):
        result = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                env=env or dict(os.environ))
        return float(result.stdout.strip().splitlines()[-1])

    run(code_first)  # make sure the cache is warm
    out["import loopnet"] = statistics.median(run(code_import) for _ in range(5))
    out["first dense forward, warm cache (new process)"] = statistics.median(
        run(code_first) for _ in range(3))
    run(code_train)
    out["spiral training run, warm cache (new process)"] = run(code_train)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out["spiral training run, cold compile (new process)"] = run(code_train, env)
    return out


# --- crossover ----------------------------------------------------------------------------------------

def crossover():
    """Times of the cpu backend's dense forward candidates around the thresholds."""
    from loopnet.backends import cpu

    rng = np.random.default_rng(0)
    print("dense forward: blocked loops (serial, parallel), NT tiled with packing (serial, "
          "parallel), broadcast form with packing (serial, parallel)")
    print(f"{'shape':>16} {'MACs':>10} {'blocked ser.':>13} {'blocked par.':>13} "
          f"{'NT ser.':>11} {'NT par.':>11} {'bcast ser.':>11} {'bcast par.':>11} {'numpy':>10}")
    for K, N in ((2, 64), (64, 3), (64, 64), (256, 256), (784, 128)):
        for M in (4, 32, 128, 300, 1024, 4096):
            x = rng.standard_normal((M, K)).astype(np.float32)
            w = rng.standard_normal((K, N)).astype(np.float32)
            b = np.zeros(N, np.float32)
            o = cpu.aligned_empty((M, N), np.float32)

            def tiled(kernel):
                return lambda: kernel(cpu._aligned(x, "x"), cpu._packed(w, "w"), b, True, o)

            def broadcast(parallel):
                return lambda: cpu._broadcast(parallel)(x.T, w, cpu._panels(w, "w"), b, True, o)

            times = [median_time(lambda: cpu.dense_forward_blocked_serial(x, w, b, o), 21, 0.3),
                     median_time(lambda: cpu.dense_forward_blocked_parallel(x, w, b, o), 21, 0.3),
                     median_time(tiled(cpu.dense_nt_tiled_serial), 21, 0.3),
                     median_time(tiled(cpu.dense_nt_tiled_parallel), 21, 0.3),
                     median_time(broadcast(False), 21, 0.3),
                     median_time(broadcast(True), 21, 0.3),
                     median_time(lambda: np.dot(x, w) + b, 21, 0.3)]
            print(f"{f'{M}x{K}x{N}':>16} {M * K * N:>10} " + " ".join(
                f"{fmt(t):>11}" for t in times))


# --- main -----------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip long runs")
    parser.add_argument("--crossover", action="store_true", help="only the crossover table")
    parser.add_argument("--no-torch", action="store_true")
    options = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    if options.crossover:
        crossover()
        return
    repeats = 3 if options.quick else 7
    import loopnet  # noqa: F401
    from loopnet.datasets import spiral_data

    print("## Machine")
    for key, value in machine_info().items():
        print(f"- {key}: {value}")

    X_mnist, y_mnist = mnist_like()
    mnist_epochs = 1 if options.quick else 2
    torch_result = None
    if not options.no_torch:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "x.npy"), X_mnist)
            np.save(os.path.join(tmp, "y.npy"), y_mnist)
            torch_result = run_torch({
                "root": ROOT, "shapes": DENSE_SHAPES, "repeats": repeats,
                "spiral": [["spiral 100/class epoch", 100, 500],
                           ["spiral 1000/class epoch", 1000, 100]],
                "full_run": not options.quick, "mnist_x": os.path.join(tmp, "x.npy"),
                "mnist_y": os.path.join(tmp, "y.npy"), "mnist_epochs": mnist_epochs + 1})
        if torch_result:
            print(f"- torch: {torch_result['torch']} (2 threads, flush_denormal on, own process)")

    print("\n## Dense ops (float32, median per call)\n")
    print("| op | shape (samples x inputs x neurons) | cpu (loopnet) | numpy | python | torch "
          "| numpy / cpu | torch / cpu |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for M, K, N in DENSE_SHAPES:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        d = rng.standard_normal((M, N)).astype(np.float32)
        from loopnet.backends import cpu as cpu_be
        from loopnet.backends import numpy as np_be
        from loopnet.backends import python as py_be

        for op in ("forward", "dweights", "dinputs"):
            # the backends' kernels themselves (what ops.dense_forward/dense_backward run after
            # validating), with outputs allocated once
            out = np.empty({"forward": (M, N), "dweights": (K, N), "dinputs": (M, K)}[op],
                           np.float32)

            def kernel(be, op=op, out=out):
                if op == "forward":
                    return lambda: be.dense_forward(x, w, b, out)
                if op == "dweights":
                    return lambda: be.dense_backward_weights(x, d, out)
                return lambda: be.dense_backward_inputs(d, w, out)

            cpu_t = median_time(kernel(cpu_be), repeats)
            np_t = median_time(kernel(np_be), repeats)
            py_t = None
            if M * K * N <= PYTHON_DEVICE_MAX_WORK:
                py_t = median_time(kernel(py_be), 3, 5.0, warmup=0)
            torch_t = (torch_result or {}).get("ops", {}).get(f"{M}x{K}x{N}", {}).get(op)
            print(f"| {op} | {M}x{K}x{N} | {fmt(cpu_t)} | {fmt(np_t)} | {fmt(py_t)} | "
                  f"{fmt(torch_t)} | {np_t / cpu_t:.2f} | "
                  f"{'-' if torch_t is None else f'{torch_t / cpu_t:.2f}'} |")

    print("\n## Training (Model.train; Adam; float32)\n")
    print("| run | cpu (loopnet, fused) | numpy device | torch eager | numpy / cpu | torch / cpu |")
    print("|---|---|---|---|---|---|")
    torch_train = (torch_result or {}).get("train", {})
    for name, spc, n_epochs in (("spiral 100/class epoch", 100, 2000),
                                ("spiral 1000/class epoch", 1000, 200)):
        X, y = spiral_data(spc, 3, seed=0)
        cpu_t, _ = loopnet_epochs(X, y, [2, 64, 3], n_epochs)
        np_t, _ = loopnet_epochs(X, y, [2, 64, 3], max(20, n_epochs // 20), device="numpy")
        t_t = torch_train.get(name)
        print(f"| {name} | {fmt(cpu_t)} | {fmt(np_t)} | {fmt(t_t)} | {np_t / cpu_t:.1f} | "
              f"{'-' if t_t is None else f'{t_t / cpu_t:.1f}'} |")
    if not options.quick:
        X, y = spiral_data(100, 3, seed=0)
        cpu_t, model = loopnet_epochs(X, y, [2, 64, 3], 10001)
        np_t, _ = loopnet_epochs(X, y, [2, 64, 3], 10001, device="numpy")
        t_t = torch_train.get("spiral 10,001 epochs")
        print(f"| spiral 10,001 epochs (total) | {fmt(cpu_t * 10001)} | {fmt(np_t * 10001)} | "
              f"{fmt(t_t)} | {np_t / cpu_t:.1f} | "
              f"{'-' if t_t is None else f'{t_t / (cpu_t * 10001):.1f}'} |")
    # MNIST size: time epochs 2.. (Adam's moments reach the subnormal range after the first)
    build([784, 128, 10], 1e-3).train(X_mnist[:1280], y_mnist[:1280], batch_size=128,
                                      print_every=0, progress=False)  # compile
    model = build([784, 128, 10], 1e-3)
    model.train(X_mnist, y_mnist, epochs=1, batch_size=128, print_every=0, progress=False)
    t = time.perf_counter()
    history = model.train(X_mnist, y_mnist, epochs=mnist_epochs, batch_size=128, print_every=0,
                          progress=False)
    cpu_t = (time.perf_counter() - t) / mnist_epochs
    np_t, _ = loopnet_epochs(X_mnist, y_mnist, [784, 128, 10], 1, device="numpy",
                             batch_size=128, lr=1e-3)
    t_t = torch_train.get("mnist epoch")
    print(f"| MNIST-size 784-128-10, batch 128, 60,000 rows, epoch (acc "
          f"{history['accuracy'][-1]:.3f}) | {fmt(cpu_t)} | {fmt(np_t)} | {fmt(t_t)} | "
          f"{np_t / cpu_t:.1f} | {'-' if t_t is None else f'{t_t / cpu_t:.1f}'} |")

    print("\n## Start-up (new processes)\n")
    for key, value in startup_times().items():
        print(f"- {key}: {fmt(value)}")


if __name__ == "__main__":
    main()
