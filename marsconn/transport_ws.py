"""WebSocket ("shares") transport: one connection runs one job.

The socket edge only: the meaning of each message lives in
:mod:`marsconn.jobstate`. Time limits are per phase, never per job: the
connect timeout covers TCP, TLS and the handshake; ``request_timeout``
covers the wait for ``started``; after that the job may run for as long as
messages (heartbeats included) keep arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .connecting import connect_failure
from .endpoints import Endpoint
from .errors import JobKilledError, LogHandlerError, TargetError
from .executor import JobContext
from .jobstate import (
    KILL_MESSAGE,
    JobPhase,
    LogLine,
    Started,
    WsJobMachine,
    start_message,
)
from .result import Action, Outcome
from .tls import client_context

__all__ = ["OUTPUT_NAME", "WebSocketTransport", "output_path"]

#: The server writes MARS's output under this name in the target's directory.
OUTPUT_NAME = "data.grib"
_KILL_GRACE = 5.0


def output_path(target: Path) -> Path:
    """Where the server's output appears on the shared filesystem."""
    return target.parent / OUTPUT_NAME


def _handshake_failure(exc: BaseException) -> tuple[str, str] | None:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return "handshake_status", f"answered HTTP {status} instead of a WebSocket upgrade"
    if isinstance(exc, InvalidHandshake):
        return "handshake_failed", f"WebSocket handshake failed: {exc}"
    if isinstance(exc, ConnectionClosed):
        return "closed_before_start", "closed the connection during the handshake"
    return None


class WebSocketTransport:
    """Runs one job on one WebSocket server and classifies the outcome."""

    async def attempt(self, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        """One attempt; see :class:`marsconn.executor.Transport`."""
        timeouts = ctx.plan.timeouts
        server = endpoint.url.display()
        output = output_path(ctx.target)
        # Whatever an earlier attempt left must never pass for this attempt's output.
        with contextlib.suppress(FileNotFoundError):
            output.unlink()
        url = endpoint.url
        try:
            async with asyncio.timeout(timeouts.connect):
                ws = await connect(
                    url.secret(),
                    ssl=client_context(ctx.plan.ca_bundle) if url.is_tls else None,
                    # MARS workers are reached directly, never through an HTTP(S)_PROXY
                    # meant for the outside world (websockets would use it by default).
                    proxy=None,
                    open_timeout=None,
                    ping_interval=timeouts.ws_ping_interval,
                    ping_timeout=timeouts.ws_ping_interval,
                    close_timeout=timeouts.ws_close,
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
        machine = WsJobMachine(server)
        try:
            outcome = await self._converse(ws, machine, ctx)
        except asyncio.CancelledError:
            # Nobody will listen to this job any more: stop it on the server.
            await asyncio.shield(self._kill(ws, machine))
            raise
        finally:
            await self._close(ws)
        if outcome.action is not Action.SUCCESS:
            return outcome
        return await self._confirm_output(ctx.target, output, timeouts.target_settle, outcome)

    async def cleanup(self, ctx: JobContext, success: bool) -> None:
        """Nothing to clean: the server owns the output until it is confirmed."""

    async def _converse(
        self, ws: ClientConnection, machine: WsJobMachine, ctx: JobContext
    ) -> Outcome:
        timeouts = ctx.plan.timeouts
        loop = asyncio.get_running_loop()
        limit = timeouts.request
        try:
            # One silence timer per job, armed only while waiting for the server: time
            # spent in the caller's log handler never counts as the server being silent.
            async with asyncio.timeout(None) as silence:
                await ws.send(start_message(ctx.requests, ctx.environ, str(ctx.target)))
                while machine.outcome is None:
                    if machine.phase is JobPhase.SENT:
                        limit = timeouts.request
                    else:
                        limit = timeouts.liveness
                    silence.reschedule(loop.time() + limit)
                    data = await ws.recv()
                    silence.reschedule(None)
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
        except TimeoutError:
            return machine.silent(limit)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return machine.closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
        assert machine.outcome is not None
        return machine.outcome

    async def _kill(self, ws: ClientConnection, machine: WsJobMachine) -> None:
        """Ask the server to stop the job and wait briefly for its answer."""
        if machine.kill_sent or machine.outcome is not None:
            return
        machine.kill_sent = True
        with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
            async with asyncio.timeout(_KILL_GRACE):
                await ws.send(KILL_MESSAGE)
                # The answer ('killed') or the close tells us the server acted on it.
                while True:
                    machine.receive(await ws.recv())
                    if machine.outcome is not None:
                        break

    async def _close(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await ws.close()

    async def _confirm_output(
        self, target: Path, output: Path, settle: float, outcome: Outcome
    ) -> Outcome:
        """Wait for the output on the shared filesystem; move it to ``target``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        delay = 0.01
        size = _size(output)
        while size <= 0 and loop.time() < deadline:
            # The server fsyncs only after replying, so the file may show up late.
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.25)
            size = _size(output)
        if size <= 0:
            state = "empty" if size == 0 else "missing"
            return Outcome.failed(
                Action.FINAL,
                "target_missing",
                TargetError(
                    f"the server reported success but {output} is {state} after waiting "
                    f"{settle:g}s for the shared filesystem (MARS_TARGET_SETTLE_TIME)"
                ),
                job_id=outcome.job_id,
            )
        if output != target:
            os.replace(output, target)
        return Outcome.success(size, outcome.job_id)


def _size(path: Path) -> int:
    """The file's size, or -1 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
