"""streamsgd: mini-batch gradient descent on data larger than RAM, in fixed memory.

``streamsgd.fit(data, **options)`` trains on a Parquet/Zarr path or URL, or on ``(X, y)``
arrays, and returns a :class:`Model`; ``streamsgd.load(path)`` reads a model file. The
scikit-learn estimators ``StreamSGDClassifier`` and ``StreamSGDRegressor`` are imported on
first use, so ``import streamsgd`` does not need scikit-learn.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it. Imported on first use, so that the command
#: line starts without loading Numba, pyarrow or scikit-learn until a command needs them.
_EXPORTS = {
    "fit": "api", "load": "api", "batches": "api", "Batch": "pipeline.batches", "FitConfig": "config",
    "Model": "persist.model", "FitResult": "train",
    "open_source": "sources", "ArraySource": "sources", "ParquetSource": "sources",
    "StreamSGDClassifier": "integrations.sklearn", "StreamSGDRegressor": "integrations.sklearn",
}


#: Public names that need an optional extra -> the extra, for the install hint.
_EXTRAS = {"StreamSGDClassifier": "sklearn", "StreamSGDRegressor": "sklearn"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        try:
            module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        except ImportError as exc:
            if name not in _EXTRAS:
                raise
            raise ImportError(f"streamsgd.{name} needs {exc.name or 'an optional package'}; install it with: "
                              f"pip install 'streamsgd[{_EXTRAS[name]}]'") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'streamsgd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too, though they are imported only on first use."""
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Batch", "FitConfig", "FitResult", "Model", "batches", "load", "fit", "open_source", "ArraySource", "ParquetSource",
    "StreamSGDClassifier", "StreamSGDRegressor",
]
