"""Pipe-mode throughput and memory: marsconn against a plain socket reader.

Streams ``--size`` bytes (default 1 GiB) from the in-process
:class:`~marsconn.testing.PipeMarsServer` (1 MiB chunks) to a file through
``marsconn.execute``, and, in the same run, the same bytes from the same
server read off a plain blocking socket and written to a file with no
protocol work at all: the limit. Two more reference readers show what the
obvious alternatives cost: asyncio streams with no protocol work, and
asyncio streams with h11 decoding the chunked body.

The server runs in its own process: the machine has 2 cores, so server and
client each get one, and the server's Python work is neither charged to the
client nor contending with it for one GIL (a thread would do both).

Each measurement runs in a fresh client process, so its peak RSS
(``ru_maxrss``) belongs to that transfer alone; the growth is the peak
minus the RSS measured after imports and set-up. Every reader ends with
fsync, since marsconn fsyncs before renaming onto the target; with
``--dir /dev/shm`` the disk leaves the picture and only CPU work remains.

Usage: ``.venv/bin/python benchmarks/bench_pipe.py [--size 1GiB] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024  # also the hashing block for --verify
READ = 1024 * 1024
ENVIRON = {
    "request_id": "00000000-0000-4000-8000-00000000b0b0",
    "user_id": "00000000-0000-4000-8000-000000000001",
    "namespace": "bench",
    "host": "bench",
    "username": "bench:000000000001",
}
JOB = json.dumps({"request": {"param": "2t"}, "environ": ENVIRON}).encode()
VARIANTS = ("socket", "marsconn", "streams", "h11")
_STATS: dict[str, float] = {}


def parse_size(text: str) -> int:
    """``1GiB``, ``512MiB``, ``64k`` or a plain number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    if raw and raw[-1] in units:
        return int(float(raw[:-1]) * units[raw[-1]])
    return int(raw)


# --- the server process -----------------------------------------------------------------------


def serve(size: int, chunk_size: int) -> None:
    """Run a PipeMarsServer until stdin closes; print its port first."""
    from marsconn.testing import MarsScript, PipeMarsServer

    async def main() -> None:
        script = MarsScript(
            output_size=size,
            chunk_size=chunk_size,
            log_lines=("mars - INFO - Transferring 1 field", "mars - INFO - done"),
        )
        async with PipeMarsServer(script) as server:
            print(server.port, flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


# --- the client processes ---------------------------------------------------------------------


def _post_head(port: int) -> bytes:
    return (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(JOB)}\r\n\r\n"
    ).encode() + JOB


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def client_socket(port: int, target: Path) -> int:
    """The limit: recv_into one 1 MiB buffer, write what came; no parsing at all."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_post_head(port))
    buf = bytearray(READ)
    view = memoryview(buf)
    total = reads = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            _write_all(fd, view[:n])
            total += n
            reads += 1
        _STATS["mean_read_kib"] = total / max(reads, 1) / 1024
        os.fsync(fd)
    finally:
        os.close(fd)
        sock.close()
    return total


async def client_streams(port: int, target: Path) -> int:
    """asyncio streams, no parsing: what StreamReader's copies cost."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ)
    writer.write(_post_head(port))
    total = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while data := await reader.read(READ):
            _write_all(fd, memoryview(data))
            total += len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
        writer.close()
    return total


async def client_h11(port: int, target: Path) -> int:
    """asyncio streams and h11 decoding the chunked body (data bytes only)."""
    import h11

    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target="/",
        headers=[("Host", "127.0.0.1"), ("Content-Length", str(len(JOB)))],
    )
    writer.write(
        conn.send(request) + conn.send(h11.Data(data=JOB)) + conn.send(h11.EndOfMessage())
    )
    total = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ))
            elif isinstance(event, h11.Data):
                _write_all(fd, memoryview(event.data))
                total += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        os.fsync(fd)
    finally:
        os.close(fd)
        writer.close()
    return total


def marsconn_plan(port: int) -> Any:
    """The plan is resolved once per process in real use, so outside the timed part."""
    import marsconn
    from marsconn.core.audit import NullAuditLogger

    return marsconn.resolve_plan(
        env={},
        overrides={"servers": [f"http://127.0.0.1:{port}"], "max_retries": 1, "retry_delay": 0},
        logger=NullAuditLogger(),
    )


def client_marsconn(plan: Any, target: Path) -> tuple[int, dict[str, Any]]:
    """The real thing: marsconn.execute over the pipe protocol."""
    import marsconn
    from marsconn.core.audit import NullAuditLogger
    from marsconn.run.health import ServerHealth

    result = marsconn.execute(
        plan,
        {"param": "2t"},
        ENVIRON,
        target,
        health=ServerHealth(),
        audit_logger=NullAuditLogger(),
    )
    if not result.ok:
        raise RuntimeError(f"marsconn failed: {result.error}")
    return result.bytes, {"attempts": len(result.attempts)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (threads included, e.g. fsync's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def client_main(variant: str, port: int, target: Path) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    # Imported before the RSS baseline, so the growth measures the transfer alone.
    for name in ("h11", "marsconn.run.engine", "marsconn.run.pipe_transport", "marsconn.testing"):
        importlib.import_module(name)

    plan = marsconn_plan(port) if variant == "marsconn" else None
    rss_before = _rss_kib()
    extra: dict[str, Any] = {}
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    if variant == "socket":
        nbytes = client_socket(port, target)
    elif variant == "streams":
        nbytes = asyncio.run(client_streams(port, target))
    elif variant == "h11":
        nbytes = asyncio.run(client_h11(port, target))
    else:
        nbytes, extra = client_marsconn(plan, target)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "variant": variant,
                "bytes": nbytes,
                "file_bytes": target.stat().st_size,
                "seconds": seconds,
                "cpu_seconds": cpu,
                **_STATS,
                "rss_before_kib": rss_before,
                "rss_peak_kib": peak,
                **extra,
            }
        )
    )


# --- the driver -------------------------------------------------------------------------------


def expected_sha256(size: int) -> str:
    from marsconn.testing import iter_data

    digest = hashlib.sha256()
    for piece in iter_data(size, chunk_size=CHUNK):
        digest.update(piece)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def run_client(variant: str, port: int, target: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", variant, "--port", str(port), "--target", target],
        check=True,
        capture_output=True,
        text=True,
    )
    line: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="bytes to stream (default 1GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per reader")
    parser.add_argument("--chunk-size", default="1MiB", help="server chunk size (default 1MiB)")
    parser.add_argument("--dir", help="directory for the output files (default: a temp dir)")
    parser.add_argument("--verify", action="store_true", help="check marsconn's output sha256")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="readers to measure")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = parse_size(args.size)
    chunk_size = parse_size(args.chunk_size)
    if args.serve:
        serve(size, chunk_size)
        return
    if args.client:
        client_main(args.client, args.port, args.target)
        return

    variants = [v for v in args.variants.split(",") if v]
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipe-", dir=args.dir))
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--size",
            str(size),
            "--chunk-size",
            str(chunk_size),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(
            f"streaming {size / 2**20:.0f} MiB in {chunk_size // 1024} KiB chunks from a "
            f"PipeMarsServer process; output in {workdir}; {os.cpu_count()} CPUs"
        )
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for round_number in range(1, args.rounds + 1):
            # Rotate the order: each reader follows a different one every round, so
            # effects of the previous run (writeback, discard of a deleted 1 GiB
            # file) do not always land on the same reader.
            shift = (round_number - 1) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                target = workdir / f"{variant}.out"
                record = run_client(variant, port, target)
                if variant == "marsconn":
                    if record["file_bytes"] != size:
                        raise SystemExit(f"marsconn wrote {record['file_bytes']} of {size} bytes")
                    if args.verify and round_number == 1:
                        ok = file_sha256(target) == expected_sha256(size)
                        print(f"  marsconn output sha256 {'matches' if ok else 'DIFFERS'}")
                        if not ok:
                            raise SystemExit(1)
                target.unlink()
                results[variant].append(record)
                mbps = record["bytes"] / record["seconds"] / 1e6
                growth = (record["rss_peak_kib"] - record["rss_before_kib"]) / 1024
                peak = record["rss_peak_kib"] / 1024
                reads = record.get("mean_read_kib")
                print(
                    f"  round {round_number} {variant:9s} {mbps:7.0f} MB/s "
                    f"{record['seconds']:6.2f} s  CPU {record['cpu_seconds']:5.2f} s  "
                    f"peak RSS {peak:5.1f} MB (+{growth:.1f} MB)"
                    + (f"  mean recv {reads:.0f} KiB" if reads else "")
                )
        print("\nmedian (best) throughput, median client CPU per GiB, peak RSS growth:")
        median: dict[str, float] = {}
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for variant in variants:
            rates = [r["bytes"] / r["seconds"] / 1e6 for r in results[variant]]
            cpu[variant] = statistics.median(
                r["cpu_seconds"] / (r["bytes"] / 2**30) for r in results[variant]
            )
            growth = max(
                (r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in results[variant]
            )
            peak = max(r["rss_peak_kib"] / 1024 for r in results[variant])
            median[variant], best[variant] = statistics.median(rates), max(rates)
            print(
                f"  {variant:9s} {median[variant]:7.0f} MB/s ({best[variant]:.0f})  "
                f"CPU {cpu[variant]:.2f} s/GiB  RSS +{growth:.1f} MB (peak {peak:.1f} MB)"
            )
        if "socket" in median and "marsconn" in median:
            growth = max(
                (r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in results["marsconn"]
            )
            by_median = median["marsconn"] / median["socket"]
            by_best = best["marsconn"] / best["socket"]
            print(
                f"\nmarsconn / plain socket throughput: median {by_median:.1%}, "
                f"best {by_best:.1%} (target >= 85%)\n"
                f"client CPU per GiB, marsconn / plain socket: "
                f"{cpu['marsconn'] / cpu['socket']:.2f}x\n"
                f"marsconn peak RSS growth {growth:.1f} MB (target < 64 MB)"
            )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
