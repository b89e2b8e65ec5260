"""Threads, processes and numba's threading layer for the ``cpu`` device.

numba runs a ``parallel=True`` kernel on one of three threading layers, chosen once per process
when it starts; loopnet starts it when the cpu backend loads, at the first op on ``cpu``
(``numba.threading_layer()`` and ``info()`` say which):

============  ============  ==========  ==================================================
layer         thread-safe   fork-safe   where it comes from
============  ============  ==========  ==================================================
``tbb``       yes           yes         the ``tbb`` package (a dependency of loopnet on
                                        x86-64 Linux and Windows)
``omp``       yes           no (GNU)    the system's OpenMP runtime (libgomp on Linux)
``workqueue`` no            yes         numba itself, the fallback
============  ============  ==========  ==================================================

``configure()`` (run once by ``loopnet.backends.cpu`` before anything compiles) makes loopnet
safe on each of them, without overriding what a user chose through numba's own settings:

- numba looks for TBB's library on the system's library path only, where ``pip install tbb``
  does not put it; loopnet loads it from the ``tbb`` package, so numba's default order
  (tbb, omp, workqueue) finds it. ``NUMBA_THREADING_LAYER`` still picks another layer.
- GNU OpenMP's threads spin for a while after each parallel region, which on a busy machine
  takes the core from the thread that has work: loopnet asks it to sleep at once
  (``OMP_WAIT_POLICY=passive``) unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.
- workqueue aborts the process when two threads enter it at once: ``serialized`` puts a lock
  around loopnet's parallel builds there, so threads take turns.
- waking threads costs more on some layers than on the spinning OpenMP the cpu backend's
  size thresholds were tuned with: ``parallel_min_scale()`` scales them (measured in
  BENCHMARKS.md, "Threads on a shared machine").
- GNU OpenMP cannot run in a process forked from one that started it (numba stops the child):
  in such a child ``parallel_allowed()`` is False and every kernel runs its serial build, which
  computes the same numbers.

``info()`` reports what runs. Results never depend on the layer or the thread count: every
kernel gives each output element one owner, and its serial and parallel builds compute it in
the same order.
"""

from __future__ import annotations

import os
import sys
import threading

# Layers by what numba's documentation guarantees (GNU OpenMP is the one omp that is not
# fork-safe; numba's omppool says which vendor it was built against).
THREAD_SAFE = {"tbb": True, "omp": True, "workqueue": False}
_CHOICES = ("default", "tbb", "omp", "workqueue", "safe", "threadsafe", "forksafe")

_configured = False
_allowed = True           # False in a forked child whose parent started a non-fork-safe layer
_reason = None            # why parallel builds are off, for info()
_lock = threading.Lock()  # serializes parallel builds under workqueue
_layer = None             # numba.threading_layer(), once started
_omp_spins = False        # OpenMP's threads spin between kernels (the user's wait policy)
_tbb_library = None       # path of the TBB library loopnet loaded, if it did


def parallel_allowed() -> bool:
    """Whether loopnet may run a kernel's parallel build in this process now; when False every
    kernel runs its serial build (same results). False only in a process forked from one whose
    threading layer cannot be used after ``fork()`` (GNU OpenMP)."""
    return _allowed


def configure() -> None:
    """Prepare numba's threading layer for loopnet, once per process, before the first
    parallel kernel: find TBB, quiet OpenMP's spinning threads, start the layer (so that it is
    known from here on), and register what a forked child must do."""
    global _configured, _layer
    if _configured:
        return
    import numba

    requested = str(numba.config.THREADING_LAYER).lower()
    if requested not in _CHOICES:
        raise ValueError(f"NUMBA_THREADING_LAYER={requested!r} is not a numba threading layer; "
                         f"use one of {', '.join(_CHOICES)}")
    if requested in ("default", "tbb", "safe", "threadsafe"):
        _load_tbb()
    global _omp_spins
    set_wait_policy = not ({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ))
    _omp_spins = not set_wait_policy and os.environ.get("OMP_WAIT_POLICY", "").lower() != "passive"
    if set_wait_policy:
        # libgomp reads it once, when it is loaded, which starting the layer below does
        # (unless another library loaded it first); then it is taken back out of the
        # environment, so that neither other libraries nor child processes inherit it.
        os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        numba.get_num_threads()   # starts the threading layer
    except ValueError as err:     # numba: the requested layer cannot be loaded
        raise ValueError(f"NUMBA_THREADING_LAYER={requested!r} cannot be used here "
                         f"({' '.join(str(err).split())}); unset it to let numba choose") from None
    finally:
        if set_wait_policy:
            os.environ.pop("OMP_WAIT_POLICY", None)
    _layer = numba.threading_layer()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _configured = True


def parallel_min_scale() -> int:
    """How many times more work than the cpu backend's thresholds (``PARALLEL_MIN``,
    ``PARALLEL_MIN_ELEMENTS``, tuned with OpenMP's threads spinning) a kernel needs before its
    parallel build pays, on the layer that runs (BENCHMARKS.md, "Threads on a shared
    machine"): TBB's workers cost ~5 us more per parallel kernel than spinning OpenMP's (a
    65,536-element ReLU: 16 us against 11 serial), so 4; sleeping workers (OpenMP told to be
    passive, workqueue) take ~70-100 us to wake (83 and 111 us against 11), so 20; OpenMP
    spinning as its user asked, 1."""
    if _layer == "tbb":
        return 4
    if _layer == "omp" and not _omp_spins:
        return 20
    if _layer == "workqueue":
        return 20
    return 1


def _fork_safe(layer) -> bool:
    if layer != "omp":
        return True
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") != "GNU"


def _after_fork_in_child() -> None:
    global _lock, _allowed, _reason
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _layer is not None and not _fork_safe(_layer) and _allowed:
        _allowed = False
        _reason = (f"forked from a process that started the {_layer} threading layer, which "
                   "cannot run after fork(): kernels run serially here; use the 'spawn' start "
                   "method of multiprocessing, or the tbb layer (pip install tbb), to run them "
                   "in parallel")


def _load_tbb() -> None:
    """Load the library of the ``tbb`` package, if it is installed and numba could not find
    it on its own (it looks only on the system's library path): numba's check and its tbb
    layer then use the loaded one."""
    global _tbb_library
    name = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
    import ctypes

    try:
        ctypes.CDLL(name)
        return                    # on the library path already: numba finds it
    except OSError:
        pass
    for path in _tbb_candidates(name):
        try:
            ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        except OSError:
            continue
        _tbb_library = path
        return


def _tbb_candidates(name):
    """Where the ``tbb`` package put its library: the prefix's lib (Library/bin on Windows),
    then whatever its installed file list says."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield os.path.join(prefix, "Library", "bin" if sys.platform == "win32" else "lib", name)
        yield os.path.join(prefix, "lib", name)
    try:
        from importlib import metadata

        files = metadata.files("tbb") or []
    except Exception:  # not installed, or no file list
        return
    for file in files:
        if file.name == name:
            yield os.fspath(file.locate())


def serialized(kernel):
    """A parallel build as it is, or under the workqueue layer (which aborts the process when
    two threads enter it at once) behind a lock, so that Python threads take turns."""
    if _layer != "workqueue":
        return kernel
    return _Serialized(kernel)


class _Serialized:
    """Calls ``kernel`` holding the module's lock; any other attribute is the kernel's."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args):
        with _lock:
            return self.kernel(*args)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def info() -> dict:
    """What runs loopnet's parallel kernels in this process::

        {'layer': 'tbb', 'threads': 2, 'thread_safe': True, 'fork_safe': True,
         'parallel': True, 'reason': None}

    ``layer``: numba's threading layer; ``threads``: the threads a parallel kernel uses
    (``numba.get_num_threads()``; change it with ``numba.set_num_threads`` or
    ``NUMBA_NUM_THREADS``); ``thread_safe``/``fork_safe``: what the layer itself guarantees
    (loopnet is safe on every layer: see the module docstring); ``parallel``: whether kernels
    may run their parallel builds here (``reason`` says why not). Imports the cpu backend.
    """
    import numba

    from loopnet.backends import cpu  # noqa: F401  (runs configure())

    return {
        "layer": _layer,
        "threads": numba.get_num_threads(),
        "thread_safe": THREAD_SAFE.get(_layer, False),
        "fork_safe": _fork_safe(_layer),
        "parallel": _allowed,
        "reason": _reason,
    }
