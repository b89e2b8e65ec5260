"""loopnet: a neural network whose every operation is an explicit loop.

Each op is written as the loops of the "Neural Networks from Scratch" notes, compiled with numba
for the CPU (or numba-cuda for the GPU), and stands beside its vectorized numpy twin::

    import loopnet
    out = loopnet.ops.dense_forward(inputs, weights, biases)          # loops, compiled
    with loopnet.device("numpy"):
        same = loopnet.ops.dense_forward(inputs, weights, biases)     # np.dot(...) + biases

``import loopnet`` does not import numba: kernels are compiled on first use.
"""

from loopnet import callbacks, datasets, ops
from loopnet.accuracy import Accuracy, BinaryAccuracy, CategoricalAccuracy, RegressionAccuracy
from loopnet.activations import Linear, ReLU, Sigmoid, Softmax
from loopnet.compiled import SlowPathWarning
from loopnet.devices import DEVICES, device, get_device, set_device
from loopnet.layers import Dense, Dropout, Layer
from loopnet.losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    SoftmaxCategoricalCrossentropy,
)
from loopnet.model import Model
from loopnet.ops import to_numpy
from loopnet.optimizers import SGD, Adagrad, Adam, Optimizer, RMSprop
from loopnet.saving import ModelFileError

# Imported on first use (PEP 562), so `import loopnet` stays free of numba, matplotlib and
# torch: `loopnet.explain("dense")` (the module is callable), `loopnet.plotting`,
# `loopnet.interop`, `loopnet.threads` (`loopnet.threads.info()`: numba's threading layer).
# `loopnet.__version__` comes from the installed package's metadata (the version is written
# in pyproject.toml only), read on first use.
_LAZY_MODULES = ("explain", "interop", "plotting", "threads")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("loopnet")
    except metadata.PackageNotFoundError:    # run from a source tree that is not installed
        return "0+unknown"


def __getattr__(name):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"loopnet.{name}")
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'loopnet' has no attribute {name!r}")


__all__ = [
    "DEVICES",
    "SGD",
    "Accuracy",
    "Adagrad",
    "Adam",
    "BinaryAccuracy",
    "BinaryCrossentropy",
    "CategoricalAccuracy",
    "Dropout",
    "Linear",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Model",
    "ModelFileError",
    "Optimizer",
    "RMSprop",
    "RegressionAccuracy",
    "SlowPathWarning",
    "Sigmoid",
    "SoftmaxCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "Dense",
    "Layer",
    "Loss",
    "ReLU",
    "Softmax",
    "callbacks",
    "datasets",
    "device",
    "get_device",
    "ops",
    "set_device",
    "to_numpy",
]
