"""marsconn: decide how a data-store worker reaches its MARS proxy servers, then do it well.

Names are loaded on first use (PEP 562): ``import marsconn`` costs almost
nothing, the plan side (pydantic-settings) loads on the first
:func:`resolve_plan`, and the executor (websockets, asyncio networking) on
the first :func:`execute` or :func:`execute_async`. Resolving a plan never
imports network code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capability import Capability, assess, detect_server_version
    from .endpoints import Endpoint, ServerURL, parse_server_url, to_websocket
    from .errors import (
        ConfigError,
        ErrorKind,
        JobKilledError,
        LogHandlerError,
        MarsconnError,
        MarsRequestError,
        NoDataError,
        NoServerAvailableError,
        PreflightError,
        Problem,
        TargetError,
        TransferError,
    )
    from .executor import Attempt, Job, Result, execute, execute_async
    from .plan import (
        ConnectionPlan,
        FailoverPolicy,
        LogPolicy,
        Mode,
        Reason,
        Timeouts,
        resolve_plan,
    )
    from .provenance import Provenance, SourceKind
    from .settings import LoadedSettings, MarsSettings, load_settings

__version__ = "0.1.0"

_MODULE_OF = {
    "Capability": "capability",
    "assess": "capability",
    "detect_server_version": "capability",
    "Endpoint": "endpoints",
    "ServerURL": "endpoints",
    "parse_server_url": "endpoints",
    "to_websocket": "endpoints",
    "ConfigError": "errors",
    "ErrorKind": "errors",
    "JobKilledError": "errors",
    "LogHandlerError": "errors",
    "MarsconnError": "errors",
    "MarsRequestError": "errors",
    "NoDataError": "errors",
    "NoServerAvailableError": "errors",
    "PreflightError": "errors",
    "Problem": "errors",
    "TargetError": "errors",
    "TransferError": "errors",
    "Attempt": "executor",
    "Job": "executor",
    "Result": "executor",
    "execute": "executor",
    "execute_async": "executor",
    "ConnectionPlan": "plan",
    "FailoverPolicy": "plan",
    "LogPolicy": "plan",
    "Mode": "plan",
    "Reason": "plan",
    "Timeouts": "plan",
    "resolve_plan": "plan",
    "Provenance": "provenance",
    "SourceKind": "provenance",
    "LoadedSettings": "settings",
    "MarsSettings": "settings",
    "load_settings": "settings",
}

__all__ = [
    "Attempt",
    "Capability",
    "ConfigError",
    "ConnectionPlan",
    "Endpoint",
    "ErrorKind",
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
    "NoDataError",
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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'marsconn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
