"""Whether the installed or declared cads-mars-server supports WebSocket mode."""

from __future__ import annotations

import sys

import pytest

from marsconn.plan import capability
from marsconn.plan.capability import (
    SERVER_PACKAGE,
    Capability,
    VersionVerdict,
    assess,
    detect_server_version,
)


@pytest.mark.parametrize(
    ("version", "verdict"),
    [
        ("0.3.0", VersionVerdict.SUPPORTED),
        ("0.3.0rc1", VersionVerdict.SUPPORTED),
        ("0.3.0.dev1+g1234567", VersionVerdict.SUPPORTED),
        ("0.3.0.post1", VersionVerdict.SUPPORTED),
        ("0.3.1", VersionVerdict.SUPPORTED),
        ("999", VersionVerdict.SUPPORTED),
        (" 0.3.0 ", VersionVerdict.SUPPORTED),
        ("0.2.9", VersionVerdict.TOO_OLD),
        ("0.2.5.1", VersionVerdict.TOO_OLD),
        ("0.2.9.post5", VersionVerdict.TOO_OLD),
        ("garbage", VersionVerdict.UNPARSABLE),
        ("", VersionVerdict.UNPARSABLE),
        (None, VersionVerdict.MISSING),
    ],
)
def test_verdict_against_default_requirement(version: str | None, verdict: VersionVerdict) -> None:
    cap = assess(version, "0.3.0")
    assert cap.verdict is verdict
    assert cap.supports_websocket is (verdict is VersionVerdict.SUPPORTED)
    assert cap.version == version
    assert cap.required == "0.3.0"


def test_source_says_detected_declared_or_not_installed() -> None:
    assert assess("0.3.0", "0.3.0") == Capability(
        "0.3.0", "detected", "0.3.0", VersionVerdict.SUPPORTED
    )
    assert assess("0.2.0", "0.3.0", declared=True) == Capability(
        "0.2.0", "declared", "0.3.0", VersionVerdict.TOO_OLD
    )
    assert assess(None, "0.3.0") == Capability(
        None, "not installed", "0.3.0", VersionVerdict.MISSING
    )


@pytest.mark.parametrize(
    ("version", "required", "supported"),
    [
        ("0.4.0", "0.5", False),
        ("0.5", "0.5.0", True),
        ("0.5.0rc1", "0.5", True),
        ("0.4.9.post3", "0.5", False),
        # The requirement is compared on its base version too.
        ("0.3.0", "0.3.0rc1", True),
        ("0.2.9", "0.3.0.dev0", False),
        ("1.0", "0.3.0", True),
    ],
)
def test_custom_required_version(version: str, required: str, supported: bool) -> None:
    assert assess(version, required).supports_websocket is supported


def test_detects_the_installed_version_through_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_version(name: str) -> str:
        asked.append(name)
        return "0.3.0.dev1+g1234567"

    monkeypatch.setattr(capability.metadata, "version", fake_version)
    assert detect_server_version() == "0.3.0.dev1+g1234567"
    assert asked == [SERVER_PACKAGE] == ["cads-mars-server"]
    # Looked up, never imported.
    assert not any(name.startswith("cads_mars_server") for name in sys.modules)


def test_not_installed_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise capability.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(capability.metadata, "version", missing)
    assert detect_server_version() is None
    assert assess(detect_server_version(), "0.3.0").verdict is VersionVerdict.MISSING


def test_really_absent_package_is_none() -> None:
    assert detect_server_version("marsconn-test-no-such-distribution") is None
