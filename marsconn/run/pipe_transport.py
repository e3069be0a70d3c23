"""Pipe (HTTP) transport: MARS's output streamed straight into a temporary file.

The attempt logic: HTTP framing and the meaning of the body's markers live in
:mod:`marsconn.wire`, the connection in :mod:`marsconn.run.pipe_connection`, the
temporary file in :mod:`marsconn.run.pipe_partfile`. One attempt is one kept-alive connection
to one server (a new one if the server closes it): ``HEAD /`` (the ping),
then one ``POST /`` per request of the list, each followed by
``GET /<uid>`` (MARS's log, fed to the log sink) and ``DELETE /<uid>``.
Data goes to a hidden temporary file beside the target, which replaces the
target only once every request ended with ``ENDR``: on any failure the
target is left exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import JobKilledError, LogHandlerError, NoDataError, TargetError, TransferError
from ..core.neutralise import neutralise
from ..core.outcome import Action, Outcome, ServerLost
from ..plan.endpoints import Endpoint
from ..wire.http_response import (
    BodyPiece,
    Buffer,
    ResponseEnd,
    ResponseHead,
    Searchable,
)
from ..wire.pipe_body import ErrorTrailer, Rewind
from ..wire.pipe_request import encode_job, merged_request
from ..wire.pipe_stream import PipeStream, StreamItem
from ..wire.pipe_verdict import classify_error_trailer, classify_status
from .connecting import tls_context
from .job import JobContext
from .logs import classify_line
from .pipe_connection import _Closed, _Conn, _connect_failed, _Session
from .pipe_partfile import _PartFile

__all__ = ["PipeTransport"]

# Error answers and their bodies are small; more than this is not read.
_ERROR_BODY_LIMIT = 1024 * 1024
# A MARS log line longer than this is passed on in pieces.
_MAX_LOG_LINE = 64 * 1024
_UID = re.compile(r"[a-f0-9-]{36}")


# --- the socket ------------------------------------------------------------------------------


# --- the output file --------------------------------------------------------------------------


# --- the transport ----------------------------------------------------------------------------


class _BodyWriter:
    """Decodes a job's streamed body and writes its data, inside the protocol callback.

    The data views point into the receive buffer and are written before
    the callback returns, in order with the truncations ``RWND`` and
    ``EROR`` ask for. As before :class:`~marsconn.wire.pipe_stream.PipeStream`,
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
        before = stream.data_bytes
        items = stream.feed(data, start, end)
        if stream.plain:
            if items:
                # All data: their total is what the stream counted.
                self.part.write(items, stream.data_bytes - before)  # type: ignore[arg-type]
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
        """One attempt; see :class:`marsconn.run.job.Transport`."""
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
        raising (:class:`~marsconn.core.errors.LogHandlerError`) propagates, after
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
