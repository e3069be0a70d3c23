"""The limit for pipe-mode benchmarks: a minimal blocking reader of a pipe server's answer.

One ``POST /`` on a blocking socket, ``recv_into`` one buffer, the chunked
framing parsed in place (size line, data, CRLF; ``ENDR`` and ``RWND``
understood, ``EROR`` an error), the data pieces of each read written with
one ``os.writev``; then MARS's log fetched and deleted, as every client
must. No timeouts, no retries, no temporary file, no fsync: what is left is
the work no client can avoid, in as little Python as will do it.

:data:`VARIANTS` are the same loop with one thing changed (read size, a
fixed socket receive buffer, ``splice`` instead of ``recv_into`` and
``writev`` for the data), measured beside it by ``bench_pipe_real.py
--variants`` to see whether any of them lowers the floor.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["VARIANTS", "limit_retrieve", "plain_request", "splice_retrieve"]

BUFFER = 256 * 1024
#: fcntl's F_SETPIPE_SZ (Linux; the fcntl module has it from Python 3.10 on some builds only).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def plain_request(host: str, port: int, method: str, path: str) -> bytes:
    """One request without a body on a fresh connection; the whole answer."""
    with socket.create_connection((host, port)) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        answer = bytearray()
        while data := sock.recv(65536):
            answer += data
    return bytes(answer)


def _post(
    host: str, port: int, request: Mapping[str, Any], environ: Mapping[str, Any], rcvbuf: int
) -> socket.socket:
    body = json.dumps({"request": dict(request), "environ": dict(environ)}).encode()
    sock = socket.create_connection((host, port))
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.sendall(
        f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _fetch_log(host: str, port: int, environ: Mapping[str, Any]) -> None:
    uid = str(environ["request_id"])
    plain_request(host, port, "GET", f"/{uid}")
    plain_request(host, port, "DELETE", f"/{uid}")


def limit_retrieve(
    host: str,
    port: int,
    request: Mapping[str, Any],
    environ: Mapping[str, Any],
    target: str,
    buffer_size: int = BUFFER,
    rcvbuf: int = 0,
) -> dict[str, int]:
    """Retrieve into ``target``; returns the data bytes written and the number of reads.

    ``rcvbuf``: a fixed socket receive buffer (``SO_RCVBUF``, which turns
    the kernel's autotuning off); 0 leaves it to the kernel.
    """
    sock = _post(host, port, request, environ, rcvbuf)
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        end = 0
        while (head_end := buf.find(b"\r\n\r\n", 0, end)) < 0:
            n = sock.recv_into(view[end:])
            if not n:
                raise RuntimeError("connection closed inside the response head")
            end += n
        status = bytes(buf[: buf.find(b"\r\n")])
        if b" 200 " not in status + b" ":
            raise RuntimeError(f"the server answered {status!r}")
        pos = head_end + 4
        remaining = 0  # data bytes left in the current chunk
        skip = 0  # the CRLF after a chunk's data, before the next size line
        written = reads = 0
        ended = done = False
        find, writev = buf.find, os.writev
        while True:
            pieces = []
            while pos < end:
                if remaining:
                    take = remaining if remaining < end - pos else end - pos
                    pieces.append(view[pos : pos + take])
                    pos += take
                    remaining -= take
                    continue
                nl = find(b"\n", pos + skip, end)
                if nl < 0:
                    break
                size = int(buf[pos + skip : nl], 16)
                if size == 0:
                    done = True
                    break
                if size == 4:
                    if nl + 5 > end:
                        break  # the marker is not all here yet
                    marker = bytes(buf[nl + 1 : nl + 5])
                    if marker == b"ENDR":
                        ended = True
                    elif marker == b"RWND":
                        written += writev(fd, pieces) if pieces else 0
                        pieces = []
                        os.ftruncate(fd, 0)
                        os.lseek(fd, 0, os.SEEK_SET)
                        written = 0
                    elif marker == b"EROR":
                        raise RuntimeError("MARS failed (EROR)")
                    else:
                        pieces.append(bytes(marker))
                    pos, skip = nl + 5, 2
                    continue
                pos, remaining, skip = nl + 1, size, 2
            if pieces:
                written += writev(fd, pieces)
            if done:
                break
            tail = end - pos
            if tail:
                buf[:tail] = buf[pos:end]
            pos, end = 0, tail
            n = sock.recv_into(view[end:])
            reads += 1
            if not n:
                raise RuntimeError("connection closed inside the body")
            end += n
        if not ended:
            raise RuntimeError("the body ended without ENDR")
    finally:
        os.close(fd)
        sock.close()
    _fetch_log(host, port, environ)
    return {"bytes": written, "reads": reads}


def splice_retrieve(
    host: str,
    port: int,
    request: Mapping[str, Any],
    environ: Mapping[str, Any],
    target: str,
    pipe_size: int = 1 << 20,
) -> dict[str, int]:
    """The same retrieval with the data moved by ``splice`` (Linux): socket -> pipe -> file.

    The data bytes never enter the process: each data chunk goes from the
    socket into a pipe and from there into the file, which saves the copy
    out of the socket. The framing between chunks is read with ``recv``
    calls that never take more than is sure to be framing (CRLF and the
    usual size line after a data chunk: a valid body still has at least
    ``ENDR`` and its end to come). Returns the data bytes written and the
    number of system calls on the socket.
    """
    sock = _post(host, port, request, environ, 0)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    pipe_r, pipe_w = os.pipe()
    calls = written = 0
    pending = b""

    def need(count: int) -> None:
        """Read until ``pending`` holds ``count`` bytes, and no further."""
        nonlocal pending, calls
        while len(pending) < count:
            data = sock.recv(count - len(pending))
            calls += 1
            if not data:
                raise RuntimeError("connection closed inside the response")
            pending += data

    try:
        fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, pipe_size)
        head = sock.recv(65536, socket.MSG_PEEK)
        while (head_end := head.find(b"\r\n\r\n")) < 0:
            if not head:
                raise RuntimeError("connection closed inside the response head")
            head = sock.recv(len(head) + 65536, socket.MSG_PEEK)
        status = head[: head.find(b"\r\n")]
        if b" 200 " not in status + b" ":
            raise RuntimeError(f"the server answered {status!r}")
        sock.recv(head_end + 4)  # the head itself, no further
        need(3)  # the shortest size line: "0\r\n"
        ended = False
        while True:
            while (nl := pending.find(b"\n")) < 0:
                need(len(pending) + 1)
            size = int(pending[:nl], 16)
            pending = pending[nl + 1 :]
            if size == 0:
                break
            if size == 4:
                need(6)  # the marker and its CRLF
                marker, crlf, pending = pending[:4], pending[4:6], pending[6:]
                if crlf != b"\r\n":
                    raise RuntimeError("a chunk was not followed by CRLF")
                if marker == b"ENDR":
                    ended = True
                elif marker == b"RWND":
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    written = 0
                elif marker == b"EROR":
                    raise RuntimeError("MARS failed (EROR)")
                else:
                    written += os.write(fd, marker)
                need(3)
                continue
            data, pending = pending[:size], pending[size:]
            if data:
                written += os.write(fd, data)
            remaining = size - len(data)
            while remaining:
                moved = os.splice(sock.fileno(), pipe_w, min(remaining, pipe_size))
                calls += 1
                if not moved:
                    raise RuntimeError("connection closed inside a chunk")
                remaining -= moved
                while moved:
                    out = os.splice(pipe_r, fd, moved)
                    moved -= out
                    written += out
            need(9)  # CRLF and "10000\r\n", the size line of a 64 KiB chunk
            if pending[:2] != b"\r\n":
                raise RuntimeError("a chunk was not followed by CRLF")
            pending = pending[2:]
        if not ended:
            raise RuntimeError("the body ended without ENDR")
    finally:
        os.close(fd)
        os.close(pipe_r)
        os.close(pipe_w)
        sock.close()
    _fetch_log(host, port, environ)
    return {"bytes": written, "calls": calls}


Retrieve = Callable[[str, int, Mapping[str, Any], Mapping[str, Any], str], Any]

#: The limit loop with one thing changed, by name (see ``bench_pipe_real.py --variants``).
VARIANTS: dict[str, Retrieve] = {
    "read-64k": lambda *a: limit_retrieve(*a, buffer_size=64 * 1024),
    "read-1m": lambda *a: limit_retrieve(*a, buffer_size=1024 * 1024),
    "rcvbuf-4m": lambda *a: limit_retrieve(*a, rcvbuf=4 * 1024 * 1024),
    "splice": splice_retrieve,
}
