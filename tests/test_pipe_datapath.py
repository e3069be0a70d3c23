"""The pipe transport's data path: buffers sized to the transfer, one shared stream buffer.

A job's body is decoded and written inside the protocol callback, into a
buffer that the streaming connections of a thread share; each connection
has only a small buffer of its own for heads, error bodies and MARS's log,
which grows for a long body and shrinks before the next request. These
tests check what that must never change: every byte of every job, whatever
interleaves, and a connection costing a small buffer until it needs more.
Servers are real, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import marsconn
from marsconn.run.health import ServerHealth
from marsconn.run.pipe_connection import (
    READ_BUFFER,
    READ_BUFFER_MAX,
    STREAM_THREADS,
    THREAD_AFTER,
    _Conn,
    _open,
    _SharedBuffer,
    _StreamThreads,
    _Wire,
)
from marsconn.run.pipe_partfile import temp_path_pattern
from marsconn.testing import MarsScript, PipeMarsServer, expected_data, iter_data

Factory = Callable[..., PipeMarsServer]


class NullAudit:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def plan(urls: list[str], **overrides: Any) -> marsconn.ConnectionPlan:
    settings: dict[str, Any] = {
        "servers": urls,
        "failover_order": "listed",
        "retry_delay": 0,
        "max_retries": 1,
        "connect_timeout": 10,
        "request_timeout": 10,
        "read_timeout": 10,
    }
    settings.update(overrides)
    return marsconn.resolve_plan(env={}, overrides=settings, logger=NullAudit())


def environ() -> dict[str, str]:
    return {
        "request_id": str(uuid.uuid4()),
        "user_id": "u",
        "namespace": "tests",
        "host": "h",
        "username": "tests:1",
    }


async def run(p: marsconn.ConnectionPlan, target: Path, **request: Any) -> marsconn.Result:
    return await marsconn.execute_async(
        p,
        {"param": "2t", **request},
        environ(),
        target,
        health=ServerHealth(),
        audit_logger=NullAudit(),
    )


def matches(path: Path, size: int, seed: int) -> bool:
    with path.open("rb") as f:
        for piece in iter_data(size, seed=seed, chunk_size=1 << 20):
            if f.read(len(piece)) != piece:
                return False
        return f.read(1) == b""


def names(directory: Path) -> list[str]:
    """Every name in ``directory``, hidden ones included (tests touch small local dirs)."""
    return sorted(p.name for p in directory.iterdir())


def wires() -> list[_Wire]:
    return [o for o in gc.get_objects() if isinstance(o, _Wire)]


def by_request(requests: list[dict[str, Any]]) -> MarsScript:
    """The script a job asks for: ``size``, ``seed`` and ``hold`` (MARS's run time)."""
    r = requests[0]
    return MarsScript(
        output_size=int(r.get("size", 1024)),
        seed=int(r.get("seed", 0)),
        run_time=float(r.get("hold", 0)),
        chunk_size=65536,
        line_delay=float(r.get("delay", 0)),
    )


# --- many jobs at once ------------------------------------------------------------------------


async def test_concurrent_large_and_small_jobs_keep_every_byte(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    # Large transfers interleave their reads in the one shared buffer: each
    # read must be decoded and written before the next one lands there.
    server = mars_pipe_server_factory(by_request)
    p = plan([server.url])
    jobs = [(3 * 1024 * 1024 + 17 * i, i) if i % 3 else (100 + i, i) for i in range(24)]
    results = await asyncio.gather(
        *(run(p, tmp_path / f"out-{seed}.grib", size=size, seed=seed) for size, seed in jobs)
    )
    for (size, seed), result in zip(jobs, results, strict=True):
        assert result.ok, result.error
        assert result.bytes == size
        assert matches(tmp_path / f"out-{seed}.grib", size, seed)
    assert names(tmp_path) == sorted(f"out-{seed}.grib" for _, seed in jobs)
    assert _SharedBuffer.current() is None  # released once the last transfer ended


async def test_many_concurrent_small_jobs_each_hold_only_a_small_buffer(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    server = mars_pipe_server_factory(by_request)
    p = plan([server.url])
    count = 120
    jobs = asyncio.gather(
        *(
            run(p, tmp_path / f"job-{i}.grib", size=1000 + i, seed=i % 3, hold=0.5)
            for i in range(count)
        )
    )
    task = asyncio.ensure_future(jobs)
    for _ in range(1000):
        if len(server.posts) == count:
            break
        await asyncio.sleep(0.01)
    # Every job is waiting for MARS now: one connection each, none grown.
    open_wires = [w for w in wires() if not w.closed]
    assert len(open_wires) >= count
    assert {w.buffer_size for w in open_wires} == {READ_BUFFER}
    results = await task
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for i in range(count):
        assert (tmp_path / f"job-{i}.grib").read_bytes() == expected_data(1000 + i, i % 3)
    assert [name for name in names(tmp_path) if name.startswith(".")] == []
    assert _SharedBuffer.current() is None


async def test_a_transfer_longer_than_the_read_timeout_is_not_silence(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    # One timer for the silence of a whole body: while data keeps coming it
    # moves on when it fires, for as long as the transfer lasts.
    server = mars_pipe_server_factory(by_request)
    size = 40 * 65536
    target = tmp_path / "slow.grib"
    result = await run(plan([server.url], read_timeout=0.3), target, size=size, delay=0.03)
    assert result.ok, result.error
    assert matches(target, size, 0)
    assert server.posts[0].outcome == "complete"


async def test_large_https_transfer_is_byte_exact(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = mars_pipe_server_factory(by_request, ssl=context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    target = tmp_path / "tls.grib"
    size = 6 * 1024 * 1024 + 5
    result = await run(plan([server.url], ca_bundle=str(bundle)), target, size=size, seed=3)
    assert result.ok, result.error
    assert matches(target, size, 3)
    assert _SharedBuffer.current() is None


async def test_cancelled_stream_writes_nothing_more(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    server = mars_pipe_server_factory(by_request)
    target = tmp_path / "cancelled.grib"
    task = asyncio.ensure_future(run(plan([server.url]), target, size=200 * 65536, delay=0.01))
    pattern = temp_path_pattern(target)
    for _ in range(500):
        if server.posts and server.posts[0].bytes_sent > 4 * 65536:
            break
        await asyncio.sleep(0.01)
    assert [name for name in names(tmp_path) if pattern.fullmatch(name)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # bytes still in flight reach no file
    assert names(tmp_path) == []
    assert _SharedBuffer.current() is None


# --- the buffers themselves -------------------------------------------------------------------


def test_shared_buffer_is_one_per_thread_while_used() -> None:
    assert _SharedBuffer.current() is None
    first = _SharedBuffer.acquire()
    second = _SharedBuffer.acquire()
    assert first is second
    assert first.users == 2
    first.release()
    assert _SharedBuffer.current() is first
    second.release()
    assert _SharedBuffer.current() is None
    third = _SharedBuffer.acquire()
    assert third is not first  # a new mapping; the old one went back to the system
    third.release()


@pytest.fixture
async def body_server() -> AsyncIterator[str]:
    """A keep-alive HTTP server: ``GET /<n>`` answers ``n`` bytes (Content-Length)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                size = int(line.split()[1].lstrip(b"/") or 0)
                while (await reader.readline()).strip():
                    pass
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                writer.write(b"x" * size)
                await writer.drain()
        except (ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def get(conn: _Conn, size: int) -> bytes:
    conn.send(f"GET /{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "GET")
    head = await conn.head(5)
    assert head.status == 200
    return await conn.body(size + 1, 5)


async def test_own_buffer_grows_for_a_long_body_and_shrinks_before_the_next_request(
    body_server: str,
) -> None:
    from marsconn.plan.endpoints import parse_server_url

    conn = await _open(parse_server_url(body_server), plan([body_server]))
    try:
        assert conn.wire.buffer_size == READ_BUFFER
        assert await get(conn, 100) == b"x" * 100
        assert conn.wire.buffer_size == READ_BUFFER  # a small body never fills it
        body = await get(conn, 3 * 1024 * 1024)
        assert body == b"x" * 3 * 1024 * 1024
        assert conn.wire.buffer_size == READ_BUFFER_MAX  # grew, and no further
        assert await get(conn, 10) == b"x" * 10  # same connection, kept alive
        assert conn.wire.buffer_size == READ_BUFFER
        assert conn.requests == 3
    finally:
        await conn.wire.aclose()


# --- failures inside the protocol callback ----------------------------------------------------


#: A body part that never comes: the server goes silent there.
HANG = b"(hang)"


@pytest.fixture
async def slow_start_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A pipe server whose answer comes in parts: the head, then each body part 50 ms apart.

    ``parts`` (yielded) is filled by the test before the job runs; after the
    last one the server closes the connection (``HANG`` instead: silence).
    The log fetch and delete get 404.
    """
    parts: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if head.startswith(b"POST"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nX-MARS-UID: 00000000-0000-4000-8000-00000000cafe\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                    )
                    for part in parts:
                        await writer.drain()
                        await asyncio.sleep(0.05)
                        if part is HANG:
                            await asyncio.sleep(3600)
                        writer.write(part)
                    await writer.drain()
                    break
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", parts


def chunks(data: bytes, size: int = 65536) -> bytes:
    return b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    )


async def test_broken_framing_mid_stream_is_a_broken_transfer(
    slow_start_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, parts = slow_start_server
    data = expected_data(1024 * 1024)
    # The last part is one small segment: it arrives in one read, 50 ms after the rest.
    parts += [chunks(data[:524288]), chunks(data[524288:525288]) + b"zz\r\n"]
    target = tmp_path / "broken.grib"
    result = await run(plan([url]), target)
    assert [a.error_class for a in result.attempts] == ["transfer_broken"]
    error = str(result.attempts[0].error)
    # The read that held the bad line wrote nothing: only the first part counts.
    assert "broke after 524288 bytes: malformed chunk-size line 'zz'" in error
    assert names(tmp_path) == []
    assert _SharedBuffer.current() is None


async def test_write_failure_mid_stream_is_final(
    slow_start_server: tuple[str, list[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from marsconn import TargetError
    from marsconn.run import pipe_transport as transport_pipe

    url, parts = slow_start_server
    data = expected_data(1024 * 1024)
    parts += [chunks(data[:300000]), chunks(data[300000:]) + b"4\r\nENDR\r\n0\r\n\r\n"]
    write = transport_pipe._PartFile.write
    calls: list[int] = []

    def fails_later(self: Any, pieces: Any, total: int = -1) -> None:
        calls.append(len(pieces))
        if self.size >= 300000:
            raise TargetError("cannot write the output: No space left on device")
        write(self, pieces, total)

    monkeypatch.setattr(transport_pipe._PartFile, "write", fails_later)
    target = tmp_path / "full.grib"
    result = await run(plan([url]), target)
    assert [a.error_class for a in result.attempts] == ["target_error"]
    assert "No space left" in str(result.error)
    assert len(calls) >= 2  # it failed in a later read, inside the protocol callback
    assert names(tmp_path) == []
    assert _SharedBuffer.current() is None


# --- large bodies in a worker thread ----------------------------------------------------------


BIG = THREAD_AFTER + 1024 * 1024  # past the point where a body moves to a worker thread


def threads_idle() -> bool:
    """Every worker-thread slot given back, and the pool made (a transfer used it)."""
    return _StreamThreads._free == STREAM_THREADS and _StreamThreads._pool is not None


async def test_large_body_in_a_thread_then_the_same_connection_goes_on(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    # The test server keeps connections alive: the log fetch after the body
    # is read by the event loop again, on the connection the thread read.
    server = mars_pipe_server_factory(by_request)
    target = tmp_path / "big.grib"
    result = await run(plan([server.url]), target, size=BIG + 5, seed=4)
    assert result.ok, result.error
    assert matches(target, BIG + 5, 4)
    assert threads_idle()
    assert len(server.deleted) == 1  # the log was fetched and deleted after the thread's body


async def test_silence_in_a_thread_is_a_read_timeout(
    slow_start_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, parts = slow_start_server
    parts += [chunks(expected_data(BIG)), HANG]
    target = tmp_path / "silent.grib"
    result = await run(plan([url], read_timeout=0.5), target)
    assert [a.error_class for a in result.attempts] == ["read_timeout"]
    assert f"after {BIG} data bytes" in str(result.attempts[0].error)
    assert names(tmp_path) == []
    assert threads_idle()


async def test_broken_framing_in_a_thread_is_a_broken_transfer(
    slow_start_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, parts = slow_start_server
    parts += [chunks(expected_data(BIG)), b"zz\r\n"]
    result = await run(plan([url]), tmp_path / "broken.grib")
    assert [a.error_class for a in result.attempts] == ["transfer_broken"]
    assert f"broke after {BIG} bytes: malformed chunk-size line 'zz'" in str(result.error)
    assert names(tmp_path) == []
    assert threads_idle()


async def test_eof_in_a_thread_is_a_broken_transfer_unless_endr_came(
    slow_start_server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    url, parts = slow_start_server
    parts += [chunks(expected_data(BIG))]
    result = await run(plan([url]), tmp_path / "cut.grib")
    assert [a.error_class for a in result.attempts] == ["transfer_broken"]
    assert "no terminating chunk" in str(result.error)
    assert names(tmp_path) == []
    # The same, with ENDR before the close: the data is complete.
    parts += [b"4\r\nENDR\r\n"]
    target = tmp_path / "whole.grib"
    result = await run(plan([url]), target)
    assert result.ok, result.error
    assert matches(target, BIG, 0)
    assert threads_idle()


async def test_write_failure_in_a_thread_is_final(
    slow_start_server: tuple[str, list[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from marsconn import TargetError
    from marsconn.run import pipe_partfile

    url, parts = slow_start_server
    parts += [chunks(expected_data(BIG)), b"4\r\nENDR\r\n0\r\n\r\n"]
    write = pipe_partfile._PartFile.write
    where: list[str] = []

    def fails_late(self: Any, pieces: Any, total: int = -1) -> None:
        if self.size >= THREAD_AFTER + 65536:
            where.append(threading.current_thread().name)
            raise TargetError("cannot write the output: No space left on device")
        write(self, pieces, total)

    monkeypatch.setattr(pipe_partfile._PartFile, "write", fails_late)
    result = await run(plan([url]), tmp_path / "full.grib")
    assert [a.error_class for a in result.attempts] == ["target_error"]
    assert where[0].startswith("marsconn-pipe")  # it failed in the worker thread
    assert names(tmp_path) == []
    assert threads_idle()


async def test_cancelled_in_a_thread_the_server_sees_its_client_gone(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    server = mars_pipe_server_factory(by_request)
    target = tmp_path / "cancelled.grib"
    task = asyncio.ensure_future(run(plan([server.url]), target, size=400 * 65536, delay=0.005))
    for _ in range(1000):
        if server.posts and server.posts[0].bytes_sent > BIG:
            break
        await asyncio.sleep(0.01)
    assert server.posts[0].bytes_sent > BIG
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(tmp_path) == []
    assert threads_idle()  # the thread had returned before the cancellation did
    # The server notices its client is gone: it stops sending.
    sent = -1
    for _ in range(200):
        if server.posts[0].bytes_sent == sent:
            break
        sent = server.posts[0].bytes_sent
        await asyncio.sleep(0.05)
    assert server.posts[0].outcome == "dropped"
    assert server.posts[0].bytes_sent < 400 * 65536


async def test_more_large_bodies_than_threads_all_arrive(
    mars_pipe_server_factory: Factory, tmp_path: Path
) -> None:
    server = mars_pipe_server_factory(by_request)
    p = plan([server.url])
    count = STREAM_THREADS * 2 + 1
    results = await asyncio.gather(
        *(
            run(p, tmp_path / f"big-{i}.grib", size=BIG + i, seed=i, delay=0.002)
            for i in range(count)
        )
    )
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for i in range(count):
        assert matches(tmp_path / f"big-{i}.grib", BIG + i, i)
    assert threads_idle()
    assert _SharedBuffer.current() is None


def test_worker_pools_start_afresh_in_a_forked_child() -> None:
    import os

    from marsconn.run.pipe_partfile import _SyncThreads

    _SyncThreads.pool().submit(int).result(5)  # both pools exist in the parent
    assert _StreamThreads.take() is not None
    _StreamThreads.give_back()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pools are forgotten, new ones work
        ok = _SyncThreads._pool is None and _StreamThreads._pool is None
        ok = ok and _SyncThreads.pool().submit(lambda: 7).result(5) == 7
        pool = _StreamThreads.take()
        ok = ok and pool is not None and pool.submit(lambda: 8).result(5) == 8
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _SyncThreads._pool is not None  # the parent's are untouched
