"""loopnet: a neural network whose every operation is an explicit loop.

Each op is written as the loops of the "Neural Networks from Scratch" notes, compiled with numba
for the CPU (or numba-cuda for the GPU), and stands beside its vectorized numpy twin::

    import loopnet
    out = loopnet.ops.dense_forward(inputs, weights, biases)          # loops, compiled
    with loopnet.device("numpy"):
        same = loopnet.ops.dense_forward(inputs, weights, biases)     # np.dot(...) + biases

``import loopnet`` does not import numba: kernels are compiled on first use.
"""

from loopnet import datasets, ops
from loopnet.activations import ReLU, Softmax
from loopnet.devices import DEVICES, device, get_device, set_device
from loopnet.layers import Dense, Layer
from loopnet.losses import CategoricalCrossentropy, Loss
from loopnet.ops import to_numpy

__version__ = "0.1.0"

__all__ = [
    "DEVICES",
    "CategoricalCrossentropy",
    "Dense",
    "Layer",
    "Loss",
    "ReLU",
    "Softmax",
    "datasets",
    "device",
    "get_device",
    "ops",
    "set_device",
    "to_numpy",
]
