"""The executor's audit events, loaded on first use by :mod:`marsconn.core.audit` (their home).

Import them from :mod:`marsconn.core.audit`; they live here only so that resolving a plan does
not pay for creating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .audit_event import AuditEvent

__all__ = [
    "AttemptFailed",
    "AttemptStarted",
    "AttemptSucceeded",
    "Failover",
    "JobFinished",
    "ServerEjected",
    "ServerRestored",
]


@dataclass(frozen=True, slots=True)
class AttemptStarted(AuditEvent):
    """One attempt at running the job on one server begins."""

    EVENT: ClassVar[str] = "marsconn.attempt.started"
    request_id: str
    mode: str
    server: str
    attempt: int
    pass_number: int


@dataclass(frozen=True, slots=True)
class AttemptFailed(AuditEvent):
    """An attempt failed; ``action`` says what happens next."""

    EVENT: ClassVar[str] = "marsconn.attempt.failed"
    LEVEL: ClassVar[str] = "warning"
    request_id: str
    mode: str
    server: str
    attempt: int
    pass_number: int
    error_class: str
    error: str
    action: str  # "next_server", "same_server" or "final"
    duration: float


@dataclass(frozen=True, slots=True)
class AttemptSucceeded(AuditEvent):
    """An attempt ran the job to completion."""

    EVENT: ClassVar[str] = "marsconn.attempt.succeeded"
    request_id: str
    mode: str
    server: str
    attempt: int
    pass_number: int
    duration: float


@dataclass(frozen=True, slots=True)
class Failover(AuditEvent):
    """The executor moves on from one server to the next."""

    EVENT: ClassVar[str] = "marsconn.failover"
    LEVEL: ClassVar[str] = "warning"
    request_id: str
    mode: str
    from_server: str
    to_server: str | None
    error_class: str
    sleep: float


@dataclass(frozen=True, slots=True)
class ServerEjected(AuditEvent):
    """A server refused or timed out; it is tried last for ``cooldown`` seconds."""

    EVENT: ClassVar[str] = "marsconn.server.ejected"
    LEVEL: ClassVar[str] = "warning"
    server: str
    error_class: str
    cooldown: float


@dataclass(frozen=True, slots=True)
class ServerRestored(AuditEvent):
    """An ejected server answered again and is back in its normal place."""

    EVENT: ClassVar[str] = "marsconn.server.restored"
    server: str


@dataclass(frozen=True, slots=True)
class JobFinished(AuditEvent):
    """A retrieval ended, successfully or not."""

    EVENT: ClassVar[str] = "marsconn.job.finished"
    request_id: str
    mode: str
    ok: bool
    error_class: str | None
    server: str | None
    attempts: int
    duration: float
    bytes: int
