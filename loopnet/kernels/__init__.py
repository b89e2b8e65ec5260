"""The teaching core: one file per op family, each op's loop form beside its numpy twin.

Naming (so you always know which twin you are reading):

- ``<op>_loops``  the loops the ``cpu`` device compiles with numba and the ``python`` device runs as-is
- ``<op>_notes``  the most literal form of the notes (zip-loop neuron), kept as the readable reference
- ``<op>_numpy``  the vectorized numpy twin, what the ``numpy`` device runs

Every kernel writes into output arrays it is given and returns nothing (CUDA kernels cannot
return arrays, and it lets the training loop reuse buffers). Shapes and labels are checked in
``loopnet.ops`` before a kernel runs: numba does not bounds-check.

``prange`` is numba's parallel range; run as plain Python it is an ordinary ``range``.
"""

MODULES = ("dense", "activations", "losses", "regularization", "optimizers")
