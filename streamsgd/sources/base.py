"""The ``Source`` protocol: every member the trainer, the pipeline and the tools read from
a data set, and :class:`SourceBase`, which gives the optional ones their defaults and
makes a source picklable.

A source must pickle: a cluster ships it to worker processes, which read the same bytes
as the driver. What cannot cross a process (locks, open files, streaming cursors, parsed
footer caches, store handles) is named in ``_TRANSIENT``, left out of the pickled state,
and rebuilt by ``_fresh()`` after unpickling; the rest is plain data (URLs, storage
options, chunk sizes) from which the handles are opened again when first needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from numpy.typing import NDArray

#: The members a source must define itself (no default in :class:`SourceBase`).
REQUIRED = ("url", "columns", "features", "target", "chunk_rows", "chunk_bytes", "chunk_name", "read_into",
            "read_columns", "fingerprint", "manifest")

#: Every member of the protocol: the required ones and those :class:`SourceBase` defaults.
MEMBERS = (*REQUIRED, "weight", "target_type", "feature_type", "format", "chunk_groups", "metadata_bytes",
           "column_types", "footer_facts", "skipped", "layout", "null_counts")


class Source(Protocol):
    """What the trainer, the pipeline and the tools read from a data set.

    Data members (read-only to their users):

    url : str, the data set as the user named it, for messages.
    columns : list of every column the data has.
    features : list of the feature columns, in the order of a window's columns.
    target : str or None, the target column (None for data read only to predict).
    weight : str or None, the per-row sample-weight column, read with the target.
        Default None.
    target_type, feature_type : str or None, the stored type of the target / features
        (Arrow or NumPy spelling) where the format knows it. Default None.
    format : str, ``"parquet"``, ``"zarr"`` or ``"arrays"``. Default ``"arrays"``.
    chunk_rows : list of int, rows per chunk, from metadata before any data is read.
    chunk_bytes : list of int, bytes a reader holds while decoding each chunk.
    chunk_groups : list of int or None, a group id per chunk whose chunks the plan keeps
        together and in order (slices of one Parquet row group). Default None: none.
    metadata_bytes : int, bytes of format metadata held while reading. Default 0.
    column_types : mapping of column name to its stored type. Default empty.
    footer_facts : :class:`~streamsgd.sources.columns.FooterFacts` or None, what the
        Parquet footers say about constant and id-like columns. Default None.
    skipped : mapping of each column left out of the features to the reason. Default empty.
    """

    @property
    def url(self) -> str: ...
    @property
    def columns(self) -> list[str]: ...
    @property
    def features(self) -> list[str]: ...
    @property
    def target(self) -> str | None: ...
    @property
    def weight(self) -> str | None: ...
    @property
    def target_type(self) -> str | None: ...
    @property
    def feature_type(self) -> str | None: ...
    @property
    def format(self) -> str: ...
    @property
    def chunk_rows(self) -> list[int]: ...
    @property
    def chunk_bytes(self) -> list[int]: ...
    @property
    def chunk_groups(self) -> list[int] | None: ...
    @property
    def metadata_bytes(self) -> int: ...
    @property
    def column_types(self) -> Mapping[str, Any]: ...
    @property
    def footer_facts(self) -> Any: ...
    @property
    def skipped(self) -> Mapping[str, str]: ...

    def chunk_name(self, i: int) -> str:
        """Chunk ``i`` as messages name it (file, row group, rows)."""
        ...

    def read_into(self, i: int, X: NDArray, y: NDArray | None, rows: NDArray | None = None) -> None:
        """Decode chunk ``i`` into ``X`` (and its target into ``y``), its row ``j`` into row
        ``rows[j]`` when given; refuse nulls, NaN and infinity."""
        ...

    def read_columns(self, i: int, names: Sequence[str]) -> Any:
        """Chunk ``i``'s columns ``names`` as a ``pyarrow.Table``."""
        ...

    def fingerprint(self) -> str:
        """A short hash of the data's identity (files, sizes, layout)."""
        ...

    def manifest(self) -> list[dict[str, Any]]:
        """One JSON-able record per file (path, size, rows, chunks, version mark)."""
        ...

    def layout(self) -> dict[str, Any]:
        """How the data is stored and cut (store, files, chunk shape). Default: nothing known."""
        ...

    def null_counts(self) -> dict[str, int | None]:
        """Null count of each used column where the metadata says. Default: none known."""
        ...


class SourceBase:
    """The defaults of :class:`Source`'s optional members, and pickling without handles.

    A subclass names its unpicklable attributes in ``_TRANSIENT`` and rebuilds them in
    ``_fresh()`` (called by its ``__init__`` and after unpickling); those must be caches or
    handles that reopen on demand, so a restored source reads exactly what the original did.
    """

    _TRANSIENT: ClassVar[tuple[str, ...]] = ()

    weight: str | None = None
    target_type: str | None = None
    feature_type: str | None = None
    format: str = "arrays"
    chunk_groups: list[int] | None = None
    #: groups of ``chunk_groups`` the plan streams side by side (``plan.shuffle.laned_order``)
    chunk_lanes: int = 1
    #: bytes the lanes' open streams hold beyond what ``chunk_bytes`` charges each reader
    stream_bytes: int = 0
    metadata_bytes: int = 0
    column_types: Mapping[str, Any] = MappingProxyType({})
    footer_facts: Any = None
    skipped: Mapping[str, str] = MappingProxyType({})
    #: hashed (categorical) feature columns, read by ``read_hashed``: none by default
    categorical: Sequence[str] = ()
    #: their encoding (``sources.encoding.Encoding``), set before reading them
    encoding: Any = None

    def _fresh(self) -> None:
        """Rebuild the ``_TRANSIENT`` attributes (locks, caches, handles): nothing by default."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()

    def skip_categorical(self, reason: str) -> None:
        """Leave the categorical columns out: a source without any has nothing to do."""

    def read_hashed(self, i: int, idx: NDArray, sign: NDArray, rows: NDArray | None = None) -> None:
        """Hash chunk ``i``'s categorical columns: a source without any is never asked."""
        raise NotImplementedError(f"{type(self).__name__} has no categorical columns")

    def layout(self) -> dict[str, Any]:
        """Nothing known about the storage: ``describe`` shows the generic fields only."""
        return {}

    def null_counts(self) -> dict[str, int | None]:
        """No null counts known without reading the data."""
        return {}


def missing_members(obj: Any) -> list[str]:
    """The protocol members ``obj`` lacks (empty for a complete source)."""
    return [name for name in MEMBERS if not hasattr(obj, name)]
