"""Structured audit events: one typed record per decision or attempt.

Every event is a frozen dataclass with a stable ``EVENT`` name and stable
field names (documented in docs/audit.md), emitted through structlog. The
library never configures logging: events go to ``structlog.get_logger("marsconn")``
(or a logger the caller passes), so an application's structlog configuration
decides where they end up. :func:`configure` is a convenience for
applications and the CLI that have no configuration of their own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TextIO

from .audit_event import AuditEvent

__all__ = [
    "EVENTS",
    "AttemptFailed",
    "AttemptStarted",
    "AttemptSucceeded",
    "AuditEvent",
    "AuditLogger",
    "Failover",
    "JobFinished",
    "ModeFallback",
    "NullAuditLogger",
    "PlanResolved",
    "ServerEjected",
    "ServerRestored",
    "configure",
    "emit",
    "get_logger",
]


class AuditLogger(Protocol):
    """Anything with structlog's ``info``/``warning`` calling convention."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...


class NullAuditLogger:
    """An audit logger that drops every event (benchmarks, quiet tests, opt-out)."""

    def info(self, event: str, **kw: Any) -> None:
        """Drop an info event."""

    def warning(self, event: str, **kw: Any) -> None:
        """Drop a warning event."""


@dataclass(frozen=True, slots=True)
class PlanResolved(AuditEvent):
    """A ConnectionPlan was resolved (at warning level when the plan has warnings)."""

    EVENT: ClassVar[str] = "marsconn.plan.resolved"
    mode: str
    requested_mode: str
    reason: str
    server_version: str | None
    required_version: str
    endpoint_count: int
    fingerprint: str
    sources: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        """``warning`` when the plan has warnings (an alert should see them), else ``info``."""
        return "warning" if self.warnings else "info"


@dataclass(frozen=True, slots=True)
class ModeFallback(AuditEvent):
    """WebSocket mode was asked for but not granted: pipe mode is used."""

    EVENT: ClassVar[str] = "marsconn.mode.fallback"
    LEVEL: ClassVar[str] = "warning"
    requested_mode: str
    mode: str
    reason: str
    detail: str
    remedy: str
    server_version: str | None
    required_version: str


# The executor's events are defined in ._job_events and loaded on first use (PEP 562):
# resolving a plan, the common first use of marsconn, needs only the two above, and each
# frozen dataclass costs about half a millisecond to create.
_JOB_EVENTS = (
    "AttemptStarted",
    "AttemptFailed",
    "AttemptSucceeded",
    "Failover",
    "ServerEjected",
    "ServerRestored",
    "JobFinished",
)

if TYPE_CHECKING:
    from ._job_events import (
        AttemptFailed,
        AttemptStarted,
        AttemptSucceeded,
        Failover,
        JobFinished,
        ServerEjected,
        ServerRestored,
    )

    #: Every event type, keyed by its EVENT name.
    EVENTS: dict[str, type[AuditEvent]]


def __getattr__(name: str) -> Any:
    if name in _JOB_EVENTS:
        from . import _job_events

        return getattr(_job_events, name)
    if name == "EVENTS":
        from . import _job_events

        events = {
            cls.EVENT: cls
            for cls in (
                PlanResolved,
                ModeFallback,
                *(getattr(_job_events, n) for n in _JOB_EVENTS),
            )
        }
        globals()["EVENTS"] = events
        return events
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_logger() -> Any:
    """marsconn's audit logger: ``structlog.get_logger("marsconn")``."""
    import structlog  # deferred: not needed to import marsconn

    return structlog.get_logger("marsconn")


def emit(record: AuditEvent, logger: AuditLogger | None = None) -> None:
    """Send ``record`` to ``logger`` (default: :func:`get_logger`)."""
    target = logger if logger is not None else get_logger()
    method: Callable[..., Any] = getattr(target, record.level)
    method(record.EVENT, **record.fields())


def configure(*, json: bool = False, stream: TextIO | None = None, level: str = "info") -> None:
    """Configure structlog globally for an application that has no setup of its own.

    Events are written one per line to ``stream`` (default stderr), as JSON
    when ``json`` is true, else as readable key=value lines. Libraries must
    not call this; it exists for applications and the ``marsconn`` command.
    """
    import structlog

    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
