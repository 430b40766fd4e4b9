"""A model applied to data it did not train on: the data read as training read it.

``prepare`` sets a source up as the training run's was (nulls imputed with the training
means, categorical columns hashed with the model's encoding, its golden values checked
first), refusing data whose columns differ. ``frame_margins`` scores an in-memory frame
through the same readers (``sources.frames``): ``Model.predict`` on a DataFrame with text
or null values gives what ``streamsgd predict`` gives on the same rows in a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelFileError
from ..sources import Source
from ..sources.encoding import Encoding

if TYPE_CHECKING:
    from .model import Model


def prepare(model: Model, source: Source) -> None:
    """Read ``source`` as the model's training read its data: impute its nulls with the
    training means and indicators, check its features, hash its categorical columns."""
    record = model.metadata.get("missing")
    if record and hasattr(source, "impute"):  # nulls become the training means, as in training
        source.impute(record["means"], record["indicators"])
    if list(source.features) != list(model.features):
        raise ModelFileError(
            f"{source.url}: the model was trained on features {model.features[:10]}, but the data "
            f"gives {source.features[:10]}; use data with the model's feature columns"
        )
    _encode(model, source)


def _encode(model: Model, source: Source) -> None:
    """Hash the data's categorical columns as training did: the model's encoding, its golden
    values hashed again first; data whose categorical columns differ is refused."""
    record = model.metadata.get("categorical")
    given = list(getattr(source, "categorical", ()))
    if record is None:
        if given:  # a model trained before categorical columns existed: they were skipped
            raise ModelFileError(f"{source.url}: the model has no categorical columns, but the data gives "
                                 f"{given[:10]}; leave them out with the model's --features")
        return
    encoding = Encoding.from_json(record, f"{source.url}: model")
    if given != list(encoding.columns) or not hasattr(source, "encode"):
        raise ModelFileError(f"{source.url}: the model hashes the categorical columns {list(encoding.columns)[:10]}, "
                             f"but the data gives {given[:10]}; use data with the model's columns")
    source.encode(encoding)


def frame_margins(model: Model, table: Any) -> NDArray[np.float64]:
    """The model's margins of an Arrow table's rows (``sources.frames.as_table``), read chunk
    by chunk as ``streamsgd predict`` reads a file."""
    from ..sources import open_source
    from ..sources.frames import frame_url

    hashed = model.hashed_columns
    with frame_url(table) as url:
        source = open_source(url, target=None, features=list(model.features) + hashed, categorical=hashed)
        prepare(model, source)
        parts = []
        for c, rows in enumerate(source.chunk_rows):
            X = np.empty((rows, len(source.features)))
            source.read_into(c, X, None)
            k = int(source.encoding.width) if hashed else 0  # type: ignore[attr-defined,union-attr]  # list widths, pairs
            idx, sign = np.empty((rows, k), np.int32), np.empty((rows, k), np.int8)
            if hashed:
                source.read_hashed(c, idx, sign)  # type: ignore[attr-defined]
            parts.append(model.margins(X, idx, sign))
    return np.concatenate(parts) if parts else model.dense_margins(np.zeros((0, len(model.features))))
