"""In-process MARS proxy servers for tests: the real wire protocols, a scripted MARS.

Use them directly (async context managers, or :func:`run_in_thread` from
synchronous code), or as pytest fixtures by adding
``pytest_plugins = ["marsconn.testing.pytest_plugin"]`` to a ``conftest.py``.
See docs/testing.md.
"""

from __future__ import annotations

from ._pipe_server import PipeMarsServer, PostOutcome, PostRecord
from ._script import MarsScript, ScriptSource, data_block, expected_data, iter_data
from ._util import AsyncServer, ServerThread, SilentServer, dead_url, free_port, run_in_thread
from ._ws_server import JobOutcome, JobRecord, WsMarsServer

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
