"""Shares mode never loses, mixes up or double-runs data (in-process servers).

The test server behaves as cads-mars-server's WebSocket server does where
data safety is concerned: it writes ``data.grib`` and ``<request_id>.mars``
in the directory of the target it is sent, deletes that target path on a
kill or a disconnect, can be frozen and resumed, and its MARS outlives a
crash. tests/real/ runs the same situations against the real server.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import marsconn
from marsconn.run.attemptdir import DEFAULT_DIR_MODE, AttemptDir
from marsconn.run.health import ServerHealth
from marsconn.testing import MarsScript, WsMarsServer, expected_data

Factory = Callable[..., WsMarsServer]
OLD = b"the previous retrieval's data, which must survive"


def environ() -> dict[str, str]:
    return {
        "request_id": str(uuid.uuid4()),
        "user_id": "00000000-0000-4000-8000-000000000001",
        "namespace": "test",
        "host": "worker-1",
        "username": "test:000000000001",
    }


async def run(plan: marsconn.ConnectionPlan, target: Path, request: Any = None, **kw: Any):
    kw.setdefault("health", ServerHealth())
    return await marsconn.execute_async(
        plan, request or {"param": "2t"}, kw.pop("env", None) or environ(), target, **kw
    )


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def job(tmp_path: Path) -> Path:
    directory = tmp_path / "job"
    directory.mkdir()
    return directory


async def test_frozen_server_resumed_after_failover_cannot_touch_the_delivery(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    frozen = mars_ws_server_factory(MarsScript(run_time=0.6, seed=1), heartbeat_interval=0.1)
    good = mars_ws_server_factory(MarsScript(seed=2), heartbeat_interval=0.1)
    plan = ws_plan([frozen.url, good.url], heartbeat_interval=0.1, heartbeat_misses=2)
    target = job / "out.grib"
    task = asyncio.create_task(run(plan, target))
    await until(lambda: bool(frozen.jobs))
    frozen.freeze()
    result = await task
    assert result.ok, result.error
    assert result.server == good.url
    # MARS on the frozen server finished meanwhile; now the server catches up: it reads
    # the kill and deletes the path it was sent, which is no longer anybody's.
    await asyncio.sleep(0.8)
    frozen.resume()
    await until(lambda: frozen.jobs[0].outcome != "running")
    await asyncio.sleep(0.3)
    assert target.read_bytes() == expected_data(1024, seed=2)
    assert names(job) == ["out.grib"]


async def test_cancel_keeps_the_old_target(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    server = mars_ws_server_factory(MarsScript(run_time=10))
    target = job / "out.grib"
    target.write_bytes(OLD)
    task = asyncio.create_task(run(ws_plan([server.url]), target))
    await until(lambda: bool(server.jobs))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: server.jobs[0].outcome == "killed")
    assert target.read_bytes() == OLD
    assert names(job) == ["out.grib"]


async def test_deadline_keeps_the_old_target(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    server = mars_ws_server_factory(MarsScript(run_time=10))
    target = job / "out.grib"
    target.write_bytes(OLD)
    result = await run(ws_plan([server.url], job_deadline=0.3), target)
    assert result.error_class == "job_deadline"
    await until(lambda: server.jobs[0].outcome == "killed")
    assert target.read_bytes() == OLD
    assert names(job) == ["out.grib"]


async def test_concurrent_jobs_in_one_directory_keep_their_own_bytes(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    def by_seed(requests: list[dict[str, Any]]) -> MarsScript:
        seed = int(requests[0]["seed"])
        # Same timing for all three: they run side by side and end together.
        return MarsScript(output_size=100_000 + seed, seed=seed, run_time=0.3)

    server = mars_ws_server_factory(by_seed)
    plan = ws_plan([server.url])
    targets = {seed: job / f"{name}.grib" for seed, name in ((1, "a"), (2, "b"), (3, "c"))}
    results = await asyncio.gather(
        *(run(plan, target, {"seed": str(seed)}) for seed, target in targets.items())
    )
    assert all(r.ok for r in results), [r.error for r in results]
    for seed, target in targets.items():
        assert target.read_bytes() == expected_data(100_000 + seed, seed=seed)
    assert names(job) == ["a.grib", "b.grib", "c.grib"]


async def test_a_target_named_data_grib_is_safe_beside_another_job(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    def by_seed(requests: list[dict[str, Any]]) -> MarsScript:
        seed = int(requests[0]["seed"])
        return MarsScript(output_size=5000, seed=seed, run_time=0.2)

    server = mars_ws_server_factory(by_seed)
    plan = ws_plan([server.url])
    first, second = job / "data.grib", job / "other.grib"
    results = await asyncio.gather(
        run(plan, first, {"seed": "5"}), run(plan, second, {"seed": "6"})
    )
    assert all(r.ok for r in results)
    assert first.read_bytes() == expected_data(5000, seed=5)
    assert second.read_bytes() == expected_data(5000, seed=6)
    assert names(job) == ["data.grib", "other.grib"]


async def test_crashed_server_orphan_writes_nowhere(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    crashing = mars_ws_server_factory(MarsScript(run_time=0.5, seed=7))
    good = mars_ws_server_factory(MarsScript(seed=8))
    target = job / "out.grib"
    target.write_bytes(OLD)
    task = asyncio.create_task(run(ws_plan([crashing.url, good.url]), target))
    await until(lambda: bool(crashing.jobs))
    crashing.crash()
    result = await task
    assert result.ok, result.error
    assert [a.error_class for a in result.attempts] == ["connection_lost", None]
    # The orphaned MARS finishes after the failover; its output has nowhere to go.
    await asyncio.sleep(0.8)
    assert crashing.jobs[0].outcome == "orphaned"
    assert target.read_bytes() == expected_data(1024, seed=8)
    assert names(job) == ["out.grib"]


async def test_failed_attempt_leaves_nothing_and_the_old_target(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    server = mars_ws_server_factory(MarsScript(returncode=3))
    target = job / "out.grib"
    target.write_bytes(OLD)
    result = await run(ws_plan([server.url]), target)
    assert isinstance(result.error, marsconn.MarsRequestError)
    assert target.read_bytes() == OLD
    assert names(job) == ["out.grib"]


async def test_lines_after_finished_are_delivered(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    late = [f"mars - INFO - late line {i}" for i in range(300)]
    server = mars_ws_server_factory(
        MarsScript(log_lines=["mars - INFO - early"], after_lines=late)
    )
    seen: list[str] = []

    def handler(line: str, running: marsconn.Job, logger: Any) -> None:
        seen.append(line)

    result = await run(ws_plan([server.url]), job / "out.grib", log_handler=handler)
    assert result.ok, result.error
    assert seen == ["mars - INFO - early", *late]


async def test_existing_target_keeps_its_mode(
    mars_ws_server_factory: Factory, ws_plan, job: Path
) -> None:
    server = mars_ws_server_factory()
    target = job / "out.grib"
    target.write_bytes(OLD)
    target.chmod(0o600)
    result = await run(ws_plan([server.url]), target)
    assert result.ok
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == expected_data(1024)


# --- the private directory itself ---------------------------------------------------------------


def test_attempt_dir_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        place = AttemptDir.create(tmp_path / "out.grib")
    finally:
        os.umask(old)
    assert stat.S_IMODE(place.path.stat().st_mode) == DEFAULT_DIR_MODE
    assert place.path.parent == tmp_path
    assert place.output.name == "data.grib"
    assert place.remove()
    assert names(tmp_path) == []


def test_attempt_dir_removes_what_a_server_left(tmp_path: Path) -> None:
    place = AttemptDir.create(tmp_path / "out.grib", 0o700)
    (place.path / "req.mars").write_text("RETRIEVE")
    (place.path / "sub").mkdir()
    assert stat.S_IMODE(place.path.stat().st_mode) == 0o700
    assert place.remove()
    assert place.remove()  # already gone: still fine
    assert names(tmp_path) == []


def test_attempt_dirs_are_distinct(tmp_path: Path) -> None:
    first = AttemptDir.create(tmp_path / "out.grib")
    second = AttemptDir.create(tmp_path / "out.grib")
    assert first.path != second.path
    assert first.output_size() == -1
    first.output.write_bytes(b"12345")
    assert first.output_size() == 5
    assert first.deliver(tmp_path / "out.grib") == 5
    assert (tmp_path / "out.grib").read_bytes() == b"12345"
    assert first.remove()
    assert second.remove()
    assert names(tmp_path) == ["out.grib"]


def test_attempt_dir_creation_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AttemptDir.create(tmp_path / "missing" / "out.grib")


async def test_unwritable_target_directory_is_a_final_target_error(
    mars_ws_server, ws_plan, job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root may write anywhere, so the refusal is the filesystem's answer, injected.
    def refuse(cls: type[AttemptDir], target: Path, mode: int = 0) -> AttemptDir:
        raise PermissionError(13, "Permission denied", str(target.parent))

    monkeypatch.setattr(AttemptDir, "create", classmethod(refuse))
    result = await run(ws_plan([mars_ws_server.url]), job / "out.grib")
    assert isinstance(result.error, marsconn.TargetError)
    assert "Permission denied" in str(result.error)
    assert "needs write access" in str(result.error)
    assert [a.error_class for a in result.attempts] == ["target_error"]
    assert mars_ws_server.jobs == []
