"""Pipe mode as a drop-in for the adaptor, against the real pipe server.

MARS's log must reach the caller and leave the server (``GET``/``DELETE
/<uid>``) whatever the outcome; the inputs the adaptor really gives (None
values, a relative target) must work; ``Result.message`` must hold every raw
line. Each test checks the server's log directory and the target directory
afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import marsconn
from marsconn.testing import expected_data

from ._plans import assert_only, fake, make_environ, pipe_plan_real
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

StartPipe = Callable[..., RealServer]


def logs_left(server: RealServer) -> list[str]:
    assert server.logdir is not None
    return sorted(p.name for p in server.logdir.iterdir())


def test_rejection_brings_mars_error_lines_and_leaves_no_log(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    first, second = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    request = fake(4096, 1, exit=1, error="Unknown parameter paramx")
    result = marsconn.execute(
        pipe_plan_real([first.url, second.url], max_retries=2),
        request,
        environ,
        outdir / "data.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError)
    assert result.error.returncode == 1
    assert result.error_kind is marsconn.ErrorKind.RUNTIME
    assert [(a.server, a.error_class) for a in result.attempts] == [(first.url, "mars_rejected")]
    lines = result.message.splitlines()
    assert "mars - ERROR - fake failure: exit 1" in lines
    assert "mars - ERROR - Unknown parameter paramx" in lines
    assert [f"mars - INFO - line {i} of 3" for i in (1, 2, 3)] == lines[:3]
    text = str(result.error)
    assert "MARS's error lines:" in text
    assert "  mars - ERROR - Unknown parameter paramx" in text
    # MARS ran once, on the first server only, and its log is gone from the server.
    assert standin.runs(environ["request_id"]) == 1
    assert logs_left(first) == []
    assert logs_left(second) == []
    assert_only(outdir, {})


def test_success_leaves_no_log_on_the_server(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    result = marsconn.execute(
        pipe_plan_real([server.url]), fake(70_000, 4), environ, outdir / "data.grib"
    )
    assert result.ok, result.error
    assert result.message.splitlines() == [f"mars - INFO - line {i} of 3" for i in (1, 2, 3)]
    assert logs_left(server) == []
    assert_only(outdir, {"data.grib": expected_data(70_000, 4)})


def test_none_values_and_a_relative_target(
    real_pipe_server: StartPipe,
    standin: Standin,
    outdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = real_pipe_server()
    # What the adaptor's make_env_dict gives with an empty config.
    environ = {
        "user_id": None,
        "request_id": None,
        "namespace": "NO-OSPROJECT:NO-NAMESPACE",
        "host": None,
        "username": "NO-OSPROJECT:NO-NAMESPACE:None",
    }
    monkeypatch.chdir(outdir)
    result = marsconn.execute(pipe_plan_real([server.url]), fake(50_000, 9), environ, "data.grib")
    assert result.ok, result.error
    assert result.target == str(outdir / "data.grib")
    assert result.request_id is not None
    # The generated request id reached MARS and named its log, which was then deleted.
    assert standin.runs(result.request_id) == 1
    assert result.attempts[0].job_id == result.request_id
    assert logs_left(server) == []
    assert_only(outdir, {"data.grib": expected_data(50_000, 9)})


def test_forty_line_job_keeps_every_raw_line(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    result = marsconn.execute(
        pipe_plan_real([server.url]), fake(2048, 2, lines=40), make_environ(), outdir / "x.grib"
    )
    assert result.ok, result.error
    assert result.message.splitlines() == [f"mars - INFO - line {i} of 40" for i in range(1, 41)]
    assert result.dropped_log_lines == 0
    assert logs_left(server) == []


def test_failure_mid_stream_brings_the_log_and_leaves_none(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    result = marsconn.execute(
        pipe_plan_real([server.url]),
        fake(300_000, 5, failafter=100_000),
        environ,
        outdir / "data.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError)
    assert [a.error_class for a in result.attempts] == ["mars_rejected"]
    assert "mars - ERROR - fake failure after 100000 bytes" in result.message.splitlines()
    assert "  mars - ERROR - fake failure after 100000 bytes" in str(result.error)
    assert logs_left(server) == []
    assert_only(outdir, {})


def test_end_of_request_without_data_is_no_data(
    real_pipe_server: StartPipe, standin: Standin, outdir: Path
) -> None:
    first, second = real_pipe_server(), real_pipe_server()
    environ = make_environ()
    result = marsconn.execute(
        pipe_plan_real([first.url, second.url], max_retries=2),
        fake(0),
        environ,
        outdir / "data.grib",
    )
    assert isinstance(result.error, marsconn.NoDataError)
    assert result.error_kind is marsconn.ErrorKind.NO_DATA
    assert [(a.server, a.error_class) for a in result.attempts] == [(first.url, "no_data")]
    assert standin.runs(environ["request_id"]) == 1
    assert logs_left(first) == []
    assert_only(outdir, {})
