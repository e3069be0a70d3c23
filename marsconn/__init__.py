"""marsconn: decide how a data-store worker reaches its MARS proxy servers, then do it well.

The plan side (settings, endpoints, capability, plan) imports no network
code; the executor is imported on first use of :func:`execute`,
:func:`execute_async` or :class:`Result`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .capability import Capability, assess, detect_server_version
from .endpoints import Endpoint, ServerURL, parse_server_url, to_websocket
from .errors import (
    ConfigError,
    JobKilledError,
    LogHandlerError,
    MarsconnError,
    MarsRequestError,
    NoServerAvailableError,
    PreflightError,
    Problem,
    TargetError,
    TransferError,
)
from .plan import ConnectionPlan, FailoverPolicy, LogPolicy, Mode, Reason, Timeouts, resolve_plan
from .provenance import Provenance, SourceKind
from .settings import LoadedSettings, MarsSettings, load_settings

if TYPE_CHECKING:
    from .executor import Attempt, Job, Result, execute, execute_async

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "Capability",
    "ConfigError",
    "ConnectionPlan",
    "Endpoint",
    "FailoverPolicy",
    "Job",
    "JobKilledError",
    "LoadedSettings",
    "LogHandlerError",
    "LogPolicy",
    "MarsRequestError",
    "MarsSettings",
    "MarsconnError",
    "Mode",
    "NoServerAvailableError",
    "PreflightError",
    "Problem",
    "Provenance",
    "Reason",
    "Result",
    "ServerURL",
    "SourceKind",
    "TargetError",
    "Timeouts",
    "TransferError",
    "assess",
    "detect_server_version",
    "execute",
    "execute_async",
    "load_settings",
    "parse_server_url",
    "resolve_plan",
    "to_websocket",
]

_EXECUTOR_NAMES = frozenset({"Attempt", "Job", "Result", "execute", "execute_async"})


def __getattr__(name: str) -> Any:
    # The executor pulls in websockets and asyncio networking; adaptors that only
    # need a plan should not pay for it, so it is loaded on first use.
    if name in _EXECUTOR_NAMES:
        from . import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'marsconn' has no attribute {name!r}")
