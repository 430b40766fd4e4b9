"""Named codes and slots: one number per loss, optimizer and schedule, and arrays built by name."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from streamsgd import config
from streamsgd.compute import codes, loop

COMPUTE = Path(__file__).resolve().parents[1] / "streamsgd" / "compute"


@pytest.mark.parametrize("codes_of, names", [(codes.LOSSES, config.MODELS), (codes.OPTIMIZERS, config.OPTIMIZERS),
                                             (codes.SCHEDULES, config.SCHEDULES)])
def test_every_option_has_its_own_code(codes_of, names):
    """Each option name of config has a code, numbered 0 … n − 1 in the options' order (the
    numbers are stored in checkpoints' spec: they must not move)."""
    assert list(codes_of) == list(names)
    assert list(codes_of.values()) == list(range(len(names)))


def test_the_codes_are_the_ones_checkpoints_hold():
    assert (codes.LINEAR, codes.LOGISTIC, codes.POISSON, codes.QUANTILE, codes.SOFTMAX) == (0, 1, 5, 6, 7)
    assert (codes.SGD, codes.MOMENTUM, codes.ADAM, codes.ADAMW) == (0, 1, 4, 5)
    assert (codes.CONSTANT, codes.INVSCALING, codes.STEP, codes.COSINE) == (0, 1, 2, 3)


def _spec_values():
    return dict(loss=codes.HUBER, batch=64, schedule=codes.COSINE, average_from=9, n_rows=1000,
                optimizer=codes.ADAMW, warmup=3, total=40, step_every=5, noise=True, t0=7, blocks=1)


def test_pack_spec_puts_each_value_in_its_named_slot():
    spec = loop.pack_spec(**_spec_values())
    assert spec.dtype == np.int64 and spec.shape == (loop.N_SPEC,)
    assert spec[loop.LOSS_CODE] == codes.HUBER and spec[loop.SCHEDULE] == codes.COSINE
    assert spec[loop.OPTIMIZER] == codes.ADAMW and spec[loop.BATCH] == 64 and spec[loop.N_ROWS] == 1000
    assert spec[loop.AVERAGE_FROM] == 9 and spec[loop.WARMUP] == 3 and spec[loop.TOTAL] == 40
    assert spec[loop.STEP_EVERY] == 5 and spec[loop.NOISE] == 1 and spec[loop.T0] == 7 and spec[loop.BLOCKS] == 1
    with pytest.raises(TypeError):  # every slot is asked for by name, none defaults
        loop.pack_spec(**{k: v for k, v in _spec_values().items() if k != "t0"})


def test_pack_hyper_puts_each_value_in_its_named_slot():
    hyper = loop.pack_hyper(lr0=0.5, power_t=0.25, l2=1e-4, l1=0.0, param=1.35, beta1=0.9, beta2=0.999, eps=1e-8,
                            gamma=0.1)
    assert hyper.dtype == np.float64 and hyper.shape == (loop.N_HYPER,)
    assert (hyper[loop.LR0], hyper[loop.POWER_T], hyper[loop.L2], hyper[loop.PARAM]) == (0.5, 0.25, 1e-4, 1.35)
    assert (hyper[loop.BETA1], hyper[loop.BETA2], hyper[loop.EPS], hyper[loop.GAMMA]) == (0.9, 0.999, 1e-8, 0.1)


def test_pack_params_orders_the_arrays_by_slot():
    arrays = {name: np.full(2, k, dtype=np.float64) for k, name in
              enumerate(("theta", "theta_eff", "avg", "gw", "l1_q", "l1_u", "cw", "classes"))}
    params = loop.pack_params(**arrays)
    assert len(params) == loop.N_PARAMS
    for slot, name in ((loop.THETA, "theta"), (loop.GW, "gw"), (loop.L1_U, "l1_u"), (loop.CLASSES, "classes")):
        assert params[slot] is arrays[name]


def test_a_slot_left_out_is_refused():
    with pytest.raises(AssertionError, match="do not fill"):
        loop._packed({0: 1.0, 2: 3.0}, 3, np.float64)


#: variables and arrays that hold a code: they are compared against names, never numbers
CODE_HOLDERS = {"loss", "kind", "schedule"}


def _bare_code_comparisons(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        holder = (isinstance(left, ast.Name) and left.id in CODE_HOLDERS) or (
            isinstance(left, ast.Subscript) and isinstance(left.value, ast.Name) and left.value.id == "spec")
        if holder and any(isinstance(c, ast.Constant) and isinstance(c.value, int) for c in node.comparators):
            yield f"{path.name}:{node.lineno}"


def test_kernels_compare_codes_by_name():
    found = [hit for path in sorted(COMPUTE.glob("*.py")) for hit in _bare_code_comparisons(path)]
    assert found == []


def test_the_check_sees_a_bare_code(tmp_path):
    """The AST check above would notice ``if loss == 5``."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f(loss, spec):\n    if loss == 5:\n        return spec[2] == 1\n")
    assert len(list(_bare_code_comparisons(probe))) == 2
