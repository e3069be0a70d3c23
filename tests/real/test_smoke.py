"""A plain retrieval through each real server: the harness works, bytes are exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import marsconn
from marsconn.testing import expected_data

from ._plans import (
    LineCounter,
    assert_only,
    fake,
    make_environ,
    pipe_plan_real,
    ws_plan_real,
)
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

MIB = 1024 * 1024


def test_pipe_one_mib(
    real_pipe_server: Callable[..., RealServer], standin: Standin, outdir: Path
) -> None:
    server = real_pipe_server()
    environ = make_environ()
    target = outdir / "data.grib"
    lines = LineCounter()
    result = marsconn.execute(
        pipe_plan_real([server.url]), fake(MIB, 7), environ, target, log_handler=lines
    )
    assert result.ok, result.error
    assert result.bytes == MIB
    assert result.server == server.url
    assert_only(outdir, {"data.grib": expected_data(MIB, 7)})
    assert standin.runs(environ["request_id"]) == 1
    assert [ln for ln in lines.lines if ln.startswith("mars - INFO - line")] == [
        f"mars - INFO - line {i} of 3" for i in (1, 2, 3)
    ]
    # The client fetched MARS's log and deleted it on the server.
    assert list(server.logdir.iterdir()) == []  # type: ignore[union-attr]


async def test_ws_one_mib(
    real_ws_server: Callable[..., RealServer], standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    environ = make_environ()
    target = outdir / "result.grib"
    lines = LineCounter()
    result = await marsconn.execute_async(
        ws_plan_real([server.url]), fake(MIB, 3), environ, target, log_handler=lines
    )
    assert result.ok, result.error
    assert result.bytes == MIB
    assert result.server == server.url
    assert_only(outdir, {"result.grib": expected_data(MIB, 3)})
    assert standin.runs(environ["request_id"]) == 1
    assert [ln for ln in lines.lines if ln.startswith("mars - INFO - line")] == [
        f"mars - INFO - line {i} of 3" for i in (1, 2, 3)
    ]
