"""The failover engine with a scripted fake transport: no sockets, exact decisions.

Real-socket behaviour of the WebSocket transport is in test_executor_ws.py; here
the transport is a stand-in that returns Outcomes, so every branch of
``marsconn.run.engine._run_engine`` / ``execute_async`` can be driven exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import marsconn
from marsconn import (
    JobKilledError,
    MarsRequestError,
    NoServerAvailableError,
    PreflightError,
    resolve_plan,
)
from marsconn.core.outcome import Action, Outcome, ServerLost
from marsconn.plan.endpoints import Endpoint
from marsconn.plan.model import ConnectionPlan, Mode
from marsconn.run import engine as executor
from marsconn.run.engine import execute_async
from marsconn.run.health import ServerHealth
from marsconn.run.job import Job, JobContext
from marsconn.run.result import Attempt
from marsconn.wire.pipe_verdict import PipeStatusError

A, B, C, D = (f"http://{h}:9000" for h in "abcd")
REQ = "00000000-0000-4000-8000-0000000000a1"
ENVIRON = {
    "request_id": REQ,
    "user_id": "00000000-0000-4000-8000-000000000001",
    "namespace": "test",
    "host": "worker-1",
    "username": "test:000000000001",
}
REAL_SLEEP = asyncio.sleep


class NullAudit:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def make_plan(urls: Sequence[str] = (A, B), **overrides: Any) -> ConnectionPlan:
    settings: dict[str, Any] = {
        "servers": list(urls),
        "failover_order": "listed",
        "retry_delay": 0,
        "eject_cooldown": 0,
        "max_retries": 2,
    }
    settings.update(overrides)
    return resolve_plan(env={}, overrides=settings, logger=NullAudit())


# --- outcomes ------------------------------------------------------------------------------------


def ok(nbytes: int = 100, job_id: str | None = "J1") -> Outcome:
    return Outcome.success(nbytes, job_id)


def refused(text: str = "connection refused", *, eject: bool = True) -> Outcome:
    return Outcome.failed(Action.NEXT_SERVER, "connect_refused", ServerLost(text), eject=eject)


def server_error(text: str = "workdir missing") -> Outcome:
    return Outcome.failed(Action.NEXT_SERVER, "server_error", ServerLost(text))


def busy(text: str = "HTTP 503") -> Outcome:
    return Outcome.failed(Action.SAME_SERVER, "http_503", ConnectionError(text))


def rejected() -> Outcome:
    return Outcome.failed(
        Action.FINAL,
        "mars_rejected",
        MarsRequestError("MARS exited with code 1", returncode=1, server=A),
        job_id="J1",
    )


Step = Outcome | Callable[[Endpoint, JobContext], Awaitable[Outcome]]


class FakeTransport:
    """Returns scripted Outcomes per server; the last step of a server repeats."""

    def __init__(self, script: dict[str, Sequence[Step]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[str] = []
        self.endpoints: list[Endpoint] = []
        self.contexts: list[JobContext] = []
        self.job_servers: list[str | None] = []
        self.cleanups: list[bool] = []
        self.cleanup_contexts: list[JobContext] = []

    async def attempt(self, endpoint: Endpoint, ctx: JobContext) -> Outcome:
        server = endpoint.url.display()
        self.calls.append(server)
        self.endpoints.append(endpoint)
        self.contexts.append(ctx)
        self.job_servers.append(ctx.job.server)
        queue = self.script[server]
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(step, Outcome):
            return step
        return await step(endpoint, ctx)

    async def cleanup(self, ctx: JobContext, success: bool) -> None:
        self.cleanups.append(success)
        self.cleanup_contexts.append(ctx)


@pytest.fixture
def modes() -> list[Mode]:
    """The modes ``_transport_for`` was asked for, in order."""
    return []


@pytest.fixture
def install(
    monkeypatch: pytest.MonkeyPatch, modes: list[Mode]
) -> Callable[[FakeTransport], FakeTransport]:
    """``install(transport)`` makes the executor use ``transport``."""

    def do(transport: FakeTransport) -> FakeTransport:
        def factory(mode: Mode) -> FakeTransport:
            modes.append(mode)
            return transport

        monkeypatch.setattr(executor, "_transport_for", factory)
        return transport

    return do


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every asyncio.sleep the engine asks for, without waiting."""
    recorded: list[float] = []

    async def fake_sleep(delay: float, result: Any = None) -> Any:
        recorded.append(delay)
        await REAL_SLEEP(0)
        return result

    monkeypatch.setattr(executor.asyncio, "sleep", fake_sleep)
    return recorded


async def run(
    plan: ConnectionPlan, target: Path, *, health: ServerHealth | None = None, **kw: Any
) -> marsconn.Result:
    kw.setdefault("audit_logger", NullAudit())
    kw.setdefault("rng", random.Random(0))
    return await execute_async(
        plan, {"param": "2t"}, ENVIRON, target, health=health or ServerHealth(), **kw
    )


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "data.grib"


def strip_durations(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        e = dict(e)
        if "duration" in e:
            assert isinstance(e["duration"], float)
            assert e["duration"] >= 0
            e["duration"] = "<float>"
        out.append(e)
    return out


# --- success and the job context -----------------------------------------------------------------


async def test_success_on_the_first_server(install, modes, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [ok(1234, "J7")], B: [ok()]}))
    plan = make_plan()
    rng = random.Random(1)
    result = await run(plan, target, rng=rng)
    assert result.ok
    assert result.error is None
    assert result.error_class is None
    assert result.server == A
    assert result.bytes == 1234
    assert result.mode == "pipe"
    assert result.target == str(target)
    assert result.message == ""
    assert result.dropped_log_lines == 0
    assert result.duration >= 0
    assert len(result.attempts) == 1
    attempt = result.attempts[0]
    assert (attempt.server, attempt.outcome, attempt.error_class, attempt.error) == (
        A,
        "success",
        None,
        None,
    )
    assert (attempt.pass_number, attempt.job_id) == (1, "J7")
    assert transport.calls == [A]
    assert transport.cleanups == [True]
    assert sleeps == []
    assert modes == [Mode.PIPE]
    ctx = transport.contexts[0]
    assert transport.cleanup_contexts == [ctx]
    assert ctx.plan is plan
    assert ctx.requests == [{"param": "2t"}]
    assert ctx.environ == ENVIRON
    assert ctx.environ is not ENVIRON
    assert ctx.target == target
    assert ctx.rng is rng
    assert ctx.job.request_id == REQ
    assert ctx.sink.job is ctx.job
    assert transport.job_servers == [A]


async def test_websocket_plan_asks_for_the_websocket_transport(
    install, modes, target: Path
) -> None:
    install(FakeTransport({"ws://a:9001": [ok()]}))
    plan = make_plan([A], use_shares=True, force_websocket_mode=True)
    with capture_logs() as events:
        result = await run(plan, target, audit_logger=structlog.get_logger())
    assert result.ok
    assert result.mode == "websocket"
    assert result.server == "ws://a:9001"
    assert modes == [Mode.WEBSOCKET]
    assert {e["mode"] for e in events} == {"websocket"}


async def test_list_of_requests_is_passed_as_copies(install, target: Path) -> None:
    transport = install(FakeTransport({A: [ok()]}))
    requests = [{"param": "2t"}, {"date": "20260101"}]
    await execute_async(
        make_plan([A]), requests, ENVIRON, target, audit_logger=NullAudit(), health=ServerHealth()
    )
    sent = transport.contexts[0].requests
    assert sent == requests
    assert all(s is not r for s, r in zip(sent, requests, strict=True))


# --- next server, same server --------------------------------------------------------------------


async def test_next_server_is_tried_at_once(install, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [refused()], B: [ok(5)]}))
    result = await run(make_plan(retry_delay=5), target)
    assert result.ok
    assert result.server == B
    assert transport.calls == [A, B]
    assert transport.job_servers == [A, B]
    assert [a.error_class for a in result.attempts] == ["connect_refused", None]
    assert [a.outcome for a in result.attempts] == ["next_server", "success"]
    assert result.attempts[0].error == "connection refused"
    assert sleeps == []
    assert transport.cleanups == [True]


@pytest.mark.parametrize("retries", [0, 1, 2, 3])
async def test_same_host_retries_are_bounded_with_backoff(
    install, sleeps, target: Path, retries: int
) -> None:
    transport = install(FakeTransport({A: [busy()], B: [ok()]}))
    plan = make_plan(same_host_retries=retries, retry_delay=0.01)
    with capture_logs() as events:
        result = await run(plan, target, rng=random.Random(7), audit_logger=structlog.get_logger())
    assert result.ok
    assert transport.calls == [A] * (retries + 1) + [B]
    replay = random.Random(7)
    assert sleeps == [plan.policy.backoff(i, replay) for i in range(retries)]
    if retries:
        assert 0.01 <= sleeps[0] <= 0.015
    actions = [e["action"] for e in events if e["event"] == "marsconn.attempt.failed"]
    assert actions == ["same_server"] * retries + ["next_server"]
    # Attempt.outcome records what the engine did: the last same-host failure moved on.
    assert [a.outcome for a in result.attempts] == ["same_server"] * retries + [
        "next_server",
        "success",
    ]
    assert [a.pass_number for a in result.attempts] == [1] * (retries + 2)
    # A retry on the same server is not a failover.
    failovers = [e for e in events if e["event"] == "marsconn.failover"]
    assert [(f["from_server"], f["to_server"], f["sleep"]) for f in failovers] == [(A, B, 0.0)]


async def test_same_server_then_success(install, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [busy(), ok(9)], B: [ok()]}))
    result = await run(make_plan(same_host_retries=2), target)
    assert result.ok
    assert result.server == A
    assert result.bytes == 9
    assert transport.calls == [A, A]
    assert [a.outcome for a in result.attempts] == ["same_server", "success"]


async def test_same_host_budget_is_per_server_and_per_pass(install, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [busy()], B: [busy()]}))
    result = await run(make_plan(same_host_retries=1, max_retries=2), target)
    assert isinstance(result.error, NoServerAvailableError)
    assert transport.calls == [A, A, B, B, A, A, B, B]
    assert [a.pass_number for a in result.attempts] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert result.error_class == "http_503"


# --- final ---------------------------------------------------------------------------------------


async def test_final_stops_at_once(install, sleeps, target: Path) -> None:
    outcome = rejected()
    transport = install(FakeTransport({A: [outcome], B: [ok()]}))
    with capture_logs() as events:
        result = await run(make_plan(max_retries=10), target, audit_logger=structlog.get_logger())
    assert result.error is outcome.error
    assert isinstance(result.error, MarsRequestError)
    assert result.error_class == "mars_rejected"
    assert result.server is None
    assert result.bytes == 0
    assert transport.calls == [A]
    assert transport.cleanups == [False]
    assert sleeps == []
    assert [e["event"] for e in events] == [
        "marsconn.attempt.started",
        "marsconn.attempt.failed",
        "marsconn.job.finished",
    ]
    assert events[1]["action"] == "final"
    assert result.attempts[0].outcome == "final"
    assert result.attempts[0].job_id == "J1"


async def test_final_after_a_same_server_retry_stops(install, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [busy(), rejected()], B: [ok()]}))
    result = await run(make_plan(), target)
    assert isinstance(result.error, MarsRequestError)
    assert transport.calls == [A, A]


# --- passes and backoff --------------------------------------------------------------------------


async def test_passes_are_bounded_with_backoff_between_them(install, sleeps, target: Path) -> None:
    transport = install(
        FakeTransport(
            {A: [refused("refused a", eject=False)], B: [refused("refused b", eject=False)]}
        )
    )
    plan = make_plan(max_retries=3, retry_delay=0.01, retry_backoff="exponential")
    with capture_logs() as events:
        result = await run(plan, target, rng=random.Random(3), audit_logger=structlog.get_logger())
    assert transport.calls == [A, B] * 3
    assert [a.pass_number for a in result.attempts] == [1, 1, 2, 2, 3, 3]
    replay = random.Random(3)
    backoffs = [plan.policy.backoff(0, replay), plan.policy.backoff(1, replay)]
    assert sleeps == backoffs
    assert 0.01 <= backoffs[0] <= 0.015
    assert 0.02 <= backoffs[1] <= 0.03
    failovers = [
        (e["from_server"], e["to_server"], e["sleep"], e["error_class"])
        for e in events
        if e["event"] == "marsconn.failover"
    ]
    assert failovers == [
        (A, B, 0.0, "connect_refused"),
        (B, A, backoffs[0], "connect_refused"),
        (A, B, 0.0, "connect_refused"),
        (B, A, backoffs[1], "connect_refused"),
        (A, B, 0.0, "connect_refused"),
    ]
    assert isinstance(result.error, NoServerAvailableError)
    assert str(result.error) == (
        f"no server ran the job after 3 passes over 2 servers ({A}, {B}); last error: refused b"
    )
    assert result.error_class == "connect_refused"
    assert result.server is None
    assert transport.cleanups == [False]


async def test_backoff_is_capped(install, sleeps, target: Path) -> None:
    install(FakeTransport({A: [refused(eject=False)]}))
    plan = make_plan(
        [A], max_retries=5, retry_delay=1, retry_backoff_max=3, retry_backoff="exponential"
    )
    await run(plan, target)
    assert len(sleeps) == 4
    assert 1 <= sleeps[0] <= 1.5
    assert 2 <= sleeps[1] <= 3
    assert sleeps[2:] == [3.0, 3.0]


async def test_single_pass_never_sleeps(install, sleeps, target: Path) -> None:
    transport = install(FakeTransport({A: [refused()], B: [refused()], C: [refused()]}))
    result = await run(make_plan([A, B, C], max_retries=1, retry_delay=10), target)
    assert transport.calls == [A, B, C]
    assert sleeps == []
    assert "after 1 pass over 3 servers" in str(result.error)


async def test_shuffled_order_comes_from_the_rng(install, target: Path) -> None:
    urls = [A, B, C, D]
    transport = install(FakeTransport({u: [refused(eject=False)] for u in urls}))
    plan = make_plan(urls, failover_order="shuffled", max_retries=1)
    await run(plan, target, rng=random.Random(5))
    expected = plan.policy.ordered(plan.endpoints, REQ, random.Random(5))
    assert transport.calls == [e.url.display() for e in expected]
    assert sorted(transport.calls) == urls


async def test_stable_order_does_not_depend_on_the_rng(install, target: Path) -> None:
    urls = [A, B, C, D]
    transport = install(FakeTransport({u: [refused(eject=False)] for u in urls}))
    plan = make_plan(urls, failover_order="stable", max_retries=1)
    await run(plan, target, rng=random.Random(1))
    first = list(transport.calls)
    transport.calls.clear()
    await run(plan, target, rng=random.Random(2))
    assert transport.calls == first
    assert sorted(first) == urls


# --- health: ejection and restore ----------------------------------------------------------------


async def test_ejected_once_even_when_failing_every_pass(install, target: Path) -> None:
    install(FakeTransport({A: [refused()]}))
    health = ServerHealth()
    with capture_logs() as events:
        result = await run(
            make_plan([A], eject_cooldown=60, max_retries=3),
            target,
            health=health,
            audit_logger=structlog.get_logger(),
        )
    assert len(result.attempts) == 3
    ejected = [e for e in events if e["event"] == "marsconn.server.ejected"]
    assert ejected == [
        {
            "event": "marsconn.server.ejected",
            "log_level": "warning",
            "server": A,
            "error_class": "connect_refused",
            "cooldown": 60.0,
        }
    ]
    assert health.is_ejected(A)


async def test_no_ejection_without_eject_flag_or_cooldown(install, target: Path) -> None:
    install(FakeTransport({A: [server_error()], B: [refused()], C: [ok()]}))
    health = ServerHealth()
    with capture_logs() as events:
        await run(
            make_plan([A, B, C], eject_cooldown=0),
            target,
            health=health,
            audit_logger=structlog.get_logger(),
        )
    assert not [e for e in events if e["event"] == "marsconn.server.ejected"]
    assert not health.is_ejected(A)
    assert not health.is_ejected(B)


async def test_ejected_server_is_tried_last(install, target: Path) -> None:
    transport = install(FakeTransport({A: [ok()], B: [ok()]}))
    health = ServerHealth()
    health.eject(A, 60)
    result = await run(make_plan([A, B]), target, health=health)
    assert transport.calls == [B]
    assert result.server == B
    assert health.is_ejected(A)


async def test_success_on_an_ejected_server_restores_it(install, target: Path) -> None:
    install(FakeTransport({A: [ok(7)]}))
    health = ServerHealth()
    health.eject(A, 60)
    with capture_logs() as events:
        result = await run(
            make_plan([A]), target, health=health, audit_logger=structlog.get_logger()
        )
    assert result.ok
    assert [e["event"] for e in events] == [
        "marsconn.attempt.started",
        "marsconn.server.restored",
        "marsconn.attempt.succeeded",
        "marsconn.job.finished",
    ]
    assert events[1] == {"event": "marsconn.server.restored", "log_level": "info", "server": A}
    assert not health.is_ejected(A)


async def test_success_on_a_healthy_server_restores_nothing(install, target: Path) -> None:
    install(FakeTransport({A: [ok()]}))
    with capture_logs() as events:
        await run(make_plan([A]), target, audit_logger=structlog.get_logger())
    assert "marsconn.server.restored" not in [e["event"] for e in events]


async def test_ejected_in_pass_one_then_restored_in_pass_two(install, target: Path) -> None:
    transport = install(FakeTransport({A: [refused(), ok()]}))
    health = ServerHealth()
    with capture_logs() as events:
        result = await run(
            make_plan([A], eject_cooldown=60),
            target,
            health=health,
            audit_logger=structlog.get_logger(),
        )
    assert result.ok
    assert transport.calls == [A, A]
    names = [e["event"] for e in events]
    assert names.index("marsconn.server.ejected") < names.index("marsconn.server.restored")
    assert not health.is_ejected(A)


async def test_failover_to_server_names_the_server_actually_tried_next(
    install, target: Path
) -> None:
    # A is ejected in pass 1, B fails without ejection: pass 2 starts with B.
    transport = install(FakeTransport({A: [refused()], B: [server_error(), ok()]}))
    with capture_logs() as events:
        await run(
            make_plan([A, B], eject_cooldown=60),
            target,
            health=ServerHealth(),
            audit_logger=structlog.get_logger(),
        )
    assert transport.calls == [A, B, B]
    failovers = [
        (e["from_server"], e["to_server"]) for e in events if e["event"] == "marsconn.failover"
    ]
    assert failovers == [(A, B), (B, B)]


# --- the audit trail -----------------------------------------------------------------------------


async def test_audit_trail_of_a_failover(install, target: Path) -> None:
    install(FakeTransport({A: [refused("refused by a")], B: [ok(2048, "J2")]}))
    with capture_logs() as events:
        await run(
            make_plan([A, B], eject_cooldown=30),
            target,
            health=ServerHealth(),
            audit_logger=structlog.get_logger(),
        )
    common = {"request_id": REQ, "mode": "pipe"}
    assert strip_durations(events) == [
        {
            "event": "marsconn.attempt.started",
            "log_level": "info",
            **common,
            "server": A,
            "attempt": 1,
            "pass_number": 1,
        },
        {
            "event": "marsconn.attempt.failed",
            "log_level": "warning",
            **common,
            "server": A,
            "attempt": 1,
            "pass_number": 1,
            "error_class": "connect_refused",
            "error": "refused by a",
            "action": "next_server",
            "duration": "<float>",
        },
        {
            "event": "marsconn.server.ejected",
            "log_level": "warning",
            "server": A,
            "error_class": "connect_refused",
            "cooldown": 30.0,
        },
        {
            "event": "marsconn.failover",
            "log_level": "warning",
            **common,
            "from_server": A,
            "to_server": B,
            "error_class": "connect_refused",
            "sleep": 0.0,
        },
        {
            "event": "marsconn.attempt.started",
            "log_level": "info",
            **common,
            "server": B,
            "attempt": 2,
            "pass_number": 1,
        },
        {
            "event": "marsconn.attempt.succeeded",
            "log_level": "info",
            **common,
            "server": B,
            "attempt": 2,
            "pass_number": 1,
            "duration": "<float>",
        },
        {
            "event": "marsconn.job.finished",
            "log_level": "info",
            **common,
            "ok": True,
            "error_class": None,
            "server": B,
            "attempts": 2,
            "duration": "<float>",
            "bytes": 2048,
        },
    ]


async def test_job_finished_on_failure(install, target: Path) -> None:
    install(FakeTransport({A: [refused()], B: [refused()]}))
    with capture_logs() as events:
        await run(make_plan(max_retries=1), target, audit_logger=structlog.get_logger())
    finished = strip_durations([e for e in events if e["event"] == "marsconn.job.finished"])
    assert finished == [
        {
            "event": "marsconn.job.finished",
            "log_level": "info",
            "request_id": REQ,
            "mode": "pipe",
            "ok": False,
            "error_class": "connect_refused",
            "server": None,
            "attempts": 2,
            "duration": "<float>",
            "bytes": 0,
        }
    ]


async def test_events_go_to_the_marsconn_logger_by_default(install, target: Path) -> None:
    install(FakeTransport({A: [ok()]}))
    with capture_logs() as events:
        await execute_async(make_plan([A]), {}, ENVIRON, target, health=ServerHealth())
    assert [e["event"] for e in events] == [
        "marsconn.attempt.started",
        "marsconn.attempt.succeeded",
        "marsconn.job.finished",
    ]


async def test_credentials_never_reach_events_or_the_result(install, target: Path) -> None:
    secret_url = "http://user:hunter2@a:9000"
    shown = "http://***@a:9000"
    transport = install(FakeTransport({shown: [refused()], B: [refused()]}))
    health = ServerHealth()
    with capture_logs() as events:
        result = await run(
            make_plan([secret_url, B], eject_cooldown=60, max_retries=1),
            target,
            health=health,
            audit_logger=structlog.get_logger(),
        )
    assert transport.endpoints[0].url.secret() == secret_url
    assert "hunter2" not in repr(events)
    assert "hunter2" not in repr(result.to_dict())
    assert result.attempts[0].server == shown
    assert health.is_ejected(secret_url)
    assert not health.is_ejected(shown)


# --- Result --------------------------------------------------------------------------------------


async def test_result_to_dict_of_a_failure(install, target: Path) -> None:
    install(FakeTransport({A: [server_error("boom")]}))
    result = await run(make_plan([A], max_retries=1), target)
    data = result.to_dict()
    assert data["ok"] is False
    assert data["error_type"] == "NoServerAvailableError"
    assert data["error_class"] == "server_error"
    assert data["server"] is None
    assert data["bytes"] == 0
    assert data["mode"] == "pipe"
    assert data["target"] == str(target)
    assert data["attempts"] == [
        {
            "server": A,
            "outcome": "next_server",
            "error_class": "server_error",
            "error": "boom",
            "duration": data["attempts"][0]["duration"],
            "pass": 1,
            "job_id": None,
        }
    ]
    assert set(data) == {
        "ok",
        "error",
        "error_type",
        "error_class",
        "mode",
        "target",
        "server",
        "bytes",
        "duration",
        "attempts",
        "message",
        "dropped_log_lines",
        "request_id",
        "error_kind",
    }
    assert (data["request_id"], data["error_kind"]) == (REQ, "system")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (None, None),
        (marsconn.MarsRequestError("rejected", returncode=1), "runtime"),
        (JobKilledError("killed"), "runtime"),
        (marsconn.TransferError("broke"), "runtime"),
        (marsconn.LogHandlerError("handler"), "runtime"),
        (PipeStatusError("proxy", status=404), "runtime"),
        (marsconn.NoDataError("nothing"), "no_data"),
        (NoServerAvailableError("none"), "system"),
        (marsconn.TargetError("disk"), "system"),
        (PreflightError("inputs"), "system"),
        (marsconn.ConfigError([]), "system"),
        (RuntimeError("not ours"), "runtime"),
        (ServerLost("gone"), "runtime"),
    ],
)
def test_result_error_kind(error: BaseException | None, kind: str | None) -> None:
    result = marsconn.Result(error=error, message="", mode="pipe", target="/t")
    assert result.error_kind == kind
    assert result.to_dict()["error_kind"] == kind
    if kind is not None:
        assert isinstance(result.error_kind, marsconn.ErrorKind)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_marsconn_error_names_its_kind() -> None:
    classes = [marsconn.MarsconnError, *_subclasses(marsconn.MarsconnError)]
    named = {c.__name__ for c in classes}
    assert {"NoDataError", "PipeStatusError", "MarsRequestError", "ConfigError"} <= named
    for cls in classes:
        if cls.__module__.startswith("marsconn") and not cls.__name__.startswith("_"):
            assert "kind" in vars(cls), f"{cls.__name__} does not say its kind"
            assert isinstance(cls.kind, marsconn.ErrorKind)
    assert [k.value for k in marsconn.ErrorKind] == ["runtime", "no_data", "system"]
    assert marsconn.NoDataError.kind is marsconn.ErrorKind.NO_DATA
    assert {"ErrorKind", "NoDataError"} <= set(marsconn.__all__)


def test_result_error_class_falls_back_to_the_exception_type() -> None:
    result = marsconn.Result(error=JobKilledError("x"), message="", mode="pipe", target="/t")
    assert result.error_class == "JobKilledError"
    result.attempts.append(Attempt(A, "next_server", None, None, 0.1, 1))
    assert result.error_class == "JobKilledError"
    result.attempts.append(Attempt(A, "final", "killed", "x", 0.1, 1))
    assert result.error_class == "killed"


async def test_log_lines_from_the_transport_reach_the_result(install, target: Path) -> None:
    raw = ["a 1%", "a 1%", "a 1%", "b ERROR x", "c 2%", "d 3%", "d 3%"]

    async def chatty(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        for line in raw:
            await ctx.sink.line(line)
        return ok()

    install(FakeTransport({A: [chatty]}))
    whole = await run(make_plan([A]), target)
    # Raw lines, not the filtered and folded view the logger gets.
    assert whole.message.splitlines() == raw
    assert whole.dropped_log_lines == 0
    install(FakeTransport({A: [chatty]}))
    result = await run(make_plan([A], log_keep_lines=2), target)
    # The first and last lines stay; the middle's error line is kept too.
    assert result.message.splitlines() == [
        "a 1%",
        "[marsconn: 4 log lines dropped here (more than log_keep_lines=2 lines); "
        "the 1 error line of that part follow]",
        "b ERROR x",
        "d 3%",
    ]
    assert result.dropped_log_lines == 4


async def test_log_handler_and_logger_are_wired(install, target: Path) -> None:
    calls: list[tuple[str, Any]] = []

    class Rec:
        def info(self, msg: str) -> None:
            calls.append(("info", msg))

        warning = error = info

    async def line(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        await ctx.sink.line("x 1%")
        return ok()

    def handler(text: str, job: Job, logger: Any) -> str:
        assert isinstance(job, Job)
        assert job.server == A
        assert isinstance(logger, Rec)
        return text.upper()

    install(FakeTransport({A: [line]}))
    result = await run(make_plan([A]), target, log_handler=handler, logger=Rec())
    assert calls == [("info", "X 1%")]
    assert result.message == "x 1%"  # the raw line: the handler decides only what is shown


# --- cleanup, cancellation, deadline -------------------------------------------------------------


async def test_cleanup_once_when_cancelled(install, target: Path) -> None:
    entered = asyncio.Event()
    seen: list[str] = []

    async def hang(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return ok()

    transport = install(FakeTransport({A: [hang]}))
    with capture_logs() as events:
        task = asyncio.create_task(
            run(make_plan([A]), target, audit_logger=structlog.get_logger())
        )
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == ["cancelled"]
    assert transport.cleanups == [False]
    assert "marsconn.job.finished" not in [e["event"] for e in events]


async def test_cleanup_once_when_the_transport_raises(install, target: Path) -> None:
    async def broken(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        raise RuntimeError("transport bug")

    transport = install(FakeTransport({A: [broken]}))
    with pytest.raises(RuntimeError, match="transport bug"):
        await run(make_plan([A]), target)
    assert transport.cleanups == [False]


@pytest.mark.parametrize(
    ("script", "success"),
    [
        ({A: [ok()]}, True),
        ({A: [refused()], B: [ok()]}, True),
        ({A: [refused()], B: [refused()]}, False),
        ({A: [rejected()]}, False),
    ],
)
async def test_cleanup_once_with_the_success_flag(
    install, target: Path, script: dict[str, list[Outcome]], success: bool
) -> None:
    transport = install(FakeTransport(script))
    result = await run(make_plan(), target)
    assert result.ok is success
    assert transport.cleanups == [success]


async def test_job_deadline_stops_the_job(install, target: Path) -> None:
    seen: list[str] = []

    async def hang(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return ok()

    transport = install(FakeTransport({A: [hang], B: [ok()]}))
    with capture_logs() as events:
        result = await run(
            make_plan([A, B], job_deadline=0.2), target, audit_logger=structlog.get_logger()
        )
    assert isinstance(result.error, JobKilledError)
    assert str(result.error) == "job deadline of 0.2s exceeded; the job was stopped"
    assert result.server is None
    assert result.bytes == 0
    assert result.duration < 10  # the deadline, not a hang
    assert seen == ["cancelled"]
    assert transport.calls == [A]
    assert transport.cleanups == [False]
    finished = [e for e in events if e["event"] == "marsconn.job.finished"]
    assert len(finished) == 1
    assert finished[0]["ok"] is False


async def test_job_deadline_keeps_attempts_and_error_class(install, target: Path) -> None:
    async def hang(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        await asyncio.Event().wait()
        return ok()

    install(FakeTransport({A: [refused()], B: [hang]}))
    result = await run(make_plan([A, B], job_deadline=0.2), target)
    assert result.error_class == "job_deadline"
    # The attempt the deadline interrupted is recorded too, as the final one.
    assert [(a.server, a.outcome, a.error_class) for a in result.attempts] == [
        (A, "next_server", "connect_refused"),
        (B, "final", "job_deadline"),
    ]


# --- pre-flight ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "environ", "message"),
    [
        ([], ENVIRON, "requests is an empty list"),
        ([{"a": 1}, [("param", "2t")]], ENVIRON, r"requests\[1\] is not a dict"),
        (
            {"a": 1},
            {"request_id": REQ, "namespace": ""},
            "environ lacks user_id, host, username; the servers need the keys request_id, "
            "user_id, namespace, host, username to be present",
        ),
        ({"a": 1}, None, "environ is a NoneType; give a dict with the keys request_id"),
        ({"a": 1}, {**ENVIRON, "request_id": "req-1"}, r"environ\['request_id'\] is 'req-1'"),
        (
            {"a": 1},
            {**ENVIRON, "request_id": REQ.upper()},
            "not a UUID in the servers' form.*lower-case hex digits",
        ),
        ({"a": 1}, {**ENVIRON, "request_id": 7}, r"environ\['request_id'\] is 7: not a UUID"),
    ],
)
async def test_preflight_refuses_before_any_transport(
    install, modes, target: Path, requests: Any, environ: dict[str, str], message: str
) -> None:
    transport = install(FakeTransport({A: [ok()]}))
    with pytest.raises(PreflightError, match=message):
        await execute_async(make_plan([A]), requests, environ, target, audit_logger=NullAudit())
    assert modes == []
    assert transport.calls == []


@pytest.mark.parametrize("item", ["param=2t", 5, None])
async def test_preflight_names_a_non_dict_request(install, target: Path, item: Any) -> None:
    install(FakeTransport({A: [ok()]}))
    with pytest.raises(PreflightError, match=r"requests\[1\] is not a dict"):
        await execute_async(
            make_plan([A]), [{"a": 1}, item], ENVIRON, target, audit_logger=NullAudit()
        )


def test_sync_preflight_raises_in_the_callers_thread(install, modes, target: Path) -> None:
    install(FakeTransport({A: [ok()]}))
    with pytest.raises(PreflightError, match="does not exist"):
        marsconn.execute(make_plan([A]), {}, ENVIRON, "no-such-dir-for-marsconn/data.grib")
    assert modes == []


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        (lambda t: t.parent, "is an existing directory; give the path of the output file"),
        (lambda t: t.parent / "missing" / "x.grib", "target directory '.*missing' does not exist"),
        (lambda t: 5, "target is a int; give the output file's path"),
    ],
)
async def test_preflight_refuses_unusable_targets(
    install, modes, target: Path, make_target: Any, message: str
) -> None:
    transport = install(FakeTransport({A: [ok()]}))
    with pytest.raises(PreflightError, match=message):
        await execute_async(make_plan([A]), {}, ENVIRON, make_target(target))
    assert modes == []
    assert transport.calls == []


async def test_relative_target_is_resolved_against_the_working_directory(
    install, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = install(FakeTransport({A: [ok()], B: [ok()]}))
    (target.parent / "sub").mkdir()
    monkeypatch.chdir(target.parent)
    result = await run(make_plan([A]), Path("sub") / "data.grib")
    assert result.ok
    assert result.target == str(target.parent / "sub" / "data.grib")
    assert transport.contexts[0].target == target.parent / "sub" / "data.grib"
    # As the adaptor builds it from its default cache_tmp_path, Path().
    result = await run(make_plan([B]), str(Path() / "data.grib"))
    assert result.target == str(target)


async def test_present_none_values_are_accepted_and_a_request_id_is_generated(
    install, target: Path
) -> None:
    transport = install(FakeTransport({A: [ok()]}))
    environ = dict.fromkeys(("request_id", "user_id", "namespace", "host", "username"))
    result = await execute_async(
        make_plan([A]), {"param": "2t"}, environ, target, audit_logger=NullAudit()
    )
    assert result.ok
    sent = transport.contexts[0].environ
    generated = sent["request_id"]
    assert uuid.UUID(generated).version == 4
    assert str(uuid.UUID(generated)) == generated  # the lower-case form the servers want
    assert {k: v for k, v in sent.items() if k != "request_id"} == dict.fromkeys(
        ("user_id", "namespace", "host", "username")
    )
    assert environ["request_id"] is None  # the caller's dict is not changed
    assert result.request_id == generated
    assert transport.contexts[0].job.request_id == generated
    # Each call gets its own id.
    again = await execute_async(
        make_plan([A]), {"param": "2t"}, environ, target, audit_logger=NullAudit()
    )
    assert again.request_id != generated


# --- the synchronous front end -------------------------------------------------------------------


def test_sync_execute_from_plain_code(install, target: Path) -> None:
    transport = install(FakeTransport({A: [refused()], B: [ok(3)]}))
    result = marsconn.execute(
        make_plan(), {}, ENVIRON, target, audit_logger=NullAudit(), health=ServerHealth()
    )
    assert result.ok
    assert result.bytes == 3
    assert transport.calls == [A, B]


async def test_sync_execute_inside_a_loop_reraises_transport_errors(install, target: Path) -> None:
    async def broken(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        raise ValueError("inside the helper thread")

    transport = install(FakeTransport({A: [broken]}))
    with pytest.raises(ValueError, match="inside the helper thread"):
        marsconn.execute(
            make_plan([A]), {}, ENVIRON, target, audit_logger=NullAudit(), health=ServerHealth()
        )
    assert transport.cleanups == [False]


async def test_job_send_takes_the_kill_command_as_the_websocket_did() -> None:
    job = Job(REQ)
    await job.send(json.dumps({"cmd": "kill"}))
    assert job.kill_requested is True
    other = Job(REQ)
    await other.send(b'{"cmd": "kill"}')
    assert other.kill_requested is True


@pytest.mark.parametrize(
    "message",
    ['{"cmd": "start"}', '{"cmd": "kill", "now": true}', "kill", "[]", b"\xff", "x" * 500],
)
async def test_job_send_refuses_anything_else(message: str | bytes) -> None:
    job = Job(REQ)
    with pytest.raises(ValueError, match=r"the only command a running job takes is the kill"):
        await job.send(message)
    assert job.kill_requested is False


async def test_a_cads_mars_server_style_handler_kills_through_send(install, target: Path) -> None:
    async def two_lines(endpoint: Endpoint, ctx: JobContext) -> Outcome:
        await ctx.sink.line("mars - FATAL - out of tape")
        await ctx.sink.line("mars - INFO - after")
        return ok()

    async def handler(line: str, ws: Any, logger: Any) -> str | None:
        if "FATAL" in line:
            await ws.send(json.dumps({"cmd": "kill"}))
        return line

    transport = install(FakeTransport({A: [two_lines]}))
    await run(make_plan([A]), target, log_handler=handler)
    assert transport.contexts[0].job.kill_requested is True


def test_job_kill_and_repr() -> None:
    job = Job("req-9")
    assert job.kill_requested is False
    job.server, job.job_id = A, "J5"
    job.kill()
    assert job.kill_requested is True
    assert repr(job) == f"Job(request_id='req-9', server='{A}', id='J5')"
