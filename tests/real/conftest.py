"""Fixtures that run the real cads-mars-server (pipe and WebSocket) with a stand-in MARS.

The machinery is in ``peers.py`` (the benchmarks use it too). Without the
peers the tests skip, except in CI (``CI=true``), where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .peers import RealServer, Servers, Standin, missing_reason


@pytest.fixture(autouse=True)
def _real_servers_available() -> None:
    """Skip without the real servers; in CI (CI=true) fail instead: CI must run them."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the real-server tests, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    """The stand-in MARS for this test; every copy still running is killed at the end."""
    s = Standin(tmp_path / "standin")
    try:
        yield s
    finally:
        s.kill_all()


# --- the servers -----------------------------------------------------------------------------


@pytest.fixture
def real_ws_server(standin: Standin, tmp_path: Path) -> Iterator[Callable[..., RealServer]]:
    """``start(*, heartbeat=1, max_connections=0, shared_root="/")``: a real WebSocket server."""
    servers = Servers(standin, tmp_path / "servers-ws")

    def start(
        *, heartbeat: int = 1, max_connections: int = 0, shared_root: str = "/"
    ) -> RealServer:
        return servers.start_ws(
            heartbeat=heartbeat, max_connections=max_connections, shared_root=shared_root
        )

    try:
        yield start
    finally:
        servers.stop_all()


@pytest.fixture
def real_pipe_server(standin: Standin, tmp_path: Path) -> Iterator[Callable[..., RealServer]]:
    """``start()``: a real pipe server; MARS logs go to the server's ``.logdir``."""
    servers = Servers(standin, tmp_path / "servers-pipe")

    def start() -> RealServer:
        return servers.start_pipe()

    try:
        yield start
    finally:
        servers.stop_all()


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    """The caller's target directory (nothing else uses it)."""
    path = tmp_path / "out"
    path.mkdir()
    return path
