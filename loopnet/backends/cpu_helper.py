"""A second process that compiles the training step's kernels while this one compiles the step
(and a learner's loop's backward kernels while this one runs its first forward pass: ``Ahead``,
at the end of this file).

numba compiles one function at a time in a process (a global lock), and a cold build of the
training step is mostly compile: the step itself (typing, lowering, LLVM: ~3 s for the
``loopnet train`` model on 2 cores) and the 15 kernels it calls (~3.7 s). The step calls its
kernels by address (``cpu.bind_kernel_symbol``), so it needs their machine code only when its
own is made, not while it is typed or lowered. So, while numba types a build of the step, the
kernels it calls and their argument types are noted here, not compiled, and a helper process
starts (importing numba and loopnet meanwhile); when numba starts lowering the step, the helper
starts compiling those kernels into numba's cache (the one this process reads), and when the
step's machine code is about to be made, this process compiles
the kernels the helper has not taken (from the other end of the list), waits for the helper's,
and loads them from the cache. Measured in BENCHMARKS.md, "Then: a helper process compiles the
step's kernels".

Each kernel is compiled by one process only, all its argument types together: no kernel is
compiled twice, and no two processes add entries to one function's cache index at once (which
``cpu_cache`` makes safe, at the cost of a wait). The helper is handed one kernel at a time,
from a queue both processes take from under a lock, and this process compiles nothing the
helper holds until the helper says it is done with it, or has exited.

What the helper makes is only ever read back through numba's cache, as any cached kernel is: the
same machine code, so the same bits, as compiled here. It runs when numba caches to disk (the
kernels' cache is not a ``NullCache``), at least two CPUs are available to this process and
``LOOPNET_COMPILE_HELPER`` is not ``0``; without it (or when it fails to start, dies or stalls)
this process compiles every kernel itself, as before.
"""

from __future__ import annotations

import base64
import collections
import os
import pickle
import subprocess
import sys
import threading
import time

ENV_VAR = "LOOPNET_COMPILE_HELPER"

# How long this process waits for a kernel the helper holds before it stops the helper and
# compiles the kernel itself (a kernel compiles in well under a second; a stalled helper must not
# hang training).
WAIT_SECONDS = 120.0


# numba reads its settings (NUMBA_CACHE_DIR, NUMBA_OPT, the CPU's name and features, ...) from
# the environment when it is imported, as the cpu backend imports it with this module: the helper
# is given these, not what the environment may hold by the time it starts.
_NUMBA_ENVIRONMENT = {key: value for key, value in os.environ.items() if key.startswith("NUMBA_")}


def command(package: str) -> list:
    """The helper's command line: this Python, running ``main`` below from the loopnet in
    ``package`` (a folder added at the end of the helper's import path: where this process
    found loopnet without it, the helper does too, and checks that it is the same)."""
    return [sys.executable, "-c", f"import sys; sys.path.append({package!r}); "
            "from loopnet.backends.cpu_helper import main; main()"]


def enabled() -> bool:
    """Whether a helper may start: not turned off, two CPUs or more, not a frozen or embedded
    application (whose ``sys.executable`` is not Python, or empty)."""
    if (os.environ.get(ENV_VAR, "1") == "0" or getattr(sys, "frozen", False)
            or not sys.executable):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:              # (not on Linux)
        cpus = os.cpu_count() or 1
    return cpus >= 2


def caches_to_disk(dispatcher) -> bool:
    from numba.core.caching import NullCache

    return not isinstance(getattr(dispatcher, "_cache", None), (NullCache, type(None)))


def _send(process, payload) -> None:
    process.stdin.write(base64.b64encode(pickle.dumps(payload)) + b"\n")
    process.stdin.flush()


def _spawn(build):
    """A helper process, told ``build`` (what it compiles from), or None when it cannot start."""
    import loopnet

    package = os.path.dirname(os.path.dirname(os.path.abspath(loopnet.__file__)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    env.update(_NUMBA_ENVIRONMENT)
    env[ENV_VAR] = "0"
    process = None
    try:
        process = subprocess.Popen(command(package), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        _send(process, (build, os.path.abspath(loopnet.__file__)))
    except (OSError, ValueError, TypeError):
        if process is not None:
            process.kill()
            process.wait()
        return None
    return process


def _serve(owner, process) -> None:
    """Hand the helper work each time it asks (``ready``, ``done``, ``fail``), as ``owner`` (a
    ``Handover`` or an ``Ahead``) gives it (``owner.take()``), until it has none: the helper is
    then told to exit."""
    try:
        for line in process.stdout:
            word = line.strip()
            if word not in (b"done", b"fail", b"ready"):
                continue
            with owner.lock:
                if word == b"ready":
                    owner.ready = True
                else:
                    if word == b"done":
                        owner.helped.append(owner.current)
                    owner.held[owner.current].set()
            work = owner.take()
            if work is None:
                process.stdin.close()       # (the helper exits)
                break
            _send(process, work)
    except (OSError, ValueError):           # the helper has gone, or was stopped
        pass
    finally:
        try:
            process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with owner.lock:
            for event in owner.held.values():   # (it does nothing any more)
                event.set()


class Handover:
    """The kernels one build of the step calls, from its typing to its machine code (see the
    module docstring). ``cpu.compile_for`` opens one around numba's compile of the step."""

    def __init__(self, build, step_name: str):
        self.build = build
        self.step_name = step_name
        self.kernels = {}               # qualname -> dispatcher
        self.signatures = {}            # qualname -> [argtypes, ...] not compiled when typed
        self.queue = None               # qualnames nobody has taken, once lowering started
        self.queued = threading.Event()     # set then (or when the hand-over ends)
        self.compiled = ()              # the qualnames the queue started with
        self.lock = threading.Lock()
        self.held = {}                  # qualname -> Event set when the helper is done with it
        self.current = None             # the qualname the helper holds now
        self.helped = []                # qualnames the helper compiled
        self.binds = []                 # the step library's symbols, bound before its code
        self.process = None
        self.ready = False              # the helper has started and asks for work
        self.finished = False

    # -- while numba types the step ------------------------------------------------------------
    def typed(self, dispatcher, qualname: str, argtypes: tuple) -> None:
        """The step calls kernel ``qualname`` with ``argtypes``, which it has no build for. The
        first such kernel starts the helper: it imports numba and loopnet (~0.5 s) while numba
        types the rest of the step, and asks for work when it is ready."""
        if not self.kernels and enabled() and caches_to_disk(dispatcher):
            self._start()
        self.kernels[qualname] = dispatcher
        signatures = self.signatures.setdefault(qualname, [])
        if argtypes not in signatures:
            signatures.append(argtypes)

    # -- when numba lowers the step --------------------------------------------------------------
    def lowering(self, library, bind) -> bool:
        """Called by each kernel call's code generation with ``bind`` (binds the call's symbol
        to the kernel's machine code, compiling it first): in the step's own library (not a
        helper function's, compiled while the step is typed) the first call lists the kernels
        for the helper to take, and makes the library compile the rest and run every ``bind``
        before its machine code is made; returns whether ``bind`` waits for then (else the
        caller runs it now)."""
        if library.name != self.step_name or not hasattr(library, "_finalize_final_module"):
            return False                # (a numba without the hook: bound at once, as before)
        self.binds.append(bind)
        if self.queue is not None:
            return True
        self.queue = collections.deque(
            name for name, signatures in self.signatures.items()
            if any(s not in self.kernels[name].overloads for s in signatures))
        self.compiled = tuple(self.queue)
        self.queued.set()
        original = library._finalize_final_module

        def finalize():
            self.finish()
            for bind_now in self.binds:
                bind_now()
            original()

        library._finalize_final_module = finalize
        return True

    def _start(self) -> None:
        self.process = _spawn(self.build)
        if self.process is not None:
            threading.Thread(target=_serve, args=(self, self.process),
                             name="loopnet compile helper", daemon=True).start()

    def take(self):
        """The helper asks for work: the next kernel nobody has taken, with its argument types,
        once numba has typed the whole step; None when there is none."""
        self.queued.wait()
        with self.lock:
            name = self.queue.popleft() if self.queue and not self.finished else None
            self.current = name
            if name is None:
                return None
            self.held[name] = threading.Event()
        return name, self.signatures[name]

    # -- before the step's machine code is made -------------------------------------------------
    def finish(self) -> None:
        """Compile the kernels nobody has taken, last first, then wait for the helper's."""
        while True:
            with self.lock:
                name = self.queue.pop() if self.queue else None
            if name is None:
                break
            for argtypes in self.signatures[name]:
                self.kernels[name].compile(argtypes)
        with self.lock:
            self.finished = True
            waiting = list(self.held.values())
        for event in waiting:
            if not event.wait(WAIT_SECONDS):
                self._stop(kill=True)
                break

    def close(self) -> None:
        """After numba's compile of the step, whatever happened: the helper stops. It is killed
        when it still holds a kernel (numba's compile failed, or ``finish`` never ran) or has
        not started yet; else, idle, it is told to exit."""
        with self.lock:
            self.finished = True
            self.queued.set()
            busy = (not self.ready or (self.current is not None
                                       and not self.held[self.current].is_set()))
        if self.process is not None and busy:
            self._stop(kill=True)
        global last
        last = {"step": self.step_name, "kernels": list(self.compiled),
                "helped": list(self.helped), "helper": self.process is not None}

    def _stop(self, kill: bool) -> None:
        process = self.process
        if kill and process.poll() is None:
            process.kill()
        process.wait()
        for event in list(self.held.values()):
            event.set()


# What the last hand-over did: its step, the kernels compiled while numba lowered it, those the
# helper compiled, and whether a helper started (read by the tests).
last: dict = {}

_local = threading.local()      # (numba compiles in the thread that calls; each has its own)


def current() -> Handover | None:
    """The hand-over of the step numba is compiling in this thread, if any."""
    return getattr(_local, "handover", None)


class opened:
    """``with opened(build, step_name):`` numba's compile of a build of the step."""

    def __init__(self, build, step_name: str):
        self.handover = Handover(build, step_name)

    def __enter__(self) -> Handover:
        self.outer, _local.handover = current(), self.handover
        return self.handover

    def __exit__(self, *exc) -> None:
        _local.handover = self.outer
        self.handover.close()


# --- A learner's loop: a layer's backward compiled while this process compiles the forward --------
# A loop written as the book writes it (``dense1.forward(X)`` ... ``dense1.backward(...)``)
# compiles each kernel when it is first called, one after the other: on a fresh cache, the
# chapter-10 loop's first epoch is ~3.5 s of compiles, ~1.9 s of them its backward pass. A
# layer's forward already says which kernels its backward will run (its sides give the forms:
# ``cpu.dense_plan``), so when a forward on ``cpu`` follows a compile in this process (the cache
# is cold), the cpu device hands the helper that layer's backward as jobs (``cpu.ahead_jobs``),
# which it runs once on zeros (``cpu.run_ahead``): numba compiles those kernels into its cache
# for the very argument types the backward passes, while this process goes on with the forward
# pass. At the first backward this process runs the jobs the helper has not taken (from the other
# end of the queue), waits for the one it holds, and lets it go: every kernel is then loaded, not
# compiled. Nothing a job computes is kept; a kernel numba finds in the cache is the one it would
# have compiled here (the same machine code, so the same bits). Turned off, failed or stalled,
# the helper costs nothing but the wait below: this process compiles what it needs, as before.

AHEAD = "ahead"     # the helper's build: ``cpu.run_ahead`` jobs, not a step's kernels


class Ahead:
    """The jobs of one cold pass of a learner's loop: from the first compile in this process to
    the first backward (``ops.ahead`` while it lasts)."""

    def __init__(self, run, handed_over=None, optional=None):
        self.run = run                  # runs a job here (``cpu.run_ahead``)
        # whether a job is one the first backward does not need (``cpu``: a lane, made for the
        # loop's later steps): never run here, and the helper may go on with such jobs after
        # the first backward, unwaited for (this process makes what it has not made in time)
        self.optional = optional or (lambda job: False)
        # jobs handed over before, by this pass or an earlier one sharing the set (the cpu
        # device's passes share one: a kernel made once is not handed over again)
        self.handed_over = set() if handed_over is None else handed_over
        self.wanted = True              # forwards still hand over their layers' backwards
        self.jobs = []                  # the jobs this pass was handed
        self.queue = collections.deque()    # jobs nobody has taken
        self.lock = threading.Condition()
        self.held = {}                  # job -> Event set when the helper is done with it
        self.taken_at = {}              # job -> when the helper took it (time.monotonic())
        self.current = None             # the job the helper holds now
        self.helped = []                # jobs the helper ran
        self.ran_here = []              # jobs this process ran (at the first backward)
        self.process = None
        self.ready = False
        self.finished = False

    def add(self, jobs) -> int:
        """Queue the ``jobs`` not handed over before (the first starts the helper, when
        ``enabled``); returns how many were new (none once the pass has ended)."""
        with self.lock:
            if self.finished:
                return 0
            new = [job for job in dict.fromkeys(jobs) if job not in self.handed_over]
            start = bool(new) and not self.jobs
            self.handed_over.update(new)
            _optional_owners.update((job, self) for job in new if self.optional(job))
            self.jobs += new
            self.queue.extend(new)
            self.lock.notify_all()
        if start and enabled():
            process = _spawn(AHEAD)
            with self.lock:
                self.process = process
            if process is not None:
                threading.Thread(target=_serve, args=(self, process),
                                 name="loopnet compile helper", daemon=True).start()
        return len(new)

    def take(self):
        """The helper asks for work: the next job nobody has taken (waiting for one), the
        needed ones first; None once the pass has ended (but for optional jobs)."""
        with self.lock:
            while not self.queue and not self.finished:
                self.lock.wait()
            # the jobs the first backward needs first, in turn; then the optional ones (after
            # the pass has ended, only those: this process ran the others)
            job = next((job for job in self.queue if not self.optional(job)), None)
            if job is None or self.finished:
                job = next((job for job in self.queue if self.optional(job)), None)
            if job is not None:
                self.queue.remove(job)
            self.current = job
            if job is not None:
                self.held[job] = threading.Event()
                self.taken_at[job] = time.monotonic()
        return job

    def finish(self) -> None:
        """The first backward: run the jobs nobody has taken, last first, then wait for the
        helper's (stopped when it stalls, or is still starting up)."""
        while True:
            with self.lock:
                needed = [job for job in self.queue if not self.optional(job)]
                job = needed[-1] if needed else None
                if job is not None:
                    self.queue.remove(job)
            if job is None:
                break
            self.ran_here.append(job)
            try:
                self.run(job)
            except Exception:       # noqa: BLE001 - the backward itself compiles and reports it
                pass
        with self.lock:
            self.finished = True
            self.lock.notify_all()
            waiting = [event for job, event in self.held.items() if not self.optional(job)]
        for event in waiting:
            if not event.wait(WAIT_SECONDS):
                break
        with self.lock:
            busy = not self.ready or (self.current is not None and not self.optional(
                self.current) and not self.held[self.current].is_set())
            process = self.process
        if process is not None and busy and process.poll() is None:
            process.kill()
        if self.jobs:
            global last_ahead
            last_ahead = {"jobs": len(self.jobs), "helped": list(self.helped),
                          "ran_here": list(self.ran_here), "helper": process is not None}

    def pending(self, job) -> bool:
        """Whether the helper, still running, has ``job`` to do: queued, or in its hands (for
        WAIT_SECONDS at most: a helper stalled on it is stopped)."""
        with self.lock:
            process = self.process
            if process is None or process.poll() is not None:
                return False
            if job in self.queue:
                return True
            done = self.held.get(job)
            if done is None or done.is_set():
                return False
            if time.monotonic() - self.taken_at[job] < WAIT_SECONDS:
                return True
        process.kill()          # (``_serve`` reaps it and lets its jobs go)
        return False


# The pass each optional job was handed to (this process's: forgotten in a forked child).
_optional_owners: dict = {}


def making(job) -> bool:
    """Whether a helper is making (or is to make) the optional ``job``: its caller then goes on
    without it rather than make it too (a lane: the layer's usual path meanwhile)."""
    owner = _optional_owners.get(job)
    return owner is not None and owner.pending(job)


def _forget_in_child() -> None:
    _optional_owners.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


# What the last learner's-loop hand-over with jobs did (read by the tests).
last_ahead: dict = {}


def main() -> None:
    """The helper process: read a build (a step's, or ``AHEAD``), then compile the kernels it
    is handed (or run the jobs: ``cpu.run_ahead``), one at a time, saying ``done`` (or ``fail``:
    this process then compiles it and meets the error) after each."""
    import warnings

    read, write = sys.stdin.buffer, sys.stdout.buffer

    def receive():
        line = read.readline()
        return pickle.loads(base64.b64decode(line)) if line.strip() else None

    def say(word: bytes) -> None:
        write.write(word + b"\n")
        write.flush()

    first = receive()
    if first is None:
        return
    build, package_file = first
    import loopnet
    from loopnet.backends import cpu

    if os.path.abspath(loopnet.__file__) != package_file:
        return                          # another copy of loopnet: its cache is not the caller's
    if build == AHEAD:
        run = cpu.run_ahead
    else:
        kernels = {}
        for kernel in cpu._kernels_of_the_step(build).values():
            dispatcher = getattr(kernel, "kernel", kernel)
            kernels[dispatcher.py_func.__qualname__] = dispatcher

        def run(job):
            name, signatures = job
            for argtypes in signatures:
                kernels[name].compile(argtypes)
    say(b"ready")
    warnings.simplefilter("ignore")
    while True:
        job = receive()
        if job is None:
            return
        try:
            run(job)
        except Exception:               # noqa: BLE001 - the caller compiles it and reports it
            say(b"fail")
        else:
            say(b"done")
