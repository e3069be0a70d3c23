"""Every error marsconn raises or reports, in one place.

Each message says what was wrong, where it came from and what would be
accepted, so that an operator can fix the deployment from the message alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

__all__ = [
    "ConfigError",
    "ErrorKind",
    "JobKilledError",
    "LogHandlerError",
    "MarsRequestError",
    "MarsconnError",
    "NoDataError",
    "NoServerAvailableError",
    "PreflightError",
    "Problem",
    "TargetError",
    "TransferError",
]


class ErrorKind(StrEnum):
    """Which of three kinds a failed retrieval is, for code that maps errors onto its own.

    The cads-adaptors MARS adaptor raises one exception per kind:
    ``RUNTIME`` -> ``MarsRuntimeError``, ``NO_DATA`` -> ``MarsNoDataError``,
    ``SYSTEM`` -> ``MarsSystemError``. Every :class:`MarsconnError` subclass
    has a ``kind``; :attr:`marsconn.Result.error_kind` gives the kind of a
    retrieval's error.
    """

    #: MARS rejected the request, a transfer broke, or the job was killed or aborted.
    RUNTIME = "runtime"
    #: MARS succeeded but produced no data.
    NO_DATA = "no_data"
    #: The configuration, the inputs, the local target, or no server could run the job.
    SYSTEM = "system"


class MarsconnError(Exception):
    """Base class of every marsconn error; ``kind`` says which :class:`ErrorKind` it is."""

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME


#: Longest text kept of each part of a :class:`Problem` (where, message, value, accepted).
PROBLEM_PART_LIMIT = 600
#: Most problems a :class:`ConfigError` lists; the rest are counted in one last line.
MAX_PROBLEMS = 50
#: Longest message of a :class:`ConfigError`, whatever was wrong (a hostile value can make
#: a validator's own message large).
ERROR_TEXT_LIMIT = 32 * 1024


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"... [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration.

    ``where`` names the source (environment variable, YAML file and key,
    list file and line, adaptor config key); ``value`` is the offending value
    with secrets already redacted (None when there is no single value);
    ``message`` says what is wrong and ``accepted`` what would be accepted.
    Each part is cut to :data:`PROBLEM_PART_LIMIT` characters.
    """

    where: str
    message: str
    value: str | None = None
    accepted: str | None = None

    def __post_init__(self) -> None:
        for name in ("where", "message", "value", "accepted"):
            text = getattr(self, name)
            if text is not None and len(text) > PROBLEM_PART_LIMIT:
                object.__setattr__(self, name, clip(text, PROBLEM_PART_LIMIT))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.accepted:
            text += f"; accepted: {self.accepted}"
        return text


class ConfigError(MarsconnError, ValueError):
    """The configuration is invalid; ``problems`` lists the problems found.

    At most :data:`MAX_PROBLEMS` are kept (and the message stays under
    :data:`ERROR_TEXT_LIMIT` characters); ``problem_count`` is how many there
    were, and a last problem says how many are not listed.
    """

    kind: ClassVar[ErrorKind] = ErrorKind.SYSTEM

    def __init__(self, problems: Iterable[Problem]) -> None:
        found = list(problems)
        self.problem_count = count = len(found)
        kept: list[Problem] = []
        size = 0
        for problem in found[:MAX_PROBLEMS]:
            size += len(str(problem)) + 5
            if size > ERROR_TEXT_LIMIT - 200:
                break
            kept.append(problem)
        if len(kept) < count:
            rest = count - len(kept)
            kept.append(
                Problem(
                    "configuration",
                    f"{rest} more problem{'s' * (rest != 1)} not listed; fix the ones above first",
                )
            )
        self.problems: tuple[Problem, ...] = tuple(kept)
        head = f"invalid MARS connection configuration ({count} problem{'s' * (count != 1)})"
        super().__init__("\n".join([head + ":", *(f"  - {p}" for p in self.problems)]))


class PreflightError(MarsconnError, ValueError):
    """A retrieval was refused before any connection: its inputs are unusable."""

    kind: ClassVar[ErrorKind] = ErrorKind.SYSTEM


class MarsRequestError(MarsconnError):
    """MARS itself rejected the request (non-zero exit); no other server is tried.

    ``returncode`` is MARS's exit code (None when the server reported a
    rejection without one).
    """

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME

    def __init__(self, message: str, *, returncode: int | None = None, server: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.server = server


class NoDataError(MarsconnError):
    """MARS ran the request to the end but produced no data.

    Final: another server would run the same request to the same result.
    Its ``error_class`` is ``no_data``.
    """

    kind: ClassVar[ErrorKind] = ErrorKind.NO_DATA


class JobKilledError(MarsconnError):
    """The job was killed (by the server, by a log handler or by cancellation)."""

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME


class NoServerAvailableError(MarsconnError):
    """Every server was tried on every pass and none ran the job to completion."""

    kind: ClassVar[ErrorKind] = ErrorKind.SYSTEM


class TargetError(MarsconnError):
    """The output file cannot be written or replaced, or is not where the job left it."""

    kind: ClassVar[ErrorKind] = ErrorKind.SYSTEM


class TransferError(MarsconnError):
    """The data transfer from a pipe server broke or was malformed."""

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME


class LogHandlerError(MarsconnError):
    """The caller's log handler raised; the job was killed."""

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME
