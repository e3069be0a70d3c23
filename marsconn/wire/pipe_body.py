"""The pipe protocol's body markers (RWND, ENDR, EROR) and the reference body decoder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..core.errors import TransferError
from .http_response import Buffer, _preview

#: A chunk of exactly these bytes: truncate back to where the request began.
RWND = b"RWND"

__all__ = [
    "ENDR",
    "EROR",
    "MARKERS",
    "RWND",
    "Data",
    "EndOfRequest",
    "ErrorTrailer",
    "PipeBodyDecoder",
    "PipeEvent",
    "Rewind",
]


#: A chunk of exactly these bytes: the request's data is complete.
ENDR = b"ENDR"


#: A chunk of exactly these bytes: MARS failed; the next chunk is a JSON object.
EROR = b"EROR"


MARKERS = frozenset({RWND, ENDR, EROR})


_MARKER_SIZE = 4


MAX_ERROR_PAYLOAD = 64 * 1024


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
