"""Pipe (HTTP) transport: MARS's output streamed straight into a temporary file.

The socket edge only: HTTP framing and the meaning of the body's markers
live in :mod:`marsconn.pipeproto`. One attempt is one kept-alive connection
to one server (a new one if the server closes it): ``HEAD /`` (the ping),
then one ``POST /`` per request of the list, each followed by
``GET /<uid>`` (MARS's log, fed to the log sink) and ``DELETE /<uid>``.
Data goes to a hidden temporary file beside the target, which replaces the
target only once every request ended with ``ENDR``: on any failure the
target is left exactly as it was.

Reads use a :class:`asyncio.BufferedProtocol` rather than
:class:`asyncio.StreamReader`: the kernel copies received bytes into a
buffer, the decoder hands out slices of it, and those slices go to
``os.writev`` as they are, so no body byte is copied in Python. A job's
output is decoded and written inside the protocol callback that received
it, with no task switch per read, into one buffer that every streaming
connection of the thread shares; a connection's own buffer is small (heads,
error bodies, MARS's log), so a thousand waiting jobs cost a thousand small
buffers and a large transfer one large one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import quote

from ..core.errors import JobKilledError, LogHandlerError, NoDataError, TargetError, TransferError
from ..core.neutralise import neutralise
from ..core.outcome import Action, Outcome, ServerLost
from ..core.tls import client_context
from ..core.version import __version__
from ..plan.endpoints import Endpoint, ServerURL
from ..plan.model import ConnectionPlan
from ..wire.http_response import (
    BodyPiece,
    Buffer,
    HttpEvent,
    HttpResponseReader,
    ResponseEnd,
    ResponseHead,
    Searchable,
)
from ..wire.pipe_body import ErrorTrailer, Rewind
from ..wire.pipe_request import encode_job, encode_request, merged_request
from ..wire.pipe_stream import PipeStream, StreamItem
from ..wire.pipe_verdict import classify_error_trailer, classify_status
from .connecting import connect_failure, tls_context
from .job import JobContext
from .logs import classify_line

__all__ = ["READ_BUFFER", "READ_BUFFER_MAX", "STREAM_BUFFER", "PipeTransport", "temp_path_pattern"]

#: A connection's own receive buffer: heads, small bodies, MARS's log.
READ_BUFFER = 16 * 1024
#: How far a connection's own buffer grows for a large body it reads whole (a long log).
READ_BUFFER_MAX = 256 * 1024
#: The buffer a job's output is received into, shared by the streaming
#: connections of a thread (see _SharedBuffer).
STREAM_BUFFER = 1024 * 1024
# Error answers and their bodies are small; more than this is not read.
_ERROR_BODY_LIMIT = 1024 * 1024
# A MARS log line longer than this is passed on in pieces.
_MAX_LOG_LINE = 64 * 1024
# TCP keepalive: a peer that vanished without a FIN or RST (powered off,
# partitioned) is noticed after about idle + interval * count seconds even
# when read_timeout is long.
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
_UID = re.compile(r"[a-f0-9-]{36}")
# Characters kept as they are when a server URL's path and query go into a request line.
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"
_CLOSE_GRACE = 1.0
# Most pieces one writev takes (POSIX guarantees at least 16; Linux has 1024).
_IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16))
_writev = getattr(os, "writev", None)  # absent on Windows


def temp_path_pattern(target: Path) -> re.Pattern[str]:
    """Matches the names of the temporary files made for ``target``."""
    return re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]+\.part")


def _set_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with short probes where the platform allows it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        # macOS calls the idle time TCP_KEEPALIVE.
        option = getattr(socket, name, None)
        if option is None and name == "TCP_KEEPIDLE":
            option = getattr(socket, "TCP_KEEPALIVE", None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


# --- the socket ------------------------------------------------------------------------------


class _SharedBuffer:
    """The receive buffer that streaming connections of one thread share.

    A streamed body is decoded and written inside the protocol callback
    that received it (see :meth:`_Wire.start_sink`), so by the time the
    event loop reads from another socket the buffer is free again: one
    buffer serves every transfer of the thread, whatever their number. It
    is an anonymous ``mmap``, so that it goes back to the operating system
    as soon as the last transfer using it ends (``malloc`` may keep a freed
    large block for later).
    """

    _local = threading.local()

    def __init__(self) -> None:
        self.data = mmap.mmap(-1, STREAM_BUFFER)
        self.view = memoryview(self.data)
        self.users = 0

    @classmethod
    def acquire(cls) -> _SharedBuffer:
        shared: _SharedBuffer | None = getattr(cls._local, "buffer", None)
        if shared is None:
            shared = cls._local.buffer = cls()
        shared.users += 1
        return shared

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and getattr(self._local, "buffer", None) is self:
            # Views handed to writev are gone by now; the mapping is unmapped
            # when the last reference to it goes.
            self._local.buffer = None
            self.view.release()

    @classmethod
    def current(cls) -> _SharedBuffer | None:
        """This thread's buffer, if a transfer is using it."""
        shared: _SharedBuffer | None = getattr(cls._local, "buffer", None)
        return shared


#: Takes ``data[start:end]`` inside the protocol callback; True when the body is complete.
_Sink = Callable[[Searchable, int, int], bool]


class _Wire(asyncio.BufferedProtocol):
    """Receives into a small buffer of its own; :meth:`read` hands out views of it.

    A view returned by :meth:`read` stays valid until the next call: new
    bytes only ever land after it, and the buffer is rewound to its start
    only once everything handed out was consumed. When the buffer is full,
    reading from the socket pauses (back pressure) unless the reader keeps
    asking for more, in which case the buffer grows (up to
    :data:`READ_BUFFER_MAX`); it shrinks back before the next request.

    A large body does not go through :meth:`read`: :meth:`start_sink`
    hands every received byte to a function, synchronously, in the
    protocol callback (decode, write to the file), with no task switch per
    read; the bytes then land in the thread's shared buffer.
    """

    def __init__(self, size: int = READ_BUFFER) -> None:
        # An anonymous mapping rather than a bytearray: its pages cost memory
        # only once touched, and go back to the system the moment the
        # connection is gone (malloc keeps freed blocks for later, which
        # after a thousand concurrent jobs is megabytes held for nothing).
        self._buf = mmap.mmap(-1, size)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet handed out
        self._end = 0  # end of the received bytes
        self._given = 0  # end of what the last read() handed out
        self._full = False  # the last fill reached the end of the buffer
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._aborted = False
        self._sink: _Sink | None = None
        self._shared: _SharedBuffer | None = None
        self._sink_error: BaseException | None = None
        self._sink_done = False
        self._last = 0.0  # loop time of the last bytes while streaming
        self._clock: Callable[[], float] = time.monotonic
        self.error: BaseException | None = None
        self.closed = False

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._clock = asyncio.get_running_loop().time

    def get_buffer(self, sizehint: int) -> memoryview:
        shared = self._shared
        if shared is not None:
            return shared.view
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        sink = self._sink
        if sink is not None:
            self._last = self._clock()
            assert self._shared is not None
            try:
                done = sink(self._shared.data, 0, nbytes)
            except Exception as exc:
                self._sink_error = exc
                self._stop_sink()
                self._pause()
                self._wake()
                return
            if done:
                self._sink_done = True
                self._stop_sink()
                self._wake()
            return
        self._end += nbytes
        if self._end == len(self._buf):
            # get_buffer() must never return an empty buffer (TLS would read
            # that as the end of the stream): stop reading until consumed.
            self._full = True
            self._pause()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._stop_sink()
        self._wake()

    @property
    def at_eof(self) -> bool:
        """Whether the peer ended its side (data may still be unread)."""
        return self._eof

    @property
    def buffer_size(self) -> int:
        """The size of the connection's own receive buffer (not the shared one)."""
        return len(self._buf)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self._transport is not None and not self.closed:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    # the consumer's side

    async def read(self, idle: float) -> memoryview:
        """The bytes received since the last call, waiting up to ``idle`` seconds; empty at EOF."""
        self._start = self._given
        if self._start == self._end:
            self._start = self._end = self._given = 0
            if self._full:
                # The reader wanted everything a full buffer held: a larger
                # body than the buffer was made for. Fewer, larger reads.
                self._full = False
                if len(self._buf) < READ_BUFFER_MAX:
                    self._resize(min(len(self._buf) * 4, READ_BUFFER_MAX))
            self._resume()
            if not self._eof:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(idle):
                        await self._waiter
                finally:
                    self._waiter = None
        self._given = self._end
        return self._view[self._start : self._end]

    def unread(self, count: int) -> None:
        """Give back the last ``count`` bytes :meth:`read` returned: the next read has them."""
        self._given -= count

    def shrink(self) -> None:
        """Back to the initial buffer size if it grew and holds nothing unread."""
        if len(self._buf) > READ_BUFFER and self._given == self._end:
            self._start = self._end = self._given = 0
            self._resize(READ_BUFFER)

    def _resize(self, size: int) -> None:
        # Only when nothing is unread; views already handed out keep the old buffer alive.
        self._buf = mmap.mmap(-1, size)
        self._view = memoryview(self._buf)

    def start_sink(self, sink: _Sink) -> bool:
        """Hand every received byte to ``sink`` from now on; True if it is already satisfied.

        The bytes not yet read go first, here; the rest as they arrive, in
        the protocol callback, until ``sink`` returns True or raises. Wait
        with :meth:`drain`.
        """
        start, end = self._given, self._end
        self._start = self._end = self._given = 0
        if start < end and sink(self._buf, start, end):
            return True
        if self.closed or self._eof:
            return False
        self._sink = sink
        self._sink_done = False
        self._shared = _SharedBuffer.acquire()
        self._resume()
        return False

    def _stop_sink(self) -> None:
        self._sink = None
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.release()

    async def drain(self, idle: float) -> bool:
        """Wait for the sink of :meth:`start_sink`: True when satisfied, False at EOF.

        Raises what the sink raised, and TimeoutError after ``idle``
        seconds without a byte (one timer, moved only when it fires early).
        Whatever ends the wait, the sink gets no byte after it.
        """
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        timer: asyncio.TimerHandle | None = None
        waiter = self._waiter = loop.create_future()

        def check() -> None:
            nonlocal timer
            due = self._last + idle
            if loop.time() >= due:
                if not waiter.done():
                    waiter.set_exception(TimeoutError())
            else:
                timer = loop.call_at(due, check)

        try:
            while self._sink is not None and not self._eof:
                timer = loop.call_at(self._last + idle, check)
                await waiter
                timer.cancel()
                waiter = self._waiter = loop.create_future()
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
            if self._sink is not None:
                self._stop_sink()
                self._pause()
        if self._sink_error is not None:
            error, self._sink_error = self._sink_error, None
            raise error
        return self._sink_done

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (requests are small: no flow control needed)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self.closed:
            raise ConnectionResetError("the connection is closed")
        transport.write(data)

    def abort(self) -> None:
        """Drop the connection at once (the server sees its client gone)."""
        self._stop_sink()
        if self._transport is not None:
            self._aborted = True
            self._transport.abort()

    async def aclose(self) -> None:
        """Close, waiting briefly for the socket to be released."""
        self._stop_sink()
        transport = self._transport
        if transport is None or self.closed or self._aborted:
            return
        transport.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                while not self.closed:
                    self._waiter = loop.create_future()
                    await self._waiter
        except TimeoutError:
            transport.abort()
        finally:
            self._waiter = None


class _Closed(TransferError):
    """The connection ended before the response did."""


class _Conn:
    """One HTTP/1.1 client connection: one request at a time."""

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire
        self.reader = HttpResponseReader()
        self._queued: list[HttpEvent] = []
        self.requests = 0

    @property
    def reusable(self) -> bool:
        # A peer that already closed its side would only reset the next request.
        return self.reader.reusable and not self.wire.closed and not self.wire.at_eof

    def send(self, request: bytes, method: str) -> None:
        self.reader.expect(method)
        self._queued = []
        self.wire.shrink()
        self.wire.write(request)
        self.requests += 1

    def closed_error(self, exc: TransferError) -> _Closed:
        cause = f" ({self.wire.error})" if self.wire.error else ""
        return _Closed(f"{exc}{cause}")

    async def events(self, idle: float) -> list[HttpEvent]:
        """The next events of the current response.

        Raises TimeoutError after ``idle`` seconds without a byte, TransferError
        (``_Closed`` if the connection ended) for a broken response.
        """
        if self._queued:
            events, self._queued = self._queued, []
            return events
        while True:
            view = await self.wire.read(idle)
            if view:
                events = self.reader.feed(view)
            else:
                try:
                    events = self.reader.feed_eof()
                except TransferError as exc:
                    raise self.closed_error(exc) from None
                if not events:
                    raise _Closed("connection closed")
            if events:
                return events

    async def head(self, idle: float) -> ResponseHead:
        """Wait for the response head; the bytes after it stay unread for the body."""
        while True:
            view = await self.wire.read(idle)
            if not view:
                try:
                    self.reader.feed_eof()
                except TransferError as exc:
                    raise self.closed_error(exc) from None
                raise _Closed("connection closed")
            events, used = self.reader.feed_head(view)
            if not events:
                continue
            head = events[0]
            assert isinstance(head, ResponseHead)
            if len(events) > 1:
                # No body: whatever followed the head is stray (see reader.reusable).
                self._queued = events[1:] + self.reader.feed(view[used:])
            else:
                self.wire.unread(len(view) - used)
            return head

    async def body(self, limit: int, idle: float) -> bytes:
        """The rest of a small body (at most ``limit`` bytes are kept)."""
        parts = bytearray()
        while True:
            for event in await self.events(idle):
                if isinstance(event, BodyPiece):
                    if len(parts) < limit:
                        parts += event.data[: limit - len(parts)]
                elif isinstance(event, ResponseEnd):
                    return bytes(parts)

    async def stream(self, sink: _Sink, idle: float) -> bool:
        """Hand the chunked body to ``sink`` (see :meth:`_Wire.start_sink`).

        True when the sink was satisfied, False when the connection ended
        first. Raises what the sink raised, or TimeoutError after ``idle``
        seconds without a byte.
        """
        self.reader.hand_over_body()
        if self.wire.start_sink(sink):
            return True
        if self.wire.at_eof:
            return False
        return await self.wire.drain(idle)


async def _open(url: ServerURL, plan: ConnectionPlan) -> _Conn:
    """Connect (TCP, then TLS for https) within the connect timeout."""
    loop = asyncio.get_running_loop()
    wire = _Wire()
    tls = client_context(plan.ca_bundle) if url.is_tls else None
    async with asyncio.timeout(plan.timeouts.connect):
        transport, _ = await loop.create_connection(
            lambda: wire,
            url.host,
            url.effective_port,
            ssl=tls,
            server_hostname=url.host if tls is not None else None,
        )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _set_keepalive(sock)
    return _Conn(wire)


def _ascii_host(url: ServerURL) -> str:
    """The Host header's name: IDNA for a name in other scripts (percent-encoded if not even
    that works: the connection then fails on the name, and says so)."""
    host = url.netloc_host
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return quote(host, safe="[]:")


def _connect_failed(exc: BaseException, server: str, seconds: float) -> Outcome:
    return connect_failure(exc, server, f"no TCP/TLS connection within {seconds:g}s")


class _Session:
    """The connection(s) of one attempt on one server."""

    def __init__(self, endpoint: Endpoint, plan: ConnectionPlan) -> None:
        self.url = endpoint.url
        self.plan = plan
        self.server = endpoint.url.display()
        self.conn: _Conn | None = None
        base, _, query = self.url.path.partition("?")
        # The request head is ASCII: a path or host name in other scripts is sent encoded
        # (percent-encoding, IDNA), as a browser or websockets would.
        self._base = quote(base.rstrip("/"), safe=_URL_SAFE)
        self._query = f"?{quote(query, safe=_URL_SAFE)}" if query else ""
        port = f":{self.url.port}" if self.url.port is not None else ""
        self._host = f"{_ascii_host(self.url)}{port}"

    def _request(self, method: str, name: str, body: bytes | None) -> bytes:
        return encode_request(
            method,
            f"{self._base}/{name}{self._query}",
            self._host,
            body,
            content_type="application/json" if body is not None else None,
            userinfo=self.url.userinfo,
            user_agent=f"marsconn/{__version__}",
        )

    async def exchange(
        self, method: str, name: str = "", body: bytes | None = None, *, idle: float
    ) -> tuple[_Conn, ResponseHead]:
        """Send a request and wait for its answer's head (each read waiting up to ``idle``).

        A kept-alive connection that the server closed before answering a
        single byte gets the request once more on a new connection (RFC
        9112 9.3.1): servers close idle connections at will, and had this
        one read the request, it would kill MARS once this client left.
        """
        data = self._request(method, name, body)
        conn = await self.ensure()
        reused = conn.requests > 0
        conn.send(data, method)
        try:
            return conn, await conn.head(idle)
        except _Closed:
            if not reused or conn.reader.response_bytes:
                raise
        conn = await self.ensure()
        conn.send(data, method)
        return conn, await conn.head(idle)

    async def ensure(self) -> _Conn:
        """The open connection, or a new one when it cannot carry another request."""
        if self.conn is not None and self.conn.reusable:
            return self.conn
        if self.conn is not None:
            await self.conn.wire.aclose()
        self.conn = None
        self.conn = await _open(self.url, self.plan)
        return self.conn

    def abort(self) -> None:
        if self.conn is not None:
            self.conn.wire.abort()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.wire.aclose()


# --- the output file --------------------------------------------------------------------------


class _PartFile:
    """The hidden temporary file beside the target that collects the output."""

    def __init__(self, target: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            path = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
            try:
                # 0o666 and the umask give the file the mode a plain open() would.
                self.fd = os.open(path, flags, 0o666)
            except FileExistsError:
                continue
            break
        self.path = path
        self.size = 0
        self.open = True

    def write(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        """Append ``pieces`` in one system call where possible.

        A read holds several chunks (and a chunk usually straddles two
        reads), so a read yields several data pieces; one ``writev`` for
        all of them costs measurably less than a ``write`` each.
        """
        try:
            if _writev is None:
                self._finish_partial(pieces, 0)
                return
            if len(pieces) <= _IOV_MAX:
                written = _writev(self.fd, pieces)
                self.size += written
                if written < sum(map(len, pieces)):
                    self._finish_partial(pieces, written)
                return
            for start in range(0, len(pieces), _IOV_MAX):
                batch = pieces[start : start + _IOV_MAX]
                written = _writev(self.fd, batch)
                self.size += written
                if written < sum(map(len, batch)):
                    self._finish_partial(batch, written)
        except OSError as exc:
            raise TargetError(f"cannot write the output to {self.path}: {exc}") from exc

    def _finish_partial(self, batch: list[bytes | bytearray | memoryview], done: int) -> None:
        # Write what is left after the first ``done`` bytes, piece by piece.
        # Regular files write short only on a full disk or a signal; the
        # retry then finishes the job or raises the error.
        for piece in batch:
            view = memoryview(piece)
            if done >= len(view):
                done -= len(view)
                continue
            view = view[done:]
            done = 0
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.size += written

    def truncate(self, offset: int) -> None:
        if offset == self.size:
            return
        try:
            os.ftruncate(self.fd, offset)
            os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise TargetError(f"cannot truncate {self.path}: {exc}") from exc
        self.size = offset

    async def commit(self, target: Path) -> None:
        """fsync, then atomically rename onto ``target``."""
        loop = asyncio.get_running_loop()
        # fsync of a large file can take seconds: keep the event loop free.
        sync = loop.run_in_executor(None, os.fsync, self.fd)
        try:
            await asyncio.shield(sync)
        except asyncio.CancelledError:
            # The fd must not be closed under the thread still using it.
            with contextlib.suppress(Exception):
                await sync
            raise
        _keep_mode(self.fd, target)
        self.close()
        os.replace(self.path, target)
        _fsync_dir(target.parent)

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _keep_mode(fd: int, target: Path) -> None:
    """Give the new file an existing target's permission bits; refuse to replace a special file.

    The rename replaces whatever is at ``target``: a device such as ``/dev/null`` (which
    root may replace) or a FIFO that appeared there since the pre-flight checks is left alone.
    """
    try:
        old = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISREG(old.st_mode):
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
    elif not stat.S_ISLNK(old.st_mode):
        raise TargetError(
            f"{target} is not a regular file (a device, FIFO, socket or directory); "
            "it is left as it is and the output discarded"
        )


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not every platform or filesystem allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- the transport ----------------------------------------------------------------------------


class _BodyWriter:
    """Decodes a job's streamed body and writes its data, inside the protocol callback.

    The data views point into the receive buffer and are written before
    the callback returns, in order with the truncations ``RWND`` and
    ``EROR`` ask for. As before :class:`~marsconn.pipeproto.PipeStream`,
    data decoded after the last event of a read that then turns out
    malformed is not written.
    """

    __slots__ = ("part", "start", "stream", "trailer")

    def __init__(self, stream: PipeStream, part: _PartFile, start: int) -> None:
        self.stream = stream
        self.part = part
        self.start = start  # where this request's output begins in the file
        self.trailer: ErrorTrailer | None = None

    def take(self, data: Searchable, start: int, end: int) -> bool:
        """Decode and write ``data[start:end]``; True once the body ended (or MARS failed)."""
        stream = self.stream
        items = stream.feed(data, start, end)
        if stream.plain:
            if items:
                self.part.write(cast("list[Buffer]", items))
            return False
        return self._events(items)

    def _events(self, items: list[StreamItem]) -> bool:
        part = self.part
        pending: list[Buffer] = []
        for item in items:
            if isinstance(item, memoryview | bytes):
                pending.append(item)
                continue
            if isinstance(item, TransferError):
                raise item
            if pending:
                part.write(pending)
                pending = []
            if isinstance(item, Rewind):
                part.truncate(self.start)
            elif isinstance(item, ErrorTrailer):
                part.truncate(self.start)
                self.trailer = item
                return True
            elif isinstance(item, ResponseEnd):
                return True
        if pending:
            part.write(pending)
        return False


class _LineSplitter:
    """Turns a log body's pieces into lines without holding more than one line."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        self._partial += data
        lines: list[str] = []
        while True:
            # Only the first _MAX_LOG_LINE bytes can end a line that is kept whole.
            nl = self._partial.find(b"\n", 0, _MAX_LOG_LINE)
            if nl == -1:
                if len(self._partial) >= _MAX_LOG_LINE:
                    lines.append(self._take(_MAX_LOG_LINE))
                    continue
                return lines
            lines.append(self._take(nl + 1))

    def flush(self) -> list[str]:
        return [self._take(len(self._partial))] if self._partial else []

    def _take(self, n: int) -> str:
        raw = bytes(self._partial[:n])
        del self._partial[:n]
        return raw.decode("utf-8", "replace").rstrip("\r\n")


def _json_lines(body: bytes) -> list[str]:
    """Lines worth showing from an error answer's body: its text fields, or the text itself."""
    text = body.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        texts = [v for v in payload.values() if isinstance(v, str)]
        return [line for t in texts for line in t.splitlines() if line.strip()]
    return [line for line in text.splitlines() if line.strip()]


def _preview(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text[:limit] + ("..." if len(text) > limit else "")


#: MARS error lines quoted in an error's text at most, and the length kept of each.
_ERROR_LINES_QUOTED = 10
_ERROR_LINE_LENGTH = 300


@dataclass(slots=True)
class _MarsErrors:
    """The first error lines of MARS's logs (bounded), and how many there were."""

    lines: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < _ERROR_LINES_QUOTED:
            # MARS's own text, into an error message: no line of it may forge another.
            cut = neutralise(line[:_ERROR_LINE_LENGTH])
            self.lines.append(cut + ("..." if len(line) > _ERROR_LINE_LENGTH else ""))

    def merge(self, other: _MarsErrors) -> None:
        """Add another log's error lines after these."""
        room = _ERROR_LINES_QUOTED - len(self.lines)
        self.lines.extend(other.lines[: max(0, room)])
        self.count += other.count

    def explain(self, error: BaseException | None) -> None:
        """Append the lines to ``error``'s text, so that it says what MARS said."""
        if error is None or not self.lines:
            return
        quoted = "\n".join(f"  {line}" for line in self.lines)
        more = self.count - len(self.lines)
        if more:
            quoted += f"\n  ... and {more} more in Result.message"
        error.args = (f"{error}\nMARS's error lines:\n{quoted}",)


@dataclass(slots=True)
class _MarsLog:
    """What fetching MARS's log found: the answer's status (None: no answer) and its errors."""

    status: int | None = None
    errors: _MarsErrors = field(default_factory=_MarsErrors)


@dataclass(slots=True)
class _Posted:
    """How one ``POST /`` ended.

    ``failure`` is None when the request's data is complete. ``uid`` names
    MARS's log on the server (``X-MARS-UID``; None when the answer had
    none). ``fetch`` is false when the server is presumed unable to answer
    (a read timeout), so its log is not asked for. ``silent`` marks a
    server that closed the connection without a byte of answer.
    """

    uid: str | None
    failure: Outcome | None = None
    fetch: bool = True
    silent: bool = False


class PipeTransport:
    """Runs a retrieval on pipe servers, one attempt at a time; see the module docstring.

    Keeps the retrieval's progress between attempts: the temporary file and
    how many requests of the list are complete in it, so that after a
    failure the next server resumes at the failed request instead of
    running the completed ones again. One instance per retrieval.
    """

    def __init__(self) -> None:
        self._part: _PartFile | None = None
        self._done = 0  # requests whose data is complete in the file
        self._mark = 0  # file size when the first incomplete request began
        self._job_id: str | None = None
        # Error lines of the logs of the complete requests, for a "no data" verdict.
        self._errors = _MarsErrors()

    async def attempt(self, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        """One attempt; see :class:`marsconn.executor.Transport`."""
        session = _Session(endpoint, ctx.plan)
        try:
            return await self._attempt(session, ctx)
        except asyncio.CancelledError:
            # Nobody will read this job's output: dropping the connection
            # is how the pipe server learns to kill MARS.
            session.abort()
            raise
        finally:
            await session.close()

    async def cleanup(self, ctx: JobContext, success: bool) -> None:
        """Remove the temporary file if it is still there."""
        if self._part is not None:
            self._part.discard()

    async def _attempt(self, session: _Session, ctx: JobContext) -> Outcome:
        try:
            if self._part is None:
                self._part = _PartFile(ctx.target)
            part = self._part
            # Whatever a failed attempt left after the last complete request goes.
            part.truncate(self._mark)
        except (OSError, TargetError) as exc:
            return _target_failure(exc, ctx.target)
        timeouts = ctx.plan.timeouts
        tls = tls_context(session.url, ctx.plan.ca_bundle)
        if isinstance(tls, Outcome):
            return tls
        try:
            await session.ensure()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _connect_failed(exc, session.server, timeouts.connect)
        failure = await self._ping(session)
        if failure is not None:
            return failure
        ctx.reached()
        while self._done < len(ctx.requests):
            try:
                posted = await self._run_request(session, ctx, part, self._done)
            except TargetError as exc:
                return Outcome.failed(Action.FINAL, "target_error", exc, job_id=self._job_id)
            if posted.failure is not None:
                return await self._failed(session, ctx, posted)
            self._done += 1
            self._mark = part.size
            try:
                log = await self._fetch_log(session, ctx, posted.uid)
            except LogHandlerError as exc:
                return Outcome.failed(Action.FINAL, "log_handler_error", exc, job_id=posted.uid)
            self._errors.merge(log.errors)
            if ctx.job.kill_requested:
                return Outcome.failed(
                    Action.FINAL,
                    "killed",
                    JobKilledError(
                        f"the job was killed on request after {self._done} of "
                        f"{len(ctx.requests)} requests on {session.server}; "
                        "the output was discarded"
                    ),
                    job_id=self._job_id,
                )
        if part.size == 0:
            return await self._no_data(session, ctx)
        try:
            await part.commit(ctx.target)
        except (OSError, TargetError) as exc:
            return _target_failure(exc, ctx.target)
        return Outcome.success(part.size, self._job_id)

    async def _no_data(self, session: _Session, ctx: JobContext) -> Outcome:
        """Every request ended with ``ENDR`` and there is not a byte of data."""
        count = len(ctx.requests)
        which = "the request" if count == 1 else f"all {count} requests"
        error = NoDataError(
            f"MARS ended {which} on {session.server} with ENDR (the end-of-request marker) "
            "and no data: it ran the request and found nothing to retrieve"
        )
        outcome = Outcome.failed(Action.FINAL, "no_data", error, job_id=self._job_id)
        try:
            await ctx.sink.line(f"marsconn - ERROR - {error}")
        except LogHandlerError as exc:
            return Outcome.failed(Action.FINAL, "log_handler_error", exc, job_id=self._job_id)
        self._errors.explain(error)
        return outcome

    async def _failed(self, session: _Session, ctx: JobContext, posted: _Posted) -> Outcome:
        """A request failed: bring in MARS's log, say what happened, explain the error.

        MARS's log is fetched (and deleted on the server) whenever the answer
        named it, whatever the failure, as cads-mars-server's own client
        does: its error lines go to the log sink and into the error's text.
        A server that closed the connection without a byte of answer is
        asked for the log under the request id (the real server's uid): if
        it has one, MARS ran, exited 0 and wrote nothing, which is a "no
        data" outcome, not a broken server.
        """
        failure = posted.failure
        assert failure is not None
        server = session.server
        uid = posted.uid
        try:
            if failure.error_class == "log_handler_error":
                # The handler already failed: do not feed it the log, just remove it.
                if uid is not None and _UID.fullmatch(uid) is not None:
                    await self._delete_log(session, uid)
                return failure
            log = _MarsLog()
            if posted.fetch and uid is not None:
                log = await self._fetch_log(session, ctx, uid)
            elif uid is not None:
                await ctx.sink.line(
                    f"marsconn - WARNING - MARS's log {uid} was not fetched from {server}: "
                    "the server stopped answering"
                )
            if posted.silent and log.status == 200:
                failure = Outcome.failed(
                    Action.FINAL,
                    "no_data",
                    NoDataError(
                        f"{server} closed the connection without answering the job, and MARS's "
                        "log is there: MARS exited without writing anything, not even the "
                        "end-of-request marker, so the request produced no data"
                    ),
                    job_id=uid,
                )
            level = "ERROR" if failure.action is Action.FINAL else "WARNING"
            await ctx.sink.line(f"marsconn - {level} - {failure.error}")
        except LogHandlerError as exc:
            return Outcome.failed(Action.FINAL, "log_handler_error", exc, job_id=uid)
        log.errors.explain(failure.error)
        return failure

    async def _ping(self, session: _Session) -> Outcome | None:
        """``HEAD /``: any answer within the request timeout shows the server is alive."""
        limit = session.plan.timeouts.request
        try:
            conn, _ = await session.exchange("HEAD", idle=limit)
            await conn.body(0, limit)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return Outcome.failed(
                Action.NEXT_SERVER,
                "ping_timeout",
                ServerLost(f"{session.server} did not answer the ping (HEAD /) within {limit:g}s"),
                eject=True,
            )
        except (TransferError, OSError) as exc:
            return Outcome.failed(
                Action.NEXT_SERVER,
                "ping_failed",
                ServerLost(f"{session.server}: the ping (HEAD /) failed: {exc}"),
                eject=True,
            )
        return None

    async def _run_request(
        self, session: _Session, ctx: JobContext, part: _PartFile, index: int
    ) -> _Posted:
        """``POST /`` request ``index``; how it ended."""
        timeouts = ctx.plan.timeouts
        server = session.server
        try:
            # The previous request's connection may be gone; reconnecting can fail.
            await session.ensure()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _Posted(None, _connect_failed(exc, server, timeouts.connect))
        body = encode_job(merged_request(ctx.requests, index), ctx.environ)
        start = part.size
        stream = PipeStream()
        writer = _BodyWriter(stream, part, start)
        uid: str | None = None
        head: ResponseHead | None = None
        try:
            conn, head = await session.exchange("POST", body=body, idle=timeouts.read)
            uid = head.headers.get("x-mars-uid") or None
            if uid:
                self._job_id = ctx.job.job_id = uid
            if head.status != 200:
                return _Posted(uid, await self._refused(conn, head, ctx, server))
            if not head.chunked:
                return _Posted(
                    uid,
                    Outcome.failed(
                        Action.NEXT_SERVER,
                        "protocol_error",
                        TransferError(
                            f"{server} answered the job without the chunked coding, so the "
                            "RWND/ENDR/EROR markers cannot be told from data"
                        ),
                        eject=True,
                        job_id=uid,
                    ),
                )
            # The body is decoded and written as it arrives, in the protocol
            # callback; this task only waits for its end.
            if not await conn.stream(writer.take, timeouts.read):
                try:
                    stream.feed_eof()
                except TransferError as exc:
                    raise conn.closed_error(exc) from None
                raise _Closed("connection closed")  # pragma: no cover - feed_eof raised
            trailer = writer.trailer
            if trailer is not None:
                verdict = classify_error_trailer(trailer.payload, server=server)
                assert verdict.error is not None
                return _Posted(
                    uid,
                    Outcome.failed(
                        verdict.action,
                        verdict.error_class or "mars_failed",
                        verdict.error,
                        eject=verdict.error_class == "transfer_broken",
                        next_allowed=verdict.next_allowed,
                        job_id=uid,
                    ),
                )
            conn.reader.body_done(stray=stream.stray)
            return _Posted(uid)
        except _Closed as exc:
            if stream.ended:
                return _Posted(
                    uid
                )  # ENDR came: the data is complete, only the HTTP end is missing
            broken = _broken(exc, server, part.size - start, uid)
            if head is None and (session.conn is None or not session.conn.reader.response_bytes):
                # Not a byte of answer. The real server does this when MARS exits 0
                # having written nothing; its log is then under the request id.
                request_id = ctx.environ.get("request_id")
                return _Posted(
                    None if request_id is None else str(request_id), broken, silent=True
                )
            return _Posted(uid, broken)
        except TimeoutError:
            if stream.ended:
                return _Posted(uid)
            part.truncate(start)
            return _Posted(
                uid,
                Outcome.failed(
                    Action.NEXT_SERVER,
                    "read_timeout",
                    ServerLost(
                        f"nothing received from {server} for {timeouts.read:g}s "
                        f"(read_timeout) after {stream.data_bytes} data bytes"
                    ),
                    eject=True,
                    job_id=uid,
                ),
                fetch=False,
            )
        except (TransferError, OSError) as exc:
            return _Posted(uid, _broken(exc, server, part.size - start, uid))

    async def _refused(
        self, conn: _Conn, head: ResponseHead, ctx: JobContext, server: str
    ) -> Outcome:
        """Classify a non-200 answer; for a rejection, pass the body's text to the log."""
        uid = head.headers.get("x-mars-uid") or None
        try:
            body = await conn.body(_ERROR_BODY_LIMIT, ctx.plan.timeouts.read)
        except (TimeoutError, TransferError, OSError) as exc:
            body = f"(the answer's body could not be read: {exc})".encode()
        verdict = classify_status(head.status, head.headers, server=server, detail=_preview(body))
        assert verdict.error is not None
        if verdict.error_class == "mars_rejected":
            try:
                for line in _json_lines(body):
                    await ctx.sink.line(line)
            except LogHandlerError as exc:
                return Outcome.failed(Action.FINAL, "log_handler_error", exc, job_id=uid)
        return Outcome.failed(
            verdict.action,
            verdict.error_class or "http_error",
            verdict.error,
            next_allowed=verdict.next_allowed,
            job_id=uid,
        )

    async def _fetch_log(self, session: _Session, ctx: JobContext, uid: str | None) -> _MarsLog:
        """Feed MARS's log to the sink, then delete it on the server.

        A failure to fetch or delete is only noted in the log; the sink
        raising (:class:`~marsconn.errors.LogHandlerError`) propagates, after
        the log is deleted all the same.
        """
        server = session.server
        log = _MarsLog()
        if uid is None or _UID.fullmatch(uid) is None:
            await ctx.sink.line(
                f"marsconn - WARNING - could not fetch the MARS log from {server}: "
                f"the answer carried no valid X-MARS-UID ({uid!r})"
            )
            return log
        try:
            reason = await self._stream_log(session, ctx, uid, log)
            if reason is not None:
                await ctx.sink.line(
                    f"marsconn - WARNING - could not fetch the MARS log from {server}: {reason}"
                )
        except LogHandlerError:
            # The handler failed; the log must not pile up on the server for that.
            await self._delete_log(session, uid)
            raise
        if log.status != 404:
            reason = await self._delete_log(session, uid)
            if reason is not None:
                await ctx.sink.line(
                    f"marsconn - WARNING - could not delete the MARS log on {server}: {reason}"
                )
        return log

    async def _stream_log(
        self, session: _Session, ctx: JobContext, uid: str, log: _MarsLog
    ) -> str | None:
        """``GET /<uid>`` line by line into the sink; the reason if it failed."""
        limit = ctx.plan.timeouts.request
        splitter = _LineSplitter()
        errors = log.errors

        async def take(line: str) -> None:
            if classify_line(line) == "error":
                errors.add(line)
            await ctx.sink.line(line)

        try:
            conn, head = await session.exchange("GET", uid, idle=limit)
            log.status = head.status
            if head.status != 200:
                await conn.body(0, limit)
                return f"HTTP {head.status}"
            while True:
                for event in await conn.events(limit):
                    if isinstance(event, BodyPiece):
                        for line in splitter.feed(event.data):
                            await take(line)
                    elif isinstance(event, ResponseEnd):
                        for line in splitter.flush():
                            await take(line)
                        return None
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return f"no answer within {limit:g}s"
        except LogHandlerError:
            raise
        except Exception as exc:
            return str(exc) or type(exc).__name__

    async def _delete_log(self, session: _Session, uid: str) -> str | None:
        """``DELETE /<uid>``; the reason if it failed."""
        limit = session.plan.timeouts.request
        try:
            conn, head = await session.exchange("DELETE", uid, idle=limit)
            await conn.body(0, limit)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return f"no answer within {limit:g}s"
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None if 200 <= head.status < 300 else f"HTTP {head.status}"


def _broken(exc: BaseException, server: str, nbytes: int, uid: str | None) -> Outcome:
    return Outcome.failed(
        Action.NEXT_SERVER,
        "transfer_broken",
        TransferError(f"transfer from {server} broke after {nbytes} bytes: {exc}"),
        eject=True,
        job_id=uid,
    )


def _target_failure(exc: BaseException, target: Path) -> Outcome:
    error = exc if isinstance(exc, TargetError) else TargetError(f"cannot write {target}: {exc}")
    return Outcome.failed(Action.FINAL, "target_error", error)
