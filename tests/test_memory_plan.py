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



def test_an_mlps_state_is_paid_before_the_windows_and_a_network_too_big_is_refused():
    """--hidden: the parameters (ten float64 copies: θ, average, gradients, moments, noise sums,
    L1 ledger, a checkpoint's copy) and the scratch blocks come out of --memory-limit before the
    windows are sized; a network over half the limit is refused, naming --hidden."""
    from streamsgd.compute.mlp import STATE_COPIES, layout, n_params
    from streamsgd.train.setup import model_bytes

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200_000, 50))
    source = ArraySource(X, (X[:, 0] > 0).astype(float), chunk_rows=5_000)
    linear = FitConfig(model="logistic", memory_limit="64MiB")
    mlp = FitConfig(model="logistic", memory_limit="64MiB", hidden=(1024,))
    need = model_bytes(source, mlp)  # 53,249 parameters: 4.1 MiB of state, plus 512 scratch rows
    assert need >= STATE_COPIES * 8 * n_params(layout(50, (1024,), 1)) + 512 * 50 * 4
    assert model_bytes(source, linear) == 0
    # the windows give up what the network holds: 64 MiB less 5 MiB is a visibly smaller window
    assert plan_memory(source, mlp).window_rows < plan_memory(source, linear).window_rows
    wide = FitConfig(model="logistic", memory_limit="64MiB", hidden=(1024, 1024))  # 1.1M parameters: 94 MiB
    with pytest.raises(UsageError, match=r"--hidden 1024,1024: .* MiB, more than half of --memory-limit"):
        plan_memory(source, wide)
