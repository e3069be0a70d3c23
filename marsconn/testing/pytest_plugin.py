"""pytest fixtures around marsconn's in-process MARS servers.

Enable with ``pytest_plugins = ["marsconn.testing.pytest_plugin"]`` in a
``conftest.py``. Servers run on background event loops (see
:func:`~marsconn.testing.run_in_thread`), so the fixtures serve synchronous
and asynchronous tests alike, whatever async plugin the project uses.

The WebSocket servers use ``/`` as their shared root: the client and the
server see the same filesystem, so a target under ``tmp_path`` works as it
would on a shared CephFS/NFS mount.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._pipe_server import PipeMarsServer
from ._script import MarsScript, ScriptSource
from ._util import AsyncServer, ServerThread
from ._ws_server import WsMarsServer

__all__ = [
    "mars_environ",
    "mars_pipe_server",
    "mars_pipe_server_factory",
    "mars_target",
    "mars_ws_server",
    "mars_ws_server_factory",
]

#: Heartbeat period of fixture servers: short, so liveness tests stay quick.
FIXTURE_HEARTBEAT = 0.2
_DEFAULT_SCRIPT = MarsScript()


@pytest.fixture
def mars_environ() -> dict[str, str]:
    """An ``environ`` with every key the servers require."""
    return {
        "request_id": str(uuid.uuid4()),
        "user_id": "00000000-0000-4000-8000-000000000001",
        "namespace": "test",
        "host": "worker-1",
        "username": "test:000000000001",
    }


@pytest.fixture
def mars_target(tmp_path: Path) -> Path:
    """A target path whose directory exists (``tmp_path/job/data.grib``)."""
    job = tmp_path / "job"
    job.mkdir()
    return job / "data.grib"


def _factory(make: Callable[..., AsyncServer]) -> Iterator[Callable[..., Any]]:
    threads: list[ServerThread[Any]] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        thread = ServerThread(make(*args, **kwargs))
        server = thread.start()
        threads.append(thread)
        return server

    try:
        yield start
    finally:
        for thread in reversed(threads):
            thread.stop()


@pytest.fixture
def mars_ws_server_factory() -> Iterator[Callable[..., WsMarsServer]]:
    """``factory(script=MarsScript(), **kwargs) -> WsMarsServer``, started; stopped after the test.

    Keyword arguments go to :class:`~marsconn.testing.WsMarsServer`
    (``heartbeat_interval`` defaults to 0.2 s, ``shared_root`` to ``/``).
    """

    def make(script: ScriptSource = _DEFAULT_SCRIPT, **kwargs: Any) -> WsMarsServer:
        kwargs.setdefault("heartbeat_interval", FIXTURE_HEARTBEAT)
        root = kwargs.pop("shared_root", Path("/"))
        return WsMarsServer(root, script, **kwargs)

    yield from _factory(make)


@pytest.fixture
def mars_ws_server(mars_ws_server_factory: Callable[..., WsMarsServer]) -> WsMarsServer:
    """One running WebSocket server with the default script."""
    return mars_ws_server_factory()


@pytest.fixture
def mars_pipe_server_factory() -> Iterator[Callable[..., PipeMarsServer]]:
    """``factory(script=MarsScript(), **kwargs) -> PipeMarsServer``, started; stopped after."""

    def make(script: ScriptSource = _DEFAULT_SCRIPT, **kwargs: Any) -> PipeMarsServer:
        return PipeMarsServer(script, **kwargs)

    yield from _factory(make)


@pytest.fixture
def mars_pipe_server(mars_pipe_server_factory: Callable[..., PipeMarsServer]) -> PipeMarsServer:
    """One running pipe server with the default script."""
    return mars_pipe_server_factory()
