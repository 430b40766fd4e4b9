"""Before/after on a shared machine: one ``streamsgd`` command run from two source trees in turn.

``.venv/bin/python benchmarks/alternate.py --base /tmp/base --new . --rounds 3 -- fit DATA --target click
--model logistic --epochs 1 --batch 512`` runs the command (with ``--json --quiet -o`` a scratch model
added) from each tree alternately, base first, ``--rounds`` times, each in a fresh process with
``PYTHONPATH`` at that tree, after one untimed run of each (Numba compiles a new tree's kernels into
its own cache). Load drifts on these shared 2-core machines, so each round's two runs are paired:
the report gives every run's summary seconds, rows/s, peak RSS and loss, their medians, and the
median of each round's new/base ratio of seconds. A base tree is e.g. ``git worktree add --detach
/tmp/base REV``. The losses are printed so that a change meant to keep the model shows it did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import in_tree


def run(tree: Path, args: list[str], scratch: Path) -> dict[str, Any]:
    """One run of ``streamsgd ARGS`` from ``tree``: its summary."""
    out = in_tree(tree, ["-m", "streamsgd", *args, "--json", "--quiet", "-o", str(scratch)], "alternate",
                  cwd=scratch.parent)
    return json.loads(out.splitlines()[0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the source tree before the change")
    parser.add_argument("--new", type=Path, required=True, help="the source tree after it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="directory for alternate.json (every run's figures)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the streamsgd command and its options")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in trees.items():  # untimed: each tree's kernels compiled into its cache
            run(tree, command, Path(tmp) / f"{name}.npz")
        for r in range(args.rounds):
            for name, tree in trees.items():
                s = run(tree, command, Path(tmp) / f"{name}.npz")
                runs[name].append({"seconds": s["seconds"], "rows_per_second": s["rows_seen"] / s["seconds"],
                                   "peak_rss_mib": s["peak_rss_bytes"] / 2**20, "loss": s["loss"]})
                print(f"round {r + 1} {name}: {s['seconds']:.3f} s, {runs[name][-1]['rows_per_second']:,.0f} rows/s, "
                      f"peak RSS {runs[name][-1]['peak_rss_mib']:.0f} MiB, loss {s['loss']!r}", flush=True)
    report = {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "rows_per_second",
                                                                        "peak_rss_mib")}
              for name, rs in runs.items()}
    report["new_over_base_seconds"] = statistics.median(n["seconds"] / b["seconds"]
                                                        for n, b in zip(runs["new"], runs["base"]))
    report["same_loss"] = len({r["loss"] for rs in runs.values() for r in rs}) == 1
    report["runs"], report["load"], report["command"] = runs, os.getloadavg()[0], command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alternate.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "command")}))
    return report


if __name__ == "__main__":
    main()
