"""The ``loopnet`` command, run as ``python -m loopnet`` in a child process (small epochs)."""

import csv
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from loopnet import cli, datasets

# Small runs: a few samples per class and few epochs keep each command to seconds.
SMALL = ["--samples", "30", "--epochs", "20"]


def loopnet(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "loopnet", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loopnet"), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def write_csv(path, X, y, header=("x1", "x2", "label")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        for row, label in zip(X, y):
            writer.writerow([*map(float, row), int(label)])


# --- train --------------------------------------------------------------------------------------

def test_train_quiet_prints_only_the_summary():
    result = loopnet("train", *SMALL, "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    summary = lines[0]
    assert "held-out accuracy:" in summary and "epochs/s" in summary and "20 epochs in" in summary
    held_out = float(summary.split("held-out accuracy:")[1].split()[0])
    assert 0.0 <= held_out <= 1.0


def test_train_logs_book_lines_saves_plots_and_predicts(tmp_path):
    """Not a terminal here: the book's log lines (ten per run) instead of a progress bar; the
    saved model predicts; the plot is a PNG of the size the figure asks for."""
    model_path, plot_path = tmp_path / "model.npz", tmp_path / "out.png"
    result = loopnet("train", *SMALL, "--save", model_path, "--plot", plot_path)
    assert result.returncode == 0, result.stderr
    log = [line for line in result.stdout.splitlines() if line.startswith("epoch: ")]
    assert [line.split(",")[0] for line in log] == [f"epoch: {e}" for e in range(2, 21, 2)]
    assert "acc: " in log[-1] and "loss: " in log[-1] and "lr: " in log[-1]
    assert "\r" not in result.stdout + result.stderr          # no progress bar off a terminal
    assert model_path.exists()
    # three panels (boundary, loss, accuracy), 15 x 4.5 inches at 100 dpi
    assert png_size(plot_path) == (1500, 450)

    X, y = datasets.spiral_data(10, 3, seed=5)
    data_path = tmp_path / "new.csv"
    write_csv(data_path, X, y)
    predicted = loopnet("predict", "--model", model_path, "--data", data_path)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.reader(predicted.stdout.strip().splitlines()))
    assert rows[0] == ["prediction", "p0", "p1", "p2"]
    assert len(rows) == 1 + len(X)
    probabilities = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)   # printed to 6 digits
    assert [int(row[0]) for row in rows[1:]] == probabilities.argmax(axis=1).tolist()
    assert "accuracy against the labels" in predicted.stderr

    out = tmp_path / "predictions.csv"
    written = loopnet("predict", "--model", model_path, "--data", data_path, "--output", out)
    assert written.returncode == 0, written.stderr
    assert out.read_text().strip().splitlines() == predicted.stdout.strip().splitlines()
    # a last column that cannot be this model's labels gives no accuracy, and says why
    write_csv(data_path, X, y + 3)
    other = loopnet("predict", "--model", model_path, "--data", data_path)
    assert other.returncode == 0, other.stderr
    assert other.stdout == predicted.stdout
    assert other.stderr.strip() == (f"no accuracy: the labels in {data_path} go up to 5, but "
                                    "the model has 3 classes")


def test_validation_every_k_epochs_summary_and_timing(tmp_path):
    """--validate-every 10: the log (every 10 epochs here) carries the held-out line, the
    model's summary comes first, learning rates have 6 significant digits, and the timing
    tells the compile time from the training time."""
    plot_path = tmp_path / "curves.png"
    result = loopnet("train", "--samples", "30", "--epochs", "40", "--validate-every", "10",
                     "--plot", plot_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[1] == "Model: 4 layers" and "Total params: 387" in out   # 2*64+64 + 64*3+3
    log = [line for line in out if line.startswith(("epoch: ", "validation, "))]
    assert [line.split(",")[0] for line in log] == ["epoch: 10", "validation", "epoch: 20",
                                                    "validation", "epoch: 30", "validation",
                                                    "epoch: 40", "validation"]
    learning_rate = log[0].split("lr: ")[1]
    digits = learning_rate.replace(".", "").lstrip("0")
    assert learning_rate == f"{float(learning_rate):.6g}" and len(digits) <= 6
    summary = out[-2]
    # the compiled step reports its compile time (or cache load) apart from training
    assert re.search(r"40 epochs in [\d.]+ s on cpu: compile [\d.]+ s, then [\d,]+ epochs/s$",
                     summary), summary
    assert png_size(plot_path) == (1500, 450)


def test_early_stopping_and_version_and_help():
    result = loopnet("train", "--samples", "30", "--epochs", "300", "--early-stopping", "2",
                     "--learning-rate", "1")
    assert result.returncode == 0, result.stderr
    message = [line for line in result.stdout.splitlines() if line.startswith("early stopping")]
    assert len(message) == 1, result.stdout
    stopped = int(re.match(r"early stopping at epoch (\d+): .* restored epoch (\d+)",
                           message[0]).group(1))
    assert stopped < 300 and f"; {stopped} epochs in " in result.stdout
    version = loopnet("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"loopnet {loopnet_version()}"
    helped = loopnet("--help")
    assert helped.returncode == 0
    assert "loopnet train --data images/" in helped.stdout
    assert "``" not in helped.stdout and ":func:" not in helped.stdout


def test_timing_line_takes_a_compile_time_from_the_history():
    history = {"epoch": [1, 2, 3, 4], "compile_time": 0.5}
    assert cli._timing(history, 1.5, None, 0.0, "cpu") == \
        "4 epochs in 1.50 s on cpu: compile 0.50 s, then 4 epochs/s"
    history = {"epoch": [1, 2, 3, 4, 5]}        # no compile time: the first epoch apart
    assert cli._timing(history, 3.0, 1.0, 0.0, "numpy") == \
        "5 epochs in 3.00 s on numpy: compile + first epoch 1.00 s, then 4 epochs at 2 epochs/s"
    assert cli._timing({"epoch": [1]}, 0.25, 0.25, 0.0, "cpu") == \
        "1 epoch in 0.25 s on cpu (compile included)"


def loopnet_version():
    from importlib import metadata

    return metadata.version("loopnet")


def test_train_on_csv_and_npz_files(tmp_path):
    X, y = datasets.vertical_data(20, 3, seed=0)
    csv_path = tmp_path / "blobs.csv"
    with open(csv_path, "w", newline="") as handle:      # the label column first, by name
        writer = csv.writer(handle)
        writer.writerow(["label", "a", "b"])
        for row, label in zip(X, y):
            writer.writerow([int(label), *map(float, row)])
    result = loopnet("train", "--data", csv_path, "--epochs", "10", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "on 12 samples" in result.stdout               # 20% of 60 held out

    npz_path = tmp_path / "blobs.npz"
    np.savez(npz_path, X=X, y=y)
    result = loopnet("train", "--data", npz_path, "--epochs", "10", "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    assert "48 samples (2 features, 3 classes)" in result.stdout


def test_train_sine_regression():
    result = loopnet("train", "--dataset", "sine", "--samples", "100", "--epochs", "10",
                     "--hidden", "8,8", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy:" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["train", "--epochs", "0"], ["--epochs", "positive"]),
    (["train", "--epochs", "ten"], ["--epochs"]),
    (["train", "--dataset", "mnist"], ["--dataset", "mnist"]),
    (["train", "--hidden", "64,x"], ["--hidden"]),
    (["train", "--device", "gpu"], ["unknown device 'gpu'"]),
    (["train", "--learning-rate", "-1"], ["--learning-rate"]),
    (["train", "--data", "no/such/file.csv"], ["does not exist"]),
    (["train", "--save", "no/such/dir/model.npz"], ["--save", "does not exist"]),
    (["train", "--samples", "5", "--epochs", "1", "--batch-size", "100"], ["--batch-size 100"]),
    (["train", "--early-stopping", "3", "--validate-every", "2"], ["--early-stopping"]),
    (["train", "--image-size", "28"], ["--image-size", "image folder"]),
    # an option where it does not apply is refused, not ignored
    (["train", "--data", "x.csv", "--classes", "4"], ["--classes is for the built-in data"]),
    (["train", "--test-fraction", "0.5"], ["--test-fraction needs --data"]),
    (["train", "--dataset", "sine", "--classes", "2"], ["--classes does not apply to --dataset "
                                                        "sine"]),
    (["predict", "--model", "m.npz"], ["--data", "--image"]),
    (["frobnicate"], ["invalid choice"]),
    (["predict", "--data", "x.csv"], ["--model"]),
    (["predict", "--model", "missing.npz", "--data", "x.csv"], ["model file", "does not exist"]),
    (["explain", "convolution"], ["unknown op 'convolution'"]),
    (["explain"], ["--list"]),
    (["explain", "dense", "--seed", "-1"], ["--seed", "must be a whole number from 0"]),
    (["forward", "--seed", "-1"], ["--seed", "must be a whole number from 0"]),
])
def test_bad_arguments_give_one_line_and_status_2(args, fragments):
    assert_one_line_error(loopnet(*args), *fragments)


BAD_CSV = {
    "not_a_number.csv": ("x1,x2,label\n0.1,0.2,0\n0.3,abc,1\n", ["line 3", "'abc' is not a number"]),
    "ragged.csv": ("1,2,0\n3,4,1\n5,1\n", ["line 3 has 2 columns, expected 3"]),
    "empty.csv": ("", ["is empty"]),
    "header_only.csv": ("a,b,label\n", ["no data rows"]),
    "one_column.csv": ("1\n2\n", ["at least one feature column"]),
    "float_labels.csv": ("a,b,label\n1,2,0.5\n3,4,1.5\n", ["not class indices"]),
}


@pytest.mark.parametrize("name", sorted(BAD_CSV))
def test_bad_data_files_give_one_line_and_status_2(tmp_path, name):
    text, fragments = BAD_CSV[name]
    path = tmp_path / name
    path.write_text(text)
    extra = ["--task", "classification"] if name == "float_labels.csv" else []
    assert_one_line_error(loopnet("train", "--data", path, "--epochs", "1", *extra), *fragments)


def test_bad_npz_files(tmp_path):
    missing_y = tmp_path / "missing_y.npz"
    np.savez(missing_y, X=np.zeros((4, 2)), labels=np.zeros(4))
    assert_one_line_error(loopnet("train", "--data", missing_y), "no array 'y'", "labels")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive at all")
    assert_one_line_error(loopnet("train", "--data", garbage), "not a readable .npz")
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, X=np.zeros((4, 2)), y=np.zeros(3))
    assert_one_line_error(loopnet("train", "--data", mismatched), "y has shape (3,)", "4 samples")
    objects = tmp_path / "objects.npz"
    np.savez(objects, X=np.array([[1, "a"]], dtype=object), y=np.zeros(1))
    assert_one_line_error(loopnet("train", "--data", objects), "objects.npz", "object arrays")
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.array([[0.0, 1.0], [np.nan, 2.0]]), y=np.array([0, 1]))
    assert_one_line_error(loopnet("train", "--data", nan), "NaN", "sample 1")
    unknown = tmp_path / "data.json"
    unknown.write_text("{}")
    assert_one_line_error(loopnet("train", "--data", unknown), "unknown format '.json'")


def test_predict_rejects_a_corrupted_model_and_wrong_feature_count(tmp_path):
    model_path = tmp_path / "model.npz"
    trained = loopnet("train", "--samples", "10", "--epochs", "2", "--quiet", "--save", model_path)
    assert trained.returncode == 0, trained.stderr
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model_path.read_bytes()[:200])
    data = tmp_path / "three_features.csv"
    data.write_text("1,2,3,0\n4,5,6,1\n")
    assert_one_line_error(loopnet("predict", "--model", truncated, "--data", data), "truncated.npz")
    assert_one_line_error(loopnet("predict", "--model", model_path, "--data", data),
                          "3 features but the model expects 2")


# --- explain and forward ------------------------------------------------------------------------

def test_explain_dense_and_list():
    result = loopnet("explain", "dense", "--width", "200")
    assert result.returncode == 0, result.stderr
    assert "def dense_forward_loops" in result.stdout and "np.dot(inputs, weights)" in result.stdout
    difference = float(result.stdout.strip().splitlines()[-1].split("largest difference:")[1])
    assert difference < 1e-5          # float32 rounding of 3-term sums (see test_explain.py)
    listed = loopnet("explain", "--list")
    assert listed.returncode == 0
    assert "dense_forward" in listed.stdout and "softmax_forward" in listed.stdout


def test_forward_still_works():
    result = loopnet("forward", "--samples", "20")
    assert result.returncode == 0, result.stderr
    assert "loss:" in result.stdout


# --- data loading, in process -------------------------------------------------------------------

def test_csv_label_column_by_name_index_and_default(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,kind,b\n1,0,2\n3,1,4\n5,2,6\n")
    X, y = cli.load_data(str(path), label_column="kind")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1, 2])
    X1, y1 = cli.load_data(str(path), label_column="1")
    np.testing.assert_array_equal(X1, X)
    X2, y2 = cli.load_data(str(path))       # no column named label/y/class/target: the last one
    np.testing.assert_array_equal(y2, [2, 4, 6])
    with pytest.raises(cli.UsageError, match="no column 'nope'"):
        cli.load_data(str(path), label_column="nope")


def test_prediction_data_without_labels(tmp_path):
    path = tmp_path / "features.csv"
    path.write_text("0.5,0.25\n-1,2\n")
    X, y = cli.load_data(str(path), require_labels=False, n_features=2)
    assert y is None and X.shape == (2, 2)
