"""The pipe (HTTP) protocol without sockets: bytes in, events and verdicts out.

Three layers, each a pure function or a sans-IO state machine that the
transport (:mod:`marsconn.transport_pipe`) feeds and that tests drive with
plain bytes:

* :class:`HttpResponseReader` parses HTTP/1.1 responses from a connection's
  byte stream: the head, then the body as :class:`BodyPiece` events that
  keep chunk boundaries (``chunk_start`` / ``chunk_end``), because in this
  protocol a chunk's extent carries meaning. Pieces are views into the
  bytes fed, never copies, so gigabytes pass without per-byte Python work.
* :class:`PipeBodyDecoder` turns the pieces of a ``POST /`` answer into
  :class:`Data`, :class:`Rewind`, :class:`EndOfRequest` and
  :class:`ErrorTrailer` events, and rejects malformed bodies with a
  :class:`~marsconn.errors.TransferError` that says exactly what was wrong.
* :class:`PipeStream` does what those two do for a ``POST /`` answer's
  body in one pass over the received bytes, with the same verdicts and
  messages: the transport's data path, where a 64 KiB chunk costs about
  a microsecond. The pair above stays the readable reference its tests
  compare it with, for any body and any split of its bytes.
* :func:`classify_status` and :func:`classify_error_trailer` decide what a
  failure means for failover: same server, next server, or final.

Why not h11: on a loopback socket, h11 delivered a quarter to a third of what a
plain socket reader manages, because its receive buffer copies every body
byte twice (figures in docs/pipe-mode.md). The reader here hands out slices
of the caller's buffer instead.
"""

from __future__ import annotations

import base64
import json
import mmap
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, NamedTuple
from urllib.parse import unquote

from ..core.errors import ErrorKind, JobKilledError, MarsconnError, MarsRequestError, TransferError
from ..core.outcome import Action

__all__ = [
    "ENDR",
    "EROR",
    "MARKERS",
    "RWND",
    "BodyPiece",
    "Data",
    "EndOfRequest",
    "ErrorTrailer",
    "HttpEvent",
    "HttpResponseReader",
    "PipeBodyDecoder",
    "PipeEvent",
    "PipeStatusError",
    "PipeStream",
    "ResponseEnd",
    "ResponseHead",
    "Rewind",
    "Searchable",
    "StreamItem",
    "Verdict",
    "classify_error_trailer",
    "classify_status",
    "encode_job",
    "encode_request",
    "merged_request",
]

#: A chunk of exactly these bytes: truncate back to where the request began.
RWND = b"RWND"
#: A chunk of exactly these bytes: the request's data is complete.
ENDR = b"ENDR"
#: A chunk of exactly these bytes: MARS failed; the next chunk is a JSON object.
EROR = b"EROR"
MARKERS = frozenset({RWND, ENDR, EROR})
_MARKER_SIZE = 4

# Bounds on what is held in memory for things that are small by nature; a
# peer exceeding them is broken, and buffering without limit would let it
# exhaust memory.
MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_TRAILER = 64 * 1024
MAX_ERROR_PAYLOAD = 64 * 1024
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
    protocol raises :class:`~marsconn.errors.TransferError`.

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
        if state is _State.CHUNK_DATA:
            raise TransferError(
                f"connection closed inside a chunk, {self._remaining} bytes short, "
                f"after {self.body_bytes} body bytes"
            )
        raise TransferError(
            f"connection closed before the end of the chunked body "
            f"(after {self.body_bytes} body bytes, no terminating chunk)"
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
        window = bytes(view[pos : min(end, pos + _LINE_WINDOW)])
        nl = window.find(b"\n")
        if nl == -1:
            self._line += window
            if len(self._line) > MAX_CHUNK_LINE:
                raise TransferError(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
            return pos + len(window)
        self._line += window[:nl]
        line = bytes(self._line)
        self._line.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise TransferError(
                f"malformed chunk-size line {_preview(line)} after {self.body_bytes} body bytes"
            )
        size = int(size_text, 16)
        if size == 0:
            self._state = _State.TRAILER
        else:
            self._remaining = size
            self._chunk_fresh = True
            self._state = _State.CHUNK_DATA
        return pos + nl + 1

    def _chunk_crlf(self, view: memoryview, pos: int, end: int) -> int:
        need = 2 - len(self._line)
        got = bytes(view[pos : pos + need])
        self._line += got
        if not b"\r\n".startswith(bytes(self._line)):
            raise TransferError(
                f"chunk not followed by CRLF (got {_preview(bytes(self._line))}) "
                f"after {self.body_bytes} body bytes: the chunk size was wrong"
            )
        if len(self._line) == 2:
            self._line.clear()
            self._state = _State.CHUNK_LINE
        return pos + len(got)

    def _trailer(self, view: memoryview, pos: int, end: int, events: list[HttpEvent]) -> int:
        # Trailer fields are not used; only their end matters. The line that
        # ended the last chunk's size was consumed, so an empty trailer is a
        # lone line break and a non-empty one ends with a blank line.
        start = len(self._line)
        self._line += view[pos:end]
        lone = _LONE_BREAK.match(self._line)
        match = lone or _BLANK_LINE.search(self._line, max(0, start - 2))
        if match is None:
            if len(self._line) > MAX_TRAILER:
                raise TransferError(f"chunked trailer larger than {MAX_TRAILER} bytes")
            return end
        self._line.clear()
        self._finish(events)
        return pos + match.end() - start

    def _finish(self, events: list[HttpEvent]) -> None:
        self._state = _State.IDLE
        events.append(ResponseEnd())


# --- the pipe body ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    """Output bytes to append to the target (a view, valid until the next feed)."""

    data: Buffer


@dataclass(frozen=True, slots=True)
class Rewind:
    """Truncate the output back to where the current request began."""


@dataclass(frozen=True, slots=True)
class EndOfRequest:
    """The current request's data is complete."""


@dataclass(frozen=True, slots=True)
class ErrorTrailer:
    """MARS failed after the data began; ``payload`` says how.

    See :func:`classify_error_trailer`.
    """

    payload: dict[str, Any]


PipeEvent = Data | Rewind | EndOfRequest | ErrorTrailer


class _Body(Enum):
    DATA = "data"
    AFTER_EROR = "after_eror"  # collecting the JSON chunk that follows EROR
    ENDED = "ended"  # ENDR seen
    FAILED = "failed"  # the EROR payload seen


class PipeBodyDecoder:
    """Turns the chunked body of a ``POST /`` answer into pipe events.

    The reference form of the body's meaning; the transport uses
    :class:`PipeStream`, which must agree with it.

    Feed every body piece with its chunk boundary flags (as
    :class:`HttpResponseReader` gives them) to :meth:`feed`, then call
    :meth:`finish` when the body ends. A chunk is a marker only when the
    whole chunk is exactly ``RWND``, ``ENDR`` or ``EROR``; any other chunk,
    including one that merely contains those letters, is data. Only chunks
    of at most 4 bytes are held back (to tell markers from data); larger
    ones pass straight through as views of the input.
    """

    def __init__(self) -> None:
        self._state = _Body.DATA
        self._small = bytearray()
        self._holding = False  # the current chunk is still <= 4 bytes and held back
        self._in_chunk = False
        self._payload = bytearray()
        self.data_bytes = 0  # data bytes seen, over rewinds
        self.rewinds = 0

    @property
    def ended(self) -> bool:
        """Whether ``ENDR`` was seen (the request's data is complete)."""
        return self._state is _Body.ENDED

    def feed(self, data: Buffer, chunk_start: bool, chunk_end: bool) -> list[PipeEvent]:
        """Take one body piece; return the events it completed."""
        if chunk_start:
            if self._in_chunk:
                raise TransferError("a chunk began before the previous one ended")
            self._in_chunk = True
        elif not self._in_chunk:
            raise TransferError("a body piece arrived outside any chunk")
        if chunk_end:
            self._in_chunk = False
        state = self._state
        if state is _Body.DATA:
            return self._data(data, chunk_start, chunk_end)
        if state is _Body.AFTER_EROR:
            return self._error_payload(data, chunk_end)
        what = "ENDR (end of request)" if state is _Body.ENDED else "the EROR payload"
        raise TransferError(f"data after {what}: another chunk followed it")

    def _data(self, data: Buffer, chunk_start: bool, chunk_end: bool) -> list[PipeEvent]:
        if chunk_start:
            self._small.clear()
            self._holding = True
        if not self._holding:
            self.data_bytes += len(data)
            return [Data(data)]
        if len(self._small) + len(data) > _MARKER_SIZE:
            # Too long for a marker: release what was held and stream the rest.
            self._holding = False
            events: list[PipeEvent] = []
            if self._small:
                held = bytes(self._small)
                self._small.clear()
                self.data_bytes += len(held)
                events.append(Data(held))
            self.data_bytes += len(data)
            events.append(Data(data))
            return events
        self._small += data
        if not chunk_end:
            return []
        self._holding = False
        chunk = bytes(self._small)
        self._small.clear()
        if chunk == RWND:
            self.rewinds += 1
            return [Rewind()]
        if chunk == ENDR:
            self._state = _Body.ENDED
            return [EndOfRequest()]
        if chunk == EROR:
            self._state = _Body.AFTER_EROR
            self._payload.clear()
            return []
        if not chunk:
            return []
        self.data_bytes += len(chunk)
        return [Data(chunk)]

    def _error_payload(self, data: Buffer, chunk_end: bool) -> list[PipeEvent]:
        self._payload += data
        if len(self._payload) > MAX_ERROR_PAYLOAD:
            raise TransferError(
                f"the chunk after EROR is larger than {MAX_ERROR_PAYLOAD} bytes; "
                "a JSON object was expected"
            )
        if not chunk_end:
            return []
        raw = bytes(self._payload)
        self._payload.clear()
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise TransferError(
                f"EROR was not followed by a JSON object chunk (got {_preview(raw)})"
            ) from None
        if not isinstance(payload, dict):
            raise TransferError(
                f"EROR was not followed by a JSON object chunk (got {_preview(raw)})"
            )
        self._state = _Body.FAILED
        return [ErrorTrailer(payload)]

    def finish(self) -> list[PipeEvent]:
        """The body ended (terminating chunk received); raise if it was incomplete."""
        if self._in_chunk:
            raise TransferError("the body ended inside a chunk")
        if self._state is _Body.DATA:
            raise TransferError(
                f"the body ended without ENDR after {self.data_bytes} data bytes: "
                "MARS's output is incomplete"
            )
        if self._state is _Body.AFTER_EROR:
            raise TransferError("the body ended after EROR without the JSON object chunk")
        return []


# States of PipeStream (small ints: compared once per chunk).
_S_LINE = 0  # at a chunk-size line (a partial one is in _line)
_S_DATA = 1  # inside a data chunk of more than 4 bytes: streamed through
_S_CRLF = 2  # after a chunk's data, expecting CRLF (a partial one is in _line)
_S_SMALL = 3  # inside a chunk of 1-4 bytes: held back until it is known whether it is a marker
_S_PAYLOAD = 4  # inside the chunk that follows EROR
_S_AFTER = 5  # a chunk began after ENDR or the EROR payload: its first byte is an error
_S_SKIP = 6  # inside a chunk after the stream stopped: only the framing is checked
_S_TRAILER = 7
_S_DONE = 8
_S_HELD = 9  # a data chunk's first 1-4 bytes ended a read: held, as PipeBodyDecoder holds them

_REWIND = Rewind()
_END_OF_REQUEST = EndOfRequest()
_RESPONSE_END = ResponseEnd()
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

#: What :meth:`PipeStream.feed` returns: data views, events, and at most one
#: terminal item (:class:`ErrorTrailer`, :class:`ResponseEnd` or the
#: :class:`~marsconn.errors.TransferError` a malformed body ended with).
StreamItem = Buffer | Rewind | EndOfRequest | ErrorTrailer | ResponseEnd | TransferError


class PipeStream:
    """The chunked body of a ``POST /`` answer, decoded straight from the received bytes.

    One pass does what :class:`HttpResponseReader` (chunked framing) and
    :class:`PipeBodyDecoder` (markers) do together, with the same verdicts
    and the same error messages, at a fraction of their cost per chunk: a
    64 KiB chunk costs one ``find`` of its size line and one slice, and no
    event object. Hand it the body after the head (see
    :meth:`HttpResponseReader.hand_over_body`).

    :meth:`feed` takes one read's worth of bytes and returns, in order, the
    data (views of the bytes fed, valid until the caller reuses them), the
    :class:`Rewind` and :class:`EndOfRequest` events, and at most one
    terminal item, last: :class:`ErrorTrailer` (MARS failed after data
    began), :class:`ResponseEnd` (the body is complete and ended with
    ``ENDR``), or the :class:`~marsconn.errors.TransferError` that a
    malformed body's meaning ends with (data after ``ENDR``, no ``ENDR``,
    a bad ``EROR`` payload). :attr:`plain` is true when every item is data.

    A malformed chunked framing anywhere in the bytes fed raises
    :class:`~marsconn.errors.TransferError` at once, before any of the
    bytes' items apply: the framing of a read is checked as a whole, as
    :class:`HttpResponseReader` does, and a terminal item only ends the
    body's meaning, not that check.
    """

    __slots__ = (
        "_after",
        "_fresh",
        "_line",
        "_payload",
        "_remaining",
        "_small",
        "_state",
        "_stopped",
        "body_bytes",
        "data_bytes",
        "plain",
        "rewinds",
        "stray",
    )

    def __init__(self) -> None:
        self._state = _S_LINE
        self._after = _Body.DATA
        self._stopped = False  # a terminal item was returned: only framing is checked now
        self._fresh = False  # no byte of the current data chunk was handed out yet
        self._line = bytearray()
        self._small = bytearray()
        self._payload = bytearray()
        self._remaining = 0
        #: Chunk bytes received (markers and the EROR payload included).
        self.body_bytes = 0
        #: Data bytes handed out, over rewinds.
        self.data_bytes = 0
        self.rewinds = 0
        #: Whether the last :meth:`feed` returned only data.
        self.plain = True
        #: Whether bytes followed the end of the body (the connection cannot be reused).
        self.stray = False

    @property
    def ended(self) -> bool:
        """Whether ``ENDR`` was seen (the request's data is complete)."""
        return self._after is _Body.ENDED

    @property
    def done(self) -> bool:
        """Whether the body's terminating chunk and trailer were read."""
        return self._state == _S_DONE

    def feed(self, data: Searchable, start: int = 0, end: int | None = None) -> list[StreamItem]:
        """Decode ``data[start:end]`` (bytes, bytearray or mmap); return its items in order."""
        if end is None:
            end = len(data)
        items: list[StreamItem] = []
        self.plain = True
        pos = start
        view: memoryview | None = None
        while pos < end:
            state = self._state
            if state == _S_DATA:
                if view is None:
                    view = memoryview(data)
                pos = self._stream(data, view, pos, end, items)
            elif state == _S_CRLF:
                if not self._line and end - pos >= 2 and data[pos] == 13 and data[pos + 1] == 10:
                    pos += 2
                    self._state = _S_LINE
                else:
                    pos = self._crlf(data, pos, end)
            elif state == _S_LINE:
                if not self._line:
                    stop = pos + _LINE_WINDOW if pos + _LINE_WINDOW < end else end
                    nl = data.find(b"\n", pos, stop)
                    if nl >= 0:
                        text = data[pos : nl - 1 if nl > pos and data[nl - 1] == 13 else nl]
                        if _HEX.fullmatch(text) is not None:
                            self._chunk(int(text, 16))
                            pos = nl + 1
                            continue
                pos = self._size_line(data, pos, end)
            elif state == _S_TRAILER:
                pos = self._trailer(data, pos, end, items)
            elif state == _S_DONE:
                self.stray = True
                break
            else:
                pos = self._rare(data, pos, end, items)
        return items

    def _stream(
        self, data: Searchable, view: memoryview, pos: int, end: int, items: list[StreamItem]
    ) -> int:
        """Data chunks of more than 4 bytes back to back, the steady state, in one tight loop.

        Leaves at the end of the bytes, or at anything else (a small chunk, a
        size line that is not plain hex and CRLF, a line cut by the end of the
        bytes...), which the general states then take as they always do.
        """
        append = items.append
        find = data.find
        fullmatch = _HEX.fullmatch
        remaining = self._remaining
        taken = 0
        while pos < end:
            avail = end - pos
            if remaining > avail:
                if avail <= _MARKER_SIZE and self._fresh:
                    # Too few bytes to tell the chunk from a marker by what
                    # arrived; the reference holds them back, so does this.
                    self._state = _S_HELD
                    break
                append(view[pos:end])
                taken += avail
                remaining -= avail
                pos = end
                self._fresh = False
                break
            stop = pos + remaining
            append(view[pos:stop])
            taken += remaining
            pos = stop
            remaining = 0
            self._fresh = False
            self._state = _S_CRLF
            # The CRLF and the next size line, when they are all here and plain.
            if end - stop > 3 and data[stop] == 13 and data[stop + 1] == 10:
                line = stop + 2
                nl = find(b"\n", line, line + _LINE_WINDOW if line + _LINE_WINDOW < end else end)
                if nl > line and data[nl - 1] == 13:
                    text = data[line : nl - 1]
                    if fullmatch(text) is not None:
                        size = int(text, 16)
                        if size > _MARKER_SIZE:
                            remaining = size
                            pos = nl + 1
                            self._fresh = True
                            self._state = _S_DATA
                            continue
            break
        self._remaining = remaining
        self.body_bytes += taken
        self.data_bytes += taken
        return pos

    def feed_eof(self) -> None:
        """The connection closed: raise TransferError unless the body ended.

        Whether the output is complete all the same is :attr:`ended`'s to
        say: a connection that closes right after ``ENDR`` loses no data.
        """
        state = self._state
        if state == _S_DONE:
            return
        if state in (_S_DATA, _S_SMALL, _S_PAYLOAD, _S_AFTER, _S_SKIP, _S_HELD):
            raise TransferError(
                f"connection closed inside a chunk, {self._remaining} bytes short, "
                f"after {self.body_bytes} body bytes"
            )
        raise TransferError(
            f"connection closed before the end of the chunked body "
            f"(after {self.body_bytes} body bytes, no terminating chunk)"
        )

    # framing

    def _chunk(self, size: int) -> None:
        """A chunk-size line was read: what the chunk's bytes will be."""
        if size == 0:
            self._state = _S_TRAILER
            return
        self._remaining = size
        after = self._after
        if self._stopped:
            self._state = _S_SKIP
        elif after is _Body.DATA:
            if size > _MARKER_SIZE:
                self._state = _S_DATA
                self._fresh = True
            else:
                self._small.clear()
                self._state = _S_SMALL
        elif after is _Body.AFTER_EROR:
            self._payload.clear()
            self._state = _S_PAYLOAD
        else:
            self._state = _S_AFTER

    def _size_line(self, data: Searchable, pos: int, end: int) -> int:
        # What HttpResponseReader._chunk_line does, for lines the fast path does not take.
        window = bytes(data[pos : min(end, pos + _LINE_WINDOW)])
        nl = window.find(b"\n")
        if nl == -1:
            self._line += window
            if len(self._line) > MAX_CHUNK_LINE:
                raise TransferError(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
            return pos + len(window)
        self._line += window[:nl]
        line = bytes(self._line)
        self._line.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise TransferError(
                f"malformed chunk-size line {_preview(line)} after {self.body_bytes} body bytes"
            )
        self._chunk(int(size_text, 16))
        return pos + nl + 1

    def _crlf(self, data: Searchable, pos: int, end: int) -> int:
        need = 2 - len(self._line)
        got = bytes(data[pos : pos + need])
        self._line += got
        if not b"\r\n".startswith(bytes(self._line)):
            raise TransferError(
                f"chunk not followed by CRLF (got {_preview(bytes(self._line))}) "
                f"after {self.body_bytes} body bytes: the chunk size was wrong"
            )
        if len(self._line) == 2:
            self._line.clear()
            self._state = _S_LINE
        return pos + len(got)

    def _trailer(self, data: Searchable, pos: int, end: int, items: list[StreamItem]) -> int:
        start = len(self._line)
        self._line += data[pos:end]
        lone = _LONE_BREAK.match(self._line)
        match = lone or _BLANK_LINE.search(self._line, max(0, start - 2))
        if match is None:
            if len(self._line) > MAX_TRAILER:
                raise TransferError(f"chunked trailer larger than {MAX_TRAILER} bytes")
            return end
        self._line.clear()
        self._state = _S_DONE
        if not self._stopped:
            # What PipeBodyDecoder.finish() says of a body that ended here.
            if self._after is _Body.DATA:
                self._stop(
                    items,
                    TransferError(
                        f"the body ended without ENDR after {self.data_bytes} data bytes: "
                        "MARS's output is incomplete"
                    ),
                )
            elif self._after is _Body.AFTER_EROR:
                self._stop(
                    items,
                    TransferError("the body ended after EROR without the JSON object chunk"),
                )
            else:
                self._stop(items, _RESPONSE_END)
        return pos + match.end() - start

    # the rare states: markers, the EROR payload, chunks after the end

    def _stop(self, items: list[StreamItem], item: StreamItem) -> None:
        """Add the terminal item; from now on only the framing is checked."""
        items.append(item)
        self.plain = False
        self._stopped = True

    def _rare(self, data: Searchable, pos: int, end: int, items: list[StreamItem]) -> int:
        state = self._state
        take = min(self._remaining, end - pos)
        if state == _S_HELD:
            if len(self._small) + take > _MARKER_SIZE:
                # Enough to see it is data: release what was held, stream the rest.
                held = bytes(self._small)
                self._small.clear()
                self.data_bytes += len(held)
                items.append(held)
                self._fresh = False
                self._state = _S_DATA
                return pos
            self._small += data[pos : pos + take]
            self.body_bytes += take
            self._remaining -= take
            return pos + take
        if state == _S_AFTER:
            what = "ENDR (end of request)" if self._after is _Body.ENDED else "the EROR payload"
            self._stop(items, TransferError(f"data after {what}: another chunk followed it"))
            self._state = state = _S_SKIP
        self.body_bytes += take
        self._remaining -= take
        last = not self._remaining
        if last:
            self._state = _S_CRLF
        if state == _S_SKIP:
            return pos + take
        if state == _S_SMALL:
            self._small += data[pos : pos + take]
            if last:
                self._marker(items)
            return pos + take
        # _S_PAYLOAD
        self._payload += data[pos : pos + take]
        if len(self._payload) > MAX_ERROR_PAYLOAD:
            self._stop(
                items,
                TransferError(
                    f"the chunk after EROR is larger than {MAX_ERROR_PAYLOAD} bytes; "
                    "a JSON object was expected"
                ),
            )
            if not last:
                self._state = _S_SKIP
            return pos + take
        if last:
            raw = bytes(self._payload)
            self._payload.clear()
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                payload = None
            if not isinstance(payload, dict):
                self._stop(
                    items,
                    TransferError(
                        f"EROR was not followed by a JSON object chunk (got {_preview(raw)})"
                    ),
                )
            else:
                self._after = _Body.FAILED
                self._stop(items, ErrorTrailer(payload))
        return pos + take

    def _marker(self, items: list[StreamItem]) -> None:
        """A chunk of 1-4 bytes is complete: a marker, or data after all."""
        chunk = bytes(self._small)
        self._small.clear()
        if chunk == RWND:
            self.rewinds += 1
            items.append(_REWIND)
            self.plain = False
        elif chunk == ENDR:
            self._after = _Body.ENDED
            items.append(_END_OF_REQUEST)
            self.plain = False
        elif chunk == EROR:
            self._after = _Body.AFTER_EROR
        else:
            self.data_bytes += len(chunk)
            items.append(chunk)


# --- classification ---------------------------------------------------------------------------


class PipeStatusError(MarsconnError):
    """A pipe server answered a job with an HTTP status other than 200.

    ``status`` is the HTTP status code.
    """

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME

    def __init__(self, message: str, *, status: int, server: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server = server


class Verdict(NamedTuple):
    """What a failure means: the action, a stable error class and the error.

    ``next_allowed`` is false when the server asked for retries on itself
    but not on another server.
    """

    action: Action
    error_class: str | None
    error: BaseException | None
    next_allowed: bool = True


#: Statuses retried on the same server by default (then the next one).
SAME_HOST_STATUSES = frozenset({500, 502, 503, 504, 408})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(value: Any) -> bool | None:
    """A 0/1 header or JSON flag; None when absent or unreadable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _decide(same: bool, nxt: bool) -> Action:
    if same:
        return Action.SAME_SERVER
    if nxt:
        return Action.NEXT_SERVER
    return Action.FINAL


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _shown_location(location: str) -> str:
    """A redirect's target as it may appear in an error: redacted, neutralised, cut."""
    from ..core.neutralise import neutralise
    from ..core.redact import redact

    shown = redact(location)
    if "?" in shown and "://" not in shown:  # a relative Location's query
        shown = shown.partition("?")[0] + "?***"
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return repr(neutralise(shown))


def classify_status(
    status: int, headers: Mapping[str, str], *, server: str = "", detail: str = ""
) -> Verdict:
    """Classify the status of a ``POST /`` answer.

    200 is success. 400 (MARS exited before any data) is final, class
    ``mars_rejected``, with a :class:`~marsconn.errors.MarsRequestError`
    carrying ``X-MARS-EXIT-CODE``. 500, 502, 503, 504 and 408 are retried on
    the same server (then the next); 429 and every other status go to the
    next server. ``X-MARS-RETRY-SAME-HOST`` / ``X-MARS-RETRY-NEXT-HOST``
    (0/1) override these defaults one flag each; when the flags say
    neither, the answer is final. A 500 with ``X-MARS-SIGNAL`` means MARS
    was killed: class ``mars_killed``, error
    :class:`~marsconn.errors.JobKilledError`. A 3xx is a redirect, never
    followed: class ``redirected``, next server, naming where it pointed
    (redacted). Other failures have class ``http_<status>``. ``detail``
    (e.g. a preview of the body) is appended to the error message.
    """
    if status == 200:
        return Verdict(Action.SUCCESS, None, None)
    lowered = {k.lower(): v for k, v in headers.items()}
    same = status in SAME_HOST_STATUSES
    nxt = status != 400
    override_same = _flag(lowered.get("x-mars-retry-same-host"))
    override_next = _flag(lowered.get("x-mars-retry-next-host"))
    if override_same is not None:
        same = override_same
    if override_next is not None:
        nxt = override_next
    action = _decide(same, nxt)
    where = f" on {server}" if server else ""
    tail = f": {detail}" if detail else ""
    error: BaseException
    if status == 400:
        code = _int_header(lowered.get("x-mars-exit-code"))
        shown = f"code {code}" if code is not None else "an unknown code"
        retried = "" if action is Action.FINAL else " (the server asked for a retry)"
        error = MarsRequestError(
            f"MARS exited with {shown}{where} before sending any data; "
            f"the request was rejected{retried}{tail}",
            returncode=code,
            server=server,
        )
        return Verdict(action, "mars_rejected", error, nxt)
    if 300 <= status < 400:
        # Never followed: the plan names the servers, and a redirect would take the job (and
        # the credentials) elsewhere while the audit events name this server.
        location = lowered.get("location")
        to = f" to {_shown_location(location)}" if location else " without a Location"
        error = PipeStatusError(
            f"{server or 'the server'} answered HTTP {status}, a redirect{to}; redirects are "
            f"not followed (only the plan's servers are contacted){tail}",
            status=status,
            server=server,
        )
        return Verdict(action, "redirected", error, nxt)
    signal = lowered.get("x-mars-signal")
    if status == 500 and signal is not None:
        error = JobKilledError(
            f"MARS was killed by signal {signal.strip()}{where} before sending any data{tail}"
        )
        return Verdict(action, "mars_killed", error, nxt)
    error = PipeStatusError(
        f"{server or 'the server'} answered HTTP {status} to the job{tail}",
        status=status,
        server=server,
    )
    return Verdict(action, f"http_{status}", error, nxt)


def classify_error_trailer(payload: Mapping[str, Any], *, server: str = "") -> Verdict:
    """Classify the JSON object that followed ``EROR``.

    ``{"exited": N}``: MARS exited with code N after data began; final,
    class ``mars_rejected``, :class:`~marsconn.errors.MarsRequestError`.
    ``{"killed": SIG, "retry_same_host": b, "retry_next_host": b}``: class
    ``mars_killed``, same server / next server / final per the flags (a
    missing flag takes the default of a 500 answer: retry). Anything else
    is a malformed body: class ``transfer_broken``, next server.
    """
    where = f" on {server}" if server else ""
    if "exited" in payload:
        code = payload["exited"]
        if isinstance(code, int) and not isinstance(code, bool):
            return Verdict(
                Action.FINAL,
                "mars_rejected",
                MarsRequestError(
                    f"MARS exited with code {code}{where} while sending data; "
                    "the partial output was discarded and the request not retried elsewhere",
                    returncode=code,
                    server=server,
                ),
            )
    elif "killed" in payload:
        same = _flag(payload.get("retry_same_host"))
        nxt = _flag(payload.get("retry_next_host"))
        next_ok = True if nxt is None else nxt
        action = _decide(True if same is None else same, next_ok)
        return Verdict(
            action,
            "mars_killed",
            JobKilledError(
                f"MARS was killed by signal {payload['killed']}{where} while sending data; "
                "the partial output was discarded"
            ),
            next_ok,
        )
    return Verdict(
        Action.NEXT_SERVER,
        "transfer_broken",
        TransferError(
            f"{server or 'the server'} sent EROR with an unknown payload "
            f"{_preview(json.dumps(dict(payload)).encode())}"
        ),
    )


# --- requests ---------------------------------------------------------------------------------


def merged_request(requests: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    """Request ``index`` as MARS sees it: ``requests[0..index]`` merged, later keys winning."""
    merged: dict[str, Any] = {}
    for request in requests[: index + 1]:
        merged.update(request)
    return merged


def encode_job(request: Mapping[str, Any], environ: Mapping[str, Any]) -> bytes:
    """The ``POST /`` body: ``{"request": ..., "environ": ...}`` as JSON."""
    return json.dumps({"request": dict(request), "environ": dict(environ)}).encode()


def encode_request(
    method: str,
    target: str,
    host: str,
    body: bytes | None = None,
    *,
    content_type: str | None = None,
    userinfo: str | None = None,
    user_agent: str = "marsconn",
) -> bytes:
    """One HTTP/1.1 request, head and body, ready to write.

    ``host`` is the Host header value (``name[:port]``); ``userinfo`` from
    the server URL becomes HTTP Basic credentials.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}"]
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    if body is not None:
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


def _preview(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > limit else ""))
