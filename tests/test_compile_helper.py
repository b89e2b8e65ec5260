"""The helper process that compiles the training step's kernels (``loopnet.backends.cpu_helper``),
its hand-over with this process driven by stand-in kernels and stand-in helpers: every kernel
compiled by exactly one of the two, and a helper that dies or stalls costs no kernel and no hang.
(The real helper, on a real build in a fresh cache: ``test_compiled``.)"""

import sys
import threading
import time

import numpy as np
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


def _wait_until_the_helper_holds_one(owner):
    """Until the helper of ``owner`` (a ``Handover`` or an ``Ahead``) holds its first piece of
    work, or has exited (a minute at most)."""
    deadline = time.monotonic() + 60
    while not owner.held and owner.process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)


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
            _wait_until_the_helper_holds_one(handover)
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


# --- A learner's loop: a layer's backward made ahead (cpu_helper.Ahead) ---------------------------

def run_ahead(monkeypatch, action, n_jobs=8, wait_for_helper=True, before_ready=""):
    """A cold pass handing ``n_jobs`` stand-in jobs (in two overlapping batches) to a helper doing
    ``action`` for each job it takes; returns (the pass, the jobs this process ran, the jobs)."""
    monkeypatch.setattr(cpu_helper, "enabled", lambda: True)
    script = HELPER.format(action=action, before_ready=before_ready)
    monkeypatch.setattr(cpu_helper, "command", lambda package: [sys.executable, "-c", script])
    log = []
    cold_pass = cpu_helper.Ahead(log.append)
    jobs = [("dweights", "<f4", k) for k in range(n_jobs)]
    assert cold_pass.add(jobs[:5]) == 5
    assert cold_pass.add(jobs[3:]) == n_jobs - 5      # (a job handed over twice is queued once)
    assert cold_pass.process is not None
    if wait_for_helper:                 # (a loaded machine: the helper takes its first job)
        _wait_until_the_helper_holds_one(cold_pass)
    assert not log
    cold_pass.finish()
    assert cold_pass.add([("dinputs", "<f4", 0)]) == 0     # (after the pass: nothing more
    assert ("dinputs", "<f4", 0) not in cold_pass.jobs    # is taken)
    return cold_pass, log, jobs


def test_each_job_ahead_is_run_by_one_process_the_helper_from_the_front(monkeypatch):
    cold_pass, log, jobs = run_ahead(monkeypatch, DONE)
    assert cold_pass.helped                                    # (it took the first at least)
    assert not set(cold_pass.helped) & set(log)                # never both
    assert sorted(cold_pass.helped + log) == sorted(jobs)
    assert cold_pass.helped == jobs[:len(cold_pass.helped)]      # the helper from the front,
    assert log == jobs[len(cold_pass.helped):][::-1]           # this process from the back
    assert cpu_helper.last_ahead == {"jobs": len(jobs), "helped": cold_pass.helped,
                                     "ran_here": log, "helper": True}
    cold_pass.process.wait(timeout=30)                         # told to exit, it does
    assert cold_pass.process.returncode == 0


def test_optional_jobs_are_never_run_here_and_the_helper_goes_on_with_them(monkeypatch):
    """Jobs the first backward does not need (the cpu device's lanes) are not run by this
    process at that backward, nor waited for: the helper takes them in turn, also after the
    pass has ended, then exits."""
    monkeypatch.setattr(cpu_helper, "enabled", lambda: True)
    # (each job takes the helper 50 ms: the pass ends while it still has lanes to make)
    script = HELPER.format(action="import time; time.sleep(0.05); " + DONE, before_ready="")
    monkeypatch.setattr(cpu_helper, "command", lambda package: [sys.executable, "-c", script])
    log = []
    cold_pass = cpu_helper.Ahead(log.append, optional=lambda job: job[0] == "lane")
    jobs = [(kind, "<f4", k) for k in range(4) for kind in ("dweights", "lane")]
    assert cold_pass.add(jobs) == len(jobs)
    _wait_until_the_helper_holds_one(cold_pass)
    start = time.monotonic()
    cold_pass.finish()
    assert time.monotonic() - start < 10
    assert not [job for job in log if job[0] == "lane"]
    assert cold_pass.process.wait(timeout=30) == 0             # it went on, then exited
    assert sorted(cold_pass.helped + log) == sorted(jobs)
    assert [job for job in cold_pass.helped if job[0] == "lane"] == jobs[1::2]


def test_an_optional_job_is_being_made_while_the_helper_has_it(monkeypatch):
    """``making``: an optional job handed over is being made while the helper, running, has
    it queued or in hand, also after the pass has ended; not once the helper has exited, nor
    for a job never handed over. The cpu device's lanes then wait for it (the layer's usual
    path meanwhile), and are made here when it says no."""
    from loopnet.backends import cpu

    monkeypatch.setattr(cpu_helper, "enabled", lambda: True)
    script = HELPER.format(action="import time; time.sleep(0.2); " + DONE, before_ready="")
    monkeypatch.setattr(cpu_helper, "command", lambda package: [sys.executable, "-c", script])
    log = []
    cold_pass = cpu_helper.Ahead(log.append, optional=lambda job: job[0] == "lane")
    lane = ("lane", "<f4", "forward", 1)
    cold_pass.add([("dweights", "<f4", 0), ("lane", "<f4", "forward", 0), lane])
    assert cpu_helper.making(lane)
    assert not cpu_helper.making(("lane", "<f4", "forward", 9))
    _wait_until_the_helper_holds_one(cold_pass)     # (one still starting up is stopped)
    cold_pass.finish()
    assert cpu_helper.making(lane)                  # (the helper goes on with it)
    key = ("forward", 1, np.dtype("<f4"))
    monkeypatch.setattr(cpu, "LANE_AFTER_ASKED", 1)
    monkeypatch.setattr(cpu, "_make_lane", lambda key: "made here")
    assert cpu._lane_asked(key) is None
    assert cold_pass.process.wait(timeout=30) == 0
    assert not cpu_helper.making(lane)
    assert cpu._lane_asked(key) == "made here"


def test_a_helper_stalled_on_an_optional_job_is_stopped_when_asked_after_the_wait(monkeypatch):
    """An optional job held past WAIT_SECONDS is no longer being made: the helper is stopped
    (the lane is then made here)."""
    monkeypatch.setattr(cpu_helper, "WAIT_SECONDS", 1.0)
    monkeypatch.setattr(cpu_helper, "enabled", lambda: True)
    script = HELPER.format(action=STALL, before_ready="")
    monkeypatch.setattr(cpu_helper, "command", lambda package: [sys.executable, "-c", script])
    cold_pass = cpu_helper.Ahead([].append, optional=lambda job: job[0] == "lane")
    lane = ("lane", "<f4", "backward", (5, 4), True)
    cold_pass.add([lane])
    _wait_until_the_helper_holds_one(cold_pass)
    cold_pass.finish()                              # (not stopped: the job is optional)
    assert cold_pass.process.poll() is None and cpu_helper.making(lane)
    time.sleep(1.1)
    assert not cpu_helper.making(lane)
    assert cold_pass.process.wait(timeout=30) is not None   # stopped, and reaped


def test_a_job_the_helper_fails_is_left_to_the_backward_and_one_it_dies_on_too(monkeypatch):
    for action in (FAIL, DIE):
        cold_pass, log, jobs = run_ahead(monkeypatch, action)
        assert cold_pass.helped == []
        assert cold_pass.process.wait(timeout=30) is not None
        # the jobs it took are not run again here: the backward compiles what it needs itself
        assert len(log) < len(jobs) and log == jobs[len(jobs) - len(log):][::-1]


def test_a_stalled_or_still_starting_helper_is_stopped_at_the_first_backward(monkeypatch):
    monkeypatch.setattr(cpu_helper, "WAIT_SECONDS", 1.0)
    for action, before_ready, wait in ((STALL, "", True), (DONE, STALL, False)):
        start = time.monotonic()
        cold_pass, log, jobs = run_ahead(monkeypatch, action, wait_for_helper=wait,
                                       before_ready=before_ready)
        assert time.monotonic() - start < 30
        assert cold_pass.process.wait(timeout=30) is not None  # killed, and reaped
        assert cold_pass.helped == []
        assert log == jobs[len(jobs) - len(log):][::-1]
        if not wait:
            assert log == jobs[::-1]                         # it took none: all run here


def test_no_helper_ahead_when_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_helper.ENV_VAR, "0")
    log = []
    cold_pass = cpu_helper.Ahead(log.append)
    cold_pass.add([("overlapping", "<f4"), ("dbiases", "<f4", 3, 2)])
    assert cold_pass.process is None
    cold_pass.finish()
    assert log == [("dbiases", "<f4", 3, 2), ("overlapping", "<f4")]
    # a later pass sharing the handed-over jobs (as the cpu device's do) takes only new ones
    later = cpu_helper.Ahead(log.append, cold_pass.handed_over)
    assert later.add([("overlapping", "<f4"), ("dbiases", "<f4", 4, 2)]) == 1
    assert later.jobs == [("dbiases", "<f4", 4, 2)]


def test_a_pass_opens_on_a_loopnet_kernel_compiled_here_for_numbas_cache(monkeypatch):
    """What opens a cold pass (``ops.ahead``): numba compiling one of loopnet's kernels (not a
    user's function), one it saves to its cache (else the helper's would not reach this
    process); another compile during the pass has the forwards hand over again; the first
    backward ends it."""
    from types import SimpleNamespace

    from numba.core.caching import NullCache

    from loopnet import ops
    from loopnet.backends import cpu

    monkeypatch.setattr(ops, "ahead", None)

    def compiled(module, cache):
        kernel = SimpleNamespace(py_func=SimpleNamespace(__module__=module), _cache=cache)
        cpu._ColdCompiles().on_end(SimpleNamespace(data={"dispatcher": kernel}))

    compiled("users_own_code", object())
    compiled("loopnet.kernels.dense", NullCache())
    assert ops.ahead is None
    compiled("loopnet.kernels.dense", object())
    cold_pass = ops.ahead
    assert isinstance(cold_pass, cpu_helper.Ahead) and cold_pass.wanted
    cold_pass.wanted = False              # (a layer seen again: no more hand-overs) ...
    compiled("loopnet.kernels.activations", object())
    assert ops.ahead is cold_pass and cold_pass.wanted      # ... until the next compile
    ops.ahead_backward()
    assert ops.ahead is None and cold_pass.finished


# A learner's loop written as the book writes it, run in a new process over a fresh cache (with
# the helper, then again over the same cache), or here: its parameters' bits and the last pass.
_WAITING_FOR_THE_HELPER = """
import json, time
from numba.core import event
from loopnet.backends import cpu_helper

finish = cpu_helper.Ahead.finish

def finish_once_the_helper_has_run_every_job(cold_pass):
    # (so that this process runs none: it then compiles no kernel of a backward, if the jobs
    # made the kernels for the argument types the backward passes)
    deadline = time.monotonic() + 120
    while (cold_pass.process is not None and cold_pass.process.poll() is None
           and (cold_pass.queue or not cold_pass.ready or cold_pass.current is not None
                and not cold_pass.held[cold_pass.current].is_set())
           and time.monotonic() < deadline):
        time.sleep(0.005)
    finish(cold_pass)

cpu_helper.Ahead.finish = finish_once_the_helper_has_run_every_job

class Compiled(event.Listener):
    names = []

    def on_start(self, event):
        self.names.append(event.data["dispatcher"].py_func.__name__)

    def on_end(self, event):
        pass

event.register("numba:compile", Compiled())
"""
_LEARNERS_LOOP = """
import numpy as np
import loopnet.nnfs as nn
from loopnet.datasets import spiral_data

def learners_loop():
    X, y = spiral_data(30, 3, seed=0)
    np.random.seed(0)
    dense1 = nn.Layer_Dense(2, 16, weight_regularizer_l2=5e-4)
    activation1 = nn.Activation_ReLU()
    dense2 = nn.Layer_Dense(16, 3)
    loss_activation = nn.Activation_Softmax_Loss_CategoricalCrossentropy()
    optimizer = nn.Optimizer_Adam(learning_rate=0.05)
    for epoch in range(5):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        loss_activation.forward(dense2.output, y)
        loss_activation.backward(loss_activation.output, y)
        dense2.backward(loss_activation.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)
        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.post_update_params()
    return [p.tobytes().hex() for layer in (dense1, dense2) for p in (layer.weights, layer.biases)]

params = learners_loop()
"""


def test_a_learners_loop_on_a_cold_cache_has_its_backward_made_by_the_helper(tmp_path):
    """On a fresh cache, the forwards of a learner's loop hand their layers' backwards to the
    helper, which makes their kernels (here: all of them, this process waiting for it) and
    hands them over through the cache, for the argument types the backwards pass: this
    process compiles none of them, and the loop trains to the bits of the same loop here.
    Over the same cache again nothing compiles, and no pass hands anything over."""
    import json
    import os
    import subprocess

    def run():
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
        env[cpu_helper.ENV_VAR] = "1"
        code = _WAITING_FOR_THE_HELPER + _LEARNERS_LOOP + (
            "print(json.dumps({'params': params, 'ahead': cpu_helper.last_ahead, "
            "'compiled': Compiled.names}))")
        return json.loads(subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            check=True, timeout=300).stdout.splitlines()[-1])

    cold, warm = run(), run()
    here = {}
    exec(_LEARNERS_LOOP, here)          # (this process: whatever its cache held)
    assert cold["params"] == warm["params"] == here["params"]
    if cpu_helper.enabled():
        ahead = cold["ahead"]
        assert ahead["helper"] and ahead["ran_here"] == []
        assert ahead["jobs"] == len(ahead["helped"])
        assert {job[0] for job in ahead["helped"]} == {"dweights", "dinputs", "dbiases",
                                                       "overlapping", "penalties", "lane"}
        # the forward pass compiled here, the backward's products and penalties did not, nor
        # the lanes of the later steps (both layers' forwards and backwards)
        assert "dense_forward_few_inputs__serial" in cold["compiled"]
        assert not [name for name in cold["compiled"] if "_lane_" in name]
        assert sorted(job[2] for job in ahead["helped"] if job[0] == "lane") == [
            "backward", "backward", "forward", "forward"]
        backward = ("dense_backward", "overlapping", "dense_penalties", "regularization_backward")
        assert not [name for name in cold["compiled"] if name.startswith(backward)]
    assert warm["ahead"] == {} and warm["compiled"] == []
