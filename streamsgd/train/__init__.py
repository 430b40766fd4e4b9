"""One training run: setup, the epoch loop, stopping rules, state and result.

``streamsgd.train.fit`` is the trainer's entry point below the API (``streamsgd.fit``)."""

from .trainer import FitResult, fit

__all__ = ["FitResult", "fit"]
