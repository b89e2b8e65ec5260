"""The nnfs toy datasets, with nnfs's signatures, reimplemented so a ``seed=`` can be given;
and image folders in the book's layout (``load_image_folder``, ``load_image_dataset``,
``load_images``: see ``loopnet.images``).

With ``seed=None`` the draws come from numpy's global RNG in the same order as ``nnfs.datasets``
(so ``np.random.seed(0)`` or ``nnfs.init()`` reproduce the book's data exactly); with a seed they
come from a private ``np.random.RandomState(seed)`` and the global state is left untouched (or
from the ``np.random.Generator`` or ``np.random.RandomState`` given as ``seed``).
loopnet never calls ``nnfs.init()``.
"""

from __future__ import annotations

import numpy as np

from loopnet.images import ImageData, load_image_dataset, load_image_folder, load_images
from loopnet.validate import normal_draws, positive_int

__all__ = ["ImageData", "load_image_dataset", "load_image_folder", "load_images", "sine_data",
           "spiral_data", "vertical_data"]


def _label_dtype(classes: int) -> np.dtype:
    """uint8 (nnfs's labels) while the class indices fit in it, else a wider unsigned type."""
    return np.promote_types(np.uint8, np.min_scalar_type(classes - 1))


def _blank(samples, classes, seed):
    """The checked sizes, the normal draws to use and zeroed ``X`` (n, 2) and ``y`` (n,)."""
    samples = positive_int(samples, "samples")
    classes = positive_int(classes, "classes")
    randn = normal_draws(seed)
    X = np.zeros((samples * classes, 2), dtype=np.float64)
    y = np.zeros(samples * classes, dtype=_label_dtype(classes))
    return samples, classes, randn, X, y


def spiral_data(samples: int, classes: int, *, seed=None, dtype=np.float32):
    """``classes`` interleaved spiral arms of ``samples`` points each (Karpathy's cs231n data).

    Returns ``X`` (samples * classes, 2) of ``dtype`` and ``y`` (samples * classes,): uint8 as
    nnfs returns it, or the smallest unsigned integer type that holds every class past 256.
    """
    samples, classes, randn, X, y = _blank(samples, classes, seed)
    for class_number in range(classes):
        ix = range(samples * class_number, samples * (class_number + 1))
        r = np.linspace(0.0, 1, samples)
        t = np.linspace(class_number * 4, (class_number + 1) * 4, samples) + randn(samples) * 0.2
        X[ix] = np.c_[r * np.sin(t * 2.5), r * np.cos(t * 2.5)]
        y[ix] = class_number
    return X.astype(dtype), y


def vertical_data(samples: int, classes: int, *, seed=None, dtype=np.float32):
    """``classes`` vertical blobs of ``samples`` points each. Returns ``X`` (n, 2), ``y`` (n,)
    (``y`` as ``spiral_data`` types it)."""
    samples, classes, randn, X, y = _blank(samples, classes, seed)
    for class_number in range(classes):
        ix = range(samples * class_number, samples * (class_number + 1))
        X[ix] = np.c_[randn(samples) * 0.1 + class_number / 3, randn(samples) * 0.1 + 0.5]
        y[ix] = class_number
    return X.astype(dtype), y


def sine_data(samples: int = 1000, *, dtype=np.float32):
    """``y = sin(2 pi x)`` at ``samples`` points ``x`` in [0, 1) (no randomness, so no seed).

    Returns ``X`` (samples, 1) and ``y`` (samples, 1), both of ``dtype``.
    """
    samples = positive_int(samples, "samples")
    X = np.arange(samples).reshape(-1, 1) / samples
    y = np.sin(2 * np.pi * X).reshape(-1, 1)
    return X.astype(dtype), y.astype(dtype)
