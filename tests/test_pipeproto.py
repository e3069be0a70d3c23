"""The pipe protocol without sockets: HTTP response reader, body decoder, classification.

h11 serves as an independent oracle: whatever it makes of a chunked body,
the reader here must make the same (chunk by chunk), for any split of the
bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marsconn.core.errors import JobKilledError, MarsRequestError, TransferError
from marsconn.core.outcome import Action
from marsconn.wire.http_response import (
    BodyPiece,
    HttpEvent,
    HttpResponseReader,
    ResponseEnd,
    ResponseHead,
)
from marsconn.wire.pipe_body import (
    ENDR,
    EROR,
    RWND,
    Data,
    EndOfRequest,
    ErrorTrailer,
    PipeBodyDecoder,
    PipeEvent,
    Rewind,
)
from marsconn.wire.pipe_request import encode_job, encode_request, merged_request
from marsconn.wire.pipe_verdict import PipeStatusError, classify_error_trailer, classify_status

OK_HEAD = b"HTTP/1.1 200 OK\r\nX-MARS-UID: u\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(chunks: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


def feed_all(pieces: list[bytes], method: str = "POST", eof: bool = False) -> list[HttpEvent]:
    reader = HttpResponseReader()
    reader.expect(method)
    events: list[HttpEvent] = []
    for piece in pieces:
        events += reader.feed(piece)
    if eof:
        events += reader.feed_eof()
    return events


def materialise(events: list[Any]) -> list[Any]:
    """Copy views into bytes so events outlive the buffers they point into."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, BodyPiece):
            out.append(BodyPiece(bytes(e.data), e.chunk_start, e.chunk_end))
        elif isinstance(e, Data):
            out.append(Data(bytes(e.data)))
        else:
            out.append(e)
    return out


def chunks_of(events: list[HttpEvent]) -> list[bytes]:
    """Reassemble whole chunks from pieces, checking the boundary flags are consistent."""
    chunks: list[bytes] = []
    current: bytearray | None = None
    for e in events:
        if not isinstance(e, BodyPiece):
            continue
        assert e.data, "pieces are never empty"
        if e.chunk_start:
            assert current is None
            current = bytearray()
        assert current is not None
        current += e.data
        if e.chunk_end:
            chunks.append(bytes(current))
            current = None
    assert current is None
    return chunks


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


# --- HttpResponseReader -----------------------------------------------------------------------


def test_reads_a_chunked_response_keeping_chunk_boundaries() -> None:
    events = feed_all([OK_HEAD + chunked([b"hello", b"RWND", b"world"])])
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.chunked, head.keep_alive) == (200, "OK", True, True)
    assert head.headers["x-mars-uid"] == "u"
    assert chunks_of(events) == [b"hello", b"RWND", b"world"]
    assert events[-1] == ResponseEnd()


def test_pieces_are_views_not_copies() -> None:
    buf = bytearray(OK_HEAD + chunked([b"x" * 1000]))
    events = HttpResponseReader()
    events.expect("POST")
    piece = next(e for e in events.feed(memoryview(buf)) if isinstance(e, BodyPiece))
    assert isinstance(piece.data, memoryview)
    assert piece.data.obj is buf


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    lf_only=st.booleans(),
)
def test_any_split_gives_the_chunks_h11_sees(
    chunks: list[bytes], cuts: list[int], lf_only: bool
) -> None:
    wire = OK_HEAD + chunked(chunks)
    if lf_only:
        wire = wire.replace(b"\r\n\r\n", b"\n\n", 1)
    ours = chunks_of(materialise(feed_all(split(wire, cuts))))

    oracle = h11.Connection(h11.CLIENT)
    oracle.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
    oracle.receive_data(wire)
    theirs: list[bytes] = []
    current = b""
    while True:
        event = oracle.next_event()
        if isinstance(event, h11.Data):
            current += event.data
            if event.chunk_end:
                theirs.append(current)
                current = b""
        elif isinstance(event, h11.EndOfMessage):
            break
    assert ours == theirs == chunks


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
)
def test_content_length_body_any_split(body: bytes, cuts: list[int]) -> None:
    wire = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    events = materialise(feed_all(split(wire, cuts)))
    assert b"".join(bytes(e.data) for e in events if isinstance(e, BodyPiece)) == body
    assert events[-1] == ResponseEnd()
    assert sum(isinstance(e, ResponseEnd) for e in events) == 1


def test_chunk_extensions_and_trailers_are_accepted() -> None:
    wire = OK_HEAD + b"5;name=value\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
    events = feed_all([wire])
    assert chunks_of(events) == [b"hello"]
    assert events[-1] == ResponseEnd()


def test_trailer_split_byte_by_byte() -> None:
    wire = OK_HEAD + b"1\r\na\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
    events = feed_all([wire[i : i + 1] for i in range(len(wire))])
    assert events[-1] == ResponseEnd()
    assert chunks_of(events) == [b"a"]


def test_head_answer_has_no_body_even_if_chunked_is_announced() -> None:
    reader = HttpResponseReader()
    reader.expect("HEAD")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHead, ResponseEnd]
    assert reader.reusable


def test_204_has_no_body_and_connection_is_reused() -> None:
    reader = HttpResponseReader()
    reader.expect("DELETE")
    assert [type(e) for e in reader.feed(b"HTTP/1.1 204 No Content\r\n\r\n")] == [
        ResponseHead,
        ResponseEnd,
    ]
    reader.expect("GET")
    events = reader.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n")
    assert [type(e) for e in events] == [ResponseHead, BodyPiece, ResponseEnd]


def test_interim_responses_are_skipped() -> None:
    events = feed_all([b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HEAD + chunked([b"x"])])
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert [h.status for h in heads] == [200]


def test_body_until_close() -> None:
    events = feed_all([b"HTTP/1.1 200 OK\r\n\r\nabc", b"def"], eof=True)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert not head.keep_alive
    assert b"".join(bytes(e.data) for e in events if isinstance(e, BodyPiece)) == b"abcdef"
    assert events[-1] == ResponseEnd()


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.1 204 No Content\r\nConnection: Keep-Alive, Close\r\n\r\n", False),
        (b"HTTP/1.0 204 No Content\r\n\r\n", False),
        (b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    reader = HttpResponseReader()
    reader.expect("DELETE")
    first = reader.feed(head)[0]
    assert isinstance(first, ResponseHead)
    assert first.keep_alive is keep_alive
    assert reader.reusable is keep_alive
    if not keep_alive:
        with pytest.raises(RuntimeError, match="cannot carry another request"):
            reader.expect("GET")


def test_repeated_headers_are_joined() -> None:
    head = feed_all([b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nx-a: 2\r\n\r\n"])[0]
    assert isinstance(head, ResponseHead)
    assert head.headers["x-a"] == "1, 2"


def test_stray_bytes_after_a_response_make_the_connection_unusable() -> None:
    reader = HttpResponseReader()
    reader.expect("DELETE")
    events = reader.feed(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHead, ResponseEnd]
    assert not reader.reusable


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
        (b"ICY 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "unsupported HTTP version 2.0"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nA: 1\r\n  folded\r\n\r\n", "folded header line"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (OK_HEAD + b"zz\r\n", "malformed chunk-size line 'zz' after 0 body bytes"),
        (OK_HEAD + b"\r\n", "malformed chunk-size line"),
        (OK_HEAD + b"3\r\nabcd\r\n", "chunk not followed by CRLF"),
        (OK_HEAD + b"3\r\nabc\n\n", "chunk not followed by CRLF"),
        (OK_HEAD + b"1" * 5000, "chunk-size line longer than"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "response head larger than"),
        (b"\r\n\r\n", "empty response head"),
    ],
)
def test_protocol_violations_are_named(wire: bytes, message: str) -> None:
    with pytest.raises(TransferError, match=message):
        feed_all([wire])


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "connection closed before the response head was complete"),
        (b"HTTP/1.1 200", "before the response head was complete after 12 bytes"),
        (b"HTTP/1.1 400 Bad\r\nContent-Length: 10\r\n\r\nabc", "after 3 of 10 body bytes"),
        (OK_HEAD + b"a\r\nabc", "inside a chunk, 7 bytes short"),
        (OK_HEAD + b"3\r\nabc\r\n", "no terminating chunk"),
        (OK_HEAD + b"3\r\nabc\r\n0\r\n", "no terminating chunk"),
    ],
)
def test_early_close_is_named(wire: bytes, message: str) -> None:
    with pytest.raises(TransferError, match=message):
        feed_all([wire], eof=True)


def test_eof_after_a_complete_response_is_quiet() -> None:
    reader = HttpResponseReader()
    reader.expect("HEAD")
    reader.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert reader.feed_eof() == []
    assert not reader.reusable


# --- PipeBodyDecoder --------------------------------------------------------------------------


def decode(chunks: list[list[bytes]]) -> list[PipeEvent]:
    """Feed chunks, each given as its list of pieces."""
    decoder = PipeBodyDecoder()
    events: list[PipeEvent] = []
    for pieces in chunks:
        for i, piece in enumerate(pieces):
            events += decoder.feed(piece, i == 0, i == len(pieces) - 1)
    events += decoder.finish()
    return materialise(events)


def test_markers_are_whole_chunks() -> None:
    events = decode([[b"abc"], [RWND], [b"defg"], [ENDR]])
    assert events == [Data(b"abc"), Rewind(), Data(b"defg"), EndOfRequest()]


@pytest.mark.parametrize(
    "chunk",
    [b"ENDRx", b"xENDR", b"END", b"endr", b"ENDR\n", b"RWN", b"abcd", b"xxxxENDRxxxx"],
)
def test_chunks_that_merely_contain_a_marker_are_data(chunk: bytes) -> None:
    assert decode([[chunk], [ENDR]]) == [Data(chunk), EndOfRequest()]


def test_marker_split_over_pieces_is_still_a_marker() -> None:
    assert decode([[b"E", b"N", b"DR"]]) == [EndOfRequest()]
    assert decode([[b"RW", b"ND"], [b"E", b"NDR"]]) == [Rewind(), EndOfRequest()]


def test_large_chunk_streams_without_holding_it() -> None:
    decoder = PipeBodyDecoder()
    assert decoder.feed(b"EN", True, False) == []  # could still be a marker
    out = decoder.feed(b"DR and more", False, False)
    assert materialise(out) == [Data(b"EN"), Data(b"DR and more")]
    big = memoryview(b"x" * 100_000)
    (event,) = decoder.feed(big, False, True)
    assert isinstance(event, Data)
    assert event.data is big  # passed through, not copied
    assert decoder.data_bytes == 2 + 11 + 100_000


def test_error_trailer() -> None:
    payload = {"killed": 9, "retry_next_host": True, "retry_same_host": False}
    raw = json.dumps(payload).encode()
    events = decode([[b"data"], [EROR], [raw[:5], raw[5:]]])
    assert events == [Data(b"data"), ErrorTrailer(payload)]


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([[b"abc"]], "ended without ENDR after 3 data bytes"),
        ([], "ended without ENDR after 0 data bytes"),
        ([[b"abc"], [ENDR], [b"x"]], "data after ENDR"),
        ([[ENDR], [ENDR]], "data after ENDR"),
        ([[ENDR], [RWND]], "data after ENDR"),
        ([[EROR]], "after EROR without the JSON object chunk"),
        ([[EROR], [b"not json"]], "EROR was not followed by a JSON object chunk"),
        ([[EROR], [b"[1, 2]"]], "EROR was not followed by a JSON object chunk"),
        ([[EROR], [ENDR]], "EROR was not followed by a JSON object chunk"),
        ([[EROR], [b"\xff\xfe"]], "EROR was not followed by a JSON object chunk"),
        ([[EROR], [b'{"exited": 1}'], [b"x"]], "data after the EROR payload"),
        ([[EROR], [b" " * 70_000]], "larger than"),
    ],
)
def test_malformed_bodies(chunks: list[list[bytes]], message: str) -> None:
    with pytest.raises(TransferError, match=message):
        decode(chunks)


def test_pieces_must_respect_chunk_boundaries() -> None:
    decoder = PipeBodyDecoder()
    with pytest.raises(TransferError, match="outside any chunk"):
        decoder.feed(b"x", False, False)
    decoder = PipeBodyDecoder()
    decoder.feed(b"x", True, False)
    with pytest.raises(TransferError, match="began before the previous one ended"):
        decoder.feed(b"y", True, True)
    decoder = PipeBodyDecoder()
    decoder.feed(b"x", True, False)
    with pytest.raises(TransferError, match="inside a chunk"):
        decoder.finish()


def test_ended_flag() -> None:
    decoder = PipeBodyDecoder()
    decoder.feed(b"abc", True, True)
    assert not decoder.ended
    decoder.feed(ENDR, True, True)
    assert decoder.ended


def reference(chunks: list[bytes]) -> bytes | None:
    """What a body of whole chunks means: the output, or None for a malformed body."""
    out = bytearray()
    for i, c in enumerate(chunks):
        if c == RWND:
            out.clear()
        elif c == ENDR:
            return bytes(out) if i == len(chunks) - 1 else None
        else:
            out += c
    return None  # no ENDR


# EROR changes what the next chunk means; its tests are separate.
chunk_strategy = st.one_of(
    st.sampled_from([RWND, b"ENDRx", b"END", b"RWNDRWND", b"abcd"]),
    st.binary(min_size=1, max_size=30).filter(lambda c: c != EROR),
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(chunk_strategy, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
    end=st.booleans(),
)
def test_any_split_of_the_wire_gives_the_same_output(
    chunks: list[bytes], cuts: list[int], end: bool
) -> None:
    body = [*chunks, ENDR] if end else chunks
    wire = OK_HEAD + chunked(body)
    reader = HttpResponseReader()
    reader.expect("POST")
    decoder = PipeBodyDecoder()
    out = bytearray()
    try:
        for piece in split(wire, cuts):
            for event in reader.feed(piece):
                if isinstance(event, BodyPiece):
                    for item in decoder.feed(event.data, event.chunk_start, event.chunk_end):
                        if isinstance(item, Data):
                            out += item.data
                        elif isinstance(item, Rewind):
                            out.clear()
                        else:
                            assert isinstance(item, EndOfRequest)
                elif isinstance(event, ResponseEnd):
                    decoder.finish()
    except TransferError:
        assert reference(body) is None
        return
    assert decoder.ended
    assert bytes(out) == reference(body)


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "error_class"),
    [
        (400, Action.FINAL, "mars_rejected"),
        (500, Action.SAME_SERVER, "http_500"),
        (502, Action.SAME_SERVER, "http_502"),
        (503, Action.SAME_SERVER, "http_503"),
        (504, Action.SAME_SERVER, "http_504"),
        (408, Action.SAME_SERVER, "http_408"),
        (429, Action.NEXT_SERVER, "http_429"),
        (404, Action.NEXT_SERVER, "http_404"),
        (401, Action.NEXT_SERVER, "http_401"),
        (301, Action.NEXT_SERVER, "redirected"),
        (501, Action.NEXT_SERVER, "http_501"),
    ],
)
def test_status_defaults(status: int, action: Action, error_class: str) -> None:
    verdict = classify_status(status, {}, server="http://s:9000")
    assert (verdict.action, verdict.error_class) == (action, error_class)
    if status != 400:
        assert isinstance(verdict.error, PipeStatusError)
        assert verdict.error.status == status
        assert f"HTTP {status}" in str(verdict.error)


def test_200_is_success() -> None:
    assert classify_status(200, {}) == (Action.SUCCESS, None, None, True)


def test_400_carries_the_exit_code() -> None:
    verdict = classify_status(
        400, {"X-MARS-EXIT-CODE": "7"}, server="http://s:9000", detail='{"exited": 7}'
    )
    assert verdict.action is Action.FINAL
    assert isinstance(verdict.error, MarsRequestError)
    assert verdict.error.returncode == 7
    assert verdict.error.server == "http://s:9000"
    assert "code 7 on http://s:9000" in str(verdict.error)
    assert '{"exited": 7}' in str(verdict.error)
    missing = classify_status(400, {"x-mars-exit-code": "junk"}).error
    assert isinstance(missing, MarsRequestError)
    assert missing.returncode is None


def test_killed_before_data() -> None:
    verdict = classify_status(500, {"X-MARS-SIGNAL": "9"}, server="s")
    assert (verdict.action, verdict.error_class) == (Action.SAME_SERVER, "mars_killed")
    assert isinstance(verdict.error, JobKilledError)
    assert "signal 9 on s" in str(verdict.error)


@pytest.mark.parametrize(
    ("status", "headers", "action"),
    [
        (500, {"X-MARS-RETRY-SAME-HOST": "0"}, Action.NEXT_SERVER),
        (500, {"X-MARS-RETRY-SAME-HOST": "0", "X-MARS-RETRY-NEXT-HOST": "0"}, Action.FINAL),
        (503, {"x-mars-retry-same-host": "false", "x-mars-retry-next-host": "no"}, Action.FINAL),
        (429, {"X-MARS-RETRY-SAME-HOST": "1"}, Action.SAME_SERVER),
        (429, {"X-MARS-RETRY-NEXT-HOST": "0"}, Action.FINAL),
        (400, {"X-MARS-RETRY-NEXT-HOST": "1"}, Action.NEXT_SERVER),
        (400, {"X-MARS-RETRY-SAME-HOST": "1"}, Action.SAME_SERVER),
        (404, {"X-MARS-RETRY-NEXT-HOST": "0"}, Action.FINAL),
        (500, {"X-MARS-RETRY-SAME-HOST": "maybe"}, Action.SAME_SERVER),  # unreadable: default
        (
            500,
            {"X-MARS-RETRY-SAME-HOST": " 1 ", "X-MARS-RETRY-NEXT-HOST": "0"},
            Action.SAME_SERVER,
        ),
    ],
)
def test_headers_override_defaults(status: int, headers: dict[str, str], action: Action) -> None:
    assert classify_status(status, headers).action is action


@given(
    status=st.integers(min_value=300, max_value=599),
    same=st.sampled_from([None, "0", "1"]),
    nxt=st.sampled_from([None, "0", "1"]),
)
def test_override_rule(status: int, same: str | None, nxt: str | None) -> None:
    headers = {}
    if same is not None:
        headers["X-MARS-RETRY-SAME-HOST"] = same
    if nxt is not None:
        headers["X-MARS-RETRY-NEXT-HOST"] = nxt
    want_same = same == "1" if same else status in (500, 502, 503, 504, 408)
    want_next = nxt == "1" if nxt else status != 400
    expected = (
        Action.SAME_SERVER if want_same else Action.NEXT_SERVER if want_next else Action.FINAL
    )
    assert classify_status(status, headers).action is expected


def test_error_trailer_exited_is_final() -> None:
    verdict = classify_error_trailer({"exited": 3}, server="s")
    assert (verdict.action, verdict.error_class) == (Action.FINAL, "mars_rejected")
    assert isinstance(verdict.error, MarsRequestError)
    assert verdict.error.returncode == 3


@pytest.mark.parametrize(
    ("same", "nxt", "action"),
    [
        (True, True, Action.SAME_SERVER),
        (True, False, Action.SAME_SERVER),
        (False, True, Action.NEXT_SERVER),
        (False, False, Action.FINAL),
        (None, None, Action.SAME_SERVER),
        (None, False, Action.SAME_SERVER),
        (False, None, Action.NEXT_SERVER),
    ],
)
def test_error_trailer_killed_follows_its_flags(
    same: bool | None, nxt: bool | None, action: Action
) -> None:
    payload: dict[str, Any] = {"killed": 9}
    if same is not None:
        payload["retry_same_host"] = same
    if nxt is not None:
        payload["retry_next_host"] = nxt
    verdict = classify_error_trailer(payload, server="s")
    assert (verdict.action, verdict.error_class) == (action, "mars_killed")
    assert isinstance(verdict.error, JobKilledError)
    assert "signal 9 on s" in str(verdict.error)


def test_error_trailer_flags_may_be_integers() -> None:
    payload = {"killed": 15, "retry_same_host": 0, "retry_next_host": 1}
    assert classify_error_trailer(payload).action is Action.NEXT_SERVER
    odd = {"killed": 15, "retry_same_host": 2, "retry_next_host": 0}  # 2: unreadable, default
    assert classify_error_trailer(odd).action is Action.SAME_SERVER


@pytest.mark.parametrize("payload", [{}, {"exited": "1"}, {"exited": True}, {"other": 1}])
def test_unknown_error_trailer_is_a_broken_transfer(payload: dict[str, Any]) -> None:
    verdict = classify_error_trailer(payload)
    assert (verdict.action, verdict.error_class) == (Action.NEXT_SERVER, "transfer_broken")
    assert isinstance(verdict.error, TransferError)


# --- requests ---------------------------------------------------------------------------------


def test_merged_request_later_keys_win() -> None:
    requests = [{"a": 1, "b": 1}, {"b": 2}, {"c": 3, "a": 4}]
    assert merged_request(requests, 0) == {"a": 1, "b": 1}
    assert merged_request(requests, 1) == {"a": 1, "b": 2}
    assert merged_request(requests, 2) == {"a": 4, "b": 2, "c": 3}
    assert requests[0] == {"a": 1, "b": 1}  # inputs untouched


def test_encoded_request_parses_as_http() -> None:
    body = encode_job({"param": "2t"}, {"request_id": "r"})
    assert json.loads(body) == {"request": {"param": "2t"}, "environ": {"request_id": "r"}}
    wire = encode_request(
        "POST",
        "/mars/?x=1",
        "example.org:9000",
        body,
        content_type="application/json",
        userinfo="us%40er:p%3Ass",
        user_agent="marsconn/test",
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (b"POST", b"/mars/?x=1")
    headers = dict(request.headers)
    assert headers[b"host"] == b"example.org:9000"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"user-agent"] == b"marsconn/test"
    assert base64.b64decode(headers[b"authorization"].split()[1]) == b"us@er:p:ss"
    data = server.next_event()
    assert isinstance(data, h11.Data)
    assert data.data == body


def test_bodyless_request() -> None:
    wire = encode_request("HEAD", "/", "h")
    assert wire == b"HEAD / HTTP/1.1\r\nHost: h\r\nUser-Agent: marsconn\r\n\r\n"
