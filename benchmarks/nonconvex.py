"""The chapters' non-convex claims as curves: tests/test_nonconvex.py's three set-ups over more
starts and more batch sizes, plotted.

The set-ups (data, network, schedule, the Hessian's power iteration) are the test module's own,
loaded from its file, so a figure here and an assertion there measure the same thing:

  1. escape: from the starts where full-batch GD (300 updates) ends in the poor basin, the
     fraction that mini-batch GD (50 epochs, same η and schedule) ends in the better basin,
     for each b, with its binomial standard error, and the fraction that leaves the poor basin
     (at the smallest b some runs end on the constant plateau instead, the unit saturated);
  2. sharpness: λ_max and the held-out gap of the minimum a run reaches, against b, at the
     same η (0.25) and at the same η/b (1/160);
  3. the jagged curve: per-update losses (``--log-every 1``) for three b, from the test's
     trained starting network, and their variance against b with the σ²_ℓ/b · (N − b)/(N − 1)
     line.

Writes ``benchmarks/figures/nonconvex.png`` and ``--out``/nonconvex.json.

Usage:
  python benchmarks/nonconvex.py                # 480 starts, b = 2 … 64
  python benchmarks/nonconvex.py --starts 160   # faster (the test's starts)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from streamsgd.api import fit

HERE = Path(__file__).resolve().parent
FIGURE = HERE / "figures" / "nonconvex.png"


def claims() -> ModuleType:
    """tests/test_nonconvex.py, loaded from its file (the set-ups and the Hessian helper)."""
    spec = importlib.util.spec_from_file_location("test_nonconvex", HERE.parent / "tests" / "test_nonconvex.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def escape(t: ModuleType, starts: int, batches: list[int]) -> dict[str, Any]:
    X, y = t._clusters()
    poor = [s for s in range(starts)
            if t._basin(fit((X, y), batch=len(y), epochs=300, seed=s, **t.BASIN_RUN)) == "P"]
    rows = {}
    for b in batches:
        ends = [t._basin(fit((X, y), batch=b, epochs=50, seed=s, **t.BASIN_RUN)) for s in poor]
        p, left = ends.count("G") / len(poor), 1 - ends.count("P") / len(poor)
        rows[b] = {"escaped": ends.count("G"), "p": p, "se": math.sqrt(p * (1 - p) / len(poor)), "left_p": left,
                   "ends": "".join(ends)}
        print(f"  escape b = {b:3d}: {ends.count('G')}/{len(poor)} end in G, p = {p:.2f} +- {rows[b]['se']:.2f}; "
              f"{left:.2f} left P; ends {''.join(ends)}", flush=True)
    return {"starts": starts, "poor_starts": len(poor), "by_batch": rows}


def sharpness(t: ModuleType) -> dict[str, Any]:
    X, y, Xt, yt = t._teacher()
    n = len(y)
    runs = {"same_eta": [(b, 0.25, e) for b, e in ((8, 200), (32, 400), (128, 1000), (n, 2000))],
            "same_ratio": [(b, b / 160, 300) for b in (8, 16, 32, 64)]}
    out: dict[str, Any] = {}
    for name, specs in runs.items():
        out[name] = []
        for b, lr, epochs in specs:
            lam, train, test = t._minimum(X, y, Xt, yt, batch=b, lr=lr, epochs=epochs)
            out[name].append({"batch": b, "lr": lr, "epochs": epochs, "lambda_max": lam, "train": train, "test": test})
            print(f"  sharpness {name} b = {b:3d} lr {lr:.3g}: lambda_max {lam:.3f}, gap {test - train:.4f}",
                  flush=True)
    return out


def jagged(t: ModuleType, batches: list[int], updates: int = 600) -> dict[str, Any]:
    X, y = t._logistic_teacher()
    n = len(y)
    out: dict[str, Any] = {}
    start = t.stationary_start(X, y)
    for b in batches:
        losses, model = t.per_update_losses(X, y, start, b, updates)
        tail = np.array(losses[updates // 2:])
        predicted = float(t._row_losses(model, X, y).var()) / b * (n - b) / (n - 1)
        out[b] = {"losses": losses, "variance": float(tail.var(ddof=1)), "predicted": predicted}
        print(f"  jagged b = {b:3d}: variance {out[b]['variance']:.2e}, predicted {predicted:.2e}", flush=True)
    return out


def plot(esc: dict[str, Any], sharp: dict[str, Any], jag: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    bs = list(esc["by_batch"])
    ax[0, 0].errorbar(bs, [esc["by_batch"][b]["p"] for b in bs], [esc["by_batch"][b]["se"] for b in bs], marker="o",
                      label="ends in the better basin")
    ax[0, 0].plot(bs, [esc["by_batch"][b]["left_p"] for b in bs], "s--", label="leaves the poor basin")
    ax[0, 0].legend()
    ax[0, 0].set(xscale="log", xlabel="batch b (η = 1, 50 epochs)", ylabel="fraction of the starts",
                 title=f"from the {esc['poor_starts']} of {esc['starts']} starts where full-batch GD stays poor")
    for name, label in (("same_eta", "same η = 0.25"), ("same_ratio", "same η/b = 1/160")):
        rows = sharp[name]
        ax[0, 1].plot([r["batch"] for r in rows], [r["lambda_max"] for r in rows], "o-", label=f"λ_max, {label}")
        ax[0, 1].plot([r["batch"] for r in rows], [10 * (r["test"] - r["train"]) for r in rows], "s--",
                      label=f"10 x held-out gap, {label}")
    ax[0, 1].set(xscale="log", xlabel="batch b", title="minima reached (power iteration on H·v)")
    ax[0, 1].legend(fontsize=8)
    for b in (8, 128, 512):
        if b in jag:
            ax[1, 0].plot(jag[b]["losses"], lw=0.7, label=f"b = {b}")
    ax[1, 0].set(xlabel="update", ylabel="batch loss (progress record)", title="the jagged curve (--log-every 1)")
    ax[1, 0].legend()
    jb = list(jag)
    ax[1, 1].loglog(jb, [jag[b]["variance"] for b in jb], "o", label="measured (last 300 updates)")
    ax[1, 1].loglog(jb, [jag[b]["predicted"] for b in jb], "-", label="σ²_ℓ/b · (N−b)/(N−1)")
    ax[1, 1].set(xlabel="batch b", ylabel="variance of the per-update loss")
    ax[1, 1].legend()
    for a, ticks in ((ax[0, 0], bs), (ax[0, 1], sorted({r["batch"] for rows in sharp.values() for r in rows})),
                     (ax[1, 1], jb)):
        a.set_xticks(ticks, [str(b) for b in ticks])
        a.minorticks_off()
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=480)
    p.add_argument("--out", type=Path, default=HERE / "out")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    t = claims()
    result = {"escape": escape(t, args.starts, [2, 4, 8, 16, 32, 64]), "sharpness": sharpness(t),
              "jagged": jagged(t, [8, 32, 128, 512])}
    plot(result["escape"], result["sharpness"], result["jagged"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nonconvex.json").write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {FIGURE} in {time.perf_counter() - t0:.0f} s")
    return result


if __name__ == "__main__":
    main()
