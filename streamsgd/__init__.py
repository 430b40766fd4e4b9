"""streamsgd: mini-batch gradient descent on data larger than RAM, in fixed memory.

``streamsgd.fit(data, **options)`` trains on a Parquet/Zarr path or URL, or on ``(X, y)``
arrays, and returns a :class:`Model`; ``streamsgd.load(path)`` reads a model file. The
scikit-learn estimators ``StreamSGDClassifier`` and ``StreamSGDRegressor`` are imported on
first use, so ``import streamsgd`` does not need scikit-learn.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .api import fit, load  # noqa: E402
from .config import FitConfig  # noqa: E402
from .model import Model  # noqa: E402
from .sources import ArraySource, ParquetSource, open_source  # noqa: E402
from .train import FitResult  # noqa: E402

_ESTIMATORS = ("StreamSGDClassifier", "StreamSGDRegressor")


def __getattr__(name: str) -> Any:
    # scikit-learn is needed only by the estimators: import them (and it) when first asked for
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'streamsgd' has no attribute {name!r}")


__all__ = [
    "FitConfig", "FitResult", "Model", "load", "fit", "open_source", "ArraySource", "ParquetSource",
    "StreamSGDClassifier", "StreamSGDRegressor",
]
