"""The argument checks every module shares, in one place, so that one kind of mistake gets one
kind of error everywhere: a value of the wrong type is a ``TypeError``, a value of the right
type out of range a ``ValueError``, and both messages name the argument and what it got.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings

import numpy as np

_INF = float("inf")


def is_device_array(x) -> bool:
    """A GPU array (numba device array, CuPy, torch CUDA tensor): the cuda device uses it where it
    is, so it is validated from its ``.shape``/``.dtype`` and never copied to the host."""
    return hasattr(x, "copy_to_host") or hasattr(x, "__cuda_array_interface__")


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (sizes, epochs, batch sizes, sample counts)."""
    if type(value) is int and value >= 1:
        return value            # (the common case)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def number(value, name: str, *, minimum=None, strict: bool = False, below=None) -> float:
    """A finite Python float hyper-parameter (learning rate, epsilon, l1, a dropout rate ...).

    ``minimum``: the smallest value allowed (excluded when ``strict``, as ``epsilon > 0`` needs);
    ``below``: a bound the value must stay under (Adam's ``beta_1 < 1``).
    """
    if type(value) is float and -_INF < value < _INF and (
            minimum is None or value > minimum or (value == minimum and not strict)) and (
            below is None or value < below):
        return value            # (the common case, in a few comparisons)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    if not math.isfinite(value):  # (math: np.isfinite on a Python float costs ~1 us)
        raise ValueError(f"{name} must be{bound or ' a number'} and finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be{bound}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


# The largest count the compiled step keeps (an int64).
MAX_COUNT = 2**63 - 1


def count(value, name: str) -> int:
    """``value`` as an int in ``[0, 2**63)``, what the kernels keep in an int64 (an optimizer's
    ``iterations``, a dropout mask's ``seed`` and ``step``)."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value            # (the common case: every training step passes one)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be in [0, 2**63), got {value}")
    return int(value)


def warn(message: str, category=UserWarning) -> None:
    """``warnings.warn`` pointed at the user's line: the first caller outside loopnet, however
    deep in the package the warning is raised (``train`` -> ``finalize`` -> here)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def file_path(value, name: str = "path"):
    """``os.fspath(value)``, with a message that names ``name`` when it is no path at all."""
    try:
        return os.fspath(value)
    except TypeError:
        raise TypeError(f"{name} must be a file path (a str or an os.PathLike), got "
                        f"{type(value).__name__} {value!r}") from None


def flag(value, name: str) -> bool:
    """``value`` as a bool: ``True``/``False`` (or numpy's), nothing else. A string such as
    ``"no"`` is truthy, so taking any truthy value would do the opposite of what was meant."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def generator(seed, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for a ``seed`` that is None (fresh entropy), an int
    >= 0 or a ``np.random.SeedSequence``, or ``seed`` itself when it is a
    ``np.random.Generator`` (which it then draws from); anything else names ``name``, where
    numpy's own message would not."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, an integer >= 0 or a np.random.Generator, "
                        f"got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {seed}")
    return np.random.default_rng(int(seed))


def normal_draws(seed, name: str = "seed"):
    """The function drawing standard normal arrays (``draw(n, ...)``) for ``seed``: numpy's
    global ``np.random.randn`` for None (so ``np.random.seed(0)`` / ``nnfs.init()`` repeat the
    book's draws), that of a private ``np.random.RandomState(seed)`` for an int in
    ``[0, 2**32)`` (the same draws as ``np.random.seed(seed)`` would give), or those of a
    ``np.random.RandomState`` or ``np.random.Generator`` given."""
    if seed is None:
        return np.random.randn
    if isinstance(seed, np.random.Generator):
        return lambda *shape: seed.standard_normal(shape)
    if isinstance(seed, np.random.RandomState):
        return seed.randn
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, an int, a np.random.Generator or a "
                        f"np.random.RandomState, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be in [0, 2**32) (a np.random.RandomState seed), got "
                         f"{seed}")
    return np.random.RandomState(int(seed)).randn


class Checked:
    """A hyper-parameter attribute checked whenever it is assigned, in the constructor and by a
    user's ``optimizer.beta_1 = 2.0`` alike: ``check(value, name)`` gives the value stored, or
    raises the error that names it. (The descriptor has no ``__get__``, so reading the attribute
    is a plain look-up in the instance's dict: the learner's loop reads these at every step.)
    """

    def __init__(self, check, **limits):
        self.check = check
        self.limits = limits

    def __set_name__(self, owner, name):
        self.name = name

    def __set__(self, obj, value):
        obj.__dict__[self.name] = self.check(value, self.name, **self.limits)


PENALTY_NAMES = ("weight_regularizer_l1", "weight_regularizer_l2", "bias_regularizer_l1",
                 "bias_regularizer_l2")


def penalties(weight_l1, weight_l2, bias_l1, bias_l2) -> tuple:
    """A dense layer's four penalty coefficients, each checked as ``number(value, name,
    minimum=0.0)`` checks it (its attribute's name in the message), as a tuple of floats. The
    common case, four finite floats >= 0, in a few comparisons: a learner's loop checks them
    in each epoch's backward and penalty, where four ``number`` calls cost 0.5 us."""
    if (type(weight_l1) is type(weight_l2) is type(bias_l1) is type(bias_l2) is float
            and 0.0 <= weight_l1 < _INF and 0.0 <= weight_l2 < _INF
            and 0.0 <= bias_l1 < _INF and 0.0 <= bias_l2 < _INF):
        return weight_l1, weight_l2, bias_l1, bias_l2
    return tuple(number(value, name, minimum=0.0) for value, name in
                 zip((weight_l1, weight_l2, bias_l1, bias_l2), PENALTY_NAMES))


def parameter_dtype(dtype) -> np.dtype:
    """The dtype a layer keeps its parameters in: float32 or float64, nothing else."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def reusable(previous, shape, dtype):
    """The gradient buffer of the previous step when it still fits, else None (a new one).

    Layers, activations and losses hand it back to ``ops`` as ``out=``/``dweights=`` so a
    training loop does not allocate every step. Only gradients are reused, never forward
    outputs (a user may keep ``model.predict(...)`` results); a gradient is valid until the
    next ``backward``.
    """
    if previous is not None and previous.shape == shape and previous.dtype == dtype:
        return previous
    return None


def dinputs_buffer(owner, dvalues, other=None):
    """``owner``'s last ``dinputs`` when it fits this ``dvalues`` (``reusable``), for the
    backward of an activation, a dropout layer or a loss. ``other``, the array the gradient is
    computed with, must have ``dvalues``' dtype too: a float32 ``dvalues`` with a float64
    ``other`` (the layer before was given float64 weights between two steps) makes a float64
    result, which the float32 buffer cannot hold."""
    dtype = getattr(dvalues, "dtype", None)
    if other is not None and getattr(other, "dtype", dtype) != dtype:
        return None
    return reusable(getattr(owner, "dinputs", None), getattr(dvalues, "shape", ()), dtype)
