"""How long one core takes to read memory the other core has just written, against memory it
wrote itself: a probe of the machine behind the benchmarks' parallel numbers.

    python benchmarks/cross_core.py            # --size-kb 256 --rounds 300

A thread pinned to CPU ``--writer`` writes a buffer; the main thread, pinned to CPU 0, then
copies it, and the copy is timed (median over the rounds). With the writer on CPU 0 both are
on one core. On the 2-core machine of BENCHMARKS.md the two numbers were ~5.7 us and 6.4-14.3 us
for 256 KB, moving from one period to the next ("Measured: chapter 17's loop in two modes of
this machine"). Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np


def copy_after_write(writer_cpu: int, size: int, rounds: int) -> float:
    """Median microseconds for CPU 0 to copy ``size`` float32 values that ``writer_cpu`` has
    just written."""
    source = np.random.default_rng(0).random(size, dtype=np.float32)
    shared = np.empty(size, np.float32)
    copy = np.empty(size, np.float32)
    go = [threading.Event() for _ in range(rounds)]
    done = [threading.Event() for _ in range(rounds)]

    def writer():
        os.sched_setaffinity(0, {writer_cpu})
        for k in range(rounds):
            go[k].wait()
            np.copyto(shared, source)
            done[k].set()

    os.sched_setaffinity(0, {0})
    thread = threading.Thread(target=writer)
    thread.start()
    times = []
    for k in range(rounds):
        go[k].set()
        done[k].wait()
        start = time.perf_counter()
        np.copyto(copy, shared)
        times.append(time.perf_counter() - start)
    thread.join()
    return statistics.median(times) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--writer", type=int, default=1, help="the other core's CPU number")
    options = parser.parse_args(argv)
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs Linux and two CPUs to pin the threads to")
    size = options.size_kb * 1024 // 4
    same = copy_after_write(0, size, options.rounds)
    other = copy_after_write(options.writer, size, options.rounds)
    print(f"{options.size_kb} KB written on CPU 0, copied on CPU 0: {same:.1f} us; "
          f"written on CPU {options.writer}: {other:.1f} us ({other / same:.2f}x)")


if __name__ == "__main__":
    main()
