"""Ctrl-C that always stops the command line, also while numba compiles.

Python runs a SIGINT handler between two bytecodes of the main thread, and the default one
raises ``KeyboardInterrupt`` there. While numba compiles, that place can be Python code that
C calls through ctypes (llvmlite's object-cache callbacks, which numba uses to store compiled
code): ctypes prints an exception raised there and ignores it, so the interrupt is lost and
the run goes on. Between such places, LLVM can also work for seconds in C without returning
to Python at all.

``interruptible()`` is a context manager that the command line puts around its work. While
it is active, a SIGINT is remembered until it has ended the ``with`` block:

- it raises ``KeyboardInterrupt`` at once, as Python's default handler does, unless it landed
  inside one of llvmlite's callbacks (where the exception would be lost): then it waits;
- a watchdog thread delivers it again every ``RETRY`` seconds,
  so an interrupt that was lost or deferred is raised at the next point where Python runs;
- an exception other than ``KeyboardInterrupt`` that ends the block after a Ctrl-C (code
  in between turned the interrupt into another error) leaves it as ``KeyboardInterrupt``;
- if the block has still not ended ``grace`` seconds after the first Ctrl-C (C code that does
  not return), the watchdog prints ``loopnet: interrupted`` and ends the process with exit
  status 130, as the shell does for a process that SIGINT killed.

It changes nothing outside the main thread, nor where SIGINT is ignored or handled by
someone else (a notebook kernel, a debugger).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time

RETRY = 0.1      # seconds between deliveries of a pending interrupt
EXIT_STATUS = 130

# Python functions that C calls through ctypes while numba compiles (llvmlite's object cache):
# an exception raised inside them is printed and dropped.
_CALLBACKS = frozenset({"_raw_object_cache_notify", "_raw_object_cache_getbuffer",
                        "_object_compiled_hook", "_object_getbuffer_hook"})


def _in_callback(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name in _CALLBACKS:
            return True
        frame = frame.f_back
    return False


def _deliver():
    """SIGINT to the main thread again: handler() runs at the next point where the main thread
    runs Python (a real signal also cuts short a sleep or a blocking read; Windows has none
    to send to a thread, and gets the simulated one)."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:
        _thread.interrupt_main()


class _Pending:
    """The state of one ``interruptible()`` block."""

    def __init__(self, grace: float):
        self.grace = grace
        self.first = None      # monotonic time of the first SIGINT
        self.done = False      # the block has ended: deliver nothing more
        self.lock = threading.Lock()

    def handler(self, signum, frame):
        if self.done:          # a delivery the watchdog sent just before the block ended
            return
        if self.first is None:
            self.first = time.monotonic()
            threading.Thread(target=self.watch, name="loopnet-interrupt", daemon=True).start()
        if not _in_callback(frame):
            raise KeyboardInterrupt

    def watch(self):
        while True:
            time.sleep(RETRY)
            with self.lock:
                if self.done:
                    return
                if time.monotonic() - self.first >= self.grace:
                    os.write(2, b"\nloopnet: interrupted\n")
                    os._exit(EXIT_STATUS)
                _deliver()

    def end(self):
        with self.lock:
            self.done = True
        # signal.signal() runs the handlers of signals still pending (a delivery sent just
        # before `done`: handler() ignores it) before it puts the default back
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def interruptible(grace: float = 1.0):
    """Make Ctrl-C end the ``with`` block within ``grace`` seconds (see the module docstring);
    the ``KeyboardInterrupt`` propagates out of the block as usual."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pending = _Pending(grace)
    signal.signal(signal.SIGINT, pending.handler)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if pending.first is None:
            raise
        # The interrupt came first and this error is what it left: code between the handler
        # and this block turned the KeyboardInterrupt into another exception (a C extension
        # that fails to import while it is raised reports "numba._devicearray failed to
        # import", an ImportError). The user asked to stop; say so, not the error.
        raise KeyboardInterrupt from err
    finally:
        pending.end()
