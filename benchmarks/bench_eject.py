"""Ejection under bursts: connection attempts to a dead or hung server per cooldown.

N retrievals start at once (``asyncio.gather``) through one ``ServerHealth``,
as in a worker process, over three WebSocket servers: two live
``WsMarsServer`` (in child processes) and one bad server, either *dead* (a
port that refuses connections) or *hung* (accepts TCP, never answers the
handshake; ``connect_timeout`` 2 s). ``eject_cooldown`` is 30 s and every
run takes less, so each count below is attempts *per cooldown*. Three
bursts per run: *cold* (a fresh health registry: nothing known yet), *warm*
(the same registry right after: the bad server is ejected) and *after* (the
registry's clock moved on by one cooldown: the ejection has just ended).

Counted: connection attempts on the bad server (``marsconn.attempt.started``
events naming it), over all N retrievals; the wall time of the burst and
the slowest retrieval in it. Orders: ``shuffled`` (the default) and
``listed`` with the bad server first (every retrieval's first choice).
Figures are printed, never asserted.

Run from the repository root::

    .venv/bin/python benchmarks/bench_eject.py [--jobs 50 200] [--repetitions 3]

To measure another checkout of marsconn the same way, put it first on the
path: ``PYTHONPATH=/path/to/checkout .venv/bin/python benchmarks/bench_eject.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _servers import ws_plan, ws_server_processes  # benchmarks/ is on sys.path when run

import marsconn
from marsconn.run.health import ServerHealth
from marsconn.testing import SilentServer, dead_url

COOLDOWN = 30.0
PHASES = ("cold", "warm", "after")
SCRIPT = {"log_lines": ("mars - INFO - 1 fields retrieved",), "output_size": 16}


class Count:
    """An audit logger counting connection attempts per server."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}

    def info(self, event: str, **kw: Any) -> None:
        if event == "marsconn.attempt.started":
            self.started[kw["server"]] = self.started.get(kw["server"], 0) + 1

    def warning(self, event: str, **kw: Any) -> None:
        self.info(event, **kw)


def environ(i: int) -> dict[str, Any]:
    return {
        "request_id": f"00000000-0000-4000-8000-{i:012d}",
        "user_id": "bench",
        "namespace": "bench",
        "host": "bench",
        "username": "bench:bench",
    }


async def one_burst(
    plan: marsconn.ConnectionPlan, health: ServerHealth, jobs: int, workdir: Path, tag: str
) -> tuple[Count, float, float, int]:
    """Run ``jobs`` retrievals at once; (counts, burst seconds, slowest job, failures)."""
    count = Count()
    targets = []
    for i in range(jobs):
        job = workdir / f"{tag}-{i}"
        job.mkdir()
        targets.append(job / "out.grib")
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            marsconn.execute_async(
                plan, {"param": "2t"}, environ(i), t, health=health, audit_logger=count
            )
            for i, t in enumerate(targets)
        )
    )
    wall = time.perf_counter() - started
    return count, wall, max(r.duration for r in results), sum(not r.ok for r in results)


async def measure(live: list[str], jobs: int, bad_kind: str, order: str) -> dict[str, Any]:
    async with SilentServer() as silent:
        bad = dead_url() if bad_kind == "dead" else silent.url_for("ws")
        urls = [bad, *live]
        plan = ws_plan(
            urls,
            order,
            eject_cooldown=COOLDOWN,
            connect_timeout=2,
            retry_delay=0,
            target_settle_time=1,
        )
        skew = [0.0]  # moved forward by a cooldown before the last burst
        health = ServerHealth(clock=lambda: time.monotonic() + skew[0])
        out: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-eject-") as tmp:
            for phase in PHASES:
                if phase == "after":
                    skew[0] += COOLDOWN
                count, wall, slowest, failed = await one_burst(
                    plan, health, jobs, Path(tmp), phase
                )
                out[phase] = (count.started.get(bad, 0), wall, slowest, failed)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()

    print(
        f"marsconn {marsconn.__version__} from {Path(marsconn.__file__).parent}; "
        f"python {platform.python_version()}; {os.cpu_count()} CPUs"
    )
    print(f"eject_cooldown {COOLDOWN:g}s; median of {args.repetitions} repetitions")
    print()
    header = (
        f"{'bad server':<10} {'order':<9} {'jobs':>5} {'burst':<5} "
        f"{'attempts on it':>14} {'burst s':>8} {'slowest s':>9} {'failed':>6}"
    )
    print(header)
    print("-" * len(header))
    worst = {"cold": 0.0, "warm": 0.0, "after": 0.0}
    with ws_server_processes(2, kwargs=SCRIPT) as servers:
        live = [s.url for s in servers]
        for bad_kind in ("dead", "hung"):
            for order in ("shuffled", "listed"):
                for jobs in args.jobs:
                    runs = [
                        asyncio.run(measure(live, jobs, bad_kind, order))
                        for _ in range(args.repetitions)
                    ]
                    for phase in PHASES:
                        rows = [r[phase] for r in runs]
                        attempts = statistics.median(r[0] for r in rows)
                        worst[phase] = max(worst[phase], max(r[0] for r in rows))
                        print(
                            f"{bad_kind:<10} {order:<9} {jobs:>5} {phase:<5} "
                            f"{attempts:>14g} {statistics.median(r[1] for r in rows):>8.2f} "
                            f"{statistics.median(r[2] for r in rows):>9.2f} "
                            f"{max(r[3] for r in rows):>6}"
                        )
    for phase, limit in (("cold", 1), ("warm", 0), ("after", 1)):
        verdict = "met" if worst[phase] <= limit else "missed"
        print(
            f"target: attempts on the bad server, {phase} burst, any repetition <= {limit} "
            f"-> {verdict} ({worst[phase]:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
