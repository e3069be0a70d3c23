"""The executor in WebSocket mode, against real servers on 127.0.0.1.

Every row of the failover table in docs/executor.md has a test here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve

import marsconn
from marsconn import (
    JobKilledError,
    LogHandlerError,
    MarsRequestError,
    NoServerAvailableError,
    PreflightError,
)
from marsconn.core.errors import ErrorKind, NoDataError
from marsconn.run.health import ServerHealth
from marsconn.testing import (
    MarsScript,
    SilentServer,
    WsMarsServer,
    dead_url,
    expected_data,
    run_in_thread,
)

PlanFactory = Callable[..., marsconn.ConnectionPlan]
Factory = Callable[..., WsMarsServer]


def classes(result: marsconn.Result) -> list[str | None]:
    return [a.error_class for a in result.attempts]


async def settled_outcome(server: WsMarsServer, seconds: float = 5.0) -> str:
    """The first job's outcome once the server thread has recorded its end."""
    for _ in range(int(seconds / 0.02)):
        if server.jobs[0].outcome != "running":
            break
        await asyncio.sleep(0.02)
    return server.jobs[0].outcome


async def run(plan: marsconn.ConnectionPlan, environ: dict[str, str], target: Path, **kw: Any):
    kw.setdefault("health", ServerHealth())
    return await marsconn.execute_async(plan, {"param": "2t"}, environ, target, **kw)


# --- success ----------------------------------------------------------------------------------


async def test_success_writes_target_and_reports(
    mars_ws_server_factory: Factory, ws_plan: PlanFactory, mars_environ: dict[str, str], tmp_path
) -> None:
    server = mars_ws_server_factory(MarsScript(output_size=70_000, seed=3))
    job = tmp_path / "job"
    job.mkdir()
    target = job / "result.grib"
    result = await run(ws_plan([server.url]), mars_environ, target)
    assert result.ok, result.error
    assert result.server == server.url
    assert result.bytes == 70_000
    assert target.read_bytes() == expected_data(70_000, seed=3)
    assert not (job / "data.grib").exists()  # renamed onto the target
    assert [a.outcome for a in result.attempts] == ["success"]
    assert server.jobs[0].environ == mars_environ
    # The server was sent a path in a private directory beside the target, now gone.
    sent = Path(server.jobs[0].target)
    assert sent.name == "data.grib"
    assert sent.parent.parent == job
    assert sent.parent.name.startswith(".marsconn-result.grib.")
    assert sorted(p.name for p in job.iterdir()) == ["result.grib"]
    assert server.jobs[0].requests == [{"param": "2t"}]


async def test_long_job_with_heartbeats_outlives_request_timeout(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    # The existing client cancels any job longer than request_timeout; here the
    # acknowledge timeout only covers the wait for 'started'.
    server = mars_ws_server_factory(MarsScript(run_time=1.2), heartbeat_interval=0.1)
    plan = ws_plan([server.url], request_timeout=0.3, heartbeat_interval=0.1, heartbeat_misses=3)
    result = await run(plan, mars_environ, mars_target)
    assert result.ok, result.error
    assert result.duration > 1.2


# --- next server, at once ---------------------------------------------------------------------


async def test_refused_servers_are_skipped_without_sleep(
    mars_ws_server, ws_plan, mars_environ, mars_target
) -> None:
    plan = ws_plan([dead_url(), dead_url(), dead_url(), mars_ws_server.url], retry_delay=5)
    with capture_logs() as events:
        result = await run(plan, mars_environ, mars_target, audit_logger=structlog.get_logger())
    assert result.ok, result.error
    assert classes(result) == ["connect_refused"] * 3 + [None]
    failovers = [e for e in events if e["event"] == "marsconn.failover"]
    assert len(failovers) == 3
    assert all(e["sleep"] == 0 for e in failovers)
    assert result.duration < 5  # a retry_delay sleep would have shown


async def test_dns_failure_moves_on(mars_ws_server, ws_plan, mars_environ, mars_target) -> None:
    # A label starting with '-' is rejected by the resolver locally: no query leaves the host.
    result = await run(
        ws_plan(["ws://-no-such-host-.invalid:9001", mars_ws_server.url]),
        mars_environ,
        mars_target,
    )
    assert result.ok
    assert classes(result) == ["dns_failure", None]


async def test_handshake_timeout_moves_on(
    mars_ws_server, ws_plan, mars_environ, mars_target
) -> None:
    async with SilentServer() as silent:
        plan = ws_plan([silent.url_for("ws"), mars_ws_server.url], connect_timeout=0.3)
        result = await run(plan, mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["connect_timeout", None]


async def test_http_status_instead_of_upgrade_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    bad = mars_ws_server_factory(reject_handshake_status=503)
    good = mars_ws_server_factory()
    result = await run(ws_plan([bad.url, good.url]), mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["handshake_status", None]
    assert "503" in (result.attempts[0].error or "")


async def test_capacity_close_1008_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    full = mars_ws_server_factory(max_connections=0)
    good = mars_ws_server_factory()
    result = await run(ws_plan([full.url, good.url]), mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["capacity", None]
    assert "Server at capacity" in (result.attempts[0].error or "")
    assert full.jobs == []


async def test_closed_before_started_moves_on(
    mars_ws_server, ws_plan, mars_environ, mars_target
) -> None:
    async def close_at_once(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, "going away")

    async with serve(close_at_once, "127.0.0.1", 0) as closer:
        port = closer.sockets[0].getsockname()[1]
        plan = ws_plan([f"ws://127.0.0.1:{port}", mars_ws_server.url])
        result = await run(plan, mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["closed_before_start", None]


async def test_start_not_acknowledged_in_time_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    slow = mars_ws_server_factory(MarsScript(start_delay=2))
    good = mars_ws_server_factory()
    result = await run(
        ws_plan([slow.url, good.url], request_timeout=0.3), mars_environ, mars_target
    )
    assert result.ok
    assert classes(result) == ["start_timeout", None]


# --- presumed dead after start ----------------------------------------------------------------


async def test_connection_lost_after_started_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    dying = mars_ws_server_factory(MarsScript(log_lines=["a ERROR x"] * 3, die_after_lines=1))
    good = mars_ws_server_factory()
    result = await run(ws_plan([dying.url, good.url]), mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["connection_lost", None]
    assert dying.jobs[0].outcome == "died"


async def test_frozen_server_is_presumed_dead(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    frozen = mars_ws_server_factory(MarsScript(run_time=5), heartbeat_interval=0.1)
    good = mars_ws_server_factory(heartbeat_interval=0.1)
    plan = ws_plan([frozen.url, good.url], heartbeat_interval=0.1, heartbeat_misses=2)
    task = asyncio.create_task(run(plan, mars_environ, mars_target))
    for _ in range(250):
        if frozen.jobs:
            break
        await asyncio.sleep(0.02)
    frozen.freeze()  # no messages, no pongs
    result = await task
    assert result.ok
    assert classes(result) == ["server_silent", None]
    assert "no answer to a ping within 0.2s" in (result.attempts[0].error or "")
    frozen.resume()
    # On resuming, the server reads the kill that was sent before failing over.
    assert await settled_outcome(frozen) == "killed"


async def test_busy_server_that_answers_pings_is_not_abandoned(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    busy = mars_ws_server_factory(MarsScript(send_heartbeats=False, run_time=1.0, seed=4))
    other = mars_ws_server_factory()
    plan = ws_plan([busy.url, other.url], heartbeat_interval=0.1, heartbeat_misses=2)
    result = await run(plan, mars_environ, mars_target)
    assert result.ok, result.error
    assert result.server == busy.url
    assert classes(result) == [None]
    assert other.jobs == []
    assert mars_target.read_bytes() == expected_data(1024, seed=4)


async def test_server_error_state_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target, tmp_path
) -> None:
    # This server's shared root lacks the job directory: "workdir missing".
    other_root = tmp_path / "elsewhere"
    other_root.mkdir()
    wrong = mars_ws_server_factory(shared_root=other_root)
    good = mars_ws_server_factory()
    result = await run(ws_plan([wrong.url, good.url]), mars_environ, mars_target)
    assert result.ok
    assert classes(result) == ["server_error", None]
    assert "missing" in (result.attempts[0].error or "")


# --- final ------------------------------------------------------------------------------------


async def test_mars_rejection_is_final_and_never_repeated(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    rejecting = mars_ws_server_factory(
        MarsScript(log_lines=["mars - ERROR - no data"], returncode=1)
    )
    other = mars_ws_server_factory()
    result = await run(
        ws_plan([rejecting.url, other.url], max_retries=10), mars_environ, mars_target
    )
    assert isinstance(result.error, MarsRequestError)
    assert result.error.returncode == 1
    assert classes(result) == ["mars_rejected"]
    assert len(rejecting.jobs) == 1
    assert other.jobs == []
    assert "no data" in result.message
    assert not mars_target.exists()


async def test_mars_stopped_by_its_host_moves_on_but_sigkill_is_final(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    terminated = mars_ws_server_factory(MarsScript(returncode=-15))
    good = mars_ws_server_factory(MarsScript(seed=9))
    result = await run(ws_plan([terminated.url, good.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert classes(result) == ["mars_killed", None]
    assert mars_target.read_bytes() == expected_data(1024, seed=9)

    killed = mars_ws_server_factory(MarsScript(returncode=-9))
    other = mars_ws_server_factory()
    result = await run(ws_plan([killed.url, other.url]), mars_environ, mars_target)
    assert isinstance(result.error, JobKilledError)
    assert result.error_kind is ErrorKind.RUNTIME
    assert classes(result) == ["mars_killed"]
    assert other.jobs == []


async def test_kill_from_log_handler_is_final(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(
        MarsScript(log_lines=[f"line {i} 10%" for i in range(50)], line_delay=0.02)
    )
    other = mars_ws_server_factory()
    seen: list[str] = []

    def handler(line: str, job: marsconn.Job, logger: Any) -> str:
        seen.append(line)
        if len(seen) == 3:
            job.kill()
        return line

    result = await run(
        ws_plan([server.url, other.url]), mars_environ, mars_target, log_handler=handler
    )
    assert isinstance(result.error, JobKilledError)
    assert classes(result) == ["killed"]
    assert other.jobs == []
    assert await settled_outcome(server) == "killed"


async def test_raising_log_handler_kills_and_fails(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(
        MarsScript(log_lines=["mars - INFO - Processing 1%"] * 20, line_delay=0.02)
    )

    async def handler(line: str, job: marsconn.Job, logger: Any) -> str:
        raise RuntimeError("adaptor bug")

    result = await run(ws_plan([server.url]), mars_environ, mars_target, log_handler=handler)
    assert isinstance(result.error, LogHandlerError)
    assert "adaptor bug" in str(result.error)
    assert classes(result) == ["log_handler_error"]
    assert await settled_outcome(server) == "killed"


async def test_passes_are_bounded_with_backoff_between_them(
    ws_plan, mars_environ, mars_target
) -> None:
    plan = ws_plan([dead_url(), dead_url()], max_retries=3, retry_delay=0.01)
    with capture_logs() as events:
        result = await run(plan, mars_environ, mars_target, audit_logger=structlog.get_logger())
    assert isinstance(result.error, NoServerAvailableError)
    assert "3 passes" in str(result.error)
    assert len(result.attempts) == 6
    assert [a.pass_number for a in result.attempts] == [1, 1, 2, 2, 3, 3]
    sleeps = [e["sleep"] for e in events if e["event"] == "marsconn.failover"]
    # Within a pass: no sleep. Between passes: MARS_RETRY_DELAY, as cads-mars-server means it.
    assert sleeps[0] == 0
    assert sleeps[2] == 0
    assert sleeps[1] == sleeps[3] == 0.01
    assert len(sleeps) == 5


async def test_job_deadline_stops_the_job(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(run_time=10), heartbeat_interval=0.1)
    plan = ws_plan([server.url], job_deadline=0.5, heartbeat_interval=0.1)
    result = await run(plan, mars_environ, mars_target)
    assert isinstance(result.error, JobKilledError)
    assert "deadline" in str(result.error)
    assert await settled_outcome(server) in ("killed", "disconnected")


# --- target -----------------------------------------------------------------------------------


async def test_waits_for_shared_filesystem(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(file_delay=0.3, output_size=10))
    result = await run(ws_plan([server.url], target_settle_time=3), mars_environ, mars_target)
    assert result.ok, result.error
    assert mars_target.stat().st_size == 10


async def test_missing_output_is_a_final_error(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(write_file=False))
    other = mars_ws_server_factory()
    result = await run(
        ws_plan([server.url, other.url], target_settle_time=0.2), mars_environ, mars_target
    )
    assert isinstance(result.error, NoDataError)
    assert "missing" in str(result.error)
    assert other.jobs == []


async def test_empty_output_is_a_final_error(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(output_size=0))
    result = await run(ws_plan([server.url], target_settle_time=0.2), mars_environ, mars_target)
    assert isinstance(result.error, NoDataError)
    assert result.error_kind is ErrorKind.NO_DATA
    assert "empty" in str(result.error)


async def test_stale_file_never_counts_as_success(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    mars_target.write_bytes(b"old data from an earlier attempt")
    server = mars_ws_server_factory(MarsScript(write_file=False))
    result = await run(ws_plan([server.url], target_settle_time=0.2), mars_environ, mars_target)
    assert isinstance(result.error, NoDataError)
    assert mars_target.read_bytes() == b"old data from an earlier attempt"


# --- preflight --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "username"}, "environ lacks username"),
        ({"target": "relative-no-such-dir/data.grib"}, "relative-no-such-dir' does not exist"),
        ({"target": "/nonexistent-dir-for-marsconn/data.grib"}, "does not exist"),
    ],
)
async def test_preflight_fails_before_connecting(
    mars_ws_server, ws_plan, mars_environ, mars_target, change, message
) -> None:
    environ = dict(mars_environ)
    environ.pop(change.get("drop", ""), None)
    target = change.get("target", mars_target)
    with pytest.raises(PreflightError, match=message):
        await marsconn.execute_async(ws_plan([mars_ws_server.url]), {}, environ, target)
    assert mars_ws_server.jobs == []


# --- logs -------------------------------------------------------------------------------------


async def test_log_lines_reach_logger_and_message_is_bounded(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target, caplog
) -> None:
    lines = [f"mars - INFO - Transfering {i} bytes" for i in range(500)]
    lines.insert(10, "mars - ERROR - something broke early")
    server = mars_ws_server_factory(MarsScript(log_lines=lines))
    logger = logging.getLogger("adaptor")
    with caplog.at_level(logging.INFO, logger="adaptor"):
        result = await run(
            ws_plan([server.url], log_keep_lines=50), mars_environ, mars_target, logger=logger
        )
    assert result.ok
    kept = result.message.splitlines()
    assert len(kept) == 51  # the first 25 raw lines, a note, the last 25
    assert kept[10] == "mars - ERROR - something broke early"
    assert kept[25].startswith("[marsconn: 451 log lines dropped here")
    assert kept[-1] == "mars - INFO - Transfering 499 bytes"
    assert result.dropped_log_lines == 451
    assert len(caplog.records) == 501
    assert [r.levelname for r in caplog.records][10] == "ERROR"


async def test_handler_reformats_and_suppresses(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(log_lines=["keep 1%", "drop 2%", "keep 3%"]))

    def handler(line: str, job: marsconn.Job, logger: Any) -> str | None:
        return None if line.startswith("drop") else line.upper()

    shown: list[str] = []
    logger = type("L", (), {"info": lambda self, m: shown.append(m)})()
    result = await run(
        ws_plan([server.url]), mars_environ, mars_target, log_handler=handler, logger=logger
    )
    assert shown == ["KEEP 1%", "KEEP 3%"]
    # Result.message keeps the raw lines: the handler decides only what is shown.
    assert result.message.splitlines() == ["keep 1%", "drop 2%", "keep 3%"]


# --- failover order and health ----------------------------------------------------------------


async def test_ejected_server_is_tried_last_by_following_calls(
    mars_ws_server, ws_plan, mars_environ, mars_target
) -> None:
    health = ServerHealth()
    dead = dead_url()
    plan = ws_plan([dead, mars_ws_server.url], eject_cooldown=60)
    first = await run(plan, mars_environ, mars_target, health=health)
    assert classes(first) == ["connect_refused", None]
    second = await run(plan, mars_environ, mars_target, health=health)
    assert classes(second) == [None]
    assert health.is_ejected(dead)


async def test_only_server_is_still_tried_when_ejected(ws_plan, mars_environ, mars_target) -> None:
    health = ServerHealth()
    plan = ws_plan([dead_url()], eject_cooldown=60, max_retries=2)
    await run(plan, mars_environ, mars_target, health=health)
    again = await run(plan, mars_environ, mars_target, health=health)
    assert classes(again) == ["connect_refused", "connect_refused"]


async def test_stable_order_is_the_same_for_a_request_id(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    servers = [mars_ws_server_factory() for _ in range(4)]
    plan = ws_plan([s.url for s in servers], failover_order="stable")
    picked = {(await run(plan, mars_environ, mars_target)).server for _ in range(3)}
    assert len(picked) == 1


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA, mars_ws_server_factory: Factory) -> WsMarsServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return mars_ws_server_factory(ssl=context)


async def test_wss_verifies_with_ca_bundle(
    ca, tls_server, ws_plan, mars_environ, mars_target, tmp_path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    assert tls_server.url.startswith("wss://localhost:")
    result = await run(ws_plan([tls_server.url], ca_bundle=str(bundle)), mars_environ, mars_target)
    assert result.ok, result.error


async def test_wss_rejects_unknown_certificate(
    tls_server, ws_plan, mars_environ, mars_target
) -> None:
    result = await run(ws_plan([tls_server.url], max_retries=1), mars_environ, mars_target)
    assert classes(result) == ["tls_error"]
    assert tls_server.jobs == []


# --- cancellation and the sync API ------------------------------------------------------------


async def test_cancellation_kills_the_job_and_reraises(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    server = mars_ws_server_factory(MarsScript(run_time=10))
    task = asyncio.create_task(run(ws_plan([server.url]), mars_environ, mars_target))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if server.jobs:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await settled_outcome(server) == "killed"


def test_sync_execute_from_plain_code_and_threads(
    mars_ws_server, ws_plan, mars_environ, tmp_path
) -> None:
    plan = ws_plan([mars_ws_server.url])
    results: dict[int, marsconn.Result] = {}

    def worker(i: int) -> None:
        d = tmp_path / f"t{i}"
        d.mkdir()
        env = dict(mars_environ, request_id=f"00000000-0000-4000-8000-{i:012x}")
        results[i] = marsconn.execute(plan, {"i": i}, env, d / "data.grib", health=ServerHealth())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worker(99)
    assert all(r.ok for r in results.values())
    assert len(results) == 5


async def test_sync_execute_inside_a_running_loop(
    mars_ws_server, ws_plan, mars_environ, mars_target
) -> None:
    # The existing client calls asyncio.run() and fails here.
    result = marsconn.execute(
        ws_plan([mars_ws_server.url]), {}, mars_environ, mars_target, health=ServerHealth()
    )
    assert result.ok, result.error


def test_ctrl_c_kills_the_job(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal, threading, pathlib
        # A shell starts background jobs with SIGINT ignored, and Python keeps it
        # ignored: give this process the handler an interactive one has.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import marsconn
        from marsconn.testing import WsMarsServer, MarsScript, run_in_thread
        target = pathlib.Path({str(tmp_path)!r}) / "data.grib"
        with run_in_thread(WsMarsServer(pathlib.Path("/"), MarsScript(run_time=30),
                                        heartbeat_interval=0.1)) as server:
            plan = marsconn.resolve_plan(env={{}}, overrides={{
                "servers": [server.url], "use_shares": True, "force_websocket_mode": True}},
                logger=type("N", (), {{"info": lambda *a, **k: None,
                                       "warning": lambda *a, **k: None}})())
            def interrupt():
                while not server.jobs:
                    threading.Event().wait(0.02)
                os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=interrupt, daemon=True).start()
            environ = dict(request_id="00000000-0000-4000-8000-000000000001",
                           user_id="u-1", namespace="n", host="h", username="n:1")
            try:
                marsconn.execute(plan, {{}}, environ, target,
                                 audit_logger=plan and type("N", (), {{
                                     "info": lambda *a, **k: None,
                                     "warning": lambda *a, **k: None}})())
                print("NO INTERRUPT")
            except KeyboardInterrupt:
                # The server thread records the kill on its own loop: give it time
                # (generously, for a loaded machine) before reading it.
                for _ in range(250):
                    if server.jobs[0].outcome != "running":
                        break
                    threading.Event().wait(0.02)
                print("OUTCOME", server.jobs[0].outcome)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "OUTCOME killed" in proc.stdout, proc.stdout + proc.stderr


def test_run_in_thread_server_with_sync_execute(ws_plan, mars_environ, mars_target) -> None:
    with run_in_thread(WsMarsServer(Path("/"), heartbeat_interval=0.2)) as server:
        result = marsconn.execute(
            ws_plan([server.url]),
            [{"a": 1}, {"b": 2}],
            mars_environ,
            mars_target,
            health=ServerHealth(),
        )
        assert result.ok
        assert server.jobs[0].requests == [{"a": 1}, {"b": 2}]


async def test_proxy_variables_are_not_used_for_mars_servers(
    mars_ws_server, ws_plan, mars_environ, mars_target, monkeypatch
) -> None:
    # A worker's HTTP(S)_PROXY is for the outside world; MARS workers are reached directly.
    dead_proxy = dead_url("http")
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    result = await run(ws_plan([mars_ws_server.url]), mars_environ, mars_target)
    assert result.ok, result.error


def test_interrupting_a_thread_blocked_in_execute_kills_the_job(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    import ctypes

    server = mars_ws_server_factory(MarsScript(run_time=30))
    plan = ws_plan([server.url])
    raised: list[BaseException] = []

    def caller() -> None:
        # A loop is running in this thread, so execute() takes the helper-thread path.
        async def inside_a_loop() -> None:
            marsconn.execute(plan, {}, mars_environ, mars_target, health=ServerHealth())

        try:
            asyncio.run(inside_a_loop())
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    for _ in range(250):
        if server.jobs:
            break
        threading.Event().wait(0.02)
    assert server.jobs, "the job never started"
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
    )
    thread.join(20)
    assert not thread.is_alive()
    assert [type(e) for e in raised] == [KeyboardInterrupt]
    for _ in range(50):
        if server.jobs[0].outcome != "running":
            break
        threading.Event().wait(0.02)
    assert server.jobs[0].outcome == "killed"


async def test_slow_log_handler_is_not_server_silence(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    # Liveness is 0.2 s; the handler takes 0.5 s once. Only time spent waiting
    # for the server counts as silence.
    server = mars_ws_server_factory(
        MarsScript(log_lines=["mars - INFO - Processing 1%", "mars - INFO - 100%"]),
        heartbeat_interval=0.1,
    )

    async def slow(line: str, job: marsconn.Job, logger: Any) -> str:
        if line.endswith("1%"):
            await asyncio.sleep(0.5)
        return line

    plan = ws_plan([server.url], heartbeat_interval=0.1, heartbeat_misses=2)
    result = await run(plan, mars_environ, mars_target, log_handler=slow)
    assert result.ok, result.error
    assert classes(result) == [None]


async def test_server_sending_invalid_json_moves_on(
    mars_ws_server_factory: Factory, ws_plan, mars_environ, mars_target
) -> None:
    broken = mars_ws_server_factory(MarsScript(invalid_json=True))
    good = mars_ws_server_factory()
    result = await run(ws_plan([broken.url, good.url]), mars_environ, mars_target)
    assert result.ok, result.error
    assert classes(result) == ["protocol_error", None]
    assert "invalid JSON from server" in (result.attempts[0].error or "")
