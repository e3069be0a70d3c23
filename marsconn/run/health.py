"""Per-process memory of the servers' health: ejection, and one probe at a time.

A server that failed to answer (refused, timed out, died) is *ejected*: for
a cooldown it is tried last, by this and every concurrent or following
retrieval in the process, so a dead server stops costing every request a
connection attempt first. It is never skipped outright: when it is the only
one left for a retrieval it is still tried.

Ejection alone does not protect a burst: retrievals that start together
all pick their first server before any of them has learnt anything, and a
third of them may pick the dead one. So a server is also *trusted* or not.
A trusted server answered since it was last ejected; any number of
retrievals may connect to it at once. Any other server (never contacted
yet, ejected, or whose cooldown just ended) takes one attempt at a time,
the *probe*, until it answers: meanwhile the other retrievals try other
servers first, and only wait for the probe when nothing else is left. A
probe ends as soon as the server answers (the WebSocket handshake, the pipe
server's ping), not when the job ends. A retrieval that waited for a probe
that failed does not repeat it: it counts that failure as its own for the
pass (error class ``ejected``). A trusted server whose connection attempt
has been pending for more than :data:`SLOW_CONNECT` seconds is tried after
the others (but never waited for), so that a server hanging after it was
trusted is not every new retrieval's first choice for a whole connect
timeout.

The registry is shared by threads and event loops; waiting for a probe is
polling, done by the executor.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

__all__ = ["SLOW_CONNECT", "Admission", "ServerHealth", "Ticket", "default_health"]

T = TypeVar("T")

#: Seconds a connection attempt to a trusted server may be pending before that server is
#: tried after the others (healthy servers answer in milliseconds).
SLOW_CONNECT = 1.0


class Admission(Enum):
    """What a retrieval may do with a server now."""

    #: Connect: the server is trusted.
    GO = "go"
    #: Connect: this attempt is the server's probe (no other attempt runs on it meanwhile).
    PROBE = "probe"
    #: Another attempt is probing the server: try another server, or wait.
    WAIT = "wait"
    #: Do not connect: another retrieval's attempt on it failed during this pass.
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Ticket:
    """The answer of :meth:`ServerHealth.admit`; pass it back to ``reached`` and ``done``.

    For ``SKIP``, ``failure`` is the error class of the attempt that failed
    and ``failed_ago`` how many seconds ago it ended.
    """

    server: str
    admission: Admission
    token: int = 0
    failure: str | None = None
    failed_ago: float = 0.0


@dataclass(slots=True)
class _State:
    ejected_until: float = 0.0
    trusted: bool = False
    prober: int | None = None  # token of the attempt holding the probe
    pending: dict[int, float] = field(default_factory=dict)  # token -> start, not yet answered
    failed_at: float = float("-inf")  # end of the last attempt that failed with an ejection
    failure: str | None = None


class ServerHealth:
    """Thread-safe record of each server's health, keyed by URL."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}
        self._tokens = itertools.count(1)

    def now(self) -> float:
        """The registry's clock (what ``since`` of :meth:`admit` is measured on)."""
        return self._clock()

    def _state(self, server: str) -> _State:
        state = self._states.get(server)
        if state is None:
            state = self._states[server] = _State()
        return state

    @staticmethod
    def _slow(state: _State, now: float) -> bool:
        return any(now - started > SLOW_CONNECT for started in state.pending.values())

    # --- ejection ---------------------------------------------------------------------------

    def eject(self, server: str, cooldown: float) -> bool:
        """Move ``server`` to the back for ``cooldown`` seconds; True if it was not ejected yet.

        It is no longer trusted: its next attempt is a probe.
        """
        if cooldown <= 0:
            return False
        with self._lock:
            now = self._clock()
            state = self._state(server)
            fresh = state.ejected_until <= now
            state.ejected_until = now + cooldown
            state.trusted = False
            return fresh

    def restore(self, server: str) -> bool:
        """Forget an ejection after the server answered; True if it was ejected."""
        with self._lock:
            state = self._states.get(server)
            if state is None:
                return False
            was = state.ejected_until > self._clock()
            state.ejected_until = 0.0
            state.trusted = True
            return was

    def is_ejected(self, server: str) -> bool:
        """Whether ``server`` is inside its cooldown now."""
        with self._lock:
            state = self._states.get(server)
            return state is not None and state.ejected_until > self._clock()

    # --- attempts ---------------------------------------------------------------------------

    def admit(self, server: str, since: float = float("inf"), cooldown: float = 1.0) -> Ticket:
        """May an attempt connect to ``server`` now? See :class:`Admission`.

        ``since`` is when the caller's current pass began (on :meth:`now`'s
        clock): a failure of another attempt after it, on a server that is
        ejected, is an answer for this pass too (``SKIP``). ``cooldown`` is
        the caller's ejection cooldown: 0 turns ejection off, and with it
        probing (every attempt may go). A ``GO`` or ``PROBE`` ticket must be
        ended with :meth:`done`.
        """
        with self._lock:
            now = self._clock()
            state = self._state(server)
            if cooldown <= 0:
                token = next(self._tokens)
                state.pending[token] = now
                return Ticket(server, Admission.GO, token)
            ejected = state.ejected_until > now
            if ejected and state.failed_at >= since:
                return Ticket(
                    server, Admission.SKIP, failure=state.failure, failed_ago=now - state.failed_at
                )
            if state.prober is not None:
                return Ticket(server, Admission.WAIT)
            token = next(self._tokens)
            state.pending[token] = now
            if state.trusted and not ejected:
                return Ticket(server, Admission.GO, token)
            state.prober = token
            return Ticket(server, Admission.PROBE, token)

    def enter(self, server: str) -> Ticket:
        """A ticket without conditions, for retrying on a server that just answered."""
        with self._lock:
            token = next(self._tokens)
            self._state(server).pending[token] = self._clock()
            return Ticket(server, Admission.GO, token)

    def reached(self, ticket: Ticket) -> bool:
        """The attempt got an answer from the server: it is trusted again.

        Ends the probe if this attempt held it and lifts an ejection;
        returns True if the server was ejected.
        """
        with self._lock:
            state = self._state(ticket.server)
            state.pending.pop(ticket.token, None)
            if state.prober == ticket.token:
                state.prober = None
            state.trusted = True
            was = state.ejected_until > self._clock()
            state.ejected_until = 0.0
            return was

    def done(self, ticket: Ticket, failure: str | None = None, cooldown: float = 0.0) -> bool:
        """The attempt ended; ``failure`` is its error class if the server is to be ejected.

        Ejects the server for ``cooldown`` seconds in the same step as the
        probe ends, so no other attempt can start a probe in between.
        Returns True if the server was not ejected before (as :meth:`eject`).
        """
        with self._lock:
            now = self._clock()
            state = self._state(ticket.server)
            state.pending.pop(ticket.token, None)
            if state.prober == ticket.token:
                state.prober = None
            if failure is None or cooldown <= 0:
                return False
            state.failed_at = now
            state.failure = failure
            fresh = state.ejected_until <= now
            state.ejected_until = now + cooldown
            state.trusted = False
            return fresh

    # --- order ------------------------------------------------------------------------------

    def reorder(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """``items`` in the order to try them now, each group in its given order.

        First the servers that may be tried at once (not ejected, not being
        probed by another attempt, no connection pending for long), then
        those being probed or slow to answer, then the ejected ones, the one
        whose cooldown ends first first.
        """
        with self._lock:
            now = self._clock()
            rank: dict[str, tuple[int, float]] = {}
            for item in items:
                server = key(item)
                state = self._states.get(server)
                if state is None:
                    rank[server] = (0, 0.0)
                elif state.ejected_until > now:
                    rank[server] = (2, state.ejected_until)
                else:
                    busy = state.prober is not None or self._slow(state, now)
                    rank[server] = (1 if busy else 0, 0.0)
        return sorted(items, key=lambda item: rank[key(item)])

    def clear(self) -> None:
        """Forget everything (tests, or after a deployment change)."""
        with self._lock:
            self._states.clear()


_default: ServerHealth | None = None
_default_lock = threading.Lock()


def default_health() -> ServerHealth:
    """The process-wide instance used when a retrieval is given none."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ServerHealth()
        return _default
