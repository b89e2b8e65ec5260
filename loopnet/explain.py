"""``loopnet.explain("dense")``: one op's loops beside its numpy twin, run on the same input.

For an op this prints the body every device runs (``relu_element``, ``softmax_rows`` ...: the
loop body written once), then the source of ``<op>_loops`` (the ``prange`` over it that the
``cpu`` device compiles and the ``python`` device runs) beside ``<op>_numpy`` (the vectorized
twin), and the CUDA launcher; then it runs loops and twin on the same small random input and
prints the largest difference between their outputs::

    >>> import loopnet
    >>> loopnet.explain("dense")                 # doctest: +SKIP
    >>> loopnet.explain.list_ops()               # every op, found in the kernel files

Ops are found by the kernel files' naming convention across ``loopnet.kernels.MODULES``, so an op
added there later shows up here with no change to this file. Friendly names are accepted:
``dense`` -> ``dense_forward``, ``crossentropy`` -> ``categorical_crossentropy``, ``adam`` ->
whichever op has ``adam`` in its name.

The example input comes from ``loopnet.kernels.examples.kernel_arguments``, which builds every
kernel's arguments from their names (as the CUDA tests and ``scripts/gpu_check.py`` do). It is
first tried on the uncompiled loops, where numpy checks every index, and only then compiled:
numba does not bounds-check. When no input can be built, ``explain`` says so and still prints
the sources.

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

from loopnet.validate import generator

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
    """``{op: {"loops": f, "numpy": f, "notes": f, "kernel": f, "bodies": [f, ...],
    "module": m}}`` from the kernel files (``kernel`` is the CUDA form, shown but not run here;
    ``bodies`` the loop bodies ``loops`` calls)."""
    found: dict[str, dict[str, object]] = {}
    for module in _kernel_modules():
        for name, obj in vars(module).items():
            if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
                continue
            for suffix in ("loops", "numpy", "notes", "kernel"):
                if name.endswith("_" + suffix):
                    op = name[: -len(suffix) - 1]
                    found.setdefault(op, {"module": module})[suffix] = obj
    # An op is something with a loop form or a twin; `_notes` alone is not.
    forms = {op: f for op, f in found.items() if "loops" in f or "numpy" in f}
    for f in forms.values():
        f["bodies"] = _bodies(f["loops"]) if "loops" in f else []
    return forms


def _bodies(function) -> list:
    """The loop bodies ``function`` calls (functions of kernel files it names), in order."""
    import ast

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    bodies = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            body = function.__globals__.get(node.func.id)
            if (isinstance(body, types.FunctionType) and body not in bodies
                    and body.__module__.startswith("loopnet.kernels")):
                bodies.append(body)
    return bodies


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


# --- Building an example input ------------------------------------------------------------

# The example sizes: small enough for the python device, different from each other so that a
# transposed index would show up as a shape error rather than pass silently.
N_SAMPLES, N_INPUTS, N_NEURONS, N_CLASSES, N_ELEMENTS = 4, 3, 5, 3, 12


def _candidate_args(op, forms: dict, dtype, seed: int):
    """``(layout, args)`` for the op's loops (at most one: the shared example builder)."""
    from loopnet.kernels.examples import kernel_arguments

    function = forms.get("loops") or forms["numpy"]
    try:
        args = kernel_arguments(op, function, dtype, np.random.default_rng(seed),
                                n_samples=N_SAMPLES, n_inputs=N_INPUTS, n_neurons=N_NEURONS,
                                n_classes=N_CLASSES, n_elements=N_ELEMENTS)
    except KeyError as err:      # a parameter name the builder does not know
        raise _NoExample(f"no example for parameter {err}") from None
    yield "example", tuple(args)


class _NoExample(Exception):
    pass


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
    body_sources: list = dataclasses.field(default_factory=list)
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
                         dtype=np.dtype(dtype).name,
                         body_sources=[inspect.getsource(body)
                                       for body in forms.get("bodies", [])])
    if "loops" not in forms or "numpy" not in forms:
        missing = "numpy twin" if "numpy" not in forms else "loop form"
        result.message = f"{op} has no {missing}: nothing to compare."
        return result
    loops, twin = forms["loops"], forms["numpy"]
    errors = []
    try:
        candidates = list(_candidate_args(op, forms, dtype, seed))
    except _NoExample as err:
        candidates = []
        errors.append(str(err))
    for layout_name, args in candidates:
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
    result.message = (f"cannot build an example input for {op} ({detail}); teach "
                      "loopnet.kernels.examples.kernel_arguments its parameters.")
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
    for body in result.body_sources:
        name = body.split("def ", 1)[1].split("(", 1)[0]
        title = f"body: {name}  (run by every device: python, cpu, cuda, the training step)"
        parts += [title, "-" * len(title), body.rstrip(), ""]
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
        title = f"the CUDA launcher: {result.op}_kernel  (the cuda device; not run here)"
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
    generator(seed, "seed")         # (checked here: numpy's message would not name it)
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
