"""The ``cpu`` device: the loop kernels compiled by numba.

Each ``<op>_loops`` function is wrapped in ``numba.njit(cache=True)``, with ``parallel=True``
when it uses ``prange`` (a kernel without one would only pay the parallel set-up and make numba
warn). numba compiles on the first call for each dtype, and ``cache=True`` stores the machine
code in ``__pycache__`` beside the kernel file, so the next process loads it instead of compiling.

Speed (issue 5; numbers in BENCHMARKS.md):

- The dense ops pick, by shape, between loops that keep the notes' bits (``dense_*_blocked``
  and, for layers of few neurons, ``dense_backward_*_narrow``: ``dense_*_loops`` reordered to
  reuse loaded values or to run vectors along the inputs, same sums in the same order) and
  register-tiled kernels (fastmath: the same sums in another fixed order): the broadcast form
  ``dense_tn_tiled`` (no transposes) for large and middle-sized layers, the dot-product form
  ``dense_nt_tiled`` for narrow layers' forward and mid-sized ``dinputs``; and between a
  serial and a parallel build of each: starting threads costs microseconds, more than a
  small layer takes. Every choice is deterministic: one owner per output element.
- ``train_epochs`` is the fused trainer of ``loopnet.kernels.fused`` (used by ``Model.train``).
- 512-bit vector code on CPUs with AVX-512 (see ``_prefer_512_bit_vectors``).
"""

import math
import os
import threading
import types

import numba
import numpy as np

from loopnet import threads
from loopnet.backends import collect

threads.configure()  # numba's threading layer, before anything compiles (loopnet/threads.py)


def _prefer_512_bit_vectors():
    """Let LLVM emit 512-bit (zmm) vector code on AVX-512 CPUs; it emits 256-bit code by default.

    Measured on this project's machine (design notes): a tiled dense kernel ran 132 -> 205
    GFLOP/s with it. It must be set before
    numba compiles anything, and it is process-wide (it also applies to other numba code in this
    process), which is why it is decided here, once, when the cpu backend is first imported.
    The features are part of numba's cache key, so cached code of another setting is not reused.
    Opt out with ``LOOPNET_PREFER_512_BIT=0``; a user's own ``NUMBA_CPU_FEATURES`` always wins.
    """
    if os.environ.get("LOOPNET_PREFER_512_BIT", "1") == "0" or numba.config.CPU_FEATURES:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_512_bit_vectors()


def compile_loops(function):
    """``njit`` a loop kernel the way the cpu device runs it."""
    parallel = "prange" in function.__code__.co_names
    kernel = numba.njit(parallel=parallel, cache=True)(function)
    return threads.serialized(kernel) if parallel else kernel


def _copy(function, suffix, **constants):
    """The same Python function under another name: numba's cache file is named after the
    function, so a serial and a parallel build of one function compiled with ``cache=True``
    would share (and overwrite) one cache file; distinct names give each its own.
    ``constants`` replace module globals in the copy (numba freezes globals at compile time)."""
    namespace = dict(function.__globals__, **constants) if constants else function.__globals__
    copy = types.FunctionType(function.__code__, namespace,
                              function.__name__ + suffix, function.__defaults__,
                              function.__closure__)
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    return copy


def compile_twice(function, **options):
    """``(serial, parallel)`` builds of a ``prange`` kernel (a serial build runs prange as range)."""
    return (numba.njit(parallel=False, cache=True, **options)(_copy(function, "__serial")),
            threads.serialized(numba.njit(parallel=True, cache=True, **options)(function)))


LOOPS = {name: compile_loops(f) for name, f in collect("loops").items()}

# Every other prange kernel (activations, losses, optimizers, ...) also runs serially below
# PARALLEL_MIN_ELEMENTS elements: waking the second thread costs microseconds (far more when
# the other core is busy: numba's threads spin, measured 1.1 -> 5 ms per epoch of a small
# sigmoid model under load), more than a small array takes. The dense ops choose by
# multiply-adds below, with their own thresholds. Both were measured with OpenMP's threads
# spinning; threads.parallel_min_scale() scales them for the threading layer that runs.
PARALLEL_MIN_ELEMENTS = int(os.environ.get("LOOPNET_PARALLEL_MIN_ELEMENTS",
                                           50_000 * threads.parallel_min_scale()))


def by_size(function, parallel_build):
    """``parallel_build`` for large arrays, a serial build of ``function`` for small ones.

    The size is that of the largest array argument. Both builds compute every output element
    in the same order (each has one owner), so the choice never changes a result.
    """
    if "prange" not in function.__code__.co_names:
        return parallel_build
    serial_build = numba.njit(cache=True)(_copy(function, "__serial"))

    def run(*args):
        size = max([a.size for a in args if isinstance(a, np.ndarray)], default=0)
        kernel = (parallel_build if size >= PARALLEL_MIN_ELEMENTS and threads.parallel_allowed()
                  else serial_build)
        return kernel(*args)

    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    run.serial, run.parallel = serial_build, parallel_build
    return run


# (dense_forward and the dense backward products are redefined below with their own choice.)
globals().update({name: by_size(f, LOOPS[name]) for name, f in collect("loops").items()})

to_numpy = np.asarray


def empty(shape, dtype):
    """Where ``loopnet.ops`` allocates outputs: arrays of 4096 elements or more start on a
    64-byte boundary (see ``aligned_empty``), so the activations and gradients that the next
    op reads are aligned for the tiled kernels; smaller ones are plain ``np.empty``."""
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    if math.prod(shape) < 4096:  # (math.prod: np.prod costs ~3 us a call)
        return np.empty(shape, dtype)
    return aligned_empty(shape, dtype)


# --- Dense: blocked or tiled, serial or parallel, by size ------------------------------------------
# Thresholds in multiply-adds per call (n_samples * n_inputs * n_neurons), from the crossover
# table of `python benchmarks/bench.py --crossover` on the 2-core machine of BENCHMARKS.md:
# - a parallel region (omp) costs a few microseconds: serial below PARALLEL_MIN (the spiral
#   model's 300x2x64 layer, 38k, stays serial: 4.5 us either way; 300x64x3, 58k, ran 16 -> 9 us
#   in parallel), and with fewer than PARALLEL_MIN_ROWS rows there is not enough to share;
# - the broadcast form (dense_tn_tiled) packs a plain copy of one operand and wins from
#   ~0.5M multiply-adds with >= 64 inputs (_use_broadcast; 128x64x64: forward 21 -> 16 us);
#   the NT form (dense_nt_tiled), which transposes weights, serves the forward of narrow
#   layers (_use_tiled) and the fused trainer's large layers (TILED_MIN: ~10M multiply-adds,
#   >= 128 inputs, >= 64 samples).
# Override with the environment variables of the same names (LOOPNET_PARALLEL_MIN, ...).
PARALLEL_MIN = int(os.environ.get("LOOPNET_PARALLEL_MIN", 50_000 * threads.parallel_min_scale()))
PARALLEL_MIN_ROWS = int(os.environ.get("LOOPNET_PARALLEL_MIN_ROWS", 16))
TILED_MIN = int(os.environ.get("LOOPNET_TILED_MIN", 10_000_000))
TILED_MIN_INPUTS = int(os.environ.get("LOOPNET_TILED_MIN_INPUTS", 128))
TILED_MIN_ROWS = int(os.environ.get("LOOPNET_TILED_MIN_ROWS", 64))
# Middle-sized layers, with >= TILED_MIN_INPUTS inputs, >= 16 neurons and FAST_MIN
# multiply-adds or more, run fastmath kernels: the broadcast form (``_use_broadcast``), or for
# a forward of 1-4 samples the blocked loops compiled with fastmath (``dense_forward_fast``).
# Smaller layers (the spiral model's) keep the blocked loops' bits.
FAST_MIN = int(os.environ.get("LOOPNET_FAST_MIN", 1_000_000))
# Smaller layers of >= 64 inputs take the broadcast form from this many multiply-adds (see
# ``_use_broadcast``; 128x64x64 = 524k: forward 21 -> 16 us, dinputs 16 -> 14 us).
BROADCAST_MIN = int(os.environ.get("LOOPNET_BROADCAST_MIN", 500_000))

from loopnet.kernels import dense as _dense  # noqa: E402

# fastmath (FASTMATH: reassociation, no nnan/ninf) is set on nt_rows_tiled, which they call
dense_nt_tiled_serial, dense_nt_tiled_parallel = compile_twice(_dense.dense_nt_tiled)
transpose_serial, transpose_parallel = compile_twice(_dense.transpose_tiled)
# fastmath is set on tn_tile, which dense_tn_tiled calls
dense_tn_tiled_serial, dense_tn_tiled_parallel = compile_twice(_dense.dense_tn_tiled)
# no fastmath: it must keep the loops' bits (no fused multiply-adds, no reordering)
dense_forward_blocked_serial, dense_forward_blocked_parallel = compile_twice(
    _dense.dense_forward_blocked)
dense_backward_weights_blocked_serial, dense_backward_weights_blocked_parallel = compile_twice(
    _dense.dense_backward_weights_blocked)
# no fastmath: the loops' bits, vectors along the inputs (narrow layers)
dense_backward_weights_narrow_serial, dense_backward_weights_narrow_parallel = compile_twice(
    _dense.dense_backward_weights_narrow)
dense_backward_inputs_narrow_serial, dense_backward_inputs_narrow_parallel = compile_twice(
    _dense.dense_backward_inputs_narrow)
# fastmath is set on forward_rows_fast, which it calls
dense_forward_fast_serial, dense_forward_fast_parallel = compile_twice(_dense.dense_forward_fast)


def aligned_empty(shape, dtype, align=64):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (a cache
    line, and one 512-bit vector): the tiled kernels' vector loads then never straddle lines."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n_bytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(n_bytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + n_bytes].view(dtype).reshape(shape)


# Each Python thread has its own scratch buffers: two threads running ops at once must never
# pack into the same array (a thread can be switched out between packing and its kernel, and
# parallel kernels release the GIL).
_scratch = threading.local()


def _scratch_buffer(slot, shape, dtype):
    """A reused aligned scratch array (one per ``slot``, shape and dtype, and per thread)."""
    try:
        buffers = _scratch.buffers
    except AttributeError:
        buffers = _scratch.buffers = {}
    key = (slot, shape, np.dtype(dtype).str)
    target = buffers.get(key)
    if target is None:
        if len(buffers) > 32:  # many layer shapes: do not hoard memory
            buffers.clear()
        target = buffers[key] = aligned_empty(shape, dtype)
    return target


def _packed(source, slot):
    """``source.T`` packed into a reused aligned scratch buffer (see ``_scratch_buffer``)."""
    target = _scratch_buffer(slot, (source.shape[1], source.shape[0]), source.dtype)
    transpose = (transpose_parallel if source.size >= 4 * PARALLEL_MIN
                 and threads.parallel_allowed() else transpose_serial)
    transpose(source, target)
    return target


def _aligned(source, slot):
    """``source`` itself when its data starts on a 64-byte boundary, else an aligned copy in a
    reused scratch buffer: unaligned 512-bit loads cost the tiled kernel ~30% here (measured
    12.5 -> 8.4 ms at 1024^3), more than the copy (a memcpy, ~0.3 ms for 4 MB)."""
    if source.ctypes.data % 64 == 0:
        return source
    target = _scratch_buffer(slot, source.shape, source.dtype)
    np.copyto(target, source)
    return target


# An operand of the tiled kernel is read once per row of the other operand's side of the
# output (``reuse`` times: once per output column for ``rows``, per output row for
# ``columns_t``), while an aligned copy costs one pass over it (np.copyto, ~10 GB/s here) and
# unaligned loads cost ~10% of each pass: below this reuse the copy costs more than it saves.
# Measured: 4096x784x128 forward, unaligned inputs (reuse 128): 4.2 ms copying, 3.3 ms read in
# place, 3.0 ms already aligned; 32x784x128 dinputs, unaligned weights (reuse 32): 96-125 us
# copying, 54 us in place; 1024^3 (reuse 1024): 9.1 ms copying, 9.9-13.5 ms in place.
ALIGN_COPY_MIN_REUSE = int(os.environ.get("LOOPNET_ALIGN_COPY_MIN_REUSE", 512))


def _aligned_for(source, reuse, slot):
    """``_aligned(source)`` if the tiled kernel reads it ``reuse`` >= ALIGN_COPY_MIN_REUSE
    times, else ``source`` as it is (aligned or not: the results are the same)."""
    if reuse < ALIGN_COPY_MIN_REUSE:
        return source
    return _aligned(source, slot)


def _parallel(work, rows):
    return work >= PARALLEL_MIN and rows >= PARALLEL_MIN_ROWS and threads.parallel_allowed()


def _use_tiled(n_samples, n_inputs, n_neurons):
    """Whether the forward and dweights of this layer shape run the tiled (dot-product) kernel.

    Large layers (see TILED_MIN), and narrow ones: with fewer than 16 neurons and 32 or more
    inputs the blocked loops' inner loop over neurons is too short to vectorize, while the
    tiled kernel's dot products run along the inputs (300x64x3: 16.6 -> 6.4 us, packing
    included). The fused trainer asks the same question, so both paths use the same kernels.
    """
    if n_samples < 4:
        return False
    if n_neurons < 16 and n_inputs >= 32:
        return True
    return (n_samples * n_inputs * n_neurons >= TILED_MIN and n_inputs >= TILED_MIN_INPUTS
            and n_samples >= TILED_MIN_ROWS)


def _use_tiled_dweights(n_samples, n_inputs, n_neurons):
    """Like ``_use_tiled`` for large layers only: for ``dweights`` the tiled kernel packs two
    transposes per call, which narrow layers do not repay (300x64x3: 22 us against ~10)."""
    return (n_samples >= 4 and n_samples * n_inputs * n_neurons >= TILED_MIN
            and n_inputs >= TILED_MIN_INPUTS and n_samples >= TILED_MIN_ROWS)


def _use_fast(n_samples, n_inputs, n_neurons):
    """Whether a layer is middle-sized (see FAST_MIN): its ops run fastmath kernels rather than
    the bit-identical blocked loops. The fused trainer keeps the bit-identical loops for such
    layers (see ``loopnet.kernels.fused``)."""
    return (n_samples * n_inputs * n_neurons >= FAST_MIN and n_inputs >= TILED_MIN_INPUTS
            and n_neurons >= 16)


def _tiled(work, rows):
    return dense_nt_tiled_parallel if _parallel(work, rows) else dense_nt_tiled_serial


def _use_broadcast(n_samples, n_inputs, n_neurons, n_rows, n_columns):
    """Whether a dense op of this layer shape, whose output is ``n_rows`` x ``n_columns``, runs
    the broadcast-form kernel (``dense_tn_tiled``): it needs a tile of rows, and pays from
    BROADCAST_MIN multiply-adds on for layers of 64 or more inputs, 16 or more neurons and at
    least half a panel of output columns, besides the large and middle-sized layers of 128 or
    more inputs. It needs no transposes and keeps a 5 x 64 tile in registers (4096x784x128:
    forward 3.1 -> 2.7 ms, dweights 6.3 -> 3.4 ms, dinputs 4.8 -> 3.2 ms; 32x784x128:
    forward 55 -> 49 us, dweights 60 -> 46 us; 1024x64x64: forward 103 -> 50 us, dweights
    116 -> 70 us, dinputs 82 -> 47 us; 1024^3 dweights: 0.75 -> ~0.9x OpenBLAS)."""
    if n_rows < _dense.TN_ROWS:
        return False
    if (_use_tiled_dweights(n_samples, n_inputs, n_neurons)
            or _use_fast(n_samples, n_inputs, n_neurons)):
        return True
    # With fewer columns most of each 64-wide panel is padding (1024x64x16's dweights: 57 ->
    # 79 us), with fewer multiply-adds packing and the tile's edges cost more than they save
    # (32x64x64's forward: 7.9 -> 12.8 us).
    return (n_samples * n_inputs * n_neurons >= BROADCAST_MIN and n_inputs >= 64
            and n_neurons >= 16 and 2 * n_columns >= _dense.PANEL_WIDTH)


def _panels(b, slot):
    """Scratch (reused, aligned) for ``b`` cut into panels by ``dense_tn_tiled``."""
    n_k, n_columns = b.shape
    shape = ((n_columns + _dense.PANEL_WIDTH - 1) // _dense.PANEL_WIDTH, n_k, _dense.PANEL_WIDTH)
    return _scratch_buffer(slot, shape, b.dtype)


def _broadcast(parallel):
    return dense_tn_tiled_parallel if parallel else dense_tn_tiled_serial


def dense_forward(inputs, weights, biases, output):
    """``output = inputs @ weights + biases``: the broadcast form ``dense_tn_tiled`` on
    ``inputs.T`` (a view) for large and middle-sized layers (``_use_broadcast``),
    ``dense_nt_tiled`` on the packed ``weights.T`` for narrow ones (``_use_tiled``), the
    fastmath build ``dense_forward_fast`` for 1-4 samples through a middle-sized layer, else
    ``dense_forward_blocked`` (bit-identical to the loops and the notes' neuron)."""
    n_samples, n_inputs = inputs.shape
    n_neurons = weights.shape[1]
    work = n_samples * n_inputs * n_neurons
    if _use_broadcast(n_samples, n_inputs, n_neurons, n_samples, n_neurons):
        parallel = _parallel(work, n_samples)
        _broadcast(parallel)(inputs.T, weights, _panels(weights, "weights_panels"), biases,
                             True, output)
    elif _use_tiled(n_samples, n_inputs, n_neurons):
        _tiled(work, n_samples)(_aligned_for(inputs, n_neurons, "inputs"),
                                _packed(weights, "weights_t"),
                                biases, True, output)
    elif _use_fast(n_samples, n_inputs, n_neurons):
        kernel = (dense_forward_fast_parallel if _parallel(work, n_samples)
                  else dense_forward_fast_serial)
        kernel(inputs, weights, biases, output)
    elif _parallel(work, n_samples):
        dense_forward_blocked_parallel(inputs, weights, biases, output)
    else:
        dense_forward_blocked_serial(inputs, weights, biases, output)


def dense_backward_inputs(dvalues, weights, dinputs):
    """``dinputs = dvalues @ weights.T``: the broadcast form on ``dvalues.T`` and ``weights.T``
    for large and middle-sized layers, else the NT kernel (no packing needed: ``weights``
    already is ``(weights.T).T``) or, below 16 neurons or 4 samples, the narrow kernel (the
    loops' bits, vectors along the inputs)."""
    n_samples = dvalues.shape[0]
    n_inputs, n_neurons = weights.shape
    work = n_samples * n_inputs * n_neurons
    # Each dinputs element is a dot product over neurons: the simple loops add its terms one
    # after another (each add waits for the last: ~4 cycles a term), the tiled kernel splits
    # them over vector lanes. No packing is needed, so it pays from small sizes on, e.g.
    # 32x784x128: 574 -> ~60 us. Below 16 neurons (the spiral's 3) a dot product is too short.
    if _use_broadcast(n_samples, n_inputs, n_neurons, n_samples, n_inputs):
        parallel = _parallel(work, n_samples)
        _broadcast(parallel)(dvalues.T, weights.T, _panels(weights.T, "weights_t_panels"),
                             dinputs[0], False, dinputs)
    elif n_neurons >= 16 and n_samples >= 4:
        _tiled(work, n_samples)(_aligned_for(dvalues, n_inputs, "dvalues"),
                                _aligned_for(weights, n_samples, "weights"),
                                dinputs[0], False, dinputs)
    else:
        kernel = (dense_backward_inputs_narrow_parallel if _parallel(work, n_samples)
                  else dense_backward_inputs_narrow_serial)
        kernel(dvalues, _packed(weights, "weights_t"), dinputs)


def dense_backward_weights(inputs, dvalues, dweights):
    """``dweights = inputs.T @ dvalues``: the broadcast form (``a`` = ``inputs`` itself, the
    panels a plain copy of ``dvalues``) for large and middle-sized layers, else
    ``dense_backward_weights_blocked`` (the loops' bits)."""
    n_samples, n_inputs = inputs.shape
    n_neurons = dvalues.shape[1]
    work = n_samples * n_inputs * n_neurons
    if _use_broadcast(n_samples, n_inputs, n_neurons, n_inputs, n_neurons):
        parallel = _parallel(work, n_inputs)
        _broadcast(parallel)(inputs, dvalues, _panels(dvalues, "dvalues_panels"), dweights[0],
                             False, dweights)
    elif n_neurons < 16 and n_inputs >= 16:
        # one thread per band of NARROW_BAND inputs: a single band stays serial
        kernel = (dense_backward_weights_narrow_parallel
                  if _parallel(work, n_samples) and n_inputs > _dense.NARROW_BAND
                  else dense_backward_weights_narrow_serial)
        kernel(inputs, dvalues, _scratch_buffer("dweights_t", (n_neurons, n_inputs),
                                                inputs.dtype), dweights)
    elif _parallel(work, n_inputs // 4 * 4):
        dense_backward_weights_blocked_parallel(inputs, dvalues, dweights)
    else:
        dense_backward_weights_blocked_serial(inputs, dvalues, dweights)


# --- Fused training (loopnet.kernels.fused) -----------------------------------------------------------

from loopnet.kernels import fused as _fused  # noqa: E402

train_epochs_serial, train_epochs_parallel = compile_twice(_fused.train_epochs_fused)
train_epochs_small_serial, train_epochs_small_parallel = compile_twice(
    _copy(_fused.train_epochs_fused, "__small", TILED_DWEIGHTS_BRANCH=False))


def train_epochs(work, tiled_dweights, *args):
    """Run ``train_epochs_fused``; ``work`` = multiply-adds of one step's forward pass picks the
    serial build for small models (the spiral model: ~100k), the parallel one above;
    ``tiled_dweights`` (some layer's dweights runs the broadcast form) the build that has it."""
    parallel = work >= 4 * PARALLEL_MIN and threads.parallel_allowed()
    if tiled_dweights:
        kernel = train_epochs_parallel if parallel else train_epochs_serial
    else:
        kernel = train_epochs_small_parallel if parallel else train_epochs_small_serial
    return kernel(*args)
