"""Run a retrieval through a ConnectionPlan: one failover engine, two transports.

The engine walks the plan's endpoints in the policy's order (healthy servers
first), asks the transport for one attempt at a time and acts on the
transport's classification: success, next server, same server, or final.
It never sleeps between two servers of one pass, only between passes, and
never runs a job again that MARS rejected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import reprlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import audit
from ..core.errors import JobKilledError, NoServerAvailableError, PreflightError
from ..core.outcome import Action, Outcome, ServerLost
from ..plan.endpoints import Endpoint
from ..plan.model import ConnectionPlan, Mode
from .health import Admission, ServerHealth, Ticket, default_health
from .job import Job, JobContext, Transport
from .logs import LineLogger, LogHandler, LogSink
from .preflight import check_environ, check_requests, check_target
from .result import Attempt, Result

__all__ = ["REQUIRED_ENVIRON", "execute", "execute_async"]

#: Keys the servers require in ``environ`` (present; their values may be None).
REQUIRED_ENVIRON = ("request_id", "user_id", "namespace", "host", "username")
#: A request id the pipe server accepts as a log name (its ``validate_uuid``).
_REQUEST_ID = re.compile(r"[a-f0-9-]{36}")


def _transport_for(mode: Mode) -> Transport:
    if mode is Mode.WEBSOCKET:
        from .ws_transport import WebSocketTransport

        return WebSocketTransport()
    from .pipe_transport import PipeTransport

    return PipeTransport()


def _normalise(
    requests: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    environ: Mapping[str, Any],
    target: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    if isinstance(requests, Mapping):
        reqs = [dict(requests)]
    elif isinstance(requests, Sequence) and not isinstance(requests, str | bytes):
        bad = [i for i, r in enumerate(requests) if not isinstance(r, Mapping)]
        if bad:
            raise PreflightError(f"requests[{bad[0]}] is not a dict (MARS requests are dicts)")
        reqs = [dict(r) for r in requests]
        if not reqs:
            raise PreflightError(
                "requests is an empty list; give a request dict or a list of them"
            )
    else:
        raise PreflightError(
            f"requests is a {type(requests).__name__}; give a request dict or a list of them"
        )
    if not isinstance(environ, Mapping):
        raise PreflightError(
            f"environ is a {type(environ).__name__}; give a dict with the keys "
            f"{', '.join(REQUIRED_ENVIRON)}"
        )
    missing = [k for k in REQUIRED_ENVIRON if k not in environ]
    if missing:
        raise PreflightError(
            f"environ lacks {', '.join(missing)}; the servers need the keys "
            f"{', '.join(REQUIRED_ENVIRON)} to be present (a value may be None; username is "
            "usually namespace:<last part of user_id>)"
        )
    env = dict(environ)
    request_id = env["request_id"]
    if request_id is None:
        env["request_id"] = str(uuid.uuid4())
    elif not isinstance(request_id, str) or _REQUEST_ID.fullmatch(request_id) is None:
        raise PreflightError(
            f"environ['request_id'] is {reprlib.repr(request_id)}: not a UUID in the servers' "
            "form; the pipe "
            "server names MARS's log file after it and serves and deletes that log only for "
            "such ids, the WebSocket server names its request file after it. Accepted: 36 "
            "characters of lower-case hex digits and '-', as str(uuid.uuid4()) gives, or None "
            "(marsconn then generates one)"
        )
    check_requests(reqs)
    check_environ(env)
    return reqs, env, _target_path(target)


def _target_path(target: str | os.PathLike[str]) -> Path:
    """The absolute output path (a relative one is resolved against the working directory)."""
    try:
        path = Path(target)
    except TypeError:
        raise PreflightError(
            f"target is a {type(target).__name__}; give the output file's path "
            "(a str or a path-like object)"
        ) from None
    check_target(path)
    path = path.absolute()
    if path.is_dir():
        raise PreflightError(
            f"target {str(path)!r} is an existing directory; give the path of the output "
            "file, whose directory exists"
        )
    if not path.parent.is_dir():
        raise PreflightError(
            f"target directory {str(path.parent)!r} does not exist; create it first "
            "(in WebSocket mode it must also exist on the servers' shared filesystem)"
        )
    return path


@dataclass(slots=True)
class _Walk:
    """The engine's progress, owned by the caller so a deadline can still report it."""

    attempts: list[Attempt] = field(default_factory=list)
    server: str | None = None
    pass_number: int = 0
    attempt_started: float = 0.0


async def _admitted(
    health: ServerHealth,
    pending: list[Endpoint],
    since: float,
    cooldown: float,
) -> tuple[Endpoint, Ticket]:
    """The server to try next among ``pending``, and the ticket that lets this attempt go.

    Servers another attempt is probing are passed over while others remain;
    when only those are left, this waits for a probe to end (polling: the
    registry is shared across threads and event loops).
    """
    delay = 0.001
    while True:
        busy_alive = False
        for endpoint in health.reorder(pending, key=_health_key):
            server = _health_key(endpoint)
            if busy_alive and health.is_ejected(server):
                break  # rather wait for a live server's probe than try an ejected one
            ticket = health.admit(server, since, cooldown)
            if ticket.admission is not Admission.WAIT:
                return endpoint, ticket
            busy_alive = busy_alive or not health.is_ejected(server)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _health_key(endpoint: Endpoint) -> str:
    return endpoint.url.secret()


def _skipped(ticket: Ticket, server: str, cooldown: float) -> Outcome:
    """The outcome of not trying a server whose failure another retrieval just saw."""
    return Outcome.failed(
        Action.NEXT_SERVER,
        "ejected",
        ServerLost(
            f"{server} not tried: another retrieval's attempt on it failed "
            f"{ticket.failed_ago:.1f}s ago ({ticket.failure or 'unknown'}), so it is ejected "
            f"for {cooldown:g}s"
        ),
    )


async def _run_engine(
    plan: ConnectionPlan,
    transport: Transport,
    ctx: JobContext,
    health: ServerHealth,
    audit_logger: audit.AuditLogger | None,
    state: _Walk,
) -> tuple[Outcome | None, str | None]:
    policy = plan.policy
    cooldown = policy.eject_cooldown
    request_id = str(ctx.environ["request_id"])
    attempts = state.attempts
    last: Outcome | None = None
    order = policy.ordered(plan.endpoints, request_id, ctx.rng)

    def on_reached(ticket: Ticket, server: str) -> Callable[[], None]:
        def reached() -> None:
            if health.reached(ticket):
                audit.emit(audit.ServerRestored(server), audit_logger)

        return reached

    for pass_index in range(policy.max_passes):
        state.pass_number = pass_index + 1
        since = health.now()
        pending = list(order)
        while pending:
            endpoint, ticket = await _admitted(health, pending, since, cooldown)
            pending.remove(endpoint)
            server = endpoint.url.display()
            if ticket.admission is Admission.SKIP:
                last = _skipped(ticket, server, cooldown)
                attempts.append(
                    Attempt(
                        server,
                        Action.NEXT_SERVER.value,
                        "ejected",
                        str(last.error),
                        0.0,
                        pass_index + 1,
                    )
                )
                audit.emit(
                    audit.AttemptFailed(
                        request_id,
                        plan.mode.value,
                        server,
                        len(attempts),
                        pass_index + 1,
                        "ejected",
                        str(last.error),
                        Action.NEXT_SERVER.value,
                        0.0,
                    ),
                    audit_logger,
                )
            same_host = 0
            while ticket.admission is not Admission.SKIP:
                audit.emit(
                    audit.AttemptStarted(
                        request_id, plan.mode.value, server, len(attempts) + 1, pass_index + 1
                    ),
                    audit_logger,
                )
                ctx.job.server = state.server = server
                ctx.on_reached = on_reached(ticket, server)
                started = state.attempt_started = time.perf_counter()
                try:
                    outcome = await transport.attempt(endpoint, ctx)
                except BaseException:
                    health.done(ticket)
                    raise
                finally:
                    ctx.on_reached = None
                duration = time.perf_counter() - started
                last = outcome
                retry_here = (
                    outcome.action is Action.SAME_SERVER and same_host < policy.same_host_retries
                )
                if outcome.action in (Action.SUCCESS, Action.FINAL) or retry_here:
                    action = outcome.action
                elif outcome.next_allowed:
                    action = Action.NEXT_SERVER
                else:
                    # The server asked for retries on itself only, and they are used up.
                    action = Action.FINAL
                # Record what the engine did, not what the transport suggested.
                attempts.append(
                    Attempt(
                        server,
                        action.value,
                        outcome.error_class,
                        None if outcome.error is None else str(outcome.error),
                        duration,
                        pass_index + 1,
                        outcome.job_id,
                    )
                )
                if action is Action.SUCCESS:
                    health.done(ticket)
                    if health.restore(_health_key(endpoint)):
                        audit.emit(audit.ServerRestored(server), audit_logger)
                    audit.emit(
                        audit.AttemptSucceeded(
                            request_id,
                            plan.mode.value,
                            server,
                            len(attempts),
                            pass_index + 1,
                            duration,
                        ),
                        audit_logger,
                    )
                    return outcome, server
                audit.emit(
                    audit.AttemptFailed(
                        request_id,
                        plan.mode.value,
                        server,
                        len(attempts),
                        pass_index + 1,
                        outcome.error_class or "unknown",
                        str(outcome.error),
                        action.value,
                        duration,
                    ),
                    audit_logger,
                )
                failure = (outcome.error_class or "unknown") if outcome.eject else None
                if health.done(ticket, failure, cooldown):
                    audit.emit(
                        audit.ServerEjected(server, outcome.error_class or "unknown", cooldown),
                        audit_logger,
                    )
                if action is Action.FINAL:
                    return dataclasses.replace(outcome, action=Action.FINAL), None
                if not retry_here:
                    break
                same_host += 1
                await asyncio.sleep(policy.backoff(same_host - 1, ctx.rng))
                ticket = health.enter(_health_key(endpoint))
            if not pending and pass_index == policy.max_passes - 1:
                break
            assert last is not None
            if pending:
                nxt, sleep = health.reorder(pending, key=_health_key)[0], 0.0
            else:
                # The next pass starts from a fresh health order: name the server it will
                # most likely try first.
                nxt = health.reorder(order, key=_health_key)[0]
                sleep = policy.backoff(pass_index, ctx.rng)
            audit.emit(
                audit.Failover(
                    request_id,
                    plan.mode.value,
                    server,
                    nxt.url.display(),
                    last.error_class or "unknown",
                    sleep,
                ),
                audit_logger,
            )
            if sleep:
                await asyncio.sleep(sleep)
    return last, None


async def execute_async(
    plan: ConnectionPlan,
    requests: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    environ: Mapping[str, Any],
    target: str | os.PathLike[str],
    *,
    log_handler: LogHandler | None = None,
    logger: LineLogger | None = None,
    audit_logger: audit.AuditLogger | None = None,
    health: ServerHealth | None = None,
    rng: random.Random | None = None,
) -> Result:
    """Run a retrieval through ``plan`` and return its :class:`Result`.

    ``requests`` is a MARS request dict or a list of them; ``environ`` must
    hold the keys ``request_id``, ``user_id``, ``namespace``, ``host`` and
    ``username`` (values may be None, as the servers accept); a
    ``request_id`` must be a lower-case UUID string (the servers name files
    after it) or None, and then a uuid4 is generated, sent, and reported in
    ``Result.request_id``. ``target`` is the output file's path; a relative
    one is resolved against the current working directory, and
    ``Result.target`` gives the absolute path.
    ``log_handler(line, job, logger)`` (sync or async) returns the line to
    show or None, may call ``job.kill()``, and aborts the job by raising.
    ``logger`` receives shown lines (stdlib, structlog or adaptor context).

    Inputs that cannot work raise :class:`~marsconn.core.errors.PreflightError`
    before any connection. Server and MARS failures do not raise: they are
    in ``Result.error``. Cancellation stops the job on the server and
    re-raises.
    """
    reqs, env, path = _normalise(requests, environ, target)
    return await _execute(plan, reqs, env, path, log_handler, logger, audit_logger, health, rng)


async def _execute(
    plan: ConnectionPlan,
    reqs: list[dict[str, Any]],
    env: dict[str, Any],
    path: Path,
    log_handler: LogHandler | None,
    logger: LineLogger | None,
    audit_logger: audit.AuditLogger | None,
    health: ServerHealth | None,
    rng: random.Random | None,
) -> Result:
    """:func:`execute_async` after the pre-flight checks."""
    started = time.perf_counter()
    job = Job(str(env["request_id"]))
    sink = LogSink(plan.logs, log_handler, logger, job)
    ctx = JobContext(plan, reqs, env, path, sink, job, rng)
    transport = _transport_for(plan.mode)
    registry = health if health is not None else default_health()
    deadline = plan.timeouts.job_deadline
    succeeded = False
    state = _Walk()
    try:
        async with asyncio.timeout(deadline):
            outcome, server = await _run_engine(
                plan, transport, ctx, registry, audit_logger, state
            )
        succeeded = outcome is not None and outcome.action is Action.SUCCESS
    except TimeoutError:
        expired = JobKilledError(f"job deadline of {deadline:g}s exceeded; the job was stopped")
        outcome = Outcome.failed(Action.FINAL, "job_deadline", expired)
        server = None
        if state.server is not None:
            state.attempts.append(
                Attempt(
                    state.server,
                    Action.FINAL.value,
                    "job_deadline",
                    str(expired),
                    time.perf_counter() - state.attempt_started,
                    state.pass_number,
                    ctx.job.job_id,
                )
            )
    except BaseException:
        # Cancelled (or a bug): clean up all the same, without being cancelled halfway.
        await asyncio.shield(transport.cleanup(ctx, succeeded))
        raise
    await transport.cleanup(ctx, succeeded)
    attempts = state.attempts
    sink.close()
    error: BaseException | None
    if outcome is not None and outcome.action is Action.SUCCESS:
        error = None
    elif outcome is not None and outcome.action is Action.FINAL:
        error = outcome.error
    else:
        tried = ", ".join(sorted({e.url.display() for e in plan.endpoints}))
        detail = f"; last error: {outcome.error}" if outcome is not None else ""
        error = NoServerAvailableError(
            f"no server ran the job after {plan.policy.max_passes} "
            f"pass{'es' * (plan.policy.max_passes != 1)} over {len(plan.endpoints)} "
            f"server{'s' * (len(plan.endpoints) != 1)} ({tried}){detail}"
        )
    result = Result(
        error=error,
        message=sink.text,
        mode=plan.mode.value,
        target=str(path),
        server=server,
        attempts=attempts,
        bytes=outcome.bytes if outcome is not None and error is None else 0,
        duration=time.perf_counter() - started,
        dropped_log_lines=sink.dropped,
        request_id=job.request_id,
    )
    audit.emit(
        audit.JobFinished(
            job.request_id,
            plan.mode.value,
            error is None,
            result.error_class,
            server,
            len(attempts),
            result.duration,
            result.bytes,
        ),
        audit_logger,
    )
    return result


def execute(
    plan: ConnectionPlan,
    requests: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    environ: Mapping[str, Any],
    target: str | os.PathLike[str],
    *,
    log_handler: LogHandler | None = None,
    logger: LineLogger | None = None,
    audit_logger: audit.AuditLogger | None = None,
    health: ServerHealth | None = None,
    rng: random.Random | None = None,
) -> Result:
    """Synchronous :func:`execute_async`.

    Works from plain code, from threads, and from code running inside an
    event loop (the retrieval then runs on its own loop in a helper thread
    while the caller blocks). Ctrl-C stops the job on the server, then
    ``KeyboardInterrupt`` propagates.
    """
    # Pre-flight in the caller's thread, so its errors are raised here, once.
    reqs, env, path = _normalise(requests, environ, target)

    def coro() -> Any:
        return _execute(plan, reqs, env, path, log_handler, logger, audit_logger, health, rng)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # No loop here: asyncio.Runner turns Ctrl-C into cancellation of the
        # retrieval (so the kill is sent) before re-raising KeyboardInterrupt.
        with asyncio.Runner() as runner:
            result: Result = runner.run(coro())
            return result
    return _run_in_helper_thread(coro)


def _run_in_helper_thread(make_coro: Any) -> Result:
    box: dict[str, Any] = {}
    ready = threading.Event()

    def worker() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(make_coro())
            box["loop"], box["task"] = loop, task
            ready.set()
            box["result"] = loop.run_until_complete(task)
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=worker, name="marsconn-execute", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except BaseException:
        # Interrupted while waiting: cancel the retrieval so it kills the job, then re-raise.
        ready.wait()
        if "task" in box:
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    result: Result = box["result"]
    return result
