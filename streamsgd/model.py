"""A trained model and its file: ``.npz`` arrays plus JSON metadata, never pickle.

The arrays keep scikit-learn's names: ``coef`` and ``intercept`` in the original feature
space, so ``X @ coef + intercept`` is the decision function on raw data. The standardised
parameters and the scaling are stored too. The metadata (features, target, model, config,
data fingerprint, version, final metrics) is a JSON string stored as a 0-d unicode array,
so one file holds everything and loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ModelFileError

FORMAT_VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: a fixed, reproducible timestamp


@dataclass
class Model:
    """A linear model z = x·coef + intercept on raw features."""

    model: str
    features: list[str]
    target: str
    coef: NDArray[np.float64]
    intercept: float
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return self.model == "logistic"

    def decision_function(self, X: NDArray) -> NDArray[np.float64]:
        """Margins, X of shape (n_rows, n_features) in ``self.features`` order."""
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept

    def predict_proba(self, X: NDArray) -> NDArray[np.float64]:
        """P(y = 1) for a logistic model."""
        return expit(self.decision_function(X))

    def predict(self, X: NDArray) -> NDArray:
        z = self.decision_function(X)
        if self.is_classifier:
            return (z > 0).astype(np.int64)
        return z

    def save(self, path: str) -> None:
        """Write atomically: a temporary file in the same directory, then rename."""
        arrays = {
            "coef": self.coef,
            "intercept": np.asarray(self.intercept, dtype=np.float64),
            "mean": self.mean,
            "scale": self.scale,
            "metadata": np.asarray(json.dumps(self._full_metadata())),
        }
        atomic_savez(path, arrays)

    def _full_metadata(self) -> dict[str, Any]:
        from . import __version__

        return {
            **self.metadata,
            "format": FORMAT_VERSION,
            "version": __version__,
            "model": self.model,
            "features": self.features,
            "target": self.target,
        }


def atomic_savez(path: str, arrays: dict[str, NDArray]) -> None:
    """Write an ``.npz`` so that a crash at any instant leaves the old file or the new one.

    Unlike ``np.savez``, entries carry a fixed timestamp, so the same arrays always give
    the same bytes: a model file can be compared or hashed to check reproducibility.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, array in arrays.items():
                    with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), "w") as entry:
                        np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str) -> Model:
    """Read a model file written by :meth:`Model.save`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["metadata"]))
            return Model(
                model=meta["model"],
                features=list(meta["features"]),
                target=meta["target"],
                coef=npz["coef"].astype(np.float64),
                intercept=float(npz["intercept"]),
                mean=npz["mean"],
                scale=npz["scale"],
                metadata=meta,
            )
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: no such model file") from exc
    except Exception as exc:  # any decoding failure means the same thing to the user
        raise ModelFileError(
            f"{path}: not a streamsgd model file ({type(exc).__name__}); give the .npz written by streamsgd fit"
        ) from exc


def expit(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """The logistic function, without overflow at large |z|."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out
