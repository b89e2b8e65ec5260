"""Ctrl-C stops the command line within a second or two, also while numba compiles
(``loopnet.interrupts``)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from loopnet import interrupts

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_lost_inside_a_ctypes_callback_is_raised_again():
    """ctypes prints and drops an exception raised in a callback (as llvmlite's object-cache
    callbacks are called while numba compiles): the KeyboardInterrupt must come back."""

    def callback_body():
        os.kill(os.getpid(), signal.SIGINT)     # the handler runs in here, inside the callback
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            pass

    callback = ctypes.CFUNCTYPE(None)(callback_body)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interruptible():
            callback()                          # the first KeyboardInterrupt is lost here
            time.sleep(5)                       # ... without the re-delivery this sleeps on
    assert time.monotonic() - start < 1.0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_that_an_interrupt_turned_into_is_reported_as_the_interrupt():
    """A C extension that is imported while Ctrl-C arrives turns the KeyboardInterrupt into an
    ImportError ("numba._devicearray failed to import"): after a Ctrl-C, the block ends with
    KeyboardInterrupt whatever error the interrupt became; without one, errors pass as they
    are."""

    def import_that_swallows_the_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("numba._devicearray failed to import")

    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupts.interruptible():
            import_that_swallows_the_interrupt()
    assert isinstance(caught.value.__cause__, ImportError)
    with pytest.raises(ImportError):
        with interrupts.interruptible():
            raise ImportError("no interrupt: the error itself")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_handler_is_put_back_and_nothing_fires_after_the_block():
    with interrupts.interruptible():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    time.sleep(2 * interrupts.RETRY)            # no watchdog left behind to raise here


def test_other_handlers_and_threads_are_left_alone():
    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, own)
    try:
        with interrupts.interruptible():
            assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def in_thread():
        with interrupts.interruptible():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_ctrl_c_during_the_first_compile_stops_loopnet_train(tmp_path):
    """Three ``loopnet train`` runs on an empty numba cache (so they compile), interrupted at
    three moments after they start training; each must print the CLI's message and exit
    with status 130 within 2 s (the watchdog's limit is 1 s; the rest is process exit on a
    busy machine)."""
    delays = (0.2, 0.8, 1.6)
    runs = []
    for k, delay in enumerate(delays):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"cache{k}"), PYTHONUNBUFFERED="1")
        process = subprocess.Popen([sys.executable, "-m", "loopnet", "train", "--epochs", "2000"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        runs.append((delay, process))
    results = {}

    def interrupt(delay, process):
        process.stdout.readline()   # "loopnet train: spiral, ...": the model is built
        time.sleep(delay)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        results[delay] = (time.monotonic() - sent, process.returncode, stderr)

    threads = [threading.Thread(target=interrupt, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for delay in delays:
        took, status, stderr = results[delay]
        assert status == 130 and stderr.rstrip().endswith("loopnet: interrupted"), (
            delay, status, stderr[-2000:])
        assert took < 2.0, f"SIGINT {delay} s into training: the process took {took:.1f} s to stop"


def test_the_interrupted_command_ends_without_unwinding_what_the_interrupt_left():
    """After Ctrl-C the ``loopnet`` command prints its message and ends with status 130 from
    inside the handler: objects the interrupt left half built (a compile stopped between an
    LLVM call and its bookkeeping) are never finalized, neither when the traceback is dropped
    nor at interpreter shutdown. main() called from Python code returns the status instead."""
    program = """
import atexit, sys
from loopnet import cli

class HalfBuilt:
    def __del__(self):
        print("finalized", flush=True)

def command(args):
    left = HalfBuilt()      # held by the traceback's frame until the handler drops it
    raise KeyboardInterrupt

parser = cli.build_parser()
cli.build_parser = lambda: parser
parser.set_defaults(run=command)
for action in parser._subparsers._group_actions:
    for sub in action.choices.values():
        sub.set_defaults(run=command)
print("returned", cli.main(["train"]), flush=True)   # a call from Python code
atexit.register(print, "shut down")
sys.argv = ["loopnet", "train"]
cli.main()
print("after main")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["finalized", "returned 130"]
    assert result.stderr.splitlines() == ["loopnet: interrupted"] * 2
