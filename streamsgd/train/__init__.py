"""One training run: setup, the epoch loop, stopping rules, state and result.

``streamsgd.train.fit`` is the trainer's entry point below the API (``streamsgd.fit``);
:class:`WarmStart` and :class:`Hooks` are its two arguments beside the config."""

from .inputs import Checkpointing, FitResult, Hooks, WarmStart
from .trainer import fit

__all__ = ["Checkpointing", "FitResult", "Hooks", "WarmStart", "fit"]
