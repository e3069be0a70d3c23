"""The stand-in WebSocket MARS server, exercised with a raw websockets client."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect as sync_connect

from marsconn.testing._script import MarsScript, expected_data
from marsconn.testing._util import SilentServer, dead_url, free_port, run_in_thread
from marsconn.testing._ws_server import JobRecord, WsMarsServer

TARGET = "/scratch/job-1/request.grib"
ENVIRON = {
    "request_id": "req-1",
    "user_id": "abc-def-123",
    "namespace": "cads",
    "host": "worker-1",
    "username": "cads:123",
}
REQUESTS = [{"class": "ea", "param": "2t"}]
TIMEOUT = 2.0


def start_message(**overrides: Any) -> str:
    message: dict[str, Any] = {
        "cmd": "start",
        "requests": REQUESTS,
        "environ": ENVIRON,
        "target": TARGET,
    }
    message.update(overrides)
    return json.dumps({k: v for k, v in message.items() if v is not None})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "scratch" / "job-1").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def output(root: Path) -> Path:
    return root / "scratch" / "job-1" / "data.grib"


@pytest.fixture
async def make_server(root: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start WsMarsServers on ``root``; all are stopped at teardown."""
    servers: list[WsMarsServer] = []

    async def make(script: Any = None, **kwargs: Any) -> WsMarsServer:
        kwargs.setdefault("heartbeat_interval", 0.05)
        server = WsMarsServer(root, script if script is not None else MarsScript(), **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def connect_to(server: WsMarsServer, **kwargs: Any) -> connect:
    return connect(server.url, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **kwargs)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def recv_state(ws: ClientConnection) -> dict[str, Any]:
    """The next ``state`` message, skipping logs and heartbeats."""
    while (message := await recv(ws))["type"] != "state":
        pass
    return message


async def recv_all(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes; ConnectionClosedError propagates."""
    messages = []
    try:
        while True:
            messages.append(await recv(ws))
    except ConnectionClosed as exc:
        if isinstance(exc, ConnectionClosedError):
            raise
    return messages


async def read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


async def exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == kind]


def assert_error(message: dict[str, Any], *fragments: str) -> None:
    assert message["type"] == "state"
    assert message["status"] == "error"
    for fragment in fragments:
        assert fragment in message["error"]


# -- happy path and job results ---------------------------------------------


async def test_happy_path(make_server: Any, output: Path) -> None:
    lines = ("mars - INFO - one", "mars - INFO - two", "mars - INFO - three")
    script = MarsScript(
        log_lines=lines, line_delay=0.02, run_time=0.15, output_size=200_000, seed=3
    )
    server = await make_server(script)
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
        assert ws.close_code == 1000

    started, *rest = messages
    assert started["type"] == "state"
    assert started["status"] == "started"
    job_id = started["job_id"]
    assert [m["line"] for m in of_type(rest, "log")] == list(lines)
    heartbeats = of_type(rest, "heartbeat")
    assert heartbeats, "no heartbeat during run_time"
    for beat in heartbeats:
        assert beat["job_status"] == "running"
        assert beat["job_id"] == job_id
        assert isinstance(beat["pid"], int)
        assert abs(beat["timestamp"] - time.time()) < 10
    assert rest[-1] == {
        "type": "state",
        "status": "finished",
        "returncode": 0,
        "job_id": job_id,
    }
    assert await read(output) == expected_data(200_000, 3)
    leftovers = await asyncio.to_thread(lambda: [p.name for p in output.parent.iterdir()])
    assert leftovers == ["data.grib"], "temp file left behind"
    assert server.jobs == [
        JobRecord(
            job_id=job_id,
            requests=REQUESTS,
            environ=ENVIRON,
            target=TARGET,
            outcome="finished",
            returncode=0,
            lines_sent=3,
        )
    ]
    await eventually(lambda: server.connections == 0)


async def test_failed_job_writes_no_file(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(returncode=2))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
    assert messages[-1]["status"] == "finished"
    assert messages[-1]["returncode"] == 2
    assert not await exists(output)
    assert server.jobs[0].outcome == "finished"
    assert server.jobs[0].returncode == 2


async def test_write_file_false_writes_nothing(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(write_file=False))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
    assert messages[-1]["returncode"] == 0
    assert not await exists(output)


async def test_single_request_dict_and_script_chosen_by_requests(
    make_server: Any, output: Path
) -> None:
    def choose(requests: list[dict[str, Any]]) -> MarsScript:
        return MarsScript(returncode=5 if requests[0]["param"] == "bad" else 0)

    server = await make_server(choose)
    async with connect_to(server) as ws:
        await ws.send(start_message(requests={"param": "bad"}))
        messages = await recv_all(ws)
    assert messages[-1]["returncode"] == 5
    assert server.jobs[0].requests == [{"param": "bad"}]


async def test_file_delay_file_appears_after_finished(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(file_delay=0.2, output_size=5000))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
        assert messages[-1]["status"] == "finished"
        assert not await exists(output)
    await eventually(output.exists)
    assert await read(output) == expected_data(5000)


async def test_start_delay_and_no_heartbeats(make_server: Any) -> None:
    script = MarsScript(start_delay=0.05, run_time=0.25, send_heartbeats=False)
    server = await make_server(script, heartbeat_interval=0.02)
    async with connect_to(server) as ws:
        sent = time.monotonic()
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        assert time.monotonic() - sent >= 0.04
        messages = await recv_all(ws)
    assert not of_type(messages, "heartbeat")
    assert messages[-1]["status"] == "finished"


async def test_heartbeats_flow_between_slow_lines(make_server: Any) -> None:
    script = MarsScript(log_lines=("a", "b"), line_delay=0.2)
    server = await make_server(script, heartbeat_interval=0.03)
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
    kinds = [m["type"] for m in messages]
    between = kinds[kinds.index("log") + 1 : len(kinds) - 1 - kinds[::-1].index("log")]
    assert "heartbeat" in between


# -- refusals and bad messages ----------------------------------------------


async def test_capacity_closes_with_1008(make_server: Any) -> None:
    server = await make_server(max_connections=1)
    async with connect_to(server) as first:
        await eventually(lambda: server.connections == 1)
        async with connect_to(server) as second:
            with pytest.raises(ConnectionClosedError) as info:
                await recv(second)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "Server at capacity (1 connections)"
        # The first connection is unaffected and can still run its job.
        await first.send(start_message())
        assert (await recv_all(first))[-1]["status"] == "finished"


async def test_reject_handshake_status(make_server: Any) -> None:
    server = await make_server(reject_handshake_status=503)
    with pytest.raises(InvalidStatus) as info:
        async with connect_to(server):
            pass
    assert info.value.response.status_code == 503
    assert server.connections == 0


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("{not json", "Invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"cmd": "dance"}', "'dance'"),
        ('{"requests": []}', "Unknown cmd None"),
        (start_message(requests=None), "'requests'"),
        (start_message(environ=None), "'environ'"),
        (start_message(target=None), "'target'"),
        (start_message(requests=[1]), "requests[0]"),
        (start_message(environ=["x"]), "'environ' must be an object"),
        (start_message(target="scratch/job-1/x.grib"), "absolute"),
        (start_message(target="/../etc/x.grib"), "shared root"),
    ],
)
async def test_bad_message_gets_error_and_connection_stays_open(
    make_server: Any, message: str, fragment: str
) -> None:
    server = await make_server()
    async with connect_to(server) as ws:
        await ws.send(message)
        assert_error(await recv(ws), fragment)
        # Still open and usable: a valid start now runs the job.
        await ws.send(start_message())
        assert (await recv_all(ws))[-1]["status"] == "finished"
    assert len(server.jobs) == 1


async def test_missing_environ_key_is_named(make_server: Any) -> None:
    server = await make_server()
    environ = {k: v for k, v in ENVIRON.items() if k != "username"}
    async with connect_to(server) as ws:
        await ws.send(start_message(environ=environ))
        assert_error(await recv(ws), "'username'")
    assert server.jobs == []


async def test_missing_workdir(make_server: Any) -> None:
    server = await make_server()
    async with connect_to(server) as ws:
        await ws.send(start_message(target="/nowhere/data.grib"))
        assert_error(await recv(ws), "workdir", "/nowhere", "missing on this server")
        await ws.send(json.dumps({"cmd": "kill"}))
        assert_error(await recv(ws), "No running job")
    assert server.jobs == []


async def test_kill_without_job(make_server: Any) -> None:
    server = await make_server()
    async with connect_to(server) as ws:
        await ws.send(json.dumps({"cmd": "kill"}))
        assert_error(await recv(ws), "No running job")


async def test_second_start_on_same_connection(make_server: Any) -> None:
    server = await make_server(MarsScript(run_time=0.2))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        await ws.send(start_message())
        assert_error(await recv_state(ws), "one connection runs one job")
        assert (await recv_all(ws))[-1]["status"] == "finished"
    assert len(server.jobs) == 1


# -- ending a job early -----------------------------------------------------


async def test_kill(make_server: Any, root: Path, output: Path) -> None:
    server = await make_server(MarsScript(run_time=30))
    sent = root / TARGET.lstrip("/")
    sent.write_bytes(b"whatever was at the path the server was sent")
    async with connect_to(server) as ws:
        await ws.send(start_message())
        job_id = (await recv(ws))["job_id"]
        assert await exists(output.parent / f"{job_id}.mars")
        await ws.send(json.dumps({"cmd": "kill"}))
        assert await recv_state(ws) == {"type": "state", "status": "killed", "job_id": job_id}
        # As the real server: MARS ends on SIGTERM, reported as a negative returncode.
        finished = {"type": "state", "status": "finished", "returncode": -15, "job_id": job_id}
        assert await recv_state(ws) == finished
        assert not of_type(await recv_all(ws), "state")
    assert server.jobs[0].outcome == "killed"
    assert server.jobs[0].returncode == -15
    assert not await exists(output)
    # The real server deletes the request file and the target path it was sent.
    assert sorted(p.name for p in output.parent.iterdir()) == []


async def test_die_after_lines_drops_without_close_frame(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(log_lines=("a", "b", "c"), die_after_lines=2))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        assert (await recv(ws))["line"] == "a"
        assert (await recv(ws))["line"] == "b"
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert info.value.rcvd is None
    assert server.jobs[0].outcome == "died"
    assert server.jobs[0].lines_sent == 2
    await eventually(lambda: server.connections == 0)
    # A dead server's MARS runs on: it still writes its output, and nothing is cleaned up.
    await eventually(lambda: output.exists())
    assert await read(output) == expected_data(MarsScript().output_size)
    assert (output.parent / f"{server.jobs[0].job_id}.mars").exists()


async def test_request_file_and_job_id_as_the_real_server(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(run_time=0.3))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        started = await recv(ws)
        assert started["job_id"] == ENVIRON["request_id"]
        request_file = output.parent / "req-1.mars"
        assert await exists(request_file)
        text = await asyncio.to_thread(request_file.read_text)
        assert text == f"RETRIEVE,\nclass=ea,\nparam=2t,\nTARGET='{output}'\n"
        assert (await recv_state(ws))["status"] == "finished"
    assert not await exists(request_file)


async def test_lines_after_finished(make_server: Any) -> None:
    server = await make_server(MarsScript(log_lines=("a",), after_lines=("b", "c")))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
    kinds = [m.get("status") or m.get("line") for m in messages if m["type"] != "heartbeat"]
    assert kinds == ["started", "a", "finished", "b", "c"]
    assert server.jobs[0].lines_sent == 3


async def test_disconnect_deletes_the_sent_target(
    make_server: Any, root: Path, output: Path
) -> None:
    server = await make_server(MarsScript(run_time=30))
    sent = root / TARGET.lstrip("/")
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        await asyncio.to_thread(sent.write_bytes, b"somebody's data")
    await eventually(lambda: server.jobs[0].outcome == "disconnected")
    await eventually(lambda: not sent.exists())
    assert not await exists(output.parent / "req-1.mars")


async def test_freeze_and_resume(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(log_lines=("a", "b"), line_delay=0.2))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        server.freeze()
        assert server.frozen
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 0.5)
        # MARS ran on while the server was frozen: its output is there already.
        await eventually(lambda: output.exists())
        server.resume()
        assert not server.frozen
        await asyncio.wait_for(pong, TIMEOUT)
        messages = await recv_all(ws)
    assert [m.get("line") for m in of_type(messages, "log")] == ["a", "b"]
    assert messages[-1]["status"] == "finished"


async def test_crash_leaves_mars_running(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(run_time=0.3))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        server.crash()
        with pytest.raises(ConnectionClosedError):
            await recv_all(ws)
    assert server.jobs[0].outcome == "orphaned"
    await eventually(lambda: output.exists())
    assert await exists(output.parent / "req-1.mars")  # nobody cleans up after a crash


async def test_client_disconnect_cancels_job(make_server: Any, output: Path) -> None:
    server = await make_server(MarsScript(run_time=30))
    async with connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
    await eventually(lambda: server.jobs[0].outcome == "disconnected")
    await eventually(lambda: server.connections == 0)
    assert not await exists(output)


async def test_stop_ends_running_jobs(root: Path) -> None:
    server = WsMarsServer(root, MarsScript(run_time=30), heartbeat_interval=0.05)
    async with server, connect_to(server) as ws:
        await ws.send(start_message())
        assert (await recv(ws))["status"] == "started"
        await server.stop()
        assert not of_type(await recv_all(ws), "state")
        assert ws.close_code == 1001
    assert server.jobs[0].outcome == "disconnected"
    assert server.connections == 0


# -- TLS and threads --------------------------------------------------------


async def test_tls(make_server: Any, output: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    server = await make_server(ssl=server_context)
    assert server.url == f"wss://localhost:{server.port}"
    async with connect_to(server, ssl=client_context) as ws:
        await ws.send(start_message())
        messages = await recv_all(ws)
    assert messages[-1]["status"] == "finished"
    assert await read(output) == expected_data(1024)


def test_run_in_thread_from_sync_code(root: Path, output: Path) -> None:
    with run_in_thread(WsMarsServer(root)) as server:
        assert server.url == f"ws://127.0.0.1:{server.port}"
        with sync_connect(server.url, open_timeout=TIMEOUT) as ws:
            ws.send(start_message())
            messages = [json.loads(m) for m in ws]
        assert messages[-1]["status"] == "finished"
        assert server.jobs[0].outcome == "finished"
    assert output.exists()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), 1),
    ):
        pass


def test_run_in_thread_propagates_start_errors(root: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with (
            pytest.raises(OSError, match="in use"),
            run_in_thread(WsMarsServer(root, port=port)),
        ):
            pass


def test_run_in_thread_with_silent_server() -> None:
    with run_in_thread(SilentServer()) as silent:
        with socket.create_connection(("127.0.0.1", silent.port), TIMEOUT) as sock:
            sock.sendall(b"hello")
            sock.settimeout(0.1)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        port = silent.port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass


# -- helpers ----------------------------------------------------------------


async def test_dead_url_refuses() -> None:
    url = dead_url()
    assert url.startswith("ws://127.0.0.1:")
    with pytest.raises(ConnectionRefusedError):
        async with connect(url, open_timeout=TIMEOUT):
            pass
    assert dead_url("http").startswith("http://127.0.0.1:")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


async def test_silent_server_never_answers() -> None:
    async with SilentServer() as silent:
        assert silent.url_for("ws") == f"ws://127.0.0.1:{silent.port}"
        with pytest.raises(TimeoutError):
            async with connect(silent.url_for("ws"), open_timeout=0.2):
                pass
        reader, writer = await asyncio.open_connection("127.0.0.1", silent.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
        assert silent.accepted == 2
        await silent.stop()
        # stop() hangs up on accepted connections.
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
        writer.close()
        await writer.wait_closed()
