"""Pipe mode against the real forking pipe server: the same data-safety table.

The pipe server forks a child per connection and MARS from that child, all
in the server's process group, so freezing or killing the group stops the
server, the connection's handler and MARS together. Every test checks every
byte and what is left in the target directory (no temporary file) and, where
it matters, in the server's log directory. Nothing the pipe server does can
reach the caller's directory, so the directory is looked at again 1 s after
the outcome (WebSocket tests wait 5 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import marsconn
from marsconn.testing import expected_data

from ._plans import (
    LineCounter,
    assert_exact,
    assert_only,
    fake,
    make_environ,
    pipe_plan_real,
    settle,
    wait_started,
)
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

MIB = 1024 * 1024
OLD = b"old content of the target, which must survive\n" * 2000

StartPipe = Callable[..., RealServer]
PIPE_SETTLE = 1.0


async def _wait_gone(standin: Standin, request_id: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while standin.pids(request_id):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"MARS for {request_id} still runs {within:g}s later: {standin.pids(request_id)}"
            )
        await asyncio.sleep(0.05)


def _completed_runs(standin: Standin, request_id: str) -> int:
    return sum(1 for e in standin.events(request_id) if e["event"] == "end" and e.get("exit") == 0)


async def test_frozen_server_mid_transfer_fails_over_after_the_read_timeout(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "frozen.grib"
    plan = pipe_plan_real([s1.url, s2.url], read_timeout=2)
    task = asyncio.create_task(
        marsconn.execute_async(plan, fake(MIB, 12, chunkdelay=0.1), environ, target)
    )
    await wait_started(standin, rid)
    await asyncio.sleep(0.6)  # a few pieces are through
    s1.freeze()
    frozen_at = time.monotonic()
    result = await task
    print(f"\npipe failover past a frozen server took {time.monotonic() - frozen_at:.1f}s")
    s1.resume()
    resumed_at = time.monotonic()
    assert result.ok, result.error
    assert result.server == s2.url
    assert [(a.server, a.error_class) for a in result.attempts] == [
        (s1.url, "read_timeout"),
        (s2.url, None),
    ]
    assert_exact(target, MIB, 12)
    await settle(resumed_at, standin, seconds=PIPE_SETTLE)
    assert_only(outdir, {"frozen.grib": expected_data(MIB, 12)})


async def test_cancel_keeps_the_old_target_and_kills_mars(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "old.grib"
    target.write_bytes(OLD)
    task = asyncio.create_task(
        marsconn.execute_async(
            pipe_plan_real([server.url]), fake(MIB, 13, chunkdelay=0.3), environ, target
        )
    )
    await wait_started(standin, rid)
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled_at = time.monotonic()
    # The server kills MARS when it sees the connection gone (on its next piece of data).
    await _wait_gone(standin, rid, within=10)
    assert _completed_runs(standin, rid) == 0, standin.events(rid)
    await settle(cancelled_at, standin, seconds=PIPE_SETTLE)
    assert_only(outdir, {"old.grib": OLD})


async def test_three_concurrent_jobs_in_one_directory_each_get_their_own_bytes(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    plan = pipe_plan_real([server.url])
    jobs = {"a.grib": (MIB, 1), "b.grib": (MIB + 4321, 2), "c.grib": (700_001, 3)}
    results = await asyncio.gather(
        *(
            marsconn.execute_async(
                plan, fake(size, seed, chunkdelay=0.05), make_environ(), outdir / name
            )
            for name, (size, seed) in jobs.items()
        )
    )
    for name, result in zip(jobs, results, strict=True):
        assert result.ok, f"{name}: {result.error}"
    assert_only(outdir, {name: expected_data(*spec) for name, spec in jobs.items()})
    assert list(server.logdir.iterdir()) == []  # type: ignore[union-attr]


@pytest.mark.parametrize("servers", [1, 2])
async def test_kill_9_of_the_serving_process_group_mid_transfer(
    servers: int, real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    started = [real_pipe_server() for _ in range(servers)]
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "k.grib"
    task = asyncio.create_task(
        marsconn.execute_async(
            pipe_plan_real([s.url for s in started]),
            fake(MIB, 16, chunkdelay=0.1),
            environ,
            target,
        )
    )
    await wait_started(standin, rid)
    await asyncio.sleep(0.5)
    started[0].kill9()  # server, the connection's handler and MARS
    result = await task
    assert result.attempts[0].server == started[0].url
    assert result.attempts[0].outcome == "next_server"
    if servers == 1:
        assert not result.ok
        assert_only(outdir, {})
    else:
        assert result.ok, result.error
        assert result.server == started[1].url
        assert_only(outdir, {"k.grib": expected_data(MIB, 16)})


async def test_a_mars_rejection_is_final_and_runs_once(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    rid = environ["request_id"]
    result = await marsconn.execute_async(
        pipe_plan_real([s1.url, s2.url], max_retries=3, same_host_retries=2),
        fake(1024, 0, exit=1, error="Unknown parameter FOO"),
        environ,
        outdir / "r.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError), repr(result.error)
    assert [(a.server, a.error_class, a.outcome) for a in result.attempts] == [
        (s1.url, "mars_rejected", "final")
    ]
    assert standin.runs(rid) == 1
    assert_only(outdir, {})


async def test_a_rejection_brings_mars_error_line_and_leaves_no_log_on_the_server(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    # The server answers 400 with X-MARS-UID and keeps MARS's log until the
    # client fetches (GET) and deletes (DELETE) it.
    server = real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([server.url]),
        fake(1024, 0, exit=1, error="Unknown parameter FOO"),
        environ,
        outdir / "r.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError), repr(result.error)
    assert "mars - ERROR - Unknown parameter FOO" in result.message
    assert "Unknown parameter FOO" in str(result.error)
    assert list(server.logdir.iterdir()) == [], (  # type: ignore[union-attr]
        f"MARS's log {environ['request_id']}.log was left on the server"
    )
    assert_only(outdir, {})


async def test_a_rewind_mid_stream_gives_exact_bytes(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    lines = LineCounter()
    result = await marsconn.execute_async(
        pipe_plan_real([server.url]),
        [fake(300_000, 14, rewind=100_000), fake(200_000, 17, rewind=150_001)],
        make_environ(),
        outdir / "w.grib",
        log_handler=lines,
    )
    assert result.ok, result.error
    assert result.bytes == 500_000
    assert_only(outdir, {"w.grib": expected_data(300_000, 14) + expected_data(200_000, 17)})
    assert sum("rewinding" in ln for ln in lines.lines) == 2


async def test_an_error_mid_stream_fails_without_a_target(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([server.url]),
        fake(300_000, 15, failafter=100_000),
        environ,
        outdir / "e.grib",
    )
    assert not result.ok
    assert standin.runs(environ["request_id"]) == 1
    assert_only(outdir, {})


async def test_an_error_mid_stream_keeps_an_old_target(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    target = outdir / "old.grib"
    target.write_bytes(OLD)
    result = await marsconn.execute_async(
        pipe_plan_real([server.url]),
        [fake(100_000, 18), fake(300_000, 15, failafter=200_000)],
        make_environ(),
        target,
    )
    assert not result.ok
    assert_only(outdir, {"old.grib": OLD})


def test_three_requests_in_one_call_append_in_order(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    result = marsconn.execute(
        pipe_plan_real([server.url]),
        [fake(70_000, 1), fake(200_000, 2), fake(1, 3)],
        environ,
        outdir / "m.grib",
    )
    assert result.ok, result.error
    assert standin.runs(environ["request_id"]) == 3
    assert_only(
        outdir,
        {"m.grib": expected_data(70_000, 1) + expected_data(200_000, 2) + expected_data(1, 3)},
    )
    assert list(server.logdir.iterdir()) == []  # type: ignore[union-attr]
