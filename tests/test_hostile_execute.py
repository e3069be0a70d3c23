"""Hostile inputs to ``execute`` and hostile servers, against servers on 127.0.0.1.

Every case ends in a PreflightError (bad arguments, before any connection) or a
Result (whatever a server does); no secret appears in any output, no input adds
a MARS request line, no server line forges a log line, no redirect is followed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

import marsconn
from marsconn import PreflightError
from marsconn.cli import main as cli_main
from marsconn.core import tls
from marsconn.plan.endpoints import basic_authorization
from marsconn.run.health import ServerHealth
from marsconn.testing import (
    MarsScript,
    PipeMarsServer,
    ServerThread,
    WsMarsServer,
    expected_data,
    free_port,
)
from marsconn.wire.pipe_request import encode_request

PlanFactory = Callable[..., marsconn.ConnectionPlan]


class Events:
    """An audit logger that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = info

    def text(self) -> str:
        return json.dumps(self.events, default=str)


class Lines:
    """A line logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warning = error = info


def pipe_plan(urls: list[str], **overrides: Any) -> marsconn.ConnectionPlan:
    settings: dict[str, Any] = {
        "servers": urls,
        "failover_order": "listed",
        "retry_delay": 0,
        "max_retries": 1,
        "connect_timeout": 2,
        "request_timeout": 2,
        "read_timeout": 5,
        "eject_cooldown": 0,
    }
    settings.update(overrides)
    return marsconn.resolve_plan(env={}, overrides=settings, logger=Events())


def everything(result: marsconn.Result, events: Events | None = None) -> str:
    """Every text a caller can see of a retrieval."""
    parts = [json.dumps(result.to_dict()), repr(result), repr(result.error), str(result.error)]
    if events is not None:
        parts.append(events.text())
    return "\n".join(parts)


async def run(
    plan: marsconn.ConnectionPlan, environ: dict[str, str], target: Path, **kw: Any
) -> marsconn.Result:
    kw.setdefault("health", ServerHealth())
    kw.setdefault("audit_logger", Events())
    requests = kw.pop("requests", {"param": "2t"})
    return await marsconn.execute_async(plan, requests, environ, target, **kw)


# --- servers that record what they are sent ---------------------------------------------------


class RecordingWsServer(WsMarsServer):
    """A WebSocket test server that also keeps every handshake's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshakes: list[dict[str, str]] = []

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})
        return super()._process_request(ws, request)


class RecordingPipeServer(PipeMarsServer):
    """A pipe test server that also keeps every request's method, path and headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def _dispatch(self, request: Any, writer: asyncio.StreamWriter) -> bool:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.method, request.path, headers))
        return await super()._dispatch(request, writer)


@pytest.fixture
def ws_recorder() -> Iterator[RecordingWsServer]:
    with ServerThread(RecordingWsServer(Path("/"), heartbeat_interval=0.2)) as server:
        yield server


@pytest.fixture
def pipe_recorder() -> Iterator[RecordingPipeServer]:
    with ServerThread(RecordingPipeServer()) as server:
        yield server


def with_userinfo(url: str, userinfo: str, path: str = "") -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{userinfo}@{rest}{path}"


# --- secrets ----------------------------------------------------------------------------------

TOKEN = "Tok3nZq9"


async def test_username_only_token_works_in_shares_mode(
    ws_recorder: RecordingWsServer, ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target
) -> None:
    events = Events()
    plan = ws_plan([with_userinfo(ws_recorder.url, TOKEN)])
    result = await run(plan, mars_environ, mars_target, audit_logger=events)
    assert result.ok, result.error
    assert mars_target.read_bytes() == expected_data(1024)
    expected = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    assert [h.get("authorization") for h in ws_recorder.handshakes] == [expected]
    assert TOKEN not in everything(result, events) + plan.explain() + plan.to_json()


async def test_username_only_token_works_in_pipe_mode(
    pipe_recorder: RecordingPipeServer, mars_environ: dict[str, str], mars_target
) -> None:
    events = Events()
    plan = pipe_plan([with_userinfo(pipe_recorder.url, TOKEN)])
    result = await run(plan, mars_environ, mars_target, audit_logger=events)
    assert result.ok, result.error
    expected = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    assert {h.get("authorization") for _, _, h in pipe_recorder.requests} == {expected}
    assert TOKEN not in everything(result, events)


def test_both_modes_send_the_same_credentials() -> None:
    for userinfo in ("TOKEN", "user:pa%3Ass", "u%40x:p@ss:w", ":only-password"):
        head = encode_request("GET", "/", "h", userinfo=userinfo).decode("latin-1")
        assert f"Authorization: {basic_authorization(userinfo)}\r\n" in head


@pytest.mark.parametrize("mode", ["websocket", "pipe"])
async def test_credentials_never_shown_when_the_server_fails(
    ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target, mode: str
) -> None:
    scheme = "ws" if mode == "websocket" else "http"
    url = f"{scheme}://{TOKEN}@127.0.0.1:{free_port()}/mars?token=QtK7x&user=me"
    plan = ws_plan([url]) if mode == "websocket" else pipe_plan([url])
    events = Events()
    result = await run(plan, mars_environ, mars_target, audit_logger=events)
    assert result.error_class == "connect_refused"
    text = everything(result, events) + plan.explain() + plan.to_json() + repr(plan)
    assert TOKEN not in text
    assert "QtK7x" not in text
    assert f"{scheme}://***@127.0.0.1:" in text
    assert "/mars?token=***&user=***" in text


async def test_websockets_debug_log_never_sees_credentials(
    ws_recorder: RecordingWsServer,
    ws_plan: PlanFactory,
    mars_environ: dict[str, str],
    mars_target,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = with_userinfo(ws_recorder.url, "agent:Pw5Secret", "/?token=QtK7x")
    with caplog.at_level(logging.DEBUG, logger="websockets"):
        result = await run(ws_plan([url]), mars_environ, mars_target)
    assert result.ok, result.error
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "> GET /?token=*** HTTP/1.1" in logged  # websockets did log the handshake
    assert "Authorization: ***" in logged
    encoded = base64.b64encode(b"agent:Pw5Secret").decode()
    assert [s for s in ("Pw5Secret", "QtK7x", encoded) if s in logged] == []


def test_probe_output_never_shows_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://{TOKEN}@127.0.0.1:{free_port()}/?token=QtK7x"
    try:
        code = cli_main(
            [
                "probe",
                "--server",
                url,
                "--set",
                "use_shares=true",
                "--set",
                "force_websocket_mode=1",
            ]
        )
    finally:
        structlog.reset_defaults()  # the command configured structlog for its own stderr
    out, err = capsys.readouterr()
    assert code != 0
    assert "127.0.0.1" in out + err
    assert TOKEN not in out + err
    assert "QtK7x" not in out + err


def test_retrieve_output_never_shows_a_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    request.write_text('{"param": "2t"}')
    url = f"ws://{TOKEN}@127.0.0.1:{free_port()}/?token=QtK7x"
    argv = ["retrieve", str(request), "--target", str(tmp_path / "out.grib"), "--server", url]
    argv += [
        "--set",
        "use_shares=true",
        "--set",
        "force_websocket_mode=1",
        "--set",
        "max_retries=1",
    ]
    for extra in ([], ["--json"]):
        try:
            code = cli_main([*argv, *extra])
        finally:
            structlog.reset_defaults()
        out, err = capsys.readouterr()
        assert code != 0
        assert "127.0.0.1" in out + err
        assert TOKEN not in out + err
        assert "QtK7x" not in out + err


# --- injection into MARS's request and environment --------------------------------------------

INJECTIONS = [
    ({"param": "2t\nfakesize=7"}, {}, r"requests\[0\]\['param'\] holds a newline"),
    ({"param": "2t\rfakesize=7"}, {}, r"requests\[0\]\['param'\] holds a carriage return"),
    ({"param": "2t\x00"}, {}, r"requests\[0\]\['param'\] holds a NUL"),
    ({"param": "\x1b[2J"}, {}, r"requests\[0\]\['param'\] holds an escape"),
    ({"param": "2t\u2028x"}, {}, r"holds the control character U\+2028"),
    ({"param": ["2t", "t\nfakesize=7"]}, {}, r"requests\[0\]\['param'\]\[1\] holds a newline"),
    ({"param\nfakesize": "7"}, {}, r"requests\[0\] key 'param\\nfakesize' holds a newline"),
    ({"param=2t,fakesize": "7"}, {}, r"requests\[0\] key 'param=2t,fakesize' holds '='"),
    ({"x,target": "/etc"}, {}, r"requests\[0\] key 'x,target' holds ','"),
    ({}, {"host": "w1\nMARS_X=1"}, r"environ\['host'\] holds a newline"),
    ({}, {"extra\nkey": "1"}, r"environ key 'extra\\nkey' holds a newline"),
    ({}, {"A=B": "1"}, r"environ key 'A=B' holds '='"),
]


@pytest.mark.parametrize(("request_extra", "environ_extra", "match"), INJECTIONS)
@pytest.mark.parametrize("mode", ["websocket", "pipe"])
async def test_control_characters_are_refused_before_connecting(
    ws_recorder: RecordingWsServer,
    pipe_recorder: RecordingPipeServer,
    ws_plan: PlanFactory,
    mars_environ: dict[str, str],
    mars_target,
    mode: str,
    request_extra: dict[str, Any],
    environ_extra: dict[str, Any],
    match: str,
) -> None:
    plan = ws_plan([ws_recorder.url]) if mode == "websocket" else pipe_plan([pipe_recorder.url])
    requests = {"param": "2t", **request_extra} if request_extra else {"param": "2t"}
    with pytest.raises(PreflightError, match=match):
        await run(plan, {**mars_environ, **environ_extra}, mars_target, requests=requests)
    with pytest.raises(PreflightError, match=match):  # the synchronous entry point too
        await asyncio.to_thread(
            marsconn.execute, plan, requests, {**mars_environ, **environ_extra}, mars_target
        )
    assert ws_recorder.handshakes == []
    assert pipe_recorder.requests == []
    assert not mars_target.exists()


async def test_a_tab_and_other_text_still_pass(
    ws_recorder: RecordingWsServer, ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target
) -> None:
    requests = {"param": "2t\tx", "date": ["2020-01-01", 20200102], "note": "café ≈ 1", "n": None}
    result = await run(ws_plan([ws_recorder.url]), mars_environ, mars_target, requests=requests)
    assert result.ok, result.error
    assert ws_recorder.jobs[0].requests == [requests]


# --- log lines from the servers ---------------------------------------------------------------

FORGING = [
    "mars - INFO - a\nmars - ERROR - forged",
    "mars - INFO - over\rmars - INFO - written",
    "\x1b[2J\x1b[31mmars - ERROR - coloured",
    "mars - INFO - plain text, tabs\tand café stay",
]
SHOWN = [
    "mars - INFO - a\\nmars - ERROR - forged",
    "mars - INFO - over\\rmars - INFO - written",
    "\\x1b[2J\\x1b[31mmars - ERROR - coloured",
    "mars - INFO - plain text, tabs\tand café stay",
]


async def test_websocket_log_lines_cannot_forge_lines(
    mars_ws_server_factory: Callable[..., WsMarsServer],
    ws_plan: PlanFactory,
    mars_environ: dict[str, str],
    mars_target,
) -> None:
    server = mars_ws_server_factory(MarsScript(log_lines=FORGING))
    logger, handled = Lines(), []

    def handler(line: str, job: Any, log: Any) -> str:
        handled.append(line)
        return line

    plan = ws_plan([server.url], client_filter_logs=False)
    result = await run(plan, mars_environ, mars_target, logger=logger)
    assert result.ok, result.error
    assert logger.lines == SHOWN
    assert result.message.split("\n") == SHOWN
    result = await run(plan, mars_environ, mars_target, log_handler=handler)
    assert handled == SHOWN


async def test_pipe_log_lines_cannot_forge_lines(
    mars_pipe_server_factory: Callable[..., PipeMarsServer],
    mars_environ: dict[str, str],
    mars_target,
) -> None:
    # In MARS's log file a newline is a line of its own; CR and escapes are not.
    lines = FORGING[1:]
    server = mars_pipe_server_factory(MarsScript(log_lines=lines))
    logger = Lines()
    plan = pipe_plan([server.url], client_filter_logs=False)
    result = await run(plan, mars_environ, mars_target, logger=logger)
    assert result.ok, result.error
    assert logger.lines == SHOWN[1:]
    assert result.message.split("\n") == SHOWN[1:]


async def test_mars_error_lines_quoted_in_a_pipe_error_cannot_forge_lines(
    mars_pipe_server_factory: Callable[..., PipeMarsServer],
    mars_environ: dict[str, str],
    mars_target,
) -> None:
    lines = ["mars - ERROR - \x1b[31mbad\rmars - INFO - all fine\x1b[0m"]
    server = mars_pipe_server_factory(MarsScript(http_status=400, log_lines=lines))
    result = await run(pipe_plan([server.url]), mars_environ, mars_target)
    assert result.error_class == "mars_rejected"
    text = str(result.error)
    assert "mars - ERROR - \\x1b[31mbad\\rmars - INFO - all fine\\x1b[0m" in text
    assert "\x1b" not in text
    assert "\r" not in text


async def test_a_server_error_text_cannot_forge_lines(
    ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(
            json.dumps(
                {"type": "state", "status": "error", "error": "bad\nmars - OK - " + "x" * 5000}
            )
        )
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        result = await run(ws_plan([f"ws://127.0.0.1:{port}"]), mars_environ, mars_target)
    assert result.error_class == "server_error"
    assert "\n" not in str(result.error)
    assert "bad\\nmars - OK - xxx" in str(result.error)
    assert len(str(result.error)) < 1000


# --- redirects --------------------------------------------------------------------------------


class Redirector:
    """Answers every HTTP request with a 302 to ``location``; counts them."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: "
                    + self.location.encode()
                    + b"\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_websocket_redirect_is_not_followed(
    ws_recorder: RecordingWsServer, ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target
) -> None:
    elsewhere = with_userinfo(ws_recorder.url, "agent:Pw5Secret", "/x?token=QtK7x")
    redirector = Redirector(elsewhere)
    events = Events()
    async with redirector as address:
        result = await run(
            ws_plan([f"ws://{address}"], max_retries=1),
            mars_environ,
            mars_target,
            audit_logger=events,
        )
    assert result.error_class == "redirected"
    assert ws_recorder.handshakes == []  # the server redirected to was never contacted
    assert redirector.requests == 1
    assert result.server is None
    text = everything(result, events)
    assert f"a redirect to 'ws://***@{ws_recorder.url[5:]}/x?token=***'" in str(result.error)
    assert "Pw5Secret" not in text
    assert "QtK7x" not in text


async def test_pipe_redirect_is_not_followed(
    pipe_recorder: RecordingPipeServer, mars_environ: dict[str, str], mars_target
) -> None:
    redirector = Redirector(with_userinfo(pipe_recorder.url, "agent:Pw5Secret", "/?t=QtK7x"))
    events = Events()
    async with redirector as address:
        result = await run(
            pipe_plan([f"http://{address}"]), mars_environ, mars_target, audit_logger=events
        )
    assert result.error_class == "redirected"
    assert pipe_recorder.requests == []
    assert "answered HTTP 302, a redirect to 'http://***@127.0.0.1:" in str(result.error)
    text = everything(result, events)
    assert "Pw5Secret" not in text
    assert "QtK7x" not in text


# --- the target and execute's contract --------------------------------------------------------

# Tests touch small local files synchronously; these helpers say so once.


def put(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def content_and_mode(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=["websocket", "pipe"])
def any_plan(
    request: pytest.FixtureRequest,
    ws_recorder: RecordingWsServer,
    pipe_recorder: RecordingPipeServer,
    ws_plan: PlanFactory,
) -> marsconn.ConnectionPlan:
    if request.param == "websocket":
        return ws_plan([ws_recorder.url])
    return pipe_plan([pipe_recorder.url])


def test_directory_target_is_a_preflight_error(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(PreflightError, match="is an existing directory"):
        marsconn.execute(any_plan, {"param": "2t"}, mars_environ, tmp_path)


def test_nul_in_target_is_a_preflight_error(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(PreflightError, match="contains a NUL character"):
        marsconn.execute(any_plan, {"param": "2t"}, mars_environ, f"{tmp_path}/a\x00b")


def test_unencodable_target_is_a_preflight_error(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(PreflightError, match="filesystem's encoding"):
        marsconn.execute(any_plan, {"param": "2t"}, mars_environ, f"{tmp_path}/\ud800")


@pytest.mark.parametrize("special", ["null device", "fifo"])
def test_special_file_target_is_refused_and_left_alone(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], tmp_path: Path, special: str
) -> None:
    # Never the system's /dev/null: run as root against code without this check, the
    # test would replace it with a regular file. A node of the same device instead.
    target = tmp_path / "out"
    if special == "fifo":
        os.mkfifo(target)
    else:
        try:
            os.mknod(target, stat.S_IFCHR | 0o666, os.stat(os.devnull).st_rdev)
        except PermissionError:
            pytest.skip("creating a device node needs root")
    with pytest.raises(PreflightError, match="is not a regular file"):
        marsconn.execute(any_plan, {"param": "2t"}, mars_environ, target)
    mode = os.stat(target).st_mode
    assert stat.S_ISCHR(mode) if special == "null device" else stat.S_ISFIFO(mode)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", float("inf") * 0j])
def test_a_value_json_cannot_carry_is_a_preflight_error(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], mars_target, value: Any
) -> None:
    with pytest.raises(PreflightError, match="cannot be sent to the servers as JSON"):
        marsconn.execute(any_plan, {"param": value}, mars_environ, mars_target)
    with pytest.raises(PreflightError, match="environ cannot be sent"):
        marsconn.execute(any_plan, {"param": "2t"}, {**mars_environ, "x": value}, mars_target)


def test_absurdly_nested_value_is_a_preflight_error(
    any_plan: marsconn.ConnectionPlan, mars_environ: dict[str, str], mars_target
) -> None:
    value: Any = "2t"
    for _ in range(100_000):
        value = [value]
    with pytest.raises(PreflightError, match="nested too deeply"):
        marsconn.execute(any_plan, {"param": value}, mars_environ, mars_target)


async def test_non_latin1_url_path_gives_a_result_in_pipe_mode(
    pipe_recorder: RecordingPipeServer, mars_environ: dict[str, str], mars_target
) -> None:
    plan = pipe_plan([f"{pipe_recorder.url}/łódź?q=ß"])
    result = await run(plan, mars_environ, mars_target)
    # The test server serves "/" only: a 404, as a Result, and the path went out encoded
    # (the test server keeps the path without its query).
    assert result.error_class == "http_404"
    assert pipe_recorder.requests[0][:2] == ("HEAD", "/%C5%82%C3%B3d%C5%BA/")


async def test_non_latin1_url_path_works_in_shares_mode(
    ws_recorder: RecordingWsServer, ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target
) -> None:
    result = await run(ws_plan([f"{ws_recorder.url}/łódź"]), mars_environ, mars_target)
    assert result.ok, result.error


@pytest.mark.parametrize("mode", ["websocket", "pipe"])
async def test_existing_target_keeps_its_mode(
    ws_recorder: RecordingWsServer,
    pipe_recorder: RecordingPipeServer,
    ws_plan: PlanFactory,
    mars_environ: dict[str, str],
    mars_target: Path,
    mode: str,
) -> None:
    plan = ws_plan([ws_recorder.url]) if mode == "websocket" else pipe_plan([pipe_recorder.url])
    put(mars_target, b"old", 0o600)
    result = await run(plan, mars_environ, mars_target)
    assert result.ok, result.error
    assert content_and_mode(mars_target) == (expected_data(1024), 0o600)


@pytest.mark.parametrize("mode", ["websocket", "pipe"])
async def test_ca_bundle_gone_at_run_time_is_final_and_ejects_nobody(
    ws_plan: PlanFactory, mars_environ: dict[str, str], mars_target, tmp_path: Path, mode: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes((Path(__file__).parent / "data" / "ca.pem").read_bytes())
    scheme = "wss" if mode == "websocket" else "https"
    urls = [f"{scheme}://localhost:{free_port()}", f"{scheme}://127.0.0.1:{free_port()}"]
    common = {"ca_bundle": str(ca), "eject_cooldown": 30, "max_retries": 3}
    plan = ws_plan(urls, **common) if mode == "websocket" else pipe_plan(urls, **common)
    # Removed after the plan was made (or the plan was made on another machine).
    ca.unlink()
    tls.client_context.cache_clear()
    health = ServerHealth()
    result = await run(plan, mars_environ, mars_target, health=health)
    assert result.error_class == "ca_bundle_error"
    assert result.error_kind is marsconn.ErrorKind.SYSTEM
    assert len(result.attempts) == 1
    assert "CA bundle" in str(result.error)
    assert "No such file or directory" in str(result.error)
    assert not any(health.is_ejected(e.url.secret()) for e in plan.endpoints)
