"""Whether the installed (or declared) cads-mars-server supports WebSocket mode.

The package is looked up with :mod:`importlib.metadata`, never imported:
importing it could start server-side machinery, and only its version matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = ["SERVER_PACKAGE", "Capability", "VersionVerdict", "assess", "detect_server_version"]

SERVER_PACKAGE = "cads-mars-server"


class VersionVerdict(StrEnum):
    """How a server version compares with the required one."""

    SUPPORTED = "supported"
    MISSING = "missing"
    TOO_OLD = "too_old"
    UNPARSABLE = "unparsable"


@dataclass(frozen=True, slots=True)
class Capability:
    """The server version that was found or declared, and the verdict on it."""

    version: str | None
    source: str  # "detected", "declared" or "not installed"
    required: str
    verdict: VersionVerdict

    @property
    def supports_websocket(self) -> bool:
        """True when the version is at least the required one."""
        return self.verdict is VersionVerdict.SUPPORTED


def detect_server_version(package: str = SERVER_PACKAGE) -> str | None:
    """The installed version of ``package``, or None when it is not installed."""
    from importlib import metadata  # deferred: importing it costs ~20 ms at start-up

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def assess(version: str | None, required: str, *, declared: bool = False) -> Capability:
    """Judge ``version`` against ``required`` on base versions.

    Base versions drop pre-, post-, dev- and local parts, so ``0.3.0rc1``,
    ``0.3.0.dev1+g1234567`` and ``0.3.0.post2`` all count as 0.3.0.
    """
    source = "declared" if declared else ("detected" if version is not None else "not installed")
    if version is None:
        return Capability(None, source, required, VersionVerdict.MISSING)
    try:
        have = Version(version.strip())
    except InvalidVersion:
        return Capability(version, source, required, VersionVerdict.UNPARSABLE)
    need = Version(required)
    ok = Version(have.base_version) >= Version(need.base_version)
    return Capability(
        version, source, required, VersionVerdict.SUPPORTED if ok else VersionVerdict.TOO_OLD
    )


def __getattr__(name: str) -> Any:
    # ``capability.metadata`` stays reachable (tests patch it) without paying
    # for the import when the module is loaded.
    if name == "metadata":
        from importlib import metadata

        return metadata
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
