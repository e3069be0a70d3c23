"""Shared fixtures: the marsconn.testing plugin plus plan helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from marsconn import ConnectionPlan, resolve_plan
from marsconn.health import ServerHealth

pytest_plugins = ["marsconn.testing.pytest_plugin"]


class NullAudit:
    """An audit logger that drops everything (keeps test output quiet)."""

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


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
