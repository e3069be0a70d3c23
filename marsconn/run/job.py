"""What the engine hands a transport, and what a transport is: one attempt on one server.

Transports import this module, never the engine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core.outcome import Outcome
from ..plan.endpoints import Endpoint
from ..plan.model import ConnectionPlan
from .logs import LogSink

__all__ = ["Job", "JobContext", "Transport"]


class Job:
    """The running job, as handed to a log handler.

    ``kill()`` asks the server to stop the job; the transport sends the kill
    as soon as the handler returns, and the retrieval ends with a
    :class:`~marsconn.core.errors.JobKilledError`.

    Handlers written for cads-mars-server's ``(line, ws, logger)`` signature
    get this object where they got the WebSocket. What such handlers do
    with it works: ``await job.send(json.dumps({"cmd": "kill"}))`` is the
    same as ``job.kill()`` (in both modes); any other message is refused
    with a ``ValueError``, which, raised inside the handler, aborts the job
    like any exception a handler raises. ``request_id``, ``server`` (the
    server running the job, credentials redacted) and ``job_id`` (the
    server's id for it, once known) are for the handler to read.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.server: str | None = None
        self.job_id: str | None = None
        self.kill_requested = False

    def kill(self) -> None:
        """Ask the server to stop this job."""
        self.kill_requested = True

    async def send(self, message: str | bytes) -> None:
        """Take a command as cads-mars-server's WebSocket did; only ``{"cmd": "kill"}`` exists.

        Raises ValueError for anything else: the servers understand no other
        command from a running job's client.
        """
        try:
            payload = json.loads(message)
        except (TypeError, ValueError):
            payload = None
        if isinstance(payload, dict) and payload == {"cmd": "kill"}:
            self.kill()
            return
        shown = repr(message)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        raise ValueError(
            f"Job.send() got {shown}; the only command a running job takes is the kill, "
            'as JSON text: {"cmd": "kill"} (or call job.kill())'
        )

    def __repr__(self) -> str:
        return f"Job(request_id={self.request_id!r}, server={self.server!r}, id={self.job_id!r})"


@dataclass(slots=True)
class JobContext:
    """Everything a transport needs for one retrieval."""

    plan: ConnectionPlan
    requests: list[dict[str, Any]]
    environ: dict[str, Any]
    target: Path
    sink: LogSink
    job: Job
    #: None: the ``random`` module's shared generator (seeding one per call costs ~12 us).
    rng: random.Random | None = None
    #: Set by the engine for each attempt: see :meth:`reached`.
    on_reached: Callable[[], None] | None = None

    def reached(self) -> None:
        """The transport got an answer from the server (handshake, ping) and trusts it.

        Ends the server's probe, so other retrievals may connect to it at once.
        """
        if self.on_reached is not None:
            self.on_reached()


class Transport(Protocol):
    """One wire protocol: makes one attempt on one server and classifies it."""

    async def attempt(self, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        """Run the job on ``endpoint``; never raise for a server's failure, classify it.

        Cancellation must be honoured: stop the server's job, close, re-raise.
        """
        ...

    async def cleanup(self, ctx: JobContext, success: bool) -> None:
        """Called once when the retrieval ends (also on cancellation): drop leftovers."""
        ...
