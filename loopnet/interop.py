"""To and from PyTorch: ``model.to_torch()`` and ``loopnet.Model.from_torch(sequential)``.

Layer by layer:

==============================  ==========================================================
loopnet                         ``torch.nn``
==============================  ==========================================================
``Dense(n_inputs, n_neurons)``  ``Linear(n_inputs, n_neurons)``: ``weight = weights.T``,
                                ``bias = biases[0]`` (same dtype, float32 or float64)
``ReLU()``                      ``ReLU()``
``Softmax()``                   ``Softmax(dim=1)`` (``dim=-1`` is accepted back)
``Sigmoid()``                   ``Sigmoid()``
``Linear()``                    ``Identity()``
``Dropout(rate)``               ``Dropout(p=rate)``
==============================  ==========================================================

Only the layers travel: losses and optimizers have no one-to-one counterpart (PyTorch's
``CrossEntropyLoss`` takes logits, loopnet's ``CategoricalCrossentropy`` probabilities), so
``from_torch`` takes them as arguments. A ``Sequential`` comes back in training mode, as torch
builds modules: call ``.eval()`` before inference (dropout off). Weights are copied, bit for
bit, both ways. torch is imported here only, on first use.
"""

from __future__ import annotations

import numpy as np


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "loopnet's PyTorch conversion needs torch: pip install torch "
            "(it is not a dependency of loopnet)") from None
    return torch


SUPPORTED = "Linear, ReLU, Softmax(dim=1), Sigmoid, Identity, Dropout (and nested Sequential)"


def to_torch(model):
    """A ``torch.nn.Sequential`` computing what ``model`` computes, with copies of its
    weights."""
    from loopnet import activations, layers

    torch = _torch()
    nn = torch.nn
    modules = []
    for index, layer in enumerate(model.layers):
        kind = type(layer)
        if isinstance(layer, layers.Dense):
            weights = np.ascontiguousarray(_host(layer.weights).T)
            biases = np.ascontiguousarray(_host(layer.biases).reshape(-1))
            dtype = torch.float64 if weights.dtype == np.float64 else torch.float32
            module = nn.Linear(layer.n_inputs, layer.n_neurons, dtype=dtype)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(weights))
                module.bias.copy_(torch.from_numpy(biases))
        elif kind is activations.ReLU:
            module = nn.ReLU()
        elif kind is activations.Softmax:
            module = nn.Softmax(dim=1)
        elif kind is activations.Sigmoid:
            module = nn.Sigmoid()
        elif kind is activations.Linear:
            module = nn.Identity()
        elif isinstance(layer, layers.Dropout):
            module = nn.Dropout(p=layer._dropped)
        else:
            raise TypeError(f"layer {index} ({layer!r}) has no PyTorch counterpart here; "
                            "to_torch converts Dense, ReLU, Softmax, Sigmoid, Linear and Dropout")
        modules.append(module)
    return nn.Sequential(*modules)


def _host(array) -> np.ndarray:
    from loopnet import ops

    return np.asarray(ops.to_numpy(array))


def _leaves(modules, nn, prefix=""):
    """(name, module) of every module, nested ``Sequential``s opened up."""
    for name, module in modules:
        if isinstance(module, nn.Sequential):
            yield from _leaves(module.named_children(), nn, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", module


def from_torch(sequential, *, loss=None, optimizer=None, accuracy=None, device=None):
    """A finalized ``loopnet.Model`` with the layers of ``sequential`` (a
    ``torch.nn.Sequential``, or a list of modules) and copies of its weights; ``loss``,
    ``optimizer`` and ``accuracy`` are set when given. A module loopnet has no layer for raises
    ``TypeError`` naming it."""
    from loopnet import activations, layers
    from loopnet.model import Model

    torch = _torch()
    nn = torch.nn
    if isinstance(sequential, nn.Module):
        if not isinstance(sequential, nn.Sequential):
            raise TypeError(f"from_torch takes a torch.nn.Sequential (or a list of modules), "
                            f"got {type(sequential).__name__}")
        children = sequential.named_children()
    else:
        children = ((str(k), m) for k, m in enumerate(sequential))
    model = Model()
    for name, module in _leaves(children, nn):
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().cpu()
            if weight.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"module {name} ({module}) has weights of dtype {weight.dtype}; "
                                "loopnet computes in float32 or float64")
            weights = np.ascontiguousarray(weight.numpy().T)
            if module.bias is None:
                biases = np.zeros((1, module.out_features), dtype=weights.dtype)
            else:
                biases = np.ascontiguousarray(
                    module.bias.detach().cpu().numpy().reshape(1, -1), dtype=weights.dtype)
            layer = layers.Dense(module.in_features, module.out_features,
                                 dtype=weights.dtype, seed=0, device=device)
            layer.set_parameters(weights, biases)
            if device is not None:
                layer.to(device)
        elif isinstance(module, nn.ReLU):
            layer = activations.ReLU(device=device)
        elif isinstance(module, nn.Softmax):
            if module.dim not in (1, -1):
                raise TypeError(f"module {name} ({module}) is a softmax over dim "
                                f"{module.dim}; loopnet's Softmax runs over the features "
                                "of each sample (dim=1)")
            layer = activations.Softmax(device=device)
        elif isinstance(module, nn.Sigmoid):
            layer = activations.Sigmoid(device=device)
        elif isinstance(module, nn.Identity):
            layer = activations.Linear(device=device)
        elif isinstance(module, nn.Dropout):
            layer = layers.Dropout(float(module.p), device=device)
        else:
            raise TypeError(f"module {name} ({module}) has no loopnet layer; supported: "
                            f"{SUPPORTED}")
        model.add(layer)
    if not model.layers:
        raise ValueError("the Sequential has no modules")
    model.set(loss=loss, optimizer=optimizer, accuracy=accuracy)
    model.finalize()
    return model
