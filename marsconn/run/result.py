"""What a retrieval returns: the outcome and every attempt that led to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ErrorKind, MarsconnError

__all__ = ["Attempt", "Result"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try on one server."""

    server: str
    outcome: str  # an Action value
    error_class: str | None
    error: str | None
    duration: float
    pass_number: int
    job_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "server": self.server,
            "outcome": self.outcome,
            "error_class": self.error_class,
            "error": self.error,
            "duration": round(self.duration, 6),
            "pass": self.pass_number,
            "job_id": self.job_id,
        }


@dataclass(slots=True)
class Result:
    """The outcome of :func:`marsconn.execute`.

    ``error`` is None on success, else the exception describing the failure
    (the same object adaptor code already inspects); ``message`` is the kept
    log text: every raw MARS line (and marsconn's own notes), bounded by the
    plan's ``keep_lines``; over the bound, lines are dropped from the middle
    and one line says how many, and ``dropped_log_lines`` counts them.
    ``target`` is the absolute path of the output file; ``server`` ran the
    job (None if none did); ``attempts`` lists every try; ``bytes`` is the
    size of the target file; ``duration`` is the wall time of the whole
    call, in seconds; ``request_id`` is the id the servers saw (generated
    when the caller's ``environ`` gave None).
    """

    error: BaseException | None
    message: str
    mode: str
    target: str
    server: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    bytes: int = 0
    duration: float = 0.0
    dropped_log_lines: int = 0
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when the retrieval succeeded."""
        return self.error is None

    @property
    def error_kind(self) -> ErrorKind | None:
        """The :class:`~marsconn.core.errors.ErrorKind` of the failure; None on success.

        A marsconn error gives its class's ``kind``; any other exception
        counts as :attr:`~marsconn.core.errors.ErrorKind.RUNTIME`.
        """
        if self.error is None:
            return None
        if isinstance(self.error, MarsconnError):
            return self.error.kind
        return ErrorKind.RUNTIME

    @property
    def error_class(self) -> str | None:
        """The last attempt's error class, when the retrieval failed."""
        if self.error is None:
            return None
        for attempt in reversed(self.attempts):
            if attempt.error_class:
                return attempt.error_class
        return type(self.error).__name__

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the log text included)."""
        return {
            "ok": self.ok,
            "error": None if self.error is None else str(self.error),
            "error_type": None if self.error is None else type(self.error).__name__,
            "error_class": self.error_class,
            "error_kind": None if self.error is None else str(self.error_kind),
            "mode": self.mode,
            "target": self.target,
            "server": self.server,
            "bytes": self.bytes,
            "duration": round(self.duration, 6),
            "attempts": [a.to_dict() for a in self.attempts],
            "message": self.message,
            "dropped_log_lines": self.dropped_log_lines,
            "request_id": self.request_id,
        }
