"""The book's chapter-10 training loop, written by hand with loopnet's NNFS classes, on a quiet
machine and beside a process that keeps one core busy.

    python benchmarks/busy_core.py                    # loopnet's defaults: quiet, busy, ratio
    python benchmarks/busy_core.py --compare          # ... under each threading set-up
    python benchmarks/busy_core.py --epochs 10000 --repeats 5
    python benchmarks/busy_core.py --per-call --compare --setups "tbb,omp (passive)" --rounds 5

The loop (Dense(2, 64)-ReLU-Dense(64, 3), softmax + cross-entropy, SGD, 300 spiral samples)
makes ~15 small op calls per epoch; some of them are large enough to run numba's parallel
builds, whose threads wait for the next call between them. When they wait by spinning, a
busy core slows the loop many times over (the thread that has work waits for the core a
spinning one holds). Quiet and busy runs alternate (``--repeats`` pairs) and the medians are
reported, with the CPU time the process used (all its threads: a spinning thread shows up
there even when the wall time hides it). Run it when the machine is otherwise idle
(``uptime``); on a shared machine compare each set-up's ratio with the ``serial`` one, which
shows what the other load alone costs.

``--compare`` runs the same measurement in a fresh process per set-up: loopnet's default,
numba's TBB layer, OpenMP with loopnet's passive wait policy, OpenMP with GNU OpenMP's own
default spinning (``GOMP_SPINCOUNT=300000``), one thread (``NUMBA_NUM_THREADS=1``), and every
kernel serial (the size thresholds raised). ``--per-call`` measures instead what a small
parallel kernel and a ``Model.train`` epoch cost per call under each set-up (no competitor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETUPS = {
    "default": {},
    "tbb": {"NUMBA_THREADING_LAYER": "tbb"},
    "omp (passive)": {"NUMBA_THREADING_LAYER": "omp"},
    "omp (spinning)": {"NUMBA_THREADING_LAYER": "omp", "GOMP_SPINCOUNT": "300000"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "one thread": {"NUMBA_NUM_THREADS": "1"},
    "serial": {"LOOPNET_PARALLEL_MIN": str(10**15),
               "LOOPNET_PARALLEL_MIN_ELEMENTS": str(10**15)},
}


def chapter_10(epochs: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all of this process's threads) for ``epochs`` epochs of
    the book's chapter-10 loop (``chapter_loops.chapter10`` over ``loopnet.nnfs``' classes, no
    printing)."""
    import loopnet.nnfs
    from chapter_loops import chapter10, chapter_data

    X, y = chapter_data("ch10")
    start_cpu = time.process_time()
    result = chapter10(loopnet.nnfs, epochs, X, y)
    return result.seconds, time.process_time() - start_cpu


def spinner() -> subprocess.Popen:
    """Another process that keeps one core busy until it is killed: the last CPU of this
    process's set where it can be pinned (Linux), so that every run sees the same busy core
    rather than whatever placement the scheduler picks."""
    code = ("import os\n"
            "if hasattr(os, 'sched_setaffinity'):\n"
            "    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\n"
            "while True: pass")
    process = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.2)  # let it start and take its core
    return process


def measure(epochs: int, repeats: int) -> dict:
    """Alternate quiet and busy runs in this process; medians in seconds."""
    import loopnet

    chapter_10(50)  # compile (or load from the cache) and warm up
    quiet, busy = [], []
    for _ in range(repeats):
        quiet.append(chapter_10(epochs))
        competitor = spinner()
        try:
            busy.append(chapter_10(epochs))
        finally:
            competitor.kill()
            competitor.wait()
        time.sleep(0.2)
    result = {"quiet": statistics.median(t for t, _ in quiet),
              "busy": statistics.median(t for t, _ in busy),
              "quiet_cpu": statistics.median(c for _, c in quiet),
              "busy_cpu": statistics.median(c for _, c in busy),
              "quiet_runs": [t for t, _ in quiet], "busy_runs": [t for t, _ in busy]}
    result["ratio"] = result["busy"] / result["quiet"]
    result.update(loopnet.threads.info())
    return result


def per_call() -> dict:
    """Median microseconds per call of small parallel kernels, and of a training epoch.

    ``relu``: ``ops.relu_forward`` on 65,536 float32 values (just over
    ``PARALLEL_MIN_ELEMENTS``: the parallel build); ``dense``: ``ops.dense_forward`` of the
    spiral model's 300 x 64 x 3 layer (the parallel narrow kernel); ``epoch``: one epoch of
    ``Model.train`` on the README's model and data (3,000 spiral samples, Adam: the fused
    kernel's parallel build); ``mnist``: one pass over 6,000 rows of a 784-128-10 model in
    batches of 128 (the fused kernel, large layers)."""
    import numpy as np

    import loopnet
    from loopnet import ops

    def median_us(function, calls, rounds=7):
        for _ in range(max(calls // 10, 1)):
            function()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times.append((time.perf_counter() - start) / calls)
        return statistics.median(times) * 1e6

    rng = np.random.default_rng(0)
    x = rng.standard_normal(65_536).astype(np.float32)
    a = rng.standard_normal((300, 64)).astype(np.float32)
    w = rng.standard_normal((64, 3)).astype(np.float32)
    b = np.zeros((1, 3), np.float32)
    X, y = loopnet.datasets.spiral_data(1000, 3, seed=0)

    def model():
        m = loopnet.Model()
        m.add(loopnet.Dense(2, 64, seed=0))
        m.add(loopnet.ReLU())
        m.add(loopnet.Dense(64, 3, seed=1))
        m.add(loopnet.Softmax())
        m.set(loss=loopnet.CategoricalCrossentropy(),
              optimizer=loopnet.Adam(learning_rate=0.05, decay=5e-7),
              accuracy=loopnet.CategoricalAccuracy())
        m.finalize()
        return m

    result = {"relu": median_us(lambda: ops.relu_forward(x), 2000),
              "dense": median_us(lambda: ops.dense_forward(a, w, b), 2000)}
    model().train(X, y, epochs=20, print_every=0)  # compile or load, warm up
    epochs = []
    for _ in range(5):
        m = model()
        start = time.perf_counter()
        m.train(X, y, epochs=400, print_every=0)
        epochs.append((time.perf_counter() - start) / 400 * 1e6)
    result["epoch"] = statistics.median(epochs)
    # an MNIST-sized model (784-128-10, Adam, batches of 128) on 6,000 random rows
    X_big = rng.random((6000, 784), dtype=np.float32)
    y_big = rng.integers(0, 10, 6000)

    def mnist_model():
        m = loopnet.Model()
        seeds = np.random.RandomState(0)
        m.add(loopnet.Dense(784, 128, seed=seeds))
        m.add(loopnet.ReLU())
        m.add(loopnet.Dense(128, 10, seed=seeds))
        m.add(loopnet.Softmax())
        m.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(),
              accuracy=loopnet.CategoricalAccuracy())
        m.finalize()
        return m

    mnist_model().train(X_big, y_big, epochs=1, batch_size=128, print_every=0)
    passes = []
    for _ in range(5):
        m = mnist_model()
        start = time.perf_counter()
        m.train(X_big, y_big, epochs=2, batch_size=128, print_every=0)
        passes.append((time.perf_counter() - start) / 2 * 1e6)
    result["mnist"] = statistics.median(passes)
    result.update(loopnet.threads.info())
    return result


def _range(values, digits) -> str:
    return (f"{statistics.median(values):.{digits}f}"
            + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""))


def _line(name: str, runs: list) -> str:
    """One set-up's results: medians over rounds, (min-max) when there are several."""
    r = runs[0]
    head = f"{name:<15} {r['layer']:<9} {r['threads']} threads "
    if "epoch" in r:
        return head + "  ".join(f"{key} {_range([x[key] for x in runs], 1)} us"
                                for key in ("relu", "dense", "epoch", "mnist"))
    pairs = ", ".join(f"{q:.2f}/{b:.2f}" for x in runs
                      for q, b in zip(x["quiet_runs"], x["busy_runs"]))
    return (head + f"quiet {_range([x['quiet'] for x in runs], 2)} s"
            f" (cpu {_range([x['quiet_cpu'] for x in runs], 2)} s)"
            f"  busy {_range([x['busy'] for x in runs], 2)} s"
            f" (cpu {_range([x['busy_cpu'] for x in runs], 2)} s)"
            f"  ratio {_range([x['ratio'] for x in runs], 1)}x   runs quiet/busy: {pairs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="quiet/busy pairs (default 3)")
    parser.add_argument("--per-call", action="store_true",
                        help="instead: per-call times of small parallel kernels and of a "
                        "Model.train epoch (no competitor)")
    parser.add_argument("--compare", action="store_true",
                        help="each threading set-up in a fresh process")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="with --compare: a comma list of " + ", ".join(SETUPS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --compare: run the set-ups this many times, alternating")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        result = per_call() if args.per_call else measure(args.epochs, args.repeats)
        print(json.dumps(result))
        return
    what = ("per call, median (min-max over rounds)" if args.per_call
            else f"chapter-10 loop, {args.epochs} epochs")
    print(f"{what}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    setups = args.setups.split(",") if args.compare else ["this set-up"]
    results = {name: [] for name in setups}
    for _ in range(args.rounds if args.compare else 1):
        for name in setups:
            env = dict(os.environ, **SETUPS.get(name, {}))
            command = [sys.executable, __file__, "--epochs", str(args.epochs),
                       "--repeats", str(args.repeats), "--json"]
            out = subprocess.run(command + (["--per-call"] if args.per_call else []),
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:<15} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            results[name].append(json.loads(out.stdout.splitlines()[-1]))
    for name in setups:
        if results[name]:
            print(_line(name, results[name]), flush=True)


if __name__ == "__main__":
    main()
