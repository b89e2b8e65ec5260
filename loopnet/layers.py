"""Layers, as the notes write them: ``forward(inputs)`` sets ``self.output`` and returns it."""

from __future__ import annotations

import numbers

import numpy as np

from loopnet import ops
from loopnet.devices import check_available, get_device, gpu, normalize
from loopnet.validate import (Checked, count, dinputs_buffer, is_device_array, normal_draws,
                              number, parameter_dtype, positive_int, reusable)
from loopnet.validate import penalties as checked_penalties


def random_normal(shape, seed=None) -> np.ndarray:
    """Standard normal draws of ``shape`` from numpy's global RNG (so ``np.random.seed(0)``
    reproduces the notes), or from ``seed``: an int (same draws as ``np.random.seed(seed)``
    would give, without touching the global state), a ``np.random.RandomState`` or a
    ``np.random.Generator`` (``validate.normal_draws``)."""
    return normal_draws(seed)(*shape)


# Where each array a layer keeps comes from, for a learner who calls what reads it before the
# call that sets it (``dense1.backward(...)`` before any forward): ``not_set_yet``'s message.
# (Read where it is used, in a ``try``: a ``__getattr__`` on Layer would cost every attribute
# read of every layer ~20 ns, ~2 us a learner's epoch.)
_SET_BY = {"inputs": "its forward() sets them: run forward before backward",
           "output": "its forward() sets it: run forward first",
           "binary_mask": "its forward() draws it: run forward before backward",
           "dweights": "its backward() sets them: run backward before the optimizer's "
                       "update_params",
           "dbiases": "its backward() sets them: run backward before the optimizer's "
                      "update_params"}


def not_set_yet(layer, name: str) -> AttributeError:
    """The error for ``layer.<name>`` read before the call that sets it."""
    return AttributeError(f"{type(layer).__name__} has no {name} yet; {_SET_BY[name]}")


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
            if isinstance(value, np.ndarray) or is_device_array(value):
                setattr(self, name, ops.to_device(value, self.device))
        return self

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this layer (saved as JSON by ``Model.save``)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _apart(buffer, arrays) -> bool:
    """``buffer`` is none of ``arrays`` and, on the host, shares no memory with them."""
    for array in arrays:
        if array is buffer or (type(array) is np.ndarray and type(buffer) is np.ndarray
                               and np.may_share_memory(array, buffer)):
            return False
    return True


class Dense(Layer):
    """A fully connected layer of ``n_neurons`` neurons, each seeing all ``n_inputs`` inputs.

    ``weights`` has shape ``(n_inputs, n_neurons)`` (the transpose of ``torch.nn.Linear.weight``)
    so that no transpose is needed in ``forward``, drawn as ``weight_scale * randn`` with
    ``weight_scale=0.1`` as in the notes (the book's chapter code draws ``0.01 * randn``: pass
    ``weight_scale=0.01`` to match it); ``biases`` start at 0 with shape ``(1, n_neurons)``.
    ``dtype`` is float32 by default; inputs are converted to it. ``device`` fixes where the
    layer runs and its parameters live; without it the layer follows the current device, except
    that one made while the current device is a GPU is placed there, as ``device="cuda"``.

    >>> np.random.seed(0)
    >>> layer1 = Dense(4, 5)
    >>> layer1.forward([[1, 2, 3, 2.5]]).shape
    (1, 5)
    """

    # The L1/L2 penalties' coefficients, checked whenever they are assigned (a value set by
    # hand after the constructor, ``layer.weight_regularizer_l2 = -1``, is refused on the spot,
    # not silently read as no penalty).
    weight_regularizer_l1 = Checked(number, minimum=0.0)
    weight_regularizer_l2 = Checked(number, minimum=0.0)
    bias_regularizer_l1 = Checked(number, minimum=0.0)
    bias_regularizer_l2 = Checked(number, minimum=0.0)

    def __init__(self, n_inputs: int, n_neurons: int,
                 weight_regularizer_l1: float = 0, weight_regularizer_l2: float = 0,
                 bias_regularizer_l1: float = 0, bias_regularizer_l2: float = 0,
                 *, dtype=np.float32, seed=None, weight_scale: float = 0.1,
                 device: str | None = None):
        super().__init__(device)
        self._configure(n_inputs, n_neurons, weight_regularizer_l1, weight_regularizer_l2,
                        bias_regularizer_l1, bias_regularizer_l2, dtype=dtype,
                        weight_scale=weight_scale)
        self.weights = (self.weight_scale
                        * random_normal((self.n_inputs, self.n_neurons), seed)).astype(self.dtype)
        self.biases = np.zeros((1, self.n_neurons), dtype=self.dtype)
        # device="cuda", or made while the current device is a GPU (set_device, a `device`
        # context, LOOPNET_DEVICE): the parameters live there from the start, and the layer
        # stays there (otherwise every op would copy them over, and back after each update)
        where = self.device if self.device is not None else gpu(get_device())
        if where is not None:
            self.to(where)

    def _configure(self, n_inputs, n_neurons, weight_regularizer_l1=0, weight_regularizer_l2=0,
                   bias_regularizer_l1=0, bias_regularizer_l2=0, *, dtype=np.float32,
                   weight_scale=0.1) -> None:
        """Check and store the constructor's arguments (everything but the parameters)."""
        self.n_inputs = positive_int(n_inputs, "n_inputs")
        self.n_neurons = positive_int(n_neurons, "n_neurons")
        self.dtype = parameter_dtype(dtype)
        # The book's L1/L2 penalties (chapter 14): added to the loss by Loss.regularization_loss
        # and to the gradients by backward().
        # (each checked again whenever it is assigned: the class's ``Checked`` attributes)
        self.weight_regularizer_l1 = weight_regularizer_l1
        self.weight_regularizer_l2 = weight_regularizer_l2
        self.bias_regularizer_l1 = bias_regularizer_l1
        self.bias_regularizer_l2 = bias_regularizer_l2
        # The notes draw 0.1 * randn; the book's chapter code uses 0.01 (weight_scale=0.01).
        self.weight_scale = number(weight_scale, "weight_scale", minimum=0.0)

    @classmethod
    def from_parameters(cls, weights, biases, **config) -> "Dense":
        """A layer built from ``config`` (``get_config()``'s keys) around existing ``weights``
        and ``biases``, drawing no random numbers (``Model.load`` rebuilds layers this way, so
        a file's sizes are checked against its arrays before anything is allocated)."""
        layer = cls.__new__(cls)
        Layer.__init__(layer)
        layer._configure(**config)
        layer.set_parameters(weights, biases)
        return layer

    def forward(self, inputs, training: bool = True):
        """``output = inputs @ weights + biases``, computed by ``ops.dense_forward``."""
        x = inputs
        if type(x) is not np.ndarray or x.dtype != self.dtype:   # (else: as it is, at once)
            x = ops.as_dtype(inputs, self.dtype, "inputs")  # on the GPU cast there
        self.inputs = x
        self.output = output = ops.dense_forward(x, self.weights, self.biases, device=self.device)
        if ops.ahead is not None and training:      # (a cold cache: its backward made ahead)
            ops.ahead_forward(self, x)
        return output

    def backward(self, dvalues):
        """Set ``dweights = inputs.T @ dvalues``, ``dbiases = sum(dvalues)`` (plus the L1/L2
        penalties' gradients) and ``dinputs = dvalues @ weights.T``; return ``dinputs``."""
        if ops.ahead is not None:      # (the first backward after a cold forward pass)
            ops.ahead_backward()
        state = self.__dict__
        weights, biases = self.weights, self.biases
        inputs = state.get("inputs")
        if inputs is None:
            raise not_set_yet(self, "inputs")
        weight_l1, weight_l2 = self.weight_regularizer_l1, self.weight_regularizer_l2
        bias_l1, bias_l2 = self.bias_regularizer_l1, self.bias_regularizer_l2
        weights_penalized = weight_l1 > 0 or weight_l2 > 0
        biases_penalized = bias_l1 > 0 or bias_l2 > 0
        penalties = None
        if weights_penalized or biases_penalized:
            penalties = checked_penalties(weight_l1, weight_l2, bias_l1, bias_l2)
        # A learner's loop calls this thousands of times on small arrays, where going through
        # ops.dense_backward and two ops.regularization_backward calls cost ~8 us of Python
        # against ~6 us of kernels: with the arrays already in the kernels' form
        # (ops.dense_backward_direct says so with the checks of the ops' fast paths) the
        # kernels run at once, the penalties' gradients in the same call.
        grads = ops.dense_backward_direct(
            dvalues, inputs, weights, biases if penalties else None,
            state.get("dweights"), state.get("dbiases"), state.get("dinputs"), self.device,
            penalties)
        if grads is not None:
            self.dweights, self.dbiases, self.dinputs = grads
            return self.dinputs
        dtype = getattr(dvalues, "dtype", None)
        # The previous buffers, each where it fits and is none of the arrays read (a loop
        # may hand one back as dvalues, or make two of them one array): else a new one.
        taken = [dvalues, inputs, weights, biases]
        buffers = []
        for name, shape in (("dweights", weights.shape), ("dbiases", biases.shape),
                            ("dinputs", inputs.shape)):
            buffer = reusable(state.get(name), shape, dtype)
            if buffer is not None and not _apart(buffer, taken):
                buffer = None
            buffers.append(buffer)
            taken.append(buffer)
        grads = ops.dense_backward(dvalues, inputs, weights, dweights=buffers[0],
                                   dbiases=buffers[1], dinputs=buffers[2],
                                   device=self.device)
        self.dweights, self.dbiases, self.dinputs = grads
        if weights_penalized:
            ops.regularization_backward(weights, grads[0], l1=weight_l1, l2=weight_l2,
                                        device=self.device)
        if biases_penalized:
            ops.regularization_backward(biases, grads[1], l1=bias_l1, l2=bias_l2,
                                        device=self.device)
        return self.dinputs

    def get_parameters(self):
        """``(weights, biases)``, as the book's ``Layer_Dense.get_parameters``."""
        return self.weights, self.biases

    def set_parameters(self, weights, biases):
        """Replace ``weights`` (shape ``(n_inputs, n_neurons)``) and ``biases`` (``(1, n_neurons)``
        or ``(n_neurons,)``): arrays or nested lists of numbers, converted to the layer's dtype
        as C-contiguous writeable arrays (an array already in that form is kept, not copied).
        A wrong shape raises ``ValueError`` naming both shapes; the layer is then unchanged."""
        self.weights, self.biases = self.checked_parameters(weights, biases)

    def checked_parameters(self, weights, biases):
        """``(weights, biases)`` as ``set_parameters`` would store them, without storing them
        (so a caller setting many layers can check them all first)."""
        return (self._parameter(weights, "weights", (self.n_inputs, self.n_neurons)),
                self._parameter(biases, "biases", (1, self.n_neurons)))

    def _parameter(self, value, name: str, shape: tuple):
        what = "(n_inputs, n_neurons)" if name == "weights" else "(1, n_neurons)"
        on_device = is_device_array(value)
        if on_device:
            array = value
        else:
            try:
                array = np.asarray(value)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{name} must be an array of numbers of shape {shape}: {err}") \
                    from None
            if array.dtype.kind not in "iuf":
                raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        if name == "biases" and tuple(array.shape) == shape[1:]:
            array = array.reshape(shape)
        if tuple(array.shape) != shape:
            raise ValueError(f"{name} have shape {tuple(array.shape)}, this layer "
                             f"({self!r}) needs {shape} {what}")
        if on_device:
            return array if array.dtype == self.dtype else ops.as_dtype(array, self.dtype, name)
        if not (array.dtype == self.dtype and array.flags.c_contiguous
                and array.flags.writeable):
            with np.errstate(over="ignore"):      # (reported below, with the values)
                converted = np.array(array, dtype=self.dtype, order="C", copy=True)
            if (array.dtype != self.dtype and not np.isfinite(converted).all()
                    and np.isfinite(array).all()):
                raise ValueError(f"{name} hold values beyond the range of {self.dtype} "
                                 f"(largest magnitude {np.abs(array).max():g})")
            array = converted
        if is_device_array(getattr(self, name, None)):   # the layer lives on the GPU
            array = ops.to_device(array, self.device)
        return array

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


def _dropout_seed(seed, name: str = "seed") -> int:
    """The int seed of a dropout layer's mask generator: ``seed`` itself, or one drawn from
    numpy's global generator (``seed=None``: so ``np.random.seed(0)`` / ``nnfs.init()`` make the
    masks repeat), a ``np.random.Generator`` or a ``np.random.RandomState``."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**31 - 1))
    if isinstance(seed, np.random.RandomState):
        return int(seed.randint(0, 2**31 - 1))
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return count(seed, name)
    raise TypeError(
        f"{name} must be None, an int, a np.random.Generator or a np.random.RandomState, got "
        f"{seed!r}"
    )


class Input(Layer):
    """The book's ``Layer_Input``: ``forward`` keeps its inputs as ``output``. ``Model.finalize``
    puts one in front of the layers (``model.input_layer``, the first layer's ``prev``)."""

    def forward(self, inputs, training: bool = True):
        self.output = inputs
        return self.output


class Dropout(Layer):
    """Drop each neuron's output with probability ``rate`` while training (the book's
    ``Layer_Dropout``); the kept ones are scaled by ``1 / (1 - rate)`` so the expected sum of
    the outputs stays the same, and with ``training=False`` the layer passes its inputs through.
    ``rate`` is the fraction *dropped*, as the book's constructor takes it.

    Masks come from a counter-based generator (``ops.dropout_mask``): element ``(s, n)`` of the
    ``step``-th training batch is kept or dropped by a hash of ``(seed, step, s, n)``, so the
    same seed gives the same masks run after run, on every device and for any thread count,
    through the layers or the compiled training step alike. Without ``seed`` the layer draws one
    from numpy's global generator when it is built, so ``np.random.seed(0)`` (or
    ``nnfs.init()``) makes runs repeat; ``self.seed`` is that int and ``self.step`` counts the
    training batches seen so far. The masks are not the book's: it draws them with
    ``np.random.binomial`` from the global generator, step after step. (The book stores
    ``1 - rate``; ``loopnet.nnfs.Layer_Dropout`` keeps that attribute.)
    """

    # the masks' seed and the training batches seen, checked whenever they are assigned
    seed = Checked(_dropout_seed)
    step = Checked(count)

    def __init__(self, rate: float, *, seed=None, step: int = 0, device: str | None = None):
        super().__init__(device)
        self._dropped = ops.dropout_rate(rate)
        self.seed = seed
        self.step = step

    @property
    def rate(self) -> float:
        """The fraction of outputs dropped while training (checked when assigned)."""
        return self._dropped

    @rate.setter
    def rate(self, value: float) -> None:
        self._dropped = ops.dropout_rate(value)

    @property
    def drop_rate(self) -> float:
        """The fraction of outputs dropped while training (whatever ``rate`` means in a
        subclass: ``loopnet.nnfs.Layer_Dropout``'s is the fraction kept, as the book's)."""
        return self._dropped

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
        self.binary_mask = ops.dropout_mask(shape, self._dropped, seed=self.seed,
                                            step=self.step, dtype=dtype, device=self.device)
        self.__dict__["step"] = self.step + 1    # (the checked count plus one: no check)
        self.output = output = ops.dropout_forward(inputs, self.binary_mask, device=self.device)
        return output

    def backward(self, dvalues):
        try:
            mask = self.binary_mask
        except AttributeError:
            raise not_set_yet(self, "binary_mask") from None
        if mask is None:
            raise RuntimeError("Dropout.backward after a forward with training=False: "
                               "there is no mask to apply")
        self.dinputs = ops.dropout_backward(dvalues, mask,
                                            out=dinputs_buffer(self, dvalues, mask),
                                            device=self.device)
        return self.dinputs

    def get_config(self) -> dict:
        # The seed and the number of batches seen: a reloaded model draws the very next masks.
        return {"rate": self._dropped, "seed": self.seed, "step": self.step}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dropped})"
