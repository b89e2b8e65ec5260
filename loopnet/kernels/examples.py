"""Random example arguments for any kernel, built from its parameter names.

Used by the CUDA tests, ``scripts/gpu_check.py``, ``scripts/check_ptx.py`` and ``loopnet
explain`` to run every kernel against its numpy twin. (This module is not one of
``loopnet.kernels.MODULES``: it defines no kernels.) Names follow the
kernel files: dense kernels take ``inputs (n_samples, n_inputs)``, ``weights (n_inputs,
n_neurons)`` ...; element-wise kernels take flat arrays of ``n_elements``; the rest take
``(n_samples, n_classes)`` arrays, with per-sample outputs ``(n_samples,)``.
"""

from __future__ import annotations

import inspect

import numpy as np

SCALARS = {"learning_rate": 0.05, "epsilon": 1e-7, "momentum": 0.9, "rho": 0.9,
           "beta_1": 0.9, "beta_2": 0.999, "correction_1": 0.19, "correction_2": 0.002,
           "l1": 0.01, "l2": 0.02, "precision": 0.1, "value": 0.5,
           # dropout masks: seed, batch number, keep 90% (see regularization.dropout_mask_row)
           "seed": 7, "step": 3, "keep_below": int(0.9 * 2**53), "rate": 0.1}
ELEMENTWISE = {"relu_forward", "relu_backward", "relu_forward_in_place", "relu_backward_in_place",
               "sigmoid_forward", "sigmoid_backward",
               "linear_forward", "linear_backward", "dropout_forward", "dropout_backward",
               "binary_accuracy", "regression_accuracy", "fill", "regularization_backward",
               "regularization_loss", "mean", "sgd_update", "sgd_momentum_update",
               "adagrad_update", "rmsprop_update", "adam_update"}


def kernel_arguments(op, function, dtype, rng, *, n_samples, n_inputs, n_neurons, n_classes,
                     n_elements):
    """Random host arguments (inputs and outputs) for kernel ``function`` of op ``op``."""
    names = list(inspect.signature(function).parameters)
    if op.startswith("dense"):
        shapes = {"inputs": (n_samples, n_inputs), "weights": (n_inputs, n_neurons),
                  "biases": (n_neurons,), "output": (n_samples, n_neurons),
                  "dvalues": (n_samples, n_neurons), "dweights": (n_inputs, n_neurons),
                  "dbiases": (n_neurons,), "dinputs": (n_samples, n_inputs)}
    else:
        side = (n_elements,) if op in ELEMENTWISE else (n_samples, n_classes)
        shapes = dict.fromkeys(names, side)
        for per_sample in ("sample_losses", "correct"):
            if len(side) == 2:
                shapes[per_sample] = (n_samples,)
    args = []
    for name in names:
        if name in SCALARS:
            args.append(SCALARS[name])
        elif name == "class_targets":
            args.append(rng.integers(0, n_classes, n_samples).astype(np.intp))
        elif name == "output" and op in ("mean", "regularization_loss"):
            args.append(np.zeros(1, np.float64))
        else:
            shape = shapes[name]
            values = rng.standard_normal(shape)
            # probabilities where the kernel expects them (rows summing to 1)
            if name in ("y_pred", "softmax_output") or (name == "output" and "softmax" in op) \
                    or (name == "dvalues" and "crossentropy" in op):
                values = rng.uniform(0.01, 1, shape)
                if values.ndim == 2:
                    values /= values.sum(axis=1, keepdims=True)
            elif name == "y_true" and op == "categorical_crossentropy_onehot":
                values = np.eye(n_classes)[rng.integers(0, n_classes, n_samples)]
            elif name == "y_true" and "binary" in op:
                values = rng.integers(0, 2, shape)
            elif name == "mask":
                values = rng.integers(0, 2, shape) * 2.0
            elif name == "cache":
                values = rng.uniform(0, 1, shape)  # a running mean of squares: never negative
            args.append(values.astype(dtype))
    return args
