"""numba's disk cache, kept right when several processes fill it at once.

numba keeps one index file per cached function, mapping each signature to a data file, and
adds an entry by reading the index, picking the first free data file name, and writing both
back. Two processes adding *different* signatures of one function at the same moment (two
pytest-xdist workers on a fresh cache, a pool of processes training float32 and float64 models)
can both pick the same name: the index then names one process's machine code for the other's
argument types, and every later process loading that entry would run code compiled for other
types on its arrays (garbage, or memory it does not own). ``guard`` closes both ends of this:

- a process adds its entry holding an exclusive lock on a file beside the index, and reads
  entries holding a shared one (POSIX record locks: they belong to the process, so a child
  forked while one is held does not keep it; numba compiles one function at a time in a
  process, so its threads never meet here);
- an entry whose code was compiled for other argument types than those asked for counts as
  missing: it is dropped from the index, and the function compiles again (its code then saved
  under a data file of its own).

numba also checks that a cached function's own source file is unchanged, but not the files it
takes code and constants from (the loop bodies a kernel inlines from another kernel module): a
checkout or an edit of such a file alone would leave the old machine code in the cache, run as
the new. ``guard`` adds the stamp of those files (``sources_stamp``) to numba's own, so that
code cached before one of them changed is compiled again.

Where locking is not possible (no ``fcntl``, a read-only cache folder, a file system without
locks) only the second holds; a lock not had within ``LOCK_SECONDS`` (a process stopped while
holding it) is done without.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

try:
    import fcntl
except ImportError:         # (not on Windows: the signature check alone)
    fcntl = None

LOCK_SECONDS = 30.0
_sleep = time.sleep     # (between tries for the lock)


def sources_stamp(paths) -> tuple:
    """The name, modification time and size of each file (what numba's cache checks of a
    function's own source file), ``None`` for one that cannot be read."""
    stamp = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            stamp.append((os.path.basename(path), None))
        else:
            stamp.append((os.path.basename(path), status.st_mtime, status.st_size))
    return tuple(stamp)


def guard(dispatcher, sources=None):
    """``dispatcher`` (a ``numba.njit`` function with ``cache=True``), its cache guarded as
    the module docstring says; anything else is returned as it is. ``sources``: the
    ``sources_stamp`` of the other files its code depends on."""
    cache = getattr(dispatcher, "_cache", None)
    index = getattr(cache, "_cache_file", None)
    if index is None or getattr(cache, "guarded", False):
        return dispatcher
    if sources is not None and hasattr(index, "_source_stamp"):
        index._source_stamp = (index._source_stamp, sources)
    lock_path = index._index_path + ".lock"
    load, save = index.load, index.save
    load_overload = cache.load_overload

    def load_entry(key):
        with _locked(lock_path, exclusive=False):
            return load(key)

    def save_entry(key, data):
        with _locked(lock_path, exclusive=True):
            save(key, data)

    def checked_load_overload(sig, target_context):
        cres = load_overload(sig, target_context)
        if cres is None or tuple(cres.signature.args) == _argument_types(sig):
            return cres
        # Another signature's code under this entry: it is dropped from the index, so that
        # the code compiled now is saved under a data file of its own (written over the one
        # named, it would leave the other signature's entry wrong in turn), and compiled.
        try:
            key = cache._index_key(sig, target_context.codegen())
            with _locked(lock_path, exclusive=True):
                overloads = index._load_index()
                if overloads.pop(key, None) is not None:
                    index._save_index(overloads)
        except (AttributeError, OSError):   # (another numba, or a read-only cache)
            pass
        return None

    index.load, index.save = load_entry, save_entry
    cache.load_overload = checked_load_overload
    cache.guarded = True
    return dispatcher


def _argument_types(sig) -> tuple:
    from numba.core import sigutils

    return tuple(sigutils.normalize_signature(sig)[0])


@contextlib.contextmanager
def _locked(path: str, exclusive: bool):
    """Hold a shared or exclusive lock on ``path`` (made if missing) for the ``with`` block;
    without one where it cannot be had (see the module docstring)."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:         # (no cache folder yet, or a read-only one)
            fd = None
    try:
        if fd is not None:
            operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + LOCK_SECONDS
            while True:
                try:
                    fcntl.lockf(fd, operation)
                    break
                except OSError as error:
                    # held by another process: try again; no locks on this file system
                    # (ENOLCK, ...): without one at once
                    if (error.errno not in (errno.EACCES, errno.EAGAIN)
                            or time.monotonic() >= deadline):
                        break
                    _sleep(0.005)
        yield
    finally:
        if fd is not None:
            os.close(fd)        # (closing it releases the lock)
