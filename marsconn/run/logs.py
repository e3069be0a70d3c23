"""MARS log lines: filtering, folding, bounded keeping and the caller's handler.

MARS can print millions of lines for one job. ``Result.message`` keeps the
raw lines, whatever the filter shows: the first and the last ones up to the
plan's ``keep_lines``, plus the error lines in between (up to a hard cap),
so memory does not grow with the log.
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.errors import LogHandlerError
from ..core.neutralise import neutralise

if TYPE_CHECKING:
    from ..plan.model import LogPolicy

__all__ = [
    "ERROR_CAP",
    "LineLogger",
    "LogHandler",
    "LogSink",
    "classify_line",
]

#: Error lines kept at most from the dropped middle of a long log.
ERROR_CAP = 10_000

# Checked in this order: a line that mentions an error anywhere is an error,
# even when it starts like an INFO line.
_LEVELS = (
    ("error", re.compile(r"\b(?:ERROR|FATAL|FAILED|Exception|Traceback)\b", re.IGNORECASE)),
    ("warning", re.compile(r"\bWARN(?:ING)?\b", re.IGNORECASE)),
    (
        "info",
        re.compile(
            r"Transferr?ing|Retrieving|Request (?:is|has been) (?:queued|sent|scheduled)"
            r"|Processing|\bin \d+ seconds\b|\d+(?:\.\d+)?%|\d+ (?:bytes|fields?)\b",
            re.IGNORECASE,
        ),
    ),
)

# Every match of _LEVELS contains one of these, lower-cased. Most MARS lines are
# noise that contains none of them; for an ASCII line (where IGNORECASE is
# plain ASCII case folding) a few substring searches prove it, several times
# faster than a failed regex search, which tries every alternative at every
# position. Keep this in step with _LEVELS.
_NEEDLES = (
    "error", "fatal", "failed", "exception", "traceback",  # error
    "warn",  # warning
    "transfer", "retrieving", "request", "processing", "seconds", "%", "bytes", "field",
)  # fmt: skip


def classify_line(line: str) -> str | None:
    """``error``, ``warning`` or ``info`` for a line worth showing; None for noise."""
    if line.isascii():
        lowered = line.lower()
        for needle in _NEEDLES:
            if needle in lowered:
                break
        else:
            return None
    for level, pattern in _LEVELS:
        if pattern.search(line):
            return level
    return None


class LineLogger(Protocol):
    """A stdlib logger, a structlog logger, or an adaptor context."""

    def info(self, msg: str, /) -> Any: ...

    def warning(self, msg: str, /) -> Any: ...

    def error(self, msg: str, /) -> Any: ...


#: ``handler(line, job, logger) -> shown line or None``, sync or async.
LogHandler = Callable[[str, Any, Any], "str | Awaitable[str | None] | None"]


class LogSink:
    """Receives a job's raw log lines: keeps them for ``Result.message`` and shows them.

    Keeping and showing are separate. Every raw line is kept (``text``),
    whatever the filter or the handler decide: at most ``keep_lines`` of
    them, the first half and the last half of the log; when the log is
    longer, the lines in between are dropped, except error lines (up to
    :data:`ERROR_CAP`), and one line in ``text`` says how many were dropped
    (also counted in ``dropped``). Showing (to the handler and the logger)
    applies the filter and folds repeated lines.
    """

    def __init__(
        self,
        policy: LogPolicy,
        handler: LogHandler | None = None,
        logger: LineLogger | None = None,
        job: Any = None,
    ) -> None:
        self._filter = policy.filter
        self._handler = handler
        self._logger = logger
        self.job = job
        self._limit = max(0, policy.keep_lines)
        self._head_cap = self._limit // 2
        self._tail_cap = self._limit - self._head_cap
        self._head: list[str] = []
        self._tail: deque[tuple[str, bool]] = deque()
        self._middle_errors: list[str] = []
        self._last: str | None = None
        self._repeats = 0
        self.lines_seen = 0
        self.dropped = 0

    def _keep(self, line: str, error: bool) -> None:
        if len(self._head) < self._head_cap:
            self._head.append(line)
            return
        tail = self._tail
        tail.append((line, error))
        if len(tail) > self._tail_cap:
            old, old_error = tail.popleft()
            if old_error and len(self._middle_errors) < ERROR_CAP:
                self._middle_errors.append(old)
            else:
                self.dropped += 1

    def _show(self, line: str, level: str) -> None:
        if self._logger is not None:
            getattr(self._logger, level)(line)

    def _flush_repeats(self) -> None:
        if self._repeats:
            self._show(f"(previous line repeated {self._repeats} more times)", "info")
            self._repeats = 0

    async def line(self, raw: str) -> None:
        """Process one raw line from MARS."""
        self.lines_seen += 1
        line = raw.rstrip("\r\n")
        level = classify_line(line)
        # Kept raw, neutralised in ``text``: the check costs a scan of the line, and most
        # lines are noise that nothing else ever sees.
        self._keep(line, level == "error")
        if self._handler is not None:
            line = neutralise(line)
            try:
                shown = self._handler(line, self.job, self._logger)
                if inspect.isawaitable(shown):
                    shown = await shown
            except Exception as exc:
                raise LogHandlerError(f"log handler raised {type(exc).__name__}: {exc}") from exc
            if shown is None:
                return
            line = str(shown)
            level = classify_line(line) or "info"
        elif level is None and self._filter:
            return
        else:
            level = level or "info"
            line = neutralise(line)
        if line == self._last and self._filter:
            self._repeats += 1
            return
        self._flush_repeats()
        self._last = line
        self._show(line, level)

    def close(self) -> None:
        """Show a pending 'repeated N times' note."""
        self._flush_repeats()

    @property
    def text(self) -> str:
        """The kept raw lines in arrival order, with a note where lines were dropped.

        Every line is neutralised (see :func:`neutralise`): one server line, one line here.
        """
        lines = [neutralise(line) for line in self._head]
        if self.dropped:
            count, errors = self.dropped, len(self._middle_errors)
            note = (
                f"[marsconn: {count} log line{'s' * (count != 1)} dropped here "
                f"(more than log_keep_lines={self._limit} lines)"
            )
            if errors:
                note += f"; the {errors} error line{'s' * (errors != 1)} of that part follow"
            lines.append(note + "]")
        lines.extend(neutralise(line) for line in self._middle_errors)
        lines.extend(neutralise(line) for line, _ in self._tail)
        return "\n".join(lines)
