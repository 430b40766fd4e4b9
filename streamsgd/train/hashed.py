"""A run with categorical columns: what it refuses, the encoding it fixes, what its model holds.

The hashed weights train in the compiled loop beside the dense block (``compute.sparse``);
this module is the trainer's side of them: one line per option the sparse kernels do not
serve yet (each a :class:`~streamsgd.errors.UsageError` naming the option), the run's
:class:`~streamsgd.sources.encoding.Encoding` set on the source before any window is read,
and the model's hashed weights with every lazy scale folded in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..compute.loop import AVERAGED
from ..compute.sparse import folded
from ..config import FitConfig
from ..errors import UsageError
from ..sources import Source
from ..sources.encoding import Encoding
from .state import State

#: Models whose output is one margin: the sparse kernels serve them (softmax's C margins not yet).
SCALAR_MODELS = ("linear", "logistic", "poisson", "huber", "hinge", "modified_huber", "quantile")
#: Optimizers with an exact O(nnz) update of the hashed weights (compute.sparse).
SPARSE_OPTIMIZERS = ("sgd", "adagrad")


def categorical_columns(source: Source) -> list[str]:
    """The source's hashed columns (none for sources that have no categorical reader)."""
    return list(getattr(source, "categorical", ()))


def check(source: Source, config: FitConfig, init: Any) -> None:
    """Refuse, in one line naming the option, what the sparse kernels do not serve yet."""
    columns = categorical_columns(source)
    if config.interactions and not columns:
        raise UsageError(f"--interactions: {source.url} has no categorical column to cross; drop --interactions")
    if not columns:
        return
    shown = ", ".join(columns[:5]) + (", …" if len(columns) > 5 else "")
    fix = f"or leave the categorical columns ({shown}) out with --exclude"
    refusals = [
        (config.model not in SCALAR_MODELS, f"--model {config.model}: categorical columns train with models of one "
                                            f"output ({', '.join(SCALAR_MODELS)}) for now; {fix}"),
        (bool(config.hidden), f"--hidden: an MLP does not take categorical columns yet; drop --hidden {fix}"),
        (config.optimizer not in SPARSE_OPTIMIZERS, f"--optimizer {config.optimizer}: categorical columns train with "
                                                    f"--optimizer sgd or adagrad; {fix}"),
        (config.optimizer == "adagrad" and config.l2 > 0, "--l2: adagrad with categorical columns has no exact lazy "
                                                          "L2 (every weight would move at every update); give --l2 0 "
                                                          "or --optimizer sgd"),
        (config.l1 > 0, f"--l1: not yet with categorical columns; give --l1 0 {fix}"),
        (init is not None, "--init: a warm start does not carry hashed weights yet; start without --init"),
    ]
    for refused, message in refusals:
        if refused:
            raise UsageError(message)


def encode(source: Source, config: FitConfig) -> Encoding | None:
    """Fix the run's encoding on ``source`` (before any window is read): None without
    categorical columns."""
    columns = categorical_columns(source)
    if not columns:
        return None
    pairs = [tuple(p.split(":")) for p in config.interactions or ()]
    bad = [":".join(p) for p in pairs if len(p) != 2]
    if bad:
        raise UsageError(f"--interactions {bad[0]}: expected two categorical columns as a:b; fix --interactions")
    encoding = Encoding.of(columns, config.hash_bits, config.seed, pairs)  # type: ignore[arg-type]
    source.encode(encoding)  # type: ignore[attr-defined]
    return encoding


def model_fields(source: Source, st: State) -> tuple[NDArray[np.float64] | None, dict[str, Any]]:
    """The model's hashed weights (the Polyak mean when averaging ran) and its metadata entry."""
    hashed, encoding = st.hashed(), getattr(source, "encoding", None)
    if hashed is None or encoding is None:
        return None, {}
    return folded(hashed, int(st.counters[AVERAGED])), {"categorical": encoding.to_json()}
