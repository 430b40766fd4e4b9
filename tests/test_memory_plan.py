"""The memory plan is arithmetic on metadata (streamsgd.plan.memory): any object with a
source's chunk sizes, decode costs and footer bytes plans the same as the source itself."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.plan.memory import METADATA_ALLOWANCE, WINDOW_SHARE, MemoryPlan, data_limit, row_bytes
from streamsgd.sources import ArraySource
from streamsgd.train.setup import plan_memory


@dataclass
class Layout:
    url: str = "mem://layout"
    chunk_rows: list[int] = field(default_factory=lambda: [1000] * 8)
    chunk_bytes: list[int] = field(default_factory=lambda: [3 * 1000 * 6 * 8] * 8)
    metadata_bytes: int = 0


def test_a_layout_plans_as_its_source_does():
    X, y = np.zeros((8000, 5)), np.zeros(8000)
    source = ArraySource(X, y, chunk_rows=1000)
    config = FitConfig(memory_limit=4 << 20, readers=2)
    layout = Layout(chunk_rows=list(source.chunk_rows), chunk_bytes=list(source.chunk_bytes),
                    metadata_bytes=source.metadata_bytes)
    assert MemoryPlan.solve(layout, config, row_bytes(5, "float32", 0)) == plan_memory(source, config)


def test_the_windows_get_two_thirds_and_footers_beyond_the_allowance_are_charged():
    config = FitConfig(memory_limit=64 << 20)
    width = row_bytes(5, config.dtype, 0)
    plain = MemoryPlan.solve(Layout(), config, width)
    assert plain is not None and plain.buffer_bytes == int((64 << 20) * WINDOW_SHARE)
    heavy = Layout(metadata_bytes=METADATA_ALLOWANCE + (3 << 20))
    assert data_limit(heavy, config.memory_limit) == (64 << 20) - (3 << 20)
    with pytest.raises(UsageError, match="footers of mem://layout"):
        data_limit(Layout(metadata_bytes=METADATA_ALLOWANCE + (40 << 20)), config.memory_limit)
    # a chunk larger than a window cannot be shuffled: no plan
    assert MemoryPlan.solve(Layout(chunk_rows=[10**7]), config, width) is None
