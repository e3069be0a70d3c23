"""What a retrieval's inputs must be before any server is contacted.

Both servers turn the request into MARS's request language one ``key=value,``
line at a time (the WebSocket server in a request file, the pipe server on
MARS's standard input), and the environ into ``MARS_ENVIRON_<KEY>``
environment variables. A newline, carriage return, NUL or other control
character in a key or a value would end a line early and let the rest of
the value add MARS keywords of its own (a different ``fakesize``, another
``target``); an ``=`` or ``,`` in a key splits it the same way. Such inputs
are refused here, naming the key, before any connection. So are values
JSON cannot carry (the servers receive JSON) and targets that cannot be an
output file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import PreflightError

__all__ = ["check_environ", "check_requests", "check_target"]

# C0 controls but tab, DEL, C1 controls (NEL among them) and the Unicode line and paragraph
# separators: none can sit inside one line of MARS's request language or an environment line.
_BAD_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# In a key, also tab and the request language's own separators.
_BAD_IN_KEY = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029=,]")
_ACCEPTED_VALUE = (
    "text without control characters (newline, carriage return, NUL, escape, ...; a tab is "
    "allowed), numbers, None, or lists of them"
)
_ACCEPTED_KEY = "a name without control characters, '=' or ','"
_SHOWN = 60


def _shown(text: str) -> str:
    """``text`` as it may appear in an error: escaped, and cut."""
    cut = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    return repr(cut)


def _char(match: re.Match[str]) -> str:
    char = match.group()
    names = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL", "\x1b": "an escape"}
    return names.get(char, f"the control character U+{ord(char):04X}")


def _json_problem(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise PreflightError(
            f"{what} cannot be sent to the servers as JSON: {reason}. Accepted: "
            "dicts with str keys, and str, int, float, bool, None or lists of them as values"
        ) from None


def _check_value(value: Any, where: str) -> None:
    # Iterative: a deeply nested list must not exhaust the stack here.
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            bad = _BAD_IN_VALUE.search(item)
            if bad is not None:
                raise PreflightError(
                    f"{at} holds {_char(bad)} ({_shown(item)}): the servers write it into a "
                    "line of MARS's request or environment, which it would end early, letting "
                    f"the rest add MARS keywords. Accepted: {_ACCEPTED_VALUE}"
                )
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, Mapping):
            for k, v in item.items():
                _check_key(k, f"{at} key")
                stack.append((v, f"{at}[{k!r}]"))


def _check_key(key: Any, where: str) -> None:
    text = str(key)
    bad = _BAD_IN_KEY.search(text)
    if bad is not None:
        what = _char(bad) if bad.group() not in "=," else repr(bad.group())
        raise PreflightError(
            f"{where} {_shown(text)} holds {what}: the servers write each key as the start of "
            f"a 'key=value,' line of MARS's request or environment. Accepted: {_ACCEPTED_KEY}"
        )


def check_requests(requests: list[dict[str, Any]]) -> None:
    """Raise :class:`PreflightError` for a request the servers cannot pass on to MARS intact."""
    _json_problem(requests, "requests")
    for index, request in enumerate(requests):
        for key, value in request.items():
            _check_key(key, f"requests[{index}] key")
            _check_value(value, f"requests[{index}][{str(key)!r}]")


def check_environ(environ: Mapping[str, Any]) -> None:
    """Raise :class:`PreflightError` for an environ the servers cannot turn into variables."""
    _json_problem(dict(environ), "environ")
    for key, value in environ.items():
        _check_key(key, "environ key")
        _check_value(value, f"environ[{str(key)!r}]")


def check_target(path: Path) -> None:
    """Raise :class:`PreflightError` for a target path that cannot name an output file.

    A path with a NUL, one the filesystem encoding cannot represent, and an
    existing special file (a device such as ``/dev/null``, a FIFO, a
    socket) are refused: the output replaces the target by a rename, which
    would turn ``/dev/null`` into a regular file. Directories are left to
    the caller's own message.
    """
    text = str(path)
    if "\x00" in text:
        raise PreflightError(
            f"target {_shown(text)} contains a NUL character; give the output file's path"
        )
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise PreflightError(
            f"target {_shown(text)} cannot be represented in the filesystem's encoding"
        ) from None
    try:
        info = os.stat(path)
    except OSError:
        return  # absent (the usual case), or the directory checks will say why
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
        raise PreflightError(
            f"target {text!r} exists and is not a regular file (a device, FIFO or socket); "
            "the output replaces the target, which would destroy it. Accepted: the path of "
            "a new or regular file"
        )
