"""``loopnet.explain("dense")``: one op's loops beside its numpy twin, run on the same input.

For an op this prints the source of ``<op>_loops`` (what the ``cpu`` device compiles and the
``python`` device runs) and of ``<op>_numpy`` (the vectorized twin) side by side, then runs both
on the same small random input and prints the largest difference between their outputs::

    >>> import loopnet
    >>> loopnet.explain("dense")                 # doctest: +SKIP
    >>> loopnet.explain.list_ops()               # every op, found in the kernel files

Ops are found by the kernel files' naming convention across ``loopnet.kernels.MODULES``, so an op
added there later shows up here with no change to this file. Friendly names are accepted:
``dense`` -> ``dense_forward``, ``crossentropy`` -> ``categorical_crossentropy``, ``adam`` ->
whichever op has ``adam`` in its name.

How the example input is built: every kernel takes its arrays (inputs *and* outputs) as
arguments, named as in the notes (``inputs``, ``weights``, ``dvalues``, ``y_pred`` ...). From those
names, a few candidate layouts give each array a shape (elementwise ops get flat vectors, softmax
and losses get ``(n_samples, n_classes)`` rows, dense ops get ``(n_samples, n_inputs)`` inputs and
``(n_inputs, n_neurons)`` weights ...). A layout is first tried on the uncompiled loops, where
numpy checks every index, and only then compiled: numba does not bounds-check, and a wrong guess
must not write into foreign memory. A kernel module may also define ``<op>_example(rng, dtype)``
returning the argument tuple, which is used instead of guessing. When no layout fits, ``explain``
says so and still prints the sources.

Every array is compared after the run: those either implementation changed are its outputs
(optimizer updates change their parameters in place), and the largest absolute difference over
them is reported.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import shutil
import sys
import textwrap
import types

import numpy as np

__all__ = ["Explanation", "explain", "list_ops", "resolve"]

# Friendly names -> canonical parts of op names. Applied to the whole name and to its pieces, so
# "crossentropy_backward" finds "categorical_crossentropy_backward".
ALIASES = {
    "crossentropy": "categorical_crossentropy",
    "cross_entropy": "categorical_crossentropy",
    "cce": "categorical_crossentropy",
    "ce": "categorical_crossentropy",
    "categorical_cross_entropy": "categorical_crossentropy",
    "bce": "binary_crossentropy",
    "binary_cross_entropy": "binary_crossentropy",
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "linear_layer": "dense",
    "layer": "dense",
    "acc": "accuracy",
}

# The example sizes: small enough for the python device, different from each other so that a
# transposed index would show up as a shape error rather than pass silently.
N_SAMPLES, N_INPUTS, N_NEURONS, N_CLASSES, N_ELEMENTS = 4, 3, 5, 3, 12


# --- Finding ops --------------------------------------------------------------------------------

def _kernel_modules():
    from loopnet import kernels

    return [importlib.import_module(f"loopnet.kernels.{name}") for name in kernels.MODULES]


def _forms() -> dict[str, dict[str, object]]:
    """``{op: {"loops": f, "numpy": f, "notes": f, "kernel": f, "example": f, "module": m}}``
    from the kernel files (``kernel`` is the CUDA form, shown but not run here)."""
    found: dict[str, dict[str, object]] = {}
    for module in _kernel_modules():
        for name, obj in vars(module).items():
            if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
                continue
            for suffix in ("loops", "numpy", "notes", "kernel", "example"):
                if name.endswith("_" + suffix):
                    op = name[: -len(suffix) - 1]
                    found.setdefault(op, {"module": module})[suffix] = obj
    # An op is something with a loop form or a twin; `_example` or `_notes` alone is not.
    return {op: f for op, f in found.items() if "loops" in f or "numpy" in f}


def list_ops() -> list[str]:
    """Every op with a loop form or a numpy twin, in kernel-file order then alphabetically."""
    order = {m.__name__: k for k, m in enumerate(_kernel_modules())}
    forms = _forms()
    return sorted(forms, key=lambda op: (order[forms[op]["module"].__name__], op))


def _normalize(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace(".", " ").split())


def resolve(name: str) -> list[str]:
    """The op (or the family of ops) a friendly name means, or ``ValueError`` listing what exists.

    Tried in order: the exact op name; its alias (``crossentropy``); ``<name>_forward``;
    aliases applied to each ``_``-separated piece (``crossentropy_backward``); then the ops
    starting with the name, or else containing it (``adam`` -> ``adam_update``). A name shared
    by a family of ops (``dense_backward`` -> ``dense_backward_inputs``, ``_weights``,
    ``_biases``) gives them all.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"op name must be a non-empty string, got {name!r}")
    ops = list_ops()
    key = _normalize(name)
    candidates = [key, ALIASES.get(key, key)]
    candidates.append("_".join(ALIASES.get(piece, piece) for piece in key.split("_")))
    for base in list(candidates):
        candidates.append(base + "_forward")
    for candidate in candidates:
        if candidate in ops:
            return [candidate]
    for needle in dict.fromkeys(candidates[:3]):
        starting = [op for op in ops if op.startswith(needle)]
        family = [op for op in starting if op.startswith(needle + "_")]
        containing = [op for op in ops if needle in op]
        if starting and family == starting:
            return family
        for matches in (starting, containing):
            if len(matches) == 1:
                return matches
            if len(matches) > 1:
                raise ValueError(
                    f"op name {name!r} is ambiguous: it matches {', '.join(matches)}"
                )
    raise ValueError(f"unknown op {name!r}; ops are: {', '.join(ops)}")


# --- Building an example input ------------------------------------------------------------------

# Scalars by exact parameter name (optimizer hyper-parameters, dropout rate, ...).
SCALARS = {
    "learning_rate": 0.01, "current_learning_rate": 0.01, "lr": 0.01,
    "decay": 1e-3, "momentum": 0.9, "rho": 0.9, "epsilon": 1e-7, "eps": 1e-7,
    "beta_1": 0.9, "beta_2": 0.999, "beta1": 0.9, "beta2": 0.999,
    "rate": 0.1, "dropout_rate": 0.1, "keep_rate": 0.9,
    "l1": 0.01, "l2": 0.01, "weight_regularizer_l1": 0.01, "weight_regularizer_l2": 0.01,
    "bias_regularizer_l1": 0.01, "bias_regularizer_l2": 0.01, "regularizer": 0.01,
    "clip": 1e-7, "precision": 0.5, "value": 0.5,
    # Adam's bias corrections 1 - beta ** (iterations + 1) after one step
    "correction_1": 1 - 0.9 ** 2, "correction_2": 1 - 0.999 ** 2,
}
INT_SCALARS = {"iterations": 1, "iteration": 1, "step": 1, "t": 1, "seed": 0, "n_samples": N_SAMPLES,
               "samples": N_SAMPLES, "n_classes": N_CLASSES, "classes": N_CLASSES}

# Layouts: parameter name -> shape. Tried in order; a layout applies when it knows every array
# parameter (unknown optimizer state such as ``weight_momentums`` takes the shape of the weights
# or biases it belongs to).
S, I, N, C, K = N_SAMPLES, N_INPUTS, N_NEURONS, N_CLASSES, N_ELEMENTS
_PER_SAMPLE = {"class_targets": (S,), "targets": (S,), "labels": (S,), "sample_losses": (S,),
               "correct": (S,), "values": (S,)}
LAYOUTS = {
    # mean, sums: a vector in, one number out
    "reduction": {"values": (K,), "output": (1,)},
    # element-wise activations, their backward passes, binary losses, optimizer updates on a vector
    "elementwise": {name: (K,) for name in (
        "inputs", "output", "dvalues", "dinputs", "y_pred", "y_true", "sample_losses",
        "weights", "biases", "dweights", "dbiases", "params", "grads", "mask", "binary_mask",
        "values", "correct")},
    # softmax, categorical losses and their gradients: rows of class scores
    "classes": {"inputs": (S, C), "output": (S, C), "dvalues": (S, C), "dinputs": (S, C),
                "y_pred": (S, C), "y_true": (S, C), "softmax_output": (S, C),
                "softmax_outputs": (S, C),
                "mask": (S, C), "binary_mask": (S, C), **_PER_SAMPLE},
    # dense layers and whatever works on their parameters
    "dense": {"inputs": (S, I), "weights": (I, N), "biases": (N,), "output": (S, N),
              "dvalues": (S, N), "dinputs": (S, I), "dweights": (I, N), "dbiases": (N,),
              **_PER_SAMPLE},
    # regression outputs: one column per output
    "regression": {"y_pred": (S, 1), "y_true": (S, 1), "dvalues": (S, 1), "dinputs": (S, 1),
                   "sample_losses": (S,), "output": (S, 1), "inputs": (S, 1)},
}
_STATE_WORDS = ("momentum", "cache", "moment", "velocity", "param", "grad", "update")


def _shape_for(name: str, layout: dict) -> tuple | None:
    if name in layout:
        return layout[name]
    if any(word in name for word in _STATE_WORDS):
        owner = "biases" if "bias" in name else "weights"
        return layout.get(owner, layout.get("params"))
    return None


def _array_for(name: str, shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """A plausible value for an array parameter, by its name."""
    if name in ("class_targets", "targets", "labels"):
        n_classes = N_CLASSES if shape == (S,) else 2
        return rng.integers(0, n_classes, size=shape).astype(np.intp)
    if name in ("y_pred", "softmax_output", "softmax_outputs"):
        if len(shape) == 2 and shape[1] > 1:
            scores = rng.random(shape) + 0.1
            return (scores / scores.sum(axis=1, keepdims=True)).astype(dtype)
        return rng.uniform(0.05, 0.95, size=shape).astype(dtype)     # sigmoid outputs
    if name == "y_true":
        if len(shape) == 2 and shape[1] > 1:
            return np.eye(shape[1], dtype=dtype)[rng.integers(0, shape[1], size=shape[0])]
        return rng.integers(0, 2, size=shape).astype(dtype)
    if "mask" in name:
        return (rng.random(shape) > 0.1).astype(dtype) / dtype(0.9)
    if "cache" in name:                                  # running sums of squares: not negative
        return rng.random(shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _scalar_for(name: str, dtype):
    if name in INT_SCALARS:
        return INT_SCALARS[name]
    if name in SCALARS:
        return dtype(SCALARS[name])
    return None


def _candidate_args(forms: dict, dtype, seed: int):
    """Yield ``(layout_name, args)`` tuples to try, best guess first."""
    if "example" in forms:
        yield "example", tuple(forms["example"](np.random.default_rng(seed), dtype))
        return
    function = forms.get("loops") or forms["numpy"]
    params = list(inspect.signature(function).parameters.values())
    for layout_name, layout in LAYOUTS.items():
        rng = np.random.default_rng(seed)
        args = []
        for param in params:
            scalar = _scalar_for(param.name, dtype)
            if scalar is not None:
                args.append(scalar)
                continue
            shape = _shape_for(param.name, layout)
            if shape is None:
                if param.default is not inspect.Parameter.empty:
                    break               # stop at the first optional parameter we cannot fill
                args = None
                break
            args.append(_array_for(param.name, shape, rng, dtype))
        if args is not None:
            yield layout_name, tuple(args)


def _copy(args):
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


def _run(function, args):
    out = _copy(args)
    with np.errstate(all="ignore"):
        function(*out)
    return out


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|, counting NaN == NaN and equal infinities as no difference."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if same.all():
        return 0.0
    return float(np.max(np.where(same, 0.0, np.abs(a - b))))


# --- The report ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Explanation:
    """What ``explain`` found: the sources, the run, and the largest difference."""

    op: str
    module: str
    loops_source: str | None
    numpy_source: str | None
    notes_source: str | None = None
    cuda_source: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    shapes: dict = dataclasses.field(default_factory=dict)
    differences: dict = dataclasses.field(default_factory=dict)
    notes_difference: float | None = None
    max_difference: float | None = None
    message: str = ""

    def __repr__(self) -> str:
        return f"Explanation(op={self.op!r}, max_difference={self.max_difference!r})"


def _compare(op: str, forms: dict, device: str, dtype, seed: int) -> Explanation:
    module = forms["module"]
    source = {k: inspect.getsource(forms[k]) if k in forms else None
              for k in ("loops", "numpy", "notes", "kernel")}
    result = Explanation(op=op, module=module.__name__, loops_source=source["loops"],
                         numpy_source=source["numpy"], notes_source=source["notes"],
                         cuda_source=source["kernel"], device=device,
                         dtype=np.dtype(dtype).name)
    if "loops" not in forms or "numpy" not in forms:
        missing = "numpy twin" if "numpy" not in forms else "loop form"
        result.message = f"{op} has no {missing}: nothing to compare."
        return result
    loops, twin = forms["loops"], forms["numpy"]
    errors = []
    for layout_name, args in _candidate_args(forms, dtype, seed):
        # Probe with the uncompiled loops first: numpy checks every index there.
        try:
            _run(loops, args)
            twin_out = _run(twin, args)
        except Exception as err:  # a wrong guess of shapes: try the next layout
            errors.append(f"{layout_name}: {type(err).__name__}: {err}")
            continue
        if device == "cpu":
            from loopnet.backends import cpu

            loops_out = _run(getattr(cpu, op), args)
        else:
            loops_out = _run(loops, args)
        names = list(inspect.signature(loops).parameters)
        for k, (before, a, b) in enumerate(zip(args, loops_out, twin_out)):
            if not isinstance(before, np.ndarray):
                continue
            name = names[k] if k < len(names) else f"arg{k}"
            result.shapes[name] = before.shape
            changed = _max_abs_difference(before, a) > 0 or _max_abs_difference(before, b) > 0
            if changed:
                result.differences[name] = _max_abs_difference(a, b)
        if not result.differences:
            result.message = "neither form changed any array: nothing to compare."
            return result
        result.max_difference = max(result.differences.values())
        if "notes" in forms:
            notes_out = _run(forms["notes"], args)
            result.notes_difference = max(
                _max_abs_difference(n, a) for n, a in zip(notes_out, loops_out)
                if isinstance(n, np.ndarray))
        return result
    detail = "; ".join(errors) if errors else "its parameter names are not ones explain knows"
    result.message = (f"cannot build an example input for {op} ({detail}). Define "
                      f"{op}_example(rng, dtype) in {module.__name__} to give one.")
    return result


def _wrap(source: str, width: int) -> list[str]:
    """Source lines wrapped to ``width``, continuation lines indented under their line."""
    lines = []
    for line in source.expandtabs(4).rstrip("\n").split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        lines.extend(textwrap.wrap(line, width, subsequent_indent=indent, drop_whitespace=False,
                                   replace_whitespace=False) or [""])
    return lines


def _side_by_side(left_title, left, right_title, right, left_width: int, width: int) -> str:
    """Two columns: the left one as wide as its longest line, the right one wrapped to the rest."""
    right_width = width - left_width - 3
    left_lines = [left_title, "-" * len(left_title)] + _wrap(left, left_width)
    right_lines = [right_title, "-" * len(right_title)] + _wrap(right, right_width)
    rows = max(len(left_lines), len(right_lines))
    left_lines += [""] * (rows - len(left_lines))
    right_lines += [""] * (rows - len(right_lines))
    return "\n".join(f"{a:<{left_width}} | {b}".rstrip() for a, b in zip(left_lines, right_lines))


def format_explanation(result: Explanation, width: int | None = None) -> str:
    """The text ``explain`` prints: sources side by side (stacked when narrow), then the run."""
    if width is None:
        width = shutil.get_terminal_size((160, 40)).columns
    loops_title = f"loops: {result.op}_loops  (cpu compiles it, python runs it)"
    numpy_title = f"numpy twin: {result.op}_numpy  (the numpy device)"
    loops = result.loops_source or "(no loop form)\n"
    twin = result.numpy_source or "(no numpy twin)\n"
    parts = [f"{result.op}  ({result.module})", ""]
    left_width = max(len(line) for line in (loops_title + "\n" + loops).expandtabs(4).split("\n"))
    # Side by side only when the loops fit unwrapped and the twin keeps 40 columns; else stacked.
    if left_width + 3 + 40 <= width:
        parts.append(_side_by_side(loops_title, loops, numpy_title, twin, left_width, width))
    else:
        parts += [loops_title, "-" * len(loops_title), loops.rstrip(), "",
                  numpy_title, "-" * len(numpy_title), twin.rstrip()]
    if result.notes_source:
        title = f"the notes' literal form: {result.op}_notes"
        parts += ["", title, "-" * len(title), result.notes_source.rstrip()]
    if result.cuda_source:
        title = f"the CUDA kernel: {result.op}_kernel  (the cuda device; not run here)"
        parts += ["", title, "-" * len(title), result.cuda_source.rstrip()]
    parts.append("")
    if result.max_difference is None:
        parts.append(result.message)
    else:
        shapes = ", ".join(f"{name} {tuple(shape)}" for name, shape in result.shapes.items())
        parts.append(f"ran both on a random {result.dtype} input: {shapes}")
        runner = "compiled by numba (cpu)" if result.device == "cpu" else "uncompiled (python)"
        parts.append(f"loops {runner} vs numpy twin, largest difference per output: "
                     + ", ".join(f"{name} {diff:.3g}" for name, diff in result.differences.items()))
        if result.notes_difference is not None:
            parts.append(f"the notes' form vs the loops: largest difference "
                         f"{result.notes_difference:.3g}")
        parts.append(f"largest difference: {result.max_difference:.3g}")
    return "\n".join(parts) + "\n"


def explain(op: str, *, device: str = "cpu", dtype=np.float32, seed: int = 0, file=None,
            width: int | None = None, quiet: bool = False) -> Explanation:
    """Print an op's loops beside its numpy twin, run both, print the largest difference.

    ``op``      an op name or a friendly one (``"dense"``, ``"crossentropy"``, ``"relu_backward"``)
    ``device``  ``"cpu"`` runs the loops compiled by numba, ``"python"`` runs them as plain Python
    ``dtype``   float32 (the library's default; expect differences around 1e-7 from the different
                summation order of ``np.dot``) or float64
    ``width``   the line width (default: the terminal's, else 160); the sources stand side by side
                when the loops fit in it unwrapped with 40 columns to spare, else one above the other

    Returns an ``Explanation`` holding the sources and the differences (``max_difference`` is
    ``None`` when no example input could be built); a list of them when the name stands for a
    family of ops (``"dense_backward"`` is three kernels, one per gradient).
    """
    if device not in ("cpu", "python"):
        raise ValueError(f"explain runs the loops on 'cpu' (compiled) or 'python', got {device!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    forms = _forms()
    results = []
    for name in resolve(op):
        result = _compare(name, forms[name], device, dtype.type, seed)
        if not quiet:
            if results:
                print("", file=file or sys.stdout)
            print(format_explanation(result, width), end="", file=file or sys.stdout)
        results.append(result)
    return results[0] if len(results) == 1 else results


class _CallableModule(types.ModuleType):
    """``loopnet.explain`` is both this module and the function: importing the submodule sets the
    package attribute ``loopnet.explain`` to the module, so the module itself must be callable."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
