"""Audit events: stable names and fields, emission, configure(), and their documentation."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from marsconn.core import audit
from marsconn.core.audit import EVENTS, AuditEvent

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit.md"

WARNING_EVENTS = {
    "marsconn.mode.fallback",
    "marsconn.attempt.failed",
    "marsconn.failover",
    "marsconn.server.ejected",
}


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.calls.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.calls.append(("warning", event, kw))


def sample(cls: type[AuditEvent]) -> AuditEvent:
    """An instance with a distinct value per field."""
    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        kind = str(f.type)
        if kind.startswith("list"):
            values[f.name] = [f"item{i}"]
        elif kind == "int":
            values[f.name] = i
        elif kind == "float":
            values[f.name] = i + 0.5
        elif kind == "bool":
            values[f.name] = bool(i % 2)
        else:
            values[f.name] = f"{f.name}-value"
    return cls(**values)


# --- the event catalogue -------------------------------------------------------------------------


def test_event_names_are_unique_and_prefixed() -> None:
    names = [cls.EVENT for cls in EVENTS.values()]
    assert len(names) == len(set(names))
    assert all(name.startswith("marsconn.") for name in names)
    assert all(key == cls.EVENT for key, cls in EVENTS.items())


def test_every_event_class_is_registered() -> None:
    def subclasses(cls: type) -> set[type]:
        out = set(cls.__subclasses__())
        for sub in list(out):
            out |= subclasses(sub)
        return out

    # slots=True makes a new class per dataclass, so compare by name, not identity.
    assert {(c.__name__, c.EVENT) for c in subclasses(AuditEvent)} == {
        (c.__name__, c.EVENT) for c in EVENTS.values()
    }
    assert all(getattr(audit, cls.__name__) is cls for cls in EVENTS.values())
    assert set(EVENTS) == {
        "marsconn.plan.resolved",
        "marsconn.mode.fallback",
        "marsconn.attempt.started",
        "marsconn.attempt.failed",
        "marsconn.attempt.succeeded",
        "marsconn.failover",
        "marsconn.server.ejected",
        "marsconn.server.restored",
        "marsconn.job.finished",
    }


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_levels(name: str) -> None:
    assert ("warning" if name in WARNING_EVENTS else "info") == EVENTS[name].LEVEL


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_events_are_frozen_and_fields_are_in_declaration_order(name: str) -> None:
    record = sample(EVENTS[name])
    names = [f.name for f in dataclasses.fields(record)]
    assert list(record.fields()) == names
    assert "EVENT" not in names
    assert "LEVEL" not in names
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, names[0], "changed")


def test_field_names_of_the_attempt_events() -> None:
    def names(name: str) -> list[str]:
        return [f.name for f in dataclasses.fields(EVENTS[name])]

    assert names("marsconn.attempt.started") == [
        "request_id",
        "mode",
        "server",
        "attempt",
        "pass_number",
    ]
    assert names("marsconn.attempt.failed") == [
        "request_id",
        "mode",
        "server",
        "attempt",
        "pass_number",
        "error_class",
        "error",
        "action",
        "duration",
    ]
    assert names("marsconn.job.finished") == [
        "request_id",
        "mode",
        "ok",
        "error_class",
        "server",
        "attempts",
        "duration",
        "bytes",
    ]


# --- emit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_emit_calls_the_level_method_with_the_fields(name: str) -> None:
    record = sample(EVENTS[name])
    rec = Recorder()
    audit.emit(record, rec)
    assert rec.calls == [(record.level, name, record.fields())]


def test_plan_resolved_is_a_warning_only_when_the_plan_has_warnings() -> None:
    fields = {
        "mode": "pipe",
        "requested_mode": "pipe",
        "reason": "shares_not_requested",
        "server_version": None,
        "required_version": "0.3.0",
        "endpoint_count": 1,
        "fingerprint": "sha256:0",
        "sources": [],
    }
    quiet, warned = Recorder(), Recorder()
    audit.emit(audit.PlanResolved(**fields), quiet)
    audit.emit(audit.PlanResolved(**fields, warnings=["MARS_CONFIG_FILE: gone"]), warned)
    assert [call[0] for call in quiet.calls + warned.calls] == ["info", "warning"]


def test_emit_defaults_to_the_marsconn_structlog_logger() -> None:
    with capture_logs() as events:
        audit.emit(audit.ServerRestored("ws://a:9001"))
    assert events == [
        {"event": "marsconn.server.restored", "log_level": "info", "server": "ws://a:9001"}
    ]


def test_get_logger_is_named_marsconn(caplog: pytest.LogCaptureFixture) -> None:
    structlog.configure(
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
    )
    with caplog.at_level(logging.INFO):
        audit.emit(audit.ServerEjected("ws://a:9001", "connect_refused", 30.0))
    assert [(r.name, r.levelname) for r in caplog.records] == [("marsconn", "WARNING")]
    assert "event='marsconn.server.ejected'" in caplog.records[0].getMessage()


# --- configure -----------------------------------------------------------------------------------


STARTED = audit.AttemptStarted("req-1", "websocket", "ws://a:9001", 1, 1)
FAILED = audit.AttemptFailed(
    "req-1", "websocket", "ws://a:9001", 1, 1, "connect_refused", "refused", "next_server", 0.25
)


def test_configure_json_writes_one_object_per_line() -> None:
    buf = io.StringIO()
    audit.configure(json=True, stream=buf)
    audit.emit(STARTED)
    audit.emit(FAILED)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "marsconn.attempt.started"
    assert first["level"] == "info"
    assert second["event"] == "marsconn.attempt.failed"
    assert second["level"] == "warning"
    assert {k: v for k, v in second.items() if k not in ("event", "level", "timestamp")} == (
        FAILED.fields()
    )
    for obj in (first, second):
        stamp = datetime.fromisoformat(obj["timestamp"])
        assert stamp.utcoffset() == timedelta(0)


def test_configure_text_writes_key_value_lines() -> None:
    buf = io.StringIO()
    audit.configure(json=False, stream=buf)
    audit.emit(FAILED)
    text = buf.getvalue()
    assert len(text.splitlines()) == 1
    assert "marsconn.attempt.failed" in text
    assert "error_class=connect_refused" in text
    assert "\x1b[" not in text  # no colours
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_configure_level_warning_filters_info() -> None:
    buf = io.StringIO()
    audit.configure(json=True, stream=buf, level="warning")
    audit.emit(STARTED)
    audit.emit(FAILED)
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert events == ["marsconn.attempt.failed"]


def test_configure_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    audit.configure(json=True)
    audit.emit(STARTED)
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err)["event"] == "marsconn.attempt.started"


def test_import_configures_nothing() -> None:
    code = textwrap.dedent(
        """
        import sys
        import structlog
        import marsconn
        marsconn.resolve_plan(
            env={"MARS_USE_SHARES": "true", "MARS_FORCE_WEBSOCKET_MODE": "true"},
            overrides={"servers": ["http://a:9000"]},
            default_list_files=(),
        )
        print("CONFIGURED", structlog.is_configured())
        print("WEBSOCKETS", "websockets" in sys.modules)
        import marsconn.run.engine
        print("AFTER_EXECUTOR", structlog.is_configured())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = proc.stdout.splitlines()
    assert "CONFIGURED False" in lines
    assert "AFTER_EXECUTOR False" in lines
    # The plan side does not pull in network code.
    assert "WEBSOCKETS False" in lines
    # The unconfigured default still delivered the plan event (structlog's defaults).
    assert any("marsconn.plan.resolved" in line for line in lines)


# --- docs/audit.md -------------------------------------------------------------------------------


_HEADING = re.compile(r"^## (marsconn\.[a-z_.]+)(?: \((warning)\))?\s*$")
_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|\s*([^|]+?)\s*\|")


def _documented() -> dict[str, tuple[bool, dict[str, str]]]:
    """event name -> (marked warning, {field: type column})."""
    sections: dict[str, tuple[bool, dict[str, str]]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            match = _HEADING.match(line)
            current = None
            if match:
                current = {}
                sections[match.group(1)] = (match.group(2) == "warning", current)
            continue
        row = _ROW.match(line)
        if row and current is not None:
            current[row.group(1)] = row.group(2)
    return sections


def _doc_type(annotation: str) -> str:
    return annotation.replace(" | None", " or null").replace("list[str]", "list of str")


def test_audit_doc_documents_every_event_and_field() -> None:
    documented = _documented()
    assert set(documented) == set(EVENTS), "docs/audit.md headings vs marsconn.core.audit.EVENTS"
    for name, cls in EVENTS.items():
        warning, fields = documented[name]
        assert list(fields) == [f.name for f in dataclasses.fields(cls)], name
        assert warning == (cls.LEVEL == "warning"), f"{name}: '(warning)' marker"


def test_audit_doc_field_types_match_the_dataclasses() -> None:
    documented = _documented()
    for name, cls in EVENTS.items():
        _, fields = documented[name]
        for f in dataclasses.fields(cls):
            assert fields.get(f.name) == _doc_type(str(f.type)), f"{name}.{f.name}"


def test_null_audit_logger_drops_every_event() -> None:
    from marsconn import resolve_plan
    from marsconn.core.audit import NullAuditLogger

    with structlog.testing.capture_logs() as events:
        resolve_plan(
            env={"MARS_USE_SHARES": "true"},
            overrides={"servers": ["mars-1"]},
            server_version="0.2.0",
            logger=NullAuditLogger(),
        )
    assert events == []
