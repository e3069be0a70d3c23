"""A plan survives JSON and another process; tampering and redaction are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
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


def test_new_fields_round_trip() -> None:
    plan = _plan(retry_backoff="exponential", shares_dir_mode="0o711", servers=["mars-1"])
    data = json.loads(plan.to_json())
    assert data["format"] == 2
    assert data["policy"]["backoff_mode"] == "exponential"
    assert data["shares_dir_mode"] == 0o711
    again = ConnectionPlan.from_dict(data)
    assert again == plan
    assert (again.policy.backoff_mode, again.shares_dir_mode) == ("exponential", 0o711)


def test_tampered_new_fields_are_refused() -> None:
    for path, value in ((("policy", "backoff_mode"), "exponential"), (("shares_dir_mode",), 511)):
        data = json.loads(_plan(servers=["mars-1"]).to_json())
        holder = data
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
        with pytest.raises(ValueError, match="fingerprint mismatch"):
            ConnectionPlan.from_dict(data)


FORMAT1 = Path(__file__).parent / "data" / "plan-format1.json"


def test_a_format_1_plan_is_still_read_with_its_behaviour() -> None:
    # Written by marsconn before plan format 2, when the backoff was always exponential.
    data = json.loads(FORMAT1.read_text())
    assert "format" not in data
    assert "backoff_mode" not in data["policy"]
    plan = ConnectionPlan.from_dict(data)
    assert plan.policy.backoff_mode == "exponential"
    assert plan.policy.max_passes == 4
    assert plan.policy.backoff_initial == 0.5
    assert plan.shares_dir_mode == 0o733
    assert plan.urls == ["ws://mars-1:9001", "ws://mars-2:9001"]
    # The same behaviour resolved today has the same (format-2) fingerprint.
    today = _plan(
        servers=["http://mars-1:9000", "mars-2"],
        max_retries=4,
        retry_delay=0.5,
        retry_backoff="exponential",
    )
    assert plan.fingerprint == today.fingerprint != data["fingerprint"]
    assert ConnectionPlan.from_json(plan.to_json()) == plan


def test_a_tampered_format_1_plan_is_refused() -> None:
    data = json.loads(FORMAT1.read_text())
    data["policy"]["max_passes"] = 9
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        ConnectionPlan.from_dict(data)


def test_an_unknown_format_is_refused() -> None:
    data = json.loads(_plan(servers=["mars-1"]).to_json())
    data["format"] = 3
    with pytest.raises(ValueError, match="format 3 is not 1 or 2"):
        ConnectionPlan.from_dict(data)
