"""Values converted to the training dtype, refusing those it cannot hold."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError


def to_dtype(values: NDArray, dtype: np.dtype, where: str, name: str) -> NDArray:
    """``values`` as a C-contiguous, writeable array of ``dtype``.

    A finite value beyond the range of ``dtype`` (1e300 in a float32 run) would become
    infinity and then be reported as "not finite", which it is not: it is refused here,
    naming the value and the option that can hold it.
    """
    values = np.asarray(values)
    with np.errstate(over="ignore"):
        out = np.require(values, dtype=dtype, requirements=["C", "W"])
    if out.dtype.kind == "f" and values.dtype.kind in "fiu" and values.dtype != out.dtype:
        overflow = np.isinf(out) & np.isfinite(values)
        if overflow.any():
            value = values[np.argmax(overflow)]
            raise DataError(
                f"{where}: column {name!r} holds {value:g}, beyond the range of {np.dtype(dtype).name}; "
                "train with --dtype float64 (or rescale the column)"
            )
    return out
