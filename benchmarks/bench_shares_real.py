"""Many concurrent shares-mode jobs through the REAL WebSocket server, marsconn vs ws_client.

Starts cads-mars-server's WebSocket server (from ../shared/peers) with the
project's stand-in MARS, then runs rounds of N concurrent jobs, each printing
L log lines and writing S bytes, alternating marsconn (default client
settings) and cads-mars-server's own ``ws_client.mars_via_ws`` in the same
process. Every job has its own directory (ws_client needs that: the server
always writes ``data.grib``).

Prints, per round and as medians over the pairs: wall time, how late the
slowest job finished against the median job, whether every target is exact,
and how many MARS runs each job cost (from the stand-in's run log). The
figures behind docs/performance.md:

    .venv/bin/python benchmarks/bench_shares_real.py                # 200 x 200, 3 pairs
    .venv/bin/python benchmarks/bench_shares_real.py --jobs 50 --pairs 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import marsconn  # noqa: E402
from marsconn.core.audit import NullAuditLogger  # noqa: E402
from marsconn.run.health import ServerHealth  # noqa: E402
from marsconn.testing import expected_data  # noqa: E402
from tests.real.peers import SERVER_SRC, Servers, Standin, missing_reason  # noqa: E402

Job = tuple[str, dict[str, Any], dict[str, Any], Path]
Runner = Callable[[str, list[Job]], Awaitable[list[float]]]


def environ(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "user_id": "00000000-0000-4000-8000-000000000001",
        "namespace": "bench",
        "host": "bench-1",
        "username": "bench:000000000001",
    }


def make_jobs(base: Path, count: int, lines: int, size: int) -> list[Job]:
    jobs = []
    for i in range(count):
        rid = str(uuid.uuid4())
        directory = base / f"job-{i:04d}"
        directory.mkdir(parents=True)
        request = {
            "param": "2t",
            "fakelines": str(lines),
            "fakesize": str(size),
            "fakeseed": str(i % 251),
        }
        jobs.append((rid, request, environ(rid), directory / "data.grib"))
    return jobs


async def run_marsconn(url: str, jobs: list[Job]) -> list[float]:
    # Default client settings: only the server list and the mode are given.
    plan = marsconn.resolve_plan(
        env={},
        overrides={"servers": [url], "use_shares": True, "force_websocket_mode": True},
        logger=NullAuditLogger(),
    )
    start = time.perf_counter()
    health = ServerHealth()

    async def one(job: Job) -> float:
        _, request, env, target = job
        result = await marsconn.execute_async(
            plan, request, env, target, health=health, audit_logger=NullAuditLogger()
        )
        if not result.ok:
            print(f"  marsconn job {env['request_id']} failed: {result.error}", file=sys.stderr)
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def run_ws_client(url: str, jobs: list[Job]) -> list[float]:
    from cads_mars_server.ws_client import mars_via_ws

    quiet = logging.getLogger("bench.ws_client")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    start = time.perf_counter()

    async def one(job: Job) -> float:
        _, request, env, target = job
        result = await mars_via_ws([url], [request], env, str(target), logger=quiet)
        if result.error:
            print(f"  ws_client job {env['request_id']} failed: {result.error}", file=sys.stderr)
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def check(jobs: list[Job], size: int) -> tuple[int, list[str]]:
    """How many targets are exact, and what else is left in the job directories."""
    exact = 0
    leftovers: list[str] = []
    for i, (_, _, _, target) in enumerate(jobs):
        with contextlib.suppress(FileNotFoundError):
            exact += target.read_bytes() == expected_data(size, seed=i % 251)
        leftovers += [p.name for p in target.parent.iterdir() if p != target]
    return exact, leftovers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    reason = missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(SERVER_SRC))
    logging.getLogger("websockets").setLevel(logging.CRITICAL)

    work = Path(tempfile.mkdtemp(prefix="bench-shares-"))
    standin = Standin(work / "standin")
    servers = Servers(standin, work / "servers")
    runners: dict[str, Runner] = {"marsconn": run_marsconn, "ws_client": run_ws_client}
    walls: dict[str, list[float]] = {name: [] for name in runners}
    lates: dict[str, list[float]] = {name: [] for name in runners}
    ok = True
    try:
        # The real server's default heartbeat (20 s) and no connection limit.
        server = servers.start_ws(heartbeat=20)
        print(
            f"{args.jobs} concurrent jobs x {args.lines} log lines x {args.size} bytes, "
            f"real WebSocket server, {args.pairs} alternating pairs"
        )
        print(f"{'round':<18}{'wall s':>8}{'max-median s':>14}{'exact':>8}{'runs/job':>10}  left")
        for pair in range(args.pairs):
            order = list(runners) if pair % 2 == 0 else list(reversed(runners))
            for name in order:
                jobs = make_jobs(work / f"{name}-{pair}", args.jobs, args.lines, args.size)
                began = time.perf_counter()
                finish = asyncio.run(runners[name](server.url, jobs))
                wall = time.perf_counter() - began
                exact, leftovers = check(jobs, args.size)
                starts = Counter(
                    e["request_id"] for e in standin.runlog() if e["event"] == "start"
                )
                runs = [starts.get(rid, 0) for rid, *_ in jobs]
                late = max(finish) - statistics.median(finish)
                walls[name].append(wall)
                lates[name].append(late)
                print(
                    f"{name + ' #' + str(pair + 1):<18}{wall:>8.2f}{late:>14.2f}"
                    f"{exact:>5}/{len(jobs):<3}{max(runs):>6} max  {len(leftovers)}"
                )
                if name == "marsconn":
                    ok &= exact == len(jobs) and max(runs) == 1 and not leftovers and late <= 8
                shutil.rmtree(work / f"{name}-{pair}", ignore_errors=True)
        wall_m = {name: statistics.median(v) for name, v in walls.items()}
        print()
        for name in runners:
            print(
                f"median {name:<10} wall {wall_m[name]:6.2f} s "
                f"(spread {min(walls[name]):.2f}-{max(walls[name]):.2f}), "
                f"slowest job {statistics.median(lates[name]):.2f} s after the median job"
            )
        ratio = wall_m["marsconn"] / wall_m["ws_client"]
        print(f"wall time marsconn / ws_client (medians): {ratio:.2f}")
        print(f"target: wall time ratio <= 1.00 -> {'met' if ratio <= 1.0 else 'missed'}")
        print(
            "target: every target exact, one MARS run per job, nothing left, no job later "
            f"than median + 8 s -> {'met' if ok else 'missed'}"
        )
        return 0
    finally:
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
