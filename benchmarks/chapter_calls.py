"""Where a chapter loop's epoch goes: the time of each ``loopnet.nnfs`` method the loop calls
(``chapter_loops.py``'s loops, run as they are), summed per epoch, against the whole epoch::

    python benchmarks/chapter_calls.py ch16     # or ch10, ch14, ch17; --epochs N, --device D

Every method of the book's interface (``forward``, ``backward``, ``calculate``, ...) of every
class the loop uses is wrapped in a timer, outermost calls only (a loss's ``calculate`` calling
its ``forward`` counts once). What is left of the epoch is the loop's own numpy (the accuracy)
and Python, less what the timers cost around the methods (measured on a method that does
nothing, ~1 us a call; each method's own time includes ~0.1 us of it).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chapter_loops import CHAPTERS, chapter_data, run_chapter  # noqa: E402

METHODS = ("forward", "backward", "calculate", "regularization_loss", "pre_update_params",
           "update_params", "post_update_params")


def timed_namespace(namespace, totals, counts):
    """A namespace of ``namespace``'s classes whose methods add their time to ``totals``."""
    depth = [0]

    def timed(method, label):
        @functools.wraps(method)
        def run(*args, **kwargs):
            if depth[0]:
                return method(*args, **kwargs)
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - start
                counts[label] += 1
                depth[0] -= 1
        return run

    timed_classes = types.SimpleNamespace()
    for name in dir(namespace):
        cls = getattr(namespace, name)
        if isinstance(cls, type) and not name.startswith("_"):
            methods = {m: timed(getattr(cls, m), f"{name}.{m}") for m in METHODS
                       if callable(getattr(cls, m, None))}
            setattr(timed_classes, name, type(name, (cls,), methods))
    return timed_classes


def main(argv=None) -> None:
    import loopnet
    import loopnet.nnfs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", choices=sorted(CHAPTERS))
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args(argv)
    data = chapter_data(options.chapter)
    with loopnet.device(options.device):
        run_chapter(options.chapter, loopnet.nnfs, 20, data)     # compile, first touches
        totals, counts = collections.Counter(), collections.Counter()
        namespace = timed_namespace(loopnet.nnfs, totals, counts)
        run_chapter(options.chapter, namespace, 20, data)
        totals.clear()
        counts.clear()
        seconds = run_chapter(options.chapter, namespace, options.epochs, data).seconds
    per_epoch = seconds / options.epochs * 1e6
    print(f"{options.chapter}: {CHAPTERS[options.chapter]}")
    print(f"epoch {per_epoch:.1f} us ({options.epochs} epochs on {options.device}, timers "
          "included)\n")
    print("| method | calls an epoch | us an epoch | us a call |")
    print("|---|---|---|---|")
    for label, total in totals.most_common():
        calls = counts[label] / options.epochs
        us = total / options.epochs * 1e6
        print(f"| {label} | {calls:g} | {us:.1f} | {us / calls:.2f} |")
    calls = sum(counts.values()) / options.epochs
    rest = per_epoch - sum(totals.values()) / options.epochs * 1e6 - calls * _timer_cost()
    print(f"| the loop's own numpy and Python | | {rest:.1f} | |")


def _timer_cost() -> float:
    """Microseconds a timer adds to a call outside the interval it measures (the median of 5
    rounds of a method that does nothing, timed and bare)."""
    class Nothing:
        def forward(self):
            pass

    totals, counts = collections.Counter(), collections.Counter()
    timed = timed_namespace(types.SimpleNamespace(Nothing=Nothing), totals, counts).Nothing()
    bare, n = Nothing(), 20_000
    rounds = []
    for _ in range(5):
        totals.clear()
        start = time.perf_counter()
        for _ in range(n):
            bare.forward()
        middle = time.perf_counter()
        for _ in range(n):
            timed.forward()
        end = time.perf_counter()
        inside = totals["Nothing.forward"] - (middle - start)    # (beyond the bare call)
        rounds.append(((end - middle) - (middle - start) - inside) / n * 1e6)
    return sorted(rounds)[2]


if __name__ == "__main__":
    main()
