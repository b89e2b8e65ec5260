"""The ``cuda`` device (numba-cuda). Not built yet: see the CUDA issue."""

raise RuntimeError(
    "the 'cuda' device is not available in this version of loopnet yet; "
    "use device 'cpu', 'numpy' or 'python'"
)
