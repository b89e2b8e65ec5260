"""Image folders in the book's layout (``path/<label>/<n>.png``): what ``load_image_folder``
reads, the errors it gives, and ``loopnet train --data DIR`` / ``loopnet predict --image``.

The folders are written here with Pillow: a few 8x8 images per class, each class a bright
vertical bar in its own columns over dark noise, so a small network tells them apart."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import loopnet
from loopnet import datasets

Image = pytest.importorskip("PIL.Image")


def bar_image(label: int, rng, size=(8, 8)) -> np.ndarray:
    width, height = size
    pixels = rng.integers(0, 60, (height, width)).astype(np.uint8)
    pixels[:, 2 * label:2 * label + 2] = 230
    return pixels


def write_folder(root, counts, rng, size=(8, 8), names=None):
    """``root/<name>/<k>.png`` for each class; ``counts``: images per class."""
    names = names or [str(k) for k in range(len(counts))]
    for label, (name, count) in enumerate(zip(names, counts)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(count):
            Image.fromarray(bar_image(label, rng, size)).save(os.path.join(root, name, f"{k}.png"))
    return root


def test_load_image_folder_reads_the_books_layout(tmp_path):
    rng = np.random.default_rng(0)
    root = write_folder(tmp_path / "train", [3, 2, 12], rng)
    X, y, class_names = datasets.load_image_folder(root)
    assert class_names == ["0", "1", "2"]
    assert X.shape == (17, 64) and X.dtype == np.float32
    assert y.tolist() == [0] * 3 + [1] * 2 + [2] * 12 and y.dtype == np.intp
    # The book's scaling, to the bit, of the file's pixels; files in natural order (10 after 9).
    data = datasets.load_image_folder(root)
    names = [os.path.basename(file) for file in data.files]
    assert names[-3:] == ["9.png", "10.png", "11.png"]
    pixels = np.asarray(Image.open(data.files[0]))
    expected = (pixels.reshape(1, -1).astype(np.float32) - 127.5) / 127.5
    assert np.array_equal(X[:1], expected)
    assert data.preprocessing == {"kind": "image", "size": [8, 8], "grayscale": True,
                                  "scale": [-1.0, 1.0], "flatten": True, "invert": False,
                                  "dtype": "float32"}
    unit = datasets.load_image_folder(root, scale="[0, 1]", flatten=False, invert=True)
    assert unit.X.shape == (17, 8, 8)
    assert np.array_equal(unit.X[0], (255 - pixels).astype(np.float32) / 255)
    raw = datasets.load_image_folder(root, scale=None, dtype=np.uint8, grayscale=False)
    assert raw.X.shape == (17, 8 * 8 * 3) and raw.X.dtype == np.uint8
    # shuffling: a permutation of the same samples, the same one for the same seed
    a = datasets.load_image_folder(root, shuffle=True, seed=3)
    b = datasets.load_image_folder(root, shuffle=True, seed=3)
    assert np.array_equal(a.X, b.X) and a.y.tolist() == b.y.tolist()
    assert sorted(a.y.tolist()) == y.tolist() and a.y.tolist() != y.tolist()
    order = [data.files.index(f) for f in a.files]
    assert np.array_equal(a.X, X[order])
    g = datasets.load_image_folder(root, shuffle=True, seed=np.random.default_rng(3))
    assert g.y.tolist() == a.y.tolist()     # a Generator draws as default_rng(seed) would
    np.random.seed(5)
    c = datasets.load_image_folder(root, shuffle=True)
    np.random.seed(5)
    assert datasets.load_image_folder(root, shuffle=True).y.tolist() == c.y.tolist()


def test_numeric_class_names_sort_as_numbers_and_train_test_splits(tmp_path):
    rng = np.random.default_rng(1)
    names = [str(k) for k in range(11)]
    write_folder(tmp_path / "train", [1] * 11, rng, names=names)
    write_folder(tmp_path / "test", [1, 1], rng, names=["10", "2"])
    train, test = datasets.load_image_dataset(tmp_path)
    assert train.class_names == names                    # 0..10, not 0, 1, 10, 2, ...
    assert test.class_names == names and sorted(test.y.tolist()) == [2, 10]
    write_folder(tmp_path / "test", [1], rng, names=["cat"])
    with pytest.raises(ValueError, match="class folder 'cat'.*not among the classes"):
        datasets.load_image_dataset(tmp_path)


def test_image_folder_errors_are_named(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty: expected one folder per class"):
        datasets.load_image_folder(empty)
    root = write_folder(tmp_path / "a", [2, 2], rng)
    (root / "notes.txt").write_text("a file beside the class folders")
    with pytest.raises(ValueError, match="holds the file 'notes.txt'"):
        datasets.load_image_folder(root)
    os.remove(root / "notes.txt")
    (root / "1" / "broken.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"broken\.png' is not an image file"):
        datasets.load_image_folder(root)
    os.remove(root / "1" / "broken.png")
    (root / "2").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*2' is empty"):
        datasets.load_image_folder(root)
    os.rmdir(root / "2")
    Image.fromarray(bar_image(1, rng, (10, 6))).save(root / "1" / "wide.png")
    with pytest.raises(ValueError, match=r"'.*0\.png' is 8x8, '.*wide\.png' is 10x6"):
        datasets.load_image_folder(root)
    resized = datasets.load_image_folder(root, size=(8, 8))
    assert resized.X.shape == (5, 64)
    assert datasets.load_image_folder(root, size=4).X.shape == (5, 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no 'train' folder"):
        datasets.load_image_dataset(root)
    with pytest.raises(ValueError, match="scale must be"):
        datasets.load_image_folder(root, scale="[0, 255]")
    with pytest.raises(ValueError, match="size must"):
        datasets.load_image_folder(root, size=(8, 0))
    # shuffle and seed checked before any file is read (numpy's own messages name neither)
    for kwargs, error, message in (
            (dict(shuffle="no"), TypeError, r"^shuffle must be True or False, got 'no'$"),
            (dict(shuffle=True, seed=-3), ValueError, r"^seed must be an integer >= 0, got -3$"),
            (dict(seed=2.5), TypeError, r"^seed must be None, an integer >= 0 or a "
                                        r"np\.random\.Generator, got 2\.5$")):
        with pytest.raises(error, match=message):
            datasets.load_image_folder(tmp_path / "nowhere", **kwargs)
    with pytest.raises(TypeError, match=r"^path must be a file path \(a str or an os\.PathLike"
                                        r"\), got NoneType None$"):
        datasets.load_image_folder(None)
    # a file that decodes to more pixels than Pillow opens (a "decompression bomb"; the limit
    # lowered here so that an 8x8 image is one) is named, not Pillow's own exception
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)
    with pytest.raises(ValueError, match=r"'.*0\.png' is too large to read: Image size \(64 "
                                         r"pixels\) exceeds limit of 32 pixels"):
        datasets.load_image_folder(root, size=4)


def test_pillow_missing_names_the_extra(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "a", [1, 1], np.random.default_rng(3))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'extra "images": pip install "loopnet\[images\]"'):
        datasets.load_image_folder(root)


def loopnet_command(*args):
    return subprocess.run([sys.executable, "-m", "loopnet", *map(str, args)],
                          capture_output=True, text=True)


def test_train_on_an_image_folder_and_predict_image_files(tmp_path):
    """One training run (the test split held out), then prediction of image files through the
    preprocessing stored in the model file: the same probabilities as the model gives the
    split's own arrays, the class name, and the book's inversion as an option."""
    rng = np.random.default_rng(4)
    write_folder(tmp_path / "images" / "train", [12, 12, 12], rng, names=["left", "middle",
                                                                        "right"])
    write_folder(tmp_path / "images" / "test", [2, 2, 2], rng, names=["left", "middle", "right"])
    model_path = tmp_path / "model.npz"
    trained = loopnet_command("train", "--data", tmp_path / "images", "--epochs", "30",
                              "--hidden", "16", "--learning-rate", "0.01", "--save", model_path)
    assert trained.returncode == 0, trained.stderr
    assert "36 samples (8x8 grayscale images, 64 features, 3 classes), 6 held out" \
        in trained.stdout
    assert "Total params: 1,091" in trained.stdout        # 64*16 + 16 + 16*3 + 3
    model = loopnet.Model.load(model_path)
    assert model.class_names == ["left", "middle", "right"]
    assert model.preprocessing["size"] == [8, 8] and model.preprocessing["scale"] == [-1.0, 1.0]

    files = sorted((tmp_path / "images" / "test").glob("*/*.png"))
    predicted = loopnet_command("predict", "--model", model_path, "--image", *files)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.reader(predicted.stdout.strip().splitlines()))
    assert rows[0] == ["file", "prediction", "left", "middle", "right"]
    _, test = datasets.load_image_dataset(tmp_path / "images")
    expected = model.predict(test.X)
    order = [test.files.index(str(f)) for f in files]
    probabilities = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities, expected[order], rtol=1e-5)   # printed to 6 digits
    assert [row[1] for row in rows[1:]] == [model.class_names[k]
                                           for k in expected[order].argmax(axis=1)]
    assert [row[0] for row in rows[1:]] == [str(f) for f in files]

    inverted = loopnet_command("predict", "--model", model_path, "--image", files[0], "--invert")
    assert inverted.returncode == 0, inverted.stderr
    settings = dict(model.preprocessing)
    X_inverted = datasets.load_images([files[0]], settings, invert=True)
    pixels = np.asarray(Image.open(files[0]))
    assert np.array_equal(X_inverted[0], ((255 - pixels).reshape(-1).astype(np.float32)
                                          - 127.5) / 127.5)
    row = list(csv.reader(inverted.stdout.strip().splitlines()))[1]
    np.testing.assert_allclose([float(v) for v in row[2:]], model.predict(X_inverted)[0],
                               rtol=1e-5)

    archive = tmp_path / "predictions.npz"
    written = loopnet_command("predict", "--model", model_path, "--image", *files[:2],
                              "--output", archive)
    assert written.returncode == 0, written.stderr
    with np.load(archive, allow_pickle=False) as saved:
        assert saved["files"].tolist() == [str(f) for f in files[:2]]
        assert saved["class_names"].tolist() == model.class_names
        np.testing.assert_allclose(saved["outputs"], expected[order][:2], rtol=1e-5)  # other batch
