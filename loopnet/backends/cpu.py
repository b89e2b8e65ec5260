"""The ``cpu`` device: the loop kernels compiled by numba.

Each ``<op>_loops`` function is wrapped in ``numba.njit(cache=True)``, with ``parallel=True``
when it uses ``prange`` (a kernel without one would only pay the parallel set-up and make numba
warn). numba compiles on the first call for each dtype, and ``cache=True`` stores the machine
code in ``__pycache__`` beside the kernel file, so the next process loads it instead of compiling.
Every build uses numba's ``error_model="numpy"``: a division by zero gives inf or NaN (as numpy
and the GPU do, for the divergence check to report) instead of raising inside a kernel. The
kernels, which never allocate, are compiled without numba's reference counting (``_nrt=False``,
``KERNEL_OPTIONS``).

Speed (measurements in BENCHMARKS.md):

- Every ``prange`` kernel also has a serial build, which runs for small arrays: starting threads
  costs microseconds, more than a small array takes. Both builds give the same bits (one owner
  per output element).
- The dense products choose a form by shape in one place, ``dense_plan`` (the table of forms is
  at the top of ``loopnet/kernels/dense_fast.py``); the compiled training step asks it too.
- 512-bit vector code on CPUs with AVX-512 (see ``_prefer_512_bit_vectors``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
import warnings
from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.core import event as _event
from numba.extending import intrinsic

from loopnet import kernels as _kernels_package
from loopnet import threads
from loopnet.backends import collect
from loopnet.backends import cpu_cache
from loopnet.backends import cpu_helper as _helper
from loopnet.kernels import KERNEL_OPTIONS, OPTIONS, renamed, with_bodies_inlined

# OPTIONS: those of every build (see the module docstring for error_model). KERNEL_OPTIONS:
# those of the loop kernels and the small checks below, which never allocate: without numba's
# reference counting (``_nrt=False``, as their bodies), a view such as ``dweights_t[n, i0:i0 +
# width]`` costs no count of its array's references (the narrow dweights of 3000x64x3 27.2 ->
# 22.3 us, 300x64x3 3.13 -> 2.57 us, the same bits), nor does a call from Python count its
# arguments' (``overlapping``'s seven arrays: 0.42 -> 0.26 us a call). BENCHMARKS.md, "Then:
# kernels without reference counting". (Both live in ``loopnet.kernels``.)

threads.configure()  # numba's threading layer, before anything compiles (loopnet/threads.py)


# The files whose code and constants this device's builds take: every kernel module (a kernel
# inlines bodies from the others) and this one (it hands some builds constants of its own).
# numba's cache checks only a function's own file; ``cpu_cache.guard`` adds these, so that an
# edit or a checkout of any of them compiles the builds again rather than run the old code.
# (``examples.py``, the tests' and ``explain``'s example arguments, holds no compiled code.)
_KERNELS = os.path.dirname(os.path.abspath(_kernels_package.__file__))
SOURCES = cpu_cache.sources_stamp(
    [os.path.join(_KERNELS, name) for name in sorted(os.listdir(_KERNELS))
     if name.endswith(".py") and name != "examples.py"]
    + [os.path.abspath(__file__)])


def njit(function=None, **options):
    """``numba.njit(**options)(function)`` with its disk cache guarded (``cpu_cache``: several
    processes filling one cache never leave an entry naming code of other argument types, nor
    code compiled from other sources): every build of this device is made by it."""
    if function is None:
        return lambda function: njit(function, **options)
    return cpu_cache.guard(numba.njit(**options)(function), SOURCES)


def _prefer_512_bit_vectors():
    """Let LLVM emit 512-bit (zmm) vector code on AVX-512 CPUs; it emits 256-bit code by default.

    Measured on this project's machine: a tiled dense kernel ran 132 -> 205 GFLOP/s with it. It
    must be set before numba compiles anything, and it is process-wide (it also applies to other
    numba code in this process), which is why it is decided here, once, when the cpu backend is
    first imported. The features are part of numba's cache key, so cached code of another
    setting is not reused. Opt out with ``LOOPNET_PREFER_512_BIT=0``; a user's own
    ``NUMBA_CPU_FEATURES`` always wins.
    """
    if os.environ.get("LOOPNET_PREFER_512_BIT", "1") == "0" or numba.config.CPU_FEATURES:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_512_bit_vectors()


def _uses_prange(function) -> bool:
    return "prange" in function.__code__.co_names


def compile_loops(function):
    """``njit`` a loop kernel the way the cpu device runs it (parallel when it has a prange;
    such a build takes turns under numba's workqueue layer: ``threads.serialized``)."""
    function = with_bodies_inlined(function)
    if not _uses_prange(function):
        return njit(function, **KERNEL_OPTIONS)
    return threads.serialized(njit(function, parallel=True, **KERNEL_OPTIONS))


def compile_twice(function, **options):
    """``(serial, parallel)`` builds of a ``prange`` kernel (a serial build runs prange as range).
    Nothing compiles until a build is first called."""
    options = {**KERNEL_OPTIONS, **options}
    function = with_bodies_inlined(function)
    return (njit(renamed(function, "__serial"), parallel=False, **options),
            threads.serialized(njit(function, parallel=True, **options)))


# Every prange kernel (activations, losses, optimizers, ...) runs serially below
# PARALLEL_MIN_ELEMENTS elements: waking the second thread costs microseconds (far more when
# the other core is busy: numba's threads spin, measured 1.1 -> 5 ms per epoch of a small
# sigmoid model under load), more than a small array takes. The dense ops choose by
# multiply-adds in ``dense_plan``, with their own thresholds. Both were measured with OpenMP's
# threads spinning; threads.parallel_min_scale() scales them for the threading layer that runs.
PARALLEL_MIN_ELEMENTS = int(os.environ.get("LOOPNET_PARALLEL_MIN_ELEMENTS",
                                           50_000 * threads.parallel_min_scale()))


# Parameters of the loop kernels that are scalars (``by_size`` looks at the first array).
SCALARS = ("value", "seed", "step", "keep_below", "rate", "learning_rate", "momentum",
           "epsilon", "rho", "beta_1", "beta_2", "correction_1", "correction_2", "l1", "l2",
           "precision")


def by_size(function):
    """The cpu form of a loop kernel: a parallel build for large arrays, a serial build for
    small ones (``function`` without ``prange`` has one build).

    The size is that of the kernel's first array argument (its largest: the input, or the
    parameters). Both builds compute every output element in the same order (each has one
    owner), so the choice never changes a result.
    """
    if not _uses_prange(function):
        return njit(with_bodies_inlined(function), **KERNEL_OPTIONS)
    serial_build, parallel_build = compile_twice(function)
    names = function.__code__.co_varnames[:function.__code__.co_argcount]
    first = next(k for k, name in enumerate(names) if name not in SCALARS)

    def run(*args):
        if args[first].size >= PARALLEL_MIN_ELEMENTS and threads.parallel_allowed():
            return parallel_build(*args)
        return serial_build(*args)

    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    run.serial, run.parallel = serial_build, parallel_build
    return run


LOOPS = collect("loops")
# (dense_forward and the dense backward products are redefined below with the plan's choice.)
globals().update({name: by_size(function) for name, function in LOOPS.items()})

to_numpy = np.asarray
HOST = True     # (ops: arrays live in this process's memory)


# Outputs of this many elements or more start on a 64-byte boundary (see ``aligned_empty``):
# the register-tiled kernels that read them again (large layers) load aligned vectors. Smaller
# ones are a plain ``np.empty`` (the aligned one costs ~1 us more a call: 1.3 against 0.2 us for
# 1000x64 float32, which the small layers of a learner's loop, called thousands of times, would
# pay for nothing).
ALIGNED_MIN = 32768


def empty(shape, dtype):
    """Where ``loopnet.ops`` allocates outputs: large arrays aligned (``ALIGNED_MIN``)."""
    if type(shape) is not tuple:        # (the ops' own shapes are tuples: 0.4 against 0.6 us)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if math.prod(shape) < ALIGNED_MIN:  # (math.prod: np.prod costs ~3 us a call)
        return np.empty(shape, dtype)
    return aligned_empty(shape, dtype)


@intrinsic
def _bounds(typingctx, array):
    """``(start, end)``: the addresses of the first byte of ``array``'s data and of the byte
    after its ``size * itemsize`` bytes (the bytes a C-contiguous array occupies). Read from
    the array's fields at once (``array.ctypes.data`` made numba type a ctypes object:
    ``overlapping`` and its helper took 0.20 s of the chapter-10 loop's cold compile, 0.13 s
    with this)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0])
        start = builder.ptrtoint(data.data, context.get_value_type(types.intp))
        end = builder.add(start, builder.mul(data.nitems, data.itemsize))
        return context.make_tuple(builder, signature.return_type, (start, end))
    return types.UniTuple(types.intp, 2)(array), codegen


@njit(**KERNEL_OPTIONS)
def address(array):
    """Where ``array``'s data starts in memory (``array.ctypes.data``, which costs ~1 us a call
    against ~0.15 us for this)."""
    return _bounds(array)[0]


@njit(**KERNEL_OPTIONS)
def overlapping(out_1, out_2, out_3, source_1, source_2, source_3, source_4):
    """Whether an output (the first three arrays) shares memory with another output or with a
    source (all C-contiguous): ``np.may_share_memory``'s bounds test for every such pair in
    one call (~0.5 us, against ~0.2 us a pair in Python), so that a layer's direct path never
    hands a kernel a buffer it also reads or writes elsewhere."""
    spans = (_bounds(out_1), _bounds(out_2), _bounds(out_3), _bounds(source_1),
             _bounds(source_2), _bounds(source_3), _bounds(source_4))
    for k in range(3):
        for j in range(k + 1, 7):
            if spans[k][0] < spans[j][1] and spans[j][0] < spans[k][1]:
                return True
    return False


def aligned_empty(shape, dtype, align=64):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (a cache
    line, and one 512-bit vector): the tiled kernels' vector loads then never straddle lines."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    raw = np.empty(math.prod(shape) * dtype.itemsize + align, np.uint8)
    return np.ndarray(shape, dtype, raw, (-address(raw)) % align)


# --- Class labels -------------------------------------------------------------------------------

@njit(**KERNEL_OPTIONS)
def _copy_labels(y_true, n_classes, targets):
    """``targets[s] = y_true[s]`` while each label lies in ``[0, n_classes)``; returns the
    position of the first that does not, or -1."""
    for s in range(y_true.shape[0]):
        label = y_true[s]
        if label < 0 or label >= n_classes:
            return s
        targets[s] = label
    return -1


def class_indices(y_true, n_classes):
    """Integer labels ``y_true`` (1-D) as a contiguous intp array, checked to lie in
    ``[0, n_classes)`` in the same pass; None when one does not (``ops.class_targets`` then
    says which). One compiled pass instead of numpy's ``min``, ``max`` and ``astype``: ~1 us
    against ~2.7 us for the book's 300 uint8 labels, a cost a learner's loop pays twice an
    epoch (the loss and its gradient)."""
    targets = np.empty(y_true.shape[0], np.intp)
    return targets if _copy_labels(y_true, n_classes, targets) < 0 else None


# --- Dense: one plan, then the form it names ----------------------------------------------------

from loopnet.kernels import dense_fast as _fast  # noqa: E402
from loopnet.kernels import regularization as _regularization  # noqa: E402

# (the forms as module names: the wrappers below compare them on every call)
_BROADCAST, _NARROW, _FEW_INPUTS = _fast.BROADCAST, _fast.NARROW, _fast.FEW_INPUTS
_DOT_PLAIN, _DOT_TILES = _fast.DOT_PLAIN, _fast.DOT_TILES

cpu_cache.guard(_fast.pack_panel, SOURCES)  # (compiled there, by numba.njit: guarded here)

# Thresholds in multiply-adds per call (work = n_samples * n_inputs * n_neurons), from the
# crossover table of `python benchmarks/bench.py --crossover` (BENCHMARKS.md); override with the
# environment variables of the same names (LOOPNET_PARALLEL_MIN, ...):
# - a parallel region costs a few microseconds: serial below PARALLEL_MIN (the spiral model's
#   300x2x64 layer, 38k, stays serial: 4.5 us either way; 300x64x3, 58k, ran 16 -> 9 us in
#   parallel), and with fewer than PARALLEL_MIN_ROWS rows to share out there is too little;
# - the broadcast form packs a copy of one operand: it pays from BROADCAST_MIN for layers of 64
#   or more inputs (128x64x64: forward 21 -> 16 us), and from LARGE_MIN for layers of
#   LARGE_INPUTS inputs or more (HUGE_MIN with 64 samples or more, whatever the neurons).
PARALLEL_MIN = int(os.environ.get("LOOPNET_PARALLEL_MIN",
                                  50_000 * threads.parallel_min_scale()))
PARALLEL_MIN_ROWS = int(os.environ.get("LOOPNET_PARALLEL_MIN_ROWS", 16))
BROADCAST_MIN = int(os.environ.get("LOOPNET_BROADCAST_MIN", 500_000))
LARGE_MIN = int(os.environ.get("LOOPNET_LARGE_MIN", 1_000_000))
HUGE_MIN = int(os.environ.get("LOOPNET_HUGE_MIN", 10_000_000))
LARGE_INPUTS = int(os.environ.get("LOOPNET_LARGE_INPUTS", 128))
# dweights in the broadcast form with a single panel of columns runs serially up to this many
# rows (the layer's inputs): see ``dense_plan``.
SHARED_PANEL_MAX_ROWS = int(os.environ.get("LOOPNET_SHARED_PANEL_MAX_ROWS", 128))
# A narrow forward (4-15 neurons) runs the 6 x 4 tiles where they save more than a few
# microseconds a call, else the plain dot products: the tiles reuse each row of ``inputs`` for 4
# neurons, which pays with long rows (32x784x10: 7.6 against 14.6 us) and large products
# (1000x128x10 in parallel: 31 against 39 us), little below (128x128x10: 7.7 against 9.8 us;
# 300x64x8 and 1000x64x15 ran as fast plain), while compiling the tile is ~1.7 s of a cold start
# (``nt_rows_tiled``, the chapter-19-sized model's 10-class output layer).
TILES_MIN_INPUTS = int(os.environ.get("LOOPNET_TILES_MIN_INPUTS", 256))
TILES_MIN = int(os.environ.get("LOOPNET_TILES_MIN", 1_000_000))
# Middle-sized products, where the rule above does not reach (fewer than 64 inputs, as a hidden
# layer of 32 or 48, or less than BROADCAST_MIN of work), take the broadcast form from
# MIDDLE_MIN multiply-adds and MIDDLE_INPUTS inputs: the forward with 32 neurons or more (half
# a panel), dweights with 48-64 neurons (one panel, little of it padding), dinputs with 32
# inputs or more and 32-64 neurons (longer sums ran faster as dot products: 3000x32x128 106
# against 116 us). The loops' 4 x 4 blocks reload and store each output once per 4 inputs, the
# tile keeps its 5 x 64 sums in registers (forward 3000x32x32: 76 -> 41 us, 1000x32x64: 34 ->
# 16 us, 32x64x64: 3.7 -> 2.1 us; dweights 1000x32x64: 35 -> 19 us, 64x64x64: 7.1 -> 4.2 us;
# dinputs 1000x48x48: 35-42 -> 20 us; 128x16x32's forward, 66k, ran faster blocked). In
# parallel from BROADCAST_MIN (forward) and MIDDLE_PARALLEL_MIN (the backward's products,
# whose tiles are few: dweights 1000x16x64 ran 11 us serially, 16 us in parallel). Not the
# products that would walk the wide ways (``dense_fast.tn_wide``), whose build is seconds more
# of a cold compile. (Small layers of 64 inputs were once kept from the form, 32x64x64's
# forward 7.9 -> 12.8 us: measured when the form's serial build counted references.)
MIDDLE_MIN = int(os.environ.get("LOOPNET_MIDDLE_MIN", 128_000))
MIDDLE_INPUTS = int(os.environ.get("LOOPNET_MIDDLE_INPUTS", 8))
MIDDLE_PARALLEL_MIN = int(os.environ.get("LOOPNET_MIDDLE_PARALLEL_MIN", 2_000_000))


class Product(NamedTuple):
    """How one dense product runs: a form of ``loopnet.kernels.dense_fast`` and whether its
    parallel build runs."""

    form: int
    parallel: bool


class DensePlan(NamedTuple):
    """The forms of a layer's three products (see ``dense_plan``)."""

    forward: Product
    dweights: Product
    dinputs: Product


def _parallel(work, rows):
    return work >= PARALLEL_MIN and rows >= PARALLEL_MIN_ROWS and threads.parallel_allowed()


def _broadcast_pays(n_samples, n_inputs, n_neurons, n_rows, n_columns):
    """Whether a product of this layer shape, whose output is ``n_rows`` x ``n_columns``, runs
    the broadcast form: it needs a full tile of rows; it pays for large and middle-sized layers
    (LARGE_INPUTS inputs and 16 neurons or more from LARGE_MIN multiply-adds, or 64 samples or
    more from HUGE_MIN) and, from
    BROADCAST_MIN on, for layers of 64 or more inputs, 16 or more neurons and at least half a
    panel of output columns (with fewer, most of each 64-wide panel is padding: 1024x64x16's
    dweights ran 57 -> 79 us). Below that, ``_middle_pays`` decides (MIDDLE_MIN)."""
    if n_rows < _fast.TN_ROWS:
        return False
    work = n_samples * n_inputs * n_neurons
    if n_inputs >= LARGE_INPUTS and ((work >= LARGE_MIN and n_neurons >= 16)
                                     or (work >= HUGE_MIN and n_samples >= 64)):
        return True
    return (work >= BROADCAST_MIN and n_inputs >= 64 and n_neurons >= 16
            and 2 * n_columns >= _fast.PANEL_WIDTH)


def _middle_pays(n_samples, n_inputs, n_neurons, n_k, n_rows, n_columns, fewest_columns):
    """Whether a middle-sized product (MIDDLE_MIN above), summed over ``n_k`` into ``n_rows``
    x ``n_columns``, runs the broadcast form: a full tile of rows, ``fewest_columns`` output
    columns or more, and the plain walk."""
    return (n_rows >= _fast.TN_ROWS and n_inputs >= MIDDLE_INPUTS
            and n_samples * n_inputs * n_neurons >= MIDDLE_MIN
            and n_columns >= fewest_columns
            and not _fast.tn_wide(n_k, n_rows, n_columns))


@functools.lru_cache(maxsize=1024)
def dense_plan(n_samples: int, n_inputs: int, n_neurons: int,
               double: bool = False) -> DensePlan:
    """Which form (``loopnet.kernels.dense_fast``) computes each product of a dense layer with
    these sides, and whether in parallel: the one decision both the layered ops and the
    compiled training step follow (the table is at the top of ``dense_fast.py``). ``double``:
    float64 operands, which never take the broadcast form (its 5 x 64 tile of sums is 40
    zmm registers in float64, more than there are: it spilled and ran slower than the blocked
    loops and the dot-product tiles at every size measured, 1000x64x64's dinputs 86 against
    67 us, 1024x256x256's forward 1.18 against 0.82 ms, 3000x32x32's forward 229 against 80
    us).

    - forward ``inputs @ weights``: BROADCAST for middle and large layers (from 8 inputs, 32
      neurons and MIDDLE_MIN: ``_middle_pays``); DOT_TILES for narrow
      layers (< 16 neurons, >= 32 inputs, >= 4 samples: the loops' inner loop over 3 neurons is
      too short to vectorize; 300x64x3: 16.6 -> 6.4 us, packing weights.T included), as
      DOT_PLAIN below 4 neurons and for small products of short rows (``TILES_MIN_INPUTS``,
      ``TILES_MIN``: the same dot products, without the 6 x 4 tile to compile);
      else BLOCKED (the loops' bits), as FEW_INPUTS for 1 or 2 inputs (the same rows, without
      the 4-row body to compile);
    - dweights ``inputs.T @ dvalues``: BROADCAST (from 8 inputs with 48-64 neurons); NARROW
      below 16 neurons (>= 16 inputs); else
      BLOCKED, as FEW_INPUTS for 1 or 2 inputs (its rows one by one);
    - dinputs ``dvalues @ weights.T``: BROADCAST (from 32 inputs with 32-64 neurons);
      DOT_TILES from 16 neurons and 4 samples (each
      element a dot product over the neurons: split over vector lanes it pays from small sizes
      on, 32x784x128: 574 -> ~60 us; no packing: ``weights`` already is ``(weights.T).T``),
      as DOT_PLAIN below 4 inputs; else NARROW.
    """
    work = n_samples * n_inputs * n_neurons
    parallel = _parallel(work, n_samples)
    broadcast = not double      # (the broadcast form's tile: float32 only)
    if broadcast and _broadcast_pays(n_samples, n_inputs, n_neurons, n_samples, n_neurons):
        forward = Product(_fast.BROADCAST, parallel)
    elif broadcast and _middle_pays(n_samples, n_inputs, n_neurons, n_inputs, n_samples,
                                    n_neurons, _fast.PANEL_WIDTH // 2):
        forward = Product(_fast.BROADCAST, parallel and work >= BROADCAST_MIN)
    elif n_samples >= 4 and n_neurons < 16 and n_inputs >= 32:
        tiles = n_neurons >= 4 and (n_inputs >= TILES_MIN_INPUTS or work >= TILES_MIN)
        forward = Product(_fast.DOT_TILES if tiles else _fast.DOT_PLAIN, parallel)
    else:
        forward = Product(_fast.BLOCKED if n_inputs > 2 else _fast.FEW_INPUTS, parallel)
    if broadcast and _broadcast_pays(n_samples, n_inputs, n_neurons, n_inputs, n_neurons):
        # One panel (< 64 neurons) that one thread packs and every thread then reads in full:
        # up to SHARED_PANEL_MAX_ROWS rows the parallel build ran no faster than the serial
        # one and often half as fast (1000x64x64, ch17's layer, when it packed its dvalues:
        # 102 us serial, 94-238 us in parallel over repeated runs); with two or more panels
        # each thread packs its own, and with exactly 64 neurons ``dvalues`` is its own panel
        # (``dense_fast.is_own_panel``), nothing to pack: ch17's layer then ran 77 us serial,
        # 48 us in parallel (medians of 40 alternating rounds).
        one_panel = n_neurons < _fast.PANEL_WIDTH and n_inputs <= SHARED_PANEL_MAX_ROWS
        dweights = Product(_fast.BROADCAST, _parallel(work, n_inputs) and not one_panel)
    elif (broadcast and n_neurons <= _fast.PANEL_WIDTH
          and _middle_pays(n_samples, n_inputs, n_neurons, n_samples, n_inputs, n_neurons,
                           _fast.PANEL_WIDTH * 3 // 4)):
        dweights = Product(_fast.BROADCAST,
                           _parallel(work, n_inputs) and work >= MIDDLE_PARALLEL_MIN)
    elif n_neurons < 16 and n_inputs >= 16:
        # one thread per band of NARROW_BAND inputs: a single band stays serial
        dweights = Product(_fast.NARROW, parallel and n_inputs > _fast.NARROW_BAND)
    else:
        dweights = Product(_fast.BLOCKED if n_inputs > 2 else _fast.FEW_INPUTS,
                           _parallel(work, n_inputs // 4 * 4))
    if broadcast and _broadcast_pays(n_samples, n_inputs, n_neurons, n_samples, n_inputs):
        dinputs = Product(_fast.BROADCAST, parallel)
    elif (broadcast and _fast.PANEL_WIDTH // 2 <= n_neurons <= _fast.PANEL_WIDTH
          and _middle_pays(n_samples, n_inputs, n_neurons, n_neurons, n_samples, n_inputs,
                           _fast.PANEL_WIDTH // 2)):
        dinputs = Product(_fast.BROADCAST, parallel and work >= MIDDLE_PARALLEL_MIN)
    elif n_neurons >= 16 and n_samples >= 4:
        dinputs = Product(_fast.DOT_TILES if n_inputs >= 4 else _fast.DOT_PLAIN, parallel)
    else:
        dinputs = Product(_fast.NARROW, parallel)
    return DensePlan(forward, dweights, dinputs)


dense_nt_tiled_serial, dense_nt_tiled_parallel = compile_twice(_fast.dense_nt_tiled)
dense_nt_plain_serial, dense_nt_plain_parallel = compile_twice(_fast.dense_nt_plain)
dense_forward_few_inputs_serial, dense_forward_few_inputs_parallel = compile_twice(
    _fast.dense_forward_few_inputs)
dense_backward_weights_few_inputs_serial, dense_backward_weights_few_inputs_parallel = \
    compile_twice(_fast.dense_backward_weights_few_inputs)
transpose_serial, transpose_parallel = compile_twice(_fast.transpose_tiled)
# (the broadcast form makes arrays of its own, its tiles' scratch: with reference counting)
dense_tn_tiled_serial, dense_tn_tiled_parallel = compile_twice(_fast.dense_tn_tiled, _nrt=True)
# ... and its build without the wide products' ways of walking (dense_fast.WIDE_PATHS), for the
# products that never take them (``_fast.tn_wide``): the same sums in the same order.
dense_tn_plain_walk_serial, dense_tn_plain_walk_parallel = compile_twice(renamed(
    _fast.dense_tn_tiled, "__plain_walk", {**vars(_fast), "WIDE_PATHS": False}), _nrt=True)
dense_forward_blocked_serial, dense_forward_blocked_parallel = compile_twice(
    _fast.dense_forward_blocked)
dense_backward_weights_blocked_serial, dense_backward_weights_blocked_parallel = compile_twice(
    _fast.dense_backward_weights_blocked)
dense_backward_weights_narrow_serial, dense_backward_weights_narrow_parallel = compile_twice(
    _fast.dense_backward_weights_narrow)
dense_backward_inputs_narrow_serial, dense_backward_inputs_narrow_parallel = compile_twice(
    _fast.dense_backward_inputs_narrow)


# Scratch arrays (packed transposes, panels) are kept per Python thread and reused: a 1024^3
# product's panels are 4 MB, whose first touch after a fresh allocation costs ~1 ms of page
# faults. Per thread, so that ops called from several threads at once never share one.
_scratch = threading.local()
SCRATCH_ARRAYS = 32  # per thread; beyond that (many layer shapes) the cache is dropped


def scratch(slot, shape, dtype):
    """A reused aligned scratch array of this thread (one per ``slot``, shape and dtype)."""
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    # (callers pass an array's dtype: as it is, it keys the dict in ~0.1 us, np.dtype(...).str
    # cost ~0.5 us, paid by a small layer's backward at every step; a dtype given another way
    # keys an entry of its own, the same kind of array)
    key = (slot, shape, dtype)
    target = arrays.get(key)
    if target is None:
        if len(arrays) >= SCRATCH_ARRAYS:
            arrays.clear()
        target = arrays[key] = aligned_empty(shape, dtype)
    return target


# The compiled training step's buffers (``loopnet.compiled``: activations, gradients, scratch,
# the flat parameters) are lent from a pool of this thread's arrays, not allocated per call:
# fresh memory costs a page fault per 4 KB on first touch, which made a ``predict`` of ch17's
# 1,000 rows (~1 MB of activations) ~680 us against ~150 us for the layers run one by one. An
# array is out of the pool while the run that borrowed it lives (a callback's ``predict``
# during ``train`` borrows others), and only this thread's runs ever see it.
_lent = threading.local()
POOL_BYTES = 64 * 2**20  # kept per thread, at most (arrays beyond it are left to the collector)


def borrow(size, dtype):
    """An uninitialised aligned 1-D array of ``size`` elements: one this thread gave back
    (``give_back``), else a new one. The caller owns it until it gives it back."""
    dtype = np.dtype(dtype)
    arrays = getattr(_lent, "arrays", None)
    if arrays:
        free = arrays.get((size, dtype))
        if free:
            array = free.pop()
            _lent.bytes -= array.nbytes
            return array
    return aligned_empty(size, dtype)


def give_back(arrays):
    """Return arrays from ``borrow`` to this thread's pool (the caller keeps no view of them)."""
    pool = getattr(_lent, "arrays", None)
    if pool is None:
        pool = _lent.arrays = {}
        _lent.bytes = 0
    for array in arrays:
        if _lent.bytes + array.nbytes <= POOL_BYTES:
            pool.setdefault((array.size, array.dtype), []).append(array)
            _lent.bytes += array.nbytes


def _packed(source, slot):
    """``source.T`` packed into a scratch array; a vector (one row or one column) is its own
    transpose in memory, so it is handed back reshaped, with no copy (the same values)."""
    rows, columns = source.shape
    if rows == 1 or columns == 1:
        return source.reshape(columns, rows)
    target = scratch(slot, (columns, rows), source.dtype)
    transpose = (transpose_parallel
                 if source.size >= 4 * PARALLEL_MIN and threads.parallel_allowed()
                 else transpose_serial)
    transpose(source, target)
    return target


# An operand of the dot-product kernel is read once per row of the other operand's side of the
# output (``reuse`` times), while an aligned copy costs one pass over it (~10 GB/s here) and
# unaligned 512-bit loads cost ~10% of each pass: below this reuse the copy costs more than it
# saves (4096x784x128 forward, unaligned inputs, reuse 128: 4.2 ms copying, 3.3 ms read in
# place; 1024^3, reuse 1024: 9.1 ms copying, 9.9-13.5 ms in place).
ALIGN_COPY_MIN_REUSE = int(os.environ.get("LOOPNET_ALIGN_COPY_MIN_REUSE", 512))


def _aligned_for(source, reuse, slot):
    """``source``, or an aligned copy in a scratch array when the dot-product kernel reads it
    ``reuse`` >= ALIGN_COPY_MIN_REUSE times and it is not aligned (the results are the same)."""
    if reuse < ALIGN_COPY_MIN_REUSE or address(source) % 64 == 0:
        return source
    target = scratch(slot, source.shape, source.dtype)
    np.copyto(target, source)
    return target


def _panels(b, slot):
    """Scratch for ``b`` cut into panels by ``dense_tn_tiled``, or ``b`` itself viewed as its
    one panel when it already is one (``is_own_panel``: 64 contiguous columns; writeable, so
    that the kernel sees the type of the scratch it would otherwise get)."""
    n_k, n_columns = b.shape
    width = _fast.PANEL_WIDTH
    if (n_columns == width and b.flags.c_contiguous and b.flags.writeable
            and b.strides[0] == width * b.itemsize):   # (one row counts as contiguous)
        return b.reshape(1, n_k, width)
    return scratch(slot, ((n_columns + width - 1) // width, n_k, width), b.dtype)


def _broadcast(parallel, a, b):
    """The build of ``dense_tn_tiled`` that runs ``a.T @ b``."""
    if _fast.tn_wide(a.shape[0], a.shape[1], b.shape[1]):
        return dense_tn_tiled_parallel if parallel else dense_tn_tiled_serial
    return dense_tn_plain_walk_parallel if parallel else dense_tn_plain_walk_serial


def _dot(form, parallel):
    if form == _fast.DOT_PLAIN:
        return dense_nt_plain_parallel if parallel else dense_nt_plain_serial
    return dense_nt_tiled_parallel if parallel else dense_nt_tiled_serial


def dense_forward(inputs, weights, biases, output):
    """``output = inputs @ weights + biases`` in the form ``dense_plan`` names."""
    n_samples, n_inputs = inputs.shape
    n_neurons = weights.shape[1]
    form, parallel = dense_plan(n_samples, n_inputs, n_neurons, inputs.itemsize == 8).forward
    if form == _fast.BROADCAST:
        _broadcast(parallel, inputs.T, weights)(inputs.T, weights,
                                                _panels(weights, "weights_panels"), biases,
                                                True, output)
    elif form in (_fast.DOT_TILES, _fast.DOT_PLAIN):
        _dot(form, parallel)(_aligned_for(inputs, n_neurons, "inputs"),
                             _packed(weights, "weights_t"), biases, True, output)
    elif form == _fast.FEW_INPUTS:
        kernel = (dense_forward_few_inputs_parallel if parallel
                  else dense_forward_few_inputs_serial)
        kernel(inputs, weights, biases, output)
    elif parallel:
        dense_forward_blocked_parallel(inputs, weights, biases, output)
    else:
        dense_forward_blocked_serial(inputs, weights, biases, output)


def dense_backward_inputs(dvalues, weights, dinputs, product=None):
    """``dinputs = dvalues @ weights.T`` in the form ``dense_plan`` names (``product``: its
    ``dinputs``, when the caller has the plan already)."""
    if product is None:
        product = dense_plan(dvalues.shape[0], *weights.shape, dvalues.itemsize == 8).dinputs
    form, parallel = product
    # (the small layers' forms first, with the sides looked up where needed: a learner's loop
    # runs these wrappers for every layer at every step)
    if form == _NARROW:
        kernel = (dense_backward_inputs_narrow_parallel if parallel
                  else dense_backward_inputs_narrow_serial)
        kernel(dvalues, _packed(weights, "weights_t"), dinputs)
    elif form == _DOT_PLAIN or form == _DOT_TILES:
        n_samples, n_inputs = dvalues.shape[0], weights.shape[0]
        _dot(form, parallel)(_aligned_for(dvalues, n_inputs, "dvalues"),
                             _aligned_for(weights, n_samples, "weights"), dinputs[0], False,
                             dinputs)
    else:   # (BROADCAST)
        _broadcast(parallel, dvalues.T, weights.T)(
            dvalues.T, weights.T, _panels(weights.T, "weights_t_panels"), dinputs[0], False,
            dinputs)


def dense_backward_weights(inputs, dvalues, dweights, product=None):
    """``dweights = inputs.T @ dvalues`` in the form ``dense_plan`` names (``product``: its
    ``dweights``, when the caller has the plan already)."""
    if product is None:
        product = dense_plan(*inputs.shape, dvalues.shape[1], inputs.itemsize == 8).dweights
    form, parallel = product
    if form == _FEW_INPUTS:
        kernel = (dense_backward_weights_few_inputs_parallel if parallel
                  else dense_backward_weights_few_inputs_serial)
        kernel(inputs, dvalues, dweights)
    elif form == _NARROW:
        kernel = (dense_backward_weights_narrow_parallel if parallel
                  else dense_backward_weights_narrow_serial)
        kernel(inputs, dvalues,
               scratch("dweights_t", (dvalues.shape[1], inputs.shape[1]), inputs.dtype),
               dweights)
    elif form == _BROADCAST:
        _broadcast(parallel, inputs, dvalues)(inputs, dvalues,
                                              _panels(dvalues, "dvalues_panels"), dweights[0],
                                              False, dweights)
    elif parallel:
        dense_backward_weights_blocked_parallel(inputs, dvalues, dweights)
    else:
        dense_backward_weights_blocked_serial(inputs, dvalues, dweights)


def dense_gradients(inputs, dvalues, weights, dweights, dbiases, dinputs):
    """A dense layer's three gradients (``dbiases`` flat) with one look at the plan: the
    layers' direct path (``ops.dense_backward_direct``), where a small layer's three calls
    each paid for finding its form again."""
    _, for_weights, for_inputs = dense_plan(inputs.shape[0], inputs.shape[1], weights.shape[1],
                                            inputs.itemsize == 8)
    dense_backward_weights(inputs, dvalues, dweights, for_weights)
    dense_backward_biases(dvalues, dbiases)
    dense_backward_inputs(dvalues, weights, dinputs, for_inputs)


_penalties_serial, _penalties_parallel = compile_twice(_regularization.dense_penalties_backward)
dense_penalties_loss = compile_loops(_regularization.dense_penalties_loss)


def dense_penalties(weights, biases, weight_l1, weight_l2, bias_l1, bias_l2, dweights,
                    dbiases):
    """A dense layer's L1/L2 penalties' gradients added to ``dweights`` and ``dbiases`` (all
    C-contiguous, ``biases`` and ``dbiases`` (1, n_neurons); the coefficients checked floats)
    in one call: the layers' direct path (``ops.dense_backward_direct``). Parallel for as many
    weights as ``by_size`` runs a kernel's parallel build for: the same bits either way."""
    if weights.size >= PARALLEL_MIN_ELEMENTS and threads.parallel_allowed():
        kernel = _penalties_parallel
    else:
        kernel = _penalties_serial
    kernel(weights, biases, weight_l1, weight_l2, bias_l1, bias_l2, dweights, dbiases)


# --- A learner's dense layer in one compiled call a pass ------------------------------------------
# A learner's loop runs ``Dense.forward`` and ``Dense.backward`` for every layer at every step. At
# the book's sizes a backward's kernels take ~2 us and the Python around them took ~4 us more
# (seven arrays checked, the plan, five dispatches: the overlap check, three products, the
# penalties); a forward's kernel ~1 us and its Python ~2 us. A lane runs a small layer's pass
# (each product in a serial form that takes no scratch of the thread's) as one compiled call,
# which checks what that Python checked: the sides, the buffers' sizes, their overlap. numba's
# dispatch checks the rest: a lane's build takes C-contiguous, writeable 2-D arrays of its one
# float dtype and nothing else (compiling is turned off once that signature is made), so any
# other array raises a TypeError at once, and the layer's usual path runs, which converts or
# explains. A lane calls, by address, the very kernels the usual path runs: the same bits.
# Measured in BENCHMARKS.md, "Then: a small dense layer's pass in one compiled call".

def dense_forward_lane_loops(inputs, weights, biases, output):
    """``dense_forward`` in the form FORWARD (a constant of each build), serially, for
    ``biases`` of shape (1, n_neurons) and a new ``output``. Returns False, having written
    nothing, when a side does not align or is 0."""
    n_samples, n_inputs = inputs.shape
    n_neurons = weights.shape[1]
    if (n_samples == 0 or n_inputs == 0 or n_neurons == 0 or weights.shape[0] != n_inputs
            or biases.shape[0] != 1 or biases.shape[1] != n_neurons
            or output.shape[0] != n_samples or output.shape[1] != n_neurons):
        return False
    if FORWARD == FEW_INPUTS:
        forward_few_inputs(inputs, weights, biases[0], output)
    elif FORWARD == BLOCKED:
        forward_blocked(inputs, weights, biases[0], output)
    else:   # (DOT_PLAIN, DOT_TILES: on weights.T, packed as ``_packed`` packs it)
        if n_neurons == 1:
            weights_t = weights.reshape(1, n_inputs)
        else:
            weights_t = np.empty((n_neurons, n_inputs), weights.dtype)
            transpose(weights, weights_t)
        if FORWARD == DOT_PLAIN:
            dot_plain(inputs, weights_t, biases[0], True, output)
        else:
            dot_tiles(inputs, weights_t, biases[0], True, output)
    return True


def dense_backward_lane_loops(inputs, dvalues, weights, biases, dweights, dbiases, dinputs,
                              dvalues_rows, weights_rows, weight_l1, weight_l2, bias_l1,
                              bias_l2):
    """``dense_gradients``, then ``dense_penalties`` when PENALIZED, in the forms DWEIGHTS and
    DINPUTS (constants of each build), serially; the dot-product forms read ``dvalues_rows``
    and ``weights_rows`` (``dvalues`` and ``weights``, or aligned copies of them). Returns
    False, having written nothing, when a side does not align or is 0, or a buffer does not
    fit or shares memory with another array (without PENALIZED, ``biases`` is not read)."""
    n_samples, n_inputs = inputs.shape
    n_neurons = weights.shape[1]
    if (n_samples == 0 or n_inputs == 0 or n_neurons == 0
            or weights.shape[0] != n_inputs or dvalues.shape[0] != n_samples
            or dvalues.shape[1] != n_neurons
            or dvalues_rows.shape[0] != n_samples or dvalues_rows.shape[1] != n_neurons
            or weights_rows.shape[0] != n_inputs or weights_rows.shape[1] != n_neurons):
        return False
    if PENALIZED and (biases.shape[0] != 1 or biases.shape[1] != n_neurons):
        return False
    if (dweights.shape[0] != n_inputs or dweights.shape[1] != n_neurons
            or dbiases.shape[0] != 1 or dbiases.shape[1] != n_neurons
            or dinputs.shape[0] != n_samples or dinputs.shape[1] != n_inputs):
        return False
    if overlapping(dweights, dbiases, dinputs, dvalues, inputs, weights, biases):
        return False
    if DWEIGHTS == FEW_INPUTS:
        weights_few_inputs(inputs, dvalues, dweights)
    elif DWEIGHTS == BLOCKED:
        weights_blocked(inputs, dvalues, dweights)
    else:   # (NARROW: summed into its transpose; np.empty, not a scratch shared by threads)
        weights_narrow(inputs, dvalues, np.empty((n_neurons, n_inputs), dweights.dtype),
                       dweights)
    biases_sum(dvalues, dbiases[0])
    if DINPUTS == NARROW:
        if n_neurons == 1:      # (one neuron's column is its own transpose: ``_packed``)
            weights_t = weights.reshape(1, n_inputs)
        else:
            weights_t = np.empty((n_neurons, n_inputs), weights.dtype)
            transpose(weights, weights_t)
        inputs_narrow(dvalues, weights_t, dinputs)
    elif DINPUTS == DOT_PLAIN:
        dot_plain(dvalues_rows, weights_rows, dinputs[0], False, dinputs)
    else:
        dot_tiles(dvalues_rows, weights_rows, dinputs[0], False, dinputs)
    if PENALIZED:
        penalties(weights, biases, weight_l1, weight_l2, bias_l1, bias_l2, dweights, dbiases)
    return True


# The products a lane runs (serial, every one): forward FEW_INPUTS, BLOCKED, DOT_PLAIN,
# DOT_TILES; dweights FEW_INPUTS, BLOCKED, NARROW; dinputs NARROW, DOT_PLAIN, DOT_TILES. Larger
# layers (a parallel or broadcast product) take the usual path, where the Python is a small
# part of the time.
_LANE_FORMS = {_fast.FEW_INPUTS: "few", _fast.BLOCKED: "blocked", _fast.NARROW: "narrow",
               _fast.DOT_PLAIN: "dot_plain", _fast.DOT_TILES: "dot_tiles"}
_LANE_FORWARD = (_fast.FEW_INPUTS, _fast.BLOCKED, _fast.DOT_PLAIN, _fast.DOT_TILES)
_LANE_DWEIGHTS = (_fast.FEW_INPUTS, _fast.BLOCKED, _fast.NARROW)
_LANE_DINPUTS = (_fast.NARROW, _fast.DOT_PLAIN, _fast.DOT_TILES)
_LANE_DTYPES = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64}
# The kernels a lane calls, by the names it calls them (the serial builds the usual path runs)
_LANE_KERNELS = {"overlapping": overlapping,
                 "forward_few_inputs": dense_forward_few_inputs_serial,
                 "forward_blocked": dense_forward_blocked_serial,
                 "weights_few_inputs": dense_backward_weights_few_inputs_serial,
                 "weights_blocked": dense_backward_weights_blocked_serial,
                 "weights_narrow": dense_backward_weights_narrow_serial,
                 "biases_sum": getattr(dense_backward_biases, "serial", dense_backward_biases),
                 "transpose": transpose_serial,
                 "inputs_narrow": dense_backward_inputs_narrow_serial,
                 "dot_plain": dense_nt_plain_serial,
                 "dot_tiles": dense_nt_tiled_serial,
                 "penalties": _penalties_serial}
_lanes: dict = {}           # ``_make_lane``'s keys -> a build, or None
_lanes_lock = threading.Lock()
_lanes_asked: dict = {}     # keys of lanes not made yet -> how many times they were asked for
LANE_AFTER_ASKED = 3
# A layer's call finds its lane in one look-up by its sides and dtype (``_lane_of`` fills them)
_forward_lanes: dict = {}   # (n_samples, n_inputs, n_neurons, dtype) -> a build, or False
_backward_lanes: dict = {}  # (..., dtype, penalized) -> a build, or False
LANE_SIDES_KEPT = 256       # sides remembered (batch sizes x layers); beyond, forgotten
_lanes_checked: set = set()  # the builds that have refused an array (``_lane_takes``)


def _lane_forms(sides, double):
    """``(forward, backward, penalized)`` for a layer of these sides (n_samples, n_inputs,
    n_neurons) and operands (float64 where ``double``): the forward form of its lane; the
    (dweights, dinputs) forms of its backward's; the same for a layer with penalties. Each
    is None where the usual path runs a kernel a lane does not: a parallel build (the column
    sums of ``dvalues``, the penalties: by ``by_size``'s rule), or a form no lane runs."""
    n_samples, n_inputs, n_neurons = sides
    forward, for_weights, for_inputs = dense_plan(*sides, double)
    if forward.parallel or forward.form not in _LANE_FORWARD:
        forward = None
    else:
        forward = forward.form
    parallel = threads.parallel_allowed()
    if (for_weights.parallel or for_inputs.parallel or for_weights.form not in _LANE_DWEIGHTS
            or for_inputs.form not in _LANE_DINPUTS
            or (parallel and n_samples * n_neurons >= PARALLEL_MIN_ELEMENTS)):
        backward = None
    else:
        backward = (for_weights.form, for_inputs.form)
    penalized = backward
    if parallel and n_inputs * n_neurons >= PARALLEL_MIN_ELEMENTS:
        penalized = None
    return forward, backward, penalized


def _lane_asked(key):
    """A lane not made yet is asked for: made (``_make_lane``) at the LANE_AFTER_ASKED-th time,
    None before, and None while the compile helper is making it (a cold pass's job: made
    here too, it would cost this process the compile the helper makes on the other core).
    A layer run once or twice (``Model.evaluate``'s layered forward, a notebook cell) does not
    pay a lane's compile (~0.2 s on a cold cache); a loop does, once."""
    asked = _lanes_asked.get(key, 0) + 1
    if asked < LANE_AFTER_ASKED:
        _lanes_asked[key] = asked
        return None
    if _helper.making(("lane", key[-1].str) + key[:-1]):
        return None     # (a cold pass handed it to the helper: the usual path until it is made)
    return _make_lane(key)


def _make_lane(key):
    """The build of a lane for ``key``: ``("forward", form, dtype)`` or ``("backward", (dweights
    form, dinputs form), penalized, dtype)``, compiled (or loaded from numba's cache) for its
    one signature, with compiling then turned off; None for a dtype no lane takes."""
    with _lanes_lock:
        if key in _lanes:
            return _lanes[key]
        pass_, forms, dtype = key[0], key[1], key[-1]
        element = _LANE_DTYPES.get(dtype)
        lane = None
        if element is not None:
            namespace = {**globals(), **vars(_fast)}
            namespace.update({name: _called_by_address(kernel)
                              for name, kernel in _LANE_KERNELS.items()})
            array = types.Array(element, 2, "C")
            if pass_ == "forward":
                namespace["FORWARD"] = forms
                function, suffix = dense_forward_lane_loops, f"__{_LANE_FORMS[forms]}"
                signature = (array,) * 4
            else:
                penalized = key[2]
                namespace.update(DWEIGHTS=forms[0], DINPUTS=forms[1], PENALIZED=penalized)
                function = dense_backward_lane_loops
                suffix = (f"__{_LANE_FORMS[forms[0]]}_{_LANE_FORMS[forms[1]]}"
                          + ("_penalized" if penalized else ""))
                signature = (array,) * 9 + (types.float64,) * 4
            lane = njit(renamed(function, suffix, namespace), **OPTIONS)
            lane.compile(signature)
            lane.disable_compile()
        _lanes[key] = lane
        return lane


def _lane_of(lanes, key):
    """The lane of a layer whose call of ``key`` (n_samples, n_inputs, n_neurons, dtype[,
    penalized]) missed in ``lanes`` (``_forward_lanes`` or ``_backward_lanes``): its build
    (kept there once made), False when its plan has no lane (kept too), or None while not made
    yet (``_lane_asked``)."""
    n_samples, n_inputs, n_neurons, dtype = key[:4]
    forward, backward, penalized = _lane_forms((n_samples, n_inputs, n_neurons),
                                               dtype.itemsize == 8)
    if lanes is _forward_lanes:
        build = None if forward is None else ("forward", forward, dtype)
    else:
        forms = penalized if key[4] else backward
        build = None if forms is None else ("backward", forms, key[4], dtype)
    if build is None or dtype not in _LANE_DTYPES:
        lane = False
    else:
        lane = _lanes.get(build, False)
        if lane is False:
            lane = _lane_asked(build)
            if lane is None:
                return None
        lane = lane or False     # (None from _make_lane: a dtype no lane takes)
    if len(lanes) >= LANE_SIDES_KEPT:
        lanes.clear()
    lanes[key] = lane
    return lane


def dense_forward_lane(inputs, weights, biases):
    """``ops.dense_forward``'s first try: ``inputs @ weights + biases`` in a new array, computed
    by one compiled call (above), or None when this layer or these arrays are not a lane's."""
    if (type(inputs) is not _ndarray or type(weights) is not _ndarray
            or type(biases) is not _ndarray):
        return None
    shape, sides = inputs.shape, weights.shape
    if len(shape) != 2 or len(sides) != 2 or len(biases.shape) != 2:
        return None
    dtype = inputs.dtype
    if weights.dtype != dtype:      # (mixed dtypes: the usual path's promotion)
        return None
    key = (shape[0], sides[0], sides[1], dtype)
    lane = _forward_lanes.get(key)
    if lane is None:
        lane = _lane_of(_forward_lanes, key)
    if not lane or (_lanes_checked and lane in _lanes_checked
                    and not _lane_takes(dtype, inputs, weights, biases)):
        return None
    output = empty((shape[0], sides[1]), dtype)
    try:
        done = lane(inputs, weights, biases, output)
    except TypeError:       # (an array of another kind: numba's dispatch found no build)
        _lanes_checked.add(lane)
        return None
    return output if done else None


def dense_backward_lane(dvalues, inputs, weights, biases, dweights, dbiases, dinputs,
                        penalties):
    """``ops.dense_backward_direct``'s first try: ``(dweights, dbiases, dinputs)`` computed in
    the given buffers by one compiled call (above), or None when this layer or these arrays
    are not a lane's (nothing written). ``penalties``: the layer's checked ``(weight_l1,
    weight_l2, bias_l1, bias_l2)``, with ``biases``; or None."""
    if (type(dvalues) is not _ndarray or type(inputs) is not _ndarray
            or type(weights) is not _ndarray or type(dweights) is not _ndarray
            or type(dbiases) is not _ndarray or type(dinputs) is not _ndarray):
        return None
    shape, sides = dvalues.shape, weights.shape
    if len(shape) != 2 or len(sides) != 2:
        return None
    dtype = dvalues.dtype
    if inputs.dtype != dtype or weights.dtype != dtype:     # (the usual path's promotion)
        return None
    if penalties is None:
        penalties = _NO_PENALTIES
        biases = weights                    # (not read)
    elif type(biases) is not _ndarray:
        return None
    key = (shape[0], sides[0], sides[1], dtype, penalties is not _NO_PENALTIES)
    lane = _backward_lanes.get(key)
    if lane is None:
        lane = _lane_of(_backward_lanes, key)
    if not lane or (_lanes_checked and lane in _lanes_checked and not _lane_takes(
            dtype, dvalues, inputs, weights, biases, dweights, dbiases, dinputs)):
        return None
    dvalues_rows, weights_rows = dvalues, weights
    if (max(shape[0], sides[0]) >= ALIGN_COPY_MIN_REUSE
            and dense_plan(shape[0], *sides, dvalues.itemsize == 8).dinputs.form != _NARROW):
        # (the dot-product forms read an operand from an aligned copy where ``_aligned_for``
        # makes one: a copy of an array of this lane's kind only)
        if not (dvalues.flags.c_contiguous and weights.flags.c_contiguous):
            return None
        dvalues_rows = _aligned_for(dvalues, sides[0], "dvalues")
        weights_rows = _aligned_for(weights, shape[0], "weights")
    try:
        done = lane(inputs, dvalues, weights, biases, dweights, dbiases, dinputs,
                    dvalues_rows, weights_rows, *penalties)
    except TypeError:       # (an array of another kind: numba's dispatch found no build)
        _lanes_checked.add(lane)
        return None
    return (dweights, dbiases, dinputs) if done else None


def _lane_takes(dtype, *arrays) -> bool:
    """Whether a lane's build of ``dtype`` takes these numpy arrays: each 2-D, C-contiguous,
    writeable, of that dtype. Asked before calling a lane that has refused an array (numba's
    TypeError costs ~30 us, against ~0.1 us an array for this): a loop that hands a layer a
    read-only or strided array at every step keeps the usual path's speed."""
    for array in arrays:
        flags = array.flags
        if (not (flags.c_contiguous and flags.writeable) or array.dtype != dtype
                or array.ndim != 2):
            return False
    return True


_NO_PENALTIES = (0.0, 0.0, 0.0, 0.0)
_ndarray = np.ndarray


def _lanes_in_child() -> None:
    """A forked child: the sides' forms again from its own plans (forgotten at a fork too), and
    a lock of its own (another thread may have held the parent's, making a lane, at the fork)."""
    global _lanes_lock
    _forward_lanes.clear()
    _backward_lanes.clear()
    _lanes_lock = threading.Lock()


# --- A learner's loop: a layer's backward compiled ahead (cpu_helper.Ahead) -----------------------
# A job allocates zeros of the layer's sides (inputs, dvalues, the gradients): beyond this many
# elements (16 MB of float32) its layer's backward compiles when it runs, as without the helper.
AHEAD_MAX_ELEMENTS = 1 << 22
_handed_over: set = set()       # jobs handed over in this process (every pass shares it)


def ahead_jobs(n_samples: int, n_inputs: int, n_neurons: int, dtype, penalties: bool) -> list:
    """The jobs (``run_ahead``) that make the kernels a dense layer of these sides runs in its
    backward on this device, and the lanes of its passes."""
    if n_samples * (2 * n_inputs + n_neurons) + n_inputs * n_neurons > AHEAD_MAX_ELEMENTS:
        return []
    double = np.dtype(dtype).itemsize == 8
    plan = dense_plan(n_samples, n_inputs, n_neurons, double)
    name = np.dtype(dtype).str
    jobs = [("dweights", name, n_samples, n_inputs, n_neurons, *plan.dweights),
            ("dinputs", name, n_samples, n_inputs, n_neurons, *plan.dinputs),
            ("dbiases", name, n_samples, n_neurons), ("overlapping", name)]
    if penalties:
        jobs.append(("penalties", name, n_inputs, n_neurons))
    forward, backward, penalized = _lane_forms((n_samples, n_inputs, n_neurons), double)
    backward = penalized if penalties else backward
    if backward is not None:
        jobs.append(("lane", name, "backward", backward, bool(penalties)))
    if forward is not None:
        jobs.append(("lane", name, "forward", forward))
    return jobs


def _lane_job(job) -> bool:
    """Whether a job makes a lane: the first backward does not need it (a lane runs from a
    layer's third pass), so the helper may make it after that backward."""
    return job[0] == "lane"


def run_ahead(job) -> None:
    """Run one job's kernels once, on zeros, as a layer's backward calls them (the same argument
    types): numba compiles them, or loads them from its cache. Nothing computed is kept. (A
    lane's job makes the lane, for the same cache.)"""
    kind, dtype, *sides = job
    dtype = np.dtype(dtype)

    def zeros(*shape):
        return np.zeros(shape, dtype)

    if kind == "dweights":
        n_samples, n_inputs, n_neurons, form, parallel = sides
        dense_backward_weights(zeros(n_samples, n_inputs), zeros(n_samples, n_neurons),
                               empty((n_inputs, n_neurons), dtype), Product(form, parallel))
    elif kind == "dinputs":
        n_samples, n_inputs, n_neurons, form, parallel = sides
        dense_backward_inputs(zeros(n_samples, n_neurons), zeros(n_inputs, n_neurons),
                              empty((n_samples, n_inputs), dtype), Product(form, parallel))
    elif kind == "dbiases":
        n_samples, n_neurons = sides
        dense_backward_biases(zeros(n_samples, n_neurons), empty((1, n_neurons), dtype)[0])
    elif kind == "overlapping":
        a = zeros(1, 1)
        overlapping(a, a, a, a, a, a, a)
    elif kind == "penalties":
        n_inputs, n_neurons = sides
        dense_penalties(zeros(n_inputs, n_neurons), zeros(1, n_neurons), 0.0, 1.0, 0.0, 1.0,
                        zeros(n_inputs, n_neurons), zeros(1, n_neurons))
    elif kind == "lane":       # (the lane of a layer's pass, made here for the loop's later steps)
        _make_lane((*sides, dtype))
    else:
        raise ValueError(f"unknown job {job!r}")


class _ColdCompiles(_event.Listener):
    """A loopnet kernel compiled in this process (not loaded from numba's cache, which it is
    saved to), outside a build of the training step: the cache is cold, so the forwards that
    follow hand their layers' backwards to the compile helper (``ops.ahead``)."""

    def on_start(self, event) -> None:
        pass

    def on_end(self, event) -> None:
        dispatcher = (event.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
        if (not module.startswith("loopnet.") or _helper.current() is not None
                or not _helper.caches_to_disk(dispatcher)):
            return
        from loopnet import ops

        cold = ops.ahead
        if cold is None or cold.finished:
            ops.ahead = _helper.Ahead(run_ahead, _handed_over, _lane_job)
        else:
            cold.wanted = True


def _forget_ahead_in_child() -> None:
    from loopnet import ops

    ops.ahead = None            # (the parent's helper is not this process's)


if _helper.enabled():
    _event.register("numba:compile", _ColdCompiles())
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_ahead_in_child)


# --- The compiled training step (loopnet.kernels.step) ------------------------------------------------

from loopnet.kernels import step as _step  # noqa: E402

# A training step of this many multiply-adds (batch rows x the dense layers' sides) or more
# runs a parallel build of the step; smaller ones a serial build, whose cold compile is also
# shorter (the book's spiral model: ~40k-1M per step; `loopnet train`'s defaults 0.96M, as fast
# either way). With the middle-sized products in the broadcast form the parallel build ran
# faster from ~1.1M on (epochs a second, serial -> parallel: 2-32-32-3 on 900 rows, 1.07M,
# 7,243-8,472 -> 9,336-9,489; on 1,500 rows, 1.8M, 5,000-5,035 -> 5,937; on 3,000, 3.55M,
# 2,492-2,535 -> 3,609-3,637; 2-96-3 on 3,000, 1.44M, 4,486-4,520 -> 5,230-5,321).
PARALLEL_STEP_MIN = int(os.environ.get("LOOPNET_PARALLEL_STEP_MIN", 1_500_000))


def parallel_step(work: int) -> bool:
    """Whether a step of ``work`` multiply-adds runs a parallel build."""
    return work >= PARALLEL_STEP_MIN and threads.parallel_allowed()

_step_builds: dict = {}


if hasattr(os, "register_at_fork"):    # a forked child may have to run serial builds only
    os.register_at_fork(after_in_child=dense_plan.cache_clear)
    os.register_at_fork(after_in_child=_lanes_in_child)


def _kernels_of_the_step(build) -> dict:
    """``{"<kernel>_serial": ..., "<kernel>_parallel": ...}``: the compiled kernels a build of
    the training step calls, the very dispatchers the layered ops run (for a serial build both
    names give the serial one; under workqueue the whole step takes the lock instead).
    ``dense_tn_tiled``'s are its builds with the wide ways of walking when the build has
    WIDE_BROADCAST, else those without (``dense_fast.WIDE_PATHS``); the element-wise kernels'
    parallel names give their serial builds unless the build has LAYERS_IN_PARALLEL
    (``step.LAYER_KERNELS``) or PARAMETERS_IN_PARALLEL (``step.PARAMETER_KERNELS``)."""
    names = {"transpose_tiled": "transpose"}
    if _step.WIDE_BROADCAST not in build.layers:
        names["dense_tn_tiled"] = "dense_tn_plain_walk"
    serial_only = set()
    if _step.LAYERS_IN_PARALLEL not in build.layers:
        serial_only.update(_step.LAYER_KERNELS)
    if _step.PARAMETERS_IN_PARALLEL not in build.layers:
        serial_only.update(_step.PARAMETER_KERNELS)
    kernels = {}
    for name in _step.KERNEL_NAMES:
        if name in LOOPS:
            run = globals()[name]                      # by_size's two builds, or one
            serial, parallel_build = (getattr(run, "serial", run), getattr(run, "parallel", run))
        else:
            serial = globals()[f"{names.get(name, name)}_serial"]
            parallel_build = globals()[f"{names.get(name, name)}_parallel"]
        kernels[f"{name}_serial"] = serial
        kernels[f"{name}_parallel"] = (getattr(parallel_build, "kernel", parallel_build)
                                       if build.parallel and name not in serial_only
                                       else serial)
    return kernels


# --- The step's kernels, called by address --------------------------------------------------------
# numba compiles a function that calls another compiled function by linking a copy of the
# callee's LLVM module into the caller's, then optimizing it and making machine code of it again:
# every kernel a build of the step calls went through LLVM a second time inside it (~2.3 s of
# the first ``loopnet train``'s ~9 s of compile). The kernels run 1-100 us a call, far too long
# for inlining them into the step to pay. So the step calls each kernel through a symbol of its
# own, ``loopnet.kernel.<function>.<argument types>``, which this process binds to the address of
# the kernel's machine code (``bind_kernel_symbol``): the step runs the very machine code the
# layered ops run. A build loaded from numba's cache holds that symbol, not the kernel's code:
# numba runs a cached function's reload hooks before it loads its machine code, and the step's
# hooks bind its symbols (compiling or loading each kernel first), so a build never loads
# unbound. Measured in BENCHMARKS.md, "Then: the step's kernels called by address". While
# ``compile_for`` compiles a build, its kernels are typed, not compiled, and made (partly by a
# helper process) just before the build's own machine code: ``cpu_helper``.
_bound_symbols: set = set()
_kernels_by_name: dict = {}     # function name -> the kernel a build calls under that name


def _kernel_named(qualname: str):
    """The kernel a build calls under its function's name ``qualname`` (each build of a kernel
    has a name of its own: numba's cache tells builds apart by it). ``training_step`` registers
    a build's kernels before numba compiles the build or loads it, and so runs its hooks."""
    if qualname in _kernels_by_name:
        return _kernels_by_name[qualname]
    raise LookupError(f"a compiled training step calls kernel {qualname!r}, which loopnet's cpu "
                      "backend does not have: numba's cache holds a step of another version of "
                      "loopnet; delete the cache (NUMBA_CACHE_DIR, or loopnet's __pycache__)")


def bind_kernel_symbol(symbol: str, qualname: str, argtypes: tuple,
                       return_type=None) -> None:
    """Compile (or load from numba's cache) kernel ``qualname`` for ``argtypes`` and bind
    ``symbol``, the name by which the training step calls it, to its machine code
    (``return_type``: the type the step was typed with, checked)."""
    if symbol in _bound_symbols:
        return
    import llvmlite.binding

    kernel = _kernel_named(qualname)
    kernel.compile(argtypes)
    compiled = kernel.overloads[argtypes]
    if return_type is not None and compiled.signature.return_type != return_type:
        raise RuntimeError(f"kernel {qualname!r} returns {compiled.signature.return_type}; the "
                           f"training step calls it as returning {return_type}")
    llvmlite.binding.add_symbol(symbol, compiled.library.get_pointer_to_function(
        compiled.fndesc.llvm_func_name))
    _bound_symbols.add(symbol)


_bindings: dict = {}     # one hook object per symbol: a library's set of hooks holds it once


def _called_by_address(kernel):
    """``kernel`` (a numba dispatcher) as the step calls it: through its symbol (above)."""
    from numba.core import cgutils, itanium_mangler

    dispatcher = getattr(kernel, "kernel", kernel)
    qualname = dispatcher.py_func.__qualname__
    if _kernels_by_name.setdefault(qualname, dispatcher) is not dispatcher:
        raise RuntimeError(f"two kernels of the cpu backend are named {qualname!r}")

    def call(typingctx, *args):
        handover = _helper.current()
        argtypes = tuple(dispatcher.fold_argument_types(args, {})[1])
        if handover is not None and argtypes not in dispatcher.overloads:
            # Noted, not compiled: the step's kernels return nothing (checked when bound), and
            # the hand-over compiles them while numba lowers the step (cpu_helper)
            handover.typed(dispatcher, qualname, argtypes)
            signature = types.none(*argtypes)
        else:
            signature = typingctx.resolve_function_type(types.Dispatcher(dispatcher), args, {})
            if signature is None:
                return None
            argtypes = tuple(signature.args)
        symbol = f"loopnet.kernel.{qualname}.{itanium_mangler.mangle_args(argtypes)}"

        def codegen(context, builder, sig, llargs):
            library = context.active_code_library
            bind = functools.partial(bind_kernel_symbol, symbol, qualname, argtypes,
                                     sig.return_type)
            handover = _helper.current()
            if handover is None or not handover.lowering(library, bind):
                bind()
            hook = _bindings.setdefault(symbol, functools.partial(
                bind_kernel_symbol, symbol, qualname, argtypes))
            library._reload_init.add(hook)
            function = cgutils.get_or_insert_function(
                builder.module, context.call_conv.get_function_type(sig.return_type, argtypes),
                symbol)
            status, result = context.call_conv.call_function(
                builder, function, sig.return_type, argtypes, llargs)
            with cgutils.if_unlikely(builder, status.is_error):
                context.call_conv.return_status_propagate(builder, status)
            return result

        return signature.return_type(*argtypes), codegen

    # numba's intrinsic takes the parameters by name (a ``*args`` would arrive as one tuple)
    code = dispatcher.py_func.__code__
    names = ", ".join(code.co_varnames[:code.co_argcount])
    namespace = {"call": call}
    exec(f"def by_address(typingctx, {names}):\n    return call(typingctx, {names})", namespace)
    by_address = namespace["by_address"]
    by_address.__name__ = by_address.__qualname__ = qualname
    return intrinsic(by_address)


def training_step(build):
    """The compiled function of ``loopnet.kernels.step.train_block`` for one
    ``loopnet.kernels.step.Build``: made on first request; numba compiles it on its first call
    (or loads it from its cache). It calls its kernels by address (above)."""
    kernel = _step_builds.get(build)
    if kernel is None:
        kernels = {name: _called_by_address(kernel)
                   for name, kernel in _kernels_of_the_step(build).items()}
        kernel = njit(_step.build(build, kernels), **OPTIONS)
        if build.parallel:
            kernel = threads.serialized(kernel)
        _step_builds[build] = kernel
    return kernel


def step_builds() -> tuple:
    """The ``loopnet.kernels.step.Build``s this process has made, oldest first."""
    return tuple(_step_builds)


# The argument kinds each kernel was compiled for in this process (``compile_for``).
_compiled_kinds: dict = {}


def _kind(value):
    """What numba's type of ``value`` depends on, read in a few attribute lookups (an array's
    dtype, dimensions, layout, writability and alignment; a scalar's Python type)."""
    if type(value) is np.ndarray:
        flags = value.flags
        return (value.dtype, value.ndim, flags.c_contiguous, flags.f_contiguous,
                flags.writeable, flags.aligned)
    return type(value)


def compile_for(kernel, args) -> float:
    """Compile (or load from numba's cache) ``kernel`` for these arguments' types unless this
    process already has it; returns the seconds it took (0.0 when it was there).

    The argument kinds already compiled are remembered: ``numba.typeof`` costs ~6 us an array,
    ~0.2 ms for the training step's ~30 arguments, paid by every block of epochs."""
    kinds = tuple(_kind(a) for a in args)
    known = _compiled_kinds.setdefault(kernel, set())
    if kinds in known:
        return 0.0
    signature = tuple(numba.typeof(a) for a in args)
    if signature in kernel.overloads:
        known.add(kinds)
        return 0.0
    start = time.perf_counter()
    # a build of the step (``training_step``'s): its kernels through cpu_helper's hand-over
    build = next((made for made, step in _step_builds.items() if step is kernel), None)
    handover = (contextlib.nullcontext() if build is None else _helper.opened(
        build, getattr(kernel, "kernel", kernel).py_func.__qualname__))
    with warnings.catch_warnings(), handover:
        # numba's pedantic check of its own IR after inlining the step's helpers into their
        # parallel regions ("variable ... is not in scope"): about numba, not about the code
        warnings.simplefilter("ignore", numba.core.errors.NumbaIRAssumptionWarning)
        kernel.compile(signature)
    known.add(kinds)
    return time.perf_counter() - start
