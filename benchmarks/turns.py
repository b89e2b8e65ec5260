"""Two versions of loopnet side by side, taking turns: for a change measured on a noisy machine.

On a shared machine the speed of a run moves by more than most changes (1.5x between runs a
minute apart, here). Two long-lived processes, one importing each version of loopnet, take
turns running the same short job; each pair of neighbouring turns shares the machine's state
of the moment, so the median of their ratios measures the change where the runs themselves
do not::

    git worktree add ../before HEAD~1
    python benchmarks/turns.py --before ../before ch10 ch16 model:ch17

Jobs: ``ch10``, ``ch14``, ``ch16``, ``ch17`` (the book's chapter loops with ``loopnet.nnfs``,
``chapter_loops.py``), ``model:<name>`` (``Model.train`` of a ``book_models`` model on cpu,
``bench.py``'s ``build_book_model``), ``callback:<name>`` (the same with a callback that does
nothing: one compiled block per epoch) and ``call:<name>`` (a ``train(epochs=1)`` call per
epoch: each call's set-up included). ``--after`` defaults to this checkout. Both processes run
this directory's benchmark code; only ``loopnet`` differs. Prints, per job, the median ratio
before / after with its quartiles and each side's best and median per-epoch time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker() -> None:
    """Read ``<job> <epochs>`` lines, answer each with microseconds per epoch."""
    sys.path.insert(0, HERE)
    import chapter_loops
    import loopnet.callbacks
    import loopnet.nnfs

    datas, models = {}, {}
    for line in sys.stdin:
        job, epochs = line.split()
        epochs = int(epochs)
        if job.startswith(("model:", "callback:", "call:")):
            from bench import build_book_model
            from book_models import MODELS, model_data

            kind, name = job.split(":")
            # callback: a callback that does nothing, so that each epoch is a block of its own
            # (as with EarlyStopping or ModelCheckpoint)
            callbacks = [loopnet.callbacks.Callback()] if kind == "callback" else None
            if name not in models:
                model, data = build_book_model(MODELS[name], "cpu"), model_data(MODELS[name])
                model.train(*data, epochs=20, print_every=0, progress=False)  # (compiles)
                models[name] = model, data
            model, (X, y) = models[name]
            start = time.perf_counter()
            if kind == "call":      # one train() call per epoch: its set-up every time
                for _ in range(epochs):
                    model.train(X, y, epochs=1, print_every=0, progress=False)
            else:
                model.train(X, y, epochs=epochs, print_every=0, progress=False,
                            callbacks=callbacks)
            seconds = time.perf_counter() - start
        else:
            if job not in datas:
                datas[job] = chapter_loops.chapter_data(job)
                chapter_loops.run_chapter(job, loopnet.nnfs, 100, datas[job])
            seconds = chapter_loops.run_chapter(job, loopnet.nnfs, epochs, datas[job]).seconds
        print(seconds / epochs * 1e6, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="*",
                        help="ch10 ch14 ch16 ch17 model:<name> callback:<name> call:<name> ...")
    parser.add_argument("--before", help="a checkout of the code before (required)")
    parser.add_argument("--after", default=os.path.dirname(HERE),
                        help="a checkout of the code after (default: this one)")
    parser.add_argument("--turns", type=int, default=16, help="pairs of turns per job")
    parser.add_argument("--epochs", type=int, default=300, help="epochs per turn")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker()
        return
    if not options.before or not options.jobs:
        parser.error("give --before and at least one job")

    def start(tree):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)

    before, after = start(options.before), start(options.after)

    def turn(process, job):
        process.stdin.write(f"{job} {options.epochs}\n")
        process.stdin.flush()
        answer = process.stdout.readline()
        if not answer:
            raise SystemExit(f"the worker for {job!r} stopped (see its error above)")
        return float(answer)

    print("| job | before / after: median (quartiles) | before: best, median | "
          "after: best, median |")
    print("|---|---|---|---|")
    try:
        for job in options.jobs:
            turn(before, job)
            turn(after, job)
            ratios, times_before, times_after = [], [], []
            for k in range(options.turns):
                if k % 2:              # (each goes first half the time)
                    b = turn(after, job)
                    a = turn(before, job)
                else:
                    a = turn(before, job)
                    b = turn(after, job)
                ratios.append(a / b)
                times_before.append(a)
                times_after.append(b)
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(f"| {job} | {statistics.median(ratios):.3f} ({q1:.2f}-{q3:.2f}) | "
                  f"{min(times_before):.1f}, {statistics.median(times_before):.1f} us | "
                  f"{min(times_after):.1f}, {statistics.median(times_after):.1f} us |",
                  flush=True)
    finally:
        for process in (before, after):
            process.stdin.close()
            process.wait()


if __name__ == "__main__":
    main()
