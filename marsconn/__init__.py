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
    from .core.errors import (
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
    from .plan.capability import Capability, assess, detect_server_version
    from .plan.endpoints import Endpoint, ServerURL, parse_server_url, to_websocket
    from .plan.load import LoadedSettings, load_settings
    from .plan.model import ConnectionPlan, FailoverPolicy, LogPolicy, Mode, Reason, Timeouts
    from .plan.provenance import Provenance, SourceKind
    from .plan.resolve import resolve_plan
    from .plan.settings import MarsSettings
    from .run.engine import execute, execute_async
    from .run.health import ServerHealth
    from .run.job import Job
    from .run.result import Attempt, Result

from .core.version import __version__ as __version__

_MODULE_OF = {
    "Capability": "plan.capability",
    "assess": "plan.capability",
    "detect_server_version": "plan.capability",
    "Endpoint": "plan.endpoints",
    "ServerURL": "plan.endpoints",
    "parse_server_url": "plan.endpoints",
    "to_websocket": "plan.endpoints",
    "ConfigError": "core.errors",
    "ErrorKind": "core.errors",
    "JobKilledError": "core.errors",
    "LogHandlerError": "core.errors",
    "MarsconnError": "core.errors",
    "MarsRequestError": "core.errors",
    "NoDataError": "core.errors",
    "NoServerAvailableError": "core.errors",
    "PreflightError": "core.errors",
    "Problem": "core.errors",
    "TargetError": "core.errors",
    "TransferError": "core.errors",
    "Attempt": "run.result",
    "Job": "run.job",
    "Result": "run.result",
    "ServerHealth": "run.health",
    "execute": "run.engine",
    "execute_async": "run.engine",
    "ConnectionPlan": "plan.model",
    "FailoverPolicy": "plan.model",
    "LogPolicy": "plan.model",
    "Mode": "plan.model",
    "Reason": "plan.model",
    "Timeouts": "plan.model",
    "resolve_plan": "plan.resolve",
    "Provenance": "plan.provenance",
    "SourceKind": "plan.provenance",
    "LoadedSettings": "plan.load",
    "MarsSettings": "plan.settings",
    "load_settings": "plan.load",
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
    "ServerHealth",
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
