"""The limit for pipe-mode benchmarks: a minimal blocking reader of a pipe server's answer.

One ``POST /`` on a blocking socket, ``recv_into`` one buffer, the chunked
framing parsed in place (size line, data, CRLF; ``ENDR`` and ``RWND``
understood, ``EROR`` an error), the data pieces of each read written with
one ``os.writev``; then MARS's log fetched and deleted, as every client
must. No timeouts, no retries, no temporary file, no fsync: what is left is
the work no client can avoid, in as little Python as will do it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["limit_retrieve", "plain_request"]

BUFFER = 256 * 1024


def plain_request(host: str, port: int, method: str, path: str) -> bytes:
    """One request without a body on a fresh connection; the whole answer."""
    with socket.create_connection((host, port)) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        answer = bytearray()
        while data := sock.recv(65536):
            answer += data
    return bytes(answer)


def limit_retrieve(
    host: str,
    port: int,
    request: Mapping[str, Any],
    environ: Mapping[str, Any],
    target: str,
    buffer_size: int = BUFFER,
) -> dict[str, int]:
    """Retrieve into ``target``; returns the data bytes written and the number of reads."""
    body = json.dumps({"request": dict(request), "environ": dict(environ)}).encode()
    sock = socket.create_connection((host, port))
    sock.sendall(
        f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
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
    uid = str(environ["request_id"])
    plain_request(host, port, "GET", f"/{uid}")
    plain_request(host, port, "DELETE", f"/{uid}")
    return {"bytes": written, "reads": reads}
