"""Shares (WebSocket) mode against the real server: no data lost, mixed up or run twice.

Every test runs the real ``ws_server.py`` with a 1 s heartbeat (the client's
liveness is then 3 s), checks every byte of every target, and looks at what
is left in the target directory at least 5 s after the outcome: only the
targets may remain (no ``data.grib``, no ``*.mars``, no attempt directory,
no temporary file). The server runs MARS in a session of its own, so MARS
outlives a frozen or killed server; the tests wait for it to end too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import marsconn
from marsconn.testing import expected_data

from ._plans import (
    HEARTBEAT,
    LineCounter,
    assert_exact,
    assert_only,
    fake,
    make_environ,
    settle,
    wait_started,
    ws_plan_real,
)
from ._relay import Relay
from .peers import HERE, PROJECT_ROOT, RealServer, Standin

pytestmark = pytest.mark.real

MIB = 1024 * 1024
OLD = b"old content of the target, which must survive\n" * 2000

StartWs = Callable[..., RealServer]


async def _wait_gone(standin: Standin, request_id: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while standin.pids(request_id):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"MARS for {request_id} still runs {within:g}s later: {standin.pids(request_id)}"
            )
        await asyncio.sleep(0.05)


def _completed_runs(standin: Standin, request_id: str) -> int:
    return sum(1 for e in standin.events(request_id) if e["event"] == "end" and e.get("exit") == 0)


# --- a. a frozen server ----------------------------------------------------------------------


@pytest.mark.parametrize("with_mars", [False, True], ids=["server-frozen", "machine-frozen"])
async def test_frozen_server_fails_over_and_never_touches_the_delivered_target(
    with_mars: bool, real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    # server-frozen: MARS (in its own session) runs on and ends while its server is
    # stopped. machine-frozen: MARS stops too and is still running when the server
    # resumes, finds its client gone and kills it.
    s1, s2 = real_ws_server(), real_ws_server()
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "frozen.grib"
    # Short close timeout: this test is about the data; the close handshake has its own test.
    plan = ws_plan_real([s1.url, s2.url], ws_close_timeout=5)
    task = asyncio.create_task(
        marsconn.execute_async(plan, fake(MIB, 11, sleep=1, chunkdelay=0.05), environ, target)
    )
    await wait_started(standin, rid)
    s1.freeze(with_mars=with_mars)
    frozen_at = time.monotonic()
    result = await task
    failover = time.monotonic() - frozen_at
    print(f"\nfailover past a frozen server took {failover:.1f}s (liveness {3 * HEARTBEAT}s)")
    s1.resume()
    resumed_at = time.monotonic()
    assert result.ok, result.error
    assert result.server == s2.url
    assert [a.server for a in result.attempts] == [s1.url, s2.url]
    assert result.attempts[0].outcome == "next_server"
    assert standin.runs(rid) == 2
    assert_exact(target, MIB, 11)
    # The resumed server now notices its client left; whatever it deletes or writes
    # must not reach the delivered target.
    await settle(resumed_at, standin)
    assert_only(outdir, {"frozen.grib": expected_data(MIB, 11)})


async def test_failover_past_a_frozen_server_does_not_wait_for_the_close_handshake(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    # The acceptance figure: at most liveness + a few seconds. The bound below is
    # half the close timeout above liveness: it only tells "decided at once" from
    # "waited for the frozen server's close frame".
    s1, s2 = real_ws_server(), real_ws_server()
    environ = make_environ()
    close_timeout = 30
    plan = ws_plan_real([s1.url, s2.url], ws_close_timeout=close_timeout)
    task = asyncio.create_task(
        marsconn.execute_async(plan, fake(64 * 1024, 1, sleep=1), environ, outdir / "f.grib")
    )
    await wait_started(standin, environ["request_id"])
    s1.freeze()
    frozen_at = time.monotonic()
    try:
        result = await task
    finally:
        s1.resume()
    failover = time.monotonic() - frozen_at
    print(f"\nfailover past a frozen server: {failover:.1f}s")
    assert result.ok, result.error
    assert result.server == s2.url
    liveness = plan.timeouts.liveness
    assert failover < liveness + close_timeout / 2, (
        f"failover took {failover:.1f}s: liveness is {liveness:g}s, so the client waited "
        f"for the frozen server's close handshake (ws_close_timeout {close_timeout}s)"
    )


# --- b. cancellation and Ctrl-C with an old target ------------------------------------------


async def test_cancel_keeps_the_old_target_and_kills_the_job(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "old.grib"
    target.write_bytes(OLD)
    # A slow writer: MARS has written part of its output when the caller gives up.
    task = asyncio.create_task(
        marsconn.execute_async(
            ws_plan_real([server.url]), fake(MIB, 5, chunkdelay=0.5), environ, target
        )
    )
    await wait_started(standin, rid)
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled_at = time.monotonic()
    await _wait_gone(standin, rid, within=10)
    assert _completed_runs(standin, rid) == 0, standin.events(rid)
    await settle(cancelled_at, standin)
    assert_only(outdir, {"old.grib": OLD})


@pytest.mark.parametrize("mode", ["ws", "pipe"])
def test_ctrl_c_of_sync_execute_keeps_the_old_target_and_kills_the_job(
    mode: str,
    real_ws_server: StartWs,
    real_pipe_server: Callable[..., RealServer],
    standin: Standin,
    outdir: Path,
) -> None:
    server = real_ws_server() if mode == "ws" else real_pipe_server()
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "old.grib"
    target.write_bytes(OLD)
    request = fake(MIB, 6, chunkdelay=0.5)
    child = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "_interrupt_child.py"),
            mode,
            server.url,
            str(target),
            rid,
            json.dumps(request),
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        standin.wait_started(rid)
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    interrupted_at = time.monotonic()
    assert child.returncode == 130, f"child ended with {child.returncode}:\n{out}\n{err}"
    assert "KeyboardInterrupt" in out, out
    standin.wait_gone(rid, timeout=10)
    assert _completed_runs(standin, rid) == 0, standin.events(rid)
    # Nothing a pipe server does reaches the caller's directory: 1 s is enough there.
    asyncio.run(settle(interrupted_at, standin, seconds=5 if mode == "ws" else 1))
    assert_only(outdir, {"old.grib": OLD})


# --- c, d. jobs sharing one directory --------------------------------------------------------


async def test_three_concurrent_jobs_in_one_directory_each_get_their_own_bytes(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    plan = ws_plan_real([server.url])
    jobs = {"a.grib": (MIB, 1), "b.grib": (MIB + 4321, 2), "c.grib": (700_001, 3)}
    results = await asyncio.gather(
        *(
            marsconn.execute_async(
                plan, fake(size, seed, sleep=0.5, chunkdelay=0.05), make_environ(), outdir / name
            )
            for name, (size, seed) in jobs.items()
        )
    )
    done = time.monotonic()
    for name, result in zip(jobs, results, strict=True):
        assert result.ok, f"{name}: {result.error}"
    for name, (size, seed) in jobs.items():
        assert_exact(outdir / name, size, seed)
    await settle(done, standin)
    assert_only(outdir, {name: expected_data(*spec) for name, spec in jobs.items()})


async def test_a_target_named_data_grib_alone_and_beside_another_job(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    server = real_ws_server()
    plan = ws_plan_real([server.url])
    alone = await marsconn.execute_async(
        plan, fake(300_000, 21), make_environ(), outdir / "data.grib"
    )
    assert alone.ok, alone.error
    assert_only(outdir, {"data.grib": expected_data(300_000, 21)})

    both = await asyncio.gather(
        marsconn.execute_async(
            plan,
            fake(MIB, 22, sleep=0.5, chunkdelay=0.05),
            make_environ(),
            outdir / "data.grib",
        ),
        marsconn.execute_async(
            plan,
            fake(MIB - 777, 23, sleep=0.5, chunkdelay=0.05),
            make_environ(),
            outdir / "other.grib",
        ),
    )
    done = time.monotonic()
    assert both[0].ok, f"data.grib: {both[0].error}"
    assert both[1].ok, f"other.grib: {both[1].error}"
    await settle(done, standin)
    assert_only(
        outdir,
        {"data.grib": expected_data(MIB, 22), "other.grib": expected_data(MIB - 777, 23)},
    )


# --- e. kill -9 of the server ----------------------------------------------------------------


@pytest.mark.parametrize("servers", [1, 2])
async def test_kill_9_of_the_server_leaves_nothing_of_the_orphaned_mars(
    servers: int, real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    started = [real_ws_server() for _ in range(servers)]
    environ = make_environ()
    rid = environ["request_id"]
    target = outdir / "k.grib"
    size, seed = MIB, 9
    task = asyncio.create_task(
        marsconn.execute_async(
            ws_plan_real([s.url for s in started]),
            fake(size, seed, sleep=1, chunkdelay=0.05),
            environ,
            target,
        )
    )
    await wait_started(standin, rid)
    orphans = started[0].mars_pids()
    started[0].kill9()
    killed_at = time.time()
    # Hold the orphaned MARS until the caller has its answer: it then writes its
    # output afterwards, the worst moment.
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        result = await task
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert result.attempts[0].server == started[0].url
    assert result.attempts[0].outcome == "next_server"
    if servers == 1:
        assert not result.ok
    else:
        assert result.ok, result.error
        assert result.server == started[1].url
    # MARS was started in its own session: it outlives the server and ends on its own.
    await _wait_gone(standin, rid, within=20)
    first_run = next(e for e in standin.events(rid) if e["event"] == "start")["pid"]
    assert any(
        e["event"] == "end" and e["pid"] == first_run and e["time"] > killed_at
        for e in standin.events(rid)
    ), f"the orphaned MARS should have ended after the kill: {standin.events(rid)}"
    await settle(time.monotonic(), standin)
    if servers == 1:
        assert_only(outdir, {})
    else:
        assert_only(outdir, {"k.grib": expected_data(size, seed)})


# --- f. capacity -----------------------------------------------------------------------------


async def test_a_server_at_capacity_sends_the_job_to_the_next_server(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    s1, s2 = real_ws_server(max_connections=1), real_ws_server()
    env_a, env_b = make_environ(), make_environ()
    busy = asyncio.create_task(
        marsconn.execute_async(
            ws_plan_real([s1.url]), fake(300_000, 31, sleep=2), env_a, outdir / "a.grib"
        )
    )
    await wait_started(standin, env_a["request_id"])
    second = await marsconn.execute_async(
        ws_plan_real([s1.url, s2.url]), fake(400_000, 32), env_b, outdir / "b.grib"
    )
    first = await busy
    assert first.ok, first.error
    assert second.ok, second.error
    assert second.server == s2.url
    assert [(a.server, a.error_class) for a in second.attempts] == [
        (s1.url, "capacity"),
        (s2.url, None),
    ]
    # The job ran once, on the second server (MARS runs in its server's directory).
    starts = [e for e in standin.events(env_b["request_id"]) if e["event"] == "start"]
    assert [e["cwd"] for e in starts] == [str(s2.cwd)]
    await _wait_gone(standin, env_a["request_id"])
    assert_only(
        outdir, {"a.grib": expected_data(300_000, 31), "b.grib": expected_data(400_000, 32)}
    )


# --- g. MARS rejects the request -------------------------------------------------------------


async def test_a_mars_rejection_is_final_and_runs_once(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    s1, s2 = real_ws_server(), real_ws_server()
    environ = make_environ()
    rid = environ["request_id"]
    result = await marsconn.execute_async(
        ws_plan_real([s1.url, s2.url], max_retries=3),
        fake(1024, 0, exit=1, error="Unknown parameter FOO"),
        environ,
        outdir / "r.grib",
    )
    assert isinstance(result.error, marsconn.MarsRequestError), repr(result.error)
    assert [(a.server, a.error_class, a.outcome) for a in result.attempts] == [
        (s1.url, "mars_rejected", "final")
    ]
    assert standin.runs(rid) == 1
    assert "Unknown parameter FOO" in result.message
    await _wait_gone(standin, rid)
    assert_only(outdir, {})


# --- h. log lines after 'finished' -----------------------------------------------------------


async def test_log_lines_sent_after_finished_are_delivered(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    # MARS prints 200 lines just before it exits. The server reads them in one
    # thread and sends 'finished', then its close, from another as soon as MARS
    # has exited: a line read after that is sent after 'finished', or dropped
    # once the close is under way (a CI run delivered 125 of 200). What the
    # client owes is every line the server put on the wire, which the relay
    # records. How many come after 'finished' depends on the server's threads
    # (none on an idle machine); tests/test_shares_safety.py has the case
    # every time, with the test server.
    server = real_ws_server()
    lines = LineCounter()
    async with Relay("127.0.0.1", server.port) as relay:
        result = await marsconn.execute_async(
            ws_plan_real([f"ws://127.0.0.1:{relay.port}"]),
            fake(100_000, 41, afterlines=200),
            make_environ(),
            outdir / "h.grib",
            log_handler=lines,
        )
    assert result.ok, result.error
    [wire] = relay.received
    sent = [int(n) for n in re.findall(rb"after line (\d+) of 200", wire)]
    finished_at = wire.find(b'"finished"')
    after_finished = len(re.findall(rb"after line \d+ of 200", wire[finished_at:]))
    delivered = [ln for ln in lines.lines if " after line " in ln]
    assert delivered == [f"mars - INFO - after line {i} of 200" for i in sent], (
        f"the server sent {len(sent)} of the 200 lines ({after_finished} after 'finished'); "
        f"{len(delivered)} were delivered"
    )
    assert sent == list(range(1, len(sent) + 1))  # in order, from the first
    assert_only(outdir, {"h.grib": expected_data(100_000, 41)})


# --- i. a busy server is not a dead one ------------------------------------------------------


async def test_a_server_slower_than_the_liveness_is_pinged_not_abandoned(
    real_ws_server: StartWs, standin: Standin, outdir: Path
) -> None:
    # The server heartbeats every 5 s; the client's liveness is 1 s. Only a
    # ping can tell that the server still lives: the job must not run again.
    # The job runs 6 s: several liveness periods of silence, then one heartbeat.
    s1, s2 = real_ws_server(heartbeat=5), real_ws_server(heartbeat=5)
    environ = make_environ()
    rid = environ["request_id"]
    result = await marsconn.execute_async(
        ws_plan_real([s1.url, s2.url], heartbeat_interval=1, heartbeat_misses=1),
        fake(200_000, 51, lines=1, sleep=6),
        environ,
        outdir / "i.grib",
    )
    assert result.ok, result.error
    assert [(a.server, a.outcome) for a in result.attempts] == [(s1.url, "success")]
    assert standin.runs(rid) == 1, standin.events(rid)
    await _wait_gone(standin, rid)
    assert_only(outdir, {"i.grib": expected_data(200_000, 51)})
