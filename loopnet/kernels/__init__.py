"""The teaching core: one file per op family, each op's loop form beside its numpy twin.

Naming (so you always know which form you are reading):

- the *body* of an op, marked ``@body``, owns one output element or row and is written once:
  ``relu_element``, ``softmax_rows``, ``crossentropy_sample``, ``adam_param``, ``dinputs_row``
  ... (its name says what it computes); every device and the training step run it. A body
  of rows (``softmax_rows``) takes a range ``s0 .. s1 - 1``: the ``cpu`` device hands it
  ROW_BLOCK rows per call, a CUDA thread one
- ``<op>_loops``   the ``prange`` over the body: the ``cpu`` device compiles it with numba, the
                   ``python`` device runs it as it is
- ``<op>_kernel``  the CUDA launcher: the grid index, then the body (the ``cuda`` device)
- ``<op>_numpy``   the vectorized numpy twin, what the ``numpy`` device runs
- ``<op>_notes``   the most literal form of the notes (the zip-loop neuron, the book's Jacobian)

The op families are the ``MODULES``; beside them ``dense_fast.py`` holds the ``cpu`` device's fast
forms of the dense products, ``step.py`` the compiled training step, ``scalars.py`` the
``exp``/``log``/``sqrt`` the bodies call, and ``examples.py`` example arguments for any kernel.

Every kernel writes into output arrays it is given and returns nothing (CUDA kernels cannot
return arrays, and it lets the training loop reuse buffers). Shapes and labels are checked in
``loopnet.ops`` before a kernel runs: numba does not bounds-check.

``prange`` is numba's parallel range; run as plain Python it is an ordinary ``range``.
"""

MODULES = ("dense", "activations", "losses", "regularization", "optimizers")

# Rows per call of a row-range body in the ``cpu`` loops (and ``dense_fast``'s row kernels):
# when the bodies were functions the kernels called, LLVM did not inline one with several
# loops, and a call per row (~10 ns: an array is passed as seven values) cost as much as a
# row's work at a few classes (2700x3 softmax: 75 -> 55 us). The blocks stay: they are the
# parallel builds' unit of work, and the CUDA kernels hand a thread one row.
ROW_BLOCK = 16

# How the ``cpu`` device compiles a kernel (``loopnet.backends.cpu`` says why): cached, with
# numpy's error model, and without numba's reference counting, since a kernel never allocates.
# Here, not there, because ``dense_fast`` compiles one helper itself (``pack_panel``).
OPTIONS = {"cache": True, "error_model": "numpy"}
KERNEL_OPTIONS = {**OPTIONS, "_nrt": False}


def renamed(function, suffix: str, namespace: dict | None = None):
    """The same Python function under another name (``function.__name__ + suffix``), reading
    its globals from ``namespace`` (default: its own module's). numba names a cache file after
    the function, so two builds of one function compiled with ``cache=True`` (serial and
    parallel, or the training step for two models) need two names; and numba freezes globals
    at compile time, so a namespace of other values gives a build of other constants."""
    import types

    copy = types.FunctionType(function.__code__,
                              function.__globals__ if namespace is None else namespace,
                              function.__name__ + suffix, function.__defaults__,
                              function.__closure__)
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    return copy


def body(function=None, *, inline=True):
    """Mark ``function`` as a loop body: a plain Python function (the ``python`` device and
    numba's CUDA simulator run it as it is) that numba compiles into whichever compiled kernel
    calls it, for the CPU or the GPU (``numba.extending.register_jitable``).

    Bodies own one output element or row and never allocate, so they are compiled without
    numba's reference counting (``_nrt=False``): a kernel calls a body once per element or row,
    and counting the references of its array arguments on each call cost more than the body
    itself (300 samples' accuracy: 15 us with the counting, 1 us without).

    The ``cpu`` device inlines a body into its kernels before numba types them
    (``with_bodies_inlined``), unless ``@body(inline=False)``: compiled as a function of its
    own, each body cost ~50-70 ms of a cold compile beside its kernel's, and was then linked
    into every kernel calling it (a first ``loopnet train`` compiled 9.5-10.2 s before,
    9.1-9.3 s after, alternating runs). Inlined, every kernel measured ran as fast or faster
    (a dropout mask twice as fast), but for the few marked ``inline=False``, which ran slower
    (their comments say how much)."""
    if function is None:
        return lambda function: body(function, inline=inline)
    from numba.extending import register_jitable

    function.inline_on_cpu = inline
    return register_jitable(_nrt=False)(function)


# id(globals) -> (globals, the copy with the bodies inlined, or None when it has no body)
_inlined_namespaces: dict = {}


def with_bodies_inlined(function):
    """``function`` (a kernel) reading its globals from a copy in which each body marked for
    inlining is an ``njit(inline="always")`` function: numba then types that body's code inside
    the kernel (one level: a body's own calls of other bodies stay calls) instead of compiling
    it as a function of its own. The same code, in the same order: the same results.
    ``function`` itself when its globals hold no such body. The copy is taken once, when the
    first kernel of those globals is built (for the cpu device: when its backend loads), so a
    kernel module's constant changed later no longer reaches the kernels' builds."""
    namespace = function.__globals__
    entry = _inlined_namespaces.get(id(namespace))
    if entry is None or entry[0] is not namespace:
        from numba import njit

        bodies = {name: njit(inline="always")(value) for name, value in namespace.items()
                  if getattr(value, "inline_on_cpu", False)}
        entry = _inlined_namespaces[id(namespace)] = (
            namespace, {**namespace, **bodies} if bodies else None)
    return function if entry[1] is None else renamed(function, "", entry[1])
