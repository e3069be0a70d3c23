"""Time added by refused servers in front of a live one (WebSocket executor).

Three servers that refuse connections (``dead_url``) are listed before one
live ``WsMarsServer`` with ``failover_order: listed``. Every call succeeds on
the live server; what matters is the time the dead ones add, compared with a
call against the live server alone:

- first call: each repetition uses a fresh ``ServerHealth``, so all three
  dead servers are tried (and ejected) before the live one;
- tenth call: ten calls in a row through the process-wide default health
  (cleared at the start of each repetition); from the second call on the
  ejected servers are tried last, so the live server answers at once.

The live server runs in a separate process so that its work does not share
the client's interpreter. Figures are printed, never asserted.

Run from the repository root::

    .venv/bin/python benchmarks/bench_failover.py [--repetitions 30]
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
from marsconn.core.audit import NullAuditLogger
from marsconn.run.health import ServerHealth, default_health
from marsconn.testing import dead_url

#: The documented cost of the existing client: it sleeps retry_delay (2 s)
#: after every refused connection, on every call (docs, not measured here).
OLD_CLIENT_SLEEP_PER_REFUSED = 2.0
DEAD_SERVERS = 3
TARGET_FIRST_MS = 50.0
TARGET_EJECTED_MS = 5.0
SCRIPT = {
    "log_lines": ("mars - INFO - Processing request 1", "mars - INFO - 1 fields retrieved"),
    "output_size": 16,
}


# --- the live server, in a child process ---------------------------------------------------------


# --- measurement ---------------------------------------------------------------------------------


ENVIRON = {
    "request_id": "00000000-0000-4000-8000-00000000bfa0",
    "user_id": "00000000-0000-4000-8000-000000000001",
    "namespace": "bench",
    "host": "bench-host",
    "username": "bench:000000000001",
}


async def timed_call(
    plan: marsconn.ConnectionPlan, target: Path, health: ServerHealth | None, n: int
) -> tuple[float, list[str | None]]:
    """Seconds for one successful retrieval, and the error class of each attempt."""
    environ = dict(ENVIRON, request_id=f"00000000-0000-4000-8001-{n:012x}")
    started = time.perf_counter()
    result = await marsconn.execute_async(
        plan, {"param": "2t"}, environ, target, audit_logger=NullAuditLogger(), health=health
    )
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"benchmark call failed: {result.error}")
    return elapsed, [a.error_class for a in result.attempts]


async def measure(live: str, target: Path, repetitions: int, calls: int) -> dict[str, Any]:
    baseline_plan = ws_plan([live])
    counter = 0

    def next_n() -> int:
        nonlocal counter
        counter += 1
        return counter

    # Warm-up: imports, first connections, caches.
    for _ in range(5):
        await timed_call(baseline_plan, target, ServerHealth(), next_n())
    for _ in range(2):
        plan = ws_plan([dead_url() for _ in range(DEAD_SERVERS)] + [live])
        await timed_call(plan, target, ServerHealth(), next_n())

    baseline: list[float] = []
    first: list[float] = []
    nth: list[float] = []
    later: list[float] = []  # calls 2..N through the shared health
    added_first: list[float] = []
    added_nth: list[float] = []
    first_classes: list[str | None] = []
    nth_classes: list[str | None] = []
    for _ in range(repetitions):
        base, _ = await timed_call(baseline_plan, target, ServerHealth(), next_n())
        baseline.append(base)

        # First call: a fresh health registry, every dead server is tried.
        plan = ws_plan([dead_url() for _ in range(DEAD_SERVERS)] + [live])
        elapsed, first_classes = await timed_call(plan, target, ServerHealth(), next_n())
        first.append(elapsed)
        added_first.append(elapsed - base)

        # N calls in a row through the default (process-wide) health.
        default_health().clear()
        plan = ws_plan([dead_url() for _ in range(DEAD_SERVERS)] + [live])
        for i in range(calls):
            elapsed, classes = await timed_call(plan, target, None, next_n())
            if i:
                later.append(elapsed)
        nth.append(elapsed)
        nth_classes = classes
        added_nth.append(elapsed - base)
    default_health().clear()
    return {
        "baseline": baseline,
        "first": first,
        "nth": nth,
        "later": later,
        "added_first": added_first,
        "added_nth": added_nth,
        "first_classes": first_classes,
        "nth_classes": nth_classes,
    }


# --- report --------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> str:
    return (
        f"  {label:<40}{ms(statistics.median(values))}{ms(quantile(values, 0.9))}"
        f"{ms(min(values))}{ms(max(values))}"
    )


def verdict(label: str, value_ms: float, limit_ms: float) -> str:
    state = "met" if value_ms < limit_ms else "missed"
    return f"target: {label} < {limit_ms:g} ms -> {state} ({value_ms:.2f} ms)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repetitions", type=int, default=30, help="repetitions of each measurement (30)"
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=10,
        help="calls in a row through the shared health; the last is reported (10)",
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.calls < 2:
        parser.error("--repetitions must be >= 1 and --calls >= 2")

    with ws_server_processes(1, kwargs=SCRIPT) as servers, tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job"
        job.mkdir()
        figures = asyncio.run(
            measure(servers[0].url, job / "data.grib", args.repetitions, args.calls)
        )

    print(
        f"WebSocket failover: {DEAD_SERVERS} refused servers listed before 1 live server "
        "(failover_order listed, other settings default)"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{args.repetitions} repetitions, server in a separate process"
    )
    print(f"  {'time to success (ms)':<40}{'median':>8}{'p90':>8}{'min':>8}{'max':>8}")
    print(row("baseline: live server alone", figures["baseline"]))
    print(row("first call (fresh ServerHealth)", figures["first"]))
    print(row(f"call {args.calls} (shared default health)", figures["nth"]))
    print(row(f"calls 2..{args.calls} (shared default health)", figures["later"]))
    print("  added time (ms), each minus the baseline call of its repetition")
    print(row("first call", figures["added_first"]))
    print(row(f"call {args.calls}, dead servers ejected", figures["added_nth"]))
    per_server = statistics.median(figures["added_first"]) / DEAD_SERVERS
    print(f"  per refused server, first call: {per_server * 1000:.2f} ms")
    print(f"  attempts, first call: {figures['first_classes']}")
    print(f"  attempts, call {args.calls}:   {figures['nth_classes']}")
    old = DEAD_SERVERS * OLD_CLIENT_SLEEP_PER_REFUSED
    print(
        f"  existing client (documented, not measured): {DEAD_SERVERS} x "
        f"{OLD_CLIENT_SLEEP_PER_REFUSED:g} s sleep = {old * 1000:.0f} ms added on every call"
    )
    added_first = statistics.median(figures["added_first"]) * 1000
    added_nth = statistics.median(figures["added_nth"]) * 1000
    if added_first > 0:
        print(f"  ratio existing client / marsconn, first call: {old * 1000 / added_first:,.0f}x")
    print(verdict("added time, first call", added_first, TARGET_FIRST_MS))
    print(verdict(f"added time, call {args.calls} (ejected)", added_nth, TARGET_EJECTED_MS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
