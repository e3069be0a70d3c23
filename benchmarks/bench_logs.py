"""MARS log lines through the default filter: throughput and memory.

A deterministic, MARS-like log (mostly INFO noise and request echo lines,
some progress lines, warnings, a few errors, runs of repeated lines) goes
through ``marsconn.run.logs.LogSink`` with ``LogPolicy(filter=True,
keep_lines=2000)``, no handler and no logger (the defaults):

1. timing pass: lines per second and CPU per line, plus the peak RSS growth
   of the process (VmHWM after the run minus VmRSS before it);
2. memory pass: the same lines under ``tracemalloc``; peak traced memory
   above the level before the run. Lines are built in batches of
   ``--batch`` fresh strings (as they would arrive from the network); the
   batch itself is part of the peak and its size is printed separately;
3. over WebSocket (skip with ``--no-ws``): the same lines sent one message
   each by a ``WsMarsServer`` running in a separate process (built before
   the job starts), received by ``marsconn.execute_async`` with the default
   log settings; lines per second end to end, the CPU per line of the
   client and of the server (and the rate each could sustain alone), and
   the client's peak RSS growth. With two CPUs or more the client and the
   server are pinned to different CPUs (``--no-pin`` to turn off).

Figures are printed, never asserted. Run from the repository root::

    .venv/bin/python benchmarks/bench_logs.py [--lines 1000000] [--no-ws]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _servers import ws_plan, ws_server_processes  # benchmarks/ is on sys.path when run

import marsconn
from marsconn.core.audit import NullAuditLogger
from marsconn.plan.model import LogPolicy
from marsconn.run.health import ServerHealth
from marsconn.run.logs import LogSink, classify_line
from marsconn.testing import MarsScript

TARGET_LINES_PER_SECOND = 50_000
TARGET_MEMORY_MB = 50.0
MB = 1024 * 1024

# --- a MARS-like log -----------------------------------------------------------------------------

_PREFIX = "mars - {level:<6} - {ts} - "
_NOISE = (
    "Welcome to MARS",
    "MARS Client bundle version: 6.33.20.2",
    "MARS Client package version: 6.33.20.2",
    "MARS Client build stamp: 20240612083000",
    "MIR version: 1.21.0",
    "Using ecCodes version 2.36.0",
    "Using odc version 1.5.2",
    "Maximum retrieval size is 50.00 G",
    "Retrieve size limit is 50.00 G",
    "Request id: 5c6d{n:04x}-9a1b-4c2d-8e3f-0a1b2c3d{m:04x}",
    "Calling mars on 'marser', local port is {port}",
    "Server task is {n} [marser]",
    "Mars client is on worker-3 (10.1.2.3) {port}",
    "Mars server is on marser-bkup (10.4.5.6) 9000",
    "Automatic split by date is on",
    "Read from network {n}.{m:02d} Mbyte(s) in {m}.{n:03d} secs [{n}.{m:02d} Mbyte/sec]",
    "Memory used: {n} MByte",
)
_ECHO = (
    "RETRIEVE,",
    "    CLASS      = OD,",
    "    TYPE       = AN,",
    "    STREAM     = OPER,",
    "    EXPVER     = 0001,",
    "    LEVTYPE    = PL,",
    "    LEVELIST   = {lev},",
    "    PARAM      = {param},",
    "    DATE       = 2024{month:02d}{day:02d},",
    "    TIME       = 0000/0600/1200/1800,",
    "    GRID       = 0.25/0.25,",
    '    TARGET     = "data.grib"',
)
_PROGRESS = (
    "Processing request {n}",
    "Request has been queued",
    "Request is scheduled",
    "Retrieving from FDB",
    "Transfering {bytes} bytes",
    "{m} fields retrieved from 'marser'",
    "{m} fields have been written to 'data.grib'",
    "Transfer {pct}% done",
)
_WARNING = (
    "Grib field {param} missing for date 2024{month:02d}{day:02d}",
    "Retrying connection to marser in {m} seconds",
    "MIR: interpolation of {param} falls back to nearest neighbour",
)
_ERROR = (
    "Expected {n}, got {m}.",
    "Request failed: no data for {param} on 2024{month:02d}{day:02d}",
)
_REPEATS = (
    "mars - WARN   - Server marser is busy, request queued",
    "mars - INFO   - Waiting for the data to be staged from tape (0%)",
    "mars - INFO   - Request is queued",
)
# Cumulative probabilities per line; the rest is noise (INFO chatter, request echo).
_P_ERROR = 0.001
_P_WARNING = _P_ERROR + 0.03
_P_PROGRESS = _P_WARNING + 0.10
_P_REPEAT_RUN = _P_PROGRESS + 0.0015  # starts a run of 5-60 identical lines


def mars_lines(count: int, seed: int = 0) -> Iterator[str]:
    """``count`` fresh MARS-like log lines, the same ones for the same seed."""
    rng = random.Random(seed)
    repeat_left = 0
    repeat_line = ""
    for i in range(count):
        if repeat_left:
            repeat_left -= 1
            yield repeat_line.encode().decode()  # a fresh string, as from the network
            continue
        seconds = 36_000 + i // 400
        ts = f"20240612.{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        n = rng.randrange(1, 10_000)
        fields = {
            "n": n,
            "m": n % 97,
            "port": 30_000 + n,
            "lev": (1000, 850, 500, 250)[n % 4],
            "param": ("130.128", "131.128", "132.128", "167.128")[n % 4],
            "month": 1 + n % 12,
            "day": 1 + n % 28,
            "bytes": n * 4_096,
            "pct": n % 101,
        }
        r = rng.random()
        if r < _P_ERROR:
            level, text = "ERROR", rng.choice(_ERROR)
        elif r < _P_WARNING:
            level, text = "WARN", rng.choice(_WARNING)
        elif r < _P_PROGRESS:
            level, text = "INFO", rng.choice(_PROGRESS)
        elif r < _P_REPEAT_RUN:
            repeat_line = rng.choice(_REPEATS)
            repeat_left = rng.randint(5, 60) - 1
            yield repeat_line.encode().decode()
            continue
        elif r < 0.85:
            level, text = "INFO", rng.choice(_NOISE)
        else:
            yield rng.choice(_ECHO).format(**fields)
            continue
        yield _PREFIX.format(level=level, ts=ts) + text.format(**fields)


class MarsLog:
    """A lazily generated log usable as ``MarsScript.log_lines`` (iterable, sized)."""

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        return mars_lines(self.count, self.seed)


def batches(count: int, size: int, seed: int) -> Iterator[list[str]]:
    lines = mars_lines(count, seed)
    while batch := list(itertools.islice(lines, size)):
        yield batch


def describe_mix(sample: int, seed: int) -> str:
    kinds = collections.Counter(
        classify_line(line) or "noise" for line in mars_lines(sample, seed)
    )
    repeats = 0
    previous = None
    for line in mars_lines(sample, seed):
        repeats += line == previous
        previous = line
    parts = [
        f"{kind} {kinds[kind] / sample:.1%}" for kind in ("noise", "info", "warning", "error")
    ]
    return ", ".join(parts) + f"; consecutive repeats {repeats / sample:.1%}"


# --- process memory ------------------------------------------------------------------------------


def _status(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status, in bytes (0 if unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class RssWatch:
    """Peak RSS growth over a stretch of code."""

    def __enter__(self) -> RssWatch:
        gc.collect()
        self.exact = reset_peak_rss()
        self.before = _status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = _status("VmHWM") - self.before


# --- 1 and 2: LogSink in process -----------------------------------------------------------------


async def feed(sink: LogSink, batch: list[str]) -> None:
    for line in batch:
        await sink.line(line)


def timing_pass(lines: int, batch: int, seed: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        sink = LogSink(LogPolicy(filter=True, keep_lines=2000))
        wall = cpu = 0.0
        for chunk in batches(lines, batch, seed):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await feed(sink, chunk)
            wall += time.perf_counter() - wall0
            cpu += time.process_time() - cpu0
        sink.close()
        text = sink.text
        return {
            "wall": wall,
            "cpu": cpu,
            "seen": sink.lines_seen,
            "kept": text.count("\n") + 1 if text else 0,
            "dropped": sink.dropped,
            "errors": sum(1 for line in text.splitlines() if classify_line(line) == "error"),
        }

    with RssWatch() as rss:
        figures = asyncio.run(run())
    figures["rss_growth"] = rss.growth
    figures["rss_exact"] = rss.exact
    return figures


def memory_pass(lines: int, batch: int, seed: int) -> dict[str, Any]:
    async def run() -> tuple[int, int]:
        sink = LogSink(LogPolicy(filter=True, keep_lines=2000))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for chunk in batches(lines, batch, seed):
            await feed(sink, chunk)
            del chunk
        sink.close()
        current, peak = tracemalloc.get_traced_memory()
        return peak - before, current - before

    # The size of one input batch, built alone, to tell it apart from the sink.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        one = next(batches(min(lines, batch), batch, seed))
        batch_bytes = tracemalloc.get_traced_memory()[1] - before
        del one
        peak, retained = asyncio.run(run())
    finally:
        tracemalloc.stop()
    return {"peak": peak, "retained": retained, "batch": batch_bytes}


# --- 3: over a real WebSocket --------------------------------------------------------------------


def _log_script(lines: int, seed: int) -> MarsScript:
    """The server's script: ``lines`` MARS lines, built in the server process."""
    return MarsScript(log_lines=list(mars_lines(lines, seed)), output_size=16)


def websocket_pass(lines: int, seed: int, pin: bool) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin and len(cpus) >= 2
    server_cpus = set(cpus[1:]) if pinned else None
    original_affinity = os.sched_getaffinity(0)
    server_cpu = float("nan")
    with contextlib.ExitStack() as stack:
        if pinned:
            os.sched_setaffinity(0, {cpus[0]})
            stack.callback(os.sched_setaffinity, 0, original_affinity)
        (server,) = stack.enter_context(
            ws_server_processes(1, _log_script, (lines, seed), cpus=server_cpus)
        )
        url = server.url
        plan = ws_plan([url], client_filter_logs=True, log_keep_lines=2000)
        environ = {
            "request_id": "00000000-0000-4000-8000-00000000b106",
            "user_id": "00000000-0000-4000-8000-000000000001",
            "namespace": "bench",
            "host": "bench-host",
            "username": "bench:000000000001",
        }
        with tempfile.TemporaryDirectory() as tmp, RssWatch() as rss:
            target = Path(tmp) / "data.grib"
            server_cpu0 = server.cpu()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            result = asyncio.run(
                marsconn.execute_async(
                    plan,
                    {"param": "2t"},
                    environ,
                    target,
                    audit_logger=NullAuditLogger(),
                    health=ServerHealth(),
                )
            )
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            server_cpu = server.cpu() - server_cpu0
    if not result.ok:
        raise RuntimeError(f"the WebSocket job failed: {result.error}")
    return {
        "wall": wall,
        "cpu": cpu,
        "kept": len(result.message.splitlines()),
        "dropped": result.dropped_log_lines,
        "rss_growth": rss.growth,
        "rss_exact": rss.exact,
        "server_cpu": server_cpu,
        "pinned": pinned,
    }


# --- main ----------------------------------------------------------------------------------------


def verdict_rate(label: str, rate: float) -> str:
    state = "met" if rate >= TARGET_LINES_PER_SECOND else "missed"
    return f"target: {label} >= {TARGET_LINES_PER_SECOND:,} lines/s -> {state} ({rate:,.0f})"


def verdict_memory(label: str, growth: int) -> str:
    state = "met" if growth < TARGET_MEMORY_MB * MB else "missed"
    return f"target: {label} < {TARGET_MEMORY_MB:g} MB -> {state} ({growth / MB:.1f} MB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="log lines (1,000,000)")
    parser.add_argument(
        "--batch", type=int, default=10_000, help="lines built ahead at a time (10,000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated log (0)")
    parser.add_argument(
        "--ws-lines", type=int, default=None, help="lines for the WebSocket pass (= --lines)"
    )
    parser.add_argument("--no-ws", action="store_true", help="skip the WebSocket pass")
    parser.add_argument(
        "--ws-runs", type=int, default=5, help="WebSocket jobs, medians reported (5)"
    )
    parser.add_argument(
        "--ws-only", action="store_true", help="only the WebSocket pass (skip passes 1 and 2)"
    )
    parser.add_argument(
        "--timer-per-message",
        action="store_true",
        help="WebSocket pass: also run each job with a timer re-armed per message, in turn",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="WebSocket pass: do not pin the client to the first CPU and the server to the others",
    )
    args = parser.parse_args(argv)
    if args.lines < 1 or args.batch < 1:
        parser.error("--lines and --batch must be positive")
    ws_lines = args.ws_lines or args.lines

    print(
        f"Log filter: {args.lines:,} MARS-like lines through LogSink"
        "(LogPolicy(filter=True, keep_lines=2000)), no handler, no logger"
    )
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"  mix (first 100,000 lines, by classify_line): {describe_mix(100_000, args.seed)}")

    if args.ws_only:
        print("  in process: skipped (--ws-only)")
    else:
        timing, memory, rate = in_process(args)
    websocket = None if args.no_ws else over_websocket(args, ws_lines)
    if not args.ws_only:
        print(verdict_rate("lines per second, LogSink", rate))
        print(verdict_memory("peak memory growth, tracemalloc", memory["peak"]))
        print(verdict_memory("peak memory growth, RSS", timing["rss_growth"]))
    if websocket is not None:
        print(verdict_rate("lines per second, over WebSocket, end to end", websocket["rate"]))
        print(
            verdict_rate(
                "lines per second, over WebSocket, client capacity", websocket["capacity"]
            )
        )
        print(verdict_memory("client peak RSS growth, over WebSocket", websocket["rss_growth"]))
    return 0


def in_process(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], float]:
    timing = timing_pass(args.lines, args.batch, args.seed)
    memory = memory_pass(args.lines, args.batch, args.seed)
    rate = timing["seen"] / timing["wall"]
    print("  in process")
    print(
        f"    lines seen / kept / dropped:     {timing['seen']:,} / {timing['kept']:,} / "
        f"{timing['dropped']:,} (kept: the bounded tail plus {timing['errors']:,} error lines; "
        "dropped: shown but evicted from the tail)"
    )
    print(f"    wall time in LogSink.line:       {timing['wall']:.2f} s")
    print(f"    lines per second:                {rate:,.0f}")
    print(f"    CPU per line:                    {timing['cpu'] / timing['seen'] * 1e6:.2f} us")
    exact = "" if timing["rss_exact"] else " (peak not resettable: lifetime peak)"
    print(f"    peak RSS growth:                 {timing['rss_growth'] / MB:.1f} MB{exact}")
    print(
        f"    tracemalloc peak growth:         {memory['peak'] / MB:.2f} MB "
        f"(of which one {args.batch:,}-line input batch: {memory['batch'] / MB:.2f} MB)"
    )
    print(f"    retained after the run:          {memory['retained'] / MB:.2f} MB")
    return timing, memory, rate


@contextlib.contextmanager
def timer_per_message() -> Iterator[None]:
    """The WebSocket transport as it was: an ``asyncio.timeout`` entered around every recv()."""
    from marsconn.run import ws_transport

    async def recv(self: Any, ws: Any, limit: float) -> str | bytes:
        async with asyncio.timeout(limit):
            return await ws.recv()  # type: ignore[no-any-return]

    lazy = ws_transport._Silence.recv
    ws_transport._Silence.recv = recv  # type: ignore[method-assign]
    try:
        yield
    finally:
        ws_transport._Silence.recv = lazy  # type: ignore[method-assign]


def over_websocket(args: argparse.Namespace, ws_lines: int) -> dict[str, Any]:
    """``--ws-runs`` WebSocket jobs, each with a fresh server process; medians and spread."""
    runs = []
    per_message = []
    for _ in range(args.ws_runs):
        runs.append(websocket_pass(ws_lines, args.seed, not args.no_pin))
        if args.timer_per_message:
            with timer_per_message():
                per_message.append(websocket_pass(ws_lines, args.seed, not args.no_pin))
    if per_message:
        rates = sorted(ws_lines / r["wall"] for r in per_message)
        client = sorted(r["cpu"] / ws_lines * 1e6 for r in per_message)
        print(
            f"  over WebSocket, a timer re-armed per message (as before), {len(per_message)} jobs "
            f"in turn with the ones below: {statistics.median(rates):,.0f} lines/s "
            f"[{rates[0]:,.0f}-{rates[-1]:,.0f}], client CPU {statistics.median(client):.2f} us "
            f"per line [{client[0]:.2f}-{client[-1]:.2f}]"
        )
    rates = [ws_lines / r["wall"] for r in runs]
    client_us = [r["cpu"] / ws_lines * 1e6 for r in runs]
    server_us = [r["server_cpu"] / ws_lines * 1e6 for r in runs]
    med = statistics.median
    first = runs[0]
    pinning = "client, server on separate CPUs" if first["pinned"] else "unpinned"
    print(
        f"  over WebSocket ({ws_lines:,} lines, one message each, server in another "
        f"process, {pinning}; {len(runs)} jobs, median [min-max])"
    )
    print(f"    lines kept / dropped:            {first['kept']:,} / {first['dropped']:,}")
    walls = [r["wall"] for r in runs]
    spread = f"[{min(walls):.2f}-{max(walls):.2f}]"
    print(f"    wall time, whole job:            {med(walls):.2f} s {spread}")
    print(
        f"    lines per second, end to end:    {med(rates):,.0f} "
        f"[{min(rates):,.0f}-{max(rates):,.0f}]"
    )
    print(
        f"    client CPU per line:             {med(client_us):.2f} us "
        f"[{min(client_us):.2f}-{max(client_us):.2f}] "
        f"(client capacity {1e6 / med(client_us):,.0f} lines/s)"
    )
    print(
        f"    server CPU per line:             {med(server_us):.2f} us "
        f"[{min(server_us):.2f}-{max(server_us):.2f}] "
        f"(server capacity {1e6 / med(server_us):,.0f} lines/s)"
    )
    growth = max(r["rss_growth"] for r in runs)
    print(f"    client peak RSS growth:          {growth / MB:.1f} MB (largest)")
    return {"rate": med(rates), "capacity": 1e6 / med(client_us), "rss_growth": growth}


if __name__ == "__main__":
    sys.exit(main())
