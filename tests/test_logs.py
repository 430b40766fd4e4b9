"""The run log: JSON lines parse, carry time and event first and the fields given, in order;
text lines are one per event; quiet keeps only warnings and errors."""

from __future__ import annotations

import io
import json
import math
import re
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from streamsgd.errors import UsageError
from streamsgd.run.logs import KINDS, RunLog

T0 = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=timezone.utc)


class Clock:
    """A fake clock that advances 1.5 s per reading."""

    def __init__(self, start=T0):
        self.now = start

    def __call__(self):
        t, self.now = self.now, self.now + timedelta(milliseconds=1500)
        return t


def a_run(log: RunLog) -> None:
    log.event("start", data="data.parquet", rows=20000, features=8, model="logistic")
    log.event("progress", iteration=100, loss=0.69, rows_per_second=1.5e6)
    log.event("epoch", epoch=1, loss=np.float32(0.5), iterations=40)
    log.event("checkpoint", step=40, path="ckpt/ckpt-000000000040.npz")
    log.warning("skipped corrupt checkpoint ckpt-000000000050.npz", step=50)
    log.event("summary", iterations=80, loss=0.41, seconds=2.25, coef=np.array([1.0, -2.0]))


def json_lines(**kwargs) -> list[dict]:
    out = io.StringIO()
    a_run(RunLog("json", stream=out, clock=Clock(), **kwargs))
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_carry_time_event_and_fields_in_order():
    records = json_lines()
    assert [r["event"] for r in records] == ["start", "progress", "epoch", "checkpoint", "warning", "summary"]
    assert [list(r)[:2] for r in records] == [["time", "event"]] * len(records)
    assert records[0] == {"time": "2024-05-01T12:30:45.123Z", "event": "start", "data": "data.parquet",
                          "rows": 20000, "features": 8, "model": "logistic"}
    assert records[2]["loss"] == 0.5 and type(records[2]["loss"]) is float  # NumPy scalar made plain
    assert records[4] == {"time": "2024-05-01T12:30:51.123Z", "event": "warning",
                          "message": "skipped corrupt checkpoint ckpt-000000000050.npz", "step": 50}
    assert records[5]["coef"] == [1.0, -2.0]
    times = [datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%f%z") for r in records]
    assert times == sorted(times) and times[1] - times[0] == timedelta(milliseconds=1500)


def test_json_time_is_utc_with_milliseconds_from_the_real_clock():
    out = io.StringIO()
    before = datetime.now(timezone.utc)
    RunLog("json", stream=out).event("start")
    after = datetime.now(timezone.utc)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    t = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert before - timedelta(milliseconds=1) <= t <= after


def test_non_utc_clock_is_written_in_utc():
    out = io.StringIO()
    paris = timezone(timedelta(hours=2))
    RunLog("json", stream=out, clock=lambda: datetime(2024, 5, 1, 14, 0, 0, tzinfo=paris)).event("start")
    assert json.loads(out.getvalue())["time"] == "2024-05-01T12:00:00.000Z"


def test_non_finite_numbers_are_null_so_every_line_is_strict_json():
    out = io.StringIO()
    RunLog("json", stream=out, clock=Clock()).event("error", message="diverged", loss=math.nan,
                                                    grad=[np.float64(np.inf), 1.0], exit_code=5)
    record = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["loss"] is None and record["grad"] == [None, 1.0] and record["exit_code"] == 5


def test_quiet_keeps_only_warnings_and_errors():
    records = json_lines(quiet=True)
    assert [r["event"] for r in records] == ["warning"]
    out = io.StringIO()
    log = RunLog("text", quiet=True, stream=out, clock=Clock())
    a_run(log)
    log.error("the data changed since the checkpoint", exit_code=3)
    lines = out.getvalue().splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == ["warning", "error"]


def test_text_is_one_readable_line_per_event_without_progress():
    out = io.StringIO()
    a_run(RunLog("text", stream=out, clock=Clock()))
    lines = out.getvalue().splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == ["start", "epoch", "checkpoint", "warning", "summary"]
    assert lines[0] == "2024-05-01T12:30:45Z start  data=data.parquet  rows=20,000  features=8  model=logistic"
    assert lines[3] == ("2024-05-01T12:30:49Z warning: skipped corrupt checkpoint ckpt-000000000050.npz  step=50")
    assert "loss=0.41" in lines[4] and "coef=[1.0, -2.0]" in lines[4]


def test_text_keeps_nan_visible_and_messages_on_one_line():
    out = io.StringIO()
    RunLog("text", stream=out, clock=Clock()).error("first line\nsecond line", loss=math.nan, note="two words")
    assert out.getvalue() == '2024-05-01T12:30:45Z error: first line second line  loss=nan  note="two words"\n'


def test_unknown_kind_and_format_are_refused():
    with pytest.raises(ValueError, match="unknown log event 'epoch_end'"):
        RunLog(stream=io.StringIO()).event("epoch_end")
    with pytest.raises(UsageError, match="--log-format: expected one of text, json; got 'xml'"):
        RunLog("xml")
    assert set(KINDS) == {"start", "progress", "epoch", "checkpoint", "warning", "error", "summary"}


def test_default_stream_is_the_current_stderr(capsys):
    RunLog("json").event("summary", iterations=3)
    captured = capsys.readouterr()
    assert captured.out == "" and json.loads(captured.err)["iterations"] == 3


def test_lines_from_many_threads_never_interleave():
    out = io.StringIO()
    log = RunLog("json", stream=out)
    barrier = threading.Barrier(4)

    def worker(k):
        barrier.wait()
        for i in range(200):
            log.event("progress", worker=k, i=i, pad="x" * 200)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 800
    for k in range(4):
        assert [r["i"] for r in records if r["worker"] == k] == list(range(200))


def test_the_librarys_logging_warnings_become_warning_events_while_forwarding():
    """The library warns through ``logging.getLogger("streamsgd")`` (it configures no handler);
    the CLI forwards those into the run's log, so a JSON log stays JSON lines."""
    import logging

    out = io.StringIO()
    log = RunLog("json", quiet=True, stream=out)
    logger = logging.getLogger("streamsgd")
    before = list(logger.handlers)
    with log.forwarding():
        logger.warning("%s: one lane", "data.parquet")
        logger.info("not a warning")
    assert logger.handlers == before
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "warning" and record["message"] == "data.parquet: one lane"
