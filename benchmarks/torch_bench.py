"""PyTorch (eager, CPU) side of the benchmarks, run by ``bench.py`` in a process of its own
(so PyTorch's OpenMP threads never compete with numba's or OpenBLAS's inside one process)::

    python benchmarks/torch_bench.py '{"ops": ..., "spiral": ..., "mnist": ..., "models": ...}'

Two threads, flush-denormal on. Prints one JSON line: ``torch`` (the version), ``ops``
(per-call medians of the dense products), ``train`` (seconds per epoch, or the total of the
10,001-epoch run) and ``models`` (seconds per epoch of each ``book_models`` spec).
Every section is optional.
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench import median_time  # noqa: E402  (the main process's timing, pause and warm-up)
from book_models import MODELS, model_data, optimizer_settings, per_epoch_median  # noqa: E402

torch.set_num_threads(2)
torch.set_flush_denormal(True)


def dense_ops(shapes, repeats):
    out = {}
    g = torch.Generator().manual_seed(0)
    for M, K, N in shapes:
        x = torch.randn(M, K, generator=g)
        w = torch.randn(K, N, generator=g)
        b = torch.randn(N, generator=g)
        d = torch.randn(M, N, generator=g)
        out[f"{M}x{K}x{N}"] = {
            "forward": median_time(lambda: torch.addmm(b, x, w), repeats),
            "dweights": median_time(lambda: x.T @ d, repeats),
            "dinputs": median_time(lambda: d @ w.T, repeats),
        }
    return out


# --- the spiral and MNIST-size classifiers (Adam, cross-entropy) ------------------------------

def mlp(sizes):
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def epochs(X, y, sizes, n_epochs, batch_size=None, lr=0.05):
    X = torch.from_numpy(X)
    y = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    net = mlp(sizes)
    opt = torch.optim.Adam(net.parameters(), lr=lr, eps=1e-7)
    n = X.shape[0]
    bs = n if batch_size is None else batch_size

    def one():
        for start in range(0, n, bs):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(X[start:start + bs]), y[start:start + bs])
            loss.backward()
            opt.step()

    t = time.perf_counter()
    for _ in range(n_epochs):
        one()
    return (time.perf_counter() - t) / n_epochs


# --- the book's models ------------------------------------------------------------------------

def book_model(spec):
    """``(net, penalized)``: the layers up to the output activation's input (the losses below
    take logits), and the ``(Linear, l2)`` pairs whose penalty joins the loss."""
    layers, penalized = [], []
    for kind, *args in spec["layers"]:
        if kind == "dense":
            linear = torch.nn.Linear(args[0], args[1])
            layers.append(linear)
            if args[2]:
                penalized.append((linear, args[2]))
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(args[0]))
    return torch.nn.Sequential(*layers), penalized


def book_trainer(spec):
    """A function training ``k`` full-batch epochs of the spec, each as ``Model.train``'s
    epoch: forward, data loss + L2 penalty (l2 * sum of squares, the book's form), backward,
    the optimizer step with the learning rate ``lr / (1 + decay * step)``, and the epoch's
    loss and accuracy read back as Python floats."""
    X_np, y_np = model_data(spec)
    X = torch.from_numpy(X_np)
    torch.manual_seed(0)
    net, penalized = book_model(spec)
    net.train()
    name, hyper = optimizer_settings(spec)
    if name == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=hyper["learning_rate"],
                               betas=(hyper["beta_1"], hyper["beta_2"]), eps=hyper["epsilon"])
    else:
        opt = torch.optim.SGD(net.parameters(), lr=hyper["learning_rate"],
                              momentum=hyper["momentum"])
    loss_name, accuracy_name = spec["loss"], spec["accuracy"]
    if loss_name == "categorical_crossentropy":
        y = torch.from_numpy(y_np.astype(np.int64))
    else:
        y = torch.from_numpy(y_np.astype(np.float32))
    precision = float(np.std(y_np)) / 250
    lr0, decay = hyper["learning_rate"], hyper["decay"]
    state = {"step": 0}

    def run(k):
        for _ in range(k):
            if decay:
                for group in opt.param_groups:
                    group["lr"] = lr0 / (1.0 + decay * state["step"])
            opt.zero_grad(set_to_none=True)
            out = net(X)
            if loss_name == "categorical_crossentropy":
                data_loss = F.cross_entropy(out, y)
            elif loss_name == "binary_crossentropy":
                data_loss = F.binary_cross_entropy_with_logits(out, y)
            else:
                data_loss = F.mse_loss(out, y)
            loss = data_loss
            for linear, l2 in penalized:
                loss = loss + l2 * (linear.weight.pow(2).sum() + linear.bias.pow(2).sum())
            loss.backward()
            opt.step()
            state["step"] += 1
            with torch.no_grad():
                if accuracy_name == "categorical":
                    accuracy = (out.argmax(dim=1) == y).float().mean()
                elif accuracy_name == "binary":
                    accuracy = ((out > 0).float() == y).float().mean()
                else:
                    accuracy = ((out - y).abs() < precision).float().mean()
            loss.item()
            accuracy.item()

    return run


def main():
    args = json.loads(sys.argv[1])
    out = {"torch": torch.__version__, "ops": {}, "train": {}, "models": {}}
    if args.get("ops"):
        out["ops"] = dense_ops(args["ops"]["shapes"], args["ops"]["repeats"])
    from loopnet.datasets import spiral_data

    for name, spc, n_epochs in args.get("spiral", []):
        X, y = spiral_data(spc, 3, seed=0)
        epochs(X, y, [2, 64, 3], 20)
        out["train"][name] = epochs(X, y, [2, 64, 3], n_epochs)
    if args.get("full_run"):
        X, y = spiral_data(100, 3, seed=0)
        t = time.perf_counter()
        epochs(X, y, [2, 64, 3], 10001)
        out["train"]["spiral 10,001 epochs"] = time.perf_counter() - t
    if args.get("mnist"):
        X = np.load(args["mnist"]["x"])
        y = np.load(args["mnist"]["y"])
        epochs(X[:1280], y[:1280], [784, 128, 10], 1, 128, 1e-3)
        out["train"]["mnist epoch"] = epochs(X, y, [784, 128, 10], args["mnist"]["epochs"], 128,
                                             1e-3)
    for name in args.get("models", []):
        seconds, _ = per_epoch_median(book_trainer(MODELS[name]),
                                      block_seconds=args.get("block_seconds", 0.25),
                                      repeats=args.get("repeats", 5))
        out["models"][name] = seconds
    print(json.dumps(out))


if __name__ == "__main__":
    main()
