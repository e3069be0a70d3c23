"""Server-list files and inline server lists, read into entries with provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import Problem
from .configfiles import FileProblem, read_regular_file
from .provenance import Provenance, SourceKind

__all__ = ["DEFAULT_LIST_FILES", "ListedServer", "read_list_file", "split_inline_list"]

#: Looked up in this order when no list is configured; the first that exists is used.
DEFAULT_LIST_FILES: tuple[str, ...] = (
    "/etc/mars/mars-api-server-legacy.list",
    "/etc/mars/mars-api-server.list",
)


@dataclass(frozen=True, slots=True)
class ListedServer:
    """One server as written somewhere, not yet parsed, with where it was written."""

    text: str
    provenance: Provenance


def _strip_comment(line: str) -> str:
    # A '#' starts a comment at the start of a line or after white space;
    # elsewhere it is part of the text (and URL parsing rejects fragments).
    if "#" not in line:
        return line
    for i, ch in enumerate(line):
        if ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def read_list_file(path: Path, pointed_by: str) -> tuple[list[ListedServer], list[Problem]]:
    """Read a server-list file: one URL per line.

    Blank lines and ``#`` comments are skipped and whitespace trimmed.
    ``pointed_by`` names the setting that chose this file, for error messages.
    Returns the entries and, instead of raising, the problems found.
    """
    try:
        # A regular file of bounded size only: a FIFO would hang, /dev/zero exhaust memory.
        raw = read_regular_file(path)
    except FileNotFoundError:
        return [], [
            Problem(
                pointed_by,
                f"server-list file {str(path)!r} does not exist",
                accepted="the path of a readable file with one server URL per line",
            )
        ]
    except (OSError, FileProblem) as exc:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        return [], [
            Problem(
                pointed_by,
                f"server-list file {str(path)!r} cannot be read: {reason}",
                accepted="the path of a readable file with one server URL per line",
            )
        ]
    try:
        # utf-8-sig: editors on some platforms start the file with a byte-order mark.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [
            Problem(
                pointed_by,
                f"server-list file {str(path)!r} is not UTF-8 text (byte {exc.start})",
                accepted="a text file with one server URL per line",
            )
        ]
    entries = []
    file = str(path)
    for number, line in enumerate(text.splitlines(), start=1):
        item = _strip_comment(line).strip()
        if item:
            entries.append(
                ListedServer(item, Provenance(SourceKind.LIST_FILE, "server", file, number))
            )
    return entries, []


def split_inline_list(
    value: str | Sequence[str], provenance: Provenance
) -> tuple[list[ListedServer], list[Problem]]:
    """Entries of an inline list: a comma-separated string or a sequence of strings.

    Empty items (stray commas) are skipped. Each entry's provenance names its
    position, e.g. ``MARS_WS_SERVERS[2]``.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    entries: list[ListedServer] = []
    problems: list[Problem] = []
    index = 0
    for item in items:
        if not isinstance(item, str):
            problems.append(
                Problem(
                    provenance.describe(),
                    f"list item {index} is a {type(item).__name__}, not a string",
                    value=repr(item),
                    accepted="server URLs as strings",
                )
            )
            index += 1
            continue
        if not item.strip():
            continue
        where = Provenance(
            provenance.kind, f"{provenance.name}[{index}]", provenance.file, provenance.line
        )
        entries.append(ListedServer(item.strip(), where))
        index += 1
    return entries, problems
