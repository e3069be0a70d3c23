"""An in-process stand-in for the MARS pipe (HTTP/1.1) server.

:class:`PipeMarsServer` speaks the wire protocol of the ``cads-mars-server``
pipe server on a real socket, with the job's
behaviour taken from a :class:`~marsconn.testing._script.MarsScript`:

* ``HEAD /`` answers 204 (the ping);
* ``POST /`` runs the scripted job: either a failure status before any data,
  or 200 with ``X-MARS-UID`` and a chunked body whose chunk boundaries carry
  the ``RWND`` / ``ENDR`` / ``EROR`` markers; like the real server, the uid
  is the environ's ``request_id`` (a fresh uuid4 when it is None or absent),
  a MARS failure before any data (400, or 500 when killed) carries it too,
  and a MARS that exits 0 having written nothing gets no answer at all;
* ``GET /<uid>`` returns the job's log, ``DELETE /<uid>`` removes it (204
  for any uid of the server's form, as the real server answers); a uid not
  of that form, or (for ``GET``) without a log, is 404.

HTTP is parsed by hand on asyncio streams rather than with a framework so
that every byte on the wire, chunk boundaries included, is under the
script's control. The data path streams from a cached repeating buffer
through memoryview slices, so gigabytes can pass without per-byte Python
work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

from marsconn.testing._script import MarsScript, ScriptSource, data_block, pick_script
from marsconn.testing._util import ServerLifecycle, client_url

if TYPE_CHECKING:
    import ssl

__all__ = ["PipeMarsServer", "PostOutcome", "PostRecord"]

#: How a ``POST /`` ended: the whole body with ``ENDR`` (or cleanly without it
#: when the script says ``omit_endr``), an ``EROR`` trailer, a connection
#: that ended mid-body (scripted or because the client left), a non-200
#: answer, or no answer at all (MARS wrote nothing: ``write_file=False``).
PostOutcome = Literal["complete", "error", "dropped", "rejected", "no_answer"]

_UID_RE = re.compile(r"[a-f0-9-]{36}")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE_RE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)")

# The body of a job request is small JSON; anything bigger is a client bug
# and is refused before it is read.
_MAX_BODY = 16 * 1024 * 1024

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_RWND_FRAME = b"4\r\nRWND\r\n"
_ENDR_FRAME = b"4\r\nENDR\r\n"
_EROR_FRAME = b"4\r\nEROR\r\n"


@dataclass
class PostRecord:
    """One ``POST /`` the server received.

    The record is appended as soon as the request arrives and updated in
    place while the answer is sent, so a test can watch a job that is
    still streaming. Until the answer is finished ``outcome`` reads
    ``"dropped"``, which is also what remains if the server is stopped or
    the client leaves mid-body.

    ``request`` is the ``"request"`` value exactly as sent (a dict or a
    list), ``environ`` the ``"environ"`` value; both are empty when the body
    could not be parsed. ``bytes_sent`` counts data bytes only (not the
    markers), over both passes when the script rewinds.
    """

    uid: str | None
    request: dict[str, Any] | list[Any]
    environ: dict[str, Any]
    status: int
    outcome: PostOutcome
    bytes_sent: int = 0


class _BadRequest(Exception):
    """The request cannot be understood; answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _BadJob(Exception):
    """The ``POST /`` body is not a valid job description (answer 400)."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


_DEFAULT_SCRIPT = MarsScript()


class PipeMarsServer(ServerLifecycle):
    """An in-process MARS pipe server on a real socket, driven by a script.

    ``script`` is a :class:`MarsScript` or a function choosing one from the
    job's requests (always given as a list). It is read for every
    ``POST /``, so a test may assign :attr:`script` between jobs.

    Use it as an async context manager, or call :meth:`start` and
    :meth:`stop`. With ``ssl`` the server speaks HTTPS and :attr:`url` names
    ``localhost``, the name trustme issues test certificates for.

    What the server saw is kept for assertions: :attr:`posts` (every
    ``POST /`` in order), :attr:`logs` (uid to log text, until deleted),
    :attr:`deleted` (uids removed by ``DELETE``), and :attr:`errors`
    (exceptions raised by a script function or by the server itself, which
    would otherwise vanish inside a connection handler).

    How the script's fields show on this server:

    * ``run_time``: delay before the status line (success or failure);
    * ``http_status`` (or a non-zero ``returncode`` alone, as 400): fail
      before any data, with ``retry_same_host`` / ``retry_next_host`` as
      headers; a 400 (MARS exited) or 500 (MARS killed) carries
      ``X-MARS-UID`` and keeps the log for ``GET``/``DELETE``, as the real
      server does, other statuses (what a proxy in front might answer) do not;
    * ``write_file=False``: MARS exits 0 having written nothing; the real
      server then sends no answer at all and closes the connection, and so
      does this one (the log is kept);
    * otherwise 200, and ``output_size`` bytes of :func:`expected_data` in
      ``chunk_size`` chunks, ``line_delay`` seconds apart, then ``ENDR``
      (unless ``omit_endr``) and the terminating chunk;
    * ``rewind_after`` / ``error_after`` / ``die_after_bytes``: after that
      many data bytes, ``RWND`` and the data again / ``EROR`` and
      ``error_payload`` / the connection closed with no terminating chunk;
    * ``log_lines``: the text served on ``GET /<uid>``.
    """

    def __init__(
        self,
        script: ScriptSource = _DEFAULT_SCRIPT,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.script: ScriptSource = script
        self.posts: list[PostRecord] = []
        self.logs: dict[str, str] = {}
        self.deleted: list[str] = []
        self.errors: list[BaseException] = []
        self._host = host
        self._port = port
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._bound_port is None:
            raise RuntimeError("PipeMarsServer is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:40123``."""
        if self._ssl is not None:
            return f"https://localhost:{self.port}"
        return client_url("http", self._host, self.port)

    async def start(self) -> None:
        """Start listening; :attr:`port` and :attr:`url` are valid afterwards."""
        if self._server is not None:
            raise RuntimeError("PipeMarsServer is already started")
        self._stopping = False
        self._server = await asyncio.start_server(
            self._on_connect, self._host, self._port, ssl=self._ssl
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listening socket and every open connection.

        Handlers still running (a job streaming, a keep-alive connection
        waiting for its next request) are cancelled and awaited, so nothing
        is left pending when the event loop closes. Calling it twice is fine.
        """
        server = self._server
        if server is None:
            return
        self._server = None
        self._stopping = True
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # Connection handling

    async def _on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if self._stopping or task is None:
            # Accepted just before stop(): stop() no longer waits for new
            # handlers, so this one must not start anything that could hang.
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            try:
                await self._serve(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass  # the client went away; there is nobody left to answer
            except Exception as exc:
                self.errors.append(exc)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except asyncio.CancelledError:
            # Only stop() cancels handlers. Drop the connection at once rather
            # than wait for a slow reader, and end the task normally: on
            # Python 3.11 start_server's done-callback calls task.exception(),
            # which raises and gets logged for a cancelled task.
            writer.transport.abort()
            # wait_closed() cannot be used here: the cancellation may have
            # cancelled its future. The transport closes its socket in
            # callbacks (two hops with TLS); let them run before stop()
            # returns, so no socket outlives the server.
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._stopping:
            try:
                request = await _read_request(reader, writer)
            except _BadRequest as exc:
                await _send_simple(
                    writer,
                    exc.status,
                    (str(exc) + "\n").encode(),
                    "text/plain; charset=utf-8",
                    close=True,
                )
                return
            if request is None:
                return
            if not await self._dispatch(request, writer) or not request.keep_alive:
                return

    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be reused."""
        close = not request.keep_alive
        head_only = request.method == "HEAD"
        if request.path == "/":
            if request.method == "HEAD":
                await _send_simple(writer, 204, b"", None, close=close)
                return True
            if request.method == "POST":
                return await self._post(request, writer)
            await _send_simple(
                writer,
                405,
                b"method not allowed\n",
                "text/plain; charset=utf-8",
                [("Allow", "HEAD, POST")],
                close=close,
                head_only=head_only,
            )
            return True
        segment = request.path[1:]
        if "/" in segment:
            await _send_simple(
                writer,
                404,
                b"not found\n",
                "text/plain; charset=utf-8",
                close=close,
                head_only=head_only,
            )
            return True
        if request.method not in ("GET", "DELETE"):
            await _send_simple(
                writer,
                405,
                b"method not allowed\n",
                "text/plain; charset=utf-8",
                [("Allow", "GET, DELETE")],
                close=close,
                head_only=head_only,
            )
            return True
        uid = segment
        known = _UID_RE.fullmatch(uid) is not None
        if not known or (request.method == "GET" and uid not in self.logs):
            await _send_simple(
                writer, 404, b"unknown uid\n", "text/plain; charset=utf-8", close=close
            )
            return True
        if request.method == "GET":
            await _send_simple(
                writer, 200, self.logs[uid].encode(), "text/plain; charset=utf-8", close=close
            )
            return True
        # Like the real server: 204 whether or not there was a log to remove.
        if self.logs.pop(uid, None) is not None:
            self.deleted.append(uid)
        await _send_simple(writer, 204, b"", None, close=close)
        return True

    # The job

    async def _post(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        close = not request.keep_alive
        record = PostRecord(uid=None, request={}, environ={}, status=0, outcome="dropped")
        self.posts.append(record)
        try:
            original, requests, environ = _parse_job(request.body, record)
        except _BadJob as exc:
            record.status = 400
            record.outcome = "rejected"
            await _send_json(writer, 400, {"error": str(exc)}, [], close=close)
            return True
        record.request = original
        record.environ = environ

        try:
            script = pick_script(self.script, requests)
            _check_script(script)
        except Exception as exc:
            # A broken script is a bug in the test, not a MARS failure: tell
            # the client not to retry, and keep the exception for the test.
            self.errors.append(exc)
            record.status = 500
            record.outcome = "rejected"
            headers = [("X-MARS-RETRY-SAME-HOST", "0"), ("X-MARS-RETRY-NEXT-HOST", "0")]
            body = {"error": f"stand-in script failed: {exc!r}"}
            await _send_json(writer, 500, body, headers, close=close)
            return True

        # MARS runs for a while before it writes its first byte or exits.
        if script.run_time > 0:
            await asyncio.sleep(script.run_time)

        # The real server names MARS's log (and answers X-MARS-UID) after the request id.
        given = environ.get("request_id")
        uid = str(uuid.uuid4()) if given is None else str(given)
        status = _failure_status(script)
        if status is not None:
            record.status = status
            record.outcome = "rejected"
            if status in (400, 500):
                # MARS ran and failed: its log stays for GET/DELETE.
                record.uid = uid
                self.logs[uid] = script.log_text()
                await _send_failure(writer, status, script, uid, close=close)
            else:
                await _send_failure(writer, status, script, None, close=close)
            return True

        record.uid = uid
        self.logs[uid] = script.log_text()
        if not script.write_file:
            # MARS exited 0 without writing a byte: the real server answers
            # nothing and closes the connection.
            record.outcome = "no_answer"
            return False
        record.status = 200
        headers = [
            ("X-MARS-UID", uid),
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
        ]
        writer.write(_response_head(200, headers, close=close))
        record.outcome = await _stream_body(writer, script, record)
        return record.outcome != "dropped"


# Requests


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    """Read one request; None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "request head too large") from None

    lines = head[:-4].decode("latin-1").split("\r\n")
    # RFC 9112 asks servers to ignore empty lines before a request line.
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise _BadRequest(400, "empty request")
    match = _REQUEST_LINE_RE.fullmatch(lines[0])
    if match is None:
        raise _BadRequest(400, "malformed request line")
    method, target, major, minor = match.groups()
    if (major, minor) != ("1", "1"):
        raise _BadRequest(505, "only HTTP/1.1 is supported")
    if not target.startswith("/"):
        raise _BadRequest(400, "request target must be an absolute path")

    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or _TOKEN_RE.fullmatch(name) is None:
            raise _BadRequest(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    if "transfer-encoding" in headers:
        raise _BadRequest(411, "request bodies must use Content-Length")
    length = 0
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise _BadRequest(400, "invalid Content-Length")
        length = int(values.pop())
    elif method == "POST":
        raise _BadRequest(411, "POST needs a Content-Length")
    if length > _MAX_BODY:
        raise _BadRequest(413, "request body too large")

    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await reader.readexactly(length) if length else b""

    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    path = target.split("?", 1)[0]
    return _Request(method, path, headers, body, keep_alive="close" not in connection)


def _parse_job(
    body: bytes, record: PostRecord
) -> tuple[dict[str, Any] | list[Any], list[dict[str, Any]], dict[str, Any]]:
    """Return (request as sent, requests as a list, environ) or raise _BadJob.

    What could be read is put on ``record`` even when the job is refused, so
    a test can see what a faulty client sent.
    """
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _BadJob(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadJob("body must be a JSON object")
    request = payload.get("request")
    environ = payload.get("environ")
    if isinstance(request, dict | list):
        record.request = request
    if isinstance(environ, dict):
        record.environ = environ
    if "request" not in payload:
        raise _BadJob("missing key 'request'")
    if "environ" not in payload:
        raise _BadJob("missing key 'environ'")
    if isinstance(request, dict):
        requests = [request]
    elif isinstance(request, list) and request and all(isinstance(r, dict) for r in request):
        requests = list(request)
    else:
        raise _BadJob("'request' must be an object or a non-empty list of objects")
    if not isinstance(environ, dict):
        raise _BadJob("'environ' must be an object")
    return request, requests, environ


def _check_script(script: MarsScript) -> None:
    if not isinstance(script, MarsScript):
        raise TypeError(f"script function returned {type(script).__name__}, not MarsScript")
    if script.chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if script.output_size < 0:
        raise ValueError("output_size must not be negative")


def _failure_status(script: MarsScript) -> int | None:
    """The non-200 status to answer, if the script fails before any data.

    A non-zero ``returncode`` without ``http_status`` also fails with 400:
    the real server answers that way when MARS exits before writing, and it
    keeps one script meaning the same on the WebSocket server (which
    reports the return code) and here. Scripts that fail after data has
    started say so with ``error_after`` / ``die_after_bytes`` instead.
    """
    if script.http_status is not None:
        return script.http_status
    if script.returncode != 0 and script.error_after is None and script.die_after_bytes is None:
        return 400
    return None


# Responses


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response_head(status: int, headers: list[tuple[str, str]], *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", "Server: marsconn-testing"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_simple(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str | None,
    headers: list[tuple[str, str]] | None = None,
    *,
    close: bool,
    head_only: bool = False,
) -> None:
    """Send a response with a Content-Length body (none for 1xx/204/304)."""
    all_headers = list(headers or [])
    bodiless = status < 200 or status in (204, 304)
    if not bodiless:
        if content_type is not None:
            all_headers.append(("Content-Type", content_type))
        all_headers.append(("Content-Length", str(len(body))))
    head = _response_head(status, all_headers, close=close)
    writer.write(head if bodiless or head_only else head + body)
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: dict[str, Any],
    headers: list[tuple[str, str]],
    *,
    close: bool,
) -> None:
    body = json.dumps(payload).encode()
    await _send_simple(writer, status, body, "application/json", headers, close=close)


async def _send_failure(
    writer: asyncio.StreamWriter,
    status: int,
    script: MarsScript,
    uid: str | None,
    *,
    close: bool,
) -> None:
    headers: list[tuple[str, str]] = [] if uid is None else [("X-MARS-UID", uid)]
    payload: dict[str, Any]
    if status == 400:
        payload = {"exited": script.returncode}
        headers.append(("X-MARS-EXIT-CODE", str(script.returncode)))
    elif status == 500:
        payload = {"killed": 9}
        headers.append(("X-MARS-SIGNAL", "9"))
    else:
        payload = {"error": _reason(status)}
    if script.retry_same_host is not None:
        headers.append(("X-MARS-RETRY-SAME-HOST", "1" if script.retry_same_host else "0"))
    if script.retry_next_host is not None:
        headers.append(("X-MARS-RETRY-NEXT-HOST", "1" if script.retry_next_host else "0"))
    await _send_json(writer, status, payload, headers, close=close)


# The chunked body


@functools.lru_cache(maxsize=4)
def _pattern(seed: int, chunk_size: int) -> tuple[bytes, int]:
    """The data block repeated to cover any chunk_size slice, and the block size.

    The data stream is one block repeated, so the bytes at stream offset
    ``p`` are ``pattern[p % block : p % block + n]`` for any ``n`` up to
    ``chunk_size``: every chunk is a zero-copy memoryview slice.
    """
    block = data_block(seed)
    repeats = -(-chunk_size // len(block)) + 1
    return block * repeats, len(block)


@functools.lru_cache(maxsize=64)
def _chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size


def _frame(payload: bytes) -> bytes:
    return _chunk_header(len(payload)) + payload + _CRLF


async def _stream_body(
    writer: asyncio.StreamWriter, script: MarsScript, record: PostRecord
) -> PostOutcome:
    """Send the chunked body of a successful job; return how it ended.

    The thresholds (``die_after_bytes``, ``error_after``, ``rewind_after``)
    count data bytes sent since the body began, across a rewind; a chunk
    that would cross one is split so the count is exact. When several fall
    on the same byte, dying wins over the error, and the error over the
    rewind. The rewind happens once.
    """
    size = script.output_size
    chunk_size = script.chunk_size
    pattern, block_size = _pattern(script.seed, chunk_size)
    view = memoryview(pattern)
    die = script.die_after_bytes
    error = script.error_after
    rewind = script.rewind_after
    sent = 0
    position = 0  # offset in the data stream of the current pass
    first = True
    while True:
        if die is not None and sent >= die:
            await _drop(writer)
            return "dropped"
        if error is not None and sent >= error:
            payload = json.dumps(dict(script.error_payload)).encode()
            writer.write(_EROR_FRAME + _frame(payload) + _LAST_CHUNK)
            await writer.drain()
            return "error"
        if rewind is not None and sent >= rewind:
            rewind = None
            position = 0
            writer.write(_RWND_FRAME)
            continue
        if position >= size:
            break
        n = min(chunk_size, size - position)
        for limit in (die, error, rewind):
            if limit is not None:
                n = min(n, limit - sent)
        if script.line_delay > 0 and not first:
            await asyncio.sleep(script.line_delay)
        first = False
        start = position % block_size
        # Three writes, not one joined bytes object: the data slice goes to
        # the transport without being copied into a framed buffer first.
        writer.write(_chunk_header(n))
        writer.write(view[start : start + n])
        writer.write(_CRLF)
        await writer.drain()
        sent += n
        position += n
        record.bytes_sent = sent
    writer.write(_LAST_CHUNK if script.omit_endr else _ENDR_FRAME + _LAST_CHUNK)
    await writer.drain()
    return "complete"


async def _drop(writer: asyncio.StreamWriter) -> None:
    """End the connection mid-body, after the bytes already written.

    ``transport.abort()`` would discard whatever is still buffered, so the
    client would see fewer bytes than ``die_after_bytes``; closing flushes
    them first and then closes the socket, which the client sees as the
    connection ending without the terminating chunk.
    """
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
