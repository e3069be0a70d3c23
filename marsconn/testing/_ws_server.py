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
import signal
import ssl as ssl_module
import tempfile
import threading
import time
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
JobOutcome = Literal["running", "finished", "killed", "disconnected", "died", "orphaned"]

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
    job ran), ``"died"`` (the script made the server drop the connection) or
    ``"orphaned"`` (the server crashed while the job ran; MARS runs on).
    ``job_id`` is the environ's ``request_id``, as on the real server.
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


#: What the stand-in MARS puts on its output queue after its last line.
_DONE = object()


@dataclass
class _Job:
    record: JobRecord
    script: MarsScript
    workdir: Path
    request_file: Path
    sent_target: Path
    pid: int
    #: The stand-in MARS: prints lines into ``lines``, runs, writes ``data.grib``.
    mars: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Sends MARS's lines, then ``finished``, to the client.
    sender: asyncio.Task[None] | None = field(default=None, repr=False)
    lines: asyncio.Queue[object] = field(default_factory=asyncio.Queue, repr=False)


class WsMarsServer(ServerLifecycle):
    """A WebSocket MARS server on a real socket, running in the current event loop.

    It behaves as cads-mars-server's WebSocket server does, in the respects a
    client's data safety depends on:

    - a job whose target is ``/a/b/out.grib`` runs in ``shared_root/a/b``
      (which must already exist): MARS writes ``data.grib`` there (never the
      target's own name) and the request file ``<request_id>.mars``; the
      job id is the environ's ``request_id``;
    - on ``kill``, and when the client disconnects abnormally, the server
      stops MARS and deletes the request file and the target path it was
      sent (``shared_root/a/b/out.grib``); a normal close deletes only the
      request file;
    - MARS runs apart from the server: :meth:`freeze` stops the server (no
      reads, no pongs, no messages) while MARS keeps running and writing,
      :meth:`resume` lets the server catch up; :meth:`crash` drops every
      connection like a ``kill -9`` of the server, and the MARS jobs carry
      on as orphans and still write their output;
    - log lines can keep arriving after ``finished``
      (:attr:`MarsScript.after_lines`).

    ``script`` is a :class:`~marsconn.testing._script.MarsScript`, or a
    function choosing one from the job's requests; it may be replaced between
    jobs. ``max_connections`` makes the server refuse further connections
    (close code 1008) while that many are open. ``reject_handshake_status``
    makes it answer every upgrade request with that HTTP status instead.
    With ``ssl`` the server speaks TLS and :attr:`url` uses the host name
    ``localhost``, so certificates issued for ``localhost`` verify.

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
        self._live: set[ServerConnection] = set()
        self._awake = asyncio.Event()
        self._awake.set()
        self._crashed = False
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._loop = asyncio.get_running_loop()
        self._port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close every connection, stop running jobs and stop listening.

        Jobs still running when the server stops end as ``"disconnected"``,
        as they would if the real server's clients went away (orphans of a
        :meth:`crash` are stopped too). Idempotent.
        """
        self.resume()
        server = self._server
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background))

    def freeze(self) -> None:
        """Stop the server process (as SIGSTOP would); the MARS jobs keep running.

        Like :meth:`resume` and :meth:`crash`, callable from any thread.
        """
        self._in_loop(self._freeze)

    def resume(self) -> None:
        """Let a frozen server carry on (as SIGCONT would): it reads what queued up."""
        self._in_loop(self._resume)

    def _freeze(self) -> None:
        self._awake.clear()
        for ws in self._live:
            ws.transport.pause_reading()

    def _resume(self) -> None:
        self._awake.set()
        for ws in self._live:
            with contextlib.suppress(Exception):
                ws.transport.resume_reading()

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the server's event loop and wait for it."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or here is loop or loop.is_closed():
            action()
            return
        done = threading.Event()

        def call() -> None:
            try:
                action()
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        done.wait(_CLOSE_TIMEOUT)

    @property
    def frozen(self) -> bool:
        """True between :meth:`freeze` and :meth:`resume`."""
        return not self._awake.is_set()

    def crash(self) -> None:
        """Die like a ``kill -9`` of the server: connections drop, MARS jobs run on.

        The server stops listening and sends nothing more; jobs still
        running become ``"orphaned"`` and still write their output.
        """
        self._in_loop(self._crash)

    def _crash(self) -> None:
        self._crashed = True
        if self._server is not None:
            self._server.close(close_connections=False)
        for ws in list(self._live):
            ws.transport.abort()
        for record in self.jobs:
            if record.outcome == "running":
                record.outcome = "orphaned"

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
        self._live.add(ws)
        try:
            await self._session(ws)
        finally:
            self._live.discard(ws)
            self.connections -= 1

    async def _session(self, ws: ServerConnection) -> None:
        job: _Job | None = None
        normal_close = False
        try:
            while True:
                message = await ws.recv()
                await self._awake.wait()
                try:
                    cmd, payload = _parse_message(message)
                    if cmd == "start":
                        if job is not None:
                            raise _BadMessage(
                                "This connection already started a job "
                                f"(job_id {job.record.job_id}); one connection runs one job"
                            )
                        job = self._accept_start(payload)
                        await self._launch(ws, job)
                    elif job is None or job.record.outcome != "running":
                        raise _BadMessage("No running job")
                    else:
                        await self._kill(ws, job)
                except _BadMessage as exc:
                    await self._send(ws, {"type": "state", "status": "error", "error": str(exc)})
        except ConnectionClosed as exc:
            normal_close = exc.rcvd is not None and exc.rcvd.code == CloseCode.NORMAL_CLOSURE
        finally:
            if job is not None and not self._crashed:
                await self._client_gone(job, normal_close)

    async def _client_gone(self, job: _Job, normal_close: bool) -> None:
        """The connection ended: stop MARS if it still runs, and clean up as the real one does."""
        await self._awake.wait()
        if job.record.outcome in ("died", "orphaned"):
            return  # a dead server cleans nothing up; its MARS runs on
        running = job.record.outcome == "running"
        if running:
            job.record.outcome = "disconnected"
        for task in (job.mars, job.sender):
            if task is not None and (running or task is job.sender):
                task.cancel()
                await _wait_quietly(task)
        _unlink(job.request_file)
        if running:
            # The real server's heartbeat task notices any disconnect of a running job and
            # deletes the sent target too, even after a normal close: model the worst case.
            _unlink(job.sent_target)

    async def _kill(self, ws: ServerConnection, job: _Job) -> None:
        job.record.outcome = "killed"
        for task in (job.mars, job.sender):
            assert task is not None
            task.cancel()
            await _wait_quietly(task)
        _unlink(job.request_file, job.sent_target)
        await self._send(ws, {"type": "state", "status": "killed", "job_id": job.record.job_id})
        # As the real server: MARS, sent SIGTERM, then ends, reported like any exit.
        job.record.returncode = -signal.SIGTERM
        await self._send(
            ws,
            {
                "type": "state",
                "status": "finished",
                "returncode": -signal.SIGTERM,
                "job_id": job.record.job_id,
            },
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
        job_id = str(environ["request_id"])
        record = JobRecord(
            job_id=job_id,
            requests=requests,
            environ=dict(environ),
            target=target,
        )
        self.jobs.append(record)
        return _Job(
            record=record,
            script=script,
            workdir=workdir,
            request_file=workdir / f"{job_id}.mars",
            sent_target=self.shared_root / PurePosixPath(target).relative_to("/"),
            pid=self._next_pid,
        )

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

    async def _launch(self, ws: ServerConnection, job: _Job) -> None:
        script = job.script
        if script.start_delay > 0:
            await asyncio.sleep(script.start_delay)
        if script.invalid_json:
            await ws.send("<html>502 Bad Gateway</html>")
            return
        _write_request_file(job)
        await self._send(ws, {"type": "state", "status": "started", "job_id": job.record.job_id})
        job.mars = self._spawn(self._mars(job))
        job.sender = self._spawn(self._stream(ws, job))

    async def _mars(self, job: _Job) -> None:
        """The stand-in MARS: runs whatever happens to the server or the client."""
        script = job.script
        for index, line in enumerate(script.log_lines):
            if index > 0 and script.line_delay > 0:
                await asyncio.sleep(script.line_delay)
            job.lines.put_nowait(line)
        if script.run_time > 0:
            await asyncio.sleep(script.run_time)
        if script.returncode == 0 and script.write_file:
            if script.file_delay > 0:
                # The real server fsyncs only after replying: on a shared filesystem the
                # file shows up late (here: whole, at once).
                self._spawn(self._write_later(job))
            else:
                # MARS writes its target in place, as it goes: two jobs sent the same
                # directory write into the same data.grib.
                await _uncancellable_thread(_write_in_place, job.workdir, script)
        job.lines.put_nowait(_DONE)

    async def _stream(self, ws: ServerConnection, job: _Job) -> None:
        """The server side of a job: MARS's lines, heartbeats, then ``finished``."""
        record, script = job.record, job.script
        heartbeat = (
            asyncio.create_task(self._heartbeat(ws, job)) if script.send_heartbeats else None
        )
        try:
            while (line := await job.lines.get()) is not _DONE:
                die_after = script.die_after_lines
                if die_after is not None and record.lines_sent >= die_after:
                    await self._die(ws, job)
                    return
                await self._send(ws, {"type": "log", "line": line})
                record.lines_sent += 1
            if script.die_after_lines is not None:
                # A script with fewer lines than die_after_lines dies after its last.
                await self._die(ws, job)
                return
            if heartbeat is not None:
                heartbeat.cancel()
                await _wait_quietly(heartbeat)
            await self._awake.wait()
            if self._crashed:
                return  # a dead server reports nothing
            record.outcome = "finished"
            record.returncode = script.returncode
            await self._send(
                ws,
                {
                    "type": "state",
                    "status": "finished",
                    "returncode": script.returncode,
                    "job_id": record.job_id,
                },
            )
            _unlink(job.request_file)
            # Lines MARS printed last can still be on their way after `finished`.
            for line in script.after_lines:
                await self._send(ws, {"type": "log", "line": line})
                record.lines_sent += 1
            await ws.close()
        except ConnectionClosed:
            # The session notices the closed connection and records why.
            pass
        except Exception:
            # A fault of the stand-in itself: end the connection loudly rather than
            # leave the client waiting.
            _log.exception("job %s failed inside the test server", record.job_id)
            await ws.close(CloseCode.INTERNAL_ERROR, "test server error, see its log")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _die(self, ws: ServerConnection, job: _Job) -> None:
        """The server process dies mid-job (as with kill -9): MARS is left running."""
        job.record.outcome = "died"
        await _drain(ws)
        ws.transport.abort()

    async def _heartbeat(self, ws: ServerConnection, job: _Job) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                await self._send(
                    ws,
                    {
                        "type": "heartbeat",
                        "timestamp": time.time(),
                        "job_status": "running",
                        "job_id": job.record.job_id,
                        "pid": job.pid,
                    },
                )

    async def _send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        # A frozen server sends nothing; what it meant to send goes out when it resumes.
        await self._awake.wait()
        if self._crashed:
            raise ConnectionClosed(None, None)
        await ws.send(json.dumps(message))

    async def _write_later(self, job: _Job) -> None:
        await asyncio.sleep(job.script.file_delay)
        await _uncancellable_thread(_write_output, job.workdir, job.script)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


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
    try:
        _write_atomic(workdir / _OUTPUT_NAME, script.data())
    except FileNotFoundError:
        # The directory is gone (the client removed it): MARS would fail to open its target.
        _log.info("%s vanished before MARS wrote %s", workdir, _OUTPUT_NAME)


def _write_in_place(workdir: Path, script: MarsScript) -> None:
    try:
        with open(workdir / _OUTPUT_NAME, "wb") as handle:
            for chunk in script.data():
                handle.write(chunk)
                handle.flush()
    except FileNotFoundError:
        _log.info("%s vanished before MARS wrote %s", workdir, _OUTPUT_NAME)


def _write_request_file(job: _Job) -> None:
    """``<request_id>.mars`` in the job's directory, in MARS's request syntax."""
    target = job.workdir / _OUTPUT_NAME
    blocks = []
    for request in job.record.requests:
        body = "".join(f"{key}={value},\n" for key, value in request.items() if key != "target")
        blocks.append(f"RETRIEVE,\n{body}TARGET='{target}'\n")
    job.request_file.write_text("".join(blocks))


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


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
