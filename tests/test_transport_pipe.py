"""The executor in pipe mode, against real servers on 127.0.0.1.

Every row of the pipe failover table in docs/pipe-mode.md has a test here.
Servers run on background event loops (the ``mars_pipe_server_factory``
fixture) unless a test needs a hand-made server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import marsconn
from marsconn import ErrorKind, JobKilledError, LogHandlerError, MarsRequestError, NoDataError
from marsconn.run import pipe_connection, pipe_partfile
from marsconn.run import pipe_transport as transport_pipe
from marsconn.run.health import ServerHealth
from marsconn.run.pipe_connection import _set_keepalive
from marsconn.run.pipe_partfile import temp_path_pattern
from marsconn.testing import (
    MarsScript,
    PipeMarsServer,
    PostRecord,
    SilentServer,
    dead_url,
    iter_data,
    run_in_thread,
)
from marsconn.testing import expected_data as expected

Factory = Callable[..., PipeMarsServer]
LOG = ("mars - INFO - Transferring 3 fields", "mars - WARNING - slow tape", "chatter")


class Recorder:
    """A logger that records the lines shown to it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warning = error = info


class NullAudit:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def plan(urls: list[str], **overrides: Any) -> marsconn.ConnectionPlan:
    settings: dict[str, Any] = {
        "servers": urls,
        "failover_order": "listed",
        "retry_delay": 0,
        "max_retries": 1,
        "connect_timeout": 2,
        "request_timeout": 2,
        "read_timeout": 5,
    }
    settings.update(overrides)
    return marsconn.resolve_plan(env={}, overrides=settings, logger=NullAudit())


async def run(
    p: marsconn.ConnectionPlan,
    environ: dict[str, str],
    target: Path,
    requests: Any = None,
    **kw: Any,
) -> marsconn.Result:
    kw.setdefault("health", ServerHealth())
    kw.setdefault("audit_logger", NullAudit())
    return await marsconn.execute_async(
        p, {"param": "2t"} if requests is None else requests, environ, target, **kw
    )


def classes(result: marsconn.Result) -> list[str | None]:
    return [a.error_class for a in result.attempts]


# Tests touch small local files synchronously; these helpers say so once.


def content(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def put(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def make_dir(path: Path) -> None:
    path.mkdir()


def is_dir(path: Path) -> bool:
    return path.is_dir()


def matches_stream(path: Path, size: int, seed: int) -> bool:
    """Whether ``path`` holds exactly ``expected_data(size, seed)``, compared piecewise."""
    with path.open("rb") as f:
        for piece in iter_data(size, seed=seed, chunk_size=4 * 1024 * 1024):
            if f.read(len(piece)) != piece:
                return False
        return f.read(1) == b""


async def settled(record: PostRecord, within: float = 5.0) -> str:
    """The outcome of a POST once the server has finished answering it."""
    for _ in range(int(within / 0.01)):
        if record.outcome != "dropped":
            break
        await asyncio.sleep(0.01)
    return record.outcome


def leftovers(target: Path) -> list[str]:
    """Temporary files of ``target`` still in its directory."""
    pattern = temp_path_pattern(target)
    return [p.name for p in target.parent.iterdir() if pattern.fullmatch(p.name)]


@pytest.fixture
def factory(mars_pipe_server_factory: Factory) -> Factory:
    return mars_pipe_server_factory


# --- success, markers -------------------------------------------------------------------------


async def test_success_streams_output_and_fetches_the_log(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=300_000, seed=3, log_lines=LOG))
    seen: list[str] = []

    def handler(line: str, job: Any, logger: Any) -> str:
        seen.append(line)
        return line

    result = await run(plan([server.url]), mars_environ, mars_target, log_handler=handler)
    assert result.ok, result.error
    assert (result.server, result.bytes, result.mode) == (server.url, 300_000, "pipe")
    assert content(mars_target) == expected(300_000, seed=3)
    assert leftovers(mars_target) == []
    (post,) = server.posts
    assert (post.request, post.environ, post.outcome) == (
        {"param": "2t"},
        mars_environ,
        "complete",
    )
    assert result.attempts[0].job_id == post.uid
    assert seen == list(LOG)
    assert result.message == "\n".join(LOG)
    assert server.deleted == [post.uid]
    assert server.logs == {}


async def test_default_filter_shows_only_meaningful_lines_and_keeps_them_all(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(log_lines=LOG))
    shown = Recorder()
    result = await run(plan([server.url]), mars_environ, mars_target, logger=shown)
    assert result.ok
    assert shown.lines == ["mars - INFO - Transferring 3 fields", "mars - WARNING - slow tape"]
    assert result.message == "\n".join(LOG)


async def test_a_forty_line_job_keeps_every_raw_line(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    lines = [f"mars - INFO - line {i} of 40" for i in range(1, 41)]
    server = factory(MarsScript(log_lines=lines))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert result.message.splitlines() == lines
    assert result.dropped_log_lines == 0


async def test_rewind_mid_stream_keeps_the_data_once(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=200_000, rewind_after=150_000, chunk_size=10_000))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert server.posts[0].bytes_sent == 350_000  # the server did send the first pass
    assert content(mars_target) == expected(200_000)
    assert result.bytes == 200_000


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5])
async def test_tiny_data_chunks_are_data_not_markers(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, chunk_size: int
) -> None:
    # Every 4-byte chunk is a marker candidate; none of these spells one.
    server = factory(MarsScript(output_size=2000, chunk_size=chunk_size))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert content(mars_target) == expected(2000)


@pytest.mark.parametrize("existed", [True, False])
async def test_endr_without_data_is_no_data_and_final(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, existed: bool
) -> None:
    if existed:
        put(mars_target, b"previous output")
    lines = ("mars - INFO - Retrieving", "mars - WARNING - no fields match", "mars - ERROR - x")
    first = factory(MarsScript(output_size=0, log_lines=lines))
    second = factory()
    result = await run(plan([first.url, second.url], max_retries=3), mars_environ, mars_target)
    assert isinstance(result.error, NoDataError)
    assert result.error_kind is ErrorKind.NO_DATA
    assert classes(result) == ["no_data"]
    assert [a.outcome for a in result.attempts] == ["final"]
    assert second.posts == []
    assert "with ENDR (the end-of-request marker) and no data" in str(result.error)
    assert "MARS's error lines:\n  mars - ERROR - x" in str(result.error)
    assert result.message.splitlines()[:3] == list(lines)
    assert (first.logs, first.deleted) == ({}, [mars_environ["request_id"]])
    assert content(mars_target) == (b"previous output" if existed else None)
    assert leftovers(mars_target) == []


async def test_a_handler_raising_on_the_no_data_note_is_a_handler_error(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=0))

    def handler(line: str, job: Any, logger: Any) -> str:
        if line.startswith("marsconn - ERROR"):
            raise RuntimeError("no notes please")
        return line

    result = await run(plan([server.url]), mars_environ, mars_target, log_handler=handler)
    assert isinstance(result.error, LogHandlerError)
    assert classes(result) == ["log_handler_error"]
    assert server.logs == {}
    assert content(mars_target) is None


async def test_no_data_counts_the_whole_list(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    # One empty request among others is not "no data"; all of them empty is.
    server = factory(by_step({1: MarsScript(output_size=0), 2: MarsScript(output_size=700)}))
    result = await run(plan([server.url]), mars_environ, mars_target, requests=REQUESTS)
    assert result.ok, result.error
    assert content(mars_target) == expected(700)
    server.script = MarsScript(output_size=0)
    result = await run(plan([server.url]), mars_environ, mars_target, requests=REQUESTS)
    assert isinstance(result.error, NoDataError)
    assert "ended all 2 requests" in str(result.error)
    assert content(mars_target) == expected(700)  # the earlier output is untouched
    assert server.logs == {}


async def test_replaces_an_existing_target_only_on_success(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    put(mars_target, b"old")
    server = factory(MarsScript(output_size=5000))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok
    assert content(mars_target) == expected(5000)


async def test_eror_exited_is_final_and_not_retried_elsewhere(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(
        MarsScript(output_size=100_000, error_after=50_000, error_payload={"exited": 3})
    )
    second = factory()
    result = await run(plan([first.url, second.url], max_retries=3), mars_environ, mars_target)
    assert isinstance(result.error, MarsRequestError)
    assert result.error.returncode == 3
    assert classes(result) == ["mars_rejected"]
    # The client stops reading at the EROR payload; the server thread records the
    # outcome only once its last write has drained.
    assert await settled(first.posts[0]) == "error"
    assert second.posts == []
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


@pytest.mark.parametrize(
    ("same", "nxt", "first_posts", "ok"),
    [
        (False, True, 1, True),  # next host at once
        (True, True, 3, True),  # same host (1 + same_host_retries), then the next
        (False, False, 1, False),  # final
    ],
)
async def test_eror_killed_follows_the_retry_flags(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    same: bool,
    nxt: bool,
    first_posts: int,
    ok: bool,
) -> None:
    payload = {"killed": 9, "retry_same_host": same, "retry_next_host": nxt}
    first = factory(MarsScript(output_size=10_000, error_after=5000, error_payload=payload))
    second = factory(MarsScript(output_size=10_000))
    result = await run(
        plan([first.url, second.url], same_host_retries=2), mars_environ, mars_target
    )
    assert len(first.posts) == first_posts
    assert set(classes(result)[:first_posts]) == {"mars_killed"}
    if ok:
        assert result.ok, result.error
        assert content(mars_target) == expected(10_000)
    else:
        assert isinstance(result.error, JobKilledError)
        assert second.posts == []
        assert content(mars_target) is None
    assert leftovers(mars_target) == []


# --- statuses ---------------------------------------------------------------------------------


async def test_400_is_final_and_explained(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    log = (
        "mars - INFO - Welcome to MARS",
        "mars - ERROR - Unknown parameter 'paramx'",
        "mars - ERROR - Request failed",
    )
    first = factory(MarsScript(returncode=2, log_lines=log))
    second = factory()
    result = await run(plan([first.url, second.url], max_retries=3), mars_environ, mars_target)
    assert isinstance(result.error, MarsRequestError)
    assert result.error.returncode == 2
    assert result.error_kind is ErrorKind.RUNTIME
    assert classes(result) == ["mars_rejected"]
    assert len(first.posts) == 1
    assert second.posts == []
    # MARS's own log, every line, then marsconn's summary.
    lines = result.message.splitlines()
    assert lines[:3] == list(log)
    assert lines[3].startswith("marsconn - ERROR - MARS exited with code 2")
    assert '{"exited": 2}' in lines[3]
    assert len(lines) == 4
    # The error's text says what MARS said.
    assert str(result.error).endswith(
        "\nMARS's error lines:\n"
        "  mars - ERROR - Unknown parameter 'paramx'\n"
        "  mars - ERROR - Request failed"
    )
    assert result.attempts[0].job_id == mars_environ["request_id"]
    # Fetched and deleted: nothing left on the server.
    assert (first.logs, first.deleted) == ({}, [mars_environ["request_id"]])


@pytest.mark.parametrize("status", [500, 503])
async def test_transient_status_retried_on_the_same_host_then_the_next(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, status: int
) -> None:
    first = factory(MarsScript(http_status=status))
    second = factory(MarsScript(output_size=1000))
    result = await run(
        plan([first.url, second.url], same_host_retries=2), mars_environ, mars_target
    )
    assert result.ok, result.error
    assert len(first.posts) == 3
    expected_class = "mars_killed" if status == 500 else f"http_{status}"
    assert classes(result) == [expected_class] * 3 + [None]
    # The executor moves on after same_host_retries; the attempt records that decision.
    assert [a.outcome for a in result.attempts] == ["same_server"] * 2 + [
        "next_server",
        "success",
    ]


async def test_retry_same_host_only_is_final_when_retries_are_used_up(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    # X-MARS-RETRY-NEXT-HOST: 0 forbids the next server: after the same-host
    # retries the failure is final and the second server never sees the job.
    first = factory(MarsScript(http_status=503, retry_same_host=True, retry_next_host=False))
    second = factory(MarsScript(output_size=1000))
    result = await run(
        plan([first.url, second.url], same_host_retries=2), mars_environ, mars_target
    )
    assert not result.ok
    assert len(first.posts) == 3
    assert second.posts == []
    assert [a.outcome for a in result.attempts] == ["same_server", "same_server", "final"]


@pytest.mark.parametrize("status", [429, 404])
async def test_other_statuses_go_to_the_next_host_at_once(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, status: int
) -> None:
    first = factory(MarsScript(http_status=status))
    second = factory(MarsScript(output_size=1000))
    result = await run(plan([first.url, second.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert len(first.posts) == 1
    assert classes(result) == [f"http_{status}", None]


@pytest.mark.parametrize(
    ("script", "first_posts", "ok"),
    [
        (MarsScript(http_status=503, retry_same_host=False), 1, True),
        (MarsScript(http_status=500, retry_same_host=False, retry_next_host=False), 1, False),
        (MarsScript(http_status=429, retry_same_host=True), 3, True),
        (MarsScript(http_status=404, retry_next_host=False), 1, False),
        (MarsScript(returncode=1, retry_next_host=True), 1, True),
    ],
)
async def test_retry_headers_override_the_defaults(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    script: MarsScript,
    first_posts: int,
    ok: bool,
) -> None:
    first = factory(script)
    second = factory(MarsScript(output_size=1000))
    result = await run(
        plan([first.url, second.url], same_host_retries=2), mars_environ, mars_target
    )
    assert len(first.posts) == first_posts
    assert result.ok is ok
    assert len(second.posts) == (1 if ok else 0)


# --- connection failures ----------------------------------------------------------------------


async def test_refused_server_is_skipped_without_sleep(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000))
    health = ServerHealth()
    dead = dead_url("http")
    # A huge retry_delay would show up as a second pass; both attempts are in pass 1.
    result = await run(
        plan([dead, server.url], retry_delay=60), mars_environ, mars_target, health=health
    )
    assert result.ok, result.error
    assert classes(result) == ["connect_refused", None]
    assert [a.pass_number for a in result.attempts] == [1, 1]
    assert health.is_ejected(dead)


async def test_dns_failure_moves_on(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000))
    result = await run(
        plan(["http://-no-such-host-.invalid:9000", server.url]), mars_environ, mars_target
    )
    assert result.ok, result.error
    assert classes(result) == ["dns_failure", None]


async def test_unanswered_ping_moves_on(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000))
    async with SilentServer() as silent:
        result = await run(
            plan([silent.url_for("http"), server.url], request_timeout=0.3),
            mars_environ,
            mars_target,
        )
    assert result.ok, result.error
    assert classes(result) == ["ping_timeout", None]


async def test_mid_body_drop_moves_on(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(output_size=300_000, die_after_bytes=100_000))
    second = factory(MarsScript(output_size=300_000))
    health = ServerHealth()
    result = await run(plan([first.url, second.url]), mars_environ, mars_target, health=health)
    assert result.ok, result.error
    assert classes(result) == ["transfer_broken", None]
    assert "after 100000 bytes" in str(result.attempts[0].error)
    assert health.is_ejected(first.url)
    assert content(mars_target) == expected(300_000)


@pytest.mark.parametrize("existed", [True, False])
async def test_failure_leaves_the_target_as_it_was(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, existed: bool
) -> None:
    if existed:
        put(mars_target, b"previous output")
    servers = [factory(MarsScript(output_size=300_000, die_after_bytes=200_000)) for _ in range(2)]
    result = await run(plan([s.url for s in servers], max_retries=2), mars_environ, mars_target)
    assert isinstance(result.error, marsconn.NoServerAvailableError)
    assert classes(result) == ["transfer_broken"] * 4
    if existed:
        assert content(mars_target) == b"previous output"
    else:
        assert content(mars_target) is None
    assert leftovers(mars_target) == []
    assert sorted(p.name for p in mars_target.parent.iterdir()) == (
        [mars_target.name] if existed else []
    )


async def test_body_without_endr_is_a_broken_transfer(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(output_size=5000, omit_endr=True))
    second = factory(MarsScript(output_size=5000))
    result = await run(plan([first.url, second.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert classes(result) == ["transfer_broken", None]
    assert "without ENDR" in str(result.attempts[0].error)
    assert content(mars_target) == expected(5000)


async def test_silent_server_hits_the_read_timeout(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(output_size=1000, run_time=2.0))
    second = factory(MarsScript(output_size=1000))
    health = ServerHealth()
    result = await run(
        plan([first.url, second.url], read_timeout=0.3), mars_environ, mars_target, health=health
    )
    assert result.ok, result.error
    assert classes(result) == ["read_timeout", None]
    assert health.is_ejected(first.url)
    assert content(mars_target) == expected(1000)


async def test_stall_mid_body_hits_the_read_timeout(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    # Data flows, then nothing: each read is bounded, not just the first.
    async with canned_server(OK_HEAD + b"3\r\nabc\r\n", hang=True) as (url, _):
        result = await run(plan([url], read_timeout=0.3), mars_environ, mars_target)
    assert classes(result) == ["read_timeout"]
    assert "after 3 data bytes" in str(result.attempts[0].error)
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


# --- lists of requests ------------------------------------------------------------------------


def by_step(scripts: dict[int, MarsScript]) -> Callable[[list[dict[str, Any]]], MarsScript]:
    """A script function choosing by the merged request's ``step`` key."""
    return lambda requests: scripts[requests[0]["step"]]


REQUESTS = [{"class": "ea", "param": "2t", "step": 1}, {"param": "tp", "step": 2}]


async def test_request_list_is_appended_and_only_the_current_request_rewinds(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(
        by_step(
            {
                1: MarsScript(output_size=100_000, seed=1),
                2: MarsScript(output_size=150_000, seed=2, rewind_after=60_000),
            }
        )
    )
    result = await run(plan([server.url]), mars_environ, mars_target, requests=REQUESTS)
    assert result.ok, result.error
    assert content(mars_target) == expected(100_000, seed=1) + expected(150_000, seed=2)
    assert result.bytes == 250_000
    assert [p.request for p in server.posts] == [
        {"class": "ea", "param": "2t", "step": 1},
        {"class": "ea", "param": "tp", "step": 2},  # merged, later keys winning
    ]
    assert len(server.deleted) == 2


async def test_failure_in_the_second_request_resumes_there_on_the_next_server(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(
        by_step(
            {
                1: MarsScript(output_size=100_000, seed=1),
                2: MarsScript(output_size=150_000, seed=2, die_after_bytes=70_000),
            }
        )
    )
    second = factory(
        by_step(
            {
                1: MarsScript(output_size=999, seed=9),  # must never run
                2: MarsScript(output_size=150_000, seed=2),
            }
        )
    )
    result = await run(plan([first.url, second.url]), mars_environ, mars_target, requests=REQUESTS)
    assert result.ok, result.error
    assert classes(result) == ["transfer_broken", None]
    assert [p.outcome for p in first.posts] == ["complete", "dropped"]
    assert [p.request for p in second.posts] == [{"class": "ea", "param": "tp", "step": 2}]
    assert content(mars_target) == expected(100_000, seed=1) + expected(150_000, seed=2)


async def test_rejection_of_the_second_request_discards_everything(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(by_step({1: MarsScript(output_size=1000), 2: MarsScript(returncode=4)}))
    result = await run(plan([server.url]), mars_environ, mars_target, requests=REQUESTS)
    assert isinstance(result.error, MarsRequestError)
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


# --- logs -------------------------------------------------------------------------------------


class _NoLogs(dict[str, str]):
    """Stands in for the server's log store and keeps nothing: GET /<uid> answers 404."""

    def __setitem__(self, key: str, value: str) -> None:
        pass


async def test_log_fetch_failure_is_not_fatal(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000, log_lines=LOG))
    server.logs = _NoLogs()
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert f"could not fetch the MARS log from {server.url}: HTTP 404" in result.message
    assert server.deleted == []  # nothing to delete after a 404
    assert content(mars_target) == expected(1000)


async def test_log_fetch_connection_failure_is_not_fatal(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    # The log answer is garbage: the note says so, and the retrieval itself succeeded.
    body = OK_HEAD + b"3\r\nabc\r\n4\r\nENDR\r\n0\r\n\r\n"
    async with canned_server(body, log_answer=b"garbage\r\n\r\n") as (url, _):
        result = await run(plan([url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert content(mars_target) == b"abc"
    assert "could not fetch the MARS log" in result.message
    assert "malformed status line" in result.message


async def test_raising_log_handler_is_final(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(output_size=1000, log_lines=LOG))
    second = factory()

    def handler(line: str, job: Any, logger: Any) -> str:
        raise ValueError("boom")

    result = await run(
        plan([first.url, second.url]), mars_environ, mars_target, log_handler=handler
    )
    assert isinstance(result.error, LogHandlerError)
    assert classes(result) == ["log_handler_error"]
    assert second.posts == []
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


async def test_kill_from_the_log_handler_stops_the_list(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000, log_lines=LOG))

    def handler(line: str, job: Any, logger: Any) -> str:
        job.kill()
        return line

    result = await run(
        plan([server.url]), mars_environ, mars_target, requests=REQUESTS, log_handler=handler
    )
    assert isinstance(result.error, JobKilledError)
    assert classes(result) == ["killed"]
    assert len(server.posts) == 1  # the second request never ran
    assert content(mars_target) is None


# --- MARS's log after failures: fetched, explained, deleted ----------------------------------


MARS_ERROR = ("mars - INFO - starting", "mars - ERROR - Disk quota exceeded on the cache")


async def test_eror_mid_stream_fetches_and_deletes_the_log(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(
        MarsScript(
            output_size=100_000,
            error_after=30_000,
            error_payload={"exited": 6},
            log_lines=MARS_ERROR,
        )
    )
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert isinstance(result.error, MarsRequestError)
    assert result.error.returncode == 6
    assert "while sending data" in str(result.error)
    assert "\n  mars - ERROR - Disk quota exceeded on the cache" in str(result.error)
    assert result.message.splitlines()[:2] == list(MARS_ERROR)
    assert (server.logs, server.deleted) == ({}, [mars_environ["request_id"]])
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


async def test_killed_mars_logs_are_fetched_on_every_attempt(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(http_status=500, log_lines=MARS_ERROR))
    second = factory(MarsScript(output_size=2000, log_lines=("mars - INFO - fine",)))
    result = await run(
        plan([first.url, second.url], same_host_retries=1), mars_environ, mars_target
    )
    assert result.ok, result.error
    assert classes(result) == ["mars_killed", "mars_killed", None]
    rid = mars_environ["request_id"]
    assert (first.logs, first.deleted) == ({}, [rid, rid])
    assert (second.logs, second.deleted) == ({}, [rid])
    # The failed attempts' logs and what became of them stay in the message.
    lines = result.message.splitlines()
    assert lines.count("mars - ERROR - Disk quota exceeded on the cache") == 2
    warnings = [line for line in lines if line.startswith("marsconn - WARNING - MARS was killed")]
    assert len(warnings) == 2
    assert lines[-1] == "mars - INFO - fine"
    assert "MARS's error lines" in str(result.attempts[0].error)
    assert content(mars_target) == expected(2000)


async def test_broken_transfer_fetches_the_log_when_the_server_still_answers(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    first = factory(MarsScript(output_size=300_000, die_after_bytes=100_000, log_lines=MARS_ERROR))
    second = factory(MarsScript(output_size=300_000))
    result = await run(plan([first.url, second.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert classes(result) == ["transfer_broken", None]
    assert (first.logs, first.deleted) == ({}, [mars_environ["request_id"]])
    assert "mars - ERROR - Disk quota exceeded on the cache" in result.message
    assert content(mars_target) == expected(300_000)


async def test_error_lines_in_the_error_text_are_bounded(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    log = [f"mars - ERROR - problem {i} " + "x" * 400 for i in range(25)]
    server = factory(MarsScript(returncode=1, log_lines=log))
    result = await run(plan([server.url]), mars_environ, mars_target)
    text = str(result.error)
    quoted = text.split("MARS's error lines:\n", 1)[1].splitlines()
    assert len(quoted) == 11
    assert quoted[0] == "  " + log[0][:300] + "..."
    assert quoted[9].startswith("  mars - ERROR - problem 9 ")
    assert quoted[10] == "  ... and 15 more in Result.message"
    assert all(line in result.message.splitlines() for line in log)


async def test_a_handler_raising_on_the_log_of_a_rejection_still_deletes_it(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(returncode=1, log_lines=MARS_ERROR))

    def handler(line: str, job: Any, logger: Any) -> str:
        raise RuntimeError(f"handler refuses {line!r}")

    result = await run(plan([server.url]), mars_environ, mars_target, log_handler=handler)
    assert isinstance(result.error, LogHandlerError)
    assert "handler refuses 'mars - INFO - starting'" in str(result.error)
    assert classes(result) == ["log_handler_error"]
    assert (server.logs, server.deleted) == ({}, [mars_environ["request_id"]])


async def test_a_handler_raising_on_a_rejection_body_deletes_the_log_without_reading_it(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    body = b'{"exited": 5, "log": "mars - ERROR - bad param"}'
    uid = mars_environ["request_id"].encode()
    answer = (
        b"HTTP/1.1 400 Bad Request\r\nX-MARS-UID: %s\r\nX-MARS-EXIT-CODE: 5\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (uid, len(body), body)
    )

    def handler(line: str, job: Any, logger: Any) -> str:
        raise RuntimeError(line)

    deleted = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with canned_server(answer, log_answer=deleted) as (url, seen):
        result = await run(plan([url]), mars_environ, mars_target, log_handler=handler)
    assert isinstance(result.error, LogHandlerError)
    assert [line.split()[:2] for line in seen] == [
        [b"HEAD", b"/"],
        [b"POST", b"/"],
        [b"DELETE", b"/" + uid],
    ]


async def test_read_timeout_does_not_wait_for_the_log_and_says_so(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    async with canned_server(OK_HEAD + b"3\r\nabc\r\n", hang=True) as (url, seen):
        result = await run(plan([url], read_timeout=0.3), mars_environ, mars_target)
    assert classes(result) == ["read_timeout"]
    assert f"MARS's log {'0' * 36} was not fetched from {url}" in result.message
    assert [line.split()[0] for line in seen] == [b"HEAD", b"POST"]


async def test_mars_writing_nothing_is_no_data(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    # The real server answers nothing when MARS exits 0 without writing a byte;
    # MARS's log, under the request id, shows that MARS did run.
    first = factory(MarsScript(write_file=False, log_lines=MARS_ERROR))
    second = factory()
    result = await run(plan([first.url, second.url], max_retries=2), mars_environ, mars_target)
    assert isinstance(result.error, NoDataError)
    assert classes(result) == ["no_data"]
    assert "closed the connection without answering the job" in str(result.error)
    assert "mars - ERROR - Disk quota exceeded on the cache" in str(result.error)
    assert second.posts == []
    # The POST went on the ping's kept-alive connection; a connection closed without
    # a byte of answer gets the request once more on a new one (see docs/pipe-mode.md).
    assert [p.outcome for p in first.posts] == ["no_answer", "no_answer"]
    assert (first.logs, first.deleted) == ({}, [mars_environ["request_id"]])
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


async def test_no_answer_and_no_log_is_a_broken_server(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    second = factory(MarsScript(output_size=500))
    async with canned_server(b"") as (url, seen):  # closes after each POST; GET: 404
        result = await run(plan([url, second.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert classes(result) == ["transfer_broken", None]
    rid = mars_environ["request_id"].encode()
    assert [line.split()[:2] for line in seen] == [
        [b"HEAD", b"/"],
        [b"POST", b"/"],
        [b"POST", b"/"],  # once more on a new connection, as for any silent close
        [b"GET", b"/" + rid],
    ]
    assert f"could not fetch the MARS log from {url}: HTTP 404" in result.message
    assert content(mars_target) == expected(500)


async def test_kill_through_send_from_a_cads_mars_server_style_handler(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    server = factory(MarsScript(output_size=1000, log_lines=MARS_ERROR))

    async def handler(line: str, ws: Any, logger: Any) -> str | None:
        if "ERROR" in line:
            await ws.send(json.dumps({"cmd": "kill"}))
        return line

    result = await run(
        plan([server.url]), mars_environ, mars_target, requests=REQUESTS, log_handler=handler
    )
    assert isinstance(result.error, JobKilledError)
    assert classes(result) == ["killed"]
    assert len(server.posts) == 1
    assert server.logs == {}
    assert content(mars_target) is None


# --- what the real servers accept ------------------------------------------------------------


async def test_none_values_and_a_generated_request_id(factory: Factory, mars_target: Path) -> None:
    server = factory(MarsScript(output_size=900))
    environ = {"request_id": None, "user_id": None, "namespace": None, "host": None}
    environ["username"] = "NO-OSPROJECT:NO-NAMESPACE:None"  # what the adaptor builds
    result = await run(plan([server.url]), environ, mars_target)
    assert result.ok, result.error
    (post,) = server.posts
    rid = post.environ["request_id"]
    assert uuid.UUID(rid).version == 4
    assert post.environ == {**environ, "request_id": rid}
    assert result.request_id == rid == post.uid
    assert (server.logs, server.deleted) == ({}, [rid])


async def test_relative_target_is_written_under_the_working_directory(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = factory(MarsScript(output_size=1500))
    monkeypatch.chdir(mars_target.parent)
    result = await run(plan([server.url]), mars_environ, Path("data.grib"))
    assert result.ok, result.error
    assert result.target == str(mars_target)
    assert content(mars_target) == expected(1500)


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(factory: Factory) -> tuple[PipeMarsServer, trustme.CA]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return factory(MarsScript(output_size=200_000), ssl=context), ca


async def test_https_verifies_with_the_ca_bundle(
    tls_server: tuple[PipeMarsServer, trustme.CA],
    mars_environ: dict[str, str],
    mars_target: Path,
    tmp_path: Path,
) -> None:
    server, ca = tls_server
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    result = await run(plan([server.url], ca_bundle=str(bundle)), mars_environ, mars_target)
    assert result.ok, result.error
    assert server.url.startswith("https://localhost:")
    assert content(mars_target) == expected(200_000)
    assert len(server.deleted) == 1


async def test_https_rejects_an_unknown_certificate(
    tls_server: tuple[PipeMarsServer, trustme.CA],
    mars_environ: dict[str, str],
    mars_target: Path,
) -> None:
    server, _ = tls_server
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert classes(result) == ["tls_error"]
    assert "certificate" in str(result.attempts[0].error).lower()
    assert server.posts == []


# --- size, cancellation, sync -----------------------------------------------------------------


async def test_large_transfer_is_byte_exact(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    size = 64 * 1024 * 1024
    server = factory(MarsScript(output_size=size, seed=5, chunk_size=1024 * 1024))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert result.bytes == size
    assert matches_stream(mars_target, size, seed=5)


@pytest.mark.parametrize("existed", [True, False])
async def test_cancellation_drops_the_connection_and_the_temp_file(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path, existed: bool
) -> None:
    if existed:
        put(mars_target, b"previous output")
    server = factory(MarsScript(output_size=50_000_000, chunk_size=65536, line_delay=0.01))
    task = asyncio.create_task(run(plan([server.url]), mars_environ, mars_target))
    temp: list[str] = []
    for _ in range(500):
        temp = leftovers(mars_target)
        if server.posts and server.posts[0].bytes_sent > 200_000 and temp:
            break
        await asyncio.sleep(0.01)
    assert temp, "the transfer did not start"
    assert temp[0].startswith(f".{mars_target.name}.")  # hidden, beside the target
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(mars_target) == []
    if existed:
        assert content(mars_target) == b"previous output"
    else:
        assert content(mars_target) is None
    # The server notices its client is gone: it stops sending.
    sent = -1
    for _ in range(200):
        if server.posts[0].bytes_sent == sent:
            break
        sent = server.posts[0].bytes_sent
        await asyncio.sleep(0.05)
    assert server.posts[0].outcome == "dropped"
    assert server.posts[0].bytes_sent < 50_000_000


def test_sync_execute_with_a_server_thread(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    with run_in_thread(PipeMarsServer(MarsScript(output_size=70_000, log_lines=LOG))) as server:
        result = marsconn.execute(
            plan([server.url]),
            [{"param": "2t"}],
            mars_environ,
            str(mars_target),
            health=ServerHealth(),
            audit_logger=NullAudit(),
        )
    assert result.ok, result.error
    assert content(mars_target) == expected(70_000)
    assert "Transferring 3 fields" in result.message


def test_part_file_writes_exactly_whatever_the_system_call_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_writev(fd: int, pieces: list[Any]) -> int:
        return os.write(fd, b"".join(bytes(p) for p in pieces)[:5])

    part = pipe_partfile._PartFile(tmp_path / "out.grib")
    assert part.path.parent == tmp_path
    assert temp_path_pattern(tmp_path / "out.grib").fullmatch(part.path.name)
    monkeypatch.setattr(pipe_partfile, "_writev", short_writev)
    part.write([b"abc", memoryview(b"defgh"), bytearray(b"ij")])
    part.write([b"op", b"qrstu"], 7)  # the caller knows the total
    monkeypatch.setattr(pipe_partfile, "_writev", None)  # a platform without writev
    part.write([b"kl", b"mn"])
    monkeypatch.undo()
    part.write([bytes([i % 256]) for i in range(3000)])  # more pieces than IOV_MAX
    assert part.size == 21 + 3000
    part.truncate(3)
    part.write([b"XY"])
    part.close()
    assert content(part.path) == b"abcXY"
    part.discard()
    assert content(part.path) is None


def test_keepalive_helper_sets_the_options() -> None:
    with socket.socket() as sock:
        _set_keepalive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60


async def test_keepalive_is_on_for_every_connection(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []

    def spy(sock: socket.socket) -> None:
        _set_keepalive(sock)
        seen.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    monkeypatch.setattr(pipe_connection, "_set_keepalive", spy)
    server = factory(MarsScript(output_size=1000))
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert seen == [1]  # one connection carried the ping, the job and the log


# --- malformed answers, from a hand-made server -----------------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\nX-MARS-UID: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % (b"0" * 36)


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@contextlib.asynccontextmanager
async def canned_server(
    answer: bytes,
    *,
    ping: bytes = b"HTTP/1.1 204 No Content\r\n\r\n",
    close_after_ping: bool = False,
    hang: bool = False,
    reset: bool = False,
    log_answer: bytes | None = None,
    log_hang: bool = False,
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hand-made pipe server: fixed answers, faults on demand.

    Answers ``HEAD`` with ``ping`` (closing afterwards with
    ``close_after_ping``), ``POST`` with ``answer`` then closes, hangs
    (``hang``) or resets (``reset``) the connection. With ``log_answer`` the
    connection stays open after the job and that is the answer to the next
    request (the log fetch); with ``log_hang`` that request is never
    answered. Yields the URL and the request lines received.
    """
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n", 1)[0])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if head.startswith(b"HEAD"):
                    writer.write(ping)
                    await writer.drain()
                    if close_after_ping:
                        break
                elif head.startswith(b"POST"):
                    writer.write(answer)
                    await writer.drain()
                    if reset:
                        writer.transport.abort()
                        return
                    if hang:
                        await asyncio.sleep(3600)
                    if log_answer is None and not log_hang:
                        break
                else:
                    if log_hang:
                        await asyncio.sleep(3600)
                    writer.write(log_answer or NOT_FOUND)
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@pytest.mark.parametrize(
    ("answer", "error_class", "message"),
    [
        (OK_HEAD + b"3\r\nabc\r\nzz\r\n", "transfer_broken", "malformed chunk-size line"),
        (OK_HEAD + b"3\r\nabcdef", "transfer_broken", "chunk not followed by CRLF"),
        (OK_HEAD + b"4\r\nENDR\r\n3\r\nabc\r\n0\r\n\r\n", "transfer_broken", "data after ENDR"),
        (OK_HEAD + b"4\r\nEROR\r\n3\r\nabc\r\n0\r\n\r\n", "transfer_broken", "JSON object"),
        (OK_HEAD + b"3\r\nabc\r\n", "transfer_broken", "no terminating chunk"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "protocol_error", "chunked"),
        (b"NONSENSE\r\n\r\n", "transfer_broken", "malformed status line"),
    ],
)
async def test_malformed_answers_move_on(
    mars_environ: dict[str, str], mars_target: Path, answer: bytes, error_class: str, message: str
) -> None:
    async with canned_server(answer) as (url, _):
        health = ServerHealth()
        result = await run(plan([url]), mars_environ, mars_target, health=health)
    assert classes(result) == [error_class]
    assert result.attempts[0].outcome == "next_server"
    assert message in str(result.attempts[0].error)
    assert health.is_ejected(url)
    assert content(mars_target) is None
    assert leftovers(mars_target) == []


async def test_close_right_after_endr_still_counts(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    # ENDR says the data is complete; a missing HTTP terminator after it loses nothing.
    async with canned_server(OK_HEAD + b"3\r\nabc\r\n4\r\nENDR\r\n") as (url, _):
        result = await run(plan([url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert content(mars_target) == b"abc"


JOB_DONE = OK_HEAD + b"3\r\nabc\r\n4\r\nENDR\r\n0\r\n\r\n"


async def test_silence_after_endr_still_counts(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    async with canned_server(OK_HEAD + b"3\r\nabc\r\n4\r\nENDR\r\n", hang=True) as (url, _):
        result = await run(plan([url], read_timeout=0.3), mars_environ, mars_target)
    assert result.ok, result.error
    assert content(mars_target) == b"abc"


async def test_connection_reset_mid_body_moves_on(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    async with canned_server(OK_HEAD + b"a\r\nabc", reset=True) as (url, _):
        result = await run(plan([url]), mars_environ, mars_target)
    assert classes(result) == ["transfer_broken"]
    assert content(mars_target) is None


async def test_garbage_answer_to_the_ping_moves_on(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    async with canned_server(JOB_DONE, ping=b"SSH-2.0-OpenSSH\r\n\r\n") as (url, seen):
        result = await run(plan([url]), mars_environ, mars_target)
    assert classes(result) == ["ping_failed"]
    assert "malformed status line" in str(result.attempts[0].error)
    assert [line.split()[0] for line in seen] == [b"HEAD"]


async def test_reconnects_when_the_server_closes_after_an_answer(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    ping = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    async with canned_server(JOB_DONE, ping=ping, close_after_ping=True) as (url, seen):
        result = await run(plan([url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert content(mars_target) == b"abc"
    assert [line.split()[0] for line in seen] == [b"HEAD", b"POST", b"GET"]


async def test_missing_uid_skips_the_log(mars_environ: dict[str, str], mars_target: Path) -> None:
    answer = JOB_DONE.replace(b"X-MARS-UID: " + b"0" * 36 + b"\r\n", b"")
    async with canned_server(answer) as (url, seen):
        result = await run(plan([url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert "no valid X-MARS-UID (None)" in result.message
    assert [line.split()[0] for line in seen] == [b"HEAD", b"POST"]


async def test_unanswered_log_fetch_is_not_fatal(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    async with canned_server(JOB_DONE, log_hang=True) as (url, _):
        result = await run(plan([url], request_timeout=0.3), mars_environ, mars_target)
    assert result.ok, result.error
    assert "could not fetch the MARS log" in result.message
    assert "no answer within 0.3s" in result.message


REJECTED = b"HTTP/1.1 400 Bad Request\r\nX-MARS-EXIT-CODE: 5\r\nContent-Length: %d\r\n\r\n%s"


async def test_rejection_with_a_text_body_goes_to_the_log(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    text = b"mars - ERROR - no data\nmars - ERROR - request failed\n"
    async with canned_server(REJECTED % (len(text), text)) as (url, _):
        result = await run(plan([url]), mars_environ, mars_target)
    assert isinstance(result.error, MarsRequestError)
    assert result.error.returncode == 5
    assert result.message.splitlines()[:2] == [
        "mars - ERROR - no data",
        "mars - ERROR - request failed",
    ]


async def test_rejection_lines_reach_a_raising_handler(
    mars_environ: dict[str, str], mars_target: Path
) -> None:
    body = b'{"exited": 5, "log": "mars - ERROR - bad param"}'

    def handler(line: str, job: Any, logger: Any) -> str:
        raise RuntimeError(line)

    async with canned_server(REJECTED % (len(body), body)) as (url, _):
        result = await run(plan([url]), mars_environ, mars_target, log_handler=handler)
    assert isinstance(result.error, LogHandlerError)
    assert "mars - ERROR - bad param" in str(result.error)


async def test_long_log_lines_are_passed_on_in_pieces(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    long_line = "mars - INFO - " + "x" * 150_000
    server = factory(MarsScript(output_size=100, log_lines=["first", long_line, "last"]))
    seen: list[str] = []

    async def handler(line: str, job: Any, logger: Any) -> None:
        seen.append(line)
        await asyncio.sleep(0)  # an async handler lets more of the log arrive meanwhile

    result = await run(plan([server.url]), mars_environ, mars_target, log_handler=handler)
    assert result.ok, result.error
    assert seen[0] == "first"
    assert seen[-1] == "last"
    assert [len(line) for line in seen[1:-1]] == [65536, 65536, 150_014 - 2 * 65536]
    assert "".join(seen[1:-1]) == long_line


async def test_unwritable_temp_file_is_final(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(target: Path) -> None:
        raise PermissionError(13, "Permission denied", str(target.parent))

    monkeypatch.setattr(transport_pipe, "_PartFile", refuse)
    server = factory()
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert isinstance(result.error, marsconn.TargetError)
    assert classes(result) == ["target_error"]
    assert server.posts == []


async def test_write_failure_is_final(
    factory: Factory,
    mars_environ: dict[str, str],
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(self: Any, pieces: Any, total: int = -1) -> None:
        raise marsconn.TargetError("cannot write the output: No space left on device")

    monkeypatch.setattr(transport_pipe._PartFile, "write", full)
    first, second = factory(MarsScript(output_size=1000)), factory()
    result = await run(plan([first.url, second.url]), mars_environ, mars_target)
    assert classes(result) == ["target_error"]
    assert "No space left" in str(result.error)
    assert second.posts == []
    assert leftovers(mars_target) == []


async def test_target_that_cannot_be_replaced_is_final(
    factory: Factory, mars_environ: dict[str, str], mars_target: Path
) -> None:
    def make_the_target_a_directory(requests: list[dict[str, Any]]) -> MarsScript:
        # While the job runs, after the pre-flight checks.
        make_dir(mars_target)
        return MarsScript(output_size=1000)

    server = factory(make_the_target_a_directory)
    result = await run(plan([server.url]), mars_environ, mars_target)
    assert isinstance(result.error, marsconn.TargetError)
    assert result.error_kind is ErrorKind.SYSTEM
    assert classes(result) == ["target_error"]
    assert is_dir(mars_target)
    assert leftovers(mars_target) == []
