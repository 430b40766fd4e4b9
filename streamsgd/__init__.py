"""streamsgd: mini-batch gradient descent on data larger than RAM, in fixed memory."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FitConfig  # noqa: E402
from .model import Model, load  # noqa: E402
from .sources import ArraySource, ParquetSource, open_source  # noqa: E402
from .train import FitResult, fit  # noqa: E402

__all__ = ["FitConfig", "FitResult", "Model", "load", "fit", "open_source", "ArraySource", "ParquetSource"]
