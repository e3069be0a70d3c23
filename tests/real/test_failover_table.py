"""Rows of the failover tables that a real server (or a dead port) can produce.

Capacity (close 1008) and MARS rejections are in the data-safety files
(``test_ws_safety.py``, ``test_pipe_safety.py``); this file has the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import marsconn
from marsconn.testing import dead_url, expected_data

from ._plans import assert_only, fake, make_environ, pipe_plan_real, ws_plan_real
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

StartServer = Callable[..., RealServer]


def _plan(mode: str, urls: list[str], **overrides: object) -> marsconn.ConnectionPlan:
    return ws_plan_real(urls, **overrides) if mode == "ws" else pipe_plan_real(urls, **overrides)


@pytest.mark.parametrize("mode", ["ws", "pipe"])
async def test_connection_refused_goes_to_the_next_server(
    mode: str,
    real_ws_server: StartServer,
    real_pipe_server: StartServer,
    standin: Standin,
    outdir: Path,
) -> None:
    server = real_ws_server() if mode == "ws" else real_pipe_server()
    dead = dead_url("ws" if mode == "ws" else "http")
    environ = make_environ()
    result = await marsconn.execute_async(
        _plan(mode, [dead, server.url]), fake(200_000, 61), environ, outdir / "t.grib"
    )
    assert result.ok, result.error
    assert [(a.server, a.error_class, a.outcome) for a in result.attempts] == [
        (dead, "connect_refused", "next_server"),
        (server.url, None, "success"),
    ]
    assert standin.runs(environ["request_id"]) == 1
    assert_only(outdir, {"t.grib": expected_data(200_000, 61)})


@pytest.mark.parametrize("mode", ["ws", "pipe"])
async def test_every_server_refused_is_no_server_available(mode: str, outdir: Path) -> None:
    scheme = "ws" if mode == "ws" else "http"
    dead = [dead_url(scheme), dead_url(scheme)]
    result = await marsconn.execute_async(
        _plan(mode, dead, max_retries=2), fake(), make_environ(), outdir / "t.grib"
    )
    assert isinstance(result.error, marsconn.NoServerAvailableError), repr(result.error)
    assert [a.error_class for a in result.attempts] == ["connect_refused"] * 4
    assert_only(outdir, {})


async def test_pipe_mars_killed_by_sigterm_before_data_goes_to_the_next_server(
    real_pipe_server: StartServer, standin: Standin, outdir: Path
) -> None:
    # The server answers 500 with X-MARS-SIGNAL: 15, X-MARS-RETRY-NEXT-HOST: 1
    # and X-MARS-RETRY-SAME-HOST: 0.
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([s1.url, s2.url], same_host_retries=2),
        fake(1000, 0, signal=15),
        environ,
        outdir / "t.grib",
    )
    assert not result.ok
    assert [(a.server, a.error_class) for a in result.attempts] == [
        (s1.url, "mars_killed"),
        (s2.url, "mars_killed"),
    ]
    assert result.attempts[0].outcome == "next_server"
    assert standin.runs(environ["request_id"]) == 2
    assert_only(outdir, {})


async def test_pipe_mars_killed_by_sigkill_is_final(
    real_pipe_server: StartServer, standin: Standin, outdir: Path
) -> None:
    # SIGKILL is how an operator cancels a job: the server says retry nowhere.
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([s1.url, s2.url], same_host_retries=2),
        fake(1000, 0, signal=9),
        environ,
        outdir / "t.grib",
    )
    assert isinstance(result.error, marsconn.JobKilledError), repr(result.error)
    assert [(a.server, a.error_class, a.outcome) for a in result.attempts] == [
        (s1.url, "mars_killed", "final")
    ]
    assert standin.runs(environ["request_id"]) == 1
    assert_only(outdir, {})


async def test_pipe_mars_killed_mid_stream_goes_to_the_next_server_without_partial_data(
    real_pipe_server: StartServer, standin: Standin, outdir: Path
) -> None:
    # EROR then {"killed": 15, "retry_next_host": true, "retry_same_host": false}.
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([s1.url, s2.url], same_host_retries=2),
        fake(300_000, 62, failafter=100_000, signal=15),
        environ,
        outdir / "t.grib",
    )
    assert not result.ok
    assert [(a.server, a.error_class) for a in result.attempts] == [
        (s1.url, "mars_killed"),
        (s2.url, "mars_killed"),
    ]
    assert standin.runs(environ["request_id"]) == 2
    assert_only(outdir, {})


async def test_pipe_mars_failing_mid_stream_is_final(
    real_pipe_server: StartServer, standin: Standin, outdir: Path
) -> None:
    # EROR then {"exited": 1}: MARS itself failed; another server would too.
    s1, s2 = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    result = await marsconn.execute_async(
        pipe_plan_real([s1.url, s2.url], max_retries=3),
        fake(300_000, 63, failafter=100_000),
        environ,
        outdir / "t.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError), repr(result.error)
    assert [(a.server, a.error_class, a.outcome) for a in result.attempts] == [
        (s1.url, "mars_rejected", "final")
    ]
    assert standin.runs(environ["request_id"]) == 1
    assert_only(outdir, {})
