"""The one device flag.

Which implementation of every op runs is decided here and nowhere else:

    explicit ``device=`` argument  >  ``with loopnet.device(...)`` / ``set_device()``
                                   >  the ``LOOPNET_DEVICE`` environment variable  >  ``"cpu"``

Devices:

- ``cpu``    the loop kernels compiled by numba (``@njit(parallel=True, cache=True)``)
- ``numpy``  the vectorized numpy twins
- ``python`` the very same loop functions, not compiled (step through them in a debugger)
- ``cuda``   the kernels compiled by numba-cuda (``@cuda.jit``); ``cuda:0`` picks a GPU

This module imports neither numba nor any backend: backends are imported on first use.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

DEVICES = ("cpu", "numpy", "python", "cuda")
DEFAULT_DEVICE = "cpu"
ENV_VAR = "LOOPNET_DEVICE"

# set_device() writes the process-wide default; the context manager overrides it per context
# (a ContextVar, so threads and asyncio tasks do not see each other's `with` blocks).
_default: str | None = None
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("loopnet_device", default=None)


def normalize(name) -> str:
    """Return the canonical spelling of a device name, or raise ``ValueError``.

    ``"CPU"`` -> ``"cpu"``, ``" cuda:0 "`` -> ``"cuda:0"``; ``"cuda:1"`` keeps its index.
    """
    if name in DEVICES and type(name) is str:  # already canonical: every layer's op calls this
        return name
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'cpu', got {type(name).__name__}: {name!r}")
    canon = name.strip().lower()
    base, sep, index = canon.partition(":")
    if base in DEVICES and not sep:
        return base
    if base == "cuda" and sep and index.isdigit():
        return f"cuda:{int(index)}"
    valid = ", ".join(repr(d) for d in DEVICES)
    raise ValueError(f"unknown device {name!r}; valid devices are {valid} (and 'cuda:N' for GPU N)")


def set_device(name: str) -> None:
    """Make ``name`` the default device for every op and layer that is not given ``device=``."""
    global _default
    name = normalize(name)
    check_available(name)
    _default = name


def get_device(device: str | None = None) -> str:
    """Resolve the device an op runs on (see the module docstring for the order)."""
    if device is not None:
        return normalize(device)
    chosen = _context.get()
    if chosen is not None:
        return chosen
    if _default is not None:
        return _default
    env = _environment_value()
    if env:
        try:
            return normalize(env)
        except ValueError as err:
            raise ValueError(f"{ENV_VAR}={env!r}: {err}") from None
    return DEFAULT_DEVICE


# Every op resolves its device, so the environment variable is read on every call: through
# ``os.environ``'s own store when CPython has one (``os.environ.get`` encodes the key and
# decodes the value: ~1.5 us, a fifth of a small op's Python overhead), else the usual way.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
try:
    _ENVIRON_KEY = os.environ.encodekey(ENV_VAR)
    _DECODE = os.environ.decodevalue
except AttributeError:
    _ENVIRON_DATA = None


def _environment_value():
    if _ENVIRON_DATA is None:
        return os.environ.get(ENV_VAR)
    raw = _ENVIRON_DATA.get(_ENVIRON_KEY)
    return None if raw is None else _DECODE(raw)


@contextlib.contextmanager
def device(name: str):
    """Run the ops inside the ``with`` block on ``name``::

        with loopnet.device("numpy"):
            out = loopnet.ops.dense_forward(x, w, b)
    """
    name = normalize(name)
    check_available(name)
    token = _context.set(name)
    try:
        yield
    finally:
        _context.reset(token)


def base_name(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``."""
    return device.partition(":")[0]


def gpu(device: str | None) -> str | None:
    """``device`` when it names a GPU (``cuda``, ``cuda:1``), else None. ``gpu(get_device())``
    is where a layer made now puts its parameters (``Dense``, ``Model.load``)."""
    return device if device is not None and base_name(device) == "cuda" else None


_backends: dict = {}


def _named(device):
    """``device``, or for None the name that a ``with`` block, ``set_device`` or (without
    ``LOOPNET_DEVICE``) the default gives: a canonical name, looked up at once by ``backend``
    and ``host_backend``; None when ``LOOPNET_DEVICE`` has to be read and parsed."""
    if device is None:
        device = _context.get()
        if device is None:
            device = _default
            if device is None and not _environment_value():
                device = DEFAULT_DEVICE
    return device


def backend(device: str | None = None):
    """The backend module of a device: it exports every op under its plain name."""
    name = _named(device)
    if type(name) is str:         # a layer's own device, as every one of its ops names it:
        module = _backends.get(name)    # a host device's canonical name is its module's
        if module is not None and module.HOST:    # (~0.15 us, against ~0.3 us parsed)
            return module
    device = get_device(device)
    name = base_name(device)
    module = _backends.get(name)
    if module is None:  # first use: import it (compiles nothing yet), then a dict lookup
        module = _backends[name] = importlib.import_module(f"loopnet.backends.{name}")
    if name == "cuda":
        module.select(device)  # cuda:N -> GPU N (a no-op when it is already current)
    return module


def host_backend(device: str | None = None):
    """``backend(device)`` when that device computes in this process (cpu, numpy, python),
    else None: what the ops' fast paths ask at every call (a GPU's module is not selected
    here: the full path that then runs selects it)."""
    name = _named(device)
    if type(name) is str:
        module = _backends.get(name)
        if module is not None:
            return module if module.HOST else None
    module = backend(device)
    return module if module.HOST else None


def check_available(device: str) -> None:
    """Fail now, not at the first op, when ``device`` cannot run here: for ``cuda`` this imports
    the cuda backend, which raises a ``RuntimeError`` saying how to get a GPU or the simulator
    (and a ``ValueError`` for a ``cuda:N`` that does not exist). Host devices always run."""
    if base_name(device) == "cuda":
        backend(device)
