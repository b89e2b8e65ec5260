"""Book chapter 16 (binary logistic regression) over several seeds: loopnet against the book's
own code, run in plain float32 numpy on the same data and the same initial weights.

    python scripts/book_ch16_seeds.py cpu 0,1,2,3,4      # loopnet on a device
    python scripts/book_ch16_seeds.py book 0,1,2,3,4     # plain numpy (benchmarks/book_numpy.py)

Why: the 10,000-epoch run is chaotic. A change of the last bit of one weight moves the final
accuracy by a few points (the book's code itself, with nnfs's float64 np.dot or without it, or
with weights rounded differently: 0.935-0.945 train, 0.900-0.920 held-out on the book's data), so
one seed cannot tell a bug from rounding. Over seeds, the two implementations must land in the
same band. (Step by step the numpy device follows the book's code to ~1e-7 in loss.)
"""
import os
import sys
import time

import numpy as np

import loopnet
from loopnet.datasets import spiral_data

# "book": the plain-numpy classes of benchmarks/book_numpy.py (the book's computations, float32)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import book_numpy as book  # noqa: E402


# --- The comparison ----------------------------------------------------------------------------
device = sys.argv[1]
seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3,4").split(",")]
for seed in seeds:
    np.random.seed(seed)
    X, y = spiral_data(100, 2); y = y.reshape(-1, 1)
    W1 = (0.01 * np.random.randn(2, 64)).astype(np.float32); W2 = (0.01 * np.random.randn(64, 1)).astype(np.float32)
    Xt, yt = spiral_data(100, 2); yt = yt.reshape(-1, 1)
    t = time.perf_counter()
    if device == "book":
        d1 = book.Layer_Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4)
        d1.weights = W1.copy()
        a1 = book.Activation_ReLU()
        d2 = book.Layer_Dense(64, 1)
        d2.weights = W2.copy()
        a2 = book.Activation_Sigmoid()
        lf = book.Loss_BinaryCrossentropy()
        opt = book.Optimizer_Adam(decay=5e-7)
        for epoch in range(10000):
            d1.forward(X); a1.forward(d1.output); d2.forward(a1.output); a2.forward(d2.output)
            lf.backward(a2.output, y); a2.backward(lf.dinputs); d2.backward(a2.dinputs); a1.backward(d2.dinputs); d1.backward(a1.dinputs)
            opt.pre_update_params(); opt.update_params(d1); opt.update_params(d2); opt.post_update_params()
        def acc(Xs, ys):
            d1.forward(Xs); a1.forward(d1.output); d2.forward(a1.output); a2.forward(d2.output)
            return np.mean((a2.output > 0.5) * 1 == ys)
        train_acc, val_acc = acc(X, y), acc(Xt, yt)
    else:
        m = loopnet.Model()
        m.add(loopnet.Dense(2, 64, weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4, device=device)); m.add(loopnet.ReLU(device=device))
        m.add(loopnet.Dense(64, 1, device=device)); m.add(loopnet.Sigmoid(device=device))
        m.set(loss=loopnet.BinaryCrossentropy(device=device), optimizer=loopnet.Adam(decay=5e-7), accuracy=loopnet.CategoricalAccuracy(binary=True))
        m.finalize(); m.layers[0].weights[...] = W1; m.layers[2].weights[...] = W2
        m.train(X, y, epochs=10000, print_every=0)
        train_acc = m.evaluate(X, y, verbose=False)[1]; val_acc = m.evaluate(Xt, yt, verbose=False)[1]
    print(f"{device} seed {seed}: train acc {train_acc:.3f}, held-out acc {val_acc:.3f} ({time.perf_counter()-t:.1f} s)", flush=True)
