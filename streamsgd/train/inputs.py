"""What a caller hands the trainer beside the config and the data, and what it gets back.

:class:`WarmStart` says where the parameters start (a model, its update count, its
classes); :class:`Hooks` says who hears about the run (a metrics file, a progress callback,
a checkpoint writer and a stop flag). Neither changes which rows are trained on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from numpy.typing import NDArray

from ..persist.model import Model


@dataclass
class FitResult:
    model: Model
    summary: dict[str, Any]


@dataclass(frozen=True)
class WarmStart:
    """A run that continues from a model instead of from zero.

    ``init``: its parameters and its standardisation (the step size is chosen afresh unless
    ``lr`` is set). ``step_offset``: updates already made to ``init`` (``partial_fit``), so
    the learning-rate schedule continues instead of starting again. ``classes``: softmax
    only, the class labels fixed by the caller instead of found in the data (a batch may lack
    some); a label of the data outside them is refused. A softmax ``init`` fixes them too.
    """

    init: Model | None = None
    step_offset: int = 0
    classes: Sequence[Any] | NDArray | None = None


@dataclass
class Checkpointing:
    """When and where the trainer hands its state over (``save`` gets the state arrays).

    A checkpoint is taken every ``every`` updates, every ``seconds`` of training (checked
    between compiled calls, at batch boundaries), at the end of each epoch, and when
    ``stop`` is set, after which the run raises :class:`~streamsgd.errors.RunStopped`.
    """

    save: Callable[[dict[str, NDArray]], None] | None = None
    every: int | None = None
    seconds: float | None = None
    stop: threading.Event | None = None


@dataclass
class Hooks:
    """Who hears about a run: ``metrics``, a JSON-lines file progress and epoch records are
    appended to; ``on_progress``, called with each record as it is written (the CLI's
    progress bar); ``checkpointing``, when to hand the state to a writer, and a stop flag."""

    metrics: str | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    checkpointing: Checkpointing = field(default_factory=Checkpointing)
    #: where a run on shards computes its rounds (``train.shards.BackendFactory``): None runs
    #: ``--shards`` in this process; the doors pass a cluster's for --workers/--scheduler
    backend: Callable[[Any], Any] | None = None
