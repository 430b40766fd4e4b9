"""The categorical encoding of a run: which columns are hashed, how, and the proof that a
later process hashes them the same way (DESIGN.md §4 "Categorical encoding", §8).

An :class:`Encoding` is plain data (column names, index bits, the run's hash seed and each
column's seed, the hash version, the null policy) so it travels in a model file's JSON
metadata, pickles with its source, and rebuilds the same (index, sign) of every value in
``predict`` and ``evaluate``. Its golden pairs, (column, value) → (index, sign) computed
when the model is written, are hashed again when it is read: a hashing change (a new
version of the kernels, another platform) would otherwise score every categorical row
silently wrong, so it is refused instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelFileError, UsageError
from .columns import is_multi
from .hashing import MAX_HASH_BITS, MAX_SEED, column_seed, hash_column, hash_list_column, hash_pairs

#: The hash and its conventions (sources.hashing: MurmurHash3_x86_32 of the value's bytes
#: under the column seed, index = low bits, sign = bit 31, integers as 8 bytes + a tag, a
#: null as the salted null token). A change to any of them is a new version.
HASH_VERSION = 1
HASH_NAME = "murmur3_x86_32"
#: What a categorical null is: a category of its own (the column's null token).
NULL_POLICY = "category"
#: Default index bits (``--hash-bits``): 2**20 weights, 8 MiB of float64.
DEFAULT_HASH_BITS = 20

#: Values whose (index, sign) a model file records: text of several lengths (MurmurHash3's
#: tail cases), an integer, and the null.
GOLDEN_TEXT = ("", "a", "ab", "abc", "abcd", "streamsgd")
GOLDEN_INT = -7


@dataclass(frozen=True)
class Encoding:
    """How the categorical columns of a run become sparse features.

    columns : the hashed columns, in the order of a window's first ``idx``/``sign`` columns.
    bits : index bits; indices lie in [0, 2**bits).
    seed : the run's hash seed (``--seed`` modulo 2**32); seeds : each column's seed.
    interactions : crossed pairs of those columns (``--interactions a:b``), each one more
        window column after the columns, hashed from the pair's two features under the seed
        of the name ``a:b`` (``hashing.hash_pairs``).
    widths : window columns of each column: 1, or for a list (multi-valued) column the most
        values a row of this data holds (``hashing.hash_list_column``); empty: all 1. A
        property of the data read, not of the model: never stored.
    """

    columns: tuple[str, ...]
    bits: int
    seed: int
    seeds: tuple[int, ...]
    interactions: tuple[tuple[str, str], ...] = ()
    widths: tuple[int, ...] = ()

    @classmethod
    def of(cls, columns: Sequence[str], bits: int, seed: int,
           interactions: Sequence[tuple[str, str]] = ()) -> "Encoding":
        """The encoding of ``columns`` under a run seed (any integer: its low 32 bits are used)."""
        if not 1 <= int(bits) <= MAX_HASH_BITS:
            raise UsageError(f"--hash-bits: expected 1 to {MAX_HASH_BITS} (bit 31 of the hash is the sign); "
                             f"got {bits}")
        for pair in interactions:
            unknown = [c for c in pair if c not in columns]
            if unknown or len(pair) != 2 or pair[0] == pair[1]:
                raise UsageError(f"--interactions {':'.join(pair)}: expected two different categorical columns "
                                 f"(these: {', '.join(columns[:10])}); fix --interactions")
        run_seed = int(seed) & MAX_SEED
        return cls(tuple(columns), int(bits), run_seed, tuple(column_seed(c, run_seed) for c in columns),
                   tuple((str(a), str(b)) for a, b in interactions))

    @property
    def size(self) -> int:
        """The number of hashed weights, 2**bits."""
        return 1 << self.bits

    @property
    def width(self) -> int:
        """Window columns of hashed features: each column's width and one per crossed pair."""
        return sum(self.widths or [1] * len(self.columns)) + len(self.interactions)

    def pair_seed(self, pair: tuple[str, str]) -> int:
        """The seed of a crossed pair: the column seed of the name ``a:b``."""
        return column_seed(":".join(pair), self.seed)

    def hash(self, j: int, array: Any) -> tuple[NDArray[np.int32], NDArray[np.int8]]:
        """(idx, sign) of each row of Arrow array ``array``, the values of column ``j``."""
        return hash_column(array, self.seeds[j], self.bits)

    def hash_table(self, table: Any) -> list[tuple[NDArray[np.int32], NDArray[np.int8]]]:
        """(idx, sign) of shape (rows, width) for each column of ``table`` (a pyarrow Table
        holding ``columns``), then (rows, 1) for each crossed pair: the window's columns in order."""
        hashed = []
        for j, name in enumerate(self.columns):
            column = table.column(name)
            if is_multi(column.type):
                hashed.append(hash_list_column(column, self.seeds[j], self.bits, self.widths[j]))
            else:
                idx, sign = self.hash(j, column)
                hashed.append((idx[:, None], sign[:, None]))
        where = {name: j for j, name in enumerate(self.columns)}
        for a, b in self.interactions:
            idx, sign = hash_pairs(tuple(x[:, 0] for x in hashed[where[a]]),  # type: ignore[arg-type]
                                   tuple(x[:, 0] for x in hashed[where[b]]),  # type: ignore[arg-type]
                                   self.pair_seed((a, b)), self.bits)
            hashed.append((idx[:, None], sign[:, None]))
        return hashed

    def golden(self) -> list[list[Any]]:
        """[column, value, index, sign] for each column and each golden value (None: the null)."""
        import pyarrow as pa

        out: list[list[Any]] = []
        for j, name in enumerate(self.columns):
            for values in (pa.array([*GOLDEN_TEXT, None], pa.string()), pa.array([GOLDEN_INT], pa.int64())):
                idx, sign = self.hash(j, values)
                out += [[name, v, int(i), int(s)] for v, i, s in zip(values.to_pylist(), idx, sign)]
        text = pa.array([*GOLDEN_TEXT, None], pa.string())
        for pair in self.interactions:  # each golden text crossed with the next one
            a, b = self.hash(self.columns.index(pair[0]), text), self.hash(self.columns.index(pair[1]), text)
            shifted = (np.roll(b[0], -1), np.roll(b[1], -1))
            idx, sign = hash_pairs(a, shifted, self.pair_seed(pair), self.bits)
            values = text.to_pylist()
            out += [[":".join(pair), [v, values[(k + 1) % len(values)]], int(i), int(s)]
                    for k, (v, i, s) in enumerate(zip(values, idx, sign))]
        return out

    def to_json(self) -> dict[str, Any]:
        """The encoding as the model file's metadata stores it."""
        return {"hash": HASH_NAME, "version": HASH_VERSION, "columns": list(self.columns), "bits": self.bits,
                "seed": self.seed, "seeds": list(self.seeds), "sign": "bit31", "nulls": NULL_POLICY,
                "interactions": [":".join(p) for p in self.interactions], "golden": self.golden()}

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str) -> "Encoding":
        """The encoding a model file stores, after hashing its golden values again."""
        if record.get("hash") != HASH_NAME or record.get("version") != HASH_VERSION:
            raise ModelFileError(f"{where}: categorical encoding {record.get('hash')} version {record.get('version')} "
                                 f"is not this streamsgd's ({HASH_NAME} version {HASH_VERSION}); retrain the model")
        pairs = tuple(tuple(p.split(":", 1)) for p in record.get("interactions", []))
        enc = cls(tuple(record["columns"]), int(record["bits"]), int(record["seed"]),
                  tuple(int(s) for s in record["seeds"]), pairs)  # type: ignore[arg-type]
        if list(enc.seeds) != [column_seed(c, enc.seed) for c in enc.columns]:
            raise ModelFileError(f"{where}: the column seeds do not follow from the hash seed; the file was altered")
        want = [list(g) for g in record.get("golden", [])]
        got = enc.golden()
        if want != got:
            bad = next((w for w, g in zip(want, got) if w != g), None)
            shown = f"value {bad[:2]} no longer hashes to {bad[2:]}" if bad else "golden values are missing"
            raise ModelFileError(f"{where}: categorical {shown}; the hashing differs from the one the model was "
                                 "trained with: retrain the model")
        return enc
