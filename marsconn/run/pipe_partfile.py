"""The hidden temporary file a pipe job's output goes to, until it replaces the target."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.errors import TargetError

__all__ = ["temp_path_pattern"]

# Most pieces one writev takes (POSIX guarantees at least 16; Linux has 1024).
_IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16))


_writev = getattr(os, "writev", None)  # absent on Windows


class _SyncThreads:
    """Worker threads for fsync, kept for the process's life.

    The event loop's default executor would do, but ``asyncio.run`` (each
    synchronous ``execute``) makes a new one, starts a thread for the one
    fsync and joins it when the loop ends: about a millisecond of CPU per
    job, a fifth of a small job's cost. The pool is forgotten in a forked
    child, whose copy has no threads.
    """

    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def pool(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                workers = min(32, (os.cpu_count() or 1) + 4)  # as the default executor
                cls._pool = ThreadPoolExecutor(workers, thread_name_prefix="marsconn-fsync")
            return cls._pool

    @classmethod
    def forget(cls) -> None:
        cls._lock = threading.Lock()
        cls._pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SyncThreads.forget)


def temp_path_pattern(target: Path) -> re.Pattern[str]:
    """Matches the names of the temporary files made for ``target``."""
    return re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]+\.part")


class _PartFile:
    """The hidden temporary file beside the target that collects the output."""

    def __init__(self, target: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            path = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
            try:
                # 0o666 and the umask give the file the mode a plain open() would.
                self.fd = os.open(path, flags, 0o666)
            except FileExistsError:
                continue
            break
        self.path = path
        self.size = 0
        self.open = True

    def write(self, pieces: list[bytes | bytearray | memoryview], total: int = -1) -> None:
        """Append ``pieces`` in one system call where possible.

        A read holds several chunks (and a chunk usually straddles two
        reads), so a read yields several data pieces; one ``writev`` for
        all of them costs measurably less than a ``write`` each. ``total``,
        when the caller knows it, is the pieces' length in bytes.
        """
        try:
            if _writev is None:
                self._finish_partial(pieces, 0)
                return
            if len(pieces) <= _IOV_MAX:
                written = _writev(self.fd, pieces)
                self.size += written
                if written < (total if total >= 0 else sum(map(len, pieces))):
                    self._finish_partial(pieces, written)
                return
            for start in range(0, len(pieces), _IOV_MAX):
                batch = pieces[start : start + _IOV_MAX]
                written = _writev(self.fd, batch)
                self.size += written
                if written < sum(map(len, batch)):
                    self._finish_partial(batch, written)
        except OSError as exc:
            raise TargetError(f"cannot write the output to {self.path}: {exc}") from exc

    def _finish_partial(self, batch: list[bytes | bytearray | memoryview], done: int) -> None:
        # Write what is left after the first ``done`` bytes, piece by piece.
        # Regular files write short only on a full disk or a signal; the
        # retry then finishes the job or raises the error.
        for piece in batch:
            view = memoryview(piece)
            if done >= len(view):
                done -= len(view)
                continue
            view = view[done:]
            done = 0
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.size += written

    def truncate(self, offset: int) -> None:
        if offset == self.size:
            return
        try:
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise TargetError(f"cannot truncate {self.path}: {exc}") from exc
        self.size = offset

    async def commit(self, target: Path) -> None:
        """fsync, then atomically rename onto ``target``."""
        loop = asyncio.get_running_loop()
        # fsync of a large file can take seconds: keep the event loop free.
        sync = loop.run_in_executor(_SyncThreads.pool(), os.fsync, self.fd)
        try:
            await asyncio.shield(sync)
        except asyncio.CancelledError:
            # The fd must not be closed under the thread still using it.
            with contextlib.suppress(Exception):
                await sync
            raise
        _keep_mode(self.fd, target)
        self.close()
        os.replace(self.path, target)
        _fsync_dir(target.parent)

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _keep_mode(fd: int, target: Path) -> None:
    """Give the new file an existing target's permission bits; refuse to replace a special file.

    The rename replaces whatever is at ``target``: a device such as ``/dev/null`` (which
    root may replace) or a FIFO that appeared there since the pre-flight checks is left alone.
    """
    try:
        old = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISREG(old.st_mode):
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
    elif not stat.S_ISLNK(old.st_mode):
        raise TargetError(
            f"{target} is not a regular file (a device, FIFO, socket or directory); "
            "it is left as it is and the output discarded"
        )


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not every platform or filesystem allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
