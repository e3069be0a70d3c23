"""An in-process stand-in for the ``cads-mars-server`` WebSocket ("shares") server.

:class:`WsMarsServer` speaks that server's wire protocol:
one connection runs one job, JSON text messages, ``started`` / ``log`` /
``heartbeat`` / ``finished`` / ``killed`` / ``error`` states, close code 1008
at capacity, and the output written as ``data.grib`` in the directory that the
target maps to under the server's shared root. What the "MARS" behind it does
(log lines, timing, exit code, faults) comes from a
:class:`~marsconn.testing._script.MarsScript`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import ssl as ssl_module
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from ._script import MarsScript, ScriptSource, pick_script
from ._util import ServerLifecycle, client_url

__all__ = ["JobOutcome", "JobRecord", "WsMarsServer"]

_log = logging.getLogger("marsconn.testing.ws_server")

_T = TypeVar("_T")

#: How a job ended, as recorded in :attr:`JobRecord.outcome`.
JobOutcome = Literal["running", "finished", "killed", "disconnected", "died"]

_REQUIRED_ENVIRON = ("request_id", "user_id", "namespace", "host", "username")
_OUTPUT_NAME = "data.grib"
# Long enough for a healthy client to answer the close frame, short enough
# that stop() stays quick when a client has stopped reading.
_CLOSE_TIMEOUT = 5.0
# A dying job waits at most this long for already-sent lines to leave the
# process before it aborts, so the client sees them before the drop.
_FLUSH_TIMEOUT = 1.0
_FLUSH_POLLS = 200
_DEFAULT_SCRIPT = MarsScript()


@dataclass
class JobRecord:
    """What the server saw of one job: one record per accepted ``start``.

    ``outcome`` is ``"running"`` until the job ends, then ``"finished"`` (MARS
    exited, see ``returncode``), ``"killed"`` (the client sent ``kill``),
    ``"disconnected"`` (the client went away, or the server stopped, while the
    job ran) or ``"died"`` (the script made the server drop the connection).
    ``lines_sent`` counts the ``log`` messages sent.
    """

    job_id: str
    requests: list[dict[str, Any]]
    environ: dict[str, Any]
    target: str
    outcome: JobOutcome = "running"
    returncode: int | None = None
    lines_sent: int = 0


class _BadMessage(Exception):
    """A client message the server answers with an ``error`` state."""


@dataclass
class _Job:
    record: JobRecord
    script: MarsScript
    workdir: Path
    pid: int
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class WsMarsServer(ServerLifecycle):
    """A WebSocket MARS server on a real socket, running in the current event loop.

    ``shared_root`` plays the server's shared filesystem root: a job whose
    target is ``/a/b/out.grib`` writes ``shared_root/a/b/data.grib``, and
    ``shared_root/a/b`` must already exist. ``script`` is a
    :class:`~marsconn.testing._script.MarsScript`, or a function choosing one
    from the job's requests; it may be replaced between jobs.

    ``max_connections`` makes the server refuse further connections (close
    code 1008) while that many are open. ``reject_handshake_status`` makes it
    answer every upgrade request with that HTTP status instead. With ``ssl``
    the server speaks TLS and :attr:`url` uses the host name ``localhost``,
    so certificates issued for ``localhost`` verify.

    Use it as an async context manager, or call :meth:`start` and
    :meth:`stop`. :attr:`jobs` records every job in the order it started;
    :attr:`connections` counts the connections currently open.
    """

    def __init__(
        self,
        shared_root: Path,
        script: ScriptSource = _DEFAULT_SCRIPT,
        *,
        heartbeat_interval: float = 20.0,
        max_connections: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        reject_handshake_status: int | None = None,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if max_connections is not None and max_connections < 0:
            raise ValueError("max_connections must not be negative")
        self.shared_root = Path(shared_root)
        self.script: ScriptSource = script
        self.heartbeat_interval = heartbeat_interval
        self.max_connections = max_connections
        self.host = host
        self.ssl = ssl
        self.reject_handshake_status = reject_handshake_status
        self.jobs: list[JobRecord] = []
        self.connections = 0
        self._requested_port = port
        self._server: Server | None = None
        self._port: int | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._next_pid = 40_000

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start listening; returns once the socket accepts connections."""
        if self._server is not None:
            raise RuntimeError("server already started")
        server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            ssl=self.ssl,
            process_request=self._process_request,
            close_timeout=_CLOSE_TIMEOUT,
            logger=_log,
        )
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close every connection, cancel running jobs and stop listening.

        Jobs still running when the server stops end as ``"disconnected"``,
        as they would if the real server's clients went away. Idempotent.
        """
        server = self._server
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background))

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT``, or ``wss://localhost:PORT`` when serving TLS."""
        if self.ssl is not None:
            return f"wss://localhost:{self.port}"
        return client_url("ws", self.host, self.port)

    # -- connections -------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        status = self.reject_handshake_status
        if status is None:
            return None
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Rejected"
        return ws.respond(status, f"{phrase}\n")

    async def _handle(self, ws: ServerConnection) -> None:
        if self.max_connections is not None and self.connections >= self.max_connections:
            await ws.close(
                CloseCode.POLICY_VIOLATION,
                f"Server at capacity ({self.connections} connections)",
            )
            return
        self.connections += 1
        try:
            await self._session(ws)
        finally:
            self.connections -= 1

    async def _session(self, ws: ServerConnection) -> None:
        job: _Job | None = None
        try:
            while True:
                message = await ws.recv()
                try:
                    cmd, payload = _parse_message(message)
                    if cmd == "start":
                        if job is not None:
                            raise _BadMessage(
                                "This connection already started a job "
                                f"(job_id {job.record.job_id}); one connection runs one job"
                            )
                        job = self._accept_start(payload)
                        job.task = asyncio.create_task(self._run_job(ws, job))
                    elif job is None:
                        raise _BadMessage("No job is running: nothing to kill")
                    elif job.record.outcome == "running":
                        await self._kill(ws, job)
                        return
                    # Otherwise the job is already finishing: its `finished`
                    # state answers the kill, so there is nothing to add.
                except _BadMessage as exc:
                    await ws.send(
                        json.dumps({"type": "state", "status": "error", "error": str(exc)})
                    )
        except ConnectionClosed:
            pass
        finally:
            if job is not None and job.task is not None:
                if job.record.outcome == "running":
                    # Like the real server killing MARS when its client leaves.
                    job.record.outcome = "disconnected"
                    job.task.cancel()
                await _wait_quietly(job.task)

    async def _kill(self, ws: ServerConnection, job: _Job) -> None:
        assert job.task is not None
        job.record.outcome = "killed"
        job.task.cancel()
        await _wait_quietly(job.task)
        await ws.send(
            json.dumps({"type": "state", "status": "killed", "job_id": job.record.job_id})
        )
        await ws.close()

    def _accept_start(self, payload: dict[str, Any]) -> _Job:
        for key in ("requests", "environ", "target"):
            if key not in payload:
                raise _BadMessage(f"start: missing field {key!r}")
        requests = _normalise_requests(payload["requests"])
        environ = payload["environ"]
        if not isinstance(environ, dict):
            raise _BadMessage(f"start: 'environ' must be an object, got {type(environ).__name__}")
        missing = [key for key in _REQUIRED_ENVIRON if key not in environ]
        if missing:
            raise _BadMessage(
                "start: environ is missing required key(s): " + ", ".join(repr(k) for k in missing)
            )
        target = payload["target"]
        if not isinstance(target, str) or not PurePosixPath(target).is_absolute():
            raise _BadMessage(f"start: 'target' must be an absolute path, got {target!r}")
        workdir = self._workdir_for(target)
        script = pick_script(self.script, requests)
        self._next_pid += 1
        record = JobRecord(
            job_id=str(uuid.uuid4()),
            requests=requests,
            environ=dict(environ),
            target=target,
        )
        self.jobs.append(record)
        return _Job(record=record, script=script, workdir=workdir, pid=self._next_pid)

    def _workdir_for(self, target: str) -> Path:
        relative = PurePosixPath(target).parent.relative_to("/")
        if ".." in relative.parts:
            raise _BadMessage(f"start: target {target!r} leaves the shared root")
        workdir = self.shared_root / relative
        if not workdir.is_dir():
            raise _BadMessage(
                f"start: workdir {str(PurePosixPath(target).parent)!r} is missing on this "
                f"server (looked for {str(workdir)!r})"
            )
        return workdir

    # -- the job -----------------------------------------------------------

    async def _run_job(self, ws: ServerConnection, job: _Job) -> None:
        record, script = job.record, job.script
        try:
            if script.start_delay > 0:
                await asyncio.sleep(script.start_delay)
            if script.invalid_json:
                await ws.send("<html>502 Bad Gateway</html>")
                return
            await _send(ws, {"type": "state", "status": "started", "job_id": record.job_id})
            heartbeat: asyncio.Task[None] | None = None
            if script.send_heartbeats:
                heartbeat = asyncio.create_task(self._heartbeat(ws, job))
            try:
                if not await self._send_lines(ws, job):
                    return
                if script.run_time > 0:
                    await asyncio.sleep(script.run_time)
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                    await _wait_quietly(heartbeat)
            # From here on the job has ended as far as MARS is concerned: a
            # late `kill` or disconnect must not interrupt writing its output.
            record.outcome = "finished"
            record.returncode = script.returncode
            if script.returncode == 0 and script.write_file:
                if script.file_delay > 0:
                    self._spawn(self._write_later(job))
                else:
                    await _uncancellable_thread(_write_output, job.workdir, script)
            await _send(
                ws,
                {
                    "type": "state",
                    "status": "finished",
                    "returncode": script.returncode,
                    "job_id": record.job_id,
                },
            )
            await ws.close()
        except ConnectionClosed:
            # The session notices the closed connection and records why.
            pass
        except Exception:
            # A fault of the stand-in itself (say, an unwritable workdir):
            # end the connection loudly rather than leave the client waiting.
            _log.exception("job %s failed inside the test server", record.job_id)
            await ws.close(CloseCode.INTERNAL_ERROR, "test server error, see its log")

    async def _send_lines(self, ws: ServerConnection, job: _Job) -> bool:
        """Send the script's log lines; False when the script made the job die."""
        record, script = job.record, job.script
        die_after = script.die_after_lines
        for index, line in enumerate(script.log_lines):
            if die_after is not None and record.lines_sent >= die_after:
                break
            if index > 0 and script.line_delay > 0:
                await asyncio.sleep(script.line_delay)
            await _send(ws, {"type": "log", "line": line})
            record.lines_sent += 1
        # A script with fewer lines than die_after_lines dies after its last.
        if die_after is None:
            return True
        record.outcome = "died"
        await _drain(ws)
        ws.transport.abort()
        return False

    async def _heartbeat(self, ws: ServerConnection, job: _Job) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                await _send(
                    ws,
                    {
                        "type": "heartbeat",
                        "timestamp": time.time(),
                        "job_status": "running",
                        "job_id": job.record.job_id,
                        "pid": job.pid,
                    },
                )

    async def _write_later(self, job: _Job) -> None:
        await asyncio.sleep(job.script.file_delay)
        try:
            await _uncancellable_thread(_write_output, job.workdir, job.script)
        except OSError:
            # Nobody awaits this task to hear about it; a missing file is
            # what the test will notice, the log says why.
            _log.exception("writing %s in %s failed", _OUTPUT_NAME, job.workdir)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _parse_message(message: str | bytes) -> tuple[str, dict[str, Any]]:
    try:
        payload = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadMessage(f"Invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadMessage(f"Message must be a JSON object, got {type(payload).__name__}")
    cmd = payload.get("cmd")
    if cmd not in ("start", "kill"):
        raise _BadMessage(f"Unknown cmd {cmd!r}: expected 'start' or 'kill'")
    return cmd, payload


def _normalise_requests(value: object) -> list[dict[str, Any]]:
    items: list[object]
    if isinstance(value, dict):
        items = [value]
    elif isinstance(value, list) and value:
        items = list(value)
    else:
        raise _BadMessage("start: 'requests' must be an object or a non-empty list of objects")
    requests: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _BadMessage(
                f"start: requests[{index}] must be an object, got {type(item).__name__}"
            )
        requests.append(item)
    return requests


async def _send(ws: ServerConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def _drain(ws: ServerConnection) -> None:
    """Wait (briefly) until the transport has handed its buffer to the kernel."""
    for _ in range(_FLUSH_POLLS):
        if ws.transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(_FLUSH_TIMEOUT / _FLUSH_POLLS)


async def _wait_quietly(task: asyncio.Task[Any]) -> None:
    """Wait for ``task`` to end without raising its error, but still our own cancellation."""
    await asyncio.wait([task])
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("job task failed", exc_info=exc)


async def _uncancellable_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run ``func`` in a thread; if cancelled meanwhile, wait for it before re-raising.

    A thread cannot be stopped, so returning early would let it write after
    the server has stopped.
    """
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()
        raise


def _write_output(workdir: Path, script: MarsScript) -> None:
    # Written under a temporary name and renamed, so whoever polls for
    # data.grib sees either nothing or the whole file.
    _write_atomic(workdir / _OUTPUT_NAME, script.data())


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
