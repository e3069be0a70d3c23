"""Reading configuration files that may be hostile or simply wrong.

Every file a setting names (server lists, the YAML file, a dotenv file, the
CA bundle) is opened the same way: without blocking, and used only if it is
a regular file no larger than a limit, so that a FIFO cannot hang the
caller and ``/dev/zero`` cannot exhaust its memory. YAML is composed with
bounds on nesting depth and on the size the document has once its aliases
are expanded, so neither a deeply nested file nor an alias bomb can raise
``RecursionError`` or ``MemoryError``; both become ordinary YAML errors with
a line number.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "FileProblem",
    "check_regular_file",
    "load_yaml",
    "read_regular_file",
]

#: Largest server-list, YAML or dotenv file read (a deployment's are a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024
#: Deepest nesting of YAML collections accepted.
MAX_YAML_DEPTH = 32
#: Most YAML nodes a document may have once every alias is expanded.
MAX_YAML_NODES = 20_000

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once instead of waiting for a writer
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class FileProblem(Exception):
    """A file that exists but cannot be used; the message is the reason, e.g. "a directory,
    not a regular file", to follow "cannot be read: "."""


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"  # pragma: no cover - Linux has no other file types


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An fd of ``path`` and its stat, if it is a regular file; FileNotFoundError if absent."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileProblem(exc.strerror or str(exc)) from None
    except ValueError:
        raise FileProblem("the path contains a NUL character") from None
    try:
        info = os.fstat(fd)
    except OSError as exc:  # pragma: no cover - fstat of an open fd does not fail
        os.close(fd)
        raise FileProblem(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(info.st_mode) and not _is_null_device(info):
        os.close(fd)
        raise FileProblem(f"{_kind(info.st_mode)}, not a regular file")
    return fd, info


def _is_null_device(info: os.stat_result) -> bool:
    """``/dev/null``: reads as an empty file (``MARS_CONFIG_FILE=/dev/null`` disables one)."""
    if not stat.S_ISCHR(info.st_mode):
        return False
    try:
        null = os.stat(os.devnull)
    except OSError:  # pragma: no cover - every POSIX system has one
        return False
    return stat.S_ISCHR(null.st_mode) and info.st_rdev == null.st_rdev


def read_regular_file(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Raises FileNotFoundError when it does not exist and :class:`FileProblem`
    when it is not a regular file (a directory, FIFO, device, socket), is
    larger than ``limit``, or cannot be read.
    """
    fd, info = _open_regular(path)
    try:
        if info.st_size > limit:
            raise FileProblem(f"{info.st_size} bytes, more than the {limit} accepted")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, limit + 1 - size)
            except OSError as exc:
                raise FileProblem(exc.strerror or str(exc)) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # grew while being read
                raise FileProblem(f"more than the {limit} bytes accepted")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular_file(path: Path) -> None:
    """Check that ``path`` is a regular file this process can open for reading.

    Raises FileNotFoundError or :class:`FileProblem` as :func:`read_regular_file`.
    """
    fd, _ = _open_regular(path)
    os.close(fd)


def _bounded_loader() -> type[yaml.SafeLoader]:
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader whose composer refuses deep nesting, alias bombs and recursive aliases."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            # Per collection being composed: the expanded node count of its children so far.
            self._open: list[int] = []
            self._weight: dict[int, int] = {}  # id(node) -> expanded node count, once complete

        def _refuse(self, problem: str) -> None:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)

        def _add(self, weight: int) -> None:
            if self._open:
                self._open[-1] += weight
            if sum(self._open) + len(self._open) + (0 if self._open else weight) > MAX_YAML_NODES:
                self._refuse(
                    f"more than {MAX_YAML_NODES} values once aliases are expanded (an alias bomb?)"
                )

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor  # type: ignore[no-untyped-call]
                node = self.anchors.get(anchor)
                if node is not None:  # else the composer reports the undefined alias
                    weight = self._weight.get(id(node))
                    if weight is None:
                        self._refuse(f"alias *{anchor} refers to a collection that contains it")
                    self._add(weight or 1)
                return super().compose_node(parent, index)
            if len(self._open) >= MAX_YAML_DEPTH:
                self._refuse(f"collections nested more than {MAX_YAML_DEPTH} levels deep")
            self._open.append(0)
            try:
                node = super().compose_node(parent, index)
            finally:
                inner = self._open.pop()
            weight = 1 + inner
            self._weight[id(node)] = weight
            self._add(weight)
            return node

    return BoundedLoader


_LOADER: type[yaml.SafeLoader] | None = None


def load_yaml(text: str) -> tuple[Any, Any]:
    """``(node, data)`` of one YAML document, composed within the bounds above.

    ``node`` is the root node (None for an empty document), for line
    numbers. Raises ``yaml.YAMLError`` (with a mark when there is one) for
    invalid YAML and for a document beyond the bounds.
    """
    global _LOADER
    if _LOADER is None:
        _LOADER = _bounded_loader()
    loader = _LOADER(text)  # checks every character up front
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data
