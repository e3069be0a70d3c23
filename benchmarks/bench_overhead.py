"""Client CPU per job: marsconn.execute_async against a minimal websockets loop.

1,000 short jobs run concurrently in one event loop (``asyncio.gather``)
against ``WsMarsServer`` running in a separate process, so
``time.process_time()`` of this process is the client's CPU alone. Each job:
a 16-byte output, two log lines, no delays, its own target directory.

Three variants, each repeated and reported as the median:

- ``marsconn``: ``execute_async`` with a no-op audit logger;
- ``marsconn+structlog``: ``execute_async`` with the default audit logger
  (``structlog.get_logger("marsconn")``), structlog configured with
  ``make_filtering_bound_logger(WARNING)`` so the info events are dropped;
- ``minimal``: the same exchange written by hand with websockets (connect
  with the same options marsconn uses, send ``start``, read until
  ``finished``, close, check the output file).

On a machine with two CPUs or more the client is pinned to the first CPU
and the servers to the others (``--no-pin`` to turn off), which makes the
CPU figures steadier. One full-size run is done and discarded first; the
variants then run in rotating order. The test server's 64 KiB data block is
cached in the server process (it is rebuilt for every job otherwise, about
7 ms of server CPU that would only slow the runs down).

Figures are printed, never asserted. Run from the repository root::

    .venv/bin/python benchmarks/bench_overhead.py [--jobs 1000] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from _servers import ServerProcess, ws_plan, ws_server_processes  # benchmarks/ is on sys.path
from websockets.asyncio.client import connect

import marsconn
from marsconn.core.audit import NullAuditLogger
from marsconn.run.health import ServerHealth

TARGET_RATIO = 1.3
SCRIPT = {
    "log_lines": ("mars - INFO - Processing request 1", "mars - INFO - 1 fields retrieved"),
    "output_size": 16,
}
REQUEST = {"class": "od", "param": "2t", "date": "20240101", "time": "1200"}
ENVIRON = {
    "request_id": "00000000-0000-4000-8000-00000000b000",
    "user_id": "00000000-0000-4000-8000-000000000001",
    "namespace": "bench",
    "host": "bench-host",
    "username": "bench:000000000001",
}


# --- servers, in child processes -----------------------------------------------------------------


# --- the three clients ---------------------------------------------------------------------------


JobRunner = Callable[[int, Path], Awaitable[bool]]


def marsconn_runner(plan: marsconn.ConnectionPlan, audit_logger: Any) -> JobRunner:
    health = ServerHealth()

    async def run(i: int, target: Path) -> bool:
        environ = dict(ENVIRON, request_id=f"00000000-0000-4000-8000-{i:012x}")
        result = await marsconn.execute_async(
            plan, REQUEST, environ, target, audit_logger=audit_logger, health=health
        )
        return result.ok

    return run


def minimal_runner(plan: marsconn.ConnectionPlan, urls: list[str]) -> JobRunner:
    # The same connection options as marsconn's transport, so the comparison
    # measures marsconn's own work rather than, say, compression.
    timeouts = plan.timeouts

    async def run(i: int, target: Path) -> bool:
        environ = dict(ENVIRON, request_id=f"00000000-0000-4000-8000-{i:012x}")
        start = {"cmd": "start", "requests": [REQUEST], "environ": environ, "target": str(target)}
        returncode = None
        async with connect(
            urls[i % len(urls)],
            open_timeout=None,
            ping_interval=timeouts.ws_ping_interval,
            ping_timeout=timeouts.ws_ping_interval,
            close_timeout=timeouts.ws_close,
            compression=None,
            user_agent_header=None,
        ) as ws:
            await ws.send(json.dumps(start))
            while returncode is None:
                message = json.loads(await ws.recv())
                if message.get("type") == "state":
                    status = message.get("status")
                    if status == "finished":
                        returncode = message["returncode"]
                    elif status != "started":
                        return False
        return returncode == 0 and os.stat(target.parent / "data.grib").st_size > 0

    return run


@dataclass
class RunFigures:
    jobs: int
    ok: int
    wall: float
    client_cpu: float
    client_user: float
    client_sys: float
    server_cpu: float = 0.0
    gc_cpu: float = 0.0
    gc_full: int = 0


class GcWatch:
    """CPU seconds spent in the garbage collector, and how many full collections ran."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.cpu += time.process_time() - self._started
            self.full += info["generation"] == 2

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def run_batch(runner: JobRunner, targets: list[Path], concurrency: int) -> int:
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with limit:
            try:
                return await runner(i, targets[i])
            except Exception as exc:  # a failed job is counted, not fatal
                print(f"  job {i} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return False

    results = await asyncio.gather(*(one(i) for i in range(len(targets))))
    return sum(results)


def measure(
    runner: JobRunner,
    servers: list[ServerProcess],
    root: Path,
    jobs: int,
    concurrency: int,
) -> RunFigures:
    run_dir = Path(tempfile.mkdtemp(dir=root))
    targets = []
    for i in range(jobs):
        job = run_dir / f"job{i}"
        job.mkdir()
        targets.append(job / "data.grib")
    gc.collect()

    async def timed() -> RunFigures:
        with GcWatch() as collector:
            times0, cpu0, wall0 = os.times(), time.process_time(), time.perf_counter()
            ok = await run_batch(runner, targets, concurrency)
            wall, cpu, times = time.perf_counter() - wall0, time.process_time() - cpu0, os.times()
        user, system = times.user - times0.user, times.system - times0.system
        return RunFigures(
            jobs, ok, wall, cpu, user, system, gc_cpu=collector.cpu, gc_full=collector.full
        )

    server0 = sum(s.cpu() for s in servers)
    figures = asyncio.run(timed())
    figures.server_cpu = sum(s.cpu() for s in servers) - server0
    shutil.rmtree(run_dir)
    return figures


@contextmanager
def filtered_structlog() -> Iterator[None]:
    """structlog dropping everything below WARNING (and writing nothing at all)."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="concurrent jobs per run (1000)")
    parser.add_argument(
        "--repetitions", type=int, default=5, help="runs of each variant; median reported (5)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="at most this many jobs at once (0 = all of them, the default)",
    )
    parser.add_argument(
        "--servers", type=int, default=1, help="server processes, jobs spread over them (1)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the client to the first CPU and the servers to the others",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repetitions < 1 or args.servers < 1 or args.concurrency < 0:
        parser.error("sizes must be positive")
    concurrency = args.concurrency or args.jobs
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    server_cpus = set(cpus[1:]) if pinned else None
    if pinned:
        os.sched_setaffinity(0, {cpus[0]})
    try:
        figures = run_all(args, concurrency, server_cpus)
    finally:
        os.sched_setaffinity(0, set(cpus))
    report(args, concurrency, figures, cpus, server_cpus)
    return 0


def run_all(
    args: argparse.Namespace, concurrency: int, server_cpus: set[int] | None
) -> dict[str, list[RunFigures]]:
    """Warm up, then run every variant ``args.repetitions`` times."""
    with (
        ws_server_processes(args.servers, kwargs=SCRIPT, cpus=server_cpus) as servers,
        tempfile.TemporaryDirectory() as tmp,
    ):
        urls = [s.url for s in servers]
        plan = ws_plan(urls, "listed" if len(urls) == 1 else "shuffled")
        variants: dict[str, Callable[[], Any]] = {
            "marsconn": lambda: marsconn_runner(plan, NullAuditLogger()),
            "marsconn+structlog": lambda: marsconn_runner(plan, None),
            "minimal": lambda: minimal_runner(plan, urls),
        }

        def run(name: str, jobs: int) -> RunFigures:
            context = filtered_structlog() if name == "marsconn+structlog" else None
            with context or contextlib.nullcontext():
                return measure(variants[name](), servers, Path(tmp), jobs, concurrency)

        # Warm-up: imports, caches, first connections, then one full-size run
        # so the heap has grown to its working size before anything is measured.
        for name in variants:
            run(name, min(50, args.jobs))
        run("marsconn", args.jobs)
        figures: dict[str, list[RunFigures]] = {name: [] for name in variants}
        names = list(variants)
        for rep in range(args.repetitions):
            # Rotate the order so no variant always runs first.
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                figures[name].append(run(name, args.jobs))
    return figures


def report(
    args: argparse.Namespace,
    concurrency: int,
    figures: dict[str, list[RunFigures]],
    cpus: list[int],
    server_cpus: set[int] | None,
) -> None:
    print(
        f"Client overhead: {args.jobs} concurrent jobs (concurrency {concurrency}), "
        f"{args.servers} WsMarsServer process(es), 16-byte output, 2 log lines"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"median of {args.repetitions} runs; client CPU = time.process_time() of this process"
    )
    where = f"client on CPU {cpus[0]}, servers on {sorted(server_cpus)}" if server_cpus else "none"
    print(f"CPU pinning: {where}")
    header = f"  {'variant':<20}{'jobs ok':>11}{'wall s':>8}{'client CPU ms/job':>19}"
    print(
        header
        + f"{'(user':>7}{'+ sys)':>8}{'GC ms/job':>11}{'server ms/job':>15}{'vs minimal':>12}"
    )
    per_job = {
        name: statistics.median(f.client_cpu / f.jobs for f in runs)
        for name, runs in figures.items()
    }
    for name, runs in figures.items():
        ok = f"{min(f.ok for f in runs)}/{args.jobs}"
        wall = statistics.median(f.wall for f in runs)
        user = statistics.median(f.client_user / f.jobs for f in runs) * 1000
        system = statistics.median(f.client_sys / f.jobs for f in runs) * 1000
        server = statistics.median(f.server_cpu / f.jobs for f in runs) * 1000
        collect = statistics.median(f.gc_cpu / f.jobs for f in runs) * 1000
        ratio = per_job[name] / per_job["minimal"]
        print(
            f"  {name:<20}{ok:>11}{wall:>8.2f}{per_job[name] * 1000:>19.3f}"
            f"{user:>7.3f}{system:>8.3f}{collect:>11.3f}{server:>15.3f}{ratio:>11.2f}x"
        )
    for name, runs in figures.items():
        spread = ", ".join(
            f"{f.client_cpu / f.jobs * 1000:.3f} (GC {f.gc_cpu / f.jobs * 1000:.3f}, "
            f"{f.gc_full} full)"
            for f in runs
        )
        print(f"  client CPU ms/job of each run, {name}: {spread}")
    for name in ("marsconn", "marsconn+structlog"):
        ratio = per_job[name] / per_job["minimal"]
        state = "met" if ratio <= TARGET_RATIO else "missed"
        print(f"target: {name}/minimal client CPU <= {TARGET_RATIO} -> {state} ({ratio:.3f})")


if __name__ == "__main__":
    sys.exit(main())
