"""WebSocket test servers in child processes, shared by the WebSocket benchmarks.

A server runs in a spawned child so that its work neither shares the
client's interpreter nor is counted in the client's CPU time. The parent
can ask a child for the CPU time it has used so far.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from marsconn import ConnectionPlan, resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.testing import MarsScript

#: Builds the child's script from picklable arguments (a top-level function).
ScriptFactory = Callable[..., MarsScript]


def _serve(
    factory: ScriptFactory, args: tuple[Any, ...], cpus: set[int] | None, conn: Connection
) -> None:
    from marsconn.testing import WsMarsServer, run_in_thread

    if cpus:
        os.sched_setaffinity(0, cpus)
    # Built here, before any job: a real server gets MARS's lines ready-made.
    script = factory(*args)
    with run_in_thread(WsMarsServer(Path("/"), script)) as server:
        conn.send(server.url)
        with contextlib.suppress(EOFError):
            while conn.recv() == "cpu":
                conn.send(time.process_time())


class ServerProcess:
    """Handle on a WsMarsServer running in a spawned child process."""

    def __init__(self, url: str, conn: Connection) -> None:
        self.url = url
        self._conn = conn

    def cpu(self) -> float:
        """CPU seconds the server process has used so far."""
        self._conn.send("cpu")
        value: float = self._conn.recv()
        return value


def script_from_kwargs(**kwargs: Any) -> MarsScript:
    """The default factory: ``MarsScript(**kwargs)``."""
    return MarsScript(**kwargs)


@contextmanager
def ws_server_processes(
    count: int,
    factory: ScriptFactory = script_from_kwargs,
    args: tuple[Any, ...] = (),
    *,
    kwargs: dict[str, Any] | None = None,
    cpus: set[int] | None = None,
    start_timeout: float = 120.0,
) -> Iterator[list[ServerProcess]]:
    """``count`` uncapped WsMarsServers, each in its own spawned process.

    Each child builds its script with ``factory(*args, **kwargs)`` and is
    pinned to ``cpus`` when given. Stopped (and joined) on exit.
    """
    ctx = multiprocessing.get_context("spawn")
    started: list[tuple[Any, Connection]] = []
    bound: ScriptFactory = factory
    if kwargs:
        bound = _Bound(factory, kwargs)
    try:
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(bound, args, cpus, child), daemon=True)
            proc.start()
            started.append((proc, parent))
        handles = []
        for _, parent in started:
            if not parent.poll(start_timeout):
                raise RuntimeError("a server process did not start")
            handles.append(ServerProcess(parent.recv(), parent))
        yield handles
    finally:
        for _, parent in started:
            with contextlib.suppress(OSError):
                parent.send("stop")
        for proc, _ in started:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


class _Bound:
    """``factory`` with keyword arguments, picklable for a spawned child."""

    def __init__(self, factory: ScriptFactory, kwargs: dict[str, Any]) -> None:
        self.factory = factory
        self.kwargs = kwargs

    def __call__(self, *args: Any) -> MarsScript:
        return self.factory(*args, **self.kwargs)


def ws_plan(urls: list[str], order: str = "listed", **overrides: Any) -> ConnectionPlan:
    """A WebSocket plan over ``urls`` in ``order``; other settings default unless overridden."""
    settings: dict[str, Any] = {
        "servers": urls,
        "use_shares": True,
        "force_websocket_mode": True,
        "failover_order": order,
    }
    settings.update(overrides)
    return resolve_plan(env={}, overrides=settings, logger=NullAuditLogger())
