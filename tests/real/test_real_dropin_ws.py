"""Shares mode as a drop-in for the adaptor, against the real WebSocket server.

The inputs the adaptor really gives (None values, a relative target, a
cads-mars-server-style log handler) must work; ``Result.message`` must hold
every raw line and MARS's error lines; existing retry variables keep their
cads-mars-server meaning; a missing ``MARS_CONFIG_FILE`` does not stop a
retrieval. Each test checks the target directory afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import marsconn
from marsconn.run.health import ServerHealth
from marsconn.testing import dead_url, expected_data

from ._plans import assert_only, fake, make_environ, ws_plan_real
from .peers import RealServer, Standin

pytestmark = pytest.mark.real

StartWs = Callable[..., RealServer]


def test_none_values_and_a_relative_target(
    real_ws_server: StartWs, standin: Standin, outdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = real_ws_server()
    # What the adaptor's make_env_dict gives with an empty config.
    environ = {
        "user_id": None,
        "request_id": None,
        "namespace": "NO-OSPROJECT:NO-NAMESPACE",
        "host": None,
        "username": "NO-OSPROJECT:NO-NAMESPACE:None",
    }
    monkeypatch.chdir(outdir)
    result = marsconn.execute(ws_plan_real([server.url]), fake(50_000, 9), environ, "data.grib")
    assert result.ok, result.error
    assert result.target == str(outdir / "data.grib")
    assert result.request_id is not None
    assert standin.runs(result.request_id) == 1
    assert_only(outdir, {"data.grib": expected_data(50_000, 9)})


def test_forty_line_job_keeps_every_raw_line(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    result = marsconn.execute(
        ws_plan_real([server.url]), fake(2048, 2, lines=40), make_environ(), outdir / "x.grib"
    )
    assert result.ok, result.error
    assert result.message.splitlines() == [f"mars - INFO - line {i} of 40" for i in range(1, 41)]
    assert result.dropped_log_lines == 0
    assert_only(outdir, {"x.grib": expected_data(2048, 2)})


def test_rejection_brings_mars_error_lines(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    first, second = real_ws_server(), real_ws_server()
    environ = make_environ()
    result = marsconn.execute(
        ws_plan_real([first.url, second.url], max_retries=2),
        fake(4096, 1, exit=1, error="Unknown parameter paramx"),
        environ,
        outdir / "data.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError)
    assert result.error_kind is marsconn.ErrorKind.RUNTIME
    assert [(a.server, a.error_class) for a in result.attempts] == [(first.url, "mars_rejected")]
    assert "mars - ERROR - Unknown parameter paramx" in result.message.splitlines()
    assert standin.runs(environ["request_id"]) == 1
    assert_only(outdir, {})


def test_handler_written_for_cads_mars_server_can_kill(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    target = outdir / "out.grib"
    target.write_bytes(b"old")

    async def handler(line: str, ws: Any, logger: Any) -> str | None:
        # The cads-mars-server style: the second argument is used like the WebSocket.
        if line.endswith("line 2 of 30"):
            await ws.send(json.dumps({"cmd": "kill"}))
        return line

    environ = make_environ()
    result = marsconn.execute(
        ws_plan_real([server.url]),
        fake(2048, 3, lines=30, linedelay=0.05),
        environ,
        target,
        log_handler=handler,
    )
    assert isinstance(result.error, marsconn.JobKilledError)
    assert [a.error_class for a in result.attempts] == ["killed"]
    standin.wait_gone(environ["request_id"])
    assert_only(outdir, {"out.grib": b"old"})


def test_retry_variables_keep_their_meaning(outdir: Path) -> None:
    # MARS_MAX_RETRIES passes over the list, MARS_RETRY_DELAY seconds between passes,
    # no sleep between the servers of one pass.
    plan = marsconn.resolve_plan(
        {"mars_servers": [dead_url("http"), dead_url("http")]},
        env={
            "MARS_USE_SHARES": "true",
            "MARS_FORCE_WEBSOCKET_MODE": "true",
            "MARS_MAX_RETRIES": "3",
            "MARS_RETRY_DELAY": "1",
            "MARS_CONFIG_FILE": str(outdir / "absent.yaml"),
        },
    )
    with capture_logs() as events:
        result = marsconn.execute(
            plan,
            fake(),
            make_environ(),
            outdir / "x.grib",
            health=ServerHealth(),
            audit_logger=structlog.get_logger(),
        )
    assert isinstance(result.error, marsconn.NoServerAvailableError)
    assert result.error_kind is marsconn.ErrorKind.SYSTEM
    assert [a.pass_number for a in result.attempts] == [1, 1, 2, 2, 3, 3]
    sleeps = [e["sleep"] for e in events if e["event"] == "marsconn.failover"]
    assert sleeps == [0, 1, 0, 1, 0]
    assert_only(outdir, {})


def test_defaults_give_up_on_refused_servers_after_ten_passes_of_two_seconds() -> None:
    plan = marsconn.resolve_plan(
        {"mars_servers": [dead_url("http"), dead_url("http")]},
        env={"MARS_CONFIG_FILE": "/nonexistent/cads-mars-server.yaml"},
    )
    assert plan.policy.max_passes == 10
    # Nine sleeps between ten passes: the caller hears "no server" after about 18 s.
    assert [plan.policy.backoff(i) for i in range(9)] == [2.0] * 9


def test_missing_config_file_lets_retrievals_run_but_fails_validate(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    missing = outdir.parent / "no-such-cads-mars-server.yaml"
    env = {
        "MARS_USE_SHARES": "true",
        "MARS_FORCE_WEBSOCKET_MODE": "true",
        "MARS_CONFIG_FILE": str(missing),
        "MARS_HEARTBEAT_INTERVAL": "1",
    }
    plan = marsconn.resolve_plan({"mars_servers": [server.url]}, env=env)
    assert any(str(missing) in w for w in plan.warnings)
    result = marsconn.execute(plan, fake(4096, 6), make_environ(), outdir / "x.grib")
    assert result.ok, result.error
    assert_only(outdir, {"x.grib": expected_data(4096, 6)})
    validate = subprocess.run(
        [sys.executable, "-m", "marsconn", "validate", "--server", server.url],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validate.returncode == 1, validate
    assert str(missing) in validate.stdout + validate.stderr
