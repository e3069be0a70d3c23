"""One kept-alive connection to one pipe server: socket, buffers, HTTP exchanges.

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
import mmap
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from ..core.errors import TransferError
from ..core.outcome import Outcome
from ..core.tls import client_context
from ..core.version import __version__
from ..plan.endpoints import Endpoint, ServerURL
from ..plan.model import ConnectionPlan
from ..wire.http_response import (
    BodyPiece,
    HttpEvent,
    HttpResponseReader,
    ResponseEnd,
    ResponseHead,
    Searchable,
)
from ..wire.pipe_request import encode_request
from .connecting import connect_failure

__all__ = ["READ_BUFFER", "READ_BUFFER_MAX", "STREAM_BUFFER", "STREAM_THREADS", "THREAD_AFTER"]

#: A connection's own receive buffer: heads, small bodies, MARS's log.
READ_BUFFER = 16 * 1024


#: How far a connection's own buffer grows for a large body it reads whole (a long log).
READ_BUFFER_MAX = 256 * 1024


#: The buffer a job's output is received into: shared by the connections
#: streaming in the protocol callbacks of a thread (see _SharedBuffer), one per
#: worker-thread transfer. Through the real pipe server, 256 KiB reads beat
#: 128 KiB and 1 MiB on CPU and on wall time (docs/performance.md).
STREAM_BUFFER = 256 * 1024


#: A body that has streamed this many bytes in the protocol callback goes on in
#: a worker thread reading a duplicate of the socket (plain TCP; TLS stays in the
#: loop): a read then costs a system call and the decoding, not an event-loop turn.
THREAD_AFTER = 2 * 1024 * 1024


#: Transfers in worker threads at once; others stay in the protocol callback.
STREAM_THREADS = 4


# TCP keepalive: a peer that vanished without a FIN or RST (powered off,
# partitioned) is noticed after about idle + interval * count seconds even
# when read_timeout is long.
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


# Characters kept as they are when a server URL's path and query go into a request line.
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"


_CLOSE_GRACE = 1.0


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


class _StreamThreads:
    """The worker threads that receive large bodies, and how many are taken.

    A slot is taken before a transfer moves to a thread and given back when
    it ends, so a transfer never waits in the pool's queue: when every slot
    is taken it stays in the protocol callback. The pool is made on first
    use and forgotten in a forked child (its threads do not exist there).
    """

    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None
    _free = STREAM_THREADS

    @classmethod
    def take(cls) -> ThreadPoolExecutor | None:
        with cls._lock:
            if cls._free <= 0:
                return None
            cls._free -= 1
            if cls._pool is None:
                cls._pool = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix="marsconn-pipe")
            return cls._pool

    @classmethod
    def give_back(cls) -> None:
        with cls._lock:
            cls._free += 1

    @classmethod
    def forget(cls) -> None:
        cls._lock = threading.Lock()
        cls._pool = None
        cls._free = STREAM_THREADS


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_StreamThreads.forget)


def _pump(sock: socket.socket, sink: _Sink, stopped: list[bool], idle: float) -> bool:
    """In a worker thread: feed ``sink`` from the socket; True when it is satisfied.

    False at EOF, or when ``stopped[0]`` was set (the retrieval was cancelled:
    the sink is not called again). A wait of more than ``idle`` seconds for
    the next bytes raises TimeoutError; what the sink raises propagates.

    Each read is tried first and the thread waits only when nothing has
    arrived: with a server streaming faster than the client writes, most
    reads find bytes waiting. (A socket timeout would ``poll`` before every
    read: a third of the transfer's system calls, 1,300 per 300 MB.) The
    socket is non-blocking anyway: it shares its open file with the event
    loop's transport.
    """
    data = mmap.mmap(-1, STREAM_BUFFER)
    view = memoryview(data)
    recv_into = sock.recv_into
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while True:
            try:
                count = recv_into(view)
            except BlockingIOError:
                if not selector.select(idle):
                    raise TimeoutError(f"no bytes for {idle:g}s") from None
                continue
            if stopped[0] or not count:
                return False
            if sink(data, 0, count):
                return True


async def _joined(future: asyncio.Future[bool]) -> None:
    """Wait until ``future`` (a worker thread) is done, whatever cancels the waiting task."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})
    if not future.cancelled():
        future.exception()  # seen: the cancellation is what the caller reports


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
        # Bytes a body may still stream in the callback before moving to a thread.
        self._until_thread = sys.maxsize
        self._moving: _Sink | None = None  # the sink of a body moving to a thread
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
            self._until_thread -= nbytes
            if self._until_thread <= 0:
                self._until_thread = sys.maxsize
                self._move_to_thread(sink)
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
        transport = self._transport
        if (
            transport is not None
            and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None
        ):
            self._until_thread = THREAD_AFTER - (end - start)
        self._resume()
        return False

    def _move_to_thread(self, sink: _Sink) -> None:
        """Large body: stop reading here; :meth:`drain` hands the socket to a worker thread."""
        self._moving = sink
        self._stop_sink()
        self._pause()
        self._wake()

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
        moving, self._moving = self._moving, None
        if moving is not None and not self._sink_done:
            return await self._drain_in_thread(moving, idle)
        return self._sink_done

    async def _drain_in_thread(self, sink: _Sink, idle: float) -> bool:
        """Go on feeding ``sink`` from a worker thread reading a duplicate of the socket.

        Reading from the loop stays paused meanwhile. A thread is used only
        when one is free (else the callback goes on as before). However the
        wait ends, the thread has returned before this does: the sink and
        the file it writes are never used after. On cancellation the socket
        is shut down, which wakes the thread and tells the server its client
        is gone, as dropping the connection does.
        """
        pool = _StreamThreads.take()
        transport = self._transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if pool is None or raw is None or self.closed:
            if pool is not None:
                _StreamThreads.give_back()
            if self.closed or self._eof:
                return False
            # Every thread is busy: carry on in the protocol callback.
            self._sink = sink
            self._shared = _SharedBuffer.acquire()
            self._resume()
            return await self.drain(idle)
        stopped = [False]
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            future = asyncio.get_running_loop().run_in_executor(
                pool, _pump, sock, sink, stopped, idle
            )
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                stopped[0] = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                await _joined(future)
                raise
        finally:
            sock.close()
            _StreamThreads.give_back()

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
