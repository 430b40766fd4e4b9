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


#: Arrow's fixed-width numbers by type name (``DataType.to_pandas_dtype`` imports pandas too)
_NUMPY: dict[str, np.dtype] = {name: np.dtype(name) for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")}
_NUMPY.update({"halffloat": np.dtype("float16"), "float": np.dtype("float32"), "double": np.dtype("float64")})


#: Ticks per second of a timestamp type's stored integer, by unit (a division rounds once,
#: so 1000000000250 ms is exactly 1000000000.25 s; a product with 1e-3 would not be).
_TICKS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
SECONDS_PER_DAY = 86_400.0


def arrow_values(array) -> NDArray:
    """A pyarrow Array or ChunkedArray as one NumPy array, zero-copy when it can (nulls become NaN).

    Fixed-width numbers are viewed through the buffer protocol: pyarrow's own ``to_numpy``
    imports pandas on first use, which every process start would pay. The other numeric kinds a
    feature may have (``sources.columns.numeric_kind``) become numbers here: a dictionary
    its decoded values, a decimal float64, a date or timestamp float64 seconds since the
    epoch, a time of day float64 seconds since midnight (a timestamp with a time zone is stored in UTC, so the zone changes nothing),
    a boolean bools (the fill reads them as 0/1).
    """
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    t = array.type
    if pa.types.is_dictionary(t):
        return arrow_values(array.dictionary_decode())
    if pa.types.is_decimal(t):
        return arrow_values(array.cast(pa.float64()))
    if pa.types.is_timestamp(t) or pa.types.is_date64(t):
        # date64 counts milliseconds; float64 seconds keep microseconds exact until year 2255
        ticks = arrow_values(array.cast(pa.int64()))
        return ticks / (_TICKS[t.unit] if pa.types.is_timestamp(t) else 1e3)
    if pa.types.is_time(t):  # a time of day: seconds since midnight
        return arrow_values(array.cast(pa.int64() if pa.types.is_time64(t) else pa.int32())) / _TICKS[t.unit]
    if pa.types.is_date32(t):
        return arrow_values(array.cast(pa.int32())) * SECONDS_PER_DAY
    dtype = _NUMPY.get(str(t))
    if dtype is not None and not array.null_count:
        if array.buffers()[1] is None:  # an empty array may have no data buffer
            return np.zeros(0, dtype)
        return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    return np.asarray(array.to_numpy(zero_copy_only=False))
