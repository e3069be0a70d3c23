"""Tests of the in-process MARS pipe server, spoken to over raw sockets.

The client here is hand-written on asyncio streams and keeps chunk
boundaries, because in this protocol a chunk of exactly ``RWND``, ``ENDR``
or ``EROR`` means something that an ordinary HTTP client would hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from marsconn.testing._pipe_server import PipeMarsServer
from marsconn.testing._script import MarsScript, expected_data

UID_RE = re.compile(r"[a-f0-9-]{36}")
MARKERS = (b"RWND", b"ENDR", b"EROR")
RID = "0b5a1d2e-3c4f-4a6b-8c7d-9e0f1a2b3c4d"
JOB = {"request": {"class": "ea", "param": "2t"}, "environ": {"request_id": RID}}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One HTTP/1.1 connection; requests are written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, server: PipeMarsServer, ssl_context: ssl.SSLContext | None = None
    ) -> Client:
        url = urlsplit(server.url)
        assert url.hostname is not None
        reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=ssl_context)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def send(
        self,
        method: str,
        path: str = "/",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: mars"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await self.writer.drain()

    async def post(self, job: Any = JOB, headers: dict[str, str] | None = None) -> Response:
        await self.send("POST", "/", json.dumps(job).encode(), headers)
        return await self.response()

    async def response(self, *, head: bool = False) -> Response:
        status_line = await self.reader.readuntil(b"\r\n")
        version, status, _ = status_line.decode().split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        response = Response(int(status), headers)
        if head or response.status in (204, 304):
            return response
        if headers.get("transfer-encoding") == "chunked":
            response.chunks, response.complete = await self._read_chunks()
        else:
            response.body = await self.reader.readexactly(int(headers["content-length"]))
        return response

    async def _read_chunks(self) -> tuple[list[bytes], bool]:
        chunks: list[bytes] = []
        try:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return chunks, True
                chunks.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
        except asyncio.IncompleteReadError:
            return chunks, False


def data_of(chunks: list[bytes]) -> bytes:
    return b"".join(c for c in chunks if c not in MARKERS)


@pytest.fixture
async def server() -> AsyncIterator[PipeMarsServer]:
    async with PipeMarsServer() as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
async def client(server: PipeMarsServer) -> AsyncIterator[Client]:
    conn = await Client.connect(server)
    yield conn
    await conn.close()


async def test_url_and_port(server: PipeMarsServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


async def test_port_before_start_raises() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = PipeMarsServer().port


async def test_head_is_a_204_ping(client: Client) -> None:
    await client.send("HEAD")
    response = await client.response(head=True)
    assert response.status == 204
    assert "content-length" not in response.headers


async def test_post_streams_data_then_endr(server: PipeMarsServer, client: Client) -> None:
    size = 200_000  # not a multiple of the chunk size: the last chunk is short
    server.script = script = MarsScript(output_size=size, seed=7, chunk_size=65536)
    response = await client.post()

    assert response.status == 200
    uid = response.headers["x-mars-uid"]
    assert uid == RID  # the real server names the log after the request id
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.complete
    assert response.chunks[-1] == b"ENDR"
    assert [len(c) for c in response.chunks[:-1]] == [65536, 65536, 65536, size - 3 * 65536]
    assert b"".join(response.chunks[:-1]) == expected_data(size, 7)

    [record] = server.posts
    assert record.uid == uid
    assert record.request == JOB["request"]
    assert record.environ == JOB["environ"]
    assert (record.status, record.outcome, record.bytes_sent) == (200, "complete", size)
    assert server.logs[uid] == script.log_text()


async def test_odd_chunk_size_crosses_block_boundaries(
    server: PipeMarsServer, client: Client
) -> None:
    server.script = MarsScript(output_size=150_001, seed=3, chunk_size=1000)
    response = await client.post()
    assert response.chunks[-1] == b"ENDR"
    assert all(len(c) == 1000 for c in response.chunks[:-2])
    assert data_of(response.chunks) == expected_data(150_001, 3)


async def test_zero_bytes_of_output(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(output_size=0)
    response = await client.post()
    assert (response.status, response.chunks, response.complete) == (200, [b"ENDR"], True)


async def test_script_function_sees_requests_as_list() -> None:
    seen: list[list[dict[str, Any]]] = []

    def choose(requests: list[dict[str, Any]]) -> MarsScript:
        seen.append(requests)
        return MarsScript(output_size=10 * len(requests))

    async with PipeMarsServer(choose) as srv:
        conn = await Client.connect(srv)
        one = await conn.post()
        two = await conn.post({"request": [{"a": 1}, {"b": 2}], "environ": {}})
        await conn.close()
    assert seen == [[JOB["request"]], [{"a": 1}, {"b": 2}]]
    assert len(data_of(one.chunks)) == 10
    assert len(data_of(two.chunks)) == 20
    assert srv.posts[1].request == [{"a": 1}, {"b": 2}]


async def test_rewind_at_exact_byte_then_full_data(server: PipeMarsServer, client: Client) -> None:
    size, rewind = 200_000, 100_000  # the rewind falls inside the second chunk
    server.script = MarsScript(output_size=size, chunk_size=65536, rewind_after=rewind)
    response = await client.post()

    assert response.complete
    assert response.chunks.count(b"RWND") == 1
    at = response.chunks.index(b"RWND")
    before, after = response.chunks[:at], response.chunks[at + 1 :]
    assert b"".join(before) == expected_data(rewind)
    assert after[-1] == b"ENDR"
    assert b"".join(after[:-1]) == expected_data(size)
    assert server.posts[0].bytes_sent == rewind + size
    assert server.posts[0].outcome == "complete"


async def test_error_after_sends_eror_and_json(server: PipeMarsServer, client: Client) -> None:
    payload = {"killed": 9, "retry_next_host": True, "retry_same_host": False}
    server.script = MarsScript(
        output_size=100_000, chunk_size=4096, error_after=10_000, error_payload=payload
    )
    response = await client.post()

    assert response.complete  # the terminating chunk is there, but no ENDR
    assert b"ENDR" not in response.chunks
    assert response.chunks[-2] == b"EROR"
    assert json.loads(response.chunks[-1]) == payload
    assert b"".join(response.chunks[:-2]) == expected_data(10_000)
    assert (server.posts[0].outcome, server.posts[0].bytes_sent) == ("error", 10_000)


async def test_die_after_bytes_drops_the_connection(
    server: PipeMarsServer, client: Client
) -> None:
    server.script = MarsScript(output_size=100_000, chunk_size=4096, die_after_bytes=50_000)
    response = await client.post()

    assert response.status == 200
    assert not response.complete
    assert not set(response.chunks) & set(MARKERS)
    assert b"".join(response.chunks) == expected_data(50_000)
    assert await client.reader.read() == b""
    assert (server.posts[0].outcome, server.posts[0].bytes_sent) == ("dropped", 50_000)


async def test_omit_endr_ends_cleanly_without_marker(
    server: PipeMarsServer, client: Client
) -> None:
    server.script = MarsScript(output_size=5000, chunk_size=1024, omit_endr=True)
    response = await client.post()
    assert response.complete
    assert b"ENDR" not in response.chunks
    assert b"".join(response.chunks) == expected_data(5000)


async def test_400_mars_exited(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(
        http_status=400,
        returncode=3,
        retry_same_host=False,
        retry_next_host=True,
        log_lines=("mars - ERROR - Unknown parameter foo",),
    )
    response = await client.post()

    assert response.status == 400
    assert response.json() == {"exited": 3}
    assert response.headers["x-mars-exit-code"] == "3"
    assert response.headers["x-mars-retry-same-host"] == "0"
    assert response.headers["x-mars-retry-next-host"] == "1"
    # As the real server: the rejection names MARS's log, which stays for GET/DELETE.
    assert response.headers["x-mars-uid"] == RID
    [record] = server.posts
    assert (record.uid, record.status, record.outcome) == (RID, 400, "rejected")
    assert server.logs == {RID: "mars - ERROR - Unknown parameter foo\n"}
    await client.send("GET", f"/{RID}")
    assert (await client.response()).body == b"mars - ERROR - Unknown parameter foo\n"
    await client.send("DELETE", f"/{RID}")
    assert (await client.response()).status == 204
    assert (server.logs, server.deleted) == ({}, [RID])


async def test_nonzero_returncode_alone_means_400(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(returncode=2)
    response = await client.post()
    assert response.status == 400
    assert response.headers["x-mars-exit-code"] == "2"
    assert "x-mars-retry-same-host" not in response.headers


async def test_500_mars_killed(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(http_status=500, retry_same_host=True)
    response = await client.post()

    assert response.status == 500
    assert response.json() == {"killed": 9}
    assert response.headers["x-mars-signal"] == "9"
    assert response.headers["x-mars-uid"] == RID
    assert RID in server.logs
    assert response.headers["x-mars-retry-same-host"] == "1"
    assert "x-mars-retry-next-host" not in response.headers
    assert "x-mars-exit-code" not in response.headers


@pytest.mark.parametrize("status", [503, 429])
async def test_other_failure_statuses(server: PipeMarsServer, client: Client, status: int) -> None:
    server.script = MarsScript(http_status=status, retry_next_host=False)
    response = await client.post()

    assert response.status == status
    assert set(response.json()) == {"error"}
    assert response.headers["x-mars-retry-next-host"] == "0"
    assert "x-mars-signal" not in response.headers
    assert "x-mars-exit-code" not in response.headers
    # What a proxy in front might answer: MARS never ran, there is no log.
    assert "x-mars-uid" not in response.headers
    assert server.logs == {}
    assert server.posts[0].outcome == "rejected"


async def test_log_get_delete_get(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(log_lines=("mars - INFO - one", "mars - WARNING - two"))
    uid = (await client.post()).headers["x-mars-uid"]

    await client.send("GET", f"/{uid}")
    log = await client.response()
    assert log.status == 200
    assert log.headers["content-type"].startswith("text/plain")
    assert log.body == b"mars - INFO - one\nmars - WARNING - two\n"

    await client.send("DELETE", f"/{uid}")
    assert (await client.response()).status == 204
    assert uid not in server.logs
    assert server.deleted == [uid]

    await client.send("GET", f"/{uid}")
    assert (await client.response()).status == 404
    # Like the real server: DELETE of a well-formed uid is 204, log or not.
    await client.send("DELETE", f"/{uid}")
    assert (await client.response()).status == 204
    assert server.deleted == [uid]


async def test_uid_is_a_fresh_uuid4_without_a_request_id(server: PipeMarsServer) -> None:
    conn = await Client.connect(server)
    absent = await conn.post({"request": {"param": "2t"}, "environ": {}})
    null = await conn.post({"request": {"param": "2t"}, "environ": {"request_id": None}})
    await conn.close()
    uids = [absent.headers["x-mars-uid"], null.headers["x-mars-uid"]]
    for uid in uids:
        assert UID_RE.fullmatch(uid)
        assert uuid.UUID(uid).version == 4
    assert uids[0] != uids[1]
    assert set(server.logs) == set(uids)


async def test_a_request_id_not_of_the_uuid_form_leaves_its_log_unreachable(
    server: PipeMarsServer, client: Client
) -> None:
    # The real server names the log after any request id but serves only uuid-shaped ones.
    response = await client.post({"request": {"param": "2t"}, "environ": {"request_id": "r-1"}})
    assert response.headers["x-mars-uid"] == "r-1"
    for method in ("GET", "DELETE"):
        await client.send(method, "/r-1")
        assert (await client.response()).status == 404
    assert set(server.logs) == {"r-1"}


async def test_mars_writing_nothing_gets_no_answer_and_keeps_its_log(
    server: PipeMarsServer, client: Client
) -> None:
    server.script = MarsScript(write_file=False, log_lines=("mars - INFO - nothing",))
    await client.send("POST", "/", json.dumps(JOB).encode())
    assert await client.reader.read() == b""  # closed without a byte
    [record] = server.posts
    assert (record.uid, record.status, record.outcome) == (RID, 0, "no_answer")
    assert server.logs == {RID: "mars - INFO - nothing\n"}


@pytest.mark.parametrize(
    "uid",
    [
        "nope",
        "0" * 35,
        "0" * 37,
        "ABCDEF00-0000-4000-8000-000000000000",  # upper case is not the server's format
        "zzzzzzzz-0000-4000-8000-000000000000",
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_malformed_or_unknown_uid_is_404(client: Client, method: str, uid: str) -> None:
    await client.send(method, f"/{uid}")
    assert (await client.response()).status == 404


async def test_unknown_well_formed_uid_is_404(client: Client) -> None:
    await client.send("GET", "/00000000-0000-4000-8000-000000000000")
    assert (await client.response()).status == 404


async def test_keep_alive_several_requests_on_one_connection(
    server: PipeMarsServer, client: Client
) -> None:
    await client.send("HEAD")
    assert (await client.response(head=True)).status == 204
    first = await client.post()
    server.script = MarsScript(http_status=503)
    second = await client.post()
    server.script = MarsScript(output_size=10)
    third = await client.post()
    assert (first.status, second.status, third.status) == (200, 503, 200)
    assert first.chunks[-1] == third.chunks[-1] == b"ENDR"
    assert len(server.posts) == 3


async def test_connection_close_is_honoured(client: Client) -> None:
    response = await client.post(headers={"Connection": "close"})
    assert response.headers["connection"] == "close"
    assert response.chunks[-1] == b"ENDR"
    assert await client.reader.read() == b""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"environ": {}}', "'request'"),
        (b'{"request": {}}', "'environ'"),
        (b'{"request": 5, "environ": {}}', "'request' must be"),
        (b'{"request": [], "environ": {}}', "'request' must be"),
        (b'{"request": [{}, 1], "environ": {}}', "'request' must be"),
        (b'{"request": {}, "environ": []}', "'environ' must be"),
    ],
)
async def test_invalid_job_is_400_json(
    server: PipeMarsServer, client: Client, body: bytes, message: str
) -> None:
    await client.send("POST", "/", body)
    response = await client.response()
    assert response.status == 400
    assert message in response.json()["error"]
    assert (server.posts[0].status, server.posts[0].outcome) == (400, "rejected")
    # The body was read, so the connection stays usable.
    await client.send("HEAD")
    assert (await client.response(head=True)).status == 204


async def test_post_without_content_length_is_411(client: Client) -> None:
    await client.send("POST", "/", headers={"Transfer-Encoding": "chunked"})
    response = await client.response()
    assert response.status == 411
    assert await client.reader.read() == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    ],
)
async def test_unparsable_requests(client: Client, raw: bytes, status: int) -> None:
    client.writer.write(raw)
    response = await client.response()
    assert response.status == status
    assert await client.reader.read() == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 405), ("PUT", "/", 405), ("PUT", "/x", 405), ("GET", "/a/b", 404)],
)
async def test_other_methods_and_paths(
    client: Client, method: str, path: str, status: int
) -> None:
    await client.send(method, path)
    assert (await client.response()).status == status


async def test_run_time_delays_the_status_line(server: PipeMarsServer, client: Client) -> None:
    server.script = MarsScript(run_time=0.2)
    started = time.monotonic()
    await client.send("POST", "/", json.dumps(JOB).encode())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.readuntil(b"\r\n"), 0.05)
    status_line = await client.reader.readuntil(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started >= 0.2


async def test_broken_script_function_is_reported() -> None:
    def broken(requests: list[dict[str, Any]]) -> MarsScript:
        raise KeyError("no script for this")

    async with PipeMarsServer(broken) as srv:
        conn = await Client.connect(srv)
        response = await conn.post()
        await conn.close()
    assert response.status == 500
    assert response.headers["x-mars-retry-same-host"] == "0"
    assert response.headers["x-mars-retry-next-host"] == "0"
    assert [type(e) for e in srv.errors] == [KeyError]


async def test_stop_closes_open_connections_mid_stream() -> None:
    script = MarsScript(output_size=1_000_000, chunk_size=1000, line_delay=0.01)
    srv = PipeMarsServer(script)
    await srv.start()
    streaming = await Client.connect(srv)
    idle = await Client.connect(srv)
    await streaming.send("POST", "/", json.dumps(JOB).encode())
    await streaming.reader.readuntil(b"\r\n\r\n")
    await streaming.reader.readexactly(100)  # the body is flowing
    await idle.send("HEAD")
    await idle.response(head=True)

    await asyncio.wait_for(srv.stop(), 2)
    await srv.stop()  # idempotent
    assert await asyncio.wait_for(idle.reader.read(), 2) == b""
    rest = await asyncio.wait_for(streaming.reader.read(), 2)
    assert b"ENDR" not in rest
    assert srv.posts[0].outcome == "dropped"
    await streaming.close()
    await idle.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", srv.port)


async def test_client_leaving_mid_stream_is_recorded_as_dropped() -> None:
    script = MarsScript(output_size=10_000_000, chunk_size=1000, line_delay=0.001)
    async with PipeMarsServer(script) as srv:
        conn = await Client.connect(srv)
        await conn.send("POST", "/", json.dumps(JOB).encode())
        await conn.reader.readuntil(b"\r\n\r\n")
        conn.writer.transport.abort()
        for _ in range(200):
            if srv.posts[0].outcome == "dropped" and not srv._tasks:
                break
            await asyncio.sleep(0.01)
        assert not srv._tasks
    assert srv.posts[0].outcome == "dropped"
    assert srv.errors == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    script = MarsScript(output_size=300_000, seed=5, chunk_size=65536, rewind_after=1000)

    async with PipeMarsServer(script, ssl=server_context) as srv:
        assert srv.url == f"https://localhost:{srv.port}"
        conn = await Client.connect(srv, client_context)
        await conn.send("HEAD")
        assert (await conn.response(head=True)).status == 204
        response = await conn.post()
        uid = response.headers["x-mars-uid"]
        await conn.send("GET", f"/{uid}")
        log = await conn.response()
        await conn.close()

    assert response.status == 200
    at = response.chunks.index(b"RWND")
    assert b"".join(response.chunks[:at]) == expected_data(1000, 5)
    assert response.chunks[-1] == b"ENDR"
    assert b"".join(response.chunks[at + 1 : -1]) == expected_data(300_000, 5)
    assert log.body == script.log_text().encode()


async def test_tls_die_after_bytes_delivers_exact_prefix(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    script = MarsScript(output_size=500_000, chunk_size=65536, die_after_bytes=300_000)

    async with PipeMarsServer(script, ssl=server_context) as srv:
        conn = await Client.connect(srv, client_context)
        response = await conn.post()
        await conn.close()
    assert not response.complete
    assert b"".join(response.chunks) == expected_data(300_000)
