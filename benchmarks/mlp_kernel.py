"""What one MLP batch costs: the Numba kernel's forward + backward per row against NumPy matmuls.

One command: ``.venv/bin/python benchmarks/mlp_kernel.py`` (d = 100, hidden 64, batch 512,
logistic loss, ReLU). In-memory float32 rows, no I/O: ``compute.mlp.batch_gradient`` over every
batch of the rows, and the same network written with NumPy matrix products (float32, as a
framework computes; BLAS limited to ``--threads``, 1 by default, as the kernel is), interleaved,
median of ``--runs``. Prints ns/row for both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from streamsgd.compute import mlp

NO_WEIGHTS = np.zeros(0)


def numba_pass(X, y, net, theta, grad, ws, batch):
    """Forward + backward of every batch, the gradient summed per batch as the trainer would."""
    for lo in range(0, X.shape[0], batch):
        grad[:] = 0.0
        mlp.batch_gradient(X, y, NO_WEIGHTS, lo, min(lo + batch, X.shape[0]), net, theta, grad, ws)


def numpy_pass(X, y, layers, batch):
    """The same network and logistic loss with float32 NumPy matmuls (ReLU hidden layers)."""
    for lo in range(0, X.shape[0], batch):
        acts = [X[lo:lo + batch]]
        for W, b in layers[:-1]:
            acts.append(np.maximum(acts[-1] @ W + b, 0.0))
        z = acts[-1] @ layers[-1][0] + layers[-1][1]
        delta = 1.0 / (1.0 + np.exp(-z)) - y[lo:lo + batch, None]
        for k in range(len(layers) - 1, -1, -1):
            acts[k].T @ delta, delta.sum(axis=0)  # the layer's weight and bias gradients
            if k:
                delta = (delta @ layers[k][0].T) * (acts[k] > 0.0)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131_072)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--hidden", default="64", help="widths, comma-separated")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for the NumPy twin")
    args = parser.parse_args(argv)
    hidden = [int(w) for w in args.hidden.split(",")]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.features)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)
    lay = mlp.layout(args.features, hidden, 1)
    theta = mlp.init_params(lay, rng)
    net = mlp.network(lay, "relu", "logistic")
    ws, grad = mlp.workspace(args.batch, lay), np.zeros_like(theta)
    layers = [(theta[w:w + i * o].reshape(o, i).T.astype(np.float32), theta[b:b + o].astype(np.float32))
              for i, o, w, b in lay]
    numba_pass(X[:args.batch], y, net, theta, grad, ws, args.batch)  # compile (or load the cache)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
    except ImportError:  # numpy's BLAS then uses its own default threads
        limits = None
    numba_s, numpy_s = [], []
    for _ in range(args.runs):
        numba_s.append(timed(lambda: numba_pass(X, y, net, theta, grad, ws, args.batch)))
        numpy_s.append(timed(lambda: numpy_pass(X, y, layers, args.batch)))
    if limits is not None:
        limits.restore_original_limits()
    result = {"numba_ns_per_row": statistics.median(numba_s) / args.rows * 1e9,
              "numpy_ns_per_row": statistics.median(numpy_s) / args.rows * 1e9}
    result["ratio"] = result["numpy_ns_per_row"] / result["numba_ns_per_row"]
    print(f"d={args.features} hidden={args.hidden} batch={args.batch}, median of {args.runs}: "
          f"numba {result['numba_ns_per_row']:.0f} ns/row, numpy matmuls {result['numpy_ns_per_row']:.0f} "
          f"ns/row ({args.threads} BLAS thread(s)); ratio (numpy time / numba time) {result['ratio']:.2f}")
    return result


if __name__ == "__main__":
    main()
