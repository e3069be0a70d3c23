"""In-process MARS proxy servers for tests: the real wire protocols, a scripted MARS.

Use them directly (async context managers, or :func:`run_in_thread` from
synchronous code), or as pytest fixtures by adding
``pytest_plugins = ["marsconn.testing.pytest_plugin"]`` to a ``conftest.py``.
See docs/testing.md.

Names load on first use: a stand-in MARS process that only needs
:func:`iter_data` does not pay for importing the servers and websockets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pipe_server import PipeMarsServer, PostOutcome, PostRecord
    from ._script import MarsScript, ScriptSource, data_block, expected_data, iter_data
    from ._util import AsyncServer, ServerThread, SilentServer, dead_url, free_port, run_in_thread
    from ._ws_server import JobOutcome, JobRecord, WsMarsServer

_MODULE_OF = {
    "PipeMarsServer": "_pipe_server",
    "PostOutcome": "_pipe_server",
    "PostRecord": "_pipe_server",
    "MarsScript": "_script",
    "ScriptSource": "_script",
    "data_block": "_script",
    "expected_data": "_script",
    "iter_data": "_script",
    "AsyncServer": "_util",
    "ServerThread": "_util",
    "SilentServer": "_util",
    "dead_url": "_util",
    "free_port": "_util",
    "run_in_thread": "_util",
    "JobOutcome": "_ws_server",
    "JobRecord": "_ws_server",
    "WsMarsServer": "_ws_server",
}

__all__ = [
    "AsyncServer",
    "JobOutcome",
    "JobRecord",
    "MarsScript",
    "PipeMarsServer",
    "PostOutcome",
    "PostRecord",
    "ScriptSource",
    "ServerThread",
    "SilentServer",
    "WsMarsServer",
    "data_block",
    "dead_url",
    "expected_data",
    "free_port",
    "iter_data",
    "run_in_thread",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'marsconn.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
