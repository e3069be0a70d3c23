"""A private directory per WebSocket attempt, beside the caller's target.

The shares server writes MARS's output as ``data.grib`` (and its request
file as ``<request_id>.mars``) in the directory of the target it is sent,
and deletes the target path it was sent when a job is killed or its client
disconnects abnormally, whenever it gets round to it. Sending the caller's
own target (or a directory anything else uses) therefore lets a late,
resumed or orphaned server delete or overwrite data that another attempt,
or another job, delivered.

So every attempt gets a fresh directory of its own beside the target (same
filesystem: the final move is an atomic rename), and the server is sent a
path inside it. On success the output is renamed onto the target; in every
case the directory is then removed. Whatever the server does to that path
later can reach neither the target nor another job: the directory no longer
exists, and a file a straggler still holds open is an unlinked inode.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from pathlib import Path

__all__ = ["DEFAULT_DIR_MODE", "OUTPUT_NAME", "AttemptDir", "attempt_dir_pattern"]

#: The server writes MARS's output under this name in the directory of the target it is sent.
OUTPUT_NAME = "data.grib"

#: Owner rwx; group and others may create and remove entries (the server's user may differ
#: from the client's) but not list them: the random name is the only way in.
DEFAULT_DIR_MODE = 0o733

_PREFIX = ".marsconn-"
_REMOVE_TRIES = 5


def attempt_dir_pattern(target: Path) -> str:
    """A glob matching the attempt directories made for ``target``."""
    return f"{_PREFIX}{target.name}.*"


class AttemptDir:
    """One attempt's private directory; create with :meth:`create`, end with :meth:`remove`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, target: Path, mode: int = DEFAULT_DIR_MODE) -> AttemptDir:
        """Make a new, empty directory beside ``target`` with permissions ``mode``.

        Raises :class:`OSError` when the target's directory does not allow it.
        """
        while True:
            path = target.parent / f"{_PREFIX}{target.name}.{secrets.token_hex(8)}"
            try:
                # 0o700 first: the umask only ever removes bits, chmod then sets exactly `mode`.
                os.mkdir(path, 0o700)
            except FileExistsError:  # pragma: no cover - 64 random bits
                continue
            break
        try:
            os.chmod(path, mode)
        except OSError:
            os.rmdir(path)
            raise
        return cls(path)

    @property
    def output(self) -> Path:
        """Where the server writes MARS's output; also the target path it is sent."""
        return self.path / OUTPUT_NAME

    def output_size(self) -> int:
        """The output's size, or -1 when it does not exist (yet)."""
        try:
            return self.output.stat().st_size
        except FileNotFoundError:
            return -1

    def deliver(self, target: Path) -> int:
        """Rename the output onto ``target`` (atomic) and return its size.

        An existing target keeps its permission bits where the new file allows it.
        """
        size = self.output.stat().st_size
        with contextlib.suppress(OSError):
            old = target.stat()
            if stat.S_ISREG(old.st_mode):
                os.chmod(self.output, stat.S_IMODE(old.st_mode))
        os.replace(self.output, target)
        return size

    def remove(self) -> bool:
        """Delete the directory and whatever a server put in it; True when it is gone.

        A straggling MARS may create a file while the tree is being removed,
        so removal is retried a few times; it can never recreate the
        directory itself.
        """
        for _ in range(_REMOVE_TRIES):
            with contextlib.suppress(OSError):
                shutil.rmtree(self.path)
            if not os.path.lexists(self.path):
                return True
        return False
