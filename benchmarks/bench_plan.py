"""How long resolving a ConnectionPlan takes, and what importing marsconn costs.

1. ``resolve_plan`` median time with 1, 50 and 1,000 servers read from a
   list file (``env={...}`` pointing at a temporary file), in WebSocket mode
   (every URL parsed, translated, deduplicated and fingerprinted), with a
   no-op audit logger and, separately, with the default structlog logger
   (its output sent to a throw-away stream).
2. Import time: a fresh ``python -c "import marsconn"`` against a bare
   ``python -c pass``, median of several runs each; plus ``import
   pydantic_settings`` alone, which marsconn's settings model cannot avoid,
   and ``import marsconn`` followed by a first ``resolve_plan`` (marsconn
   loads its plan side on first use, so that is where the libraries' import
   cost is paid).

``parse_server_url`` keeps the URLs of the common shape it parsed (a worker
reads the same list for every plan), so a process's first plan costs more:
the ``first in process`` column is the median with that cache emptied before
each call. For 1,000 servers the calls are also timed with the garbage collector on
and off (``gc.disable()``) in turn, call by call, and the collections that
ran during the calls with it on are counted (``gc.callbacks``): a call
allocates a few objects per server, which the collector then walks. Before
each block of calls the benchmark waits (up to a minute) for an idle
machine; the ``cpu`` column (``time.process_time``) shows how much of a
wall time was this process's own. Calls are timed in blocks of 40; a block
during which other processes used the CPUs for more than a fifth of its
wall time (``/proc/stat``) is measured again, and the count is printed.
Figures are printed with the targets (1,000 servers under 6 ms median;
importing marsconn adds under 150 ms), never asserted. Run from the repository root::

    .venv/bin/python benchmarks/bench_plan.py [--runs 200] [--import-runs 15]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

import marsconn
from marsconn.plan.endpoints import _parse_simple as parsed_urls

RESOLVE_TARGET_MS = 6.0  # median, for 1,000 servers
IMPORT_TARGET_MS = 150.0  # added by `import marsconn` over a bare interpreter
SIZES = (1, 50, 1000)


class NoAudit:
    """An audit logger that drops every event, so logging does not dominate."""

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


def write_list(directory: Path, count: int) -> Path:
    path = directory / f"servers-{count}.list"
    lines = ["# benchmark servers", ""]
    lines += [f"http://mars-worker-{i:04d}.internal:9000" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_idle(limit: float = 60.0) -> None:
    """Wait (at most ``limit`` s) until the machine has been idle for half a second.

    On a shared machine another process's work lands in wall times; CPU
    times (the ``cpu`` column) are far less affected.
    """
    if not os.path.exists("/proc/stat"):
        return

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        idle0, total0 = sample()
        time.sleep(0.5)
        idle1, total1 = sample()
        if (idle1 - idle0) / max(1, total1 - total0) >= 0.9:
            return


def median_ms(call: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and minimum wall time of ``call`` in milliseconds (after one warm-up)."""
    median, low, _ = timed_ms(call, runs)
    return median, low


def _machine_busy() -> float:
    """CPU seconds all CPUs have been busy since boot (/proc/stat, clock ticks); 0 elsewhere."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


#: Calls per block; a block during which other processes used more than
#: OTHERS_LIMIT of its wall time in CPU is measured again (at most 10 times).
BLOCK = 40
OTHERS_LIMIT = 0.2
REDONE: list[int] = [0]


def timed_ms(call: Callable[[], object], runs: int) -> tuple[float, float, float]:
    """Median and minimum wall time, and median CPU time, of ``call`` in milliseconds.

    Timed in blocks of ``BLOCK`` calls; a block during which the rest of
    the machine was busy (``/proc/stat``, ticks of 10 ms) is thrown away and
    measured again, so that another process's work does not land in the
    medians. ``REDONE`` counts those blocks.
    """
    call()
    times: list[float] = []
    cpu: list[float] = []
    while len(times) < runs:
        count = min(BLOCK, runs - len(times))
        for attempt in range(11):
            block_times, block_cpu = [], []
            busy0, wall0, own0 = _machine_busy(), time.perf_counter(), time.process_time()
            for _ in range(count):
                start, start_cpu = time.perf_counter(), time.process_time()
                call()
                block_times.append(time.perf_counter() - start)
                block_cpu.append(time.process_time() - start_cpu)
            others = (_machine_busy() - busy0) - (time.process_time() - own0)
            if others <= OTHERS_LIMIT * (time.perf_counter() - wall0) or attempt == 10:
                break
            REDONE[0] += 1
        times += block_times
        cpu += block_cpu
    return statistics.median(times) * 1000, min(times) * 1000, statistics.median(cpu) * 1000


def gc_effect(call: Callable[[], object], runs: int) -> dict[str, float]:
    """Calls with the collector on and off, in turn: medians, and collections per call.

    Alternating call by call, both halves see the same load from the rest
    of the machine.
    """
    counts = [0, 0, 0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts[info["generation"]] += 1

    on: list[float] = []
    off: list[float] = []
    call()
    while len(on) < runs:
        for attempt in range(11):
            block_on, block_off = [], []
            counted = list(counts)
            busy0, wall0, own0 = _machine_busy(), time.perf_counter(), time.process_time()
            for _ in range(min(BLOCK, runs - len(on))):
                gc.callbacks.append(count)
                start = time.perf_counter()
                call()
                block_on.append(time.perf_counter() - start)
                gc.callbacks.remove(count)
                gc.disable()
                try:
                    start = time.perf_counter()
                    call()
                    block_off.append(time.perf_counter() - start)
                finally:
                    gc.enable()
            others = (_machine_busy() - busy0) - (time.process_time() - own0)
            if others <= OTHERS_LIMIT * (time.perf_counter() - wall0) or attempt == 10:
                break
            counts[:] = counted
            REDONE[0] += 1
        on += block_on
        off += block_off
    return {
        "gen0": counts[0] / runs,
        "gen1": counts[1] / runs,
        "gen2": counts[2] / runs,
        "on_median": statistics.median(on) * 1000,
        "off_median": statistics.median(off) * 1000,
        "off_min": min(off) * 1000,
    }


def bench_resolve(runs: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        empty_yaml = directory / "empty.yaml"
        empty_yaml.write_text("")
        for count in SIZES:
            env = {
                "MARS_USE_SHARES": "true",
                "MARS_API_SERVER_LIST": str(write_list(directory, count)),
                "MARS_CONFIG_FILE": str(empty_yaml),
            }

            def quiet(env: dict[str, str] = env) -> object:
                return marsconn.resolve_plan(env=env, server_version="0.3.1", logger=NoAudit())

            def logged(env: dict[str, str] = env) -> object:
                return marsconn.resolve_plan(env=env, server_version="0.3.1")

            plan = marsconn.resolve_plan(env=env, server_version="0.3.1", logger=NoAudit())
            if len(plan.endpoints) != count:  # a broken benchmark, not a timing check
                raise SystemExit(f"expected {count} endpoints, got {len(plan.endpoints)}")

            def cold(env: dict[str, str] = env) -> object:
                # As the first plan in a process: no URL parsed yet.
                parsed_urls.cache_clear()
                return marsconn.resolve_plan(env=env, server_version="0.3.1", logger=NoAudit())

            wait_for_idle()
            quiet_median, quiet_min, quiet_cpu = timed_ms(quiet, runs)
            logged_median, _ = median_ms(logged, runs)
            cold_median, _ = median_ms(cold, runs)
            results[count] = {
                "median": quiet_median,
                "min": quiet_min,
                "cpu": quiet_cpu,
                "logged": logged_median,
                "cold": cold_median,
            }
            if count == SIZES[-1]:
                wait_for_idle()
                results[count].update(gc_effect(quiet, runs))
    return results


def import_ms(code: str, runs: int) -> float:
    """Median wall time of a fresh interpreter running ``code``, in milliseconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1000  # the first run warms the disk cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="resolutions per size")
    parser.add_argument("--import-runs", type=int, default=15, help="interpreter starts each")
    args = parser.parse_args(argv)

    # The default-logger variant goes through structlog; send it to a discarded stream.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
    python = f"python {platform.python_version()} on {platform.machine()}"
    print(f"{python}, marsconn {marsconn.__version__}")
    print()
    print("resolve_plan, WebSocket mode, servers from a list file (ms per call)")
    print(
        f"{'servers':>8} {'median':>9} {'min':>9} {'cpu':>9} {'w/ structlog':>13} "
        f"{'first in process':>17}"
    )
    gc.collect()
    resolved = bench_resolve(args.runs)
    for count, r in resolved.items():
        print(
            f"{count:>8} {r['median']:>9.3f} {r['min']:>9.3f} {r['cpu']:>9.3f} "
            f"{r['logged']:>13.3f} {r['cold']:>17.3f}"
        )
    r = resolved[SIZES[-1]]
    big = r["median"]
    print(
        f"1,000 servers, calls with the garbage collector on and off in turn: median "
        f"{r['on_median']:.3f} ms on, {r['off_median']:.3f} ms off (min {r['off_min']:.3f}); "
        f"collections per call: gen0 {r['gen0']:.2f}, gen1 {r['gen1']:.2f}, "
        f"gen2 {r['gen2']:.3f}"
    )
    verdict = "meets" if big < RESOLVE_TARGET_MS else "MISSES"
    print(
        f"1,000 servers: {big:.2f} ms, {big / RESOLVE_TARGET_MS:.0%} of the "
        f"{RESOLVE_TARGET_MS:g} ms target ({verdict} it); blocks of {BLOCK} calls measured "
        f"again because other processes were busy: {REDONE[0]}"
    )
    print()

    print(f"import time (fresh interpreter, median of {args.import_runs} runs, ms)")
    bare = import_ms("pass", args.import_runs)
    settings_lib = import_ms("import pydantic_settings", args.import_runs)
    ours = import_ms("import marsconn", args.import_runs)
    first_use = import_ms(
        "import marsconn; marsconn.resolve_plan(env={}, overrides={'servers': ['mars-1']},"
        " logger=type('Q', (), {'info': lambda *a, **k: None,"
        " 'warning': lambda *a, **k: None})())",
        args.import_runs,
    )
    added = ours - bare
    for label, value in (
        ("python -c pass", bare),
        ('python -c "import pydantic_settings"', settings_lib),
        ('python -c "import marsconn"', ours),
        ("import marsconn + first resolve_plan", first_use),
    ):
        print(f"{label:<38} {value:>8.1f}")
    verdict = "meets" if added < IMPORT_TARGET_MS else "MISSES"
    print(
        f"import marsconn adds {added:.1f} ms, {added / IMPORT_TARGET_MS:.0%} of the "
        f"{IMPORT_TARGET_MS:g} ms target ({verdict} it); "
        f"pydantic_settings alone adds {settings_lib - bare:.1f} ms"
    )
    print(
        f"import marsconn + first resolve_plan adds {first_use - bare:.1f} ms "
        "(the plan side, pydantic-settings included, loads on first use)"
    )


if __name__ == "__main__":
    main()
