"""A stand-in for the ``mars`` program, for running the real proxy servers in tests.

The test fixtures install this file as an executable called ``mars`` (see
``conftest.py``). It reads the request text the way the servers hand it over
and behaves as the request's ``fake*`` keys say:

- WebSocket server: ``mars <dir>/<request_id>.mars 2>&1`` -- the request is in
  the file named by the first argument (the second argument is a literal
  ``2>&1``), output goes to a pty, data goes to the file named by ``TARGET``.
- Pipe server: ``mars`` with the request on stdin, output going to the
  server's log file, and ``TARGET='&<fd>'``: data goes to that descriptor,
  framed by this program as HTTP chunks (``<hex len>\\r\\n<bytes>\\r\\n``), an
  ``ENDR`` chunk after each request's data, and the terminal ``0\\r\\n\\r\\n``
  after the last one on success.

Keys (case-insensitive; a later ``RETRIEVE`` block starts from the values of
the block before it):

``fakesize`` (1024) bytes of data per block, ``fakeseed`` (0) their seed: the
bytes are ``marsconn.testing.iter_data(size, seed)``. ``fakelines`` (3) log
lines before the data, ``fakelinedelay`` (0) seconds between them,
``fakesleep`` (0) seconds after them, ``fakechunkdelay`` (0) seconds between
64 KiB pieces of data, ``fakeafterlines`` (0) lines printed after the last
block's data. ``fakeexit`` (0): when non-zero, print an error line (and
``fakeerror`` if given), write no data and exit with that code.
``fakefailafter`` (pipe): write that many data bytes, then exit 1.
``fakesignal``: MARS is killed by that signal, before any data, or after
``fakefailafter`` bytes when that is given too.
``fakerewind`` (pipe): after that many bytes send an ``RWND`` chunk and start
the block's data again.
``fakecontrol``: when set, one more log line carrying escape sequences, a
carriage return and a bell, as a hostile or broken MARS might print.

Bookkeeping, so tests can count runs and kill leftovers: the pid is written to
``$MARS_STANDIN_PIDDIR/<pid>`` while running, and one JSON line per event
(``start``, ``end`` with the exit code, ``killed`` with the signal) is
appended to ``$MARS_STANDIN_RUNLOG``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PIECE = 64 * 1024
#: The line ``fakecontrol`` prints.
CONTROL_LINE = "mars - INFO - \x1b[31mred\x1b[0m over\rwritten\x07"


class Run:
    """The bookkeeping of one stand-in process."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pid = os.getpid()
        self.request_id = os.environ.get("MARS_ENVIRON_REQUEST_ID", "")
        piddir = os.environ.get("MARS_STANDIN_PIDDIR")
        self.pidfile = Path(piddir) / str(self.pid) if piddir else None
        runlog = os.environ.get("MARS_STANDIN_RUNLOG")
        self.runlog = Path(runlog) if runlog else None

    def record(self, event: str, **fields: Any) -> None:
        if self.runlog is None:
            return
        entry = {
            "event": event,
            "pid": self.pid,
            "request_id": self.request_id,
            "mode": self.mode,
            "time": time.time(),
            **fields,
        }
        # One short write on an O_APPEND descriptor: lines of concurrent runs never interleave.
        fd = os.open(self.runlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def begin(self, target: str) -> None:
        if self.pidfile is not None:
            self.pidfile.write_text(str(self.pid))
        self.record("start", target=target, cwd=os.getcwd(), argv=sys.argv[1:])

    def forget(self) -> None:
        if self.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()

    def end(self, code: int, **fields: Any) -> None:
        self.record("end", exit=code, **fields)
        self.forget()


def parse(text: str) -> list[dict[str, str]]:
    """The ``RETRIEVE`` blocks of a request text, each as lower-cased key -> value."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.rstrip(",").strip().upper() == "RETRIEVE":
            current = dict(blocks[-1]) if blocks else {}
            blocks.append(current)
            continue
        if current is None:
            current = {}
            blocks.append(current)
        if line.endswith(","):
            line = line[:-1]
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip().lower()] = unquote(value.strip())
    return blocks


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def number(block: dict[str, str], key: str, default: float) -> float:
    value = block.get(key)
    return default if value is None or value == "" else float(value)


def say(text: str) -> None:
    """Print one log line; a vanished reader (the server was killed) never stops MARS."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def data_pieces(size: int, seed: int) -> Iterator[bytes]:
    from marsconn.testing import iter_data

    return iter_data(size, seed, PIECE)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def print_lines(block: dict[str, str]) -> None:
    count = int(number(block, "fakelines", 3))
    delay = number(block, "fakelinedelay", 0)
    for i in range(1, count + 1):
        say(f"mars - INFO - line {i} of {count}")
        if delay and i < count:
            time.sleep(delay)
    if block.get("fakecontrol"):
        say(CONTROL_LINE)


def die(block: dict[str, str]) -> None:
    """Be killed by the block's ``fakesignal``, if it has one."""
    sig = int(number(block, "fakesignal", 0))
    if sig:
        say(f"mars - ERROR - fake kill by signal {sig}")
        os.kill(os.getpid(), sig)
        time.sleep(10)  # the signal ends the process before this does


def rejected(block: dict[str, str]) -> int:
    """Non-zero exit code when this block is a rejection (after saying why)."""
    if not block.get("fakefailafter"):
        die(block)
    code = int(number(block, "fakeexit", 0))
    if code:
        say(f"mars - ERROR - fake failure: exit {code}")
        if block.get("fakeerror"):
            say(f"mars - ERROR - {block['fakeerror']}")
    return code


def run_ws(run: Run, blocks: list[dict[str, str]]) -> int:
    for index, block in enumerate(blocks):
        print_lines(block)
        code = rejected(block)
        if code:
            return code
        time.sleep(number(block, "fakesleep", 0))
        target = block.get("target", "")
        delay = number(block, "fakechunkdelay", 0)
        size = int(number(block, "fakesize", 1024))
        seed = int(number(block, "fakeseed", 0))
        try:
            with open(target, "wb" if index == 0 else "ab") as out:
                for i, piece in enumerate(data_pieces(size, seed)):
                    if i and delay:
                        time.sleep(delay)
                    out.write(piece)
                    out.flush()
        except OSError as exc:
            # As MARS does when its output path is gone: say so and fail.
            say(f"mars - ERROR - cannot write {target}: {exc}")
            return 1
    return 0


def run_pipe(run: Run, blocks: list[dict[str, str]]) -> int:
    for block in blocks:
        print_lines(block)
        code = rejected(block)
        if code:
            return code
        time.sleep(number(block, "fakesleep", 0))
        fd = int(block.get("target", "").lstrip("&"))
        delay = number(block, "fakechunkdelay", 0)
        size = int(number(block, "fakesize", 1024))
        seed = int(number(block, "fakeseed", 0))
        fail_after = block.get("fakefailafter")
        rewind_after = block.get("fakerewind")
        limit = int(fail_after) if fail_after else None
        rewind = int(rewind_after) if rewind_after else None
        if rewind is not None:
            # The first go, cut short by the rewind.
            sent = 0
            for piece in data_pieces(min(rewind, size), seed):
                write_all(fd, chunk(piece))
                sent += len(piece)
            say(f"mars - WARNING - rewinding after {sent} bytes")
            write_all(fd, chunk(b"RWND"))
        sent = 0
        for i, piece in enumerate(data_pieces(size, seed)):
            if i and delay:
                time.sleep(delay)
            if limit is not None and sent + len(piece) >= limit:
                if limit > sent:
                    write_all(fd, chunk(piece[: limit - sent]))
                die(block)
                say(f"mars - ERROR - fake failure after {limit} bytes")
                return 1
            write_all(fd, chunk(piece))
            sent += len(piece)
        write_all(fd, chunk(b"ENDR"))
    write_all(fd, b"0\r\n\r\n")
    return 0


def main() -> int:
    mode = "ws" if len(sys.argv) > 1 else "pipe"
    run = Run(mode)

    def on_signal(signum: int, frame: Any) -> None:
        run.record("killed", signal=signum)
        run.forget()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    text = Path(sys.argv[1]).read_text() if mode == "ws" else sys.stdin.read()
    blocks = parse(text)
    run.begin(blocks[0].get("target", "") if blocks else "")
    if not blocks:
        say("mars - ERROR - no RETRIEVE in the request")
        run.end(2)
        return 2
    try:
        code = run_ws(run, blocks) if mode == "ws" else run_pipe(run, blocks)
    except BrokenPipeError:
        say("mars - ERROR - the server stopped reading the data")
        run.end(1, error="broken pipe")
        return 1
    if code == 0:
        count = int(number(blocks[-1], "fakeafterlines", 0))
        for i in range(1, count + 1):
            say(f"mars - INFO - after line {i} of {count}")
    run.end(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
