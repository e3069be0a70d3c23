"""A TCP relay that records what a server sends, for tests that must know what was on the wire.

The real WebSocket server can drop messages it no longer manages to send
(log lines read from MARS after it has scheduled its close): what the
client must deliver is what the server sent, and only the bytes between
them can tell. :class:`Relay` listens on 127.0.0.1 and a free port,
forwards each connection to the server both ways, and keeps every byte the
server sent on it.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Relay"]


class Relay:
    """``async with Relay(host, port) as relay``: connect to ``relay.port`` instead."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.target_port = port
        self.port = 0
        #: What the server sent, one bytearray per relayed connection, in order.
        self.received: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = bytearray()
        self.received.append(record)
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.target_port)
            try:
                await asyncio.gather(
                    _pipe(client_r, server_w, None), _pipe(server_r, client_w, record)
                )
            finally:
                server_w.close()
        finally:
            client_w.close()
            self._tasks.discard(task)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    """Copy until EOF or a reset; then pass the EOF on."""
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
