"""Groups of hostile cases that could crash the interpreter if a check regressed (a kernel
reading past an array, an allocation of terabytes), run in one child process per group by
``tests/test_hostile.py``: ``python tests/hostile_children.py GROUP [ARGS...]``.

Each case prints ``{"start": name}`` before it runs and one JSON line with its outcome after,
so a crash names the case it happened in and cannot hide the cases after it being missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback

import numpy as np


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def run_cases(cases) -> None:
    for name, case in cases:
        report(start=name)
        try:
            result = case()
            report(case=name, raised=None, result=result)
        except Exception as err:        # the outcome under test: which error, which message
            report(case=name, raised=type(err).__name__, message=str(err),
                   traceback=traceback.format_exc())


# --- model state: what the kernels trust ---------------------------------------------------------

def model_state_cases():
    import loopnet
    from helpers import spiral_classifier
    from loopnet.datasets import spiral_data

    X, y = spiral_data(10, 3, seed=0)

    def classifier(device="cpu"):
        return spiral_classifier(device, seeds=(1, None, 2))

    def broken(change, device="cpu"):
        def case_for(call):
            def case():
                model = classifier(device)
                model.train(X, y, epochs=1, print_every=0)    # optimizer state exists
                change(model)
                if call == "train":
                    return model.train(X, y, epochs=2, print_every=0)["loss"]
                if call == "evaluate":
                    return list(model.evaluate(X, y))
                return model.predict(X).tolist()
            return case
        return case_for

    big = np.zeros((1000, 1000), np.float32)
    changes = {
        "biases_1x1": lambda m: setattr(m.layers[0], "biases", np.zeros((1, 1), np.float32)),
        "biases_view_of_larger": lambda m: setattr(m.layers[2], "biases", big[:1, :1]),
        "weights_3x16_on_2_inputs": lambda m: setattr(
            m.layers[0], "weights", np.ones((3, 16), np.float32)),
        "weights_int64": lambda m: setattr(
            m.layers[0], "weights", np.ones((2, 16), np.int64)),
        "weights_read_only": lambda m: m.layers[0].weights.setflags(write=False),
        "weights_fortran": lambda m: setattr(
            m.layers[2], "weights", np.asfortranarray(m.layers[2].weights)),
        "weights_float64_in_float32_layer": lambda m: setattr(
            m.layers[2], "weights", m.layers[2].weights.astype(np.float64)),
        "weights_a_list": lambda m: setattr(m.layers[0], "weights", [[0.0] * 16] * 2),
        "momentum_wrong_shape": lambda m: setattr(
            m.layers[2], "weight_momentums", np.zeros((3, 16), np.float32)),
        "cache_wrong_dtype": lambda m: setattr(
            m.layers[0], "bias_cache", np.zeros((1, 16), np.float64)),
        "layers_do_not_chain": lambda m: m.layers.__setitem__(
            2, loopnet.Dense(5, 3, seed=0)),
    }
    cases = []
    for name, change in changes.items():
        for call in ("train", "evaluate", "predict"):
            cases.append((f"{name}/{call}", broken(change)(call)))
    for call in ("train", "predict"):       # the numpy twins and the uncompiled loops too
        for device in ("numpy", "python"):
            cases.append((f"biases_view_of_larger/{call}/{device}",
                          broken(changes["biases_view_of_larger"], device)(call)))

    def wide_X():
        return classifier().predict(np.ones((4, 3), np.float32)).tolist()

    def one_dimensional_X():
        return classifier().predict(np.ones(2, np.float32)).tolist()

    cases += [("X_too_wide/predict", wide_X), ("X_one_dimensional/predict", one_dimensional_X)]

    def label_written_by_a_callback(into_validation):
        # a callback writes a label far out of range into the caller's own y (int64: the
        # array the checks passed) or y_val, in place, between two epochs
        def case():
            labels, validation_labels = y.astype(np.int64), y.astype(np.int64)

            class Rewrite(loopnet.callbacks.Callback):
                def on_epoch_end(self, epoch, logs):
                    (validation_labels if into_validation else labels)[0] = 10**9

            return classifier().train(
                X, labels, epochs=3, print_every=0, callbacks=[Rewrite()],
                validation_data=(X, validation_labels))["loss"]
        return case

    cases += [("label_written_by_a_callback/y", label_written_by_a_callback(False)),
              ("label_written_by_a_callback/y_val", label_written_by_a_callback(True))]
    run_cases(cases)


# --- the command line, in process ----------------------------------------------------------------

def cli_cases(workdir):
    import loopnet
    from loopnet import cli

    trained = []
    original_train = loopnet.Model.train

    def recording_train(self, *args, **kwargs):
        trained.append(True)
        return original_train(self, *args, **kwargs)

    loopnet.Model.train = recording_train

    def command(*argv):
        def case():
            trained.clear()
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    status = cli.main([str(a) for a in argv])
                except SystemExit as exit_:        # argparse
                    status = exit_.code
            return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "trained": bool(trained)}
        return case

    def path(name):
        return os.path.join(workdir, name)

    def write(name, text):
        with open(path(name), "w") as handle:
            handle.write(text)
        return path(name)

    small = ["--epochs", "2", "--quiet"]     # (with --data: --samples is the built-in data's)
    model = path("model.npz")
    tiny = ["--samples", "10", *small]      # the built-in data, small
    assert command("train", *tiny, "--save", model)()["status"] == 0
    huge_weights = path("huge_weights.npz")
    m = loopnet.Model.load(model)
    m.set_parameters([(np.full(w.shape, 1e38), b) for w, b in m.get_parameters()])
    m.save(huge_weights)
    nan_weights = path("nan_weights.npz")
    m.set_parameters([(np.full(w.shape, np.nan), b) for w, b in m.get_parameters()])
    m.save(nan_weights)

    good_rows = "".join(f"{0.1 * k},{-0.1 * k},{k % 3}\n" for k in range(30))
    files = {
        "huge.csv": write("huge.csv", "x1,x2,label\n" + good_rows + "1e300,0.5,1\n"),
        "nan.csv": write("nan.csv", "x1,x2,label\n" + good_rows + "nan,0.5,1\n"),
        "inf.csv": write("inf.csv", "x1,x2,label\n" + good_rows + "0.5,-inf,1\n"),
        "huge_target.csv": write("huge_target.csv", "x1,x2,target\n0,1,0.5\n1,2,1e300\n"),
        "labels_1e12.csv": write("labels_1e12.csv", "x1,x2,label\n" + good_rows + "1,2,1e12\n"),
        "labels_1e20.csv": write("labels_1e20.csv", "x1,x2,label\n" + good_rows + "1,2,1e20\n"),
        "labels_big_int.csv": write("labels_big_int.csv",
                                    "x1,x2,label\n" + good_rows + "1,2,2000000000\n"),
        "labels_negative.csv": write("labels_negative.csv",
                                     "x1,x2,label\n" + good_rows + "1,2,-1\n"),
        "labels_fraction.csv": write("labels_fraction.csv",
                                     "x1,x2,label\n" + good_rows + "1,2,1.5\n"),
        "features.csv": write("features.csv", "0.5,0.25\n-1,2\n10,10\n"),
    }
    np.savez(path("huge.npz"), X=np.array([[0.5, 1e300]] * 4), y=np.array([0, 1, 0, 1]))
    read_only = write("read_only.npz", "old")
    os.chmod(read_only, 0o444)
    os.mkdir(path("a_directory"))

    cases = [
        ("diverging", command("train", "--samples", "20", "--epochs", "50",
                              "--learning-rate", "1e30", "--quiet")),
        ("train_value_beyond_float32", command("train", "--data", files["huge.csv"], *small)),
        ("train_npz_value_beyond_float32", command("train", "--data", path("huge.npz"), *small)),
        ("train_target_beyond_float32", command("train", "--data", files["huge_target.csv"],
                                                "--task", "regression", *small)),
        ("train_nan", command("train", "--data", files["nan.csv"], *small)),
        ("train_inf", command("train", "--data", files["inf.csv"], *small)),
        ("predict_value_beyond_float32", command("predict", "--model", model,
                                                 "--data", files["huge.csv"])),
        ("predict_nan", command("predict", "--model", model, "--data", files["nan.csv"])),
        ("predict_inf", command("predict", "--model", model, "--data", files["inf.csv"])),
        ("predict_outputs_overflow", command("predict", "--model", huge_weights,
                                             "--data", files["features.csv"])),
        ("predict_nan_parameters", command("predict", "--model", nan_weights,
                                           "--data", files["features.csv"])),
        ("labels_1e12", command("train", "--data", files["labels_1e12.csv"], *small)),
        ("labels_1e20", command("train", "--data", files["labels_1e20.csv"], *small)),
        ("labels_2e9", command("train", "--data", files["labels_big_int.csv"], *small)),
        ("labels_negative", command("train", "--data", files["labels_negative.csv"],
                                    "--task", "classification", *small)),
        ("labels_fraction", command("train", "--data", files["labels_fraction.csv"],
                                    "--task", "classification", *small)),
        ("classes_300", command("train", "--classes", "300", "--samples", "2", "--epochs", "1",
                                "--hidden", "4", "--quiet")),
        ("hidden_1e12", command("train", "--hidden", "1e12")),
        ("hidden_0", command("train", "--hidden", "0")),
        ("hidden_10**12", command("train", "--hidden", str(10**12))),
        ("samples_10**12", command("train", "--samples", str(10**12))),
        ("classes_10**9", command("train", "--classes", str(10**9), "--samples", "1")),
        ("learning_rate_inf", command("train", "--learning-rate", "inf")),
        ("seed_negative", command("train", "--seed", "-1")),
        ("save_directory", command("train", *tiny, "--save", path("a_directory"))),
        ("save_missing_directory", command("train", *tiny, "--save",
                                           path("missing/model.npz"))),
        ("save_read_only_file", command("train", *tiny, "--save", read_only)),
        ("plot_directory", command("train", *tiny, "--plot", path("a_directory"))),
        ("output_missing_directory", command("predict", "--model", model, "--data",
                                             files["features.csv"], "--output",
                                             path("missing/out.csv"))),
    ]

    def save_into_unwritable_directory():
        # root may write anywhere: the directory is made unwritable for the check's eyes
        real_access = os.access
        locked = path("locked")
        os.makedirs(locked, exist_ok=True)
        os.access = lambda p, mode, **kw: (False if os.path.realpath(p) == locked
                                           else real_access(p, mode, **kw))
        try:
            return command("train", *tiny, "--save", os.path.join(locked, "m.npz"))()
        finally:
            os.access = real_access

    def plot_without_matplotlib():
        for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
            del sys.modules[name]
        sys.modules["matplotlib"] = None        # `import matplotlib` raises ImportError
        return command("train", *tiny, "--plot", path("out.png"))()

    cases += [("save_unwritable_directory", save_into_unwritable_directory),
              ("plot_without_matplotlib", plot_without_matplotlib)]
    run_cases(cases)


if __name__ == "__main__":
    group = sys.argv[1]
    if group == "model_state":
        model_state_cases()
    elif group == "cli":
        cli_cases(sys.argv[2])
    else:
        raise SystemExit(f"unknown group {group!r}")
