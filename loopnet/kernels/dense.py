"""Dense layer: every neuron's weighted sum of its inputs, plus its bias.

Index legend: s = sample, n = neuron, i = input feature.
Shapes: inputs (n_samples, n_inputs), weights (n_inputs, n_neurons), biases (n_neurons,),
        output (n_samples, n_neurons); backward: dvalues (n_samples, n_neurons) the gradient
        arriving from the next layer, dweights like weights, dbiases (n_neurons,), dinputs like
        inputs.

    output[s, n] = sum_i inputs[s, i] * weights[i, n] + biases[n]
    (twin: np.dot(inputs, weights) + biases)

    dweights[i, n] = sum_s inputs[s, i] * dvalues[s, n]     (twin: np.dot(inputs.T, dvalues))
    dbiases[n]     = sum_s dvalues[s, n]                    (twin: np.sum(dvalues, axis=0))
    dinputs[s, i]  = sum_n dvalues[s, n] * weights[i, n]    (twin: np.dot(dvalues, weights.T))

This file is what a learner reads: the notes' zip-loop neuron (``dense_forward_notes``), the
loops with the body each ``prange`` iteration runs (``dense_forward_row``, ...), the numpy twins
and the CUDA kernels. The ``cpu`` device runs faster forms of the very same sums for larger
layers (blocked, narrow and register-tiled kernels, all tested against these loops and twins):
they live in ``loopnet/kernels/dense_fast.py``, whose top says which runs for which shapes.
"""

import numpy as np
from numba import prange

from loopnet.kernels import body

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
cuda = None

# Side of the square tiles of ``dense_forward_tiled_kernel`` (one 16 x 16 thread block per tile).
TILE = 16


def dense_forward_notes(inputs, weights, biases, output):
    """The notes' neuron, literally: zip a sample's inputs with one neuron's weights.

    Readable, but the weights column ``weights[:, n]`` is strided: each step of the inner loop
    jumps a whole row of ``weights`` in memory, which makes this ~9x slower than the loop order
    of ``dense_forward_row`` on large layers. Same sums in the same order, so the same bits.
    """
    for s in prange(inputs.shape[0]):
        for n in range(weights.shape[1]):
            neuron_output = output.dtype.type(0)
            for n_input, weight in zip(inputs[s], weights[:, n]):
                neuron_output += n_input * weight
            neuron_output += biases[n]
            output[s, n] = neuron_output


@body
def dense_forward_row(inputs, weights, biases, output, s):
    """Sample ``s``'s outputs: the notes' sums with the two inner loops swapped (input, neuron).

    The innermost loop now walks ``weights[i, :]`` and ``output[s, :]`` contiguously, which the
    compiler vectorizes. Every ``output[s, n]`` still accumulates its terms in input order
    ``i = 0, 1, ...`` and adds the bias last, exactly as the notes' neuron does, so the result is
    bit-identical to ``dense_forward_notes``.
    """
    n_inputs = inputs.shape[1]
    n_neurons = weights.shape[1]
    neuron_outputs = output[s]
    for n in range(n_neurons):
        neuron_outputs[n] = 0
    for i in range(n_inputs):
        n_input = inputs[s, i]
        weights_row = weights[i]
        for n in range(n_neurons):
            neuron_outputs[n] += n_input * weights_row[n]
    for n in range(n_neurons):
        neuron_outputs[n] += biases[n]


def dense_forward_loops(inputs, weights, biases, output):
    """``dense_forward_row`` for every sample. Each sample row is owned by one ``prange``
    iteration: the result does not depend on the thread count."""
    for s in prange(inputs.shape[0]):
        dense_forward_row(inputs, weights, biases, output, s)


# The CUDA dense kernels run one thread per output *element* (not per row as the loops): a GPU
# needs thousands of threads, and a row per thread would read weights uncoalesced.

def dense_forward_kernel(inputs, weights, biases, output):
    """CUDA: one thread per output element ``(s, n)``: the notes' two outer loops become the grid.

    Each thread runs the notes' neuron: its sample's inputs times its neuron's weights, summed in
    input order, plus the bias last (the same sums as ``dense_forward_row``). The fast x index
    is the neuron, so neighbouring threads read neighbouring ``weights[i, n]`` (coalesced).
    """
    n, s = cuda.grid(2)
    if s < output.shape[0] and n < output.shape[1]:
        neuron_output = output.dtype.type(0)
        for i in range(inputs.shape[1]):
            neuron_output += inputs[s, i] * weights[i, n]
        output[s, n] = neuron_output + biases[n]


def dense_forward_tiled_kernel(inputs, weights, biases, output):
    """CUDA, the fast path: the same sums, reading inputs and weights through shared memory.

    A block of ``TILE x TILE`` threads owns a ``TILE x TILE`` tile of ``output``. It walks the
    inputs ``TILE`` at a time: every thread copies one element of the ``inputs`` tile and one of
    the ``weights`` tile into fast on-chip shared memory, the block waits (``syncthreads``), and
    each thread adds ``TILE`` products from there. Every value read from global memory is so
    reused ``TILE`` times. Each thread still adds its terms in input order, bias last: the result
    equals ``dense_forward_kernel``'s.
    """
    inputs_tile = cuda.shared.array((TILE, TILE), dtype=inputs.dtype)
    weights_tile = cuda.shared.array((TILE, TILE), dtype=weights.dtype)
    tx = cuda.threadIdx.x  # neuron within the tile
    ty = cuda.threadIdx.y  # sample within the tile
    n, s = cuda.grid(2)
    n_samples = inputs.shape[0]
    n_inputs = inputs.shape[1]
    n_neurons = weights.shape[1]
    neuron_output = output.dtype.type(0)
    for start in range(0, n_inputs, TILE):
        # Threads outside the matrices still load (a 0) and wait: syncthreads needs the whole block.
        i = start + tx
        if s < n_samples and i < n_inputs:
            inputs_tile[ty, tx] = inputs[s, i]
        else:
            inputs_tile[ty, tx] = 0
        i = start + ty
        if i < n_inputs and n < n_neurons:
            weights_tile[ty, tx] = weights[i, n]
        else:
            weights_tile[ty, tx] = 0
        cuda.syncthreads()
        for t in range(min(TILE, n_inputs - start)):  # the last tile may be partial
            neuron_output += inputs_tile[ty, t] * weights_tile[t, tx]
        cuda.syncthreads()  # before the next tile overwrites this one
    if s < n_samples and n < n_neurons:
        output[s, n] = neuron_output + biases[n]


def dense_forward_numpy(inputs, weights, biases, output):
    """Twin: ``output = np.dot(inputs, weights) + biases``."""
    output[...] = np.dot(inputs, weights) + biases


# --- Backward ---------------------------------------------------------------------------------------
# Three kernels, one per gradient, because each needs a different owner per output element: a
# ``prange`` over the summed index would make several threads add into the same element (a race,
# and a sum whose order, hence whose bits, depends on the thread count). As in llm.c's
# ``matmul_backward``, every output element is owned by one iteration and summed in a fixed order.

@body
def dweights_row(inputs, dvalues, dweights, i):
    """``dweights[i, n] = sum_s inputs[s, i] * dvalues[s, n]`` for input ``i`` and every neuron:
    how much each weight moved the loss. The samples are added in order ``s = 0, 1, ...``; the
    inner loop walks ``dvalues[s, :]`` and ``dweights[i, :]`` contiguously."""
    n_neurons = dvalues.shape[1]
    dweights_i = dweights[i]
    for n in range(n_neurons):
        dweights_i[n] = 0
    for s in range(inputs.shape[0]):
        n_input = inputs[s, i]
        dvalues_row = dvalues[s]
        for n in range(n_neurons):
            dweights_i[n] += n_input * dvalues_row[n]


def dense_backward_weights_loops(inputs, dvalues, dweights):
    """``dweights_row`` for every input feature, one row of ``dweights`` per ``prange``
    iteration."""
    for i in prange(inputs.shape[1]):
        dweights_row(inputs, dvalues, dweights, i)


def dense_backward_weights_kernel(inputs, dvalues, dweights):
    """CUDA: one thread per weight ``(i, n)``, adding the samples in order ``s = 0, 1, ...``."""
    n, i = cuda.grid(2)
    if i < dweights.shape[0] and n < dweights.shape[1]:
        dweight = dweights.dtype.type(0)
        for s in range(inputs.shape[0]):
            dweight += inputs[s, i] * dvalues[s, n]
        dweights[i, n] = dweight


# --- On a GPU, the sums over many samples in two levels ---------------------------------------------
# One thread per weight (above) adds every sample's product alone while most of the GPU waits: a
# layer of 2 x 64 weights keeps 128 threads busy, at 30,000 samples ~4 ms a backward on an
# H200. From TWO_LEVEL_MIN_SAMPLES on, the cuda device sums in two levels instead: the samples
# in chunks of SAMPLE_CHUNK (one thread per chunk and weight, the chunk's samples in order),
# then each weight's chunk totals in chunk order (one thread per weight). The order of every
# addition is fixed by the shapes alone, not by the launch: the same bits on every run. (Not
# the loops' bits: each chunk's total is rounded before it is added; the difference is within
# the float rounding of a sum of n_samples terms, as the numpy twin's is.)
SAMPLE_CHUNK = 128
TWO_LEVEL_MIN_SAMPLES = 4 * SAMPLE_CHUNK


def dweights_chunk_sums(inputs, dvalues, partials):
    """CUDA, the first level: ``partials[c, k]`` (``k = i * n_neurons + n``) is the sum of
    ``inputs[s, i] * dvalues[s, n]`` over the samples ``s`` of chunk ``c``, in order."""
    k, c = cuda.grid(2)
    if c < partials.shape[0] and k < partials.shape[1]:
        n_neurons = dvalues.shape[1]
        i = k // n_neurons
        n = k - i * n_neurons
        start = c * SAMPLE_CHUNK
        total = partials.dtype.type(0)
        for s in range(start, min(start + SAMPLE_CHUNK, inputs.shape[0])):
            total += inputs[s, i] * dvalues[s, n]
        partials[c, k] = total


def dbiases_chunk_sums(dvalues, partials):
    """CUDA, the first level for the biases: ``partials[c, n]`` is the sum of ``dvalues[s, n]``
    over the samples ``s`` of chunk ``c``, in order."""
    n, c = cuda.grid(2)
    if c < partials.shape[0] and n < partials.shape[1]:
        start = c * SAMPLE_CHUNK
        total = partials.dtype.type(0)
        for s in range(start, min(start + SAMPLE_CHUNK, dvalues.shape[0])):
            total += dvalues[s, n]
        partials[c, n] = total


def chunk_totals(partials, output):
    """CUDA, the second level: ``output`` (as ``(rows, columns)``, element ``k`` at
    ``[k // columns, k % columns]``) gets the sum of ``partials[:, k]``, chunks in order."""
    k = cuda.grid(1)
    if k < partials.shape[1]:
        total = partials.dtype.type(0)
        for c in range(partials.shape[0]):
            total += partials[c, k]
        columns = output.shape[1]
        output[k // columns, k - (k // columns) * columns] = total


def dense_backward_weights_numpy(inputs, dvalues, dweights):
    """Twin: ``dweights = np.dot(inputs.T, dvalues)``."""
    dweights[...] = np.dot(inputs.T, dvalues)


@body
def dbiases_sum(dvalues, dbiases):
    """``dbiases[n] = sum_s dvalues[s, n]``: a bias moves its neuron's output one for one.

    Each neuron's sum runs over the samples in order; the loop over samples is outside so the
    inner loop reads ``dvalues[s, :]`` contiguously. Serial on purpose: it is ``n_samples *
    n_neurons`` additions, far fewer than the two products, so threads would not pay off.
    """
    n_samples, n_neurons = dvalues.shape
    for n in range(n_neurons):
        dbiases[n] = 0
    # Four samples per pass over dbiases, each still added in sample order (the same sums):
    # one load and store of dbiases[n] per four additions, not per addition (300x64: 4.0 ->
    # 1.7 us). Then the last samples one at a time.
    s = 0
    while s + 4 <= n_samples:
        for n in range(n_neurons):
            dbiases[n] = (((dbiases[n] + dvalues[s, n]) + dvalues[s + 1, n])
                          + dvalues[s + 2, n]) + dvalues[s + 3, n]
        s += 4
    while s < n_samples:
        for n in range(n_neurons):
            dbiases[n] += dvalues[s, n]
        s += 1


def dense_backward_biases_loops(dvalues, dbiases):
    """``dbiases_sum``: the column sums of ``dvalues``."""
    dbiases_sum(dvalues, dbiases)


def dense_backward_biases_kernel(dvalues, dbiases):
    """CUDA: one thread per neuron ``n`` (a GPU needs a thread per output, where the loops run
    the samples outermost), adding the samples in order: the same sums."""
    n = cuda.grid(1)
    if n < dbiases.shape[0]:
        dbias = dbiases.dtype.type(0)
        for s in range(dvalues.shape[0]):
            dbias += dvalues[s, n]
        dbiases[n] = dbias


def dense_backward_biases_numpy(dvalues, dbiases):
    """Twin: ``dbiases = np.sum(dvalues, axis=0)`` (the notes keep ``keepdims=True``)."""
    dbiases[...] = np.sum(dvalues, axis=0)


@body
def dinputs_row(dvalues, weights, dinputs, s):
    """``dinputs[s, i] = sum_n dvalues[s, n] * weights[i, n]`` for sample ``s``: the gradient
    passed to the layer before. Each element is a dot product of two contiguous rows,
    ``dvalues[s, :]`` and ``weights[i, :]``, summed in neuron order."""
    n_neurons = weights.shape[1]
    dvalues_row = dvalues[s]
    for i in range(weights.shape[0]):
        weights_row = weights[i]
        dinput = dinputs.dtype.type(0)
        for n in range(n_neurons):
            dinput += dvalues_row[n] * weights_row[n]
        dinputs[s, i] = dinput


def dense_backward_inputs_loops(dvalues, weights, dinputs):
    """``dinputs_row`` for every sample, one row of ``dinputs`` per ``prange`` iteration."""
    for s in prange(dvalues.shape[0]):
        dinputs_row(dvalues, weights, dinputs, s)


def dense_backward_inputs_kernel(dvalues, weights, dinputs):
    """CUDA: one thread per ``(s, i)``, the dot product of ``dvalues[s, :]`` and
    ``weights[i, :]`` in neuron order."""
    i, s = cuda.grid(2)
    if s < dinputs.shape[0] and i < dinputs.shape[1]:
        dinput = dinputs.dtype.type(0)
        for n in range(weights.shape[1]):
            dinput += dvalues[s, n] * weights[i, n]
        dinputs[s, i] = dinput


def dense_backward_inputs_numpy(dvalues, weights, dinputs):
    """Twin: ``dinputs = np.dot(dvalues, weights.T)``."""
    dinputs[...] = np.dot(dvalues, weights.T)
