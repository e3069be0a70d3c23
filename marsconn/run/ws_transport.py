"""WebSocket ("shares") transport: one connection runs one job.

The socket edge only: the meaning of each message lives in
:mod:`marsconn.wire.ws_job`, the private per-attempt directory in
:mod:`marsconn.run.attemptdir`. Time limits are per phase, never per job: the
connect timeout covers TCP, TLS and the handshake; ``request_timeout``
covers the wait for ``started``; after that the job runs for as long as the
server shows signs of life. Silence alone never condemns a server: after
``liveness`` seconds without a message it must also fail to answer a
WebSocket ping.

Once an attempt's outcome is known it is acted on at once: a kill, when the
job may still run, is handed to the socket, and the connection is closed in
the background (aborted after about a second). No close handshake ever
stands between a decision and the next server or the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..core.errors import JobKilledError, LogHandlerError, NoDataError, TargetError
from ..core.outcome import Action, Outcome
from ..plan.endpoints import Endpoint
from ..wire.ws_job import KILL_MESSAGE, JobPhase, LogLine, Started, WsJobMachine, start_message
from .attemptdir import AttemptDir
from .connecting import connect_failure, tls_context
from .job import JobContext
from .ws_connect import open_websocket, redirect_failure

__all__ = ["WebSocketTransport"]

#: Longest wait for a kill to be handed to the socket.
_KILL_SEND = 1.0
#: A connection whose outcome is known is closed in the background within about this long.
_CLOSE_GRACE = 1.0
#: After ``finished``, late log lines are read until the server closes, at most this long.
_DRAIN_GRACE = 1.0
_DRAIN_MESSAGES = 100_000
#: A silent server must answer a ping within liveness seconds, but never more than this.
_PING_CONFIRM_MAX = 10.0


def _handshake_failure(exc: BaseException) -> tuple[str, str] | None:
    redirected = redirect_failure(exc)
    if redirected is not None:
        return redirected
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return "handshake_status", f"answered HTTP {status} instead of a WebSocket upgrade"
    if isinstance(exc, InvalidHandshake):
        return "handshake_failed", f"WebSocket handshake failed: {exc}"
    if isinstance(exc, ConnectionClosed):
        return "closed_before_start", "closed the connection during the handshake"
    return None


def _retrieve(future: asyncio.Future[float]) -> None:
    """Done-callback: mark a pong waiter's error as seen (nobody may await it)."""
    if not future.cancelled():
        future.exception()


async def _answers_ping(ws: ClientConnection, seconds: float) -> str | bytes | bool:
    """Ping; the next message if one arrives first, else whether the pong came in time."""
    pong = asyncio.ensure_future(await ws.ping())
    pong.add_done_callback(_retrieve)
    receiving: asyncio.Future[str | bytes] = asyncio.ensure_future(ws.recv())
    try:
        await asyncio.wait((pong, receiving), timeout=seconds, return_when="FIRST_COMPLETED")
    finally:
        # Cancelling recv() is safe in websockets: an unread message stays queued.
        receiving.cancel()
        await asyncio.wait({receiving})
    if not receiving.cancelled():
        return receiving.result()  # a message (or ConnectionClosed): alive, or gone for sure
    return pong.done() and not pong.cancelled() and pong.exception() is None


class _Silence:
    """The silence timer of one job: one timer, not one per message.

    :meth:`recv` waits for the next message for at most ``limit`` seconds
    (TimeoutError after that). The deadline is taken when the wait begins,
    so time spent between waits (the caller's log handler) never counts.
    Moving a timer for every message would cost several microseconds per
    log line; instead the one timer stays where it is when the new deadline
    is later, and when it fires early it moves itself to the deadline.
    Expiry cancels the waiting task, as :func:`asyncio.timeout` does, and
    turns that cancellation into TimeoutError (an outside cancellation
    stays a cancellation).
    """

    __slots__ = ("_cancelling", "_due", "_expired", "_handle", "_loop", "_task", "_waiting")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._waiting = False
        self._expired = False
        self._cancelling = 0

    async def recv(self, ws: ClientConnection, limit: float) -> str | bytes:
        """``ws.recv()``; TimeoutError after ``limit`` seconds of waiting for it."""
        loop = self._loop
        due = self._due = loop.time() + limit
        handle = self._handle
        if handle is None or handle.when() > due:
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(due, self._fire)
        self._cancelling = self._task.cancelling()
        self._waiting = True
        try:
            return await ws.recv()
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if self._task.uncancel() <= self._cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # not waiting: the next wait arms the timer again
        if self._loop.time() < self._due:
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        self._expired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class WebSocketTransport:
    """Runs one job on one WebSocket server and classifies the outcome."""

    def __init__(self) -> None:
        self._closing: set[asyncio.Task[None]] = set()

    async def attempt(self, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        """One attempt; see :class:`marsconn.run.job.Transport`."""
        try:
            place = AttemptDir.create(ctx.target, ctx.plan.shares_dir_mode)
        except OSError as exc:
            return Outcome.failed(
                Action.FINAL,
                "target_error",
                TargetError(
                    f"cannot create this attempt's private directory in {ctx.target.parent}: "
                    f"{exc.strerror or exc}; the client needs write access there"
                ),
            )
        try:
            return await self._attempt_in(place, endpoint, ctx)
        finally:
            # After a success the output has been moved out; in every case nothing that
            # the server (or a MARS it left running) does later may reach a shared place.
            place.remove()

    async def cleanup(self, ctx: JobContext, success: bool) -> None:
        """Let background closes finish (about a second at most), then abort what is left."""
        pending = set(self._closing)
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_GRACE * 2)

    async def _attempt_in(self, place: AttemptDir, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        timeouts = ctx.plan.timeouts
        server = endpoint.url.display()
        url = endpoint.url
        tls = tls_context(url, ctx.plan.ca_bundle)
        if isinstance(tls, Outcome):
            return tls
        try:
            async with asyncio.timeout(timeouts.connect):
                # Credentials as a header, no redirects, websockets' logs redacted.
                ws = await open_websocket(
                    url,
                    tls,
                    open_timeout=None,
                    ping_interval=timeouts.ws_ping_interval,
                    ping_timeout=timeouts.ws_ping_interval,
                    close_timeout=min(timeouts.ws_close, _CLOSE_GRACE),
                    compression=None,
                    user_agent_header=None,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return connect_failure(
                exc,
                server,
                f"no WebSocket handshake within {timeouts.connect:g}s",
                _handshake_failure,
            )
        ctx.reached()
        machine = WsJobMachine(server)
        try:
            outcome = await self._converse(ws, machine, ctx, str(place.output))
            if machine.finished:
                await self._drain(ws, machine, ctx)
            if outcome.action is Action.SUCCESS:
                # Moved before the connection is closed: an abnormal close makes the server
                # delete the path it was sent.
                outcome = await self._deliver(place, ctx.target, timeouts.target_settle, outcome)
            return outcome
        except asyncio.CancelledError:
            # Nobody will listen to this job any more: stop it on the server.
            await asyncio.shield(self._kill(ws, machine))
            raise
        finally:
            self._close_soon(ws)

    async def _converse(
        self, ws: ClientConnection, machine: WsJobMachine, ctx: JobContext, sent_target: str
    ) -> Outcome:
        timeouts = ctx.plan.timeouts
        confirm = min(timeouts.liveness, _PING_CONFIRM_MAX)
        try:
            await ws.send(start_message(ctx.requests, ctx.environ, sent_target))
        except ConnectionClosed as exc:
            return _closed(machine, exc)
        silence = _Silence()
        try:
            return await self._receive(ws, machine, ctx, silence, confirm)
        finally:
            silence.close()

    async def _receive(
        self,
        ws: ClientConnection,
        machine: WsJobMachine,
        ctx: JobContext,
        silence: _Silence,
        confirm: float,
    ) -> Outcome:
        timeouts = ctx.plan.timeouts
        while machine.outcome is None:
            running = machine.phase is JobPhase.RUNNING
            # Only the wait for the server is timed: time spent in the caller's log
            # handler never counts as the server being silent.
            limit = timeouts.liveness if running else timeouts.request
            try:
                data = await self._next(ws, silence, limit, confirm if running else None)
            except TimeoutError:
                # A frozen server reads this when it resumes, before anything else we sent.
                await self._kill(ws, machine)
                return machine.silent(limit, confirm if running else None)
            except ConnectionClosed as exc:
                return _closed(machine, exc)
            event = machine.receive(data)
            if isinstance(event, LogLine):
                try:
                    await ctx.sink.line(event.line)
                except LogHandlerError as exc:
                    await self._kill(ws, machine)
                    return Outcome.failed(
                        Action.FINAL, "log_handler_error", exc, job_id=machine.job_id
                    )
            elif isinstance(event, Started):
                ctx.job.job_id = event.job_id
            if ctx.job.kill_requested and machine.phase is JobPhase.RUNNING:
                await self._kill(ws, machine)
                return Outcome.failed(
                    Action.FINAL,
                    "killed",
                    JobKilledError(f"the job on {machine.server} was killed on request"),
                    job_id=machine.job_id,
                )
        return machine.outcome

    @staticmethod
    async def _next(
        ws: ClientConnection, silence: _Silence, limit: float, confirm: float | None
    ) -> str | bytes:
        """The next message; TimeoutError after ``limit`` s of silence (and an unanswered ping)."""
        while True:
            try:
                return await silence.recv(ws, limit)
            except TimeoutError:
                if confirm is None:
                    raise
            answer = await _answers_ping(ws, confirm)
            if answer is False:
                raise TimeoutError
            if answer is not True:
                return answer
            # Busy, not dead: the server answered the ping. Keep listening.

    async def _drain(self, ws: ClientConnection, machine: WsJobMachine, ctx: JobContext) -> None:
        """Read log lines sent after ``finished`` until the server closes (bounded)."""
        with contextlib.suppress(ConnectionClosed, TimeoutError, LogHandlerError):
            async with asyncio.timeout(_DRAIN_GRACE):
                for _ in range(_DRAIN_MESSAGES):
                    line = machine.late(await ws.recv())
                    if line is not None:
                        await ctx.sink.line(line.line)

    async def _kill(self, ws: ClientConnection, machine: WsJobMachine) -> None:
        """Hand a kill to the socket (bounded); the answer is not awaited.

        Also sent before ``started`` arrived: the server may have started the job
        already (it answers an idle kill with a harmless error).
        """
        if machine.kill_sent or machine.server_done:
            return
        machine.kill_sent = True
        with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
            async with asyncio.timeout(_KILL_SEND):
                await ws.send(KILL_MESSAGE)

    def _close_soon(self, ws: ClientConnection) -> None:
        task = asyncio.get_running_loop().create_task(_close(ws))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _deliver(
        self, place: AttemptDir, target: Path, settle: float, outcome: Outcome
    ) -> Outcome:
        """Wait for the output on the shared filesystem, then rename it onto ``target``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        delay = 0.01
        size = place.output_size()
        while size <= 0 and loop.time() < deadline:
            # The server fsyncs only after replying, so the file may show up late.
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.25)
            size = place.output_size()
        if size <= 0:
            state = "empty" if size == 0 else "missing"
            return Outcome.failed(
                Action.FINAL,
                "no_data",
                NoDataError(
                    f"MARS finished without error but its output for {target} is {state} "
                    f"after waiting {settle:g}s for the shared filesystem "
                    "(MARS_TARGET_SETTLE_TIME): no data matched the request, or the server "
                    "writes to a filesystem this client does not see"
                ),
                job_id=outcome.job_id,
            )
        try:
            size = place.deliver(target)
        except OSError as exc:
            return Outcome.failed(
                Action.FINAL,
                "target_error",
                TargetError(f"cannot move the output onto {target}: {exc.strerror or exc}"),
                job_id=outcome.job_id,
            )
        return Outcome.success(size, outcome.job_id)


def _closed(machine: WsJobMachine, exc: ConnectionClosed) -> Outcome:
    rcvd = exc.rcvd
    return machine.closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")


async def _close(ws: ClientConnection) -> None:
    """Close politely if the server answers within the grace time, else abort."""
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            await ws.close()
    except asyncio.CancelledError:
        ws.transport.abort()
        raise
    except Exception:
        ws.transport.abort()
