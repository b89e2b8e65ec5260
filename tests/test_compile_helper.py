"""The helper process that compiles the training step's kernels (``loopnet.backends.cpu_helper``),
its hand-over with this process driven by stand-in kernels and stand-in helpers: every kernel
compiled by exactly one of the two, and a helper that dies or stalls costs no kernel and no hang.
(The real helper, on a real build in a fresh cache: ``test_compiled``.)"""

import sys
import threading
import time

import pytest

from loopnet.backends import cpu_helper


class Kernel:
    """A stand-in numba dispatcher: ``compile`` notes the kernels compiled in this process, not
    those the helper said it compiled (which numba would load from its cache)."""

    def __init__(self, name, log, cached=()):
        self.name, self.log, self.cached = name, log, cached
        self.overloads = {}
        self._cache = object()          # (not a NullCache: numba would cache it to disk)

    def compile(self, argtypes):
        if argtypes not in self.overloads:
            if self.name not in self.cached:
                self.log.append(self.name)
            self.overloads[argtypes] = True


class Library:
    """A stand-in for the step's numba code library."""

    def __init__(self, name):
        self.name = name
        self.made = False

    def _finalize_final_module(self):
        self.made = True


# Stand-in helpers, speaking the helper's protocol: read the build, say ready, then for each
# kernel handed over a line of their own
HELPER = """
import sys
read, write = sys.stdin.buffer, sys.stdout.buffer
read.readline()
{before_ready}
write.write(b"ready\\n"); write.flush()
jobs = 0
while True:
    line = read.readline()
    if not line.strip():
        break
    jobs += 1
    {action}
"""
DONE = 'write.write(b"done\\n"); write.flush()'
FAIL = 'write.write(b"fail\\n"); write.flush()'
STALL = "import time; time.sleep(600)"
DIE = "sys.exit(3)"


def run_handover(monkeypatch, action, n_kernels=8, wait_for_helper=True, before_ready=""):
    """A hand-over of ``n_kernels`` stand-in kernels with a helper doing ``action`` for each
    kernel it takes; returns (handover, the kernels this process compiled, the library)."""
    monkeypatch.setattr(cpu_helper, "enabled", lambda: True)
    script = HELPER.format(action=action, before_ready=before_ready)
    monkeypatch.setattr(cpu_helper, "command", lambda package: [sys.executable, "-c", script])
    log = []
    library = Library("train_block__test")
    bound = []
    argtypes = ("float32[:, ::1]",)

    def bind(kernel):                   # (as cpu.bind_kernel_symbol: compiled or loaded)
        kernel.compile(argtypes)
        bound.append(kernel.name)

    with cpu_helper.opened(None, library.name) as handover:
        kernels = [Kernel(f"kernel_{k}", log, handover.helped) for k in range(n_kernels)]
        for kernel in kernels:
            handover.typed(kernel, kernel.name, argtypes)
        for kernel in kernels:
            assert handover.lowering(library, lambda k=kernel: bind(k))
        assert handover.process is not None
        if wait_for_helper:             # (a loaded machine: the helper takes its first kernel)
            deadline = time.monotonic() + 60
            while not handover.held and handover.process.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert not library.made and not log and not bound
        library._finalize_final_module()
    assert library.made
    assert bound == [kernel.name for kernel in kernels]     # every symbol, before the code
    return handover, log, kernels


def test_each_kernel_is_compiled_by_one_process_the_helper_from_the_front(monkeypatch):
    handover, log, kernels = run_handover(monkeypatch, DONE)
    names = [kernel.name for kernel in kernels]
    assert handover.helped                                   # (it took the first at least)
    assert not set(handover.helped) & set(log)               # never both
    assert sorted(handover.helped + log) == sorted(names)
    assert handover.helped == names[:len(handover.helped)]    # the helper from the front,
    assert log == names[len(handover.helped):][::-1]         # this process from the back
    assert cpu_helper.last["helped"] == handover.helped
    assert cpu_helper.last["kernels"] == names
    handover.process.wait(timeout=30)                        # told to exit, it does
    assert handover.process.returncode == 0


@pytest.mark.parametrize("action", [FAIL, DIE])
def test_a_kernel_the_helper_fails_or_dies_on_is_compiled_here(monkeypatch, action):
    handover, log, kernels = run_handover(monkeypatch, action)
    assert handover.helped == []
    assert sorted(log) == sorted(kernel.name for kernel in kernels)


def test_a_stalled_helper_is_stopped_and_its_kernel_compiled_here(monkeypatch):
    monkeypatch.setattr(cpu_helper, "WAIT_SECONDS", 1.0)
    start = time.monotonic()
    handover, log, kernels = run_handover(monkeypatch, STALL)
    assert time.monotonic() - start < 30
    assert handover.process.poll() is not None               # killed, and reaped
    assert handover.helped == []
    assert sorted(log) == sorted(kernel.name for kernel in kernels)


def test_a_helper_still_starting_when_the_step_is_made_is_killed(monkeypatch):
    start = time.monotonic()
    handover, log, kernels = run_handover(monkeypatch, DONE, wait_for_helper=False,
                                        before_ready="import time; time.sleep(600)")
    assert time.monotonic() - start < 30
    assert handover.process.poll() is not None               # killed, and reaped
    assert handover.helped == []
    assert log == [kernel.name for kernel in kernels][::-1]


def test_no_helper_when_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_helper.ENV_VAR, "0")
    assert not cpu_helper.enabled()
    log = []
    library = Library("train_block__test")
    with cpu_helper.opened(None, library.name) as handover:
        for k in range(4):
            kernel = Kernel(f"kernel_{k}", log)
            handover.typed(kernel, kernel.name, ("int64",))
        assert handover.lowering(library, lambda: None)
        library._finalize_final_module()
    assert handover.process is None
    assert log == ["kernel_3", "kernel_2", "kernel_1", "kernel_0"]


def test_calls_outside_the_steps_library_are_bound_at_once_and_hand_overs_are_per_thread():
    library = Library("_block__test")               # a helper function's, typed with the step
    with cpu_helper.opened(None, "train_block__test") as handover:
        assert not handover.lowering(library, lambda: None)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(cpu_helper.current()))
        thread.start()
        thread.join()
        assert seen == [None] and cpu_helper.current() is handover
    assert cpu_helper.current() is None
