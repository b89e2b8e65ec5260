"""Fused training: whole epochs of a Dense-ReLU-...-Dense-Softmax classifier with Adam, in one
compiled function.

Index legend: s = sample (row of the batch), i = input feature, n = neuron, j = class,
l = layer (0 = first Dense), k = flat parameter index.

What the layered path (``Model.train`` calling ``Dense.forward``, ``ReLU.forward``, ... through
``loopnet.ops``) does in ~20 kernel calls and as many Python round trips per step, this does in
one call per block of epochs, with every buffer allocated once by the caller and reused:

    per step (one batch of rows ``order[start:end]``):
      acts[0][s]     = X[order[start + s]]          (gather; unshuffled: X's rows read in place)
      acts[l + 1][s] = relu(acts[l][s] @ weights[l] + biases[l])      (last layer: no relu)
      probs          = softmax(acts[L][s]);  loss[s] = -log(clip(probs[y]))
      dacts[L][s]    = (probs - one_hot(y)) / n_batch                (softmax + CE backward)
      dweights[l]    = acts[l].T @ dacts[l + 1];  dbiases[l] = sum_s dacts[l + 1][s]
      dacts[l][s]    = (dacts[l + 1][s] @ weights[l].T) * (acts[l][s] > 0)   (relu backward)
      Adam on every weight and bias (the book's update, moments below 1e-30 flushed to 0)

Every stage is the very loop of the layered kernel it replaces (``dense_forward_blocked``,
``relu_forward_loops``, ``softmax_forward_loops``, ``categorical_crossentropy_loops``,
``accuracy_loops``, ``softmax_crossentropy_backward_loops``, ``dense_backward_*_loops``,
``relu_backward_loops``, ``adam_update_loops``; the blocked dense kernels give the bits of
``dense_*_loops``): the same sums in the same order, so while the layered path runs the
blocked/simple (non-tiled, non-fastmath) dense kernels the two paths give the same bits. (For
middle-sized layers the layered path runs the blocked loops compiled with fastmath,
``dense_*_fast``; this kernel keeps the bit-identical ones there: the fastmath copies would add
~1.3 s to its cold compile.) Each output element is owned by one ``prange`` iteration (a
sample row, an input row of ``dweights``, a parameter row): results do not depend on the
thread count.

The relu backward tests the relu *output* (``acts[l][s, i] <= 0``) where ``relu_backward_loops``
tests its input: the same mask (an input <= 0 gives output 0, a positive input itself, a NaN a NaN).

This file is not in ``kernels.MODULES``: its functions do not follow the ``<op>_loops`` naming,
so no backend collects them and they need no CUDA form. The ``cpu`` backend compiles
``train_epochs_fused`` explicitly (``loopnet.backends.cpu.train_epochs``, serial and parallel
copies), ``loopnet.model`` calls it, and ``train_step_numpy`` is its numpy twin for one step
(tested against it in ``tests/test_speed.py``).
"""

import math

import numpy as np
from numba import prange
from numba.extending import register_jitable

from loopnet.kernels.dense import (PANEL_WIDTH, TILE_ROWS, TN_ROWS, forward_rows_blocked,
                                   nt_rows_tiled, pack_panel, tn_tile, weights_rows_blocked)

# Same clip as the cross-entropy kernels (losses.CLIP): probabilities in [1e-7, 1 - 1e-7].
CLIP = 1e-7

# Adam moments whose magnitude falls below this are set to 0. Left alone they decay into float32
# subnormals (beta_1 ** 800 < 1e-37), which the CPU handles ~100x slower: MNIST-size training
# slowed 2-3x from the second epoch. Such a moment moves a parameter by ~1e-30 * lr: nothing.
FLUSH = 1e-30

# Bits of the per-layer `tiled` argument.
TILED_FORWARD = 1
TILED_DWEIGHTS = 2
# False in the build for models without a tiled dweights (``loopnet.backends.cpu`` compiles a
# copy of ``train_epochs_fused`` with this global False): numba drops a branch on a constant
# before typing it, so such models (the spiral's) do not compile the broadcast-form code (a
# cold compile of a spiral training run: 6.9 -> 5.3 s, and 6.1-6.3 s before that form).
TILED_DWEIGHTS_BRANCH = True

# Elements per prange iteration of the Adam update.
ADAM_CHUNK = 4096

# hyper-parameter vector layout (float64), built by loopnet.model
LEARNING_RATE, DECAY, EPSILON, BETA_1, BETA_2 = range(5)


def train_epochs_fused(X, y, orders, batch_size, weights, biases, dweights, dbiases, acts, dacts,
                       weight_momentums, weight_cache, bias_momentums, bias_cache, hyper,
                       iteration, sample_losses, correct, history, tiled, weights_t,
                       dvalues_panels):
    """Train ``history.shape[0]`` epochs; returns -1, or the global step index at which the loss
    became NaN/inf (before that step's update, as the layered path stops).

    ``X`` (n_samples, n_inputs); ``y`` (n_samples,) class indices (validated by the caller);
    ``orders`` (1 or n_epochs, n_samples) the row order of each epoch (row 0 for every epoch
    when it has one row); ``weights``/``biases``/... tuples with one array per Dense layer
    (biases 1-D); ``acts[l]``/``dacts[l]`` (batch_size, width of layer l's input, l = 0..L);
    ``hyper`` float64 (learning_rate, decay, epsilon, beta_1, beta_2); ``iteration`` the number
    of optimizer steps already made; ``sample_losses``, ``correct`` (batch_size,) scratch;
    ``tiled`` (L,) int: bit ``TILED_FORWARD`` / ``TILED_DWEIGHTS`` set where that layer's
    forward / dweights runs a register-tiled kernel (forward: ``nt_rows_tiled``, dweights:
    the broadcast form's ``tn_tile``; the caller decides as the cpu backend does), the
    dweights ones with a flat scratch ``dvalues_panels[l]`` of ``batch_size * PANEL_WIDTH``
    values per panel of ``dvalues`` (``pack_panel``; other layers: any 1-element array);
    ``weights_t[l]`` = ``weights[l].T`` for tiled layers and every layer but the first (the
    backward pass reads it; the Adam step keeps it in step), any (1, 1) array for a first
    layer whose forward is not tiled.
    ``history`` float64 (n_epochs, 3) receives per epoch the summed data loss and accuracy
    (``sum over steps of mean * n_batch``, as ``Loss.accumulated_sum``) and the learning rate.
    """
    n_layers = len(weights)
    n_samples = X.shape[0]
    n_inputs = X.shape[1]
    n_classes = weights[n_layers - 1].shape[1]
    dtype = X.dtype.type
    lo = dtype(CLIP)
    hi = dtype(1 - CLIP)
    one = dtype(1)
    zero = dtype(0)
    flush = dtype(FLUSH)
    eps = dtype(hyper[EPSILON])
    b1 = dtype(hyper[BETA_1])
    b2 = dtype(hyper[BETA_2])
    mix_1 = dtype(1 - hyper[BETA_1])
    mix_2 = dtype(1 - hyper[BETA_2])
    n_steps = (n_samples + batch_size - 1) // batch_size
    for epoch in range(history.shape[0]):
        order = orders[epoch if orders.shape[0] > 1 else 0]
        in_order = True                  # order == 0, 1, 2, ...: no gather needed
        for s in range(n_samples):
            if order[s] != s:
                in_order = False
                break
        loss_sum = 0.0        # float64 running sums, as Loss/Accuracy.accumulated_sum
        correct_sum = 0.0
        learning_rate = hyper[LEARNING_RATE]
        for step in range(n_steps):
            start = step * batch_size
            m = min(batch_size, n_samples - start)

            # --- forward: gather the batch, then dense (+ relu) layer by layer --------------
            if in_order:
                # the batch is rows start .. start + m - 1 of X: read them in place (copying
                # them first cost ~7% of an MNIST-size epoch; same values, so same bits)
                first_inputs = X[start:start + m]
            else:
                batch = acts[0]
                for s in prange(m):
                    row = X[order[start + s]]
                    for i in range(n_inputs):
                        batch[s, i] = row[i]
                first_inputs = acts[0][:m]
            for l in range(n_layers):
                # dense_forward_blocked's rows (4 samples per iteration), relu on all but the last
                batch_inputs = first_inputs if l == 0 else acts[l][:m]
                batch_output = acts[l + 1][:m]
                relu = l < n_layers - 1
                if tiled[l] & TILED_FORWARD:
                    n_neurons = weights[l].shape[1]
                    for block in prange((m + TILE_ROWS - 1) // TILE_ROWS):
                        nt_rows_tiled(batch_inputs, weights_t[l], biases[l], True, batch_output,
                                      block * TILE_ROWS, 0, n_neurons, relu)
                else:
                    for block in prange((m + 3) // 4):
                        forward_rows_blocked(batch_inputs, weights[l], biases[l], batch_output,
                                             block * 4, relu)

            # --- softmax + cross-entropy + accuracy + their gradient, one sample per row ----
            logits = acts[n_layers]
            dlogits = dacts[n_layers]
            n = dtype(m)
            for s in prange(m):
                row = logits[s]
                row_max = row[0]
                for j in range(1, n_classes):
                    if row[j] > row_max or row[j] != row[j]:
                        row_max = row[j]
                norm_base = zero
                for j in range(n_classes):
                    exp_value = np.exp(row[j] - row_max)
                    row[j] = exp_value
                    norm_base += exp_value
                for j in range(n_classes):
                    row[j] = row[j] / norm_base          # row now holds the probabilities
                target = y[order[start + s]]
                confidence = row[target]
                if confidence < lo:
                    confidence = lo
                elif confidence > hi:
                    confidence = hi
                sample_losses[s] = -np.log(confidence)
                best = 0
                for j in range(1, n_classes):
                    if row[best] != row[best]:
                        break
                    if row[j] > row[best] or row[j] != row[j]:
                        best = j
                correct[s] = 1 if best == target else 0
                for j in range(n_classes):
                    dinput = row[j]
                    if j == target:
                        dinput = dinput - one
                    dlogits[s, j] = dinput / n
            step_loss = 0.0
            step_correct = 0.0
            for s in range(m):                   # serial, in order: as ops.mean sums them
                step_loss += sample_losses[s]
                step_correct += correct[s]
            step_loss = step_loss / m
            if not math.isfinite(step_loss):
                return epoch * n_steps + step
            loss_sum += step_loss * m
            correct_sum += (step_correct / m) * m

            # --- backward, last layer first ------------------------------------------------
            for l in range(n_layers - 1, -1, -1):
                layer_weights = weights[l]
                inputs = first_inputs if l == 0 else acts[l]  # rows 0 .. m - 1 are read
                dvalues = dacts[l + 1]
                layer_dweights = dweights[l]
                layer_dbiases = dbiases[l]
                n_in = layer_weights.shape[0]
                n_neurons = layer_weights.shape[1]
                # dweights = inputs.T @ dvalues: dense_backward_weights_blocked's rows (4 rows
                # of dweights per iteration, samples added in order: the loops' bits)
                if TILED_DWEIGHTS_BRANCH and tiled[l] & TILED_DWEIGHTS:
                    # the broadcast form (dense_tn_tiled): dvalues copied into panels, the
                    # batch's inputs read as they are (no transposes: 128x784x128 ran 185 us
                    # as the NT form with both operands transposed, ~110 us so)
                    n_panels = (n_neurons + PANEL_WIDTH - 1) // PANEL_WIDTH
                    panels = dvalues_panels[l][:n_panels * m * PANEL_WIDTH].reshape(
                        (n_panels, m, PANEL_WIDTH))
                    for p in prange(n_panels):
                        pack_panel(dvalues[:m], panels, p)
                    n_blocks = (n_in + TN_ROWS - 1) // TN_ROWS
                    for tile in prange(n_blocks * n_panels):
                        owned = tile // n_panels * TN_ROWS
                        p = tile % n_panels
                        start = min(owned, n_in - TN_ROWS)
                        tn_tile(inputs[:m, start:start + TN_ROWS], panels[p], layer_dbiases,
                                False, layer_dweights, start, owned, p * PANEL_WIDTH, False)
                else:
                    for band in prange((n_in + 3) // 4):
                        weights_rows_blocked(inputs, dvalues, layer_dweights, band * 4, m)
                for n in range(n_neurons):       # dbiases = sum over samples, serial
                    layer_dbiases[n] = 0
                for s in range(m):
                    dvalues_row = dvalues[s]
                    for n in range(n_neurons):
                        layer_dbiases[n] += dvalues_row[n]
                if l > 0:
                    # dinputs = dvalues @ weights.T, then the relu mask. Each dinputs[s, i] adds
                    # dvalues[s, n] * weights[i, n] for n = 0, 1, ... (dense_backward_inputs_loops'
                    # order, so its bits), but the inner loop runs over i along weights_t[n], so
                    # one sample's row of dinputs is updated as a vector (dinputs_row_narrow's
                    # loops, written out here: called, the spiral epoch ran 3 us slower).
                    dinputs = dacts[l]
                    layer_weights_t = weights_t[l]
                    for s in prange(m):
                        dvalues_row = dvalues[s]
                        dinputs_row = dinputs[s]
                        inputs_row = inputs[s]
                        for i in range(n_in):
                            dinputs_row[i] = 0
                        for n in range(n_neurons):
                            dvalue = dvalues_row[n]
                            weights_t_row = layer_weights_t[n]
                            for i in range(n_in):
                                dinputs_row[i] += dvalue * weights_t_row[i]
                        for i in range(n_in):
                            if inputs_row[i] <= 0:
                                dinputs_row[i] = 0

            # --- Adam over every parameter (Optimizer.pre_update_params + update_params) ----
            if hyper[DECAY] != 0:
                learning_rate = hyper[LEARNING_RATE] * (1.0 / (1.0 + hyper[DECAY] * iteration))
            step_size = dtype(-learning_rate)
            # float(...): with an integer exponent numba multiplies (powi), which rounds
            # differently from the libm pow() that Python's `beta ** (iteration + 1)` calls.
            c1 = dtype(1 - math.pow(hyper[BETA_1], float(iteration + 1)))
            c2 = dtype(1 - math.pow(hyper[BETA_2], float(iteration + 1)))
            for l in range(n_layers):
                flat = weights[l].reshape(-1)
                flat_grads = dweights[l].reshape(-1)
                flat_momentums = weight_momentums[l].reshape(-1)
                flat_cache = weight_cache[l].reshape(-1)
                n_total = flat.shape[0]
                for chunk in prange((n_total + ADAM_CHUNK - 1) // ADAM_CHUNK):
                    start = chunk * ADAM_CHUNK
                    end = min(start + ADAM_CHUNK, n_total)
                    adam_chunk(flat[start:end], flat_grads[start:end],
                               flat_momentums[start:end], flat_cache[start:end],
                               step_size, eps, b1, b2, mix_1, mix_2, c1, c2, flush)
                adam_chunk(biases[l], dbiases[l], bias_momentums[l], bias_cache[l],
                           step_size, eps, b1, b2, mix_1, mix_2, c1, c2, flush)
                if (tiled[l] & TILED_FORWARD) or l > 0:  # keep the packed weights.T in step
                    params = weights[l]
                    params_t = weights_t[l]
                    n_in = params.shape[0]
                    for band in prange((n_in + 31) // 32):
                        for k in range(params.shape[1]):
                            row_t = params_t[k]
                            for i in range(band * 32, min(band * 32 + 32, n_in)):
                                row_t[i] = params[i, k]
            iteration += 1
        history[epoch, 0] = loss_sum          # / n_samples by the caller, as the Loss does
        history[epoch, 1] = correct_sum
        history[epoch, 2] = learning_rate
    return -1


@register_jitable
def adam_chunk(params, grads, momentums, cache, step_size, eps, b1, b2, mix_1, mix_2, c1, c2,
               flush):
    """``adam_update_loops``' body (with its flush) over flat views; the trainer hands each
    ``prange`` iteration a chunk of ``ADAM_CHUNK`` elements (a loop from 0 over views
    vectorizes; a ``range(start, end)`` over the whole array did not)."""
    zero = params.dtype.type(0)
    for k in range(params.shape[0]):
        grad = grads[k]
        momentum = b1 * momentums[k] + mix_1 * grad
        if abs(momentum) < flush:
            momentum = zero
        momentums[k] = momentum
        cached = b2 * cache[k] + mix_2 * (grad * grad)
        if cached < flush:
            cached = zero
        cache[k] = cached
        params[k] += step_size * (momentum / c1) / (np.sqrt(cached / c2) + eps)


def train_step_numpy(X_batch, y_batch, weights, biases, weight_momentums, weight_cache,
                     bias_momentums, bias_cache, learning_rate, iteration, epsilon, beta_1,
                     beta_2):
    """Twin of one step of ``train_epochs_fused``, vectorized (the book's chapter-10 code).

    Updates the parameter and state arrays in place; returns ``(data_loss, accuracy)`` of the
    batch before the update. ``learning_rate`` is the already decayed one.
    """
    activations = [X_batch]
    for l, (w, b) in enumerate(zip(weights, biases)):
        z = np.dot(activations[-1], w) + b
        activations.append(np.maximum(0, z) if l < len(weights) - 1 else z)
    exp_values = np.exp(activations[-1] - np.max(activations[-1], axis=1, keepdims=True))
    probs = exp_values / np.sum(exp_values, axis=1, keepdims=True)
    n = len(y_batch)
    confidences = np.clip(probs[np.arange(n), y_batch], CLIP, 1 - CLIP)
    data_loss = float(np.mean(-np.log(confidences), dtype=np.float64))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y_batch))
    dvalues = probs.copy()
    dvalues[np.arange(n), y_batch] -= 1
    dvalues = dvalues / n
    grads = []
    for l in range(len(weights) - 1, -1, -1):
        grads.append((np.dot(activations[l].T, dvalues), np.sum(dvalues, axis=0)))
        if l > 0:
            dvalues = np.dot(dvalues, weights[l].T) * (activations[l] > 0)
    grads.reverse()
    correction_1 = 1 - beta_1 ** (iteration + 1)
    correction_2 = 1 - beta_2 ** (iteration + 1)
    for params, grad, momentums, cache in (
            [(w, g[0], m, c) for w, g, m, c in zip(weights, grads, weight_momentums, weight_cache)]
            + [(b, g[1], m, c) for b, g, m, c in zip(biases, grads, bias_momentums, bias_cache)]):
        momentums[...] = beta_1 * momentums + (1 - beta_1) * grad
        momentums[np.abs(momentums) < FLUSH] = 0
        cache[...] = beta_2 * cache + (1 - beta_2) * grad ** 2
        cache[cache < FLUSH] = 0
        params += -learning_rate * (momentums / correction_1) / (
            np.sqrt(cache / correction_2) + epsilon)
    return data_loss, accuracy
