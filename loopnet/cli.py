"""The ``loopnet`` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _forward(args) -> int:
    import numpy as np

    import loopnet

    X, y = loopnet.datasets.spiral_data(args.samples, args.classes, seed=args.seed)
    rng = np.random.RandomState(args.seed)
    with loopnet.device(args.device):
        start = time.perf_counter()
        dense1 = loopnet.Dense(2, 3, seed=rng)
        dense2 = loopnet.Dense(3, args.classes, seed=rng)
        probabilities = loopnet.Softmax().forward(
            dense2.forward(loopnet.ReLU().forward(dense1.forward(X))))
        loss = loopnet.CategoricalCrossentropy().calculate(probabilities, y)
        acc = loopnet.ops.accuracy(probabilities, y)
        elapsed = time.perf_counter() - start
    print(f"device: {args.device}, samples: {len(X)}, loss: {loss:.7f}, acc: {acc:.3f}, "
          f"time: {elapsed:.3f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    forward = sub.add_parser("forward", help="the notes' forward pass on spiral data, printing the loss")
    forward.add_argument("--device", default="cpu")
    forward.add_argument("--samples", type=int, default=100)
    forward.add_argument("--classes", type=int, default=3)
    forward.add_argument("--seed", type=int, default=0)
    forward.set_defaults(run=_forward)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"loopnet: error: {err}", file=sys.stderr)
        return 2
