"""The defaults train well without tuning: streamsgd.fit with no options gets within a small
relative gap of the exact optimum of the same objective on real scikit-learn data sets.

The cases, the optimum (closed-form ridge / LogisticRegression at C = 1/(N l2) on standardised
features) and the gap (F_sgd - F_opt) / F_opt come from benchmarks/defaults.py, which prints the
full table (`.venv/bin/python benchmarks/defaults.py`). Everything is seeded (split, bootstrap,
shuffle), and the real-size cases have N < batch, so their runs are full-batch and deterministic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"
DEFAULT_CASES = ["diabetes", "diabetes_x512", "breast_cancer", "breast_cancer_x512", "rare_onehot", "large_counts",
                 "diabetes:huber"]
#: Fixed budgets the tests ask for: (epochs, batch) -> the data sets run with it.
BUDGETS = {(5, 32): ["rare_onehot"], (20, 32): ["diabetes"]}


def rows_of(tmp: Path, cases: list[str], *options: str) -> dict[str, dict]:
    """benchmarks/defaults.py's rows for ``cases``, run as ``make bench`` runs it (tests never
    import a benchmark script); a failed case is a row with ``passed`` false, not an error."""
    out = tmp / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", *cases, *options, "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1) and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {row["dataset"]: row for row in json.loads(out.read_text())}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[tuple, dict]:
    """Every row the tests read, keyed by (data set, epochs, batch); (name, None, None) for the defaults."""
    found = {(name, None, None): row for name, row in rows_of(tmp_path_factory.mktemp("defaults"),
                                                              DEFAULT_CASES).items()}
    for (epochs, batch), cases in BUDGETS.items():
        budget = rows_of(tmp_path_factory.mktemp("budget"), cases, "--epochs", str(epochs), "--batch", str(batch))
        found.update({(name, epochs, batch): row for name, row in budget.items()})
    return found


@pytest.fixture
def gap(rows):
    return lambda name: rows[(name, None, None)]["gap"]


@pytest.fixture
def held_out_gap(rows):
    def held_out(name: str, epochs: int | None = None, batch: int | None = None) -> float:
        row = rows[(name, epochs, batch)]
        assert row["passed"] == (row["test_gap"] <= (0.05 if epochs else 0.02))
        return row["test_gap"]
    return held_out


def test_diabetes_linear_defaults_reach_the_ridge_optimum(gap):
    # 353 training rows < batch 512: full-batch gradient descent, deterministic. The problem is
    # well conditioned (kappa ~ 500 at l2 = 1e-4): the constant-step defaults land at 0.00 %. 0.5 % still fails a step ten times too small (0.56 %), a missing intercept
    # update or a broken standardisation (F(0) is 960 % above the optimum).
    assert gap("diabetes") < 0.005


def test_diabetes_streaming_regime_defaults(gap):
    # 262,144 rows resampled from diabetes, B = 512 << N: real mini-batch noise. Measured 0.12 %
    # with invscaling, 0.14-0.19 % with a constant step (its noise floor at B = 512). 1 % leaves
    # room for either schedule and for the seed; it guards the mini-batch path against gross
    # breakage (wrong 1/B scaling, stale weights), not fine tuning: a 4x smaller step (0.47 %)
    # still passes.
    assert gap("diabetes_x512") < 0.01


def test_breast_cancer_logistic_defaults_within_five_percent(gap):
    # The project's target: "within a few percent of the optimum objective". Breast cancer is
    # the hard case among the bundled sets: 30 strongly collinear features, nearly separable
    # classes (F_opt = 0.038, Hessian condition number ~ 3e4), so a first-order method needs
    # ~10^4 well-sized steps. Full batch (455 rows < 512), deterministic: no flakiness margin
    # is needed beyond the target itself.
    assert gap("breast_cancer") < 0.05


def test_breast_cancer_streaming_regime_defaults_within_five_percent(gap):
    # 262,144 resampled rows, B = 512 << N; same target and reasoning as above.
    assert gap("breast_cancer_x512") < 0.05


# -- issue 13: the public suite, a quick subset (benchmarks/defaults.py --quick runs more) ---------
# Pass mark: the held-out mean loss within 2 % of the exact solver's with the defaults, 5 % with
# a user-fixed budget. Each case is deterministic (seeded split, shuffle and data), so the measured
# figures below are what the assertions see; the margins are the issue's, not ours.

def test_rare_one_hot_column_defaults_and_budget(held_out_gap):
    # 6 rows in 16,000 training rows hold the one-hot column: the default step must follow
    # their standardised ‖z‖² ~ 2,700, which a row sample misses (measured: 0.00 % both ways;
    # stepping for the sample's worst row, the same fit diverged)
    assert held_out_gap("rare_onehot") < 0.02
    assert held_out_gap("rare_onehot", epochs=5, batch=32) < 0.05


def test_large_counts_poisson_defaults(held_out_gap):
    # counts with means up to thousands (breast-cancer features, e^(4 + 0.6 z)): measured
    # -0.47 % (SGD's held-out half deviance slightly below the exact optimum's); the old
    # default step, sized for e^z at z = 0 or the mean count, blew up on such data
    assert held_out_gap("large_counts") < 0.02


def test_huber_and_linear_defaults_and_a_budget_on_diabetes(held_out_gap):
    # measured: huber -4.0 % (SGD's model generalises slightly better than the optimum's),
    # linear 0.00 % with the defaults and 1.56 % with --epochs 20 --batch 32
    assert held_out_gap("diabetes:huber") < 0.02
    assert held_out_gap("diabetes", epochs=20, batch=32) < 0.05
