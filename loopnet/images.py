"""Image folders, as the book lays out Fashion MNIST (chapter 19): ``path/<label>/<n>.png``.

::

    X, y, class_names = loopnet.datasets.load_image_folder("fashion_mnist_images/train")
    train, test = loopnet.datasets.load_image_dataset("fashion_mnist_images")   # train/, test/
    X, y, class_names = train

Each sub-folder of ``path`` is a class; its name is kept (``class_names[k]`` is the folder of
label ``k``). Folder names that are all whole numbers sort as numbers (``0, 1, ..., 10``), so
the book's folders ``0``..``9`` get labels 0..9; other names sort alphabetically. Files and
folders whose name starts with a dot are skipped.

Every image is read with Pillow (the optional extra ``images``: ``pip install
"loopnet[images]"``; imported on first use), converted to 8-bit grayscale (or RGB), resized to
``size`` when given, optionally inverted (``255 - image``, the book's trick for a dark drawing
on a light background), scaled and flattened. The default scaling is the book's,
``(X - 127.5) / 127.5``, into [-1, 1].

The settings travel with the data as ``.preprocessing`` (a JSON-able dict); a model saved with
them (``model.preprocessing = train.preprocessing``) lets ``loopnet predict --image`` and
``load_images`` treat new files exactly as the training images were treated.
"""

from __future__ import annotations

import numbers
import os
import re

import numpy as np

from loopnet.validate import file_path, flag, generator

SCALES = {"[-1, 1]": (-1.0, 1.0), "[0, 1]": (0.0, 1.0)}


class ImageData(tuple):
    """``(X, y, class_names)``, unpacked as a tuple, with two more attributes:
    ``preprocessing`` (the settings that produced ``X``, for ``load_images`` and
    ``Model.save``) and ``files`` (the path of each sample, in the order of ``X``)."""

    def __new__(cls, X, y, class_names, preprocessing, files):
        data = super().__new__(cls, (X, y, class_names))
        data.preprocessing = preprocessing
        data.files = files
        return data

    @property
    def X(self):
        return self[0]

    @property
    def y(self):
        return self[1]

    @property
    def class_names(self):
        return self[2]


def _pil():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError('reading images needs Pillow, the optional extra "images": '
                          'pip install "loopnet[images]" (or pip install pillow)') from None
    return Image, UnidentifiedImageError


def _size(size):
    """``None``, ``n`` (square) or ``(width, height)`` -> ``None`` or ``(width, height)``."""
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a (width, height) pair, got {size!r}") from None
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"size must hold positive integers (width, height), got {size!r}")
    return int(width), int(height)


def _scale(scale):
    """``"[-1, 1]"``, ``"[0, 1]"``, a ``(low, high)`` pair or None (the raw 0..255 values)."""
    if scale is None:
        return None
    if isinstance(scale, str):
        key = re.sub(r"\s+", "", scale).replace(",", ", ")
        if key not in SCALES:
            raise ValueError(f"scale must be '[-1, 1]', '[0, 1]', a (low, high) pair or None, "
                             f"got {scale!r}")
        return SCALES[key]
    try:
        low, high = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be '[-1, 1]', '[0, 1]', a (low, high) pair or None, "
                         f"got {scale!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"scale must be a pair (low, high) with low < high, got {scale!r}")
    return low, high


def _dtype(dtype, scale):
    dtype = np.dtype(dtype)
    allowed = (np.float32, np.float64) if scale is not None else (np.float32, np.float64,
                                                                   np.uint8)
    if dtype not in allowed:
        names = ", ".join(np.dtype(d).name for d in allowed)
        raise ValueError(f"dtype must be one of {names} (uint8 only with scale=None), "
                         f"got {dtype}")
    return dtype


def preprocessing(*, size=None, grayscale: bool = True, scale="[-1, 1]", flatten: bool = True,
                  invert: bool = False, dtype=np.float32) -> dict:
    """The settings of ``load_image_folder`` as a JSON-able dict (validated)."""
    scale = _scale(scale)
    return {"kind": "image", "size": None if size is None else list(_size(size)),
            "grayscale": bool(grayscale), "scale": None if scale is None else list(scale),
            "flatten": bool(flatten), "invert": bool(invert), "dtype": _dtype(dtype, scale).name}


def _natural_key(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]


def _visible(names):
    return [name for name in names if not name.startswith(".")]


def _class_folders(path):
    path = file_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image folder {path!r} does not exist")
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} is not a directory")
    names = _visible(os.listdir(path))
    files = [name for name in names if not os.path.isdir(os.path.join(path, name))]
    if files:
        raise ValueError(f"image folder {path!r} holds the file {sorted(files)[0]!r}: expected "
                         "only one folder per class (path/<class>/<image>)")
    if not names:
        raise ValueError(f"image folder {path!r} is empty: expected one folder per class "
                         "(path/<class>/<image>)")
    if all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def read_image(path, settings: dict, *, invert: bool = False) -> np.ndarray:
    """One image file as ``settings`` (a ``preprocessing`` dict) say, before scaling: a uint8
    array (height, width) or (height, width, 3). ``invert=True`` inverts it (once more)."""
    Image, UnidentifiedImageError = _pil()
    path = file_path(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not an image file")
    mode = "L" if settings["grayscale"] else "RGB"
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != mode:
                image = image.convert(mode)
            if settings["size"] is not None and image.size != tuple(settings["size"]):
                resample = getattr(Image, "Resampling", Image).BILINEAR
                image = image.resize(tuple(settings["size"]), resample)
            pixels = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(f"{path!r} is not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:
        # (Pillow's guard against a small file that decodes to gigabytes)
        raise ValueError(f"{path!r} is too large to read: {err}") from None
    except OSError as err:
        raise ValueError(f"{path!r} cannot be read as an image ({err})") from None
    if settings["invert"] != invert:
        pixels = 255 - pixels
    return pixels


def _finish(images, settings: dict) -> np.ndarray:
    """Stack uint8 images, scale them and flatten them, as ``settings`` say."""
    X = np.stack(images)
    dtype = np.dtype(settings["dtype"])
    scale = settings["scale"]
    if scale is None:
        X = X.astype(dtype)
    elif tuple(scale) == (-1.0, 1.0):       # the book's formula, to its last bit
        X = (X.astype(dtype) - dtype.type(127.5)) / dtype.type(127.5)
    elif tuple(scale) == (0.0, 1.0):
        X = X.astype(dtype) / dtype.type(255)
    else:
        low, high = scale
        X = dtype.type(low) + X.astype(dtype) * dtype.type((high - low) / 255)
    if settings["flatten"]:
        X = X.reshape(len(X), -1)
    return np.ascontiguousarray(X)


def load_image_folder(path, *, size=None, grayscale: bool = True, scale="[-1, 1]",
                      flatten: bool = True, shuffle: bool = False, seed=None,
                      invert: bool = False, dtype=np.float32, class_names=None) -> ImageData:
    """Every image of ``path/<class>/<file>`` as one sample: returns ``(X, y, class_names)``
    (an ``ImageData``, which also carries ``preprocessing`` and ``files``).

    ``size``        ``None`` (every image must have the same size, else a ``ValueError`` names
                    two files of different sizes), ``n`` or ``(width, height)``: resize to it
    ``grayscale``   one 8-bit channel (default), else RGB
    ``scale``       ``"[-1, 1]"`` (the book's ``(X - 127.5) / 127.5``), ``"[0, 1]"``, any
                    ``(low, high)`` or None (the raw 0..255 values)
    ``flatten``     ``X`` of shape (n, height * width * channels), else (n, height, width[, 3])
    ``shuffle``     shuffle the samples, with ``np.random.default_rng(seed)``, or with numpy's
                    global generator when ``seed`` is None (so ``np.random.seed`` repeats it)
    ``invert``      ``255 - image`` before scaling
    ``class_names`` the classes, in label order, when they must be these (a test split takes
                    its training split's); a folder not among them is an error

    ``y`` holds integer labels (``np.intp``), ``X`` the ``dtype`` (float32; uint8 is allowed
    with ``scale=None``).
    """
    settings = preprocessing(size=size, grayscale=grayscale, scale=scale, flatten=flatten,
                             invert=invert, dtype=dtype)
    shuffle = flag(shuffle, "shuffle")
    rng = None if seed is None else generator(seed, "seed")    # (checked before any file)
    path = file_path(path)
    folders = _class_folders(path)
    if class_names is None:
        class_names = folders
    else:
        class_names = [str(name) for name in class_names]
        unknown = [name for name in folders if name not in class_names]
        if unknown:
            raise ValueError(f"image folder {path!r} has the class folder {unknown[0]!r}, which "
                             f"is not among the classes {class_names}")
    label_of = {name: label for label, name in enumerate(class_names)}
    images, labels, files = [], [], []
    reference = None        # (file, (width, height)) of the first image
    for name in folders:
        folder = os.path.join(path, name)
        entries = sorted(_visible(os.listdir(folder)), key=_natural_key)
        if not entries:
            raise ValueError(f"class folder {folder!r} is empty")
        for entry in entries:
            file = os.path.join(folder, entry)
            pixels = read_image(file, settings)
            shape = (pixels.shape[1], pixels.shape[0])
            if reference is None:
                reference = (file, shape)
            elif shape != reference[1]:
                raise ValueError(
                    f"images differ in size: {reference[0]!r} is {reference[1][0]}x"
                    f"{reference[1][1]}, {file!r} is {shape[0]}x{shape[1]} (width x height); "
                    "pass size=(width, height) to resize them all")
            images.append(pixels)
            labels.append(label_of[name])
            files.append(file)
    settings["size"] = list(reference[1])      # the size every image now has
    X = _finish(images, settings)
    y = np.array(labels, dtype=np.intp)
    if shuffle:
        order = (np.random.permutation(len(y)) if rng is None
                 else rng.permutation(len(y)))
        X, y, files = X[order], y[order], [files[k] for k in order]
    return ImageData(X, y, list(class_names), settings, files)


def load_image_dataset(root, **options):
    """``(train, test)``: ``load_image_folder`` of ``root/train`` and ``root/test`` (the book's
    ``create_data_mnist``), each an ``ImageData`` ``(X, y, class_names)``. The options apply
    to both (``shuffle`` to the training split only); the test split takes the training
    split's classes and image size."""
    root = file_path(root, "root")
    missing = [part for part in ("train", "test") if not os.path.isdir(os.path.join(root, part))]
    if missing:
        found = ", ".join(sorted(_visible(os.listdir(root)))) if os.path.isdir(root) else None
        raise ValueError(f"{root!r} has no {missing[0]!r} folder (it has: {found or 'nothing'}); "
                         "expected root/train/<class>/... and root/test/<class>/...")
    train = load_image_folder(os.path.join(root, "train"), **options)
    test_options = {k: v for k, v in options.items() if k not in ("shuffle", "seed")}
    test = load_image_folder(os.path.join(root, "test"), class_names=train.class_names,
                             **test_options)
    if test.preprocessing["size"] != train.preprocessing["size"]:
        (tw, th), (sw, sh) = train.preprocessing["size"], test.preprocessing["size"]
        raise ValueError(f"the training images are {tw}x{th} but the test images {sw}x{sh} "
                         "(width x height); pass size=(width, height) to resize them all")
    return train, test


def load_images(files, settings: dict, *, invert: bool = False) -> np.ndarray:
    """``X`` for image ``files`` treated as ``settings`` say (a model's ``preprocessing``,
    which holds the training images' size, so every file is resized to it). ``invert=True``
    inverts the files first: the book's ``255 - image`` for a drawing whose colours are the
    reverse of the training images'."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not isinstance(settings, dict) or settings.get("kind") != "image":
        raise ValueError(f"not image preprocessing settings: {settings!r}")
    checked = preprocessing(size=settings.get("size"), grayscale=settings.get("grayscale", True),
                            scale=settings.get("scale"), flatten=settings.get("flatten", True),
                            invert=settings.get("invert", False),
                            dtype=settings.get("dtype", "float32"))
    files = [file_path(f, "each of files") for f in files]
    if not files:
        raise ValueError("no image files given")
    for file in files:
        if not os.path.exists(file):
            raise FileNotFoundError(f"image file {file!r} does not exist")
    return _finish([read_image(file, checked, invert=invert) for file in files], checked)
