"""Every CUDA kernel against its numpy twin, plus the device-resident data path.

Shapes are deliberately not multiples of the block sizes (128 threads, 16 x 16): the simulator
raises IndexError on an out-of-bounds access, so a missing bounds check in a kernel fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loopnet
from loopnet import ops
from loopnet.backends import cuda as gpu
from loopnet.backends import numpy as twins
from loopnet.kernels.examples import kernel_arguments

from helpers import sum_tolerance

N_ELEMENTS = 131            # > one 1-D block of 128, not a multiple of it
N_SAMPLES, N_CLASSES = 19, 7
N_INPUTS, N_NEURONS = 21, 18  # > one 16-wide tile and not a multiple of it



def _arguments(op, dtype, rng):
    """Random host arguments for ``op``, built from its parameter names."""
    return kernel_arguments(op, gpu.KERNEL_FUNCTIONS[op], dtype, rng, n_samples=N_SAMPLES,
                            n_inputs=N_INPUTS, n_neurons=N_NEURONS, n_classes=N_CLASSES,
                            n_elements=N_ELEMENTS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(gpu.KERNELS))
def test_kernel_equals_numpy_twin(op, dtype):
    """Each CUDA kernel writes what its numpy twin writes (device arguments, device outputs)."""
    rng = np.random.default_rng(abs(hash(op)) % 2**32)
    host_args = _arguments(op, dtype, rng)
    expected = [a.copy() if isinstance(a, np.ndarray) else a for a in host_args]
    twin = "dense_forward" if op == "dense_forward_tiled" else op
    getattr(twins, twin)(*expected)
    device_args = [gpu.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
    getattr(gpu, op)(*device_args)
    for position in gpu._written_arguments(gpu.KERNEL_FUNCTIONS[op]):
        got = gpu.to_numpy(device_args[position])
        want = expected[position]
        # Sums of up to N_INPUTS products of standard-normal-sized values (or one exp/log/sqrt):
        # a few dozen roundings of numbers of order 10, the sum_tolerance bound with K = 32.
        magnitude = np.abs(want) + 10.0
        assert np.all(np.abs(got - want) <= sum_tolerance(32, magnitude, dtype)), (op, position)


def test_every_host_kernel_has_a_cuda_form():
    """A new ``<op>_loops`` without its ``<op>_kernel`` is reported here."""
    from loopnet.backends import collect

    missing = sorted(set(collect("loops")) - set(gpu.KERNELS))
    assert missing == [], f"ops without a CUDA form: {missing}"
    for op in collect("loops"):
        assert callable(getattr(gpu, op))


def test_tiled_and_simple_dense_kernels_give_the_same_bits():
    rng = np.random.default_rng(1)
    x, w, b = (gpu.asarray(rng.standard_normal(s).astype(np.float32))
               for s in ((N_SAMPLES, 37), (37, N_NEURONS), (N_NEURONS,)))
    tiled = gpu.empty((N_SAMPLES, N_NEURONS), np.float32)
    simple = gpu.empty((N_SAMPLES, N_NEURONS), np.float32)
    gpu.dense_forward_tiled(x, w, b, tiled)
    gpu.dense_forward_simple(x, w, b, simple)
    assert np.array_equal(gpu.to_numpy(tiled), gpu.to_numpy(simple))


def test_launches_smaller_than_a_block_get_a_block_their_size():
    """A small launch runs only the threads it needs (a whole warp for 1-D); the tiled dense
    kernel, whose threads share a tile, always gets whole 16 x 16 blocks; the dense forward
    op hands an output within one tile to the one-thread-per-output kernel."""
    assert gpu._grid((3,)) == ((1,), (32,))
    assert gpu._grid((131,)) == ((2,), (128,))
    assert gpu._grid((3,), whole_blocks=True) == ((1,), (128,))
    assert gpu._grid((300, 3)) == ((1, 19), (3, 16))
    assert gpu._grid((4, 40)) == ((3, 1), (16, 4))
    assert gpu._grid((4, 4), whole_blocks=True) == ((1, 1), (16, 16))
    launched = []
    simple, tiled = gpu.dense_forward_simple, gpu._dense_forward_tiled
    try:
        gpu.dense_forward_simple = lambda *args: launched.append("simple")
        gpu._dense_forward_tiled = lambda *args: launched.append("tiled")
        for n_samples, n_neurons in ((4, 3), (16, 16), (17, 3), (3, 17)):
            gpu.dense_forward(None, None, None, np.empty((n_samples, n_neurons)))
    finally:
        gpu.dense_forward_simple, gpu._dense_forward_tiled = simple, tiled
    assert launched == ["simple", "simple", "tiled", "tiled"]


def test_reductions_are_deterministic():
    rng = np.random.default_rng(2)
    values = gpu.asarray(rng.standard_normal(300).astype(np.float32))
    results = [ops.mean(values, device="cuda") for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert results[0] == pytest.approx(float(np.mean(gpu.to_numpy(values), dtype=np.float64)),
                                       rel=1e-12, abs=1e-12)


def test_host_outputs_given_to_a_backend_function_are_filled():
    """Called directly with numpy arrays, a backend function copies in once and back out."""
    x = np.linspace(-1, 1, N_ELEMENTS).astype(np.float32)
    out = np.full_like(x, np.nan)
    gpu.relu_forward(x, out)
    assert np.array_equal(out, np.maximum(0, x))


def _spiral_network(device):
    from loopnet.datasets import spiral_data

    X, y = spiral_data(samples=25, classes=3, seed=0)
    dense1 = loopnet.Dense(2, 5, seed=1, device=device)
    dense2 = loopnet.Dense(5, 3, seed=2, device=device)
    relu, softmax = loopnet.ReLU(device=device), loopnet.Softmax(device=device)
    loss = loopnet.CategoricalCrossentropy(device=device)
    return X, y, dense1, dense2, relu, softmax, loss


def test_spiral_forward_stays_on_the_device_and_matches_cpu():
    results = {}
    for device in ("cpu", "cuda"):
        X, y, dense1, dense2, relu, softmax, loss_function = _spiral_network(device)
        if device == "cuda":
            assert gpu.is_device_array(dense1.weights) and gpu.is_device_array(dense2.biases)
            X = loopnet.ops.to_device(X, "cuda")  # the data goes over once
        dense1.forward(X)
        relu.forward(dense1.output)
        dense2.forward(relu.output)
        softmax.forward(dense2.output)
        loss = loss_function.calculate(softmax.output, y)
        assert isinstance(loss, np.float32)   # a host numpy scalar of the working dtype
        if device == "cuda":
            for array in (dense1.output, relu.output, dense2.output, softmax.output):
                assert gpu.is_device_array(array)
        results[device] = (np.asarray(softmax.output), loss)
    # 2 -> 5 -> 3 sums of a few terms of order 1, then exp and log: float32 rounding, K ~ 8.
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=0, atol=1e-6)
    assert results["cuda"][1] == pytest.approx(results["cpu"][1], rel=1e-6)


def test_layer_to_moves_parameters_once_and_back():
    layer = loopnet.Dense(3, 4, seed=0)
    weights = layer.weights.copy()
    layer.to("cuda")
    assert layer.device == "cuda" and gpu.is_device_array(layer.weights)
    out = layer.forward(np.ones((5, 3), np.float64))  # float64 host input: cast, copied once
    assert gpu.is_device_array(out) and out.dtype == np.float32
    layer.to("cpu")
    assert isinstance(layer.weights, np.ndarray) and np.array_equal(layer.weights, weights)


def test_device_arrays_of_another_dtype_are_converted_on_the_device():
    x = gpu.asarray(np.arange(-3, 3, dtype=np.float64).reshape(2, 3))
    out = ops.relu_forward(x, device="cuda")
    assert out.dtype == np.float64 and np.array_equal(loopnet.to_numpy(out), [[0, 0, 0], [0, 1, 2]])
    cast = gpu.asarray(x, np.float32)
    assert cast.dtype == np.float32 and np.array_equal(gpu.to_numpy(cast), gpu.to_numpy(x))


def test_labels_on_the_device_are_validated():
    probs = gpu.asarray(np.full((4, 3), 1 / 3, np.float32))
    with pytest.raises(ValueError, match="class index 3"):
        ops.categorical_crossentropy(probs, gpu.asarray(np.array([0, 1, 2, 3])), device="cuda")


def test_set_device_and_context_manager_select_cuda():
    with loopnet.device("cuda"):
        out = ops.relu_forward([-1.0, 2.0])
    assert gpu.is_device_array(out)
    with loopnet.device("cuda:0"):
        assert gpu.is_device_array(ops.relu_forward([1.0]))


def test_a_gpu_index_that_does_not_exist_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cuda:7.*1 GPU"):
        loopnet.set_device("cuda:7")


def test_spiral_model_trains_on_cuda_like_on_cpu():
    """A few epochs of the spiral model: the loss history on cuda matches cpu within float32
    rounding (each epoch's loss is a mean of 30 logs of softmax outputs of 2 -> 8 -> 3 layers)."""
    model_module = pytest.importorskip("loopnet.model")
    from loopnet import optimizers
    from loopnet.datasets import spiral_data

    X, y = spiral_data(samples=10, classes=3, seed=0)
    losses = {}
    for device in ("cpu", "cuda"):
        with loopnet.device(device):
            model = model_module.Model()
            for layer in (loopnet.Dense(2, 8, seed=1), loopnet.ReLU(),
                          loopnet.Dense(8, 3, seed=2), loopnet.Softmax()):
                model.add(layer)
            model.set(loss=loopnet.CategoricalCrossentropy(),
                      optimizer=optimizers.Adam(learning_rate=0.05))
            model.finalize()
            losses[device] = model.train(X, y, epochs=3, print_every=None)["loss"]
    assert losses["cpu"][-1] < losses["cpu"][0]
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-5)


def test_a_host_array_goes_over_with_the_strides_of_a_fresh_one():
    """numpy calls a view with a dimension of length 1 contiguous whatever that dimension's
    stride, and numba-cuda's copy to the GPU failed on such a view (a GPU showed it: the
    simulator copies differently): ``host_layout`` hands over a fresh copy instead."""
    every_other = np.arange(8, dtype=np.float32)[::2][:1]
    column = np.arange(8.0).reshape(2, 4)[:, :1]
    assert every_other.flags.c_contiguous and every_other.strides == (8,)
    for view, strides in ((every_other, (4,)), (column, (8, 8))):
        laid_out = gpu.host_layout(view)
        assert laid_out.strides == strides and np.array_equal(laid_out, view)
        assert np.array_equal(gpu.to_numpy(gpu.asarray(view)), view)
    fitting = np.ones((3, 4), np.float32)
    assert gpu.host_layout(fitting) is fitting          # nothing to copy
    out = ops.dense_forward(np.ones(3), np.arange(6.0).reshape(3, 2)[:, :1], every_other[:1],
                            device="cuda")
    assert np.array_equal(loopnet.to_numpy(out), [6.0 + 0.0])


@pytest.mark.parametrize("host", ["cpu", "numpy", "python"])
def test_a_gpu_array_given_to_a_host_device_is_a_clear_error(host):
    """Every op checks that its arrays are where its device runs: a GPU array handed to a host
    device raises a TypeError saying what to do, never numba's 'can't unbox array' (or, for
    the numpy device, a silent copy per call)."""
    rng = np.random.default_rng(0)
    probs = gpu.asarray(np.full((4, 3), 1 / 3, np.float32))
    column = gpu.asarray(rng.uniform(size=(4, 1)).astype(np.float32))
    flat = gpu.asarray(rng.standard_normal(6).astype(np.float32))
    on_host = np.ones(6, np.float32)
    calls = {
        "dense_forward": lambda: ops.dense_forward(probs, np.ones((3, 2), np.float32),
                                                   np.zeros(2, np.float32), device=host),
        "accuracy": lambda: ops.accuracy(probs, np.array([0, 1, 2, 0]), device=host),
        "binary_accuracy": lambda: ops.binary_accuracy(column, np.ones((4, 1)), device=host),
        "regression_accuracy": lambda: ops.regression_accuracy(column, np.ones((4, 1)), 0.1,
                                                               device=host),
        "binary_crossentropy": lambda: ops.binary_crossentropy(column, np.ones((4, 1)),
                                                               device=host),
        "mean_squared_error_backward": lambda: ops.mean_squared_error_backward(
            column, np.ones((4, 1)), device=host),
        "softmax_crossentropy_backward": lambda: ops.softmax_crossentropy_backward(
            probs, np.array([0, 1, 2, 0]), device=host),
        "mean": lambda: ops.mean(flat, device=host),
        "regularization_loss": lambda: ops.regularization_loss(flat, l2=0.1, device=host),
        "regularization_backward": lambda: ops.regularization_backward(
            flat, on_host.copy(), l2=0.1, device=host),
        "sgd_update": lambda: ops.sgd_update(on_host.copy(), flat, learning_rate=0.1,
                                             device=host),
        "sgd_update with momentum": lambda: ops.sgd_update(
            on_host.copy(), flat, learning_rate=0.1, momentum=0.9,
            momentums=np.zeros(6, np.float32), device=host),
        "adagrad_update": lambda: ops.adagrad_update(on_host.copy(), flat, on_host.copy(),
                                                     learning_rate=0.1, device=host),
        "rmsprop_update": lambda: ops.rmsprop_update(on_host.copy(), flat, on_host.copy(),
                                                     learning_rate=0.1, device=host),
        "adam_update": lambda: ops.adam_update(on_host.copy(), flat, on_host.copy(),
                                               on_host.copy(), learning_rate=0.1, iteration=0,
                                               device=host),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="GPU array but the op runs on a host device") as err:
            call()
        assert "to_numpy" in str(err.value), name


def test_a_model_s_loss_and_accuracy_made_without_a_device_follow_its_layers():
    """Layers placed on the GPU, a loss and an accuracy made without a device: ``finalize``
    puts those two where the layers' outputs are (a host loss could not read them), and the
    model trains as one whose every part names the device."""
    from loopnet.datasets import spiral_data

    X, y = spiral_data(samples=6, classes=2, seed=0)
    histories = []
    for named in (False, True):
        where = {"device": "cuda"} if named else {}
        model = loopnet.Model()
        model.add(loopnet.Dense(2, 4, seed=0, device="cuda"))
        model.add(loopnet.ReLU(device="cuda"))
        model.add(loopnet.Dense(4, 1, seed=1, device="cuda"))
        model.add(loopnet.Sigmoid(device="cuda"))
        model.set(loss=loopnet.BinaryCrossentropy(**where),
                  optimizer=loopnet.Adam(learning_rate=0.05),
                  accuracy=loopnet.BinaryAccuracy(**where))
        model.finalize()
        assert (model.loss.device, model.accuracy.device) == ("cuda", "cuda")
        histories.append(model.train(X, y.reshape(-1, 1), epochs=1, print_every=None))
    assert histories[0]["loss"] == histories[1]["loss"]
    assert histories[0]["accuracy"] == histories[1]["accuracy"]


def test_numba_s_low_occupancy_warning_is_off_unless_the_user_asked_for_it():
    """The book's small arrays launch grids of under 128 blocks on most ops, and numba warned
    about each of them on a real GPU (the simulator does not): the cuda device turns that
    warning off where the user has not set ``NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS``."""
    import os
    import sys

    assert os.environ.get("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS") == "0"
    configs = [sys.modules[name] for name in ("numba.cuda.core.config", "numba.core.config")
               if hasattr(sys.modules.get(name), "CUDA_LOW_OCCUPANCY_WARNINGS")]
    assert configs and all(c.CUDA_LOW_OCCUPANCY_WARNINGS == 0 for c in configs)


def test_a_layer_made_while_the_current_device_is_a_gpu_lives_there(monkeypatch):
    """``set_device("cuda")`` or a ``device("cuda")`` context, then ``Dense(...)``: the
    parameters are created on the GPU and the layer stays there, as a layer given
    ``device="cuda"`` (before, they stayed on the host and every op copied them over)."""
    from loopnet.validate import is_device_array

    with loopnet.device("cuda"):
        layer = loopnet.Dense(2, 3, seed=0)
    assert layer.device == "cuda"
    assert is_device_array(layer.weights) and is_device_array(layer.biases)
    np.testing.assert_array_equal(loopnet.to_numpy(layer.weights),
                                  loopnet.Dense(2, 3, seed=0).weights)
    monkeypatch.setattr(loopnet.devices, "_default", loopnet.devices._default)  # (restored)
    loopnet.set_device("cuda")
    assert is_device_array(loopnet.Dense(2, 3).weights)
    loopnet.set_device("numpy")
    assert not is_device_array(loopnet.Dense(2, 3).weights)      # a host device: numpy


def test_an_epoch_on_the_gpu_copies_the_samples_at_most_once_and_no_parameter(monkeypatch):
    """On a GPU each host-to-device copy waits for the kernels before it (it took ~0.4 ms
    on an H200, against an epoch's ~20 launches): ``Model.train`` on cuda sends the samples
    over once a call (once an epoch when shuffled), and the parameters never."""
    from loopnet.cli import build_model
    from loopnet.datasets import spiral_data

    X, y = spiral_data(samples=4, classes=3, seed=0)
    with loopnet.device("cuda"):
        model = build_model(2, 3, [5], regression=False, learning_rate=0.05, seed=0)
        model.train(X, y, epochs=1, print_every=None)   # (makes the optimizer's state)
        real = gpu.cuda.to_device
        for shuffle, copies_of_X in ((False, 1), (True, 2)):
            shapes = []
            monkeypatch.setattr(gpu.cuda, "to_device",
                                lambda array, *a, **k: shapes.append(np.shape(array))
                                or real(array, *a, **k))
            model.train(X, y, epochs=2, print_every=None, shuffle=shuffle, seed=0)
            parameter_shapes = {tuple(np.shape(a)) for layer in model.trainable_layers
                                for a in (layer.weights, layer.biases)}
            assert not parameter_shapes & set(shapes), shapes
            assert shapes.count(X.shape) == copies_of_X, (shuffle, shapes)


def test_a_model_loaded_for_the_gpu_has_its_parameters_there(tmp_path):
    """``Model.load(path, device="cuda")``, or a load while the current device is a GPU: the
    parameters and the optimizer's state are moved over once (before, only the device names
    changed, and every op copied the host arrays over)."""
    from loopnet.cli import build_model
    from loopnet.datasets import spiral_data
    from loopnet.validate import is_device_array

    X, y = spiral_data(samples=4, classes=3, seed=0)
    model = build_model(2, 3, [5], regression=False, learning_rate=0.05, seed=0)
    model.train(X, y, epochs=2, print_every=None)
    path = tmp_path / "model.npz"
    model.save(path)
    with loopnet.device("cuda"):
        followed = loopnet.Model.load(path)
    for loaded in (loopnet.Model.load(path, device="cuda"), followed):
        for layer, original in zip(loaded.trainable_layers, model.trainable_layers):
            assert layer.device == "cuda"
            for name in ("weights", "biases", "weight_momentums", "bias_cache"):
                assert is_device_array(getattr(layer, name)), name
                np.testing.assert_array_equal(loopnet.to_numpy(getattr(layer, name)),
                                              getattr(original, name))
    assert not is_device_array(loopnet.Model.load(path).trainable_layers[0].weights)


@settings(max_examples=6, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_batches_sum_their_samples_in_two_levels(dtype, data):
    """From TWO_LEVEL_MIN_SAMPLES samples on, dweights and dbiases are summed in chunks of
    samples, then chunk totals: within the rounding of an n_samples-term sum of the numpy
    twin, the same bits on every call, into device and host outputs alike."""
    from loopnet.kernels import dense

    def per_output(*args):
        raise AssertionError("a large batch took the one-thread-per-output kernel")

    # (any number of samples from the threshold on, a last chunk full or short)
    n_samples = data.draw(st.integers(dense.TWO_LEVEL_MIN_SAMPLES,
                                      dense.TWO_LEVEL_MIN_SAMPLES + 2 * dense.SAMPLE_CHUNK))
    n_inputs, n_neurons = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    inputs = rng.standard_normal((n_samples, n_inputs)).astype(dtype)
    dvalues = rng.standard_normal((n_samples, n_neurons)).astype(dtype)
    want_weights = inputs.T.astype(np.float64) @ dvalues.astype(np.float64)
    want_biases = dvalues.astype(np.float64).sum(axis=0)
    weight_terms = np.abs(inputs).T @ np.abs(dvalues)     # sum_s |inputs[s, i] * dvalues[s, n]|
    bias_terms = np.abs(dvalues).sum(axis=0)
    device_inputs, device_dvalues = gpu.asarray(inputs), gpu.asarray(dvalues)
    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu, "_dense_backward_weights_per_weight", per_output)
        patch.setattr(gpu, "_dense_backward_biases_per_neuron", per_output)
        for _ in range(2):
            dweights = gpu.empty((n_inputs, n_neurons), dtype)
            dbiases = gpu.empty(n_neurons, dtype)
            gpu.dense_backward_weights(device_inputs, device_dvalues, dweights)
            gpu.dense_backward_biases(device_dvalues, dbiases)
            results.append((gpu.to_numpy(dweights), gpu.to_numpy(dbiases)))
        host_weights = np.full((n_inputs, n_neurons), np.nan, dtype)  # host outputs filled too
        host_biases = np.full((1, n_neurons), np.nan, dtype)
        gpu.dense_backward_weights(inputs, dvalues, host_weights)
        gpu.dense_backward_biases(dvalues, host_biases)
    (got_weights, got_biases), again = results
    assert np.array_equal(got_weights, again[0]) and np.array_equal(got_biases, again[1])
    assert np.all(np.abs(got_weights - want_weights)
                  <= sum_tolerance(n_samples, weight_terms, dtype))
    assert np.all(np.abs(got_biases - want_biases) <= sum_tolerance(n_samples, bias_terms, dtype))
    assert np.array_equal(host_weights, got_weights)
    assert np.array_equal(host_biases[0], got_biases)


def test_dropout_on_the_device_warns_of_nothing():
    """The dropout hash's uint64 products wrap around by design, as they do on the GPU; under
    the simulator (each GPU thread's Python on numpy scalars) they must not show up as overflow
    warnings, and the mask is the other devices' one."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        mask = gpu.to_numpy(ops.dropout_mask((5, 7), 0.3, seed=3, step=2, device="cuda"))
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert np.array_equal(mask, ops.dropout_mask((5, 7), 0.3, seed=3, step=2, device="numpy"))
