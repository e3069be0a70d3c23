"""MARS log lines: classification, filtering, folding, bounded keeping, handlers, loggers."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from marsconn.core.errors import LogHandlerError
from marsconn.plan.model import LogPolicy
from marsconn.run import logs
from marsconn.run.logs import ERROR_CAP, LogSink, classify_line


def sink(filter: bool = True, keep_lines: int = 2000, **kw: Any) -> LogSink:
    return LogSink(LogPolicy(filter=filter, keep_lines=keep_lines), **kw)


async def feed(s: LogSink, lines: list[str], *, close: bool = True) -> LogSink:
    for line in lines:
        await s.line(line)
    if close:
        s.close()
    return s


class Recorder:
    """A plain object with info/warning/error, like an adaptor context."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.calls.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.calls.append(("warning", msg))

    def error(self, msg: str) -> None:
        self.calls.append(("error", msg))


# --- classify_line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("mars - ERROR  - 20261128.120000 - No matching data found", "error"),
        ("mars - FATAL  - 20261128.120000 - Request failed", "error"),
        ("mars - INFO   - 20261128.120000 - Transfer FAILED after 3 tries", "error"),
        ("Traceback (most recent call last):", "error"),
        ("mars - INFO - java.lang.Exception: connection reset", "error"),
        ("mars - error - lower case still counts", "error"),
        ("mars - WARN   - 20261128.120001 - Field 167.128 not in the cache", "warning"),
        ("mars - WARNING - 20261128.120001 - Deprecated keyword 'repres'", "warning"),
        ("mars - INFO   - 20261128.120000 - Processing request 1", "info"),
        ("mars - INFO   - 20261128.120001 - Retrieving from the archive", "info"),
        ("mars - INFO   - 20261128.120002 - Transfering 262144 bytes", "info"),
        ("mars - INFO   - 20261128.120002 - Transferring 262144 bytes", "info"),
        ("mars - INFO   - 20261128.120002 - 100% done", "info"),
        ("mars - INFO   - 20261128.120002 - 12.5% of the data", "info"),
        ("mars - INFO   - 20261128.120002 - Request is queued", "info"),
        ("mars - INFO   - 20261128.120002 - Request has been scheduled", "info"),
        ("mars - INFO   - 20261128.120002 - Request has been sent", "info"),
        ("mars - INFO   - 20261128.120002 - Estimated completion in 12 seconds", "info"),
        ("mars - INFO   - 20261128.120002 - 24 fields retrieved", "info"),
        ("mars - INFO   - 20261128.120002 - 1 field retrieved", "info"),
        ("mars - INFO   - 20261128.120000 - Welcome to MARS", None),
        ("mars - INFO   - 20261128.120002 - Request time: wall: 2 sec", None),
        ("mars - DEBUG  - 20261128.120002 - Memory used: 12.00 Mbyte", None),
        ("", None),
        ("mars - INFO - error_handler installed", None),  # no word boundary inside the name
        ("mars - INFO - 3 ERRORS suppressed", None),  # not the word ERROR
    ],
)
def test_classify_realistic_lines(line: str, level: str | None) -> None:
    assert classify_line(line) == level


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("mars - INFO - 20261128.120002 - Retrieving field 3: ERROR cannot read tape", "error"),
        ("mars - INFO - Processing request 2 FAILED", "error"),
        ("mars - INFO - 50% done, then Exception: disk full", "error"),
        ("mars - INFO - Retrieving from tape: WARNING slow", "warning"),
    ],
)
def test_most_severe_keyword_wins_over_an_earlier_progress_word(line: str, level: str) -> None:
    assert classify_line(line) == level


def test_level_word_before_a_progress_word() -> None:
    assert classify_line("mars - WARN - Retrieving from tape, slow") == "warning"
    assert classify_line("mars - ERROR - Retrieving from tape failed") == "error"


# --- filtering: what is shown; the kept text is always the raw lines ---------------------------


LOG = [
    "mars - INFO - Welcome to MARS",
    "mars - INFO - Processing request 1",
    "mars - WARN - Field not in the cache",
    "mars - INFO - Request time: wall: 2 sec",
    "mars - ERROR - No data",
]


async def test_filter_on_shows_only_classified_lines_but_keeps_every_raw_line() -> None:
    rec = Recorder()
    s = await feed(sink(filter=True, logger=rec), LOG)
    assert rec.calls == [("info", LOG[1]), ("warning", LOG[2]), ("error", LOG[4])]
    assert s.text.splitlines() == LOG
    assert s.lines_seen == 5
    assert s.dropped == 0


async def test_filter_off_shows_everything_as_info_or_its_level() -> None:
    rec = Recorder()
    s = await feed(sink(filter=False, logger=rec), LOG)
    assert s.text.splitlines() == LOG
    assert rec.calls == [
        ("info", LOG[0]),
        ("info", LOG[1]),
        ("warning", LOG[2]),
        ("info", LOG[3]),
        ("error", LOG[4]),
    ]


async def test_line_endings_are_stripped() -> None:
    s = await feed(sink(), ["a 10%\r\n", "b 20%\n"])
    assert s.text == "a 10%\nb 20%"


async def test_forty_raw_lines_are_all_kept_whatever_the_filter() -> None:
    # The lines a 40-line MARS job prints: all noise to the filter.
    lines = [f"mars - INFO - line {i} of 40" for i in range(1, 41)]
    for filtered in (True, False):
        rec = Recorder()
        s = await feed(sink(filter=filtered, logger=rec), lines)
        assert s.text.splitlines() == lines
        assert s.dropped == 0
        assert len(rec.calls) == (0 if filtered else 40)


# --- folding repeats (what is shown) -------------------------------------------------------------


async def test_repeats_are_folded_when_shown_and_kept_raw() -> None:
    rec = Recorder()
    lines = ["a 1%", "a 1%", "a 1%", "b 2%", "b 2%", "c 3%"]
    s = await feed(sink(logger=rec), lines)
    assert rec.calls == [
        ("info", "a 1%"),
        ("info", "(previous line repeated 2 more times)"),
        ("info", "b 2%"),
        ("info", "(previous line repeated 1 more times)"),
        ("info", "c 3%"),
    ]
    assert s.text.splitlines() == lines
    assert s.lines_seen == 6


async def test_pending_repeat_note_needs_close() -> None:
    rec = Recorder()
    s = await feed(sink(logger=rec), ["a 1%", "a 1%", "a 1%"], close=False)
    assert rec.calls == [("info", "a 1%")]
    s.close()
    assert rec.calls[-1] == ("info", "(previous line repeated 2 more times)")
    s.close()  # idempotent: nothing pending any more
    assert len(rec.calls) == 2
    assert s.text == "a 1%\na 1%\na 1%"


async def test_repeated_error_lines_fold_and_the_note_is_info() -> None:
    rec = Recorder()
    s = await feed(sink(logger=rec), ["x ERROR bad"] * 4)
    assert rec.calls == [
        ("error", "x ERROR bad"),
        ("info", "(previous line repeated 3 more times)"),
    ]
    assert s.text.splitlines() == ["x ERROR bad"] * 4


async def test_no_folding_when_the_filter_is_off() -> None:
    rec = Recorder()
    await feed(sink(filter=False, logger=rec), ["same"] * 3)
    assert rec.calls == [("info", "same")] * 3


async def test_a_line_equal_to_an_older_one_is_not_a_repeat() -> None:
    rec = Recorder()
    await feed(sink(logger=rec), ["a 1%", "b 2%", "a 1%"])
    assert [m for _, m in rec.calls] == ["a 1%", "b 2%", "a 1%"]


# --- bounded keeping: head and tail, the middle dropped ------------------------------------------


def note(dropped: int, keep: int, errors: int = 0) -> str:
    text = (
        f"[marsconn: {dropped} log line{'s' * (dropped != 1)} dropped here "
        f"(more than log_keep_lines={keep} lines)"
    )
    if errors:
        text += f"; the {errors} error line{'s' * (errors != 1)} of that part follow"
    return text + "]"


async def test_keep_lines_keeps_the_head_and_the_tail_and_says_what_was_dropped() -> None:
    lines = [f"line {i}" for i in range(10)]
    s = await feed(sink(keep_lines=4), lines)
    assert s.text.splitlines() == ["line 0", "line 1", note(6, 4), "line 8", "line 9"]
    assert s.dropped == 6
    assert s.lines_seen == 10


async def test_an_odd_keep_limit_gives_the_tail_the_extra_line() -> None:
    s = await feed(sink(keep_lines=3), [f"line {i}" for i in range(10)])
    assert s.text.splitlines() == ["line 0", note(7, 3), "line 8", "line 9"]


async def test_exactly_keep_lines_is_kept_whole() -> None:
    lines = [f"line {i}" for i in range(4)]
    s = await feed(sink(keep_lines=4), lines)
    assert s.text.splitlines() == lines
    assert s.dropped == 0


async def test_error_lines_of_the_middle_are_kept_in_arrival_order() -> None:
    lines = [
        "p0 1%",
        "E0 ERROR a",
        "p1 1%",
        "p2 1%",
        "W0 WARNING b",
        "E1 ERROR c",
        "p3 1%",
        "p4 1%",
    ]
    s = await feed(sink(keep_lines=2), lines)
    assert s.text.splitlines() == ["p0 1%", note(4, 2, 2), "E0 ERROR a", "E1 ERROR c", "p4 1%"]
    assert s.dropped == 4  # p1, p2, W0, p3


async def test_only_errors_in_the_middle_need_no_note() -> None:
    lines = ["a 1%", "x ERROR 1", "y ERROR 2", "b 2%"]
    s = await feed(sink(keep_lines=2), lines)
    assert s.text.splitlines() == lines
    assert s.dropped == 0


async def test_keep_lines_zero_keeps_only_errors() -> None:
    rec = Recorder()
    s = await feed(sink(keep_lines=0, logger=rec), ["a 1%", "b ERROR x", "c WARN", "d 2%"])
    assert s.text.splitlines() == [note(3, 0, 1), "b ERROR x"]
    assert s.dropped == 3
    # Shown lines still reach the logger: keeping and showing are separate.
    assert [m for _, m in rec.calls] == ["a 1%", "b ERROR x", "c WARN", "d 2%"]


def test_error_cap_value() -> None:
    assert ERROR_CAP == 10_000


async def test_middle_errors_beyond_the_cap_are_dropped() -> None:
    s = sink(keep_lines=4)
    for i in range(ERROR_CAP + 7):
        await s.line(f"ERROR {i}")
    s.close()
    kept = s.text.splitlines()
    # 2 head + the cap + the note + 2 tail
    assert len(kept) == ERROR_CAP + 5
    assert kept[:3] == ["ERROR 0", "ERROR 1", note(3, 4, ERROR_CAP)]
    assert kept[3] == "ERROR 2"
    assert kept[-3:] == [
        f"ERROR {ERROR_CAP + 1}",
        f"ERROR {ERROR_CAP + 5}",
        f"ERROR {ERROR_CAP + 6}",
    ]
    assert s.dropped == 3


async def test_error_cap_is_read_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "ERROR_CAP", 2)
    s = await feed(sink(keep_lines=0), ["ERROR a", "ERROR b", "ERROR c", "x 1%"])
    assert s.text.splitlines() == [note(2, 0, 2), "ERROR a", "ERROR b"]
    assert s.dropped == 2


@given(
    st.lists(st.sampled_from(["a 1%", "b 2%", "c ERROR", "d WARN", "noise"]), max_size=60),
    st.integers(min_value=0, max_value=8),
)
async def test_kept_text_is_the_log_with_its_middle_dropped(lines: list[str], keep: int) -> None:
    numbered = [f"{i} {line}" for i, line in enumerate(lines)]
    s = await feed(sink(keep_lines=keep), numbered)
    kept = s.text.splitlines() if s.text else []
    notes = [k for k in kept if k.startswith("[marsconn:")]
    raw = [k for k in kept if not k.startswith("[marsconn:")]
    assert s.lines_seen == len(lines)
    # Nothing invented, nothing reordered, every line accounted for.
    assert raw == [line for line in numbered if line in set(raw)]
    assert len(raw) + s.dropped == len(numbered)
    assert len(notes) == (1 if s.dropped else 0)
    if len(numbered) <= keep:
        assert raw == numbered
    non_errors = [k for k in raw if "ERROR" not in k]
    assert len(non_errors) <= keep
    # The first keep//2 and last keep - keep//2 lines are always there.
    head, tail = keep // 2, keep - keep // 2
    assert numbered[:head] == raw[:head]
    if tail and numbered:
        assert raw[-min(tail, len(numbered)) :] == numbered[-min(tail, len(numbered)) :]


# --- handlers (what is shown) --------------------------------------------------------------------


async def test_sync_handler_gets_line_job_logger_and_reformats() -> None:
    rec = Recorder()
    job = object()
    seen: list[tuple[str, Any, Any]] = []

    def handler(line: str, j: Any, logger: Any) -> str:
        seen.append((line, j, logger))
        return f"[adaptor] {line.upper()}"

    s = await feed(sink(handler=handler, logger=rec, job=job), ["a 1%\n", "noise"])
    assert seen == [("a 1%", job, rec), ("noise", job, rec)]
    # The handler decides what is shown: its output is not filtered.
    assert rec.calls == [("info", "[adaptor] A 1%"), ("info", "[adaptor] NOISE")]
    assert s.text.splitlines() == ["a 1%", "noise"]


async def test_async_handler() -> None:
    rec = Recorder()

    async def handler(line: str, job: Any, logger: Any) -> str | None:
        return None if "drop" in line else line + "!"

    s = await feed(sink(handler=handler, logger=rec), ["keep 1%", "drop 2%", "keep 3%"])
    assert rec.calls == [("info", "keep 1%!"), ("info", "keep 3%!")]
    assert s.text.splitlines() == ["keep 1%", "drop 2%", "keep 3%"]


async def test_handler_output_is_reclassified() -> None:
    rec = Recorder()
    s = await feed(
        sink(handler=lambda line, job, logger: f"FATAL: {line}", logger=rec, keep_lines=1),
        ["all good"],
    )
    assert rec.calls == [("error", "FATAL: all good")]
    assert s.text == "all good"


async def test_handler_non_string_result_is_converted() -> None:
    rec = Recorder()
    await feed(sink(handler=lambda line, job, logger: 42, logger=rec), ["x"])
    assert rec.calls == [("info", "42")]


async def test_handler_returning_none_suppresses_showing_not_keeping() -> None:
    rec = Recorder()
    s = await feed(
        sink(handler=lambda line, job, logger: None, logger=rec),
        ["a 1%", "b ERROR broken", "c WARN"],
    )
    assert rec.calls == []
    assert s.text.splitlines() == ["a 1%", "b ERROR broken", "c WARN"]
    assert s.lines_seen == 3


async def test_a_raising_handler_still_leaves_the_line_kept() -> None:
    def handler(line: str, job: Any, logger: Any) -> str:
        raise ValueError(line)

    s = sink(handler=handler)
    with pytest.raises(LogHandlerError):
        await s.line("mars - ERROR - the cause")
    assert s.text == "mars - ERROR - the cause"


@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_handler_becomes_log_handler_error(is_async: bool) -> None:
    def sync_handler(line: str, job: Any, logger: Any) -> str:
        raise KeyError("missing")

    async def async_handler(line: str, job: Any, logger: Any) -> str:
        raise RuntimeError("adaptor bug")

    handler = async_handler if is_async else sync_handler
    s = sink(handler=handler)
    with pytest.raises(LogHandlerError) as info:
        await s.line("a 1%")
    expected = (
        "log handler raised RuntimeError: adaptor bug"
        if is_async
        else "log handler raised KeyError: 'missing'"
    )
    assert str(info.value) == expected
    assert type(info.value.__cause__) is (RuntimeError if is_async else KeyError)


# --- logger routing ------------------------------------------------------------------------------


ROUTED = ["a ERROR x", "b WARNING y", "c 50%", "d 100% done"]


async def test_stdlib_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_logs.adaptor")
    with caplog.at_level(logging.INFO, logger="test_logs.adaptor"):
        await feed(sink(logger=logger), ROUTED)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "a ERROR x"),
        ("WARNING", "b WARNING y"),
        ("INFO", "c 50%"),
        ("INFO", "d 100% done"),
    ]


async def test_structlog_logger() -> None:
    with capture_logs() as events:
        await feed(sink(logger=structlog.get_logger("adaptor")), ROUTED)
    assert [(e["log_level"], e["event"]) for e in events] == [
        ("error", "a ERROR x"),
        ("warning", "b WARNING y"),
        ("info", "c 50%"),
        ("info", "d 100% done"),
    ]


async def test_plain_object_logger() -> None:
    rec = Recorder()
    await feed(sink(logger=rec), ROUTED)
    assert rec.calls == [
        ("error", "a ERROR x"),
        ("warning", "b WARNING y"),
        ("info", "c 50%"),
        ("info", "d 100% done"),
    ]


async def test_no_logger_is_fine() -> None:
    s = await feed(sink(logger=None), ROUTED)
    assert s.text.splitlines() == ROUTED
