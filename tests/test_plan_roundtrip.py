"""A plan survives JSON and another process; tampering and redaction are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from marsconn import ConnectionPlan, resolve_plan


class Quiet:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def _plan(**overrides: Any) -> ConnectionPlan:
    settings: dict[str, Any] = {
        "servers": ["http://user:s3cret@mars-1:9000", "mars-2", "https://[fd00::5]:9443/p"],
        "use_shares": True,
    }
    settings.update(overrides)
    return resolve_plan(env={}, overrides=settings, server_version="0.3.2", logger=Quiet())


def test_round_trip_with_secrets_gives_an_equal_plan() -> None:
    plan = _plan(max_retries=4, job_deadline=3600)
    again = ConnectionPlan.from_json(plan.to_json(reveal_secrets=True))
    assert again == plan
    assert again.endpoints[0].url.secret() == "ws://user:s3cret@mars-1:9001"


def test_default_json_is_redacted_and_cannot_be_run_elsewhere() -> None:
    text = _plan().to_json()
    assert "s3cret" not in text
    with pytest.raises(ValueError, match="redacted"):
        ConnectionPlan.from_json(text)


def test_plan_without_credentials_round_trips_from_default_json() -> None:
    plan = _plan(servers=["mars-1", "mars-2"])
    assert ConnectionPlan.from_json(plan.to_json()) == plan


def test_tampered_plan_is_refused() -> None:
    data = json.loads(_plan(servers=["mars-1"]).to_json())
    data["timeouts"]["connect"] = 99.0
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        ConnectionPlan.from_dict(data)


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError, match="not a serialised ConnectionPlan"):
        ConnectionPlan.from_dict({"mode": "pipe"})


def test_handed_to_another_process() -> None:
    plan = _plan()
    code = (
        "import sys, marsconn; "
        "p = marsconn.ConnectionPlan.from_json(sys.stdin.read()); "
        "print(p.fingerprint, p.mode.value, len(p.endpoints))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=plan.to_json(reveal_secrets=True),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [plan.fingerprint, "websocket", "3"]
