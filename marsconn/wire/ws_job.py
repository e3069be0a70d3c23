"""The WebSocket job protocol without sockets: messages in, events and verdicts out.

:class:`WsJobMachine` knows what each server message means in each state
and what is retryable. The transport feeds it text and acts on the events;
tests drive it with plain strings.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..core.errors import JobKilledError, MarsRequestError, clip
from ..core.neutralise import neutralise
from ..core.outcome import Action, Outcome, ServerLost

__all__ = [
    "CAPACITY_CLOSE_CODE",
    "Heartbeat",
    "JobPhase",
    "LogLine",
    "ProtocolError",
    "ServerError",
    "Started",
    "WsJobMachine",
    "start_message",
]

CAPACITY_CLOSE_CODE = 1008
#: Most characters of a server's own text (an error, a close reason) kept in an error message.
_SERVER_TEXT = 500


class JobPhase(StrEnum):
    """Where the job is."""

    SENT = "sent"  # start sent, no answer yet
    RUNNING = "running"
    DONE = "done"


class ProtocolError(Exception):
    """The server sent something the protocol does not allow."""


class ServerError(Exception):
    """The server answered with an ``error`` state."""


@dataclass(frozen=True, slots=True)
class Started:
    """The server started the job."""

    job_id: str


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of MARS output."""

    line: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The server is alive; ``job_status`` is running, finished or idle."""

    job_status: str


#: Non-terminal events; terminal messages set the machine's outcome instead.
Event = Started | LogLine | Heartbeat


def start_message(requests: list[dict[str, Any]], environ: dict[str, Any], target: str) -> str:
    """The ``start`` command as JSON text."""
    return json.dumps({"cmd": "start", "requests": requests, "environ": environ, "target": target})


KILL_MESSAGE = json.dumps({"cmd": "kill"})


class WsJobMachine:
    """State of one job on one WebSocket connection.

    Call :meth:`receive` with each text message; it returns the event or,
    for a terminal message, sets :attr:`outcome`. Call :meth:`closed` when
    the connection ends and :meth:`silent` when no message arrived in time;
    both set :attr:`outcome` if none is set yet.
    """

    def __init__(self, server: str = "") -> None:
        self.server = server
        self.phase = JobPhase.SENT
        self.job_id: str | None = None
        self.outcome: Outcome | None = None
        self.kill_sent = False
        #: The server said ``finished`` (its late log lines may still follow).
        self.finished = False
        #: The server reported the job over (``finished``, ``killed`` or ``error``).
        self.server_done = False

    def _end(self, outcome: Outcome) -> Outcome:
        self.phase = JobPhase.DONE
        self.outcome = outcome
        return outcome

    def receive(self, data: str | bytes) -> Event | Outcome:
        """Interpret one server message: an event, or the outcome for a terminal one."""
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            return self._violation(f"invalid JSON from server: {_preview(data)}")
        if not isinstance(msg, dict):
            return self._violation(f"server message is not a JSON object: {_preview(data)}")
        kind = msg.get("type")
        if kind == "log":
            line = msg.get("line")
            return LogLine(line if isinstance(line, str) else str(line))
        if kind == "heartbeat":
            return Heartbeat(str(msg.get("job_status", "")))
        if kind != "state":
            return self._violation(f"unknown message type {kind!r}")
        status = msg.get("status")
        if status == "started":
            self.phase = JobPhase.RUNNING
            self.job_id = str(msg.get("job_id", "")) or None
            return Started(self.job_id or "")
        if status == "finished":
            self.finished = self.server_done = True
            return self._finished(msg.get("returncode"))
        if status == "killed":
            self.server_done = True
            return self._end(
                Outcome.failed(
                    Action.FINAL,
                    "killed",
                    JobKilledError(f"the job was killed on {self.server}"),
                    job_id=self.job_id,
                )
            )
        if status == "error":
            self.server_done = True
            # The server's own text: bounded, and unable to forge lines where it is shown.
            text = neutralise(clip(str(msg.get("error", "unspecified error")), _SERVER_TEXT))
            return self._end(
                Outcome.failed(
                    Action.NEXT_SERVER,
                    "server_error",
                    ServerError(f"{self.server} reported an error: {text}"),
                    job_id=self.job_id,
                )
            )
        return self._violation(f"unknown state {status!r}")

    def _finished(self, returncode: Any) -> Outcome:
        if isinstance(returncode, bool) or not isinstance(returncode, int):
            return self._violation(f"'finished' with a non-integer returncode {returncode!r}")
        if returncode < 0:
            return self._end(self._signalled(-returncode))
        if returncode != 0:
            # MARS itself rejected the request: any server would say the same.
            return self._end(
                Outcome.failed(
                    Action.FINAL,
                    "mars_rejected",
                    MarsRequestError(
                        f"MARS exited with code {returncode} on {self.server}; "
                        "the request was not retried elsewhere",
                        returncode=returncode,
                        server=self.server,
                    ),
                    job_id=self.job_id,
                )
            )
        return self._end(Outcome.success(0, self.job_id))

    def _signalled(self, signum: int) -> Outcome:
        # The server reports a MARS killed by a signal as a negative returncode. As the pipe
        # server decides: stopped by its host (hang-up, terminate, quit) another server may
        # run it; killed outright (SIGKILL: an operator, the OOM killer) or crashed, final.
        name = _signal_name(signum)
        elsewhere = signum in _RETRY_ELSEWHERE_SIGNALS
        then = "trying the next server" if elsewhere else "not retried elsewhere"
        return Outcome.failed(
            Action.NEXT_SERVER if elsewhere else Action.FINAL,
            "mars_killed",
            JobKilledError(f"MARS was killed by signal {name} on {self.server}; {then}"),
            job_id=self.job_id,
        )

    def _violation(self, text: str) -> Outcome:
        # A server speaking nonsense is a broken server: another one may be fine.
        return self._end(
            Outcome.failed(
                Action.NEXT_SERVER,
                "protocol_error",
                ProtocolError(f"{self.server}: {text}"),
                eject=True,
                job_id=self.job_id,
            )
        )

    def closed(self, code: int | None, reason: str) -> Outcome:
        """The connection closed; classify it unless the job already ended."""
        if self.outcome is not None:
            return self.outcome
        reason = neutralise(clip(reason, _SERVER_TEXT))
        if code == CAPACITY_CLOSE_CODE:
            return self._end(
                Outcome.failed(
                    Action.NEXT_SERVER,
                    "capacity",
                    ServerLost(f"{self.server} is at capacity: {reason or 'close 1008'}"),
                )
            )
        detail = f"code {code}" + (f", {reason}" if reason else "") if code else "no close frame"
        if self.phase is JobPhase.SENT:
            return self._end(
                Outcome.failed(
                    Action.NEXT_SERVER,
                    "closed_before_start",
                    ServerLost(f"{self.server} closed the connection before starting ({detail})"),
                )
            )
        return self._end(
            Outcome.failed(
                Action.NEXT_SERVER,
                "connection_lost",
                ServerLost(f"connection to {self.server} lost while the job ran ({detail})"),
                eject=True,
                job_id=self.job_id,
            )
        )

    def silent(self, seconds: float, pinged: float | None = None) -> Outcome:
        """Nothing arrived for ``seconds`` (nor a pong within ``pinged``): presumed dead."""
        if self.outcome is not None:
            return self.outcome
        if self.phase is JobPhase.SENT:
            error_class = "start_timeout"
            text = f"{self.server} did not start the job within {seconds:g}s"
        else:
            error_class = "server_silent"
            text = f"no message from {self.server} for {seconds:g}s while the job ran"
            if pinged is not None:
                text += f", and no answer to a ping within {pinged:g}s"
        return self._end(
            Outcome.failed(
                Action.NEXT_SERVER, error_class, ServerLost(text), eject=True, job_id=self.job_id
            )
        )

    def late(self, data: str | bytes) -> LogLine | None:
        """A message after the outcome: its log line, if it is one; anything else is ignored."""
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if isinstance(msg, dict) and msg.get("type") == "log":
            line = msg.get("line")
            return LogLine(line if isinstance(line, str) else str(line))
        return None


_RETRY_ELSEWHERE_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT})


def _signal_name(signum: int) -> str:
    try:
        return f"{signum} ({signal.Signals(signum).name})"
    except (ValueError, OverflowError):
        return str(signum)


def _preview(data: str | bytes, limit: int = 80) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
