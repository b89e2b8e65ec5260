"""loopnet benchmark suite: per-op medians on every host device and PyTorch, training epochs
of the book's models against the numpy device, PyTorch and JAX, the book's chapter loops
against plain numpy, a shared-core run, compile and start-up times, with the machine and
library versions.

    python benchmarks/bench.py                 # every group below but --crossover
    python benchmarks/bench.py --quick         # fewer repeats and epochs, no 10,001-epoch runs
    python benchmarks/bench.py --models        # one group (flags combine):
        --ops        dense forward/backward products per call (loopnet, numpy, python, torch)
        --training   the spiral classifier's epochs (Model.train), and the 10,001-epoch run
        --mnist      an MNIST-size epoch (784-128-10, batches of 128, 60,000 rows)
        --models     the book's models through Model.train: cpu, numpy device, torch, JAX
        --chapters   the book's chapter loops (no Model): loopnet.nnfs against plain numpy
        --busy       the chapter-10 loop with another process keeping one core busy
        --compile    cold (fresh numba cache) against warm runs in new processes
        --startup    import time, first op and a small training run in new processes
    python benchmarks/bench.py --crossover     # serial/parallel and simple/tiled crossover table

Run it on a quiet machine (``uptime`` load average below ~1.5): every number is a median, but
two cores shared with other work still move them 10-50%. PyTorch and JAX are optional (``pip
install torch jax``; their columns print ``-`` without them): each runs in a subprocess of its
own (``torch_bench.py``, ``jax_bench.py``), so their threads, OpenBLAS's and numba's never
compete inside one process. numpy and loopnet run side by side in this process, alternating;
``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` are left at their defaults (2 on the
reference machine).
"""

from __future__ import annotations

import argparse
import importlib.util
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

# (the last four: the spiral model's layers, then the sine model's 64x64 layer and first layer)
DENSE_SHAPES = [(1024, 1024, 1024), (4096, 784, 128), (32, 784, 128), (300, 2, 64), (300, 64, 3),
                (1000, 64, 64), (1000, 1, 64)]
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


# --- machine --------------------------------------------------------------------------------------

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


# --- PyTorch and JAX (each in its own process) ----------------------------------------------------

def run_script(script, module, args):
    """Run ``benchmarks/<script>`` with ``args`` (JSON) in a new process and return its JSON
    line, or None when ``module`` (torch, jax) is not installed or the script fails. The
    module is looked up, never imported here: its threads must stay out of this process."""
    if importlib.util.find_spec(module) is None:
        print(f"- {module}: not installed (its columns print -)")
        return None
    result = subprocess.run([sys.executable, os.path.join(HERE, script), json.dumps(args)],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        print(f"{module} benchmark failed:\n" + result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_torch(args, options):
    if options.no_torch:
        print("- torch: left out (--no-torch)")
        return None
    result = run_script("torch_bench.py", "torch", args)
    if result:
        print(f"- torch: {result['torch']} (eager, 2 threads, flush_denormal on, own process)")
    return result


def run_jax(args, options):
    if options.no_jax:
        print("- jax: left out (--no-jax)")
        return None
    result = run_script("jax_bench.py", "jax", args)
    if result:
        print(f"- jax: {result['jax']} (jaxlib {result['jaxlib']}; XLA on the CPU: devices "
              f"{', '.join(result['devices'])}; own process)")
    return result


def ratio(numerator, denominator, digits=1):
    if numerator is None or denominator is None or denominator <= 0:
        return "-"
    return f"{numerator / denominator:.{digits}f}"


def history_path(history):
    """The path ``Model.train`` reports in its history (``history["path"]``: one name, or one
    per epoch), or "-" when it reports none."""
    path = history.get("path") if hasattr(history, "get") else None
    if path is None:
        return "-"
    if isinstance(path, (list, tuple)):
        return ",".join(dict.fromkeys(map(str, path)))
    return str(path)


def check(label, value, target, at_least=True):
    """A target line: ``label value (target) met/MISSED``, or ``not measured``."""
    if value is None:
        return f"{label}: not measured"
    met = value >= target if at_least else value <= target
    sign = ">=" if at_least else "<="
    return f"{label}: {value:.2f} ({sign} {target:g}) {'met' if met else 'MISSED'}"


# --- data -----------------------------------------------------------------------------------------

def mnist_like(n=60_000, n_inputs=784, n_classes=10, seed=0):
    """Learnable synthetic MNIST-sized data: each class a random 784-pixel prototype in [0, 1],
    each sample its class prototype plus noise, clipped to [0, 1] (like scaled pixels)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((n_classes, n_inputs), dtype=np.float32)
    y = rng.integers(0, n_classes, n)
    X = prototypes[y] + rng.normal(0, 0.6, (n, n_inputs)).astype(np.float32)
    return np.clip(X, 0, 1).astype(np.float32), y.astype(np.int64)


# --- loopnet training -----------------------------------------------------------------------------

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


# --- start-up -------------------------------------------------------------------------------------

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


# --- crossover ------------------------------------------------------------------------------------

def crossover():
    """Times of the cpu backend's dense forward candidates around the thresholds."""
    from loopnet.backends import cpu
    from loopnet.kernels.dense_fast import FORM_NAMES

    rng = np.random.default_rng(0)
    print("dense forward: blocked loops (serial, parallel), NT tiled with packing (serial, "
          "parallel), broadcast form with packing (serial, parallel); 'plan': what "
          "cpu.dense_plan picks for the shape")
    print(f"{'shape':>16} {'MACs':>10} {'blocked ser.':>13} {'blocked par.':>13} "
          f"{'NT ser.':>11} {'NT par.':>11} {'bcast ser.':>11} {'bcast par.':>11} {'numpy':>10}"
          f"  plan")
    for K, N in ((2, 64), (64, 3), (16, 32), (32, 32), (32, 64), (48, 48), (64, 64), (256, 256),
                 (784, 128)):
        for M in (4, 32, 128, 300, 1024, 4096):
            x = rng.standard_normal((M, K)).astype(np.float32)
            w = rng.standard_normal((K, N)).astype(np.float32)
            b = np.zeros(N, np.float32)
            o = cpu.aligned_empty((M, N), np.float32)

            def tiled(kernel):
                return lambda: kernel(cpu._aligned_for(x, N, "x"), cpu._packed(w, "w"), b, True,
                                      o)

            def broadcast(parallel):
                kernel = cpu._broadcast(parallel, x.T, w)
                return lambda: kernel(x.T, w, cpu._panels(w, "w"), b, True, o)

            times = [median_time(lambda: cpu.dense_forward_blocked_serial(x, w, b, o), 21, 0.3),
                     median_time(lambda: cpu.dense_forward_blocked_parallel(x, w, b, o), 21, 0.3),
                     median_time(tiled(cpu.dense_nt_tiled_serial), 21, 0.3),
                     median_time(tiled(cpu.dense_nt_tiled_parallel), 21, 0.3),
                     median_time(broadcast(False), 21, 0.3),
                     median_time(broadcast(True), 21, 0.3),
                     median_time(lambda: np.dot(x, w) + b, 21, 0.3)]
            form, parallel = cpu.dense_plan(M, K, N).forward
            plan = FORM_NAMES[form] + (" parallel" if parallel else "")
            print(f"{f'{M}x{K}x{N}':>16} {M * K * N:>10} " + " ".join(
                f"{fmt(t):>11}" for t in times) + f"  {plan}")


# --- groups ---------------------------------------------------------------------------------------

def group_ops(options):
    repeats = 3 if options.quick else 7
    print("\n## Dense ops (float32, median per call)\n")
    torch_result = run_torch({"ops": {"shapes": DENSE_SHAPES, "repeats": repeats}}, options)
    print()
    print("| op | shape (samples x inputs x neurons) | cpu (loopnet) | numpy | python | torch "
          "| numpy / cpu | torch / cpu |")
    print("|---|---|---|---|---|---|---|---|")
    from loopnet.backends import cpu as cpu_be
    from loopnet.backends import numpy as np_be
    from loopnet.backends import python as py_be

    rng = np.random.default_rng(0)
    for M, K, N in DENSE_SHAPES:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        d = rng.standard_normal((M, N)).astype(np.float32)
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
                  f"{fmt(torch_t)} | {ratio(np_t, cpu_t, 2)} | {ratio(torch_t, cpu_t, 2)} |")


def group_training(options):
    from loopnet.datasets import spiral_data

    print("\n## Training (Model.train; the spiral classifier; Adam; float32)\n")
    torch_result = run_torch({"spiral": [["spiral 100/class epoch", 100, 500],
                                         ["spiral 1000/class epoch", 1000, 100]],
                              "full_run": not options.quick}, options)
    print()
    print("| run | cpu (loopnet) | numpy device | torch eager | numpy / cpu | torch / cpu |")
    print("|---|---|---|---|---|---|")
    torch_train = (torch_result or {}).get("train", {})
    for name, spc, n_epochs in (("spiral 100/class epoch", 100, 2000),
                                ("spiral 1000/class epoch", 1000, 200)):
        X, y = spiral_data(spc, 3, seed=0)
        cpu_t, _ = loopnet_epochs(X, y, [2, 64, 3], n_epochs)
        np_t, _ = loopnet_epochs(X, y, [2, 64, 3], max(20, n_epochs // 20), device="numpy")
        t_t = torch_train.get(name)
        print(f"| {name} | {fmt(cpu_t)} | {fmt(np_t)} | {fmt(t_t)} | {ratio(np_t, cpu_t)} | "
              f"{ratio(t_t, cpu_t)} |")
    if not options.quick:
        X, y = spiral_data(100, 3, seed=0)
        cpu_t, model = loopnet_epochs(X, y, [2, 64, 3], 10001)
        np_t, _ = loopnet_epochs(X, y, [2, 64, 3], 10001, device="numpy")
        t_t = torch_train.get("spiral 10,001 epochs")
        print(f"| spiral 10,001 epochs (total) | {fmt(cpu_t * 10001)} | {fmt(np_t * 10001)} | "
              f"{fmt(t_t)} | {ratio(np_t, cpu_t)} | {ratio(t_t, cpu_t * 10001)} |")


def group_mnist(options):
    print("\n## MNIST-size epoch (784-128-10, Adam lr 1e-3, batches of 128, 60,000 rows)\n")
    X_mnist, y_mnist = mnist_like()
    mnist_epochs = 1 if options.quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        files = {"x": os.path.join(tmp, "x.npy"), "y": os.path.join(tmp, "y.npy")}
        np.save(files["x"], X_mnist)
        np.save(files["y"], y_mnist)
        torch_result = run_torch({"mnist": dict(files, epochs=mnist_epochs + 1)}, options)
        jax_result = run_jax({"mnist": dict(files, epochs=mnist_epochs + 1)}, options)
    print()
    # loopnet: epochs 2.. (Adam's moments reach the subnormal range after the first)
    build([784, 128, 10], 1e-3).train(X_mnist[:1280], y_mnist[:1280], batch_size=128,
                                      print_every=0, progress=False)  # compile
    model = build([784, 128, 10], 1e-3)
    model.train(X_mnist, y_mnist, epochs=1, batch_size=128, print_every=0, progress=False)
    time.sleep(0.2)
    t = time.perf_counter()
    history = model.train(X_mnist, y_mnist, epochs=mnist_epochs, batch_size=128, print_every=0,
                          progress=False)
    cpu_t = (time.perf_counter() - t) / mnist_epochs
    np_t, _ = loopnet_epochs(X_mnist, y_mnist, [784, 128, 10], 1, device="numpy",
                             batch_size=128, lr=1e-3)
    t_t = (torch_result or {}).get("train", {}).get("mnist epoch")
    j_t = ((jax_result or {}).get("mnist") or {}).get("epoch")
    print("| run | cpu (loopnet) | numpy device | torch eager | jax jit | numpy / cpu "
          "| torch / cpu | jax / cpu | loopnet path |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| epoch (acc {history['accuracy'][-1]:.3f}) | {fmt(cpu_t)} | {fmt(np_t)} | "
          f"{fmt(t_t)} | {fmt(j_t)} | {ratio(np_t, cpu_t)} | {ratio(t_t, cpu_t)} | "
          f"{ratio(j_t, cpu_t)} | {history_path(history)} |")
    print("\nTarget: " + check("torch / cpu", None if t_t is None else t_t / cpu_t, 2.5))


def build_book_model(spec, device):
    """A ``book_models`` spec as a finalized loopnet ``Model`` on ``device``."""
    import loopnet
    from book_models import optimizer_settings

    model = loopnet.Model()
    k = 0
    for kind, *args in spec["layers"]:
        if kind == "dense":
            model.add(loopnet.Dense(args[0], args[1], weight_regularizer_l2=args[2],
                                    bias_regularizer_l2=args[2], seed=k, device=device))
            k += 1
        elif kind == "relu":
            model.add(loopnet.ReLU(device=device))
        elif kind == "dropout":
            model.add(loopnet.Dropout(args[0], seed=0, device=device))
        else:
            model.add({"softmax": loopnet.Softmax, "sigmoid": loopnet.Sigmoid,
                       "linear": loopnet.Linear}[kind](device=device))
    loss = {"categorical_crossentropy": loopnet.CategoricalCrossentropy,
            "binary_crossentropy": loopnet.BinaryCrossentropy,
            "mean_squared_error": loopnet.MeanSquaredError}[spec["loss"]](device=device)
    name, hyper = optimizer_settings(spec)
    optimizer = loopnet.SGD(**hyper) if name == "sgd" else loopnet.Adam(**hyper)
    accuracy = {"categorical": lambda: loopnet.CategoricalAccuracy(device=device),
                "binary": lambda: loopnet.CategoricalAccuracy(binary=True, device=device),
                "regression": lambda: loopnet.RegressionAccuracy(device=device)}[spec["accuracy"]]()
    model.set(loss=loss, optimizer=optimizer, accuracy=accuracy)
    model.finalize()
    return model


def book_model_epoch(spec, device, options):
    """``(seconds per epoch, the path Model.train reports or "-")`` on ``device``."""
    from book_models import model_data, per_epoch_median

    X, y = model_data(spec)
    model = build_book_model(spec, device)
    seen = {}

    def run(k):
        seen["path"] = history_path(model.train(X, y, epochs=k, print_every=0, progress=False))

    seconds, _ = per_epoch_median(run, block_seconds=0.1 if options.quick else 0.25,
                                  repeats=3 if options.quick else 5)
    return seconds, seen["path"]


def group_models(options):
    from book_models import MODELS

    print("\n## The book's models (Model.train, full batch, median per epoch, float32)\n")
    names = list(MODELS)
    block = 0.1 if options.quick else 0.25
    repeats = 3 if options.quick else 5
    torch_result = run_torch({"models": names, "block_seconds": block, "repeats": repeats},
                             options)
    jax_result = run_jax({"models": names, "repeats": 7 if options.quick else 15}, options)
    print()
    print("| model | loopnet cpu | numpy device | torch eager | jax jit block | numpy / cpu "
          "| torch / cpu | jax / cpu | loopnet path |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for name in names:
        spec = MODELS[name]
        cpu_t, path = book_model_epoch(spec, "cpu", options)
        np_t, _ = book_model_epoch(spec, "numpy", options)
        t_t = (torch_result or {}).get("models", {}).get(name)
        j_t = ((jax_result or {}).get("models", {}).get(name) or {}).get("epoch")
        rows[name] = (cpu_t, np_t, t_t, j_t)
        print(f"| {spec['title']} | {fmt(cpu_t)} | {fmt(np_t)} | {fmt(t_t)} | {fmt(j_t)} | "
              f"{ratio(np_t, cpu_t)} | {ratio(t_t, cpu_t)} | {ratio(j_t, cpu_t, 2)} | "
              f"{path} |")
    print("\nTargets (each model >= 4x torch eager, >= 3x numpy device, >= 1x JAX; the fused "
          "family >= 8x torch eager):\n")
    for name, (cpu_t, np_t, t_t, j_t) in rows.items():
        parts = [check("torch / cpu", None if t_t is None else t_t / cpu_t,
                       8 if name == "fused" else 4),
                 check("numpy / cpu", np_t / cpu_t, 3),
                 check("jax / cpu", None if j_t is None else j_t / cpu_t, 1)]
        print(f"- {name}: " + "; ".join(parts))
    if jax_result:
        print("\nJAX compile (first call of each 100-step block): " + ", ".join(
            f"{name} {fmt(r['compile'])}" for name, r in jax_result["models"].items()))


def _chapter_block(name, ns, epochs, data):
    from chapter_loops import run_chapter

    time.sleep(0.2)  # OpenBLAS's threads go idle before the next measurement
    return run_chapter(name, ns, epochs, data)


def group_chapters(options):
    import book_numpy
    import loopnet
    import loopnet.nnfs
    from chapter_loops import CHAPTERS, chapter_data

    epochs = 500 if options.quick else 2000
    repeats = 3
    print(f"\n## The book's chapter loops (no Model; {epochs} epochs, median of {repeats}; "
          "loopnet.nnfs classes on cpu against plain-numpy classes, the same loop code)\n")
    print("| chapter | loopnet.nnfs epoch | per 10,000 epochs | numpy epoch | per 10,000 epochs "
          "| numpy / loopnet | final acc (loopnet, numpy) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    with loopnet.device("cpu"):
        for name in CHAPTERS:
            data = chapter_data(name)
            for ns in (loopnet.nnfs, book_numpy):
                _chapter_block(name, ns, 5, data)  # compile, first touches
            times = {"loopnet": [], "numpy": []}
            last = {}
            for _ in range(repeats):
                for key, ns in (("loopnet", loopnet.nnfs), ("numpy", book_numpy)):
                    last[key] = _chapter_block(name, ns, epochs, data)
                    times[key].append(last[key].seconds / epochs)
            lp_t = statistics.median(times["loopnet"])
            np_t = statistics.median(times["numpy"])
            results[name] = np_t / lp_t
            print(f"| {name} | {fmt(lp_t)} | {fmt(lp_t * 10_000)} | {fmt(np_t)} | "
                  f"{fmt(np_t * 10_000)} | {ratio(np_t, lp_t, 2)} | "
                  f"{last['loopnet'].accuracy:.3f}, {last['numpy'].accuracy:.3f} |")
    print()
    for name, title in CHAPTERS.items():
        print(f"- {name}: {title}")
    print("\nTargets (numpy / loopnet >= 2): " + "; ".join(
        check(name, value, 2) for name, value in results.items()))


BUSY_LOOP = "while True: pass"


def group_busy(options):
    import loopnet
    import loopnet.nnfs
    from chapter_loops import chapter_data

    epochs = 500 if options.quick else 2000
    repeats = 3 if options.quick else 5
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    print(f"\n## Shared machine: the chapter-10 loop (loopnet.nnfs on cpu, {epochs} epochs, "
          f"median of {repeats}) with another process spinning (`{BUSY_LOOP}`)\n")
    data = chapter_data("ch10")

    def measure():
        with loopnet.device("cpu"):
            _chapter_block("ch10", loopnet.nnfs, 5, data)
            return statistics.median(_chapter_block("ch10", loopnet.nnfs, epochs, data).seconds
                                     / epochs for _ in range(repeats))

    def busy(pin):
        spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            if pin is not None:
                os.sched_setaffinity(spinner.pid, {pin})
            time.sleep(0.5)
            return measure()
        finally:
            spinner.kill()
            spinner.wait()

    quiet = measure()
    rows = [("quiet", quiet), ("one core busy (spinner not pinned)", busy(None))]
    if len(cores) > 1:
        rows.append((f"one core busy (spinner pinned to CPU {cores[0]})", busy(cores[0])))
    quiet_after = measure()
    rows.append(("quiet again", quiet_after))
    print("| run | per epoch | per 10,000 epochs | / quiet |")
    print("|---|---|---|---|")
    for label, value in rows:
        print(f"| {label} | {fmt(value)} | {fmt(value * 10_000)} | {ratio(value, quiet, 2)} |")
    worst = max(value for label, value in rows if "busy" in label)
    print("\nTarget: " + check("worst busy / quiet", worst / quiet, 2, at_least=False))


# --- compile (new processes, fresh numba caches) ------------------------------------------------

# Put before each compile-group process's code: numba's "numba:compile" events fire for real
# compilations only (a function found in the cache is loaded without one), so their time is
# the process's compile time; the names of the functions compiled at the outermost level (the
# kernels called from Python; each compiles the functions it calls with it) say what compiled,
# and the count of all events how much. Printed to stderr at
# exit as one line "NUMBA_COMPILES {json}".
COMPILE_PROBE = """
import atexit, json, sys, time
from numba.core import event as _event

class _Compiles(_event.Listener):
    def __init__(self):
        self.depth, self.seconds, self.names, self.events = 0, 0.0, [], 0

    def on_start(self, event):
        self.events += 1
        if self.depth == 0:
            self.started = time.perf_counter()
            dispatcher = (event.data or {{}}).get("dispatcher")
            self.names.append(getattr(getattr(dispatcher, "py_func", None), "__name__", "?"))
        self.depth += 1

    def on_end(self, event):
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.perf_counter() - self.started

_compiles = _Compiles()
_event.register("numba:compile", _compiles)
atexit.register(lambda: print("NUMBA_COMPILES " + json.dumps(
    {{"seconds": _compiles.seconds, "names": _compiles.names, "events": _compiles.events}}),
    file=sys.stderr))
"""

CLI_PROCESS = COMPILE_PROBE + """
from loopnet.cli import main
sys.exit(main({argv!r}))
"""

CHAPTER_PROCESS = COMPILE_PROBE + """
sys.path.insert(0, {here!r})
import loopnet.nnfs
from chapter_loops import run_chapter
result = run_chapter("ch10", loopnet.nnfs, {epochs})
print(json.dumps({{"first_epoch": result.first_epoch, "loop": result.seconds}}))
"""

CH19_PROCESS = COMPILE_PROBE + """
sys.path.insert(0, {here!r})
import loopnet
from bench import mnist_like
X, y = mnist_like(n={n})
model = loopnet.Model()
model.add(loopnet.Dense(784, 128, seed=0)); model.add(loopnet.ReLU())
model.add(loopnet.Dense(128, 128, seed=1)); model.add(loopnet.ReLU())
model.add(loopnet.Dense(128, 10, seed=2)); model.add(loopnet.Softmax())
model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(decay=1e-3),
          accuracy=loopnet.CategoricalAccuracy())
model.finalize()
t = time.perf_counter()
history = model.train(X, y, epochs=1, batch_size=128, print_every=0, progress=False)
path = history.get("path", "-")
path = ",".join(dict.fromkeys(map(str, path))) if isinstance(path, (list, tuple)) else str(path)
print(json.dumps({{"train": time.perf_counter() - t, "path": path}}))
"""


def _cache_entries(cache):
    """Compiled objects numba wrote to ``cache`` (one ``.nbc`` file per specialization)."""
    return sum(name.endswith(".nbc") for _, _, names in os.walk(cache) for name in names)


def _process(code, cache):
    """Run ``code`` (which starts with ``COMPILE_PROBE``) in a new process with ``cache`` as
    its numba cache: ``{"wall", "stdout", "compile_seconds", "compiled", "events", "entries"}``
    (the kernels compiled, all compile events, the cache files it wrote), or None when it
    fails."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    before = _cache_entries(cache)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(f"compile benchmark process failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    probe = {"seconds": None, "names": [], "events": 0}
    for line in result.stderr.splitlines():
        if line.startswith("NUMBA_COMPILES "):
            probe = json.loads(line.split(" ", 1)[1])
    return {"wall": wall, "stdout": result.stdout, "compile_seconds": probe["seconds"],
            "compiled": probe["names"], "events": probe["events"],
            "entries": _cache_entries(cache) - before}


def _compiled(run):
    names = run["compiled"]
    if not names:
        return "numba compiled nothing"
    shown = ", ".join(sorted(set(names))[:12]) + (", ..." if len(set(names)) > 12 else "")
    return (f"numba compiled {len(names)} kernels ({run['events']} functions with those they "
            f"call) in {fmt(run['compile_seconds'])}: {shown}")


def _train_seconds(stdout):
    """The ``N epochs in X s`` of ``loopnet train``'s summary, or None."""
    import re

    match = re.search(r"epochs in ([0-9.]+) s", stdout)
    return float(match.group(1)) if match else None


def group_compile(options):
    print("\n## Compile (new processes; cold = a fresh, empty NUMBA_CACHE_DIR, warm = the same "
          "cache again; compile time = numba's compile events)\n")
    print("| run | wall | detail | cache files written |")
    print("|---|---|---|---|")
    lines = []
    # (a) the command line: the defaults in a fresh cache, then another shape in that cache
    with tempfile.TemporaryDirectory() as cache:
        for label, argv in (("`loopnet train` (defaults), fresh cache", ["train", "--quiet"]),
                            ("`loopnet train --hidden 32,32`, the same cache",
                             ["train", "--quiet", "--hidden", "32,32"])):
            run = _process(CLI_PROCESS.format(argv=argv), cache)
            if run is None:
                continue
            print(f"| {label} | {fmt(run['wall'])} | train(): "
                  f"{fmt(_train_seconds(run['stdout']))}; {_compiled(run)} | {run['entries']} |")
            if "--hidden" in argv:
                lines.append(f"{label}: {_compiled(run)} (the aim: nothing)")
            else:
                lines.append(check("`loopnet train` (defaults) end to end, fresh cache, seconds",
                                   run["wall"], 10, at_least=False))
    # (b) the chapter-10 loop as the book runs it
    epochs = 1001 if options.quick else 10001
    with tempfile.TemporaryDirectory() as cache:
        for state in ("cold", "warm"):
            run = _process(CHAPTER_PROCESS.format(here=HERE, epochs=epochs), cache)
            if run is None:
                continue
            r = json.loads(run["stdout"].strip().splitlines()[-1])
            print(f"| ch10 chapter loop (loopnet.nnfs), {epochs} epochs, {state} | "
                  f"{fmt(run['wall'])} | first epoch {fmt(r['first_epoch'])}, the other "
                  f"{epochs - 1} {fmt(r['loop'] - r['first_epoch'])}; {_compiled(run)} | "
                  f"{run['entries']} |")
            if state == "cold":
                lines.append(check(f"ch10 chapter loop ({epochs} epochs) cold, seconds",
                                   run["wall"], 5.1, at_least=False) + " (half of 10.2 s)")
    # (c) a chapter-19-sized model, one epoch through Model.train
    n = 1024
    with tempfile.TemporaryDirectory() as cache:
        for state in ("cold", "warm"):
            run = _process(CH19_PROCESS.format(here=HERE, n=n), cache)
            if run is None:
                continue
            r = json.loads(run["stdout"].strip().splitlines()[-1])
            print(f"| ch19-size 784-128-128-10, Adam(decay 1e-3), 1 epoch of {n} rows in "
                  f"batches of 128, {state} | {fmt(run['wall'])} | train() {fmt(r['train'])}, "
                  f"path {r['path']}; {_compiled(run)} | {run['entries']} |")
    print()
    for line in lines:
        print(f"- {line}")


def group_startup(options):
    print("\n## Start-up (new processes)\n")
    for key, value in startup_times().items():
        print(f"- {key}: {fmt(value)}")


# --- main -----------------------------------------------------------------------------------------

GROUPS = {
    "ops": (group_ops, "dense forward/backward products per call"),
    "training": (group_training, "the spiral classifier's epochs and the 10,001-epoch run"),
    "mnist": (group_mnist, "an MNIST-size epoch (784-128-10, batches of 128)"),
    "models": (group_models, "the book's models through Model.train: cpu, numpy device, "
               "torch, JAX"),
    "chapters": (group_chapters, "the book's chapter loops: loopnet.nnfs against plain numpy"),
    "busy": (group_busy, "the chapter-10 loop with one core kept busy"),
    "compile": (group_compile, "cold against warm numba caches in new processes"),
    "startup": (group_startup, "import time, first op, a small training run"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="loopnet's benchmark suite (see BENCHMARKS.md).",
        epilog="With no group flag every group runs (but --crossover); group flags combine.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs, skip "
                        "the 10,001-epoch runs")
    parser.add_argument("--crossover", action="store_true", help="only the crossover table")
    for name, (_, text) in GROUPS.items():
        parser.add_argument(f"--{name}", action="store_true", help=text)
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-jax", action="store_true", help="leave JAX out")
    options = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    if options.crossover:
        crossover()
        return
    chosen = [name for name in GROUPS if getattr(options, name)] or list(GROUPS)
    import loopnet  # noqa: F401

    print("## Machine")
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    print(f"- groups: {', '.join(chosen)}{' (--quick)' if options.quick else ''}")
    for name in chosen:
        start = time.perf_counter()
        GROUPS[name][0](options)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
