"""Shared fixtures: the marsconn.testing plugin plus plan helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest

from marsconn import ConnectionPlan, resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.run.health import ServerHealth

pytest_plugins = ["marsconn.testing.pytest_plugin"]


#: An audit logger that drops everything (keeps test output quiet).
NullAudit = NullAuditLogger


@pytest.fixture
def health() -> ServerHealth:
    """A private health registry, so ejections never leak between tests."""
    return ServerHealth()


@pytest.fixture
def ws_plan() -> Callable[..., ConnectionPlan]:
    """``ws_plan(urls, **overrides)``: a WebSocket plan over ``urls``, tried as listed."""

    def make(urls: list[str], **overrides: Any) -> ConnectionPlan:
        settings: dict[str, Any] = {
            "servers": urls,
            "use_shares": True,
            "force_websocket_mode": True,
            "failover_order": "listed",
            "retry_delay": 0,
            "connect_timeout": 2,
            "request_timeout": 2,
            "heartbeat_interval": 0.2,
            "target_settle_time": 0.5,
            "eject_cooldown": 0,
        }
        settings.update(overrides)
        return resolve_plan(env={}, overrides=settings, logger=NullAudit())

    return make


class GuardedEnviron(MutableMapping[str, str]):
    """Stands in for os.environ: delegates to it, but fails any read while armed."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.armed = False

    def _check(self) -> None:
        if self.armed:
            raise AssertionError("os.environ was read")

    def __getitem__(self, key: str) -> str:
        self._check()
        return self.real[key]

    def __iter__(self) -> Iterator[str]:
        self._check()
        return iter(self.real)

    def __len__(self) -> int:
        self._check()
        return len(self.real)

    def __setitem__(self, key: str, value: str) -> None:
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        del self.real[key]


@pytest.fixture
def guarded_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[GuardedEnviron]:
    """``os.environ`` replaced by a guard; set ``.armed = True`` to fail on any read."""
    guard = GuardedEnviron(os.environ)
    monkeypatch.setattr(os, "environ", guard)
    yield guard
    guard.armed = False
