"""Activation functions: ReLU, softmax, sigmoid and linear, forward and backward.

Index legend: s = sample, j = class (softmax column), k = flat element index (ReLU, sigmoid and
linear work on any shape: ``loopnet.ops`` hands them the flattened array).
Backward kernels take ``dvalues``, the gradient of the loss with respect to this activation's
``output``, and write ``dinputs``, the gradient with respect to its ``inputs`` (chain rule).

Each op is written once, as a *body* that computes one element or one row (``relu_element``,
``softmax_rows``, ...); the devices only differ in how they walk the indices:

    relu_forward_loops   for k in prange(n): relu_element(inputs, output, k)    (cpu, python)
    relu_forward_kernel  k = cuda.grid(1); if k < n: relu_element(inputs, output, k)  (cuda)
    relu_forward_numpy   output[...] = np.maximum(0, inputs)                    (the twin)

and the compiled training step calls the same bodies. ``@body`` (``loopnet.kernels.body``)
leaves a body a plain Python function and lets numba compile it into whichever kernel calls
it, CPU or GPU.
"""

import numpy as np
from numba import prange

from loopnet.kernels import ROW_BLOCK, body
from loopnet.kernels.scalars import exp

# The CUDA kernels (``*_kernel``) use this name; ``loopnet.backends.cuda``, the only importer of
# ``numba.cuda``, sets it to that module before compiling them (see that module's docstring).
cuda = None


# --- ReLU ---------------------------------------------------------------------------------------
#     output[k] = max(0, inputs[k])        (twin: np.maximum(0, inputs))

@body
def relu_element(inputs, output, k):
    """Keep a positive value, replace anything else by 0.

    ``x > 0 or x != x`` instead of ``max(0, x)``: a NaN must come out as NaN, as
    ``np.maximum`` gives, not be silently turned into 0 (``x != x`` is only true for NaN).
    """
    x = inputs[k]
    if x > 0 or x != x:
        output[k] = x
    else:
        output[k] = 0


def relu_forward_loops(inputs, output):
    """``relu_element`` for every element."""
    for k in prange(inputs.shape[0]):
        relu_element(inputs, output, k)


def relu_forward_kernel(inputs, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < inputs.shape[0]:
        relu_element(inputs, output, k)


def relu_forward_numpy(inputs, output):
    """Twin: ``np.maximum(0, inputs)``."""
    output[...] = np.maximum(0, inputs)


# --- Softmax ------------------------------------------------------------------------------------
#     output[s, j] = exp(inputs[s, j] - max_j inputs[s]) / sum_j exp(inputs[s, j] - max_j inputs[s])
#     (twin: exp_values = np.exp(inputs - inputs.max(axis=1, keepdims=True));
#            exp_values / exp_values.sum(axis=1, keepdims=True))

@body
def softmax_rows(inputs, output, s0, s1):
    """Softmax of the rows of samples ``s0 .. s1 - 1``, each on its own (``output`` may be
    ``inputs`` itself: each value is read before it is overwritten).

    Subtracting the row's maximum first keeps every exponent <= 0, so ``exp`` lies in (0, 1]
    and cannot overflow for large finite inputs (the notes' overflow trick); the result is the
    same because the factor ``exp(-max)`` cancels in the division. The row is summed in column
    order by the one caller that owns it: deterministic for any thread count.
    """
    n_classes = inputs.shape[1]
    for s in range(s0, s1):
        row_max = inputs[s, 0]
        for j in range(1, n_classes):
            # `or x != x`: once a NaN is seen it stays the maximum, so the whole row becomes
            # NaN, as the twin's np.max (which propagates NaN) makes it.
            x = inputs[s, j]
            if x > row_max or x != x:
                row_max = x
        norm_base = output.dtype.type(0)
        for j in range(n_classes):
            exp_value = exp(inputs[s, j] - row_max)
            output[s, j] = exp_value
            norm_base += exp_value
        for j in range(n_classes):
            output[s, j] = output[s, j] / norm_base


def softmax_forward_loops(inputs, output):
    """``softmax_rows`` for every sample, ROW_BLOCK rows per ``prange`` iteration."""
    n_samples = inputs.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        softmax_rows(inputs, output, s0, min(n_samples, s0 + ROW_BLOCK))


def softmax_forward_kernel(inputs, output):
    """CUDA: one thread per sample ``s`` (rows are short, one value per class: a block-wide
    reduction per row would not pay off)."""
    s = cuda.grid(1)
    if s < inputs.shape[0]:
        softmax_rows(inputs, output, s, s + 1)


def softmax_forward_numpy(inputs, output):
    """Twin: the notes' max-subtracted ``np.exp`` divided by its row sums."""
    exp_values = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
    output[...] = exp_values / np.sum(exp_values, axis=1, keepdims=True)


# --- ReLU backward --------------------------------------------------------------------------------
#     dinputs[k] = dvalues[k] if inputs[k] > 0 else 0
#     (twin: dinputs = dvalues.copy(); dinputs[inputs <= 0] = 0)

@body
def relu_backward_element(dvalues, inputs, dinputs, k):
    """ReLU's derivative is 1 where the input was positive and 0 elsewhere.

    Written as the notes' ``inputs <= 0`` test so that a NaN input (for which ``<=`` is false)
    lets the gradient through exactly as the twin does. (ReLU's *output* gives the same mask:
    an input <= 0 gives 0, a positive input itself, a NaN a NaN; the training step passes it.)
    """
    if inputs[k] <= 0:
        dinputs[k] = 0
    else:
        dinputs[k] = dvalues[k]


def relu_backward_loops(dvalues, inputs, dinputs):
    """``relu_backward_element`` for every element."""
    for k in prange(dvalues.shape[0]):
        relu_backward_element(dvalues, inputs, dinputs, k)


def relu_backward_kernel(dvalues, inputs, dinputs):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < dvalues.shape[0]:
        relu_backward_element(dvalues, inputs, dinputs, k)


def relu_backward_numpy(dvalues, inputs, dinputs):
    """Twin: the notes' ``dinputs = dvalues.copy(); dinputs[inputs <= 0] = 0``."""
    dinputs[...] = dvalues
    dinputs[inputs <= 0] = 0


# --- ReLU in place (the compiled training step's) -------------------------------------------------
#     values[k] = max(0, values[k]);   dvalues[k] = 0 where output[k] <= 0
# The training step keeps no block of its own for a ReLU's output: the ReLU overwrites the block
# of the layer before it, as ``torch.nn.ReLU(inplace=True)`` does (nothing else reads a dense
# layer's output), and its backward overwrites the gradient it is given, taking the mask from
# its own output (the same mask: see ``relu_backward_element``). One block instead of two keeps
# a layer's data in the cache (2-64-3 on 3000 rows: ~257 -> ~240 us an epoch). The bodies are
# the ones above, called with one array as input and output: LLVM then sees a single array and
# vectorizes the loop, where the two-array kernels handed one buffer twice fail their overlap
# check at run time and take the scalar loop (~4x slower).

def relu_forward_in_place_loops(values):
    """``relu_element`` for every element, its result over ``values``."""
    for k in prange(values.shape[0]):
        relu_element(values, values, k)


def relu_forward_in_place_kernel(values):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < values.shape[0]:
        relu_element(values, values, k)


def relu_forward_in_place_numpy(values):
    """Twin: ``np.maximum(0, values, out=values)``."""
    np.maximum(0, values, out=values)


def relu_backward_in_place_loops(dvalues, output):
    """``relu_backward_element`` for every element, masked by ReLU's ``output``, its result
    over ``dvalues``."""
    for k in prange(dvalues.shape[0]):
        relu_backward_element(dvalues, output, dvalues, k)


def relu_backward_in_place_kernel(dvalues, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < dvalues.shape[0]:
        relu_backward_element(dvalues, output, dvalues, k)


def relu_backward_in_place_numpy(dvalues, output):
    """Twin: ``dvalues[output <= 0] = 0``."""
    dvalues[output <= 0] = 0


# --- Softmax backward (full Jacobian) ---------------------------------------------------------------
#     jacobian[s, j, k] = output[s, j] * (delta_jk - output[s, k])
#     dinputs[s, j]     = sum_k jacobian[s, j, k] * dvalues[s, k]
#     (twin: np.diagflat(output[s]) - np.dot(output[s], output[s].T), times dvalues[s])

@body
def softmax_backward_rows(dvalues, output, dinputs, s0, s1):
    """Softmax's gradient through its full Jacobian matrix, for samples ``s0 .. s1 - 1``.

    Each output ``j`` depends on every input ``k``: ``d output_j / d input_k = output_j *
    (delta_jk - output_k)`` (``delta_jk`` is 1 on the diagonal, else 0). The Jacobian element is
    formed on the fly and multiplied with ``dvalues``, summed in ``k`` order. It costs
    ``n_classes**2`` per sample; the
    fused softmax + cross-entropy backward (``losses.py``) avoids it, which is why ``Model``
    uses that one when it can.
    """
    n_classes = output.shape[1]
    zero = output.dtype.type(0)
    for s in range(s0, s1):
        for j in range(n_classes):
            dinput = zero
            for k in range(n_classes):
                # diagflat(output) - output output^T, element (j, k), as the book builds it
                diagonal = output[s, j] if j == k else zero
                jacobian = diagonal - output[s, j] * output[s, k]
                dinput += jacobian * dvalues[s, k]
            dinputs[s, j] = dinput


def softmax_backward_loops(dvalues, output, dinputs):
    """``softmax_backward_rows`` for every sample, ROW_BLOCK rows per ``prange`` iteration."""
    n_samples = output.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        softmax_backward_rows(dvalues, output, dinputs, s0, min(n_samples, s0 + ROW_BLOCK))


def softmax_backward_kernel(dvalues, output, dinputs):
    """CUDA: one thread per sample ``s``."""
    s = cuda.grid(1)
    if s < output.shape[0]:
        softmax_backward_rows(dvalues, output, dinputs, s, s + 1)


def softmax_backward_notes(dvalues, output, dinputs):
    """The book's form: a numpy Jacobian matrix per sample (kept as the readable reference)."""
    for index, (single_output, single_dvalues) in enumerate(zip(output, dvalues)):
        single_output = single_output.reshape(-1, 1)
        jacobian_matrix = np.diagflat(single_output) - np.dot(single_output, single_output.T)
        dinputs[index] = np.dot(jacobian_matrix, single_dvalues)


def softmax_backward_numpy(dvalues, output, dinputs):
    """Twin: the book's per-sample Jacobian, batched: ``jacobians @ dvalues[..., None]``."""
    n_classes = output.shape[1]
    diagonals = output[:, :, None] * np.eye(n_classes, dtype=output.dtype)
    jacobians = diagonals - output[:, :, None] * output[:, None, :]
    dinputs[...] = np.matmul(jacobians, dvalues[:, :, None])[:, :, 0]


# --- Sigmoid ----------------------------------------------------------------------------------------
#     output[k]  = 1 / (1 + exp(-inputs[k]))            (twin: 1 / (1 + np.exp(-inputs)))
#     dinputs[k] = dvalues[k] * (1 - output[k]) * output[k]
#     (twin: dvalues * (1 - output) * output)

@body
def sigmoid_element(inputs, output, k):
    """The logistic function, squashing any value into (0, 1) (one output per binary label).

    For very negative inputs ``exp(-x)`` overflows to inf and the result is 0, as numpy gives.
    """
    one = output.dtype.type(1)
    output[k] = one / (one + exp(-inputs[k]))


def sigmoid_forward_loops(inputs, output):
    """``sigmoid_element`` for every element."""
    for k in prange(inputs.shape[0]):
        sigmoid_element(inputs, output, k)


def sigmoid_forward_kernel(inputs, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < inputs.shape[0]:
        sigmoid_element(inputs, output, k)


def sigmoid_forward_numpy(inputs, output):
    """Twin: ``1 / (1 + np.exp(-inputs))`` (the overflow to inf is expected: result 0)."""
    with np.errstate(over="ignore"):
        output[...] = 1 / (1 + np.exp(-inputs))


@body
def sigmoid_backward_element(dvalues, output, dinputs, k):
    """Sigmoid's derivative written with its own output: ``s' = s * (1 - s)``."""
    one = output.dtype.type(1)
    dinputs[k] = dvalues[k] * (one - output[k]) * output[k]


def sigmoid_backward_loops(dvalues, output, dinputs):
    """``sigmoid_backward_element`` for every element."""
    for k in prange(dvalues.shape[0]):
        sigmoid_backward_element(dvalues, output, dinputs, k)


def sigmoid_backward_kernel(dvalues, output, dinputs):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < dvalues.shape[0]:
        sigmoid_backward_element(dvalues, output, dinputs, k)


def sigmoid_backward_numpy(dvalues, output, dinputs):
    """Twin: the book's ``dvalues * (1 - output) * output``."""
    dinputs[...] = dvalues * (1 - output) * output


# --- Linear -----------------------------------------------------------------------------------------
#     output[k] = inputs[k]; dinputs[k] = dvalues[k]  (twin: inputs.copy(); dvalues.copy())
# The identity (a regression output layer, ``y = x``) and its derivative, 1: both are a copy.

@body
def copy_element(source, target, k):
    """``target[k] = source[k]``."""
    target[k] = source[k]


def linear_forward_loops(inputs, output):
    """The identity: ``copy_element`` for every element."""
    for k in prange(inputs.shape[0]):
        copy_element(inputs, output, k)


def linear_forward_kernel(inputs, output):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < inputs.shape[0]:
        copy_element(inputs, output, k)


def linear_forward_numpy(inputs, output):
    """Twin: ``output = inputs.copy()``."""
    output[...] = inputs


def linear_backward_loops(dvalues, dinputs):
    """The gradient passes through unchanged: ``copy_element`` for every element."""
    for k in prange(dvalues.shape[0]):
        copy_element(dvalues, dinputs, k)


def linear_backward_kernel(dvalues, dinputs):
    """CUDA: one thread per element ``k``."""
    k = cuda.grid(1)
    if k < dvalues.shape[0]:
        copy_element(dvalues, dinputs, k)


def linear_backward_numpy(dvalues, dinputs):
    """Twin: the book's ``dinputs = dvalues.copy()``."""
    dinputs[...] = dvalues
