"""PipeStream: a POST / answer's body decoded in one pass over the received bytes.

The transport's data path: same verdicts and messages as HttpResponseReader followed by
PipeBodyDecoder, which stay the readable reference its tests compare it with.
"""

from __future__ import annotations

import json
import re

from ..core.errors import TransferError
from .http_response import (
    _LINE_WINDOW,
    Buffer,
    ResponseEnd,
    Searchable,
    _preview,
    chunked_eof_error,
    take_chunk_crlf,
    take_size_line,
    take_trailer,
)
from .pipe_body import (
    _MARKER_SIZE,
    ENDR,
    EROR,
    MAX_ERROR_PAYLOAD,
    RWND,
    EndOfRequest,
    ErrorTrailer,
    Rewind,
    _Body,
)

# States of PipeStream (small ints: compared once per chunk).
_S_LINE = 0  # at a chunk-size line (a partial one is in _line)

__all__ = [
    "PipeStream",
    "StreamItem",
]


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
# A chunk's CRLF and the next size line in their plain form; anything else
# (extensions, white space, a bare LF, a line cut by the end of the bytes)
# goes through the general states.
_NEXT_SIZE = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})\r\n")


#: What :meth:`PipeStream.feed` returns: data views, events, and at most one
#: terminal item (:class:`ErrorTrailer`, :class:`ResponseEnd` or the
#: :class:`~marsconn.core.errors.TransferError` a malformed body ended with).
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
    ``ENDR``), or the :class:`~marsconn.core.errors.TransferError` that a
    malformed body's meaning ends with (data after ``ENDR``, no ``ENDR``,
    a bad ``EROR`` payload). :attr:`plain` is true when every item is data.

    A malformed chunked framing anywhere in the bytes fed raises
    :class:`~marsconn.core.errors.TransferError` at once, before any of the
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
        next_size = _NEXT_SIZE.match
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
            framing = next_size(data, stop, end)
            if framing is not None:
                size = int(framing[1], 16)
                if size > _MARKER_SIZE:
                    remaining = size
                    pos = framing.end()
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
        inside = state in (_S_DATA, _S_SMALL, _S_PAYLOAD, _S_AFTER, _S_SKIP, _S_HELD)
        raise chunked_eof_error(self._remaining if inside else None, self.body_bytes)

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
        # A line the fast path in feed() does not take (cut by the end of the
        # bytes, extensions, white space, a bare LF, or malformed).
        pos, size = take_size_line(self._line, data, pos, end, self.body_bytes)
        if size >= 0:
            self._chunk(size)
        return pos

    def _crlf(self, data: Searchable, pos: int, end: int) -> int:
        pos, complete = take_chunk_crlf(self._line, data, pos, self.body_bytes)
        if complete:
            self._state = _S_LINE
        return pos

    def _trailer(self, data: Searchable, pos: int, end: int, items: list[StreamItem]) -> int:
        after = take_trailer(self._line, data, pos, end)
        if after < 0:
            return end
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
        return after

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
