"""A scripted stand-in for MARS, shared by the in-process test servers.

A :class:`MarsScript` says what "MARS" does for one job: which log lines it
prints and how fast, how many bytes of data it produces, how it ends, and
which faults the server around it should show. The WebSocket server and the
pipe server both read the same script, each using the fields that make sense
for its protocol.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MarsScript", "ScriptSource", "data_block", "expected_data", "iter_data"]

_BLOCK_SIZE = 64 * 1024


@functools.lru_cache(maxsize=16)
def data_block(seed: int = 0) -> bytes:
    """A 64 KiB block of deterministic bytes; data is this block repeated.

    Every byte depends on its position and the seed, so a test that compares
    a target file with :func:`expected_data` notices a lost, repeated or
    reordered stretch.
    """
    return bytes(((i * 31 + (i >> 8) * 7 + seed) & 0xFF) for i in range(_BLOCK_SIZE))


def iter_data(size: int, seed: int = 0, chunk_size: int = _BLOCK_SIZE) -> Iterator[bytes]:
    """Yield ``size`` bytes of the deterministic stream in pieces of ``chunk_size``."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    block = data_block(seed)
    offset = 0
    while offset < size:
        n = min(chunk_size, size - offset)
        start = offset % _BLOCK_SIZE
        piece = bytearray()
        while len(piece) < n:
            take = min(n - len(piece), _BLOCK_SIZE - start)
            piece += block[start : start + take]
            start = 0
        yield bytes(piece)
        offset += n


def expected_data(size: int, seed: int = 0) -> bytes:
    """All ``size`` bytes that a script with ``output_size=size`` produces."""
    return b"".join(iter_data(size, seed))


@dataclass(frozen=True)
class MarsScript:
    """What the stand-in MARS does for one job.

    Fields common to both servers:

    ``log_lines``
        Lines MARS prints, in order.
    ``line_delay``
        Seconds between two log lines.
    ``run_time``
        Seconds the job keeps running after its last log line (heartbeats
        keep flowing on the WebSocket server).
    ``output_size``
        Bytes of data produced when the job succeeds.
    ``seed``
        Seed of the deterministic data (see :func:`expected_data`).
    ``returncode``
        MARS's exit code; non-zero means MARS rejected the request.
    ``die_after_lines``
        The server drops the connection abruptly (no close frame, no final
        chunk) after this many log lines (WebSocket) or after
        ``die_after_bytes`` data bytes (pipe).

    WebSocket server only:

    ``send_heartbeats``
        When false the job goes silent: no heartbeat while it runs.
    ``start_delay``
        Seconds between receiving ``start`` and answering ``started``.
    ``file_delay``
        Seconds after sending ``finished`` before ``data.grib`` appears
        (the real server fsyncs only after replying).
    ``write_file``
        When false a successful job writes no file at all. (On the pipe
        server too: MARS exits 0 having written nothing, so the server sends
        no answer and closes the connection.)
    ``invalid_json``
        Answer ``start`` with a text message that is not JSON (a broken or
        foreign server) instead of ``started``, then wait for the client.
    ``after_lines``
        Lines sent after ``finished`` (MARS's last output can still be on
        its way when the real server reports the end).

    Pipe server only:

    ``http_status``
        Fail before any data with this HTTP status (400 = MARS exited,
        500 = killed, or any other status a proxy might answer).
    ``retry_same_host`` / ``retry_next_host``
        Values of the ``X-MARS-RETRY-SAME-HOST`` / ``X-MARS-RETRY-NEXT-HOST``
        headers (omitted when None).
    ``rewind_after``
        After this many data bytes send ``RWND`` and then the whole data again.
    ``error_after``
        After this many data bytes send ``EROR`` followed by ``error_payload``.
    ``error_payload``
        The JSON object sent after ``EROR``.
    ``die_after_bytes``
        Drop the connection after this many data bytes.
    ``omit_endr``
        End the chunked body cleanly but without the ``ENDR`` marker.
    ``chunk_size``
        Size of the data chunks in the chunked body.
    """

    log_lines: Sequence[str] = ("mars - INFO - retrieving", "mars - INFO - done")
    line_delay: float = 0.0
    run_time: float = 0.0
    output_size: int = 1024
    seed: int = 0
    returncode: int = 0
    die_after_lines: int | None = None
    # WebSocket server
    send_heartbeats: bool = True
    start_delay: float = 0.0
    file_delay: float = 0.0
    write_file: bool = True
    invalid_json: bool = False
    after_lines: Sequence[str] = ()
    # Pipe server
    http_status: int | None = None
    retry_same_host: bool | None = None
    retry_next_host: bool | None = None
    rewind_after: int | None = None
    error_after: int | None = None
    error_payload: Mapping[str, Any] = field(default_factory=lambda: {"exited": 1})
    die_after_bytes: int | None = None
    omit_endr: bool = False
    chunk_size: int = _BLOCK_SIZE

    def data(self) -> Iterator[bytes]:
        """The successful output, in ``chunk_size`` pieces."""
        return iter_data(self.output_size, self.seed, self.chunk_size)

    def log_text(self) -> str:
        """MARS's log as the pipe server serves it on ``GET /<uid>``."""
        return "".join(line + "\n" for line in self.log_lines)


#: A script, or a function choosing one from the job's requests.
ScriptSource = MarsScript | Callable[[list[dict[str, Any]]], MarsScript]


def pick_script(source: ScriptSource, requests: list[dict[str, Any]]) -> MarsScript:
    """The script for a job: ``source`` itself, or what it returns for ``requests``."""
    if isinstance(source, MarsScript):
        return source
    return source(requests)
