"""Every error marsconn raises or reports, in one place.

Each message says what was wrong, where it came from and what would be
accepted, so that an operator can fix the deployment from the message alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "JobKilledError",
    "LogHandlerError",
    "MarsRequestError",
    "MarsconnError",
    "NoServerAvailableError",
    "PreflightError",
    "Problem",
    "TargetError",
    "TransferError",
]


class MarsconnError(Exception):
    """Base class of every marsconn error."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration.

    ``where`` names the source (environment variable, YAML file and key,
    list file and line, adaptor config key); ``value`` is the offending value
    with secrets already redacted (None when there is no single value);
    ``message`` says what is wrong and ``accepted`` what would be accepted.
    """

    where: str
    message: str
    value: str | None = None
    accepted: str | None = None

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.accepted:
            text += f"; accepted: {self.accepted}"
        return text


class ConfigError(MarsconnError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        head = f"invalid MARS connection configuration ({count} problem{'s' * (count != 1)})"
        super().__init__("\n".join([head + ":", *(f"  - {p}" for p in self.problems)]))


class PreflightError(MarsconnError, ValueError):
    """A retrieval was refused before any connection: its inputs are unusable."""


class MarsRequestError(MarsconnError):
    """MARS itself rejected the request (non-zero exit); no other server is tried.

    ``returncode`` is MARS's exit code (None when the server reported a
    rejection without one).
    """

    def __init__(self, message: str, *, returncode: int | None = None, server: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.server = server


class JobKilledError(MarsconnError):
    """The job was killed (by the server, by a log handler or by cancellation)."""


class NoServerAvailableError(MarsconnError):
    """Every server was tried on every pass and none ran the job to completion."""


class TargetError(MarsconnError):
    """The job finished but its output file is missing or empty."""


class TransferError(MarsconnError):
    """The data transfer from a pipe server broke or was malformed."""


class LogHandlerError(MarsconnError):
    """The caller's log handler raised; the job was killed."""
