"""Small helpers for tests that talk to (or fail to reach) servers.

- :func:`free_port` and :func:`dead_url` give ports nothing listens on;
- :class:`SilentServer` accepts TCP connections and never answers, the
  shape of a server that hangs during the handshake;
- :func:`run_in_thread` / :class:`ServerThread` run any async test server on
  a background event loop so synchronous code can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

__all__ = [
    "AsyncServer",
    "ServerThread",
    "SilentServer",
    "dead_url",
    "free_port",
    "run_in_thread",
]


class ServerLifecycle:
    """``async with`` support for a test server that has async ``start()``/``stop()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def client_url(scheme: str, host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago.

    The socket is closed before returning, so another process may take the
    port in between; good enough for tests, not for production.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dead_url(scheme: str = "ws") -> str:
    """A ``scheme://127.0.0.1:PORT`` URL whose port refuses connections."""
    return f"{scheme}://127.0.0.1:{free_port()}"


class SilentServer(ServerLifecycle):
    """A TCP server on 127.0.0.1 that accepts connections, reads, and never answers.

    Clients connecting to it hang in their (TLS or WebSocket/HTTP) handshake
    until their own timeout fires, which is what handshake-timeout tests need.
    Use it as an async context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        #: How many connections were accepted so far.
        self.accepted = 0

    async def start(self) -> None:
        """Start listening on a random port of 127.0.0.1."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every accepted connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if server is not None:
            await server.wait_closed()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    def url_for(self, scheme: str) -> str:
        """``scheme://127.0.0.1:PORT`` for this server, e.g. ``url_for("wss")``."""
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        try:
            # Reading keeps the client's writes from backing up, so it waits
            # for an answer rather than for buffer space.
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)


class AsyncServer(Protocol):
    """Anything with async ``start()`` and ``stop()``: the test servers here."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


_S = TypeVar("_S", bound=AsyncServer)

# Bounds how long a synchronous caller waits for a server to start or stop;
# a test server that takes longer is broken, and hanging the test run would
# hide that.
_THREAD_TIMEOUT = 30.0


class ServerThread(Generic[_S]):
    """Runs an async test server on its own event loop in a daemon thread.

    :meth:`start` returns once the server listens (or raises what its
    ``start()`` raised); :meth:`stop` stops the server, ends the loop and
    joins the thread. Also a context manager yielding the server itself::

        with ServerThread(WsMarsServer(root)) as server:
            use(server.url)

    Read the server's attributes (``jobs``, ``connections``...) from the
    calling thread only for inspection; they change on the server's loop.
    """

    def __init__(self, server: _S) -> None:
        self.server = server
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> _S:
        """Start the server in a background thread; return it once it listens."""
        if self._thread is not None:
            raise RuntimeError("thread already started")
        self._thread = threading.Thread(
            target=self._run, name=f"{type(self.server).__name__}-thread", daemon=True
        )
        self._thread.start()
        if not self._started.wait(_THREAD_TIMEOUT):
            raise TimeoutError(f"{type(self.server).__name__} did not start in time")
        if self._error is not None:
            self._thread.join(_THREAD_TIMEOUT)
            error, self._error = self._error, None
            raise error
        return self.server

    def stop(self) -> None:
        """Stop the server and join the thread; re-raise what ``stop()`` raised."""
        thread = self._thread
        if thread is None:
            return
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(event.set)
        thread.join(_THREAD_TIMEOUT)
        if thread.is_alive():
            raise TimeoutError(f"{type(self.server).__name__} did not stop in time")
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            # Never leave start() waiting, whatever happened.
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        await self.server.start()
        self._started.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.server.stop()


@contextlib.contextmanager
def run_in_thread(server: _S) -> Iterator[_S]:
    """Run ``server`` on a background event loop for the duration of a ``with`` block.

    ``with run_in_thread(WsMarsServer(root)) as srv: ... srv.url ...``
    """
    thread = ServerThread(server)
    started = thread.start()
    try:
        yield started
    finally:
        thread.stop()
