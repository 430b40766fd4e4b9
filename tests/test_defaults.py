"""The defaults train well without tuning: streamsgd.fit with no options gets within a small
relative gap of the exact optimum of the same objective on real scikit-learn data sets.

The cases, the optimum (closed-form ridge / LogisticRegression at C = 1/(N l2) on standardised
features) and the gap (F_sgd - F_opt) / F_opt come from benchmarks/defaults.py, which prints the
full table (`.venv/bin/python benchmarks/defaults.py`). Everything is seeded (split, bootstrap,
shuffle), and the real-size cases have N < batch, so their runs are full-batch and deterministic.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

_spec = importlib.util.spec_from_file_location(
    "streamsgd_bench_defaults", Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(bench)


def gap(name: str) -> float:
    return bench.evaluate(bench.CASES_BY_NAME[name])["gap"]


def test_diabetes_linear_defaults_reach_the_ridge_optimum():
    # 353 training rows < batch 512: full-batch gradient descent, deterministic. The problem is
    # well conditioned (kappa ~ 500 at l2 = 1e-4): the constant-step defaults land at 0.00 %. 0.5 % still fails a step ten times too small (0.56 %), a missing intercept
    # update or a broken standardisation (F(0) is 960 % above the optimum).
    assert gap("diabetes") < 0.005


def test_diabetes_streaming_regime_defaults():
    # 262,144 rows resampled from diabetes, B = 512 << N: real mini-batch noise. Measured 0.12 %
    # with invscaling, 0.14-0.19 % with a constant step (its noise floor at B = 512). 1 % leaves
    # room for either schedule and for the seed; it guards the mini-batch path against gross
    # breakage (wrong 1/B scaling, stale weights), not fine tuning: a 4x smaller step (0.47 %)
    # still passes.
    assert gap("diabetes_x512") < 0.01


def test_breast_cancer_logistic_defaults_within_five_percent():
    # The project's target: "within a few percent of the optimum objective". Breast cancer is
    # the hard case among the bundled sets: 30 strongly collinear features, nearly separable
    # classes (F_opt = 0.038, Hessian condition number ~ 3e4), so a first-order method needs
    # ~10^4 well-sized steps. Full batch (455 rows < 512), deterministic: no flakiness margin
    # is needed beyond the target itself.
    assert gap("breast_cancer") < 0.05


def test_breast_cancer_streaming_regime_defaults_within_five_percent():
    # 262,144 resampled rows, B = 512 << N; same target and reasoning as above.
    assert gap("breast_cancer_x512") < 0.05
