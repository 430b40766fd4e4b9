"""The hashed-feature kernel alone, before and after a change: real windows captured once, replayed by two trees.

``.venv/bin/python benchmarks/kernel_replay.py --base /tmp/base --new . DATA --target click`` fits one
epoch of DATA (logistic, batch 512, the other options at their defaults) from the ``--new`` tree
and captures the trainer's compiled calls that start a window (``train_rows_hashed``'s arguments:
the window in training order, the state as it stood), every ``--every``-th of them, up to
``--windows``. Each tree then replays every captured call on a fresh copy of its state over the
whole window, in a child process with ``PYTHONPATH`` at that tree, the trees taking turns for
``--rounds`` rounds, ``--reps`` replays a round, the hashed state in the product's layout
(``as_trained``). The report gives each tree's nanoseconds a row
(minimum and median over all replays) and the median of the rounds' new/base ratios of their
minimums.

Why: end to end, a fit's time on these shared 2-core machines spreads more than a kernel change
moves it (benchmarks/alternate.py), and the readers share the cores. The kernel alone on the same
rows and the same state, in one child a tree, measures what the change did to the kernel. The
replay is valid for changes inside the kernel that keep its arguments. The captures are pickled
arrays: a few hundred MB for ctr.py's files, in a temporary directory.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import hashed_kernel_through, in_tree

#: Arguments of ``sparse.train_rows_hashed`` the replay reads or sets: the window's row order,
#: where in it the call starts, the update at which it stops, the spec (scalar or softmax) and
#: the hashed state.
ORDER, POS, STOP_AT, SPEC, HASHED = 5, 6, 8, 9, 18
#: ``stop_at`` that never stops: the replay trains the whole window.
NEVER = -1


def capture(data: str, target: str, every: int, windows: int, out: Path) -> int:
    """Fit one epoch of ``data`` and pickle the captured calls to ``out``; returns their rows."""
    import streamsgd
    from streamsgd.config import FitConfig
    from streamsgd.train import trainer

    captured: list[tuple[Any, ...]] = []
    starts = [0]

    def capturing(kernel: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            if a[POS] == 0:  # a window's first call
                starts[0] += 1
                if (starts[0] - 1) % every == 0 and len(captured) < windows:
                    captured.append(copy.deepcopy(a))
            return kernel(*a)

        return call

    with hashed_kernel_through(capturing):
        trainer.fit(streamsgd.open_source(data, target=target), FitConfig(epochs=1, batch=512, model="logistic"))
    if not captured:
        sys.exit(f"kernel_replay: {data}: no call of the hashed kernel (does it have categorical columns?)")
    with open(out, "wb") as f:
        pickle.dump(captured, f, protocol=5)
    return sum(int(a[ORDER].size) for a in captured)


def as_trained(hashed: tuple[Any, ...]) -> tuple[Any, ...]:
    """A copy of a captured hashed state in the layout the product trains on: ``pack_hashed``'s
    slab, whose columns share cache lines. A deep copy (or a pickle) gives each column an array
    of its own, four misses a touch where the product takes one, and times another kernel."""
    from streamsgd.compute.sparse import HQ, HW, pack_hashed

    fresh = pack_hashed(0, hashed[HW].shape[0], extra=hashed[HQ].size > 0)
    for to, captured in zip(fresh, hashed):
        to[...] = captured
    return fresh


def replay(path: Path, reps: int) -> dict[str, Any]:
    """Nanoseconds a row of each replay of every captured call (this process's tree's kernel),
    after one untimed replay that loads (or compiles) it, and the rows a replay trained."""
    from streamsgd.compute.sparse_multi import hashed_kernels

    with open(path, "rb") as f:
        captured = pickle.load(f)
    out = []
    for rep in range(reps + 1):
        seconds, rows = 0.0, 0
        for args in captured:
            a = [as_trained(x) if i == HASHED else copy.deepcopy(x) for i, x in enumerate(args)]
            a[STOP_AT] = NEVER
            kernel = hashed_kernels(a[SPEC])[1]
            t0 = time.perf_counter()
            pos = kernel(*a)
            seconds += time.perf_counter() - t0
            rows += int(pos) - int(args[POS])
        if rep:
            out.append(seconds / rows * 1e9)
    return {"ns_per_row": out, "rows": rows}


def child(tree: Path, argv: list[str]) -> Any:
    """This script run with ``argv`` in a child process whose ``streamsgd`` is ``tree``'s: the
    JSON of its last line."""
    return json.loads(in_tree(tree, [__file__, *argv], "kernel_replay").splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="a Parquet file with categorical columns")
    parser.add_argument("--target", default="click")
    parser.add_argument("--base", type=Path, help="the source tree before the change")
    parser.add_argument("--new", type=Path, help="the source tree after it (captures the windows)")
    parser.add_argument("--every", type=int, default=3, help="capture every k-th window (default 3)")
    parser.add_argument("--windows", type=int, default=3, help="windows to capture (default 3)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="replays a round and tree (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="directory for kernel_replay.json")
    parser.add_argument("--capture", type=Path, help=argparse.SUPPRESS)  # the children's parts
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.capture is not None:
        print(json.dumps(capture(args.data, args.target, args.every, args.windows, args.capture)))
        return {}
    if args.replay is not None:
        print(json.dumps(replay(args.replay, args.reps)))
        return {}
    if args.data is None or args.base is None or args.new is None:
        parser.error("DATA, --base and --new are required")
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[float]] = {name: [] for name in trees}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        pickled = Path(tmp) / "windows.pickle"
        rows = int(child(trees["new"], ["--capture", str(pickled), args.data, "--target", args.target,
                                        "--every", str(args.every), "--windows", str(args.windows)]))
        for r in range(args.rounds):
            mins = {}
            for name, tree in trees.items():
                replayed = child(tree, ["--replay", str(pickled), "--reps", str(args.reps)])
                if replayed["rows"] != rows:  # a kernel that stopped short, or another tree's reading of the arguments
                    sys.exit(f"kernel_replay: {tree}: replayed {replayed['rows']} rows of the windows' {rows}")
                ns = replayed["ns_per_row"]
                runs[name] += ns
                mins[name] = min(ns)
                print(f"round {r + 1} {name}: " + ", ".join(f"{x:.0f}" for x in ns) + " ns a row", flush=True)
            ratios.append(mins["new"] / mins["base"])
    report: dict[str, Any] = {name: {"min_ns_per_row": min(ns), "median_ns_per_row": statistics.median(ns)}
                              for name, ns in runs.items()}
    report["new_over_base"] = statistics.median(ratios)
    report["rows_per_replay"], report["load"] = rows, os.getloadavg()[0]
    report["runs"] = runs
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_replay.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return report


if __name__ == "__main__":
    main()
