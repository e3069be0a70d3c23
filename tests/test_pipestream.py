"""PipeStream: the one-pass decoder of a ``POST /`` answer's body.

The reference is the pair it replaces on the data path, HttpResponseReader
(framing) and PipeBodyDecoder (markers), driven the way the transport drove
them: for any body, well formed or not, and any split of its bytes into
reads, both must leave the same output file, end the same way and say the
same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marsconn.core.errors import TransferError
from marsconn.wire.http_response import BodyPiece, HttpResponseReader, ResponseEnd, ResponseHead
from marsconn.wire.pipe_body import (
    ENDR,
    EROR,
    RWND,
    Data,
    EndOfRequest,
    ErrorTrailer,
    PipeBodyDecoder,
    Rewind,
)
from marsconn.wire.pipe_stream import PipeStream

HEAD = b"HTTP/1.1 200 OK\r\nX-MARS-UID: u\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass
class Outcome:
    """How a body ended, and what the output file held then."""

    kind: str  # complete, trailer, closed, broken, unfinished
    output: bytes
    detail: Any = None
    reusable: bool | None = None


class File:
    """The temporary file as the transport uses it: appends, truncation to the start."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.data += piece
        pieces.clear()


def run_reference(reads: list[bytes], eof: bool) -> Outcome:
    """The reader and decoder, driven as the transport drove them before PipeStream."""
    reader = HttpResponseReader()
    reader.expect("POST")
    decoder = PipeBodyDecoder()
    out = File()
    pending: list[bytes] = []
    try:
        for read in reads:
            for event in reader.feed(read):
                if isinstance(event, ResponseHead):
                    continue
                if isinstance(event, BodyPiece):
                    for item in decoder.feed(event.data, event.chunk_start, event.chunk_end):
                        if isinstance(item, Data):
                            pending.append(bytes(item.data))
                            continue
                        out.write(pending)
                        if isinstance(item, Rewind):
                            out.data.clear()
                        elif isinstance(item, ErrorTrailer):
                            return Outcome("trailer", bytes(out.data), item.payload)
                elif isinstance(event, ResponseEnd):
                    decoder.finish()
                    assert not pending
                    return Outcome("complete", bytes(out.data), reusable=reader.reusable)
            out.write(pending)
        if not eof:
            return Outcome("unfinished", bytes(out.data))
        try:
            reader.feed_eof()
        except TransferError as exc:
            if decoder.ended:
                return Outcome("complete", bytes(out.data), "closed after ENDR")
            return Outcome("closed", bytes(out.data), str(exc))
        raise AssertionError("a chunked body cannot end quietly at EOF")
    except TransferError as exc:
        return Outcome("broken", bytes(out.data), str(exc))


def run_stream(reads: list[bytes], eof: bool) -> Outcome:
    """The reader for the head, then PipeStream, consumed as the transport consumes it."""
    reader = HttpResponseReader()
    reader.expect("POST")
    stream: PipeStream | None = None
    out = File()
    try:
        for read in reads:
            start = 0
            if stream is None:
                events, start = reader.feed_head(read)
                if not events:
                    continue
                assert isinstance(events[0], ResponseHead)
                assert events[0].chunked
                reader.hand_over_body()
                stream = PipeStream()
            items = stream.feed(read, start)
            pending: list[bytes] = []
            if stream.plain:
                assert all(isinstance(i, memoryview | bytes) for i in items)
            for item in items:
                if isinstance(item, memoryview | bytes):
                    pending.append(bytes(item))
                    continue
                if isinstance(item, TransferError):
                    raise item  # the data since the last event is not written
                out.write(pending)
                if isinstance(item, Rewind):
                    out.data.clear()
                elif isinstance(item, ErrorTrailer):
                    return Outcome("trailer", bytes(out.data), item.payload)
                elif isinstance(item, ResponseEnd):
                    reader.body_done(stray=stream.stray)
                    return Outcome("complete", bytes(out.data), reusable=reader.reusable)
                else:
                    assert isinstance(item, EndOfRequest)
            out.write(pending)
        if not eof:
            return Outcome("unfinished", bytes(out.data))
        try:
            if stream is None:
                reader.feed_eof()
            else:
                stream.feed_eof()
        except TransferError as exc:
            if stream is not None and stream.ended:
                return Outcome("complete", bytes(out.data), "closed after ENDR")
            return Outcome("closed", bytes(out.data), str(exc))
        raise AssertionError("a chunked body cannot end quietly at EOF")
    except TransferError as exc:
        return Outcome("broken", bytes(out.data), str(exc))


def chunk(data: bytes, size_text: bytes | None = None, crlf: bytes = b"\r\n") -> bytes:
    size = b"%x" % len(data) if size_text is None else size_text
    return size + crlf + data + b"\r\n"


def payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# Whole chunks, good and bad, with the size-line spellings the framing allows or refuses.
data_bytes = st.binary(min_size=1, max_size=12) | st.binary(min_size=60, max_size=150)
good_chunk = st.one_of(
    data_bytes.map(chunk),
    st.sampled_from([RWND, ENDR, EROR, b"END", b"ENDRx", b"x"]).map(chunk),
    st.sampled_from(
        [{"exited": 3}, {"killed": 9, "retry_same_host": 0}, {"other": 1}, [1, 2], "text"]
    ).map(lambda o: chunk(payload(o))),
    data_bytes.map(lambda d: chunk(d, b"%X" % len(d))),
    data_bytes.map(lambda d: chunk(d, b"000%x" % len(d))),
    data_bytes.map(lambda d: chunk(d, b"%x;name=value" % len(d))),
    data_bytes.map(lambda d: chunk(d, b"%x \t" % len(d))),
    data_bytes.map(lambda d: chunk(d, crlf=b"\n")),
)
bad_chunk = st.sampled_from(
    [
        b"zz\r\nab\r\n",
        b"5\r\nabc\r\n",
        b"2\r\nabcdef\r\n",
        b"-1\r\nx\r\n",
        b"1_0\r\n" + b"x" * 16 + b"\r\n",
        b"+5\r\nabcde\r\n",
        b"\r\n",
        b"a" * 5000 + b"\r\n",
        b"a" * 4100 + b"\n",
        b"12345678901234567\r\n",
        b"10000",
        b"3\r\nabc\rX",
    ]
)
ending = st.sampled_from(
    [
        b"0\r\n\r\n",
        b"0\n\n",
        b"0\r\nX-Trailer: 1\r\n\r\n",
        b"0\r\nX-Trailer: 1\n\n",
        b"0;ext\r\n\r\n",
        b"0\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"0\r\n" + b"T: " + b"v" * 70_000,
        b"",
    ]
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[bytes], bool]:
    chunks = draw(st.lists(st.one_of(good_chunk, good_chunk, good_chunk, bad_chunk), max_size=6))
    if draw(st.booleans()):
        chunks.append(chunk(ENDR))
    if draw(st.integers(0, 9)) == 0:
        chunks.append(chunk(EROR) + chunk(b" " * 70_000))
    wire = HEAD + b"".join(chunks) + draw(ending)
    eof = draw(st.booleans())
    if eof and draw(st.booleans()):
        wire = wire[: draw(st.integers(0, len(wire)))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(wire)), max_size=12))))
    reads, last = [], 0
    for cut in [*cuts, len(wire)]:
        if cut > last:
            reads.append(wire[last:cut])
            last = cut
    return wire, reads, eof


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bodies())
def test_same_outcome_as_reader_and_decoder(case: tuple[bytes, list[bytes], bool]) -> None:
    _, reads, eof = case
    assert run_stream(reads, eof) == run_reference(reads, eof)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.sampled_from([RWND, ENDR, EROR, b"abcd", b"abcde", b"E"]), max_size=6),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    eof=st.booleans(),
)
def test_markers_in_any_split(chunks: list[bytes], cuts: list[int], eof: bool) -> None:
    wire = HEAD + b"".join(chunk(c) for c in chunks) + b"0\r\n\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    reads = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True) if b > a]
    assert run_stream(reads, eof) == run_reference(reads, eof)


def test_outcomes_named() -> None:
    """The differential test compares like with like: these are the outcomes it sees."""
    ok = HEAD + chunk(b"abcdef") + chunk(RWND) + chunk(b"xyz12") + chunk(ENDR) + b"0\r\n\r\n"
    assert run_stream([ok], False) == Outcome("complete", b"xyz12", reusable=True)
    failed = HEAD + chunk(b"abcdef") + chunk(EROR) + chunk(payload({"exited": 2}))
    assert run_stream([failed], False) == Outcome("trailer", b"abcdef", {"exited": 2})
    closed = HEAD + chunk(b"abcdef") + chunk(ENDR)
    assert run_stream([closed], True) == Outcome("complete", b"abcdef", "closed after ENDR")
    short = HEAD + b"10\r\nabc"
    outcome = run_stream([short], True)
    assert outcome.kind == "closed"
    assert outcome.detail == "connection closed inside a chunk, 13 bytes short, after 3 body bytes"
    bad = HEAD + chunk(b"abcdef") + b"zz\r\n"
    assert run_stream([bad], False) == Outcome(
        "broken", b"", "malformed chunk-size line 'zz' after 6 body bytes"
    )
    after = HEAD + chunk(ENDR) + chunk(b"more!")
    assert run_stream([after], False) == Outcome(
        "broken", b"", "data after ENDR (end of request): another chunk followed it"
    )


# --- the stream on its own --------------------------------------------------------------------


def test_large_chunks_are_views_of_the_input() -> None:
    body = bytearray(chunk(b"a" * 1000) + chunk(b"b" * 1000))
    stream = PipeStream()
    items = stream.feed(body)
    assert stream.plain
    assert [bytes(i) for i in items] == [b"a" * 1000, b"b" * 1000]
    for item in items:
        assert isinstance(item, memoryview)
        assert item.obj is body  # a slice of what was fed, not a copy
    assert stream.data_bytes == stream.body_bytes == 2000


def test_a_chunk_split_over_reads_streams_each_part() -> None:
    body = chunk(b"x" * 100) + chunk(ENDR) + b"0\r\n\r\n"
    stream = PipeStream()
    assert [bytes(i) for i in stream.feed(body, 0, 20)] == [b"x" * 16]
    items = stream.feed(body, 20)
    assert bytes(items[0]) == b"x" * 84
    assert items[1:] == [EndOfRequest(), ResponseEnd()]
    assert not stream.plain
    assert stream.ended
    assert stream.done
    assert not stream.stray
    stream.feed_eof()  # quiet once the body is complete


def test_start_and_end_bound_what_is_decoded() -> None:
    body = b"JUNK" + chunk(b"hello") + b"JUNK"
    stream = PipeStream()
    assert [bytes(i) for i in stream.feed(body, 4, len(body) - 4)] == [b"hello"]


def test_small_chunks_are_held_until_complete() -> None:
    stream = PipeStream()
    assert stream.feed(b"4\r\nEN") == []
    assert stream.feed(b"DR\r\n") == [EndOfRequest()]
    assert stream.ended
    stream = PipeStream()
    assert stream.feed(b"3\r\nEN") == []
    assert stream.feed(b"D\r\n") == [b"END"]
    assert stream.plain


def test_rewind_counts() -> None:
    stream = PipeStream()
    items = stream.feed(chunk(b"abcdef") + chunk(RWND) + chunk(RWND))
    assert items[1:] == [Rewind(), Rewind()]
    assert stream.rewinds == 2


def test_bytes_after_the_body_are_stray() -> None:
    stream = PipeStream()
    items = stream.feed(chunk(ENDR) + b"0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert items == [EndOfRequest(), ResponseEnd()]
    assert stream.stray
    assert stream.feed(b"more") == []


def test_nothing_applies_from_a_read_with_broken_framing() -> None:
    stream = PipeStream()
    with pytest.raises(TransferError, match="chunk not followed by CRLF"):
        stream.feed(chunk(b"abcdef") + chunk(ENDR) + b"3\r\nabcd")


def test_terminal_item_then_framing_is_still_checked() -> None:
    # Data after ENDR ends the body's meaning, but broken framing later in the
    # same read still wins, as with the reader and decoder.
    stream = PipeStream()
    items = stream.feed(chunk(ENDR) + chunk(b"abcdef") + chunk(b"ghijkl"))
    assert items[0] == EndOfRequest()
    assert isinstance(items[1], TransferError)
    assert len(items) == 2
    stream = PipeStream()
    with pytest.raises(TransferError, match="malformed chunk-size line"):
        stream.feed(chunk(ENDR) + chunk(b"abcdef") + b"zz\r\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "before the end of the chunked body (after 0 body bytes, no terminating chunk)"),
        (b"5\r\nab", "inside a chunk, 3 bytes short, after 2 body bytes"),
        (b"5\r\nabcde", "before the end of the chunked body (after 5 body bytes"),
        (b"4\r\nEN", "inside a chunk, 2 bytes short, after 2 body bytes"),
        (b"0\r\nX: 1\r\n", "before the end of the chunked body (after 0 body bytes"),
    ],
)
def test_eof_messages(body: bytes, message: str) -> None:
    stream = PipeStream()
    stream.feed(body)
    with pytest.raises(TransferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stream.feed_eof()


def test_mmap_input() -> None:
    import mmap

    body = chunk(b"m" * 200) + chunk(ENDR) + b"0\r\n\r\n"
    buf = mmap.mmap(-1, 4096)
    buf[: len(body)] = body
    stream = PipeStream()
    items = stream.feed(buf, 0, len(body))
    assert bytes(items[0]) == b"m" * 200
    assert items[1:] == [EndOfRequest(), ResponseEnd()]
    del items
    buf.close()


# --- the reader's side of the hand-over -------------------------------------------------------


def test_feed_head_stops_at_the_body() -> None:
    reader = HttpResponseReader()
    reader.expect("POST")
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"5\r\nhello\r\n"
    events, used = reader.feed_head(wire[:10])
    assert (events, used) == ([], 10)
    events, used = reader.feed_head(wire[10:])
    assert isinstance(events[0], ResponseHead)
    assert events[0].status == 200
    assert wire[10 + used :] == b"5\r\nhello\r\n"
    assert reader.response_bytes == len(wire) - len(b"5\r\nhello\r\n")
    reader.hand_over_body()
    assert not reader.reusable
    reader.body_done()
    assert reader.reusable


def test_feed_head_of_a_bodyless_answer_ends_it() -> None:
    reader = HttpResponseReader()
    reader.expect("HEAD")
    events, _used = reader.feed_head(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHead, ResponseEnd]
    assert reader.reusable


def test_stray_bytes_after_a_handed_over_body_make_the_connection_unusable() -> None:
    reader = HttpResponseReader()
    reader.expect("POST")
    reader.feed_head(HEAD)
    reader.hand_over_body()
    reader.body_done(stray=True)
    assert not reader.reusable


def test_hand_over_is_only_for_a_chunked_body_not_begun() -> None:
    reader = HttpResponseReader()
    reader.expect("POST")
    reader.feed_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    with pytest.raises(RuntimeError, match="chunked body not yet begun"):
        reader.hand_over_body()
    with pytest.raises(RuntimeError, match="no body was handed over"):
        reader.body_done()
