"""Hostile inputs against the real servers: tokens, injected request lines, forged log lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import marsconn
from marsconn import PreflightError
from marsconn.testing import expected_data

from ._plans import LineCounter, assert_only, fake, make_environ, pipe_plan_real, ws_plan_real
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

TOKEN = "Tok3nZq9"
#: What the stand-in's ``fakecontrol`` line becomes: escapes made visible, one line.
SHOWN_CONTROL_LINE = "mars - INFO - \\x1b[31mred\\x1b[0m over\\rwritten\\x07"


def with_token(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{TOKEN}@{rest}"


def plan_for(mode: str, server: RealServer, url: str | None = None) -> marsconn.ConnectionPlan:
    urls = [url or server.url]
    return ws_plan_real(urls) if mode == "websocket" else pipe_plan_real(urls)


@pytest.fixture(params=["websocket", "pipe"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(
    mode: str,
    real_ws_server: Callable[..., RealServer],
    real_pipe_server: Callable[..., RealServer],
) -> RealServer:
    return real_ws_server() if mode == "websocket" else real_pipe_server()


def test_username_only_token_works(
    mode: str, server: RealServer, standin: Standin, outdir: Path
) -> None:
    environ = make_environ()
    result = marsconn.execute(
        plan_for(mode, server, with_token(server.url)), fake(5000, 4), environ, outdir / "t.grib"
    )
    assert result.ok, result.error
    assert_only(outdir, {"t.grib": expected_data(5000, 4)})
    assert standin.runs(environ["request_id"]) == 1
    assert TOKEN not in json.dumps(result.to_dict()) + repr(result)


@pytest.mark.parametrize(
    ("request_extra", "environ_extra"),
    [
        ({"param": "2t\nfakesize=7"}, {}),
        ({"param": "2t\rfakesize=7"}, {}),
        ({"param\nfakesize": "7"}, {}),
        ({"param=2t,fakesize": "7"}, {}),
        ({}, {"host": "w1\nMARS_INJECTED=1"}),
    ],
)
def test_injected_request_lines_never_reach_mars(
    mode: str,
    server: RealServer,
    standin: Standin,
    outdir: Path,
    request_extra: dict[str, Any],
    environ_extra: dict[str, str],
) -> None:
    # On the code before this check, {"fakesize": 1024, "param": "2t\nfakesize=7"}
    # made MARS write 7 bytes, reported as a success.
    environ = {**make_environ(), **environ_extra}
    request = {**fake(1024, 1), **request_extra}
    with pytest.raises(PreflightError, match="holds"):
        marsconn.execute(plan_for(mode, server), request, environ, outdir / "t.grib")
    assert standin.runs(environ["request_id"]) == 0
    assert_only(outdir, {})


def test_server_log_lines_cannot_forge_or_recolour_lines(
    mode: str, server: RealServer, standin: Standin, outdir: Path
) -> None:
    lines = LineCounter()
    plan = plan_for(mode, server)
    result = marsconn.execute(
        plan, fake(1024, 2, control=1), make_environ(), outdir / "t.grib", log_handler=lines
    )
    assert result.ok, result.error
    # The WebSocket server reads MARS's output from a pty, where a carriage return ends a
    # line: it sends the two parts as two messages. Either way, nothing raw gets through.
    shown = SHOWN_CONTROL_LINE.split("\\r") if mode == "websocket" else [SHOWN_CONTROL_LINE]
    assert lines.lines[3:] == shown
    assert result.message.split("\n")[3:] == shown
    for text in [*lines.lines, result.message]:
        assert not any(c in text for c in "\x1b\r\x07")
