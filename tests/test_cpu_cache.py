"""numba's disk cache shared by processes (``loopnet.backends.cpu_cache``): an index entry that
names code of other argument types is never run, and entries are added under a lock."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from numba.core import types

from loopnet.backends import cpu, cpu_cache

SOURCE = "def first_two(x):\n    return x[0] + x[1]\n"
FLOATS = (types.Array(types.float64, 1, "C"),)
INTEGERS = (types.Array(types.int64, 1, "C"),)


def _function(tmp_path):
    """A fresh function in a file of its own (its cache files are its own too)."""
    name = f"cached_{tmp_path.name}"
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.first_two


def _index(kernel):
    return kernel._cache._cache_file._load_index()


def test_an_entry_naming_code_of_other_types_is_compiled_again_and_mended(tmp_path):
    """What two processes adding different signatures at once can leave (the float64 code's
    data file named for int64 arrays too): the int64 call compiles rather than running the
    float64 code on int64 arrays (numba alone returned 3.5e-323 here, not 7), and the index
    is mended: each signature then loads its own code from the cache."""
    function = _function(tmp_path)
    kernel = cpu.njit(function, cache=True)
    assert kernel(np.array([1.5, 2.25])) == 3.75
    cache = kernel._cache
    codegen = kernel.targetctx.codegen()
    overloads = _index(kernel)
    overloads[cache._index_key(INTEGERS, codegen)] = overloads[cache._index_key(FLOATS, codegen)]
    cache._cache_file._save_index(overloads)

    again = cpu.njit(function, cache=True)
    assert again(np.array([3, 4])) == 7
    assert again.stats.cache_misses[INTEGERS] == 1
    assert len(set(_index(again).values())) == 2

    fresh = cpu.njit(function, cache=True)
    assert fresh(np.array([1.5, 2.25])) == 3.75 and fresh(np.array([3, 4])) == 7
    assert fresh.stats.cache_hits[FLOATS] == 1 and fresh.stats.cache_hits[INTEGERS] == 1
    assert not fresh.stats.cache_misses


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def locked_by_another_process():
    """``lock(path)``: another process holds the exclusive lock on ``path`` until the test
    ends or ``release()`` is called."""
    pytest.importorskip("fcntl")
    holders = []

    def lock(path):
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        holders.append(holder)
        return holder

    yield lock
    for holder in holders:
        holder.kill()
        holder.wait()


def _release(holder):
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)


def _lock_path(kernel):
    kernel._cache._impl.locator.ensure_cache_path()
    return kernel._cache._cache_file._index_path + ".lock"


def test_entries_are_read_and_added_under_the_lock(tmp_path, monkeypatch,
                                                  locked_by_another_process):
    """While another process holds the index's lock, a compile waits to read the index, and
    a save waits to add its entry (the index stays as it was); each goes on once the lock is
    free."""
    kernel = cpu.njit(_function(tmp_path), cache=True)
    waiting = threading.Event()

    def pause(seconds):
        waiting.set()
        threading.Event().wait(seconds)

    monkeypatch.setattr(cpu_cache, "_sleep", pause)

    def blocked_then_released(work):
        waiting.clear()
        holder = locked_by_another_process(_lock_path(kernel))
        thread = threading.Thread(target=work)
        thread.start()
        assert waiting.wait(60)
        assert thread.is_alive() and _index(kernel) == {}
        _release(holder)
        thread.join(60)
        assert not thread.is_alive()

    result = []     # the first call: reading the index waits, then it compiles and saves
    blocked_then_released(lambda: result.append(kernel(np.array([1.0, 2.0]))))
    assert result == [3.0] and len(_index(kernel)) == 1
    # its entry gone, saving the same code again: adding the entry waits
    kernel._cache._cache_file._save_index({})
    blocked_then_released(lambda: kernel._cache.save_overload(FLOATS, kernel.overloads[FLOATS]))
    assert len(_index(kernel)) == 1


def test_a_lock_not_had_in_time_is_done_without(tmp_path, monkeypatch,
                                                 locked_by_another_process):
    """A process that holds the lock and never lets go (stopped, say) costs a compile
    ``LOCK_SECONDS``, no hang: the entry is then added without the lock."""
    kernel = cpu.njit(_function(tmp_path), cache=True)
    locked_by_another_process(_lock_path(kernel))
    monkeypatch.setattr(cpu_cache, "LOCK_SECONDS", 0.2)
    assert kernel(np.array([1.0, 2.0])) == 3.0
    assert len(_index(kernel)) == 1


def _kernel_and_body(tmp_path, monkeypatch):
    """``(build, rewrite)``: ``build(sources)`` imports afresh a kernel file that calls a
    compiled body kept in another file and returns the kernel compiled with ``cache=True``,
    guarded with the stamp of ``sources`` (None: numba's own checks alone);
    ``rewrite(step)`` makes the body add ``step`` (same size, a later modification time)."""
    import importlib
    import os

    tmp_path.mkdir()
    body_name, kernel_name = f"body_{tmp_path.name}", f"kernel_{tmp_path.name}"
    body = tmp_path / f"{body_name}.py"
    (tmp_path / f"{kernel_name}.py").write_text(
        f"from {body_name} import body\n\ndef add(x):\n    return body(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    later = [os.stat(tmp_path).st_mtime]

    def rewrite(step):
        body.write_text(f"import numba\n\n@numba.njit\ndef body(x):\n    return x + {step}\n")
        later[0] += 10     # (a write within the file system's time resolution reads unchanged)
        os.utime(body, (later[0], later[0]))

    def build(sources):
        for name in (body_name, kernel_name):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        add = importlib.import_module(kernel_name).add
        stamp = None if sources is None else cpu_cache.sources_stamp([body])
        return cpu_cache.guard(numba.njit(cache=True)(add), stamp)

    return build, rewrite


def test_code_cached_before_a_file_it_takes_code_from_changed_is_compiled_again(
        tmp_path, monkeypatch):
    """numba's cache checks a function's own file, not those of the compiled functions it calls
    (a kernel's bodies from another kernel module): alone, it runs the old body's code after
    that file changed. With the stamp of that file added (as every cpu build has the kernel
    modules'), the code is compiled again; while nothing changes, it is loaded."""
    build, rewrite = _kernel_and_body(tmp_path / "numba_alone", monkeypatch)
    rewrite(1)
    assert build(None)(1) == 2
    rewrite(2)
    assert build(None)(1) == 2          # numba alone: the old body's code, from the cache

    build, rewrite = _kernel_and_body(tmp_path / "stamped", monkeypatch)
    rewrite(1)
    assert build(True)(1) == 2
    again = build(True)
    assert again(1) == 2 and not again.stats.cache_misses       # unchanged: loaded
    rewrite(2)
    changed = build(True)
    assert changed(1) == 3 and sum(changed.stats.cache_misses.values()) == 1


def test_every_build_of_the_cpu_device_is_guarded():
    """The kernels, their serial and parallel builds, the checks and the panel packer: each
    one's cache goes through ``cpu_cache``."""
    from numba.core.dispatcher import Dispatcher

    from loopnet.kernels import dense_fast

    found = []
    for value in [*vars(cpu).values(), dense_fast.pack_panel]:
        for candidate in (value, getattr(value, "serial", None), getattr(value, "parallel", None)):
            candidate = getattr(candidate, "kernel", candidate)    # (threads.serialized)
            if isinstance(candidate, Dispatcher):
                found.append(candidate)
    assert len(found) > 50
    assert [d.py_func.__name__ for d in found if not getattr(d._cache, "guarded", False)] == []
    # each with the stamp of every kernel module and of the device's own (its constants)
    assert {d._cache._cache_file._source_stamp[1] for d in found} == {cpu.SOURCES}
    names = {name for name, *_ in cpu.SOURCES}
    assert names >= {"dense.py", "dense_fast.py", "step.py", "cpu.py"}
    assert "examples.py" not in names             # (no compiled code: an edit compiles nothing)


def test_the_training_steps_cache_is_guarded_too():
    """A build of the compiled training step, made for a model (numba compiles it at its first
    call, not here)."""
    import loopnet
    from loopnet import compiled

    model = loopnet.Model()
    model.add(loopnet.Dense(2, 4, seed=0))
    model.add(loopnet.ReLU())
    model.add(loopnet.Dense(4, 3, seed=1))
    model.add(loopnet.Softmax())
    model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam(),
              accuracy=loopnet.CategoricalAccuracy())
    model.finalize()
    X = np.zeros((5, 2), np.float32)
    trainer = compiled.prepare_training(model, X, np.zeros(5, np.intp), None, None)
    step = cpu.training_step(trainer.run.build())
    trainer.run.release()
    assert getattr(step, "kernel", step)._cache.guarded


def test_a_file_system_without_locks_costs_no_wait(tmp_path, monkeypatch):
    """``lockf`` failing for want of locks (ENOLCK, as on some network file systems) is not a
    lock held by another process: the entry is added at once, without waiting."""
    fcntl = pytest.importorskip("fcntl")
    import errno

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    def never(seconds):
        raise AssertionError("waited for a lock that cannot be had")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    monkeypatch.setattr(cpu_cache, "_sleep", never)
    kernel = cpu.njit(_function(tmp_path), cache=True)
    assert kernel(np.array([1.0, 2.0])) == 3.0
    assert len(_index(kernel)) == 1
