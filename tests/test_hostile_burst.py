"""Ejection under bursts: one probe at a time for a server not known to be alive.

Concurrent retrievals share one ServerHealth (as in a worker process). A dead or
hung server must cost one connection attempt per cooldown, not one per retrieval
that happened to pick it first; retrievals that have nothing else left wait for
the probe instead of repeating it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import marsconn
from marsconn.run.health import Admission, ServerHealth
from marsconn.testing import SilentServer, WsMarsServer, dead_url

PlanFactory = Callable[..., marsconn.ConnectionPlan]


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    """Counts connection attempts per server (``marsconn.attempt.started``), thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        with self.lock:
            self.events.append((event, kw))

    warning = info

    def started(self, server: str) -> int:
        return sum(
            1
            for event, kw in self.events
            if event == "marsconn.attempt.started" and kw["server"] == server
        )


def environ(i: int) -> dict[str, Any]:
    return {
        "request_id": f"00000000-0000-4000-8000-{i:012d}",
        "user_id": "u",
        "namespace": "test",
        "host": "worker-1",
        "username": "test:u",
    }


async def burst(
    plan: marsconn.ConnectionPlan,
    health: ServerHealth,
    events: Events,
    tmp_path: Path,
    jobs: int,
    tag: str = "",
) -> list[marsconn.Result]:
    targets = []
    for i in range(jobs):
        job = tmp_path / f"job{tag}{i}"
        job.mkdir()
        targets.append(job / "out.grib")
    return list(
        await asyncio.gather(
            *(
                marsconn.execute_async(
                    plan, {"param": "2t"}, environ(i), target, health=health, audit_logger=events
                )
                for i, target in enumerate(targets)
            )
        )
    )


@pytest.fixture
def live(mars_ws_server_factory: Callable[..., WsMarsServer]) -> list[str]:
    return [mars_ws_server_factory().url, mars_ws_server_factory().url]


async def test_cold_burst_sends_one_attempt_to_a_dead_server(
    live: list[str], ws_plan: PlanFactory, tmp_path: Path
) -> None:
    dead = dead_url()
    plan = ws_plan([dead, *live], failover_order="shuffled", eject_cooldown=30)
    events, health = Events(), ServerHealth()
    results = await burst(plan, health, events, tmp_path, 30)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert events.started(dead) == 1
    assert health.is_ejected(dead)


async def test_cold_burst_sends_one_attempt_to_a_hung_server(
    live: list[str], ws_plan: PlanFactory, tmp_path: Path
) -> None:
    async with SilentServer() as hung:
        plan = ws_plan(
            [hung.url_for("ws"), *live],
            failover_order="listed",
            eject_cooldown=30,
            connect_timeout=1,
        )
        events, health = Events(), ServerHealth()
        results = await burst(plan, health, events, tmp_path, 20)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert hung.accepted == 1
        assert events.started(hung.url_for("ws")) == 1


async def test_ejected_server_gets_one_probe_per_cooldown(
    live: list[str], ws_plan: PlanFactory, tmp_path: Path
) -> None:
    dead = dead_url()
    plan = ws_plan([dead, *live], failover_order="listed", eject_cooldown=30)
    clock = Clock()
    events, health = Events(), ServerHealth(clock=clock)
    health.eject(dead, 30)
    results = await burst(plan, health, events, tmp_path, 20, "a")
    assert all(r.ok for r in results)
    assert events.started(dead) == 0  # inside the cooldown: tried last, never reached
    clock.now += 31  # the cooldown is over: one retrieval probes it, the others go elsewhere
    results = await burst(plan, health, events, tmp_path, 20, "b")
    assert all(r.ok for r in results)
    assert events.started(dead) == 1
    assert health.is_ejected(dead)  # the probe failed: ejected again


async def test_waiting_retrievals_take_the_probes_failure_as_theirs(
    ws_plan: PlanFactory, tmp_path: Path
) -> None:
    # The only server hangs: every retrieval must still try it each pass ("never
    # skipped"), but one probe at a time answers for all of them.
    async with SilentServer() as hung:
        plan = ws_plan([hung.url_for("ws")], eject_cooldown=30, connect_timeout=0.5, max_retries=2)
        events, health = Events(), ServerHealth()
        results = await burst(plan, health, events, tmp_path, 8)
        assert all(r.error_class in ("connect_timeout", "ejected") for r in results)
        assert hung.accepted == events.started(hung.url_for("ws")) <= 2
        skipped = [a for r in results for a in r.attempts if a.error_class == "ejected"]
        assert skipped
        assert all(
            a.error and "not tried: another retrieval's attempt" in a.error for a in skipped
        )
        assert all(len(r.attempts) == 2 for r in results)  # one per pass, tried or not


async def test_an_ejected_server_that_answers_its_probe_is_restored_at_once(
    live: list[str], ws_plan: PlanFactory, tmp_path: Path
) -> None:
    plan = ws_plan(live[:1], eject_cooldown=30)
    events, health = Events(), ServerHealth()
    health.eject(live[0], 30)
    results = await burst(plan, health, events, tmp_path, 10)
    assert all(r.ok for r in results)
    restored = [kw for event, kw in events.events if event == "marsconn.server.restored"]
    assert restored == [{"server": live[0]}]  # at the probe's handshake, once
    assert not health.is_ejected(live[0])


async def test_a_single_retrieval_still_tries_an_ejected_server_each_pass(
    ws_plan: PlanFactory, tmp_path: Path
) -> None:
    dead = dead_url()
    plan = ws_plan([dead], eject_cooldown=30, max_retries=3)
    events, health = Events(), ServerHealth()
    health.eject(dead, 30)
    results = await burst(plan, health, events, tmp_path, 1)
    assert [a.error_class for a in results[0].attempts] == ["connect_refused"] * 3
    assert events.started(dead) == 3


def test_threads_with_their_own_loops_share_the_probe(
    live: list[str], ws_plan: PlanFactory, tmp_path: Path
) -> None:
    async def main() -> None:
        async with SilentServer() as hung:
            plan = ws_plan(
                [hung.url_for("ws"), *live],
                failover_order="listed",
                eject_cooldown=30,
                connect_timeout=1,
            )
            events, health = Events(), ServerHealth()
            results: list[marsconn.Result] = []

            def one(i: int) -> None:
                job = tmp_path / f"t{i}"
                job.mkdir()
                results.append(
                    marsconn.execute(
                        plan,
                        {"param": "2t"},
                        environ(i),
                        job / "o",
                        health=health,
                        audit_logger=events,
                    )
                )

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            await asyncio.to_thread(lambda: [t.join() for t in threads])
            assert len(results) == 8
            assert all(r.ok for r in results)
            assert hung.accepted == 1

    asyncio.run(main())


async def test_no_probing_when_ejection_is_off(ws_plan: PlanFactory, tmp_path: Path) -> None:
    # eject_cooldown 0 turns ejection off, and with it the probe: retrievals do not queue.
    async with SilentServer() as hung:
        plan = ws_plan([hung.url_for("ws")], eject_cooldown=0, connect_timeout=0.5, max_retries=1)
        events, health = Events(), ServerHealth()
        results = await burst(plan, health, events, tmp_path, 4)
        assert [r.error_class for r in results] == ["connect_timeout"] * 4
        assert hung.accepted == 4


# --- the registry itself ----------------------------------------------------------------------


def test_admission_rules() -> None:
    clock = Clock()
    health = ServerHealth(clock=clock)
    probe = health.admit("a", since=clock.now)
    assert probe.admission is Admission.PROBE
    assert health.admit("a", since=clock.now).admission is Admission.WAIT
    assert health.admit("b", since=clock.now).admission is Admission.PROBE
    assert health.reached(probe) is False  # answered; was not ejected
    go = health.admit("a", since=clock.now)
    assert go.admission is Admission.GO
    assert health.admit("a", since=clock.now).admission is Admission.GO  # trusted: no limit
    assert health.done(go, "connect_refused", 30) is True  # ejected now, untrusted
    since = clock.now
    clock.now += 1
    skip = health.admit("a", since=since)
    assert (skip.admission, skip.failure, skip.failed_ago) == (
        Admission.SKIP,
        "connect_refused",
        1,
    )
    again = health.admit("a", since=clock.now)  # a new pass: probe it again
    assert again.admission is Admission.PROBE
    assert health.reached(again) is True  # it answered: restored
    assert not health.is_ejected("a")


def test_a_slow_connect_to_a_trusted_server_puts_it_last_but_never_blocks_it() -> None:
    clock = Clock()
    health = ServerHealth(clock=clock)
    health.reached(health.admit("a"))
    slow = health.admit("a")
    assert slow.admission is Admission.GO
    assert health.reorder(["b", "a"], key=str) == ["b", "a"]
    assert health.reorder(["a", "b"], key=str) == ["a", "b"]
    clock.now += 2  # pending for longer than SLOW_CONNECT
    assert health.reorder(["a", "b"], key=str) == ["b", "a"]
    also = health.admit("a")
    assert also.admission is Admission.GO  # trusted: tried after the others, never waited for
    health.done(slow)
    health.done(also)
    assert health.reorder(["a", "b"], key=str) == ["a", "b"]


def test_enter_always_goes_and_done_releases_a_probe_without_a_failure() -> None:
    health = ServerHealth()
    probe = health.admit("a")
    assert health.enter("a").admission is Admission.GO
    assert health.done(probe) is False
    assert health.admit("a").admission is Admission.PROBE  # still not trusted
    assert health.done(health.enter("b"), "x", 0) is False  # no cooldown: no ejection
    health.clear()
    assert health.admit("a").admission is Admission.PROBE
