"""Layers, as the notes write them: ``forward(inputs)`` sets ``self.output`` and returns it."""

from __future__ import annotations

import numbers

import numpy as np

from loopnet import ops
from loopnet.devices import check_available, normalize


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


def _buffer(previous, shape, dtype):
    """The gradient buffer of the previous step when it still fits, else None (a new one).

    Layers hand it back to ``ops`` as ``out=``/``dweights=`` so a training loop does not
    allocate every step. Only gradients are reused, never forward outputs (a user may keep
    ``model.predict(...)`` results); a gradient is valid until the next ``backward``.
    """
    if previous is not None and tuple(previous.shape) == tuple(shape) and previous.dtype == dtype:
        return previous
    return None


def _regularizer(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    value = float(value)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class Layer:
    """What every layer shares: an optional fixed ``device``, ``forward(inputs, training)``
    storing ``output``, and ``backward(dvalues)`` storing ``dinputs`` (the book's interface).

    ``training`` tells layers that behave differently while training (``Dropout``) which mode
    to use; the others ignore it.
    """

    def __init__(self, device: str | None = None):
        self.device = None if device is None else normalize(device)
        if self.device is not None:
            check_available(self.device)

    def to(self, device: str):
        """Run this layer on ``device`` from now on and move its arrays there once (parameters,
        optimizer state, cached activations): ``layer.to("cuda")`` keeps them on the GPU, where
        every op then finds them. Returns the layer."""
        self.device = normalize(device)
        check_available(self.device)
        for name, value in list(vars(self).items()):
            if isinstance(value, np.ndarray) or ops._is_device_array(value):
                setattr(self, name, ops.to_device(value, self.device))
        return self

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this layer (saved as JSON by ``Model.save``)."""
        return {}

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

    def __init__(self, n_inputs: int, n_neurons: int,
                 weight_regularizer_l1: float = 0, weight_regularizer_l2: float = 0,
                 bias_regularizer_l1: float = 0, bias_regularizer_l2: float = 0,
                 *, dtype=np.float32, seed=None, weight_scale: float = 0.1,
                 device: str | None = None):
        super().__init__(device)
        self.n_inputs = _positive_int(n_inputs, "n_inputs")
        self.n_neurons = _positive_int(n_neurons, "n_neurons")
        self.dtype = _float_dtype(dtype)
        # The book's L1/L2 penalties (chapter 14): added to the loss by Loss.regularization_loss
        # and to the gradients by backward().
        self.weight_regularizer_l1 = _regularizer(weight_regularizer_l1, "weight_regularizer_l1")
        self.weight_regularizer_l2 = _regularizer(weight_regularizer_l2, "weight_regularizer_l2")
        self.bias_regularizer_l1 = _regularizer(bias_regularizer_l1, "bias_regularizer_l1")
        self.bias_regularizer_l2 = _regularizer(bias_regularizer_l2, "bias_regularizer_l2")
        # The notes draw 0.1 * randn; the book's later chapters use 0.01 (weight_scale=0.01).
        self.weight_scale = _regularizer(weight_scale, "weight_scale")
        self.weights = (self.weight_scale
                        * random_normal((self.n_inputs, self.n_neurons), seed)).astype(self.dtype)
        self.biases = np.zeros((1, self.n_neurons), dtype=self.dtype)
        if self.device is not None:  # e.g. device="cuda": the parameters live there from the start
            self.to(self.device)

    def forward(self, inputs, training: bool = True):
        """``output = inputs @ weights + biases``, computed by ``ops.dense_forward``."""
        x = ops._array(inputs, "inputs")
        if x.dtype != self.dtype:
            x = ops._contiguous(x, self.dtype)  # on the GPU a device array is cast there
        self.inputs = x
        self.output = output = ops.dense_forward(x, self.weights, self.biases, device=self.device)
        return output

    def backward(self, dvalues):
        """Set ``dweights = inputs.T @ dvalues``, ``dbiases = sum(dvalues)`` (plus the L1/L2
        penalties' gradients) and ``dinputs = dvalues @ weights.T``; return ``dinputs``."""
        dtype = getattr(dvalues, "dtype", None)
        self.dweights, self.dbiases, self.dinputs = ops.dense_backward(
            dvalues, self.inputs, self.weights,
            dweights=_buffer(getattr(self, "dweights", None), self.weights.shape, dtype),
            dbiases=_buffer(getattr(self, "dbiases", None), self.biases.shape, dtype),
            dinputs=_buffer(getattr(self, "dinputs", None), self.inputs.shape, dtype),
            device=self.device,
        )
        if self.weight_regularizer_l1 > 0 or self.weight_regularizer_l2 > 0:
            ops.regularization_backward(self.weights, self.dweights,
                                        l1=self.weight_regularizer_l1,
                                        l2=self.weight_regularizer_l2, device=self.device)
        if self.bias_regularizer_l1 > 0 or self.bias_regularizer_l2 > 0:
            ops.regularization_backward(self.biases, self.dbiases,
                                        l1=self.bias_regularizer_l1,
                                        l2=self.bias_regularizer_l2, device=self.device)
        return self.dinputs

    def get_parameters(self):
        """``(weights, biases)``, as the book's ``Layer_Dense.get_parameters``."""
        return self.weights, self.biases

    def set_parameters(self, weights, biases):
        """Replace ``weights`` and ``biases`` (shapes must match the layer)."""
        if tuple(weights.shape) != tuple(self.weights.shape):
            raise ValueError(f"weights have shape {tuple(weights.shape)}, this layer needs "
                             f"{tuple(self.weights.shape)}")
        if tuple(biases.shape) != tuple(self.biases.shape):
            raise ValueError(f"biases have shape {tuple(biases.shape)}, this layer needs "
                             f"{tuple(self.biases.shape)}")
        self.weights = weights
        self.biases = biases

    def get_config(self) -> dict:
        return {
            "n_inputs": self.n_inputs,
            "n_neurons": self.n_neurons,
            "weight_regularizer_l1": self.weight_regularizer_l1,
            "weight_regularizer_l2": self.weight_regularizer_l2,
            "bias_regularizer_l1": self.bias_regularizer_l1,
            "bias_regularizer_l2": self.bias_regularizer_l2,
            "dtype": self.dtype.name,
            "weight_scale": self.weight_scale,
        }

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name in ("weight_regularizer_l1", "weight_regularizer_l2",
                         "bias_regularizer_l1", "bias_regularizer_l2")
            if getattr(self, name)
        )
        return f"Dense({self.n_inputs}, {self.n_neurons}{extra})"


class Dropout(Layer):
    """Drop each neuron's output with probability ``rate`` while training (the book's
    ``Layer_Dropout``); the kept ones are scaled by ``1 / (1 - rate)`` so the expected sum of
    the outputs stays the same, and with ``training=False`` the layer passes its inputs through.

    The mask is drawn on the host from ``np.random.default_rng(seed)``, so the same seed gives
    the same masks, run after run and on every device. ``rate`` is the fraction *dropped*, as
    the book's constructor takes it (the book then stores ``1 - rate``).
    """

    def __init__(self, rate: float, *, seed=None, device: str | None = None):
        super().__init__(device)
        rate = _regularizer(rate, "rate")
        if rate >= 1:
            raise ValueError(f"Dropout rate must be in [0, 1): the fraction dropped, got {rate}")
        self.rate = rate
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def forward(self, inputs, training: bool = True):
        self.inputs = inputs
        if not training:
            self.binary_mask = None
            self.output = output = inputs
            return output
        dtype = getattr(inputs, "dtype", np.dtype(np.float32))
        if dtype not in (np.float32, np.float64):
            dtype = np.dtype(np.float64)
        shape = tuple(inputs.shape) if hasattr(inputs, "shape") else np.shape(inputs)
        self.binary_mask = ops.dropout_mask(shape, self.rate, self.rng, dtype)
        self.output = output = ops.dropout_forward(inputs, self.binary_mask, device=self.device)
        return output

    def backward(self, dvalues):
        if self.binary_mask is None:
            raise RuntimeError("Dropout.backward after a forward with training=False: "
                               "there is no mask to apply")
        self.dinputs = ops.dropout_backward(
            dvalues, self.binary_mask,
            out=_buffer(getattr(self, "dinputs", None), self.binary_mask.shape,
                        getattr(dvalues, "dtype", None)),
            device=self.device)
        return self.dinputs

    def get_config(self) -> dict:
        # The generator's exact state (plain ints), so a reloaded model draws the same masks.
        return {"rate": self.rate, "rng_state": self.rng.bit_generator.state}

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"
