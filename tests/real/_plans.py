"""Plans, environs and checks shared by the real-server tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from marsconn import ConnectionPlan, resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.testing import expected_data

#: Server heartbeat the WebSocket tests run with, and the client's matching setting.
HEARTBEAT = 1
#: How long after a job's end the directory is watched for late writes.
SETTLE = 5.0


def ws_plan_real(urls: list[str], **overrides: Any) -> ConnectionPlan:
    """A WebSocket plan over ``urls``, tried as listed, one pass, liveness 3 s."""
    settings: dict[str, Any] = {
        "servers": urls,
        "use_shares": True,
        "force_websocket_mode": True,
        "failover_order": "listed",
        "max_retries": 1,
        "retry_delay": 0,
        "connect_timeout": 2,
        "request_timeout": 5,
        "heartbeat_interval": HEARTBEAT,
        "heartbeat_misses": 3,
        "target_settle_time": 2,
        "eject_cooldown": 0,
    }
    settings.update(overrides)
    return resolve_plan(env={}, overrides=settings, logger=NullAuditLogger())


def pipe_plan_real(urls: list[str], **overrides: Any) -> ConnectionPlan:
    """A pipe plan over ``urls``, tried as listed, one pass, read timeout 5 s."""
    settings: dict[str, Any] = {
        "servers": urls,
        "use_shares": False,
        "failover_order": "listed",
        "max_retries": 1,
        "retry_delay": 0,
        "same_host_retries": 0,
        "connect_timeout": 2,
        "request_timeout": 5,
        "read_timeout": 5,
        "eject_cooldown": 0,
    }
    settings.update(overrides)
    return resolve_plan(env={}, overrides=settings, logger=NullAuditLogger())


def make_environ(request_id: str | None = None) -> dict[str, str]:
    """A complete environ with a fresh UUID request_id."""
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "user_id": "0000-test-user-0042",
        "namespace": "marsconn-tests",
        "host": "localhost",
        "username": "marsconn-tests:0042",
    }


def fake(size: int = 1024, seed: int = 0, **keys: Any) -> dict[str, Any]:
    """A MARS request for the stand-in: ``fake(size, seed, sleep=2)`` -> fakesize, fakeseed, ..."""
    request: dict[str, Any] = {
        "class": "ea",
        "param": "2t",
        "fakesize": size,
        "fakeseed": seed,
    }
    for key, value in keys.items():
        request[f"fake{key}"] = value
    return request


def listing(directory: Path) -> list[str]:
    """Every name in ``directory``, hidden ones included, recursively (relative paths)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_exact(path: Path, size: int, seed: int) -> None:
    """``path`` holds exactly the stand-in's bytes for (size, seed)."""
    assert path.is_file(), f"{path} is missing; directory holds {listing(path.parent)}"
    data = path.read_bytes()
    want = expected_data(size, seed)
    if data != want:
        first = next(
            (i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b),
            min(len(data), len(want)),
        )
        raise AssertionError(
            f"{path} differs from the expected {size} bytes (seed {seed}): it has {len(data)} "
            f"bytes, first difference at offset {first}"
        )


def assert_only(directory: Path, contents: dict[str, bytes]) -> None:
    """``directory`` holds exactly these files with exactly these bytes, nothing else."""
    names = listing(directory)
    assert names == sorted(contents), (
        f"{directory} should hold only {sorted(contents)}, but holds {names}"
    )
    for name, data in contents.items():
        got = (directory / name).read_bytes()
        assert got == data, (
            f"{directory / name}: {len(got)} bytes, expected {len(data)} "
            f"({'same length, different bytes' if len(got) == len(data) else 'wrong length'})"
        )


async def settle(since: float, standin: Any = None, seconds: float = SETTLE) -> None:
    """Wait until no stand-in MARS runs (if given) and ``seconds`` have passed since ``since``.

    ``since`` is a ``time.monotonic()`` value: the moment the job's outcome was known.
    """
    if standin is not None:
        for _ in range(200):  # 20 s at most
            if not standin.pids():
                break
            await asyncio.sleep(0.1)
    remaining = since + seconds - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def wait_started(standin: Any, request_id: str, count: int = 1, within: float = 15) -> None:
    """Async version of ``standin.wait_started``."""
    deadline = time.monotonic() + within
    while standin.runs(request_id) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"MARS did not start {count} time(s) for {request_id} within {within:g}s; "
                f"runlog: {standin.runlog()}"
            )
        await asyncio.sleep(0.02)


class LineCounter:
    """A log handler that keeps every raw line it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str, job: Any, logger: Any) -> str:
        self.lines.append(line)
        return line
