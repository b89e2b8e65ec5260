"""Layers, as the notes write them: ``forward(inputs)`` sets ``self.output`` and returns it."""

from __future__ import annotations

import numbers

import numpy as np

from loopnet import ops
from loopnet.devices import normalize


def random_normal(shape, seed=None) -> np.ndarray:
    """Standard normal draws from numpy's global RNG (so ``np.random.seed(0)`` reproduces the
    notes), or from ``seed``: an int (same draws as ``np.random.seed(seed)`` would give, without
    touching the global state), a ``np.random.RandomState`` or a ``np.random.Generator``."""
    if seed is None:
        return np.random.randn(*shape)
    if isinstance(seed, np.random.Generator):
        return seed.standard_normal(shape)
    if isinstance(seed, np.random.RandomState):
        return seed.randn(*shape)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed)).randn(*shape)
    raise TypeError(
        f"seed must be None, an int, a np.random.Generator or a np.random.RandomState, got {seed!r}"
    )


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Layer:
    """What every layer shares: an optional fixed ``device`` and ``forward`` storing ``output``."""

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Dense(Layer):
    """A fully connected layer of ``n_neurons`` neurons, each seeing all ``n_inputs`` inputs.

    ``weights`` has shape ``(n_inputs, n_neurons)`` (the transpose of ``torch.nn.Linear.weight``),
    drawn as ``0.1 * randn`` so that no transpose is needed in ``forward``; ``biases`` start at 0
    with shape ``(1, n_neurons)``, as in the notes. ``dtype`` is float32 by default; inputs are
    converted to it.

    >>> np.random.seed(0)
    >>> layer1 = Dense(4, 5)
    >>> layer1.forward([[1, 2, 3, 2.5]]).shape
    (1, 5)
    """

    def __init__(self, n_inputs: int, n_neurons: int, *, dtype=np.float32, seed=None,
                 device: str | None = None):
        super().__init__(device)
        self.n_inputs = _positive_int(n_inputs, "n_inputs")
        self.n_neurons = _positive_int(n_neurons, "n_neurons")
        self.dtype = _float_dtype(dtype)
        self.weights = (0.1 * random_normal((self.n_inputs, self.n_neurons), seed)).astype(self.dtype)
        self.biases = np.zeros((1, self.n_neurons), dtype=self.dtype)

    def forward(self, inputs):
        """``output = inputs @ weights + biases``, computed by ``ops.dense_forward``."""
        x = ops._array(inputs, "inputs")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        self.inputs = x
        self.output = ops.dense_forward(x, self.weights, self.biases, device=self.device)
        return self.output

    def __repr__(self) -> str:
        return f"Dense({self.n_inputs}, {self.n_neurons})"
