"""Import marsconn and resolve a first plan, as a ratio to ``import pydantic_settings`` alone.

marsconn's settings are a pydantic-settings model, so a process that
resolves a plan always pays for importing pydantic-settings; what marsconn
adds on top is what this benchmark judges. Two programs run in fresh
interpreters, alternating (A B, B A, A B, ...) so that a busy machine slows
both alike:

- baseline: ``import pydantic_settings``
- marsconn: ``import marsconn`` and one ``resolve_plan`` of a one-server
  adaptor config with ``env={}``, its audit event dropped by
  ``marsconn.core.audit.NullAuditLogger`` (what the import target is about);
- marsconn + structlog: the same through the default audit logger
  (``structlog.get_logger``, output discarded), which adds importing
  structlog (a worker that logs with structlog has paid that already).

The figure is the ratio of the medians, each program to the baseline
(target: at most 1.1 for the first). With
``--importtime`` it also prints, from ``python -X importtime``, the modules
the marsconn program imports beyond the baseline's, with their own times.

Run from the repository root::

    .venv/bin/python benchmarks/bench_import.py [--runs 41] [--importtime]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 1.1
BASELINE = "import pydantic_settings"
FIRST_PLAN = (
    "import marsconn\n"
    "from marsconn.core.audit import NullAuditLogger\n"
    "marsconn.resolve_plan({'mars_servers': ['http://mars-1:9000']}, env={},"
    " logger=NullAuditLogger())\n"
)
FIRST_PLAN_STRUCTLOG = (
    "import marsconn\nmarsconn.resolve_plan({'mars_servers': ['http://mars-1:9000']}, env={})\n"
)
PROGRAMS = {
    "import pydantic_settings": BASELINE,
    "marsconn: import + first plan": FIRST_PLAN,
    "marsconn + structlog: import + first plan": FIRST_PLAN_STRUCTLOG,
}


def _env() -> dict[str, str]:
    # No PYTHON* variables (PYTHONDONTWRITEBYTECODE etc. change what is measured).
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def wall_ms(code: str) -> tuple[float, float]:
    """Wall and CPU (user + system) time of one fresh interpreter running ``code``, in ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} exited with {proc.returncode}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def alternate(runs: int) -> dict[str, list[tuple[float, float]]]:
    """``runs`` timings of each program, in rotating order, after one warm-up each."""
    names = list(PROGRAMS)
    for code in PROGRAMS.values():
        wall_ms(code)  # also writes any missing bytecode cache
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            times[name].append(wall_ms(PROGRAMS[name]))
    return times


def importtime(code: str) -> dict[str, int]:
    """Each module's own import time in microseconds, from ``python -X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    )
    out: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        out[name.strip()] = int(own)
    return out


def extra_modules(rounds: int = 5) -> list[tuple[str, float]]:
    """Modules imported by the marsconn program but not by the baseline, median own ms."""
    base = set(importtime(BASELINE))
    samples: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, own in importtime(FIRST_PLAN).items():
            if name not in base:
                samples.setdefault(name, []).append(own)
    rows = [(name, statistics.median(v) / 1000) for name, v in samples.items()]
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41, help="interpreter starts per program")
    parser.add_argument(
        "--importtime", action="store_true", help="also list the modules marsconn adds"
    )
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()}, {args.runs} runs each")
    times = alternate(args.runs)
    ratios = {}
    for kind, index in (("wall", 0), ("CPU", 1)):
        base = statistics.median(t[index] for t in times["import pydantic_settings"])
        print(f"  {kind + ' time (ms)':<44} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}")
        for label, pairs in times.items():
            values = [t[index] for t in pairs]
            median = statistics.median(values)
            ratios[label, kind] = median / base
            print(
                f"  {label:<44} {median:8.1f} {min(values):8.1f} {max(values):8.1f} "
                f"{median / base:7.3f}"
            )
    ratio = ratios["marsconn: import + first plan", "wall"]
    print(
        f"  ratio of medians, marsconn to baseline: wall {ratio:.3f}, "
        f"CPU {ratios['marsconn: import + first plan', 'CPU']:.3f}"
    )
    if args.importtime:
        rows = extra_modules()
        total = sum(ms for _, ms in rows)
        print(f"modules beyond the baseline's: {len(rows)}, {total:.1f} ms of own import time")
        for name, ms in rows[:25]:
            print(f"  {ms:7.2f}  {name}")
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    print(
        f"target: import + first plan <= {TARGET_RATIO}x import pydantic_settings (wall, "
        f"ratio of medians) -> {verdict} ({ratio:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
