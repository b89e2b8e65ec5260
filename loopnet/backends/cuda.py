"""The ``cuda`` device: the ``<op>_kernel`` functions of the kernel files, compiled by numba-cuda.

This is the only module of loopnet that imports ``numba.cuda``, and ``loopnet.devices`` imports it
only when the ``cuda`` device is asked for, so CPU users never pay for it.

How a kernel file's CUDA form gets compiled
    A kernel file writes its CUDA kernels as plain Python functions named ``<op>_kernel`` that use a
    module-level name ``cuda`` (``cuda.grid``, ``cuda.shared.array``, ...). The kernel files do not
    import ``numba.cuda``: they set ``cuda = None`` and this module fills that name with the real
    ``numba.cuda`` module before it hands each ``<op>_kernel`` to ``cuda.jit``. (It has to be a
    module global called ``cuda``: that is the name numba's simulator swaps for its per-thread fake
    module while a kernel runs.) Kernels compile lazily, once per dtype, on their first launch.

How an op is launched
    Every kernel runs one thread per element of (the leading one or two dimensions of) one of its
    arguments: ``THREADS`` below names that argument per op, and a generic launcher turns its shape
    into a grid. Adding the CUDA form of a kernel is therefore one ``<op>_kernel`` function in the
    kernel file plus one line in ``THREADS`` (or, for an unusual launch, one small function here).

    - 1-D: ``cuda.grid(1)`` is the index; blocks of ``BLOCK_1D`` threads.
    - 2-D: ``column, row = cuda.grid(2)``: the fast x index walks the last (contiguous) axis, so
      neighbouring threads read neighbouring memory (coalesced loads); blocks of ``BLOCK_2D``.
    - A launch smaller than a block along an axis gets a block only that large (a whole warp
      for 1-D), but for the tiled dense kernel, whose block must be a whole tile.

Data
    Arrays that live on the GPU (numba device arrays, or anything with
    ``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors) are used where they are. A host
    (numpy) array passed to an op is copied to the GPU once, explicitly (so numba never copies
    behind our back, which it warns about with ``NumbaPerformanceWarning``); if the kernel writes
    into a host array it is copied back after the launch. ``empty`` allocates on the GPU,
    ``to_numpy`` copies back, ``asarray`` moves/converts an array onto the GPU once.

``cuda:N`` picks GPU ``N`` (``select``, called by ``loopnet.devices.backend``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import os
import sys
import textwrap
import threading
import types

import numpy as np

from loopnet import kernels as _kernels
from loopnet.kernels import dense as _dense_kernels
from loopnet.kernels import scalars as _scalars
from loopnet.backends import collect

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

_HOW_TO_FIX = (
    "Two ways out:\n"
    "  * on a machine with an NVIDIA GPU and driver, install the cuda extra with the CUDA\n"
    "    toolkit wheels matching the driver (`nvidia-smi` shows its CUDA version):\n"
    '        pip install "loopnet[cuda]" "numba-cuda[cu12]"     (or "numba-cuda[cu13]" for CUDA 13)\n'
    "  * or run the CUDA kernels in numba's CUDA simulator (slow, no GPU needed): set the\n"
    "    environment variable NUMBA_ENABLE_CUDASIM=1 before Python starts (before numba is imported)."
)


def _unavailable(why: str) -> RuntimeError:
    return RuntimeError(f"the 'cuda' device is not usable here: {why}.\n{_HOW_TO_FIX}")


# numba warns at every launch of fewer than 128 blocks; the book's arrays (300 samples) make
# such grids for most ops, and the warnings would bury the training log. A value the user set
# stays. (Read by numba-cuda's configuration when ``numba.cuda`` is imported, and again by
# numba's whenever the environment changes.)
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

try:
    from numba import cuda
except ImportError as err:  # numba-cuda is not installed (numba >= 0.61 no longer bundles it)
    raise _unavailable(f"numba-cuda is not installed ({err})") from None

for _config in ("numba.cuda.core.config", "numba.core.config"):   # (already read, if imported)
    if os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] == "0" and hasattr(
            sys.modules.get(_config), "CUDA_LOW_OCCUPANCY_WARNINGS"):
        sys.modules[_config].CUDA_LOW_OCCUPANCY_WARNINGS = 0

if not cuda.is_available():
    raise _unavailable("no CUDA GPU/driver was found (numba.cuda.is_available() is False)")


if SIMULATOR:
    # The simulator's arrays answer `.shape` with a tuple that refuses negative indices, which
    # mimics the GPU inside a kernel; outside kernels (in loopnet.ops: `x.shape[-1]`) a device
    # array's shape is an ordinary tuple, as on a real GPU. Keep the strict one for kernels only.
    from numba.cuda.simulator import kernel as _sim_kernel
    from numba.cuda.simulator.cudadrv import devicearray as _sim_array

    _strict_shape = _sim_array.FakeCUDAArray.shape

    def _shape(self):
        shape = _strict_shape.fget(self)
        return shape if _sim_kernel._kernel_context is not None else tuple(shape)

    _sim_array.FakeCUDAArray.shape = property(_shape)

    # The simulator runs each GPU thread's Python on numpy scalars, in a Python thread of its
    # own (so not under a caller's ``np.errstate``): the dropout hash's uint64 products, which
    # wrap around by design, would warn of overflow, where a GPU reports none. Each simulated
    # thread runs under ``np.errstate(over="ignore")``, as the GPU's arithmetic would.
    _simulated_run = _sim_kernel.BlockThread.run

    def _run_as_the_gpu_would(self):
        with np.errstate(over="ignore"):
            _simulated_run(self)

    _sim_kernel.BlockThread.run = _run_as_the_gpu_would


HOST = False    # (ops: arrays live on the GPU)
BLOCK_1D = 128
BLOCK_2D = (16, 16)  # (x = columns, y = rows); equal to dense.TILE so the tiled kernel fits a block
WARP = 32
# Kernels whose threads work together on a block's shared memory: always whole blocks.
WHOLE_BLOCKS = {"dense_forward_tiled"}


# --- GPU selection (cuda:N) --------------------------------------------------------------------------

_selected = threading.local()  # numba keeps one current GPU per host thread; so do we


def select(device: str = "cuda") -> None:
    """Make GPU ``N`` of ``"cuda:N"`` current for this thread (``"cuda"`` means GPU 0)."""
    index = int(device.partition(":")[2] or 0)
    if getattr(_selected, "index", None) == index:
        return
    n_gpus = len(cuda.gpus)
    if index >= n_gpus:
        raise ValueError(f"device 'cuda:{index}' does not exist: this machine has {n_gpus} GPU(s) "
                         f"(cuda:0 .. cuda:{n_gpus - 1})")
    cuda.select_device(index)
    _selected.index = index


# --- Arrays --------------------------------------------------------------------------------------

def is_device_array(x) -> bool:
    """True for arrays that live on the GPU (numba device arrays, CuPy, torch CUDA tensors)."""
    return hasattr(x, "copy_to_host") or hasattr(x, "__cuda_array_interface__")


def empty(shape, dtype):
    """An uninitialised array on the GPU (where ops allocate their outputs)."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def to_numpy(array) -> np.ndarray:
    """Copy a device array back to the host (host arrays pass through)."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "__cuda_array_interface__"):
        return cuda.as_cuda_array(array).copy_to_host()
    return np.asarray(array)


def host_layout(x, dtype=None) -> np.ndarray:
    """``x`` as a C-contiguous host array with the strides of a fresh one, ready to copy over.

    numpy calls an array with a dimension of length 1 contiguous whatever that dimension's
    stride, and ``np.ascontiguousarray`` then keeps it; numba-cuda sizes the device copy from
    the strides and fails on it (a ``(1,)`` view of every other float32 became ``(0,)``)."""
    array = np.ascontiguousarray(x, dtype=dtype)
    expected, stride = [], array.itemsize
    for length in reversed(array.shape):
        expected.append(stride)
        stride *= length
    return array if array.strides == tuple(reversed(expected)) else array.copy()


def asarray(x, dtype=None):
    """``x`` as a C-contiguous device array of ``dtype``, moved or converted at most once.

    A device array that already fits is returned as is (no copy); one of another dtype or a
    non-contiguous view is converted on the GPU by a copy kernel (no trip through the host); a
    host array is converted on the host and copied to the GPU once.
    """
    if not is_device_array(x):
        return cuda.to_device(host_layout(x, dtype))
    if not hasattr(x, "copy_to_host"):
        x = cuda.as_cuda_array(x)  # CuPy / torch: a zero-copy numba view of the same memory
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    if x.dtype == dtype and x.is_c_contiguous():
        return x
    if x.ndim > 2:
        if not x.is_c_contiguous():
            raise ValueError(f"cannot convert a non-contiguous {x.ndim}-D device array of shape "
                             f"{x.shape} on the GPU; make it contiguous first")
        return asarray(x.reshape(-1), dtype).reshape(x.shape)
    out = empty(x.shape, dtype)
    if x.size:
        _launch(_copy_2d if x.ndim == 2 else _copy_1d, x.shape[:2] or (1,), (x, out))
    return out


def _copy_1d(source, target):
    k = cuda.grid(1)
    if k < target.shape[0]:
        target[k] = source[k]


def _copy_2d(source, target):
    column, row = cuda.grid(2)
    if row < target.shape[0] and column < target.shape[1]:
        target[row, column] = source[row, column]


_copy_1d = cuda.jit(_copy_1d)
_copy_2d = cuda.jit(_copy_2d)


def synchronize() -> None:
    """Wait for every launched kernel to finish (kernel launches return at once)."""
    cuda.synchronize()


# --- Launching ---------------------------------------------------------------------------------------

def _grid(threads, whole_blocks=False):
    """``(blocks, threads_per_block)`` covering ``threads`` (1 or 2 sizes). Along an axis shorter
    than a block, the block is only as long as the axis (1-D: rounded up to a warp, which the
    GPU schedules whole anyway), unless ``whole_blocks``: a 3-column output then runs 3 x 16
    threads a block, not 16 x 16 of which 208 only return (which numba's CUDA simulator runs
    as Python threads, one by one)."""
    if len(threads) == 1:
        (n,) = threads
        if n < BLOCK_1D and not whole_blocks:
            return (1,), (math.ceil(n / WARP) * WARP,)
        return (math.ceil(n / BLOCK_1D),), (BLOCK_1D,)
    rows, columns = threads
    block = BLOCK_2D if whole_blocks else (min(BLOCK_2D[0], columns), min(BLOCK_2D[1], rows))
    return ((math.ceil(columns / block[0]), math.ceil(rows / block[1])), block)


def _launch(kernel, threads, args, written=(), blocks=None, whole_blocks=False):
    """Launch ``kernel`` with one thread per index of ``threads``; host arrays go over once.

    ``written``: positions of the arguments the kernel writes; a host array given there gets the
    result copied back into it (``loopnet.ops`` always passes device outputs, so this only
    happens when a backend function is called directly with numpy outputs).
    """
    if blocks is None:
        if min(threads) == 0:
            return
        blocks = _grid(threads, whole_blocks)
    device_args = []
    copy_back = []
    for position, arg in enumerate(args):
        if isinstance(arg, np.ndarray):
            device_arg = cuda.to_device(host_layout(arg))
            if position in written:
                copy_back.append((device_arg, arg))
            arg = device_arg
        elif hasattr(arg, "__cuda_array_interface__") and not hasattr(arg, "copy_to_host"):
            arg = cuda.as_cuda_array(arg)
        device_args.append(arg)
    kernel[blocks](*device_args)
    for device_arg, host_arg in copy_back:
        host_arg[...] = device_arg.copy_to_host()


def _written_arguments(function) -> tuple[int, ...]:
    """Positions of the parameters ``function`` stores into (``param[...] = ...``, also through a
    row alias such as ``row = output[s]``, or by passing it to a loop body that stores into
    it), found by reading the sources."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    params = [a.arg for a in tree.body[0].args.args]
    aliases = {p: p for p in params}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            base = node.value
            while isinstance(base, ast.Subscript):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                aliases[node.targets[0].id] = aliases[base.id]
    written = set()
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AugAssign) else [])
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value
                if isinstance(target, ast.Name) and target.id in aliases:
                    written.add(params.index(aliases[target.id]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            body = function.__globals__.get(node.func.id)
            if isinstance(body, types.FunctionType) and body is not function:
                for position in _written_arguments(body):
                    if position < len(node.args):
                        argument = node.args[position]
                        if isinstance(argument, ast.Name) and argument.id in aliases:
                            written.add(params.index(aliases[argument.id]))
    return tuple(sorted(written))


# --- The kernels ------------------------------------------------------------------------------------

for _module_name in _kernels.MODULES:
    # Supply the `cuda` name the kernel files' `<op>_kernel` functions use (see the docstring).
    importlib.import_module(f"loopnet.kernels.{_module_name}").cuda = cuda
# The bodies' exp/log/sqrt: math.exp ... on the GPU (loopnet.kernels.scalars)
_scalars.register_cuda()

KERNEL_FUNCTIONS = collect("kernel")  # {op: plain Python function}, for reading and for tests
KERNELS = {op: cuda.jit(function) for op, function in KERNEL_FUNCTIONS.items()}

# op -> (argument, dims): one thread per element of that argument's first `dims` dimensions.
THREADS = {
    # dense.py
    "dense_forward": ("output", 2),
    "dense_forward_tiled": ("output", 2),
    "dense_backward_weights": ("dweights", 2),
    "dense_backward_biases": ("dbiases", 1),
    "dense_backward_inputs": ("dinputs", 2),
    # activations.py
    "relu_forward": ("output", 1),
    "relu_backward": ("dinputs", 1),
    "relu_forward_in_place": ("values", 1),
    "relu_backward_in_place": ("dvalues", 1),
    "softmax_forward": ("output", 1),
    "softmax_backward": ("dinputs", 1),
    "sigmoid_forward": ("output", 1),
    "sigmoid_backward": ("dinputs", 1),
    "linear_forward": ("output", 1),
    "linear_backward": ("dinputs", 1),
    # losses.py
    "categorical_crossentropy": ("sample_losses", 1),
    "categorical_crossentropy_onehot": ("sample_losses", 1),
    "accuracy": ("correct", 1),
    "categorical_crossentropy_backward": ("dinputs", 1),
    "softmax_crossentropy_backward": ("dinputs", 1),
    "binary_crossentropy": ("sample_losses", 1),
    "binary_crossentropy_backward": ("dinputs", 1),
    "mean_squared_error": ("sample_losses", 1),
    "mean_squared_error_backward": ("dinputs", 1),
    "mean_absolute_error": ("sample_losses", 1),
    "mean_absolute_error_backward": ("dinputs", 1),
    "binary_accuracy": ("correct", 1),
    "regression_accuracy": ("correct", 1),
    # regularization.py
    "regularization_backward": ("dvalues", 1),
    "dropout_mask": ("mask", 1),
    "dropout_forward": ("output", 1),
    "dropout_backward": ("dinputs", 1),
    # optimizers.py
    "fill": ("output", 1),
    "sgd_update": ("params", 1),
    "sgd_momentum_update": ("params", 1),
    "adagrad_update": ("params", 1),
    "rmsprop_update": ("params", 1),
    "adam_update": ("params", 1),
}


def _launcher(op: str):
    """The backend function of ``op``: same name and signature as the host backends' one."""
    function = KERNEL_FUNCTIONS[op]
    kernel = KERNELS[op]
    argument, dims = THREADS[op]
    params = list(inspect.signature(function).parameters)
    position = params.index(argument)
    written = _written_arguments(function)
    whole_blocks = op in WHOLE_BLOCKS

    def launch(*args):
        _launch(kernel, tuple(args[position].shape[:dims]), args, written,
                whole_blocks=whole_blocks)

    launch.__name__ = launch.__qualname__ = op
    launch.__doc__ = f"Launch ``{op}_kernel``: one thread per element of ``{argument}``" + (
        "[row, column]." if dims == 2 else ".")
    launch.__signature__ = inspect.signature(function)
    return launch


globals().update({op: _launcher(op) for op in THREADS if op in KERNELS})

# The dense forward op runs the shared-memory tiled kernel (the fast path); the one-thread-per-
# output kernel stays available as `dense_forward_simple` (same sums in the same order).
dense_forward_simple = globals()["dense_forward"]
_dense_forward_tiled = globals()["dense_forward_tiled"]


def dense_forward(inputs, weights, biases, output):
    """``output = inputs @ weights + biases``: the tiled kernel, but for an output within one
    tile, which the one-thread-per-output kernel computes (the same sums in the same order, so
    the same bits): a tile's block is 16 x 16 threads, most of which would only load zeros and
    wait at its barriers."""
    if output.shape[0] <= _dense_kernels.TILE and output.shape[1] <= _dense_kernels.TILE:
        dense_forward_simple(inputs, weights, biases, output)
    else:
        _dense_forward_tiled(inputs, weights, biases, output)


# The sums over samples of the dense backward: in two levels for large batches (see
# ``loopnet/kernels/dense.py``, "On a GPU, the sums over many samples in two levels").
_CHUNK_KERNELS = {name: cuda.jit(getattr(_dense_kernels, name))
                  for name in ("dweights_chunk_sums", "dbiases_chunk_sums", "chunk_totals")}
_dense_backward_weights_per_weight = globals()["dense_backward_weights"]
_dense_backward_biases_per_neuron = globals()["dense_backward_biases"]


def _two_levels(first, inputs, output, rows, columns):
    """Run ``first`` (a chunk-sums kernel) over ``inputs`` into partial sums, then
    ``chunk_totals`` into ``output`` viewed as ``(rows, columns)`` (a view of any output:
    ``rows, columns`` is its own shape, or ``(1, n)`` for the biases' vector)."""
    n_chunks = math.ceil(inputs[0].shape[0] / _dense_kernels.SAMPLE_CHUNK)
    partials = cuda.device_array((n_chunks, rows * columns), dtype=inputs[0].dtype)
    _launch(_CHUNK_KERNELS[first], (n_chunks, rows * columns), (*inputs, partials))
    _launch(_CHUNK_KERNELS["chunk_totals"], (rows * columns,),
            (partials, output.reshape(rows, columns)), written=(1,))


def dense_backward_weights(inputs, dvalues, dweights):
    """``dweights = inputs.T @ dvalues``: one thread per weight adding the samples in order
    (``dense_backward_weights_kernel``), or in two levels from TWO_LEVEL_MIN_SAMPLES samples."""
    if inputs.shape[0] < _dense_kernels.TWO_LEVEL_MIN_SAMPLES:
        return _dense_backward_weights_per_weight(inputs, dvalues, dweights)
    _two_levels("dweights_chunk_sums", (inputs, dvalues), dweights, *dweights.shape)


def dense_backward_biases(dvalues, dbiases):
    """``dbiases = dvalues.sum(axis=0)``: one thread per neuron adding the samples in order
    (``dense_backward_biases_kernel``), or in two levels from TWO_LEVEL_MIN_SAMPLES samples."""
    if dvalues.shape[0] < _dense_kernels.TWO_LEVEL_MIN_SAMPLES:
        return _dense_backward_biases_per_neuron(dvalues, dbiases)
    _two_levels("dbiases_chunk_sums", (dvalues,), dbiases, 1, dbiases.shape[-1])


def mean(values, output):
    """``mean_kernel`` runs as one block: each thread sums a strided share in float64, then a
    tree reduction in a fixed order (deterministic; equal to the serial sum within rounding)."""
    from loopnet.kernels.losses import MEAN_THREADS

    _launch(KERNELS["mean"], None, (values, output), written=(1,),
            blocks=((1,), (MEAN_THREADS,)))


def regularization_loss(values, l1, l2, output):
    """``regularization_loss_kernel`` runs as one block with a fixed-order tree reduction."""
    from loopnet.kernels.regularization import PENALTY_THREADS

    _launch(KERNELS["regularization_loss"], None, (values, l1, l2, output), written=(3,),
            blocks=((1,), (PENALTY_THREADS,)))


def __getattr__(name):
    """A clear error for an op that has a host form but no CUDA form yet."""
    if not name.startswith("_") and name in collect("loops"):
        raise NotImplementedError(
            f"op {name!r} has no CUDA form yet: write `{name}_kernel` beside `{name}_loops` in "
            "loopnet/kernels and add it to THREADS in loopnet/backends/cuda.py"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
