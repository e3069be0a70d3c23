"""Pipe-mode client memory: many concurrent small jobs, and one large transfer's CPU.

1. ``--jobs`` (1,000) small retrievals at once in one event loop
   (``asyncio.gather`` of ``marsconn.execute_async``), against a
   ``PipeMarsServer`` in its own process whose MARS waits ``--hold`` seconds
   (2) before answering, so that every connection is open at the same time.
   1 KiB of output and two log lines each, every job its own target file.
   Reported: the client's RSS before, its peak while they run (``VmHWM``,
   reset first through ``/proc/self/clear_refs``) and its RSS once all are
   done and garbage collected; every output is checked byte for byte.
2. One ``--size`` (1 GiB) retrieval in 64 KiB chunks from the same server,
   in a fresh client process each time, alternating for ``--rounds`` rounds
   with the minimal blocking loop of ``benchmarks/_pipeloop.py`` (the limit):
   client CPU per GiB of each, marsconn's peak RSS growth over the transfer.
   As in ``bench_pipe_real.py``, each client first runs one small retrieval,
   then touches and frees 1.1 times ``--size`` of memory (so that the output
   file gets host-backed pages on this VM), and is pinned to CPU 0 with the
   server on the other CPUs (``--no-pin`` turns that off).

``--before DIR`` measures, beside this checkout, the marsconn found in
``DIR`` (``DIR/marsconn``), e.g. an export of an earlier commit
(``git archive <commit> marsconn | tar -x -C DIR``): both parts run for it
too, the large transfers in turn with the others, and the ratio of the
two marsconns' CPU per GiB shows whether the large transfer kept its cost.
A large-transfer measurement during which other processes ran on the
client's CPU for more than 5 % of its wall time is taken again (up to 3
times). Nothing is asserted; targets are printed. Run from the repository
root::

    .venv/bin/python benchmarks/bench_pipe_memory.py [--jobs 1000] [--size 1GiB] [--rounds 8]
        [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _measure import cpu_busy, file_sha256, marsconn_parts, parse_size, touch_memory

HERE = Path(__file__).resolve().parent
RSS_TARGET_MB = 300.0
# What may stay after the jobs: the process-wide pools (fsync threads, their
# malloc arenas) and interpreter caches, about +12 MB and not growing with
# more bursts; a tenth of the peak target.
AFTER_TARGET_MB = 30.0
SMALL = 1024
CHUNK = 64 * 1024


def environ() -> dict[str, str]:
    return {
        "request_id": str(uuid.uuid4()),
        "user_id": "00000000-0000-4000-8000-000000000001",
        "namespace": "bench",
        "host": "bench-1",
        "username": "bench:000000000001",
    }


# --- the server process -----------------------------------------------------------------------


def serve(hold: float, size: int) -> None:
    """A PipeMarsServer until stdin closes: ``{"size": "big"}`` jobs stream ``size`` bytes."""
    from marsconn.testing import MarsScript, PipeMarsServer

    lines = ("mars - INFO - Transferring 1 field", "mars - INFO - done")
    small = MarsScript(output_size=SMALL, run_time=hold, log_lines=lines)
    big = MarsScript(output_size=size, chunk_size=CHUNK, log_lines=lines)
    warm = MarsScript(output_size=SMALL, log_lines=lines)

    def script(requests: list[dict[str, Any]]) -> MarsScript:
        kind = requests[0].get("size")
        return big if kind == "big" else warm if kind == "warm" else small

    async def main() -> None:
        async with PipeMarsServer(script) as server:
            print(server.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


# --- the client processes ---------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _plan(port: int) -> Any:
    import marsconn

    NullAuditLogger, _ = marsconn_parts()

    return marsconn.resolve_plan(
        env={},
        overrides={
            "servers": [f"http://127.0.0.1:{port}"],
            "max_retries": 1,
            "retry_delay": 0,
            "connect_timeout": 60,
            "read_timeout": 120,
        },
        logger=NullAuditLogger(),
    )


def _execute(plan: Any, request: dict[str, str], target: Path) -> Any:
    import marsconn

    NullAuditLogger, ServerHealth = marsconn_parts()

    return marsconn.execute(
        plan, request, environ(), target, health=ServerHealth(), audit_logger=NullAuditLogger()
    )


def client_many(port: int, jobs: int, workdir: Path) -> dict[str, Any]:
    import marsconn

    NullAuditLogger, ServerHealth = marsconn_parts()

    plan = _plan(port)
    warm = _execute(plan, {"param": "2t", "size": "warm"}, workdir / "warm.grib")
    if not warm.ok:
        raise RuntimeError(f"warm-up failed: {warm.error}")
    health = ServerHealth()
    audit = NullAuditLogger()

    async def run_all() -> list[Any]:
        return await asyncio.gather(
            *(
                marsconn.execute_async(
                    plan,
                    {"param": "2t"},
                    environ(),
                    workdir / f"job-{i:04d}.grib",
                    health=health,
                    audit_logger=audit,
                )
                for i in range(jobs)
            )
        )

    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    cpu = time.process_time()
    results = asyncio.run(run_all())
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    del results[:]  # what callers keep of a job is its Result; drop them all
    gc.collect()
    after = _status_kib("VmRSS")
    return {"before": before, "peak": peak, "after": after, "seconds": seconds, "cpu": cpu}


def client_big(kind: str, port: int, size: int, target: Path, pin: bool) -> dict[str, Any]:
    if kind == "marsconn":
        plan = _plan(port)
        warm = _execute(plan, {"param": "2t", "size": "warm"}, target.with_suffix(".warm"))
        if not warm.ok:
            raise RuntimeError(f"warm-up failed: {warm.error}")

        def run() -> None:
            result = _execute(plan, {"param": "2t", "size": "big"}, target)
            if not result.ok:
                raise RuntimeError(f"marsconn failed: {result.error}")

    else:
        from _pipeloop import limit_retrieve

        with contextlib.redirect_stdout(io.StringIO()):
            limit_retrieve("127.0.0.1", port, {"size": "warm"}, environ(), str(target))

        def run() -> None:
            limit_retrieve("127.0.0.1", port, {"size": "big"}, environ(), str(target))

    touch_memory(int(size * 1.1))
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    busy = cpu_busy(0) if pin else 0.0
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    return {
        "kind": kind,
        "seconds": seconds,
        "cpu": cpu,
        # Pinned, this client is alone on CPU 0 unless something else ran there.
        "others": max(0.0, cpu_busy(0) - busy - cpu) if pin else 0.0,
        "before": before,
        "peak": _status_kib("VmHWM"),
    }


# --- the driver -------------------------------------------------------------------------------


def _client(
    args: argparse.Namespace, kind: str, target: Path, role: str | None = None
) -> dict[str, Any]:
    env = dict(os.environ)
    paths = [str(HERE), env.get("PYTHONPATH", "")]
    if kind == "before":
        paths.insert(0, str(Path(args.before).resolve()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    role = role or ("marsconn" if kind == "before" else kind)
    command = [sys.executable, __file__, "--port", str(args.port), "--size", str(args.size_bytes)]
    command += ["--jobs", str(args.jobs), "--client", role, "--target", str(target)]
    if args.no_pin:
        command.append("--no-pin")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} client failed:\n{done.stdout}\n{done.stderr}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def _many(args: argparse.Namespace, kind: str, work: Path) -> None:
    from marsconn.testing import expected_data

    many = work / f"many-{kind}"
    many.mkdir()
    record = _client(args, kind, many, role="many")
    want = expected_data(SMALL)
    exact = sum(1 for p in sorted(many.glob("job-*.grib")) if p.read_bytes() == want)
    shutil.rmtree(many)
    mb = {k: record[k] / 1024 for k in ("before", "peak", "after")}
    print(
        f"  {kind:8s} RSS before {mb['before']:.1f} MB, peak {mb['peak']:.1f} MB "
        f"(+{mb['peak'] - mb['before']:.1f}), after {mb['after']:.1f} MB "
        f"(+{mb['after'] - mb['before']:.1f}); {record['seconds']:.2f} s, "
        f"client CPU {record['cpu'] / args.jobs * 1000:.2f} ms/job; "
        f"{exact} of {args.jobs} outputs exact"
    )
    if kind == "marsconn":
        args.many = mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="concurrent small jobs")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds MARS takes per small job")
    parser.add_argument("--size", default="1GiB", help="bytes of the large transfer")
    parser.add_argument("--rounds", type=int, default=8, help="large transfers of each client")
    parser.add_argument("--dir", default="/dev/shm", help="where the outputs go")
    parser.add_argument("--before", help="also measure the marsconn in this directory")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("many", "marsconn", "limit"), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size_bytes = parse_size(args.size)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if args.serve:
        serve(args.hold, args.size_bytes)
        return
    if args.client:
        if pin:
            os.sched_setaffinity(0, {0})
        if args.client == "many":
            record = client_many(args.port, args.jobs, args.target)
        else:
            record = client_big(args.client, args.port, args.size_bytes, args.target, pin)
        print(json.dumps(record))
        return

    from marsconn.testing import iter_data

    work = Path(tempfile.mkdtemp(prefix="bench-pipe-memory-", dir=args.dir))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--hold", str(args.hold), "--size", args.size],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        args.port = int(server.stdout.readline())
        if pin:
            os.sched_setaffinity(server.pid, set(os.sched_getaffinity(0) - {0}))
        print(
            f"PipeMarsServer in its own process; outputs in {args.dir}"
            + (f"; 'before' is the marsconn in {args.before}" if args.before else "")
        )
        print(
            f"\n{args.jobs} concurrent small jobs ({SMALL} bytes and 2 log lines each, "
            f"all open at once for {args.hold:g} s):"
        )
        for kind in ["marsconn", "before"] if args.before else ["marsconn"]:
            _many(args, kind, work)

        digest = hashlib.sha256()
        for piece in iter_data(args.size_bytes, 0, 1 << 20):
            digest.update(piece)
        want_big = digest.hexdigest()
        kinds = ["marsconn", "limit", *(["before"] if args.before else [])]
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        print(
            f"\none {args.size_bytes / 2**30:g} GiB transfer in {CHUNK // 1024} KiB chunks, "
            "the clients in turn:"
        )
        for number in range(args.rounds):
            shift = number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                target = work / f"{kind}.grib"
                for attempt in range(4):
                    rec = _client(args, kind, target)
                    if target.stat().st_size != args.size_bytes or file_sha256(target) != want_big:
                        raise SystemExit(f"{kind}: the output is wrong")
                    target.unlink()
                    # Other processes on the client's CPU: measured again, at most 3 times.
                    if rec["others"] <= max(0.03, 0.05 * rec["seconds"]) or attempt == 3:
                        break
                rec["cpu_gib"] = rec["cpu"] / (args.size_bytes / 2**30)
                rec["growth"] = (rec["peak"] - rec["before"]) / 1024
                runs[kind].append(rec)
                print(
                    f"  round {number + 1} {kind:8s} CPU {rec['cpu_gib']:.3f} s/GiB  "
                    f"wall {rec['seconds']:.2f} s  peak RSS growth {rec['growth']:.1f} MB"
                    + (f"  (measured {attempt + 1} times: CPU 0 was shared)" if attempt else "")
                )
        med = statistics.median
        cpu = {k: [r["cpu_gib"] for r in v] for k, v in runs.items()}
        for kind in kinds:
            growth = max(r["growth"] for r in runs[kind])
            print(
                f"  {kind:8s} CPU median {med(cpu[kind]):.3f} s/GiB "
                f"[{min(cpu[kind]):.3f}-{max(cpu[kind]):.3f}], peak RSS growth at most "
                f"{growth:.1f} MB"
            )

        def ratio(a: str, b: str) -> list[float]:
            return [x / y for x, y in zip(cpu[a], cpu[b], strict=True)]

        pairs = [
            ("marsconn", "limit"),
            *([("before", "limit"), ("marsconn", "before")] if args.before else []),
        ]
        for a, b in pairs:
            values = ratio(a, b)
            print(
                f"  {a}/{b} CPU per GiB: median {med(values):.3f} "
                f"[{min(values):.3f}-{max(values):.3f}] over {len(values)} rounds"
            )
        peak = args.many["peak"]
        print(
            f"target: peak RSS of {args.jobs} concurrent small jobs < {RSS_TARGET_MB:g} MB -> "
            f"{'met' if peak < RSS_TARGET_MB else 'missed'} ({peak:.1f} MB)"
        )
        after = args.many["after"] - args.many["before"]
        print(
            f"target: RSS after them freed, back within {AFTER_TARGET_MB:g} MB of the start -> "
            f"{'met' if after < AFTER_TARGET_MB else 'missed'} (+{after:.1f} MB)"
        )
        if args.before:
            keeps = med(ratio("marsconn", "before"))
            print(
                f"target: 1 GiB transfer keeps its CPU per GiB (marsconn/before <= 1.05) -> "
                f"{'met' if keeps <= 1.05 else 'missed'} ({keeps:.3f})"
            )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
