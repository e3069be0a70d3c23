"""The pytest plugin's fixtures: values, running servers, and teardown."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

from marsconn.run.engine import REQUIRED_ENVIRON
from marsconn.testing import MarsScript, PipeMarsServer, WsMarsServer
from marsconn.testing.pytest_plugin import FIXTURE_HEARTBEAT


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_mars_environ_has_every_required_key(mars_environ: dict[str, str]) -> None:
    assert set(mars_environ) == set(REQUIRED_ENVIRON)
    assert all(isinstance(v, str) and v for v in mars_environ.values())
    uuid.UUID(mars_environ["request_id"])
    # username is namespace + ":" + the last dash-separated part of user_id
    assert mars_environ["username"] == (
        f"{mars_environ['namespace']}:{mars_environ['user_id'].split('-')[-1]}"
    )


def test_mars_target(mars_target: Path, tmp_path: Path) -> None:
    assert mars_target == tmp_path / "job" / "data.grib"
    assert mars_target.parent.is_dir()
    assert not mars_target.exists()
    assert mars_target.is_absolute()


def test_mars_ws_server_is_running(mars_ws_server: WsMarsServer) -> None:
    assert mars_ws_server.url == f"ws://127.0.0.1:{mars_ws_server.port}"
    assert mars_ws_server.heartbeat_interval == FIXTURE_HEARTBEAT == 0.2
    assert mars_ws_server.shared_root == Path("/")
    assert mars_ws_server.jobs == []
    assert accepts(mars_ws_server.port)


def test_mars_pipe_server_answers_the_ping(mars_pipe_server: PipeMarsServer) -> None:
    assert mars_pipe_server.url == f"http://127.0.0.1:{mars_pipe_server.port}"
    conn = http.client.HTTPConnection("127.0.0.1", mars_pipe_server.port, timeout=5)
    try:
        conn.request("HEAD", "/")
        assert conn.getresponse().status == 204
    finally:
        conn.close()


def test_ws_factory_passes_arguments(
    mars_ws_server_factory: Callable[..., WsMarsServer], tmp_path: Path
) -> None:
    script = MarsScript(returncode=3)
    first = mars_ws_server_factory(
        script, heartbeat_interval=1.5, shared_root=tmp_path, max_connections=2
    )
    second = mars_ws_server_factory()
    assert first.script is script
    assert first.heartbeat_interval == 1.5
    assert first.shared_root == tmp_path
    assert first.max_connections == 2
    assert second.heartbeat_interval == FIXTURE_HEARTBEAT
    assert first.port != second.port
    assert accepts(first.port)
    assert accepts(second.port)


def test_pipe_factory_passes_arguments(
    mars_pipe_server_factory: Callable[..., PipeMarsServer],
) -> None:
    script = MarsScript(http_status=400)
    server = mars_pipe_server_factory(script)
    assert server.script is script
    assert accepts(server.port)


async def test_fixtures_serve_async_tests(
    mars_ws_server: WsMarsServer, mars_pipe_server: PipeMarsServer
) -> None:
    # The servers run on their own loops, so this test's loop can talk to them.
    for port in (mars_ws_server.port, mars_pipe_server.port):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()


def test_factories_stop_their_servers_after_the_test(tmp_path: Path) -> None:
    # A pytest session of its own, with only the plugin: the second test runs after
    # the first one's teardown and checks that every server it started is gone.
    state = tmp_path / "state.json"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            import json, socket

            STATE = {str(state)!r}

            def accepts(port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    return True
                except OSError:
                    return False

            def test_start(mars_ws_server_factory, mars_pipe_server_factory,
                           mars_ws_server, mars_pipe_server, mars_environ):
                servers = [mars_ws_server_factory(), mars_ws_server_factory(),
                           mars_pipe_server_factory(), mars_ws_server, mars_pipe_server]
                assert all(accepts(s.port) for s in servers)
                with open(STATE, "w") as fh:
                    json.dump({{"ports": [s.port for s in servers],
                               "request_id": mars_environ["request_id"]}}, fh)

            def test_after_teardown(mars_environ):
                with open(STATE) as fh:
                    state = json.load(fh)
                assert len(set(state["ports"])) == 5
                assert [p for p in state["ports"] if accepts(p)] == []
                assert mars_environ["request_id"] != state["request_id"]
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "marsconn.testing.pytest_plugin",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
