"""The fast forms of the dense products (``loopnet/kernels/dense_fast.py``) give the numpy twins'
results, and the loops' very bits where they say so; ``dense_plan`` picks them; Adam flushes
tiny moments.

No timings here (see benchmarks/bench.py): only values, NaN/inf propagation and determinism
across thread counts, builds and runs.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import arrays, assert_within, bits, float_dtypes, sum_tolerance
import loopnet
from loopnet.backends import cpu
from loopnet.kernels import dense as notes_form
from loopnet.kernels import dense_fast as dense
from loopnet.kernels import optimizers

# Sides that cross the 6 x 4 tiles of dense_nt_tiled (1 included).
tile_sides = st.integers(1, 70)
THREAD_COUNTS = sorted({1, numba.config.NUMBA_NUM_THREADS})


def nt_tolerance(rows, columns_t, biases):
    """Each output is a sum of n_k products (+ the bias) in some order: ``sum_tolerance`` with
    the magnitude ``|rows| @ |columns_t|.T + |biases|`` (float64)."""
    magnitude = np.abs(rows.astype(np.float64)) @ np.abs(columns_t.astype(np.float64)).T
    magnitude += np.abs(biases.astype(np.float64))
    return sum_tolerance(rows.shape[1] + 1, magnitude, rows.dtype)


@settings(max_examples=60)
@given(data=st.data())
def test_tiled_kernel_matches_the_twin(data):
    dtype = data.draw(float_dtypes)
    n_rows, n_k, n_columns = data.draw(tile_sides), data.draw(tile_sides), data.draw(tile_sides)
    rows = data.draw(arrays(dtype, (n_rows, n_k), bound=10.0))
    columns_t = data.draw(arrays(dtype, (n_columns, n_k), bound=10.0))
    biases = data.draw(arrays(dtype, (n_columns,), bound=10.0))
    add = data.draw(st.booleans())
    expected = np.dot(rows, columns_t.T) + (biases if add else 0)
    for kernel in (cpu.dense_nt_tiled_serial, cpu.dense_nt_tiled_parallel):
        output = np.full((n_rows, n_columns), np.nan, dtype)
        kernel(rows, columns_t, biases, add, output)
        assert_within(output, expected, nt_tolerance(rows, columns_t, biases * add), "tiled")


def test_no_plan_runs_a_dot_product_form_with_biases_over_one_input():
    """The dot-product forms (DOT_TILES, DOT_PLAIN) add biases only in a forward pass, which
    takes them from 32 inputs on; with fewer the forward is BLOCKED or FEW_INPUTS (the case
    the ragged-edge test below leaves out: one input with biases)."""
    dot_forms = (dense.DOT_TILES, dense.DOT_PLAIN)
    for n_samples in (1, 4, 300, 5000, 100_000):
        for n_inputs in range(1, 32):
            for n_neurons in (1, 2, 3, 4, 15, 16, 64, 128, 1024):
                plan = cpu.dense_plan(n_samples, n_inputs, n_neurons)
                assert plan.forward.form not in dot_forms, (n_samples, n_inputs, n_neurons)


@settings(max_examples=30)
@given(data=st.data())
def test_narrow_products_give_the_bits_of_the_tiles_ragged_edge(data):
    # A product of 1-3 output columns runs plain dot products over bands of rows, not tiles,
    # in dense_nt_tiled and in dense_nt_plain (the DOT_PLAIN form, which the plan picks for
    # such products); they are the very outputs the ragged edge of a wider product computes
    # (its last columns), so a layer's narrow forward has the bits it had inside a wider one,
    # on either build of either kernel.
    # Zeros are compared by value: FASTMATH's ``nsz`` (no signed zeros) lets LLVM drop the
    # ``0 +`` that starts a sum, so a sum of -0 products may be -0 in one compiled context and
    # +0 in another; every other value keeps its bits.
    # A sum of one product (one input) with biases is left out: with the ``0 +`` dropped, the
    # product meets the bias add directly, and ``contract`` fuses the two into one FMA in some
    # builds and not in others (float64: dense_nt_plain's serial build rounds the product
    # first; 1 ulp apart in most calls on random inputs). No plan runs these kernels so: the
    # forward takes a dot-product form from 32 inputs on, and dinputs adds no biases
    # (``test_no_plan_runs_a_dot_product_form_with_biases_over_one_input``).
    dtype = data.draw(float_dtypes)
    n_rows, n_k = data.draw(st.integers(1, 300)), data.draw(tile_sides)
    n_ragged = data.draw(st.integers(1, 3))
    rows = data.draw(arrays(dtype, (n_rows, n_k), bound=10.0))
    columns_t = data.draw(arrays(dtype, (4 + n_ragged, n_k), bound=10.0))
    biases = data.draw(arrays(dtype, (4 + n_ragged,), bound=10.0))
    add = data.draw(st.booleans()) and n_k > 1
    wide = np.full((n_rows, 4 + n_ragged), np.nan, dtype)
    cpu.dense_nt_tiled_serial(rows, columns_t, biases, add, wide)
    for kernel in (cpu.dense_nt_tiled_serial, cpu.dense_nt_tiled_parallel,
                   cpu.dense_nt_plain_serial, cpu.dense_nt_plain_parallel):
        narrow = np.full((n_rows, n_ragged), np.nan, dtype)
        kernel(rows, np.ascontiguousarray(columns_t[4:]), biases[4:].copy(), add, narrow)
        assert bits(narrow + 0) == bits(wide[:, 4:] + 0)     # (x + 0: -0 -> +0, else x)


@given(data=st.data())
def test_transpose_tiled(data):
    dtype = data.draw(float_dtypes)
    source = data.draw(arrays(dtype, (data.draw(tile_sides), data.draw(tile_sides))))
    for kernel in (cpu.transpose_serial, cpu.transpose_parallel):
        target = np.empty(source.shape[::-1], dtype)
        kernel(source, target)
        assert np.array_equal(target, source.T)


@contextlib.contextmanager
def tiled_path():
    """Route every dense op of the cpu backend through the register-tiled kernels (the
    broadcast form from 16 neurons, the dot-product form below), in parallel."""
    names = ("BROADCAST_MIN", "LARGE_MIN", "LARGE_INPUTS", "HUGE_MIN", "PARALLEL_MIN",
             "PARALLEL_MIN_ROWS")
    saved = [getattr(cpu, name) for name in names]
    for name in names:
        setattr(cpu, name, 0)
    cpu.dense_plan.cache_clear()
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(cpu, name, value)
        cpu.dense_plan.cache_clear()


@pytest.fixture
def tiled_always():
    with tiled_path():
        yield


def draw_dense_case(data):
    """dtype, inputs, weights, biases and dvalues of one dense layer with sides crossing the
    tile edges (``tile_sides``), values in [-10, 10]."""
    dtype = data.draw(float_dtypes)
    n_samples, n_inputs, n_neurons = (data.draw(tile_sides) for _ in range(3))
    inputs = data.draw(arrays(dtype, (n_samples, n_inputs), bound=10.0))
    weights = data.draw(arrays(dtype, (n_inputs, n_neurons), bound=10.0))
    biases = data.draw(arrays(dtype, (n_neurons,), bound=10.0))
    dvalues = data.draw(arrays(dtype, (n_samples, n_neurons), bound=10.0))
    return dtype, inputs, weights, biases, dvalues


@settings(max_examples=30)
@given(data=st.data())
def test_cpu_dense_ops_on_the_tiled_path_match_the_twins(data):
    dtype, inputs, weights, biases, dvalues = draw_dense_case(data)
    (n_samples, n_inputs), n_neurons = inputs.shape, weights.shape[1]

    output = np.empty((n_samples, n_neurons), dtype)
    dweights = np.empty_like(weights)
    dinputs = np.empty_like(inputs)
    with tiled_path():
        cpu.dense_forward(inputs, weights, biases, output)
        cpu.dense_backward_weights(inputs, dvalues, dweights)
        cpu.dense_backward_inputs(dvalues, weights, dinputs)
    assert_within(output, inputs @ weights + biases, nt_tolerance(inputs, weights.T, biases),
                  "forward")
    assert_within(dweights, inputs.T @ dvalues,
                  nt_tolerance(inputs.T, dvalues.T, np.zeros(n_neurons, dtype)), "dweights")
    assert_within(dinputs, dvalues @ weights.T,
                  nt_tolerance(dvalues, weights, np.zeros(n_inputs, dtype)), "dinputs")


@settings(max_examples=60)
@given(data=st.data())
def test_blocked_forward_gives_the_loops_bits(data):
    """``dense_forward_blocked`` adds the same products in the same order as
    ``dense_forward_loops``: the very same bits, serial or parallel, NaN/inf included."""
    assert_forward_bits(data, st.integers(1, 70), (cpu.dense_forward_blocked_serial,
                                                   cpu.dense_forward_blocked_parallel))


def assert_forward_bits(data, input_counts, kernels):
    """``kernels`` give ``dense_forward_loops``' bits on a drawn layer (``input_counts``: the
    strategy of its number of inputs), with a NaN or an infinity among the inputs at times."""
    dtype = data.draw(float_dtypes)
    n_samples, n_inputs = data.draw(st.integers(1, 70)), data.draw(input_counts)
    n_neurons = data.draw(st.integers(1, 300))
    inputs = data.draw(arrays(dtype, (n_samples, n_inputs)))
    weights = data.draw(arrays(dtype, (n_inputs, n_neurons)))
    biases = data.draw(arrays(dtype, (n_neurons,)))
    if data.draw(st.booleans()):
        inputs[data.draw(st.integers(0, n_samples - 1)), 0] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
    results = set()
    for kernel in (cpu.LOOPS["dense_forward"], *kernels):
        output = np.empty((n_samples, n_neurons), dtype)
        with np.errstate(all="ignore"):
            kernel(inputs, weights, biases, output)
        results.add(bits(output))
    assert len(results) == 1


@settings(max_examples=30)
@given(data=st.data())
def test_a_forward_of_one_or_two_inputs_gives_the_loops_bits(data):
    """``dense_forward_few_inputs`` (the FEW_INPUTS form, the book's first layers) runs the
    rows ``dense_forward_blocked`` runs for 1 or 2 inputs: the loops' very bits, on either
    build, NaN/inf included."""
    assert_forward_bits(data, st.integers(1, 2), (cpu.dense_forward_blocked_serial,
                                                  cpu.dense_forward_few_inputs_serial,
                                                  cpu.dense_forward_few_inputs_parallel))


@settings(max_examples=40)
@given(data=st.data())
def test_blocked_dweights_give_the_loops_bits(data):
    dtype = data.draw(float_dtypes)
    n_samples, n_neurons = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 300))
    # (a layer of 1 or 2 inputs half the time: the FEW_INPUTS form's)
    n_inputs = data.draw(st.one_of(st.integers(1, 2), st.integers(1, 70)))
    inputs = data.draw(arrays(dtype, (n_samples, n_inputs)))
    dvalues = data.draw(arrays(dtype, (n_samples, n_neurons)))
    results = set()
    kernels = [cpu.LOOPS["dense_backward_weights"], cpu.dense_backward_weights_blocked_serial,
               cpu.dense_backward_weights_blocked_parallel]
    if n_inputs <= 2:   # the FEW_INPUTS form: the same rows one by one
        kernels += [cpu.dense_backward_weights_few_inputs_serial,
                    cpu.dense_backward_weights_few_inputs_parallel]
    if n_samples * n_inputs * n_neurons < 5000:  # uncompiled too (the python device's view)
        kernels.append(dense.dense_backward_weights_blocked)
    for kernel in kernels:
        dweights = np.empty((n_inputs, n_neurons), dtype)
        kernel(inputs, dvalues, dweights)
        results.add(bits(dweights))
    assert len(results) == 1


@settings(max_examples=40)
@given(data=st.data())
def test_narrow_kernels_give_the_loops_bits(data):
    """The backward kernels for layers of few neurons add the loops' products in the loops'
    order, vectors along the inputs: the very same bits, serial or parallel, NaN/inf
    included (bands of NARROW_BAND inputs and blocks of ROW_BLOCK samples crossed)."""
    dtype = data.draw(float_dtypes)
    n_samples = data.draw(st.integers(1, 4 * dense.ROW_BLOCK + 6))
    n_inputs = data.draw(st.integers(1, 2 * dense.NARROW_BAND + 7))
    n_neurons = data.draw(st.integers(1, 15))
    inputs = data.draw(arrays(dtype, (n_samples, n_inputs)))
    dvalues = data.draw(arrays(dtype, (n_samples, n_neurons)))
    weights = data.draw(arrays(dtype, (n_inputs, n_neurons)))
    if data.draw(st.booleans()):
        inputs[data.draw(st.integers(0, n_samples - 1)), 0] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
    with np.errstate(all="ignore"):
        want = np.empty((n_inputs, n_neurons), dtype)
        cpu.LOOPS["dense_backward_weights"](inputs, dvalues, want)
        for kernel in (cpu.dense_backward_weights_narrow_serial,
                       cpu.dense_backward_weights_narrow_parallel):
            got = np.full((n_inputs, n_neurons), np.nan, dtype)
            kernel(inputs, dvalues, np.empty((n_neurons, n_inputs), dtype), got)
            assert bits(got) == bits(want)
        want = np.empty((n_samples, n_inputs), dtype)
        cpu.LOOPS["dense_backward_inputs"](dvalues, weights, want)
        for kernel in (cpu.dense_backward_inputs_narrow_serial,
                       cpu.dense_backward_inputs_narrow_parallel):
            got = np.full((n_samples, n_inputs), np.nan, dtype)
            kernel(dvalues, np.ascontiguousarray(weights.T), got)
            assert bits(got) == bits(want)


def test_narrow_layers_backward_keeps_the_loops_bits():
    """The spiral model's last layer (300x64x3) takes the narrow kernels: the loops' bits."""
    rng = np.random.default_rng(9)
    inputs = rng.standard_normal((300, 64)).astype(np.float32)
    weights = rng.standard_normal((64, 3)).astype(np.float32)
    dvalues = rng.standard_normal((300, 3)).astype(np.float32)
    got, want = np.empty((64, 3), np.float32), np.empty((64, 3), np.float32)
    cpu.dense_backward_weights(inputs, dvalues, got)
    cpu.LOOPS["dense_backward_weights"](inputs, dvalues, want)
    assert bits(got) == bits(want)
    got, want = np.empty((300, 64), np.float32), np.empty((300, 64), np.float32)
    cpu.dense_backward_inputs(dvalues, weights, got)
    cpu.LOOPS["dense_backward_inputs"](dvalues, weights, want)
    assert bits(got) == bits(want)


def test_small_layers_keep_the_notes_bits():
    """Below the crossover the cpu device runs dense_forward_loops: the notes' exact bits."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((300, 2)).astype(np.float32)
    weights = rng.standard_normal((2, 64)).astype(np.float32)
    biases = rng.standard_normal(64).astype(np.float32)
    fast, notes = np.empty((300, 64), np.float32), np.empty((300, 64), np.float32)
    cpu.dense_forward(inputs, weights, biases, fast)
    notes_form.dense_forward_notes(inputs[:5], weights, biases, notes[:5])
    assert bits(fast[:5]) == bits(notes[:5])


def test_nan_and_inf_propagate_through_the_tiled_kernels(tiled_always):
    """fastmath here leaves out nnan/ninf: a NaN or inf input reaches exactly the outputs whose
    sums it enters, as in numpy."""
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((9, 70)).astype(np.float32)
    weights = rng.standard_normal((70, 67)).astype(np.float32)
    biases = np.zeros(67, np.float32)
    inputs[2, 5] = np.nan
    inputs[7, 69] = np.inf
    weights[3, 66] = -np.inf
    dvalues = rng.standard_normal((9, 67)).astype(np.float32)
    dvalues[4, 0] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        cases = [
            (cpu.dense_forward, (inputs, weights, biases), inputs @ weights + biases),
            (cpu.dense_backward_weights, (inputs, dvalues), inputs.T @ dvalues),
            (cpu.dense_backward_inputs, (dvalues, weights), dvalues @ weights.T),
        ]
        for op, args, expected in cases:
            output = np.empty(expected.shape, np.float32)
            op(*args, output)
            assert np.array_equal(np.isnan(output), np.isnan(expected)), op.__name__
            assert np.array_equal(np.isposinf(output), np.isposinf(expected)), op.__name__
            assert np.array_equal(np.isneginf(output), np.isneginf(expected)), op.__name__


def test_tiled_kernels_do_not_depend_on_the_thread_count(tiled_always):
    rng = np.random.default_rng(2)
    inputs = rng.standard_normal((203, 131)).astype(np.float32)
    weights = rng.standard_normal((131, 77)).astype(np.float32)
    biases = rng.standard_normal(77).astype(np.float32)
    dvalues = rng.standard_normal((203, 77)).astype(np.float32)
    results = set()
    before = numba.get_num_threads()
    try:
        for threads in THREAD_COUNTS * 2:
            numba.set_num_threads(threads)
            out = np.empty((203, 77), np.float32)
            dweights = np.empty((131, 77), np.float32)
            dinputs = np.empty((203, 131), np.float32)
            cpu.dense_forward(inputs, weights, biases, out)
            cpu.dense_backward_weights(inputs, dvalues, dweights)
            cpu.dense_backward_inputs(dvalues, weights, dinputs)
            results.add(bits(out) + bits(dweights) + bits(dinputs))
    finally:
        numba.set_num_threads(before)
    assert len(results) == 1


# --- Adam: tiny moments are flushed to zero, in the loops and the twin alike -------------------------

@pytest.mark.parametrize("kernel", [cpu.adam_update, optimizers.adam_update_loops,
                                    optimizers.adam_update_numpy])
def test_adam_flushes_tiny_moments(kernel):
    dtype = np.float32
    params = np.ones(5, dtype)
    grads = np.array([0, 0, 1e-3, np.nan, 0], dtype)
    momentums = np.array([1e-31, -5e-31, 0.5, 0, 1e-20], dtype)
    cache = np.array([1e-31, 1e-10, 0.5, 0, 2e-31], dtype)
    kernel(params, grads, momentums, cache, 0.01, 1e-7, 0.9, 0.999, 0.1, 0.001)
    assert momentums[0] == 0 and momentums[1] == 0 and cache[0] == 0 and cache[4] == 0
    assert momentums[2] != 0 and cache[1] != 0 and momentums[4] != 0
    assert np.isnan(momentums[3]) and np.isnan(cache[3]) and np.isnan(params[3])  # NaN stays


# --- The 6 x 4 tile's blocks of K_BLOCK, and the fastmath blocked loops (middle-sized layers) ------

def test_tiled_kernel_across_k_blocks():
    """Sums longer than ``dense.K_BLOCK`` go in blocks whose totals are added in order: the
    result matches the twin, a NaN/inf in a later block still reaches its outputs, and the
    bits do not depend on the thread count."""
    rng = np.random.default_rng(3)
    n_k = 2 * dense.K_BLOCK + 37
    rows = rng.standard_normal((13, n_k)).astype(np.float32)
    columns_t = rng.standard_normal((11, n_k)).astype(np.float32)
    biases = rng.standard_normal(11).astype(np.float32)
    rows[2, dense.K_BLOCK + 5] = np.nan
    columns_t[9, 2 * dense.K_BLOCK + 1] = np.inf
    with np.errstate(invalid="ignore"):
        expected = np.dot(rows, columns_t.T) + biases

    def run(kernel):
        output = np.full((13, 11), np.nan, np.float32)
        kernel(rows, columns_t, biases, True, output)
        return output

    output = same_bits_for_every_thread_count(
        run, (cpu.dense_nt_tiled_serial, cpu.dense_nt_tiled_parallel))
    assert_matches_with_nan_and_inf(output, expected, rows, columns_t, biases, "tiled, k blocks")


def same_bits_for_every_thread_count(run, kernels):
    """``run(kernel)`` for each kernel and numba thread count: asserts one bit pattern, returns
    the last output."""
    results = set()
    before = numba.get_num_threads()
    try:
        for threads in THREAD_COUNTS:
            numba.set_num_threads(threads)
            for kernel in kernels:
                output = run(kernel)
                results.add(bits(output))
    finally:
        numba.set_num_threads(before)
    assert len(results) == 1
    return output


def assert_matches_with_nan_and_inf(output, expected, rows, columns_t, biases, what):
    """NaN and +inf where the twin has them, the finite outputs within ``nt_tolerance``."""
    finite = np.isfinite(expected)
    assert np.array_equal(np.isnan(output), np.isnan(expected))
    assert np.array_equal(np.isposinf(output), np.isposinf(expected))
    tolerance = nt_tolerance(np.nan_to_num(rows), np.nan_to_num(columns_t, posinf=0), biases)
    assert_within(output[finite], expected[finite], tolerance[finite], what)


def test_dense_plan_picks_the_forms_of_its_table():
    """The forms of the table at the top of dense_fast.py: the spiral model's layers keep the
    loops' bits (blocked, narrow), the narrow forward runs dot products, middle and large
    layers the broadcast form, small batches serially."""
    B, N, D, T = dense.BLOCKED, dense.NARROW, dense.DOT_TILES, dense.BROADCAST
    P = dense.DOT_PLAIN      # dot products of fewer than 4 output columns: no tile
    F = dense.FEW_INPUTS     # a forward of 1 or 2 inputs: no 4-row body
    plan = cpu.dense_plan(300, 2, 64)
    assert (plan.forward.form, plan.dweights.form, plan.dinputs.form) == (F, F, P)
    assert cpu.dense_plan(1000, 1, 64).forward.form == F
    assert cpu.dense_plan(300, 3, 64).forward.form == B
    assert not (plan.forward.parallel or plan.dweights.parallel or plan.dinputs.parallel)
    plan = cpu.dense_plan(300, 64, 3)
    assert (plan.forward.form, plan.dweights.form, plan.dinputs.form) == (P, N, N)
    # 4-15 neurons: the 6 x 4 tiles for long rows or large products, else plain dot products
    assert cpu.dense_plan(32, 784, 10).forward.form == D
    assert cpu.dense_plan(1000, 128, 10).forward.form == D
    assert cpu.dense_plan(128, 128, 10).forward.form == P
    assert cpu.dense_plan(300, 64, 4).forward.form == P
    assert cpu.dense_plan(300, 4, 64).dinputs.form == D
    # 58k multiply-adds: in parallel from PARALLEL_MIN (scaled for the threading layer)
    assert plan.forward.parallel == (300 * 64 * 3 >= cpu.PARALLEL_MIN)
    for shape in ((32, 784, 128), (128, 784, 128), (4096, 784, 128), (1024, 1024, 1024),
                  (1024, 64, 64)):
        plan = cpu.dense_plan(*shape)
        assert (plan.forward.form, plan.dweights.form, plan.dinputs.form) == (T, T, T), shape
    plan = cpu.dense_plan(4, 784, 512)   # fewer rows than a tile: the loops' bits
    assert plan.forward.form == B
    # dweights of one panel of columns to pack (< 64 neurons) and <= 128 inputs: serial,
    # whatever the work; with exactly 64 (dvalues is its own panel, nothing to pack), two
    # panels, or more inputs, parallel where the work allows
    parallel_allowed = cpu.threads.parallel_allowed()
    assert not cpu.dense_plan(1000, 64, 48).dweights.parallel
    assert not cpu.dense_plan(4096, 128, 32).dweights.parallel
    assert cpu.dense_plan(1000, 64, 64).dweights.parallel == parallel_allowed
    assert cpu.dense_plan(4096, 128, 64).dweights.parallel == parallel_allowed
    assert cpu.dense_plan(1000, 64, 128).dweights.parallel == parallel_allowed
    assert cpu.dense_plan(1000, 256, 64).dweights.parallel == parallel_allowed
    assert cpu.dense_plan(1000, 64, 64).forward.parallel == parallel_allowed


def test_dense_plan_gives_middle_layers_the_broadcast_form():
    """Layers of 8 inputs or more (a hidden layer of 32; one of 64 below BROADCAST_MIN): the
    forward from 32 neurons, dweights with 48-64 neurons and dinputs from 32 inputs with 32-64
    neurons take the broadcast form from MIDDLE_MIN multiply-adds; fewer, or a product that
    would walk the wide ways, keep their forms; in parallel from BROADCAST_MIN (forward) and
    MIDDLE_PARALLEL_MIN (the backward's products)."""
    B, T, D = dense.BLOCKED, dense.BROADCAST, dense.DOT_TILES
    parallel_allowed = cpu.threads.parallel_allowed()
    plan = cpu.dense_plan(3000, 32, 32)
    assert (plan.forward.form, plan.dweights.form, plan.dinputs.form) == (T, B, T)
    assert plan.forward.parallel == plan.dinputs.parallel == parallel_allowed
    assert cpu.dense_plan(300, 32, 32).dinputs == (T, False)   # 307k: serial
    assert cpu.dense_plan(3000, 32, 128).dinputs.form == D     # sums over 128 neurons
    assert cpu.dense_plan(3000, 16, 64).dinputs.form == D      # 16 inputs: a quarter panel
    assert cpu.dense_plan(128, 128, 10).dinputs.form == dense.NARROW   # sums over 10 neurons
    plan = cpu.dense_plan(32, 64, 64)                           # 131k: serial
    assert tuple(plan) == ((T, False), (T, False), (T, False))
    assert tuple(cpu.dense_plan(16, 64, 64)) == ((B, False), (B, False), (D, False))  # 66k
    plan = cpu.dense_plan(1000, 32, 64)
    assert (plan.forward.form, plan.dweights.form) == (T, T)
    assert plan.dweights.parallel == parallel_allowed           # 2.0M multiply-adds
    assert cpu.dense_plan(1000, 16, 64).dweights == (T, False)  # 1.0M: serial
    assert cpu.dense_plan(300, 32, 32).forward == (T, False)    # 307k: serial
    assert cpu.dense_plan(300, 48, 48).dweights.form == T
    assert cpu.dense_plan(300, 32, 128).dweights.form == B      # two panels
    assert cpu.dense_plan(128, 16, 32).forward.form == B        # 66k: below MIDDLE_MIN
    assert cpu.dense_plan(3000, 4, 64).forward.form == B        # 4 inputs
    assert cpu.dense_plan(3000, 32, 24).forward.form == B       # 24 neurons
    assert dense.tn_wide(32, 64, 128)
    assert cpu.dense_plan(64, 32, 128).forward.form == B        # would walk the wide ways
    # the book's layers keep their forms
    assert [p.form for p in cpu.dense_plan(300, 2, 64)] == [dense.FEW_INPUTS] * 2 + [
        dense.DOT_PLAIN]
    assert [p.form for p in cpu.dense_plan(1000, 64, 1)] == [dense.DOT_PLAIN, dense.NARROW,
                                                            dense.NARROW]


def test_float64_products_never_take_the_broadcast_form():
    """In float64 the broadcast tile's sums do not fit in the registers: every product keeps
    the loops' blocks, the narrow loops or the dot-product tiles, whatever its size; the
    float64 forward and dweights of a 64-wide layer then give the loops' very bits."""
    T = dense.BROADCAST
    for shape in ((1000, 32, 32), (32, 64, 64), (1024, 64, 64), (128, 784, 128),
                  (1024, 1024, 1024), (300, 2, 64), (300, 64, 3)):
        assert T not in {product.form for product in cpu.dense_plan(*shape, True)}, shape
    plan = cpu.dense_plan(1024, 64, 64, True)
    assert (plan.forward.form, plan.dweights.form, plan.dinputs.form) == (
        dense.BLOCKED, dense.BLOCKED, dense.DOT_TILES)
    assert T in {product.form for product in cpu.dense_plan(1024, 64, 64)}     # (float32)
    rng = np.random.default_rng(7)
    inputs = rng.standard_normal((1024, 64))
    weights = rng.standard_normal((64, 64))
    biases = rng.standard_normal(64)
    dvalues = rng.standard_normal((1024, 64))
    got = np.empty((1024, 64))
    cpu.dense_forward(inputs, weights, biases, got)
    expected = np.empty((1024, 64))
    cpu.LOOPS["dense_forward"](inputs, weights, biases, expected)
    assert bits(got) == bits(expected)
    got = np.empty((64, 64))
    cpu.dense_backward_weights(inputs, dvalues, got)
    expected = np.empty((64, 64))
    cpu.LOOPS["dense_backward_weights"](inputs, dvalues, expected)
    assert bits(got) == bits(expected)


def test_middle_layers_run_the_broadcast_kernel_within_rounding_of_the_twin():
    """1000x32x64: the three cpu ops give the very bits of the broadcast kernel (its build without
    the wide ways) called directly, within float32 rounding of numpy."""
    rng = np.random.default_rng(6)
    inputs = rng.standard_normal((1000, 32)).astype(np.float32)
    weights = rng.standard_normal((32, 64)).astype(np.float32)
    biases = rng.standard_normal(64).astype(np.float32)
    dvalues = rng.standard_normal((1000, 64)).astype(np.float32)
    kernel = cpu.dense_tn_plain_walk_parallel
    got = np.empty((1000, 64), np.float32)
    cpu.dense_forward(inputs, weights, biases, got)
    assert bits(got) == bits(broadcast(inputs.T, weights, biases, True, kernel))
    assert_within(got, inputs @ weights + biases, nt_tolerance(inputs, weights.T, biases),
                  "forward")
    got = np.empty((32, 64), np.float32)
    cpu.dense_backward_weights(inputs, dvalues, got)
    assert bits(got) == bits(broadcast(inputs, dvalues, biases, False, kernel))
    assert_within(got, inputs.T @ dvalues, nt_tolerance(inputs.T, dvalues.T, biases * 0),
                  "dweights")
    got = np.empty((1000, 32), np.float32)
    cpu.dense_backward_inputs(dvalues, weights, got)
    assert bits(got) == bits(broadcast(dvalues.T, weights.T, biases[:32], False, kernel))
    assert_within(got, dvalues @ weights.T, nt_tolerance(dvalues, weights, biases[:32] * 0),
                  "dinputs")


def test_cpu_dense_ops_run_the_form_the_plan_names():
    """32x784x128 (a minibatch of an MNIST-sized layer): the cpu ops give the very bits of the
    broadcast kernel called directly."""
    rng = np.random.default_rng(5)
    inputs = rng.standard_normal((32, 784)).astype(np.float32)
    weights = rng.standard_normal((784, 128)).astype(np.float32)
    biases = rng.standard_normal(128).astype(np.float32)
    dvalues = rng.standard_normal((32, 128)).astype(np.float32)
    got = np.empty((32, 128), np.float32)
    cpu.dense_forward(inputs, weights, biases, got)
    assert bits(got) == bits(broadcast(inputs.T, weights, biases, True,
                                       cpu.dense_tn_tiled_parallel))
    got = np.empty((784, 128), np.float32)
    cpu.dense_backward_weights(inputs, dvalues, got)
    assert bits(got) == bits(broadcast(inputs, dvalues, biases, False,
                                       cpu.dense_tn_tiled_parallel))


def test_tiled_kernel_does_not_depend_on_the_alignment_of_its_operands():
    """The cpu backend passes operands that are read few times as they are (aligned to 64
    bytes or not, see ``cpu.ALIGN_COPY_MIN_REUSE``): the sums, hence the bits, must not depend
    on where the data starts."""
    rng = np.random.default_rng(6)

    def placed(array, offset):  # a copy starting `offset` elements after a 64-byte boundary
        buffer = cpu.aligned_empty(array.size + 16, array.dtype)
        view = buffer[offset:offset + array.size].reshape(array.shape)
        view[...] = array
        return view

    rows = rng.standard_normal((37, 300)).astype(np.float32)
    columns_t = rng.standard_normal((45, 300)).astype(np.float32)
    biases = rng.standard_normal(45).astype(np.float32)
    results = set()
    for offset in (0, 1, 3, 4, 8):
        output = np.empty((37, 45), np.float32)
        cpu.dense_nt_tiled_parallel(placed(rows, offset), placed(columns_t, (offset * 5) % 16),
                                    biases, True, output)
        results.add(bits(output))
    assert len(results) == 1


# --- The broadcast form (dense_tn_tiled): no transposes -------------------------------------------

# Column counts that cross the 64-wide panels (1 included), row counts that cross the 5-row
# tiles (below one tile too).
panel_sides = st.integers(1, 140)


def packed(b):
    """``b`` cut into zero-padded panels, as ``dense_fast.pack_panel`` does (numpy)."""
    n_k, n_columns = b.shape
    width = dense.PANEL_WIDTH
    panels = np.zeros(((n_columns + width - 1) // width, n_k, width), b.dtype)
    for p in range(panels.shape[0]):
        strip = b[:, p * width:(p + 1) * width]
        panels[p, :, :strip.shape[1]] = strip
    return panels


def broadcast(a, b, biases, add, kernel):
    """``kernel(a, b, panels, ...)``'s output; its panels must be ``packed(b)``."""
    panels = np.full(((b.shape[1] + dense.PANEL_WIDTH - 1) // dense.PANEL_WIDTH, b.shape[0],
                      dense.PANEL_WIDTH), np.nan, b.dtype)
    output = np.full((a.shape[1], b.shape[1]), np.nan, a.dtype)
    kernel(a, b, panels, biases, add, output)
    assert np.array_equal(panels, packed(b))
    return output


@settings(max_examples=60)
@given(data=st.data())
def test_broadcast_kernel_matches_the_twin(data):
    """``output = a.T @ b (+ biases)`` for the operands the layered ops pass: ``a`` C-ordered
    and ``b`` C-ordered (dweights' ``inputs`` and ``dvalues``), ``a`` a transposed view and ``b``
    C-ordered (forward's ``inputs.T`` and ``weights``), both transposed views (dinputs'
    ``dvalues.T`` and ``weights.T``). (The fourth pair, ``a`` C-ordered with ``b`` a view, is
    a build no op compiles: 4 more builds, ~10 s of the suite.) The panels are ``b`` cut up
    (``broadcast`` checks); serial and parallel builds give the same bits."""
    dtype = data.draw(float_dtypes)
    n_k, n_rows, n_columns = data.draw(tile_sides), data.draw(tile_sides), data.draw(panel_sides)
    a_view, b_view = data.draw(st.sampled_from([(False, False), (True, False), (True, True)]))
    a = data.draw(arrays(dtype, (n_k, n_rows), bound=10.0))
    if a_view:
        a = np.ascontiguousarray(a.T).T
    b = data.draw(arrays(dtype, (n_k, n_columns), bound=10.0))
    if b_view:
        b = np.ascontiguousarray(b.T).T
    biases = data.draw(arrays(dtype, (n_columns,), bound=10.0))
    add = data.draw(st.booleans())
    expected = np.dot(a.T, b) + (biases if add else 0)
    results = set()
    for kernel in (cpu.dense_tn_tiled_serial, cpu.dense_tn_tiled_parallel):
        output = broadcast(a, b, biases, add, kernel)
        assert_within(output, expected, nt_tolerance(a.T, b.T, biases * add), "broadcast")
        results.add(bits(output))
    assert len(results) == 1


@pytest.mark.parametrize("a_view", [False, True], ids=["a", "a.T view"])
@pytest.mark.parametrize("n_panels", [2, dense.LOCAL_A_MIN_PANELS])
def test_broadcast_kernel_across_k_blocks(n_panels, a_view):
    """Panels too big for L2 (``dense.PANELS_IN_L2``) are summed in blocks of
    ``K_BLOCK_BROADCAST`` whose totals are added in order (with LOCAL_A_MIN_PANELS panels, from
    a copy of each tile's values of ``a``, packed along the rows of ``a`` or tile by tile):
    the result matches the twin, a NaN/inf in a later block still reaches its outputs, and
    the bits depend neither on the thread count nor on the build (serial, parallel, and the
    builds without the wide ways, which walk the same tiles plainly)."""
    rng = np.random.default_rng(7)
    n_columns = n_panels * dense.PANEL_WIDTH - 5
    n_k = dense.PANELS_IN_L2 // (n_panels * dense.PANEL_WIDTH) + dense.K_BLOCK_BROADCAST + 3
    # 2 panels: fewer rows than columns (tiles go panel by panel); 4: more (the copies of a)
    n_rows = 13 if n_panels == 2 else n_columns + 7
    a = rng.standard_normal((n_k, n_rows)).astype(np.float32)
    if a_view:  # rows not contiguous (the forward's inputs.T): copied tile by tile
        a = np.ascontiguousarray(a.T).T
    b = rng.standard_normal((n_k, n_columns)).astype(np.float32)
    biases = rng.standard_normal(n_columns).astype(np.float32)
    a[dense.K_BLOCK_BROADCAST + 5, 2] = np.nan
    b[n_k - 1, 9] = np.inf
    with np.errstate(invalid="ignore"):
        expected = np.dot(a.T, b) + biases

    def run(kernel):
        with np.errstate(invalid="ignore"):
            return broadcast(a, b, biases, True, kernel)

    assert dense.tn_wide(n_k, n_rows, n_columns) == (n_panels == dense.LOCAL_A_MIN_PANELS)
    output = same_bits_for_every_thread_count(
        run, (cpu.dense_tn_tiled_serial, cpu.dense_tn_tiled_parallel,
              cpu.dense_tn_plain_walk_serial, cpu.dense_tn_plain_walk_parallel))
    assert_matches_with_nan_and_inf(output, expected, a.T, b.T, biases, "broadcast, k blocks")


@pytest.mark.parametrize("a_view", [False, True], ids=["a", "a.T view"])
def test_the_build_without_the_wide_ways_gives_their_bits_and_the_ops_pick_it(a_view):
    """Fewer rows than columns over two panels (the forward of a minibatch of 32 through 128
    neurons): the wide build's threads own whole panels (``tn_paths``' ``by_panels``); the
    build without that way walks the tiles plainly, to the very same bits on every thread
    count. The cpu ops run the wide build only for such products (``tn_wide``), and a
    training step holds it only when its model has one (the WIDE_BROADCAST pseudo-kind)."""
    from loopnet import compiled
    from loopnet.kernels import step

    rng = np.random.default_rng(12)
    n_k, n_rows, n_columns = 200, 32, 2 * dense.PANEL_WIDTH - 3
    _, _, by_panels, local_a = dense.tn_paths(n_k, n_rows, n_columns)
    assert by_panels and not local_a and dense.tn_wide(n_k, n_rows, n_columns)
    assert not dense.tn_wide(n_k, 2 * dense.PANEL_WIDTH, n_columns)   # rows enough: plain
    assert not dense.tn_wide(n_k, 4, n_columns)           # less than a tile: plain sums
    a = rng.standard_normal((n_k, n_rows)).astype(np.float32)
    if a_view:
        a = np.ascontiguousarray(a.T).T
    b = rng.standard_normal((n_k, n_columns)).astype(np.float32)
    biases = rng.standard_normal(n_columns).astype(np.float32)
    same_bits_for_every_thread_count(
        lambda kernel: broadcast(a, b, biases, True, kernel),
        (cpu.dense_tn_tiled_serial, cpu.dense_tn_tiled_parallel,
         cpu.dense_tn_plain_walk_serial, cpu.dense_tn_plain_walk_parallel))
    for parallel in (False, True):
        assert cpu._broadcast(parallel, a, b) in (cpu.dense_tn_tiled_serial,
                                                   cpu.dense_tn_tiled_parallel)
        tall = np.zeros((n_k, 2 * dense.PANEL_WIDTH), np.float32)
        assert cpu._broadcast(parallel, tall, b) in (cpu.dense_tn_plain_walk_serial,
                                                      cpu.dense_tn_plain_walk_parallel)

    def build_of(n_samples, batch_size):
        model = loopnet.Model()
        model.add(loopnet.Dense(128, 128, seed=0))
        model.add(loopnet.ReLU())
        model.add(loopnet.Dense(128, 3, seed=1))
        model.add(loopnet.Softmax())
        model.set(loss=loopnet.CategoricalCrossentropy(), optimizer=loopnet.Adam())
        model.finalize()
        X = rng.standard_normal((n_samples, 128)).astype(np.float32)
        y = np.arange(n_samples) % 3
        return compiled.prepare_training(model, X, y, batch_size, None).run.build()

    assert step.WIDE_BROADCAST in build_of(96, 32).layers     # 32 rows, 2 panels of neurons
    assert step.WIDE_BROADCAST not in build_of(256, 128).layers   # as many rows as columns


@pytest.mark.parametrize("n_k", [1, 7, dense.K_BLOCK_BROADCAST + 3,
                                 dense.PANELS_IN_L2 // dense.PANEL_WIDTH + 9])
def test_an_operand_that_is_its_own_panel_gives_the_packed_bits(n_k):
    """``b`` of PANEL_WIDTH contiguous columns passed as its own panel (a 64-neuron layer's
    ``weights`` or ``dvalues``: ``is_own_panel``, nothing packed) gives the bits of the same
    product through packed scratch, on both builds and with the summed index in blocks; ``b``
    is left as it was. A 64-column view of a wider array, or a panel that is not ``b`` itself,
    is packed."""
    rng = np.random.default_rng(11)
    width = dense.PANEL_WIDTH
    a = rng.standard_normal((n_k, 13)).astype(np.float32)
    b = rng.standard_normal((n_k, width)).astype(np.float32)
    biases = rng.standard_normal(width).astype(np.float32)
    before = bits(b)
    reference = broadcast(a, b, biases, True, cpu.dense_tn_tiled_serial)
    for kernel in (cpu.dense_tn_tiled_serial, cpu.dense_tn_tiled_parallel):
        output = np.full((13, width), np.nan, np.float32)
        kernel(a, b, b.reshape(1, n_k, width), biases, True, output)
        assert bits(output) == bits(reference)
        assert bits(b) == before
    assert np.shares_memory(cpu._panels(b, "test"), b)          # the cpu op hands b itself
    wide = np.ascontiguousarray(np.concatenate([b, b], axis=1))
    assert not np.shares_memory(cpu._panels(wide[:, :width], "test"), wide)   # scratch
    output = np.full((13, width), np.nan, np.float32)
    cpu.dense_tn_tiled_serial(a, wide[:, :width], cpu._panels(wide[:, :width], "test"),
                              biases, True, output)
    assert bits(output) == bits(reference)
