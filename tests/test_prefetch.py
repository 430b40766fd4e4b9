"""The background reader: bounded in bytes, errors reach the consumer, no thread left behind."""

from __future__ import annotations

import threading

import pytest

from streamsgd.config import FitConfig
from streamsgd.train import Hooks
import streamsgd
from streamsgd.train import trainer as train
from streamsgd.errors import SourceError
from streamsgd.pipeline.prefetch import Prefetcher


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("streamsgd-prefetch") and t.is_alive()]


def test_results_arrive_in_order():
    with Prefetcher(range(50), lambda i: i * i, lambda i: 1, max_bytes=3) as stream:
        got = []
        for value in stream:
            got.append(value)
            stream.release(1)
    assert got == [i * i for i in range(50)]
    assert not prefetch_threads()


def test_bytes_alive_never_exceed_the_budget():
    produced = []
    seen_used = []

    def produce(i):
        produced.append(i)
        return i

    with Prefetcher(range(20), produce, lambda i: 10, max_bytes=30) as stream:
        held = []
        for taken, value in enumerate(stream, 1):
            held.append(value)
            seen_used.append(stream.budget.used)
            # while the consumer holds three items (30 bytes, the whole budget), at most one
            # more may be started: the producer overdraws only when nothing waits unclaimed
            if len(held) == 3:
                assert len(produced) <= taken + 1
                for _ in held:
                    stream.release(10)
                held = []
        for _ in held:
            stream.release(10)
    assert max(seen_used) <= 40
    assert produced == list(range(20))


def test_a_producer_error_reaches_the_consumer_with_its_cause():
    def produce(i):
        if i == 3:
            raise SourceError("chunk 3: disk on fire")
        return i

    got = []
    with pytest.raises(SourceError, match="chunk 3: disk on fire"):
        with Prefetcher(range(10), produce, lambda i: 1, max_bytes=100) as stream:
            for value in stream:
                got.append(value)
    assert got == [0, 1, 2]
    assert not prefetch_threads()


def test_close_mid_stream_joins_the_thread():
    stream = Prefetcher(range(10**6), lambda i: i, lambda i: 1, max_bytes=4)
    next(iter(stream))
    stream.close()
    assert not prefetch_threads()


def test_interrupted_fit_leaves_no_thread(logistic_file):
    """Ctrl-C arrives as KeyboardInterrupt in the main thread, here raised from a callback."""
    baseline = set(threading.enumerate())
    calls = []

    def interrupt(record):
        calls.append(record)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(streamsgd.open_source(logistic_file), FitConfig(epochs=5, log_every=2, memory_limit="400KB"),
                  hooks=Hooks(on_progress=interrupt))
    assert len(calls) == 3
    assert set(t for t in threading.enumerate() if t.is_alive()) <= baseline


def test_reader_failure_mid_epoch_is_our_error(logistic_file):
    source = streamsgd.open_source(logistic_file)
    real = source.read_into

    def failing(i, X, y, rows=None):
        if i == 7:
            raise ConnectionResetError("peer reset")
        real(i, X, y, rows)

    source.read_into = failing
    with pytest.raises(SourceError, match=r"row group 7: read failed: peer reset") as info:
        train.fit(source, FitConfig(epochs=1, memory_limit="400KB", standardize=False, lr=0.1))
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert not prefetch_threads()
