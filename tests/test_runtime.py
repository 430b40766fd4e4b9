"""Process-wide settings are opt-in (DESIGN.md §3): the library leaves the allocators and the
environment alone; the CLI applies :mod:`streamsgd.run.runtime` at its door."""

from __future__ import annotations

import ast
import ctypes
import os
import pathlib

import numpy as np
import pytest

import streamsgd
from streamsgd.config import FitConfig
from streamsgd.errors import UsageError
from streamsgd.run import runtime
from streamsgd.sources.retry import RetryPolicy
from streamsgd.train.trainer import fit as train

from helpers import invoke, write_parquet

PACKAGE = pathlib.Path(streamsgd.__file__).parent


class _Libc:
    """Records ``mallopt`` calls instead of making them."""

    calls: list[tuple[int, int]] = []

    def __init__(self, name, *args, **kwargs):
        self._real = _REAL_CDLL(name, *args, **kwargs)

    def mallopt(self, param, value):
        _Libc.calls.append((param, value))
        return 1

    def __getattr__(self, name):
        return getattr(self._real, name)


_REAL_CDLL = ctypes.CDLL


@pytest.fixture
def libc(monkeypatch):
    _Libc.calls = []
    monkeypatch.setattr(ctypes, "CDLL", _Libc)
    return _Libc.calls


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 3))
    return write_parquet(tmp_path / "d.parquet", X, (X @ [1.0, -1.0, 0.5] > 0).astype(float), row_group_size=700)


def test_only_the_cli_imports_the_runtime_module():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("runtime"):
                importers.append(path.relative_to(PACKAGE).as_posix())
    assert importers == ["cli.py"]


def test_a_library_fit_changes_no_allocator_setting_and_no_environment(data, libc, monkeypatch):
    monkeypatch.delenv(runtime.ARROW_POOL_VARIABLE, raising=False)
    before = dict(os.environ)
    train(streamsgd.open_source(data), FitConfig(model="logistic", epochs=1, memory_limit=8 << 20))
    assert libc == [] and dict(os.environ) == before


def test_the_cli_tunes_the_allocator_at_start_and_for_the_data(data, tmp_path, libc, monkeypatch):
    monkeypatch.setenv(runtime.ARROW_POOL_VARIABLE, "system")  # as a previous CLI run in this process left it
    monkeypatch.delenv(runtime.ARENA_VARIABLE, raising=False)
    outcome = invoke(["fit", data, "--model", "logistic", "--epochs", "1", "-o", str(tmp_path / "m.npz")])
    assert outcome.code == 0, outcome.report()
    column = runtime.DECODED_BYTES_PER_ROW * 700  # the largest row group, decoded as float64
    assert libc == [(runtime.M_ARENA_MAX, runtime.ARENAS),
                    (runtime.M_MMAP_THRESHOLD, max(runtime.MMAP_THRESHOLD_MIN, column + runtime.COLUMN_HEADROOM))]


def test_the_threshold_sits_above_a_column_within_glibcs_range(libc):
    runtime.map_windows_keep_columns_on_heap(10 << 20)
    runtime.map_windows_keep_columns_on_heap(1 << 30)
    runtime.map_windows_keep_columns_on_heap(0)
    M = runtime.M_MMAP_THRESHOLD
    assert libc == [(M, (10 << 20) + runtime.COLUMN_HEADROOM), (M, runtime.MMAP_THRESHOLD_MAX),
                    (M, runtime.MMAP_THRESHOLD_MIN)]


def test_the_users_arrow_pool_and_arena_cap_win(monkeypatch, libc):
    monkeypatch.setenv(runtime.ARROW_POOL_VARIABLE, "jemalloc")
    monkeypatch.setenv(runtime.ARENA_VARIABLE, "8")
    runtime.tune_allocator()
    assert os.environ[runtime.ARROW_POOL_VARIABLE] == "jemalloc" and libc == []  # no rows given: no threshold


def test_at_start_glibc_keeps_two_arenas(monkeypatch, libc):
    """Reader threads' arenas keep the columns they free (peak RSS then follows how far the
    readers run ahead); the command caps them before any thread starts, the variable unset."""
    monkeypatch.delenv(runtime.ARENA_VARIABLE, raising=False)
    monkeypatch.setenv(runtime.ARROW_POOL_VARIABLE, "system")
    runtime.tune_allocator()
    assert libc == [(runtime.M_ARENA_MAX, runtime.ARENAS)]


def test_the_retry_environment_is_read_once_and_checked():
    assert runtime.retry_policy_from_environment({}) == RetryPolicy()
    assert runtime.retry_policy_from_environment({"STREAMSGD_RETRIES": "0", "STREAMSGD_RETRY_DELAY": "-1"}) == \
        RetryPolicy(1, 0.0)
    with pytest.raises(UsageError, match="STREAMSGD_RETRIES / STREAMSGD_RETRY_DELAY: expected numbers"):
        runtime.retry_policy_from_environment({"STREAMSGD_RETRIES": "many"})


def test_a_bad_retry_environment_is_one_usage_line(data, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSGD_RETRIES", "many")
    outcome = invoke(["fit", data, "-o", str(tmp_path / "m.npz")])
    assert outcome.code == UsageError.exit_code and "STREAMSGD_RETRIES" in outcome.stderr
    assert not (tmp_path / "m.npz").exists()


def test_the_command_reads_parquet_through_the_system_pool_only(data, tmp_path):
    """The command's Arrow pool is chosen before pyarrow is imported, so the Parquet reader's
    C++ allocations go through malloc too: set after the import, ``ARROW_DEFAULT_MEMORY_POOL``
    moved pyarrow's Python-level default only, and the decoder kept mimalloc, whose retained
    pages took peak RSS past the memory limit plus the idle footprint (benchmarks/README.md, ctr.py).
    And once the data is open the command takes the imports' objects out of the garbage
    collector's walks (``freeze_imports``: tens of thousands of them)."""
    import subprocess
    import sys

    pyarrow = pytest.importorskip("pyarrow")
    if "mimalloc" not in pyarrow.supported_memory_backends():
        pytest.skip("this pyarrow has no mimalloc pool to avoid")
    script = ("import sys\nfrom streamsgd.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code\nimport pyarrow as pa\n"
              "import gc\nprint(gc.get_freeze_count())\n"
              "print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory())\n")
    env = {k: v for k, v in os.environ.items() if k != runtime.ARROW_POOL_VARIABLE}
    proc = subprocess.run([sys.executable, "-c", script, "fit", data, "--quiet", "-o", str(tmp_path / "m.npz")],
                          env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1].split() == ["system", "0"], proc.stdout + proc.stderr
    assert int(proc.stdout.splitlines()[-2]) > 10_000, proc.stdout  # the library call alone freezes none
