"""HTTP/1.1 responses read from a connection's bytes, without sockets.

The pipe (HTTP) protocol is layered over four sans-IO modules that the transport
(:mod:`marsconn.run.pipe_transport`) feeds and that tests drive with plain bytes:

* here, :class:`HttpResponseReader` parses HTTP/1.1 responses from a connection's
  byte stream: the head, then the body as :class:`BodyPiece` events that
  keep chunk boundaries (``chunk_start`` / ``chunk_end``), because in this
  protocol a chunk's extent carries meaning. Pieces are views into the
  bytes fed, never copies, so gigabytes pass without per-byte Python work.
* :mod:`marsconn.wire.pipe_body`: :class:`PipeBodyDecoder` turns the pieces of a
  ``POST /`` answer into ``Data``, ``Rewind``, ``EndOfRequest`` and ``ErrorTrailer``
  events, and rejects malformed bodies with a
  :class:`~marsconn.core.errors.TransferError` that says exactly what was wrong.
* :mod:`marsconn.wire.pipe_stream`: ``PipeStream`` does what those two do for a
  ``POST /`` answer's body in one pass over the received bytes, with the same
  verdicts and messages: the transport's data path, where a 64 KiB chunk costs
  about a microsecond. The pair above stays the readable reference its tests
  compare it with, for any body and any split of its bytes.
* :mod:`marsconn.wire.pipe_verdict`: ``classify_status`` and
  ``classify_error_trailer`` decide what a failure means for failover: same
  server, next server, or final. :mod:`marsconn.wire.pipe_request` encodes jobs.

Why not h11: on a loopback socket, h11 delivered a quarter to a third of what a
plain socket reader manages, because its receive buffer copies every body
byte twice (figures in docs/pipe-mode.md). The reader here hands out slices
of the caller's buffer instead.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..core.errors import TransferError

__all__ = [
    "BodyPiece",
    "Buffer",
    "HttpEvent",
    "HttpResponseReader",
    "ResponseEnd",
    "ResponseHead",
    "Searchable",
    "chunked_eof_error",
    "take_chunk_crlf",
    "take_size_line",
    "take_trailer",
]


# Bounds on what is held in memory for things that are small by nature; a
# peer exceeding them is broken, and buffering without limit would let it
# exhaust memory.
MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_TRAILER = 64 * 1024
# Longest run scanned at once for the end of a chunk-size line: real lines
# are a few bytes, and copying more per chunk would cost on small chunks.
_LINE_WINDOW = 64

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# Lines may end in CRLF or a bare LF (RFC 9112 2.2 lets recipients accept both).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LONE_BREAK = re.compile(rb"\r?\n")

Buffer = bytes | bytearray | memoryview
#: What :class:`PipeStream` decodes from: anything with ``find`` and slicing.
Searchable = bytes | bytearray | mmap.mmap


# --- HTTP responses ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The status line and headers of a response.

    ``headers`` has lower-case names; repeated headers are joined with
    ``", "``. ``chunked`` tells whether the body uses the chunked coding
    (only then do :class:`BodyPiece` events carry chunk boundaries).
    ``keep_alive`` is False when the connection cannot carry another
    request after this response.
    """

    status: int
    reason: str
    headers: Mapping[str, str]
    version: tuple[int, int] = (1, 1)
    chunked: bool = False
    content_length: int | None = None
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class BodyPiece:
    """A piece of a response body.

    ``data`` is a view into the buffer that was fed: valid until the caller
    reuses that buffer, never empty. In a chunked body ``chunk_start`` marks
    the first piece of a chunk and ``chunk_end`` its last; a chunk that
    arrived in one piece has both.
    """

    data: Buffer
    chunk_start: bool = False
    chunk_end: bool = False


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response is complete."""


HttpEvent = ResponseHead | BodyPiece | ResponseEnd


class _State(Enum):
    IDLE = "idle"  # no request outstanding
    HEAD = "head"
    LENGTH = "length"  # Content-Length body
    UNTIL_CLOSE = "until_close"  # body delimited by the connection closing
    CHUNK_LINE = "chunk_line"
    CHUNK_DATA = "chunk_data"
    CHUNK_CRLF = "chunk_crlf"
    TRAILER = "trailer"
    ELSEWHERE = "elsewhere"  # the body is being decoded by a PipeStream
    CLOSED = "closed"


class HttpResponseReader:
    """Parses the responses arriving on one HTTP/1.1 client connection.

    Call :meth:`expect` before each response (with the request's method: a
    ``HEAD`` answer has no body), then :meth:`feed` every byte received and
    :meth:`feed_eof` when the connection closes. Both return the events
    completed so far: one :class:`ResponseHead`, any number of
    :class:`BodyPiece`, one :class:`ResponseEnd`. A peer breaking the
    protocol raises :class:`~marsconn.core.errors.TransferError`.

    Interim (1xx) responses are skipped. Bytes after a complete response
    (pipelining, which this client never does) make the connection
    unusable rather than being parsed as the next answer: see
    :attr:`reusable`.
    """

    def __init__(self) -> None:
        self._state = _State.IDLE
        self._head_only = False
        self._line = bytearray()  # a partial head, chunk-size line or trailer
        self._remaining = 0  # body bytes (Content-Length) or chunk bytes left
        self._chunk_fresh = False  # the next data piece starts a chunk
        self._keep_alive = True
        self._stray = False
        self.body_bytes = 0
        self.response_bytes = 0  # bytes of the current response received so far

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection now."""
        return self._state is _State.IDLE and self._keep_alive and not self._stray

    def expect(self, method: str) -> None:
        """Prepare for the response to a request sent with ``method``."""
        if not self.reusable:
            raise RuntimeError("the connection cannot carry another request")
        self._state = _State.HEAD
        self._head_only = method.upper() == "HEAD"
        self._line.clear()
        self.body_bytes = 0
        self.response_bytes = 0

    def feed_head(self, data: Buffer) -> tuple[list[HttpEvent], int]:
        """Parse ``data`` only as far as the end of the response head.

        Returns the events completed (the :class:`ResponseHead`, followed by
        :class:`ResponseEnd` when the response has no body) and how many
        bytes of ``data`` were consumed; the rest is body for :meth:`feed`
        or, after :meth:`hand_over_body`, for a :class:`PipeStream`.
        """
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        events: list[HttpEvent] = []
        pos, end = 0, len(view)
        while pos < end and self._state is _State.HEAD:
            pos = self._head(view, pos, end, events)
        self.response_bytes += pos
        return events, pos

    def hand_over_body(self) -> None:
        """The chunked body that follows the head is decoded elsewhere (a :class:`PipeStream`).

        The connection is not reusable until :meth:`body_done` says the
        body ended; a body that never ends leaves it unusable.
        """
        if self._state is not _State.CHUNK_LINE or self.body_bytes:
            raise RuntimeError("only a chunked body not yet begun can be handed over")
        self._state = _State.ELSEWHERE

    def body_done(self, *, stray: bool = False) -> None:
        """The handed-over body ended; ``stray``: bytes followed it (see :attr:`reusable`)."""
        if self._state is not _State.ELSEWHERE:
            raise RuntimeError("no body was handed over")
        self._state = _State.IDLE
        self._stray = self._stray or stray

    def feed(self, data: Buffer) -> list[HttpEvent]:
        """Parse ``data``; return the events it completed."""
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.response_bytes += len(view)
        events: list[HttpEvent] = []
        pos, end = 0, len(view)
        while pos < end:
            state = self._state
            if state is _State.CHUNK_DATA:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                last = self._remaining == 0
                events.append(BodyPiece(view[pos : pos + take], self._chunk_fresh, last))
                self._chunk_fresh = False
                self.body_bytes += take
                pos += take
                if last:
                    self._state = _State.CHUNK_CRLF
            elif state is _State.CHUNK_LINE:
                pos = self._chunk_line(view, pos, end, events)
            elif state is _State.CHUNK_CRLF:
                pos = self._chunk_crlf(view, pos, end)
            elif state is _State.LENGTH:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                events.append(BodyPiece(view[pos : pos + take]))
                self.body_bytes += take
                pos += take
                if self._remaining == 0:
                    self._finish(events)
            elif state is _State.UNTIL_CLOSE:
                events.append(BodyPiece(view[pos:end]))
                self.body_bytes += end - pos
                pos = end
            elif state is _State.HEAD:
                pos = self._head(view, pos, end, events)
            elif state is _State.TRAILER:
                pos = self._trailer(view, pos, end, events)
            else:
                # Nothing was asked: whatever the peer sends now cannot be an
                # answer, and the next request must not read it as one.
                self._stray = True
                return events
        return events

    def feed_eof(self) -> list[HttpEvent]:
        """The peer closed the connection; return the final events or raise."""
        state = self._state
        self._state = _State.CLOSED
        self._keep_alive = False
        if state is _State.UNTIL_CLOSE:
            return [ResponseEnd()]
        if state in (_State.IDLE, _State.CLOSED):
            return []
        if state is _State.HEAD:
            got = f" after {len(self._line)} bytes of it" if self._line else ""
            raise TransferError(f"connection closed before the response head was complete{got}")
        if state is _State.LENGTH:
            raise TransferError(
                f"connection closed after {self.body_bytes} of "
                f"{self.body_bytes + self._remaining} body bytes"
            )
        raise chunked_eof_error(
            self._remaining if state is _State.CHUNK_DATA else None, self.body_bytes
        )

    # head

    def _head(self, view: memoryview, pos: int, end: int, events: list[HttpEvent]) -> int:
        # The head is small; copying it to find its end is cheap.
        start = len(self._line)
        self._line += view[pos:end]
        # The blank line may straddle two feeds: search from just before the old end.
        match = _BLANK_LINE.search(self._line, max(0, start - 2))
        if match is None:
            if len(self._line) > MAX_HEAD:
                raise TransferError(f"response head larger than {MAX_HEAD} bytes")
            return end
        head = bytes(self._line[: match.start()])
        self._line.clear()
        self._parse_head(head, events)
        return pos + match.end() - start

    def _parse_head(self, raw: bytes, events: list[HttpEvent]) -> None:
        if len(raw) > MAX_HEAD:
            raise TransferError(f"response head larger than {MAX_HEAD} bytes")
        lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]
        # Servers may precede a response with stray empty lines (RFC 9112 2.2).
        while lines and not lines[0]:
            del lines[0]
        if not lines:
            raise TransferError("empty response head")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise TransferError(f"malformed status line {_preview(lines[0])}")
        version = (int(match[1]), int(match[2]))
        status = int(match[3])
        reason = (match[4] or b"").decode("latin-1")
        if version[0] != 1:
            raise TransferError(f"unsupported HTTP version {version[0]}.{version[1]}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise TransferError(f"folded header line {_preview(line)} (obsolete, refused)")
            name, sep, value = line.partition(b":")
            if not sep or _TOKEN.fullmatch(name) is None:
                raise TransferError(f"malformed header line {_preview(line)}")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            if status == 101:
                raise TransferError("the server switched protocols (101), which was not asked")
            return  # interim answer; the real one follows
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        # HTTP/1.0 closes unless asked otherwise; HTTP/1.1 persists unless told to close.
        keep_alive = "keep-alive" in connection if version == (1, 0) else "close" not in connection
        chunked, length = self._framing(status, headers)
        self._keep_alive = keep_alive
        if chunked:
            self._state = _State.CHUNK_LINE
        elif length is not None:
            self._remaining = length
            self._state = _State.LENGTH
        else:
            self._state = _State.UNTIL_CLOSE
            keep_alive = self._keep_alive = False
        events.append(ResponseHead(status, reason, headers, version, chunked, length, keep_alive))
        if self._state is _State.LENGTH and length == 0:
            self._finish(events)

    def _framing(self, status: int, headers: Mapping[str, str]) -> tuple[bool, int | None]:
        """(chunked, content length) of the body that follows (RFC 9112 6.3)."""
        if self._head_only or status in (204, 304):
            return False, 0
        coding = headers.get("transfer-encoding")
        if coding is not None:
            codings = [c.strip().lower() for c in coding.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise TransferError(
                    f"unsupported Transfer-Encoding {coding!r}; only 'chunked' is accepted"
                )
            return True, None
        raw = headers.get("content-length")
        if raw is None:
            return False, None
        values = {v.strip() for v in raw.split(",")}
        value = values.pop() if len(values) == 1 else ""
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise TransferError(f"invalid Content-Length {raw!r}")
        return False, int(value)

    # chunked body

    def _chunk_line(self, view: memoryview, pos: int, end: int, events: list[HttpEvent]) -> int:
        pos, size = take_size_line(self._line, view, pos, end, self.body_bytes)
        if size == 0:
            self._state = _State.TRAILER
        elif size > 0:
            self._remaining = size
            self._chunk_fresh = True
            self._state = _State.CHUNK_DATA
        return pos

    def _chunk_crlf(self, view: memoryview, pos: int, end: int) -> int:
        pos, complete = take_chunk_crlf(self._line, view, pos, self.body_bytes)
        if complete:
            self._state = _State.CHUNK_LINE
        return pos

    def _trailer(self, view: memoryview, pos: int, end: int, events: list[HttpEvent]) -> int:
        after = take_trailer(self._line, view, pos, end)
        if after < 0:
            return end
        self._finish(events)
        return after

    def _finish(self, events: list[HttpEvent]) -> None:
        self._state = _State.IDLE
        events.append(ResponseEnd())


# --- chunked framing, shared with PipeStream ----------------------------------------------------


def take_size_line(
    line: bytearray, data: Buffer | Searchable, pos: int, end: int, body_bytes: int
) -> tuple[int, int]:
    """Take (the rest of) a chunk-size line from ``data[pos:end]``.

    ``line`` holds what earlier bytes brought of it and is emptied once the
    line is complete. Returns the position after what was taken and the
    chunk's size, or -1 while the line goes on past ``end``. Raises
    TransferError for a malformed or overlong line (``body_bytes``, the
    body bytes so far, goes into the message).
    """
    window = bytes(data[pos : min(end, pos + _LINE_WINDOW)])
    nl = window.find(b"\n")
    if nl == -1:
        line += window
        if len(line) > MAX_CHUNK_LINE:
            raise TransferError(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
        return pos + len(window), -1
    line += window[:nl]
    text = bytes(line)
    line.clear()
    if text.endswith(b"\r"):
        text = text[:-1]
    size_text = text.split(b";", 1)[0].strip(b" \t")
    if _CHUNK_SIZE.fullmatch(size_text) is None:
        raise TransferError(
            f"malformed chunk-size line {_preview(text)} after {body_bytes} body bytes"
        )
    return pos + nl + 1, int(size_text, 16)


def take_chunk_crlf(
    line: bytearray, data: Buffer | Searchable, pos: int, body_bytes: int
) -> tuple[int, bool]:
    """Take (the rest of) the CRLF that ends a chunk's data; True once both bytes are in.

    ``line`` holds the byte an earlier call took. Raises TransferError when
    anything else follows the data: the chunk size was wrong.
    """
    got = bytes(data[pos : pos + 2 - len(line)])
    line += got
    if not b"\r\n".startswith(line):
        raise TransferError(
            f"chunk not followed by CRLF (got {_preview(bytes(line))}) "
            f"after {body_bytes} body bytes: the chunk size was wrong"
        )
    if len(line) < 2:
        return pos + len(got), False
    line.clear()
    return pos + len(got), True


def chunked_eof_error(short: int | None, body_bytes: int) -> TransferError:
    """What a connection closing inside a chunked body means: ``short`` bytes
    were missing from the chunk it closed in, or (None) it closed between chunks."""
    if short is not None:
        return TransferError(
            f"connection closed inside a chunk, {short} bytes short, after {body_bytes} body bytes"
        )
    return TransferError(
        f"connection closed before the end of the chunked body "
        f"(after {body_bytes} body bytes, no terminating chunk)"
    )


def take_trailer(line: bytearray, data: Buffer | Searchable, pos: int, end: int) -> int:
    """Take the chunked trailer from ``data[pos:end]``; where it ended, or -1 if it goes on.

    Trailer fields are not used; only their end matters. The line that
    ended the last chunk's size was consumed, so an empty trailer is a lone
    line break and a non-empty one ends with a blank line. ``line`` keeps
    what earlier bytes brought; a trailer over MAX_TRAILER bytes raises
    TransferError.
    """
    start = len(line)
    line += data[pos:end]
    match = _LONE_BREAK.match(line) or _BLANK_LINE.search(line, max(0, start - 2))
    if match is None:
        if len(line) > MAX_TRAILER:
            raise TransferError(f"chunked trailer larger than {MAX_TRAILER} bytes")
        return -1
    line.clear()
    return pos + match.end() - start


def _preview(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > limit else ""))
