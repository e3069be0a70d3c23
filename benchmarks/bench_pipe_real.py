"""Pipe mode through the REAL cads-mars-server: marsconn, the server's own client, and the limit.

Starts cads-mars-server's pipe server (``../shared/peers``, launched as the
real-server tests launch it, see ``tests/real/peers.py``) with the project's
stand-in MARS, which writes the HTTP chunked framing itself in 64 KiB chunks,
as MARS does behind the real server. Then it runs rounds of ``--size``-byte
retrievals (default 300 MB) into ``--dir`` (default ``/dev/shm``, so that
the disk is out of the picture), each round the same job through three
clients, each in a fresh child process:

- ``peer``: cads-mars-server's own ``client.RemoteMarsClientCluster``
  (requests and urllib3: ``read_chunked`` and ``write`` per 64 KiB chunk);
- ``marsconn``: ``marsconn.execute`` (ping, POST, decoding, MARS's log
  fetched and deleted, fsync and rename);
- ``limit``: a minimal blocking loop (``benchmarks/_pipeloop.py``):
  ``recv_into`` one 256 KiB buffer (of 64 KiB, 256 KiB and 1 MiB, the size
  that did best), the chunk framing parsed in place, one ``writev`` per
  read, then the log fetched and deleted.

Peer and marsconn alternate which goes first; the limit takes every place
in turn. ``--before DIR`` adds a fourth client, the marsconn found in
``DIR`` (e.g. ``git archive <commit> marsconn | tar -x -C DIR``), so that a
change is measured against what it replaced in the same run. ``--variants``
adds the limit loop with one thing changed (``_pipeloop.VARIANTS``: 64 KiB
or 1 MiB reads, a fixed 4 MiB ``SO_RCVBUF``, ``splice`` for the data),
each taking every place after the others in turn, to see whether any of
them would lower the floor. Client CPU is
the child's own user + system time (``getrusage(RUSAGE_SELF)``) over the
retrieval alone. Before it, each child
pins itself to CPU 0 (the server, its forked handlers and MARS are pinned to
the other CPUs; ``--no-pin`` turns this off), runs one 1 KiB retrieval
(imports and first-use set-up, as in a worker that has run jobs before),
and touches and frees 1.1 times ``--size`` of memory. That last step is
there because this machine is a VM whose hypervisor takes freed guest
memory back (free page reporting): the first write to such a page costs a
host fault, up to 2 s of CPU per GB more at random, which would swamp every
difference between clients; touched just before, the pages the output file
gets are backed. Every output is checked byte for byte (sha256 against
``marsconn.testing.iter_data``). Before each measurement the driver waits
(up to ``--idle-wait`` seconds) until the machine has been idle for half a
second, and a measurement during which other processes ran on the
client's CPU for more than 5 % of its wall time (``/proc/stat``) is taken
again, up to 3 times (the lines say so), so that other work on a shared
machine does not land in one client's figures. What that cannot see (the
host faulting a page in, another guest's load) still lands in single
measurements now and then, at up to 4 times the usual CPU, so each round
runs its order ``--best-of`` times (default 2) and takes each client's
cheapest pass: interference only ever adds CPU.

Prints every measurement, then per client the median and the spread (min -
max) over the rounds of CPU per GB (with its user and system parts) and
wall time, and the median CPU of a 1 KiB job (five of them after the
warm-up, in each child: what a job costs apart from its data); then the
ratios with their per-round spread: peer/marsconn client CPU (target >=
1.1), marsconn/peer speed (target >= 0.95), marsconn/limit CPU (target <=
1.10). Nothing is asserted.
Run from the repository root::

    .venv/bin/python benchmarks/bench_pipe_real.py [--pairs 12] [--size 300MB]
"""

from __future__ import annotations

import argparse
import contextlib
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

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
KINDS = ("peer", "marsconn", "limit")
#: With --before: an earlier marsconn, measured in turn with the others.
BEFORE = "before"
#: With --variants: the limit loop with one thing changed (_pipeloop.VARIANTS), e.g. limit:splice.
VARIANT = "limit:"
WARM_UP_SIZE = 1024
#: 1 KiB retrievals after the warm-up, for each client's CPU per job apart from its data.
SMALL_JOBS = 5


def environ(request_id: str) -> dict[str, str]:
    return {
        "request_id": request_id,
        "user_id": "00000000-0000-4000-8000-000000000001",
        "namespace": "bench",
        "host": "bench-1",
        "username": "bench:000000000001",
    }


def job(size: int, seed: int) -> dict[str, str]:
    return {"param": "2t", "fakesize": str(size), "fakeseed": str(seed), "fakelines": "3"}


# --- the client processes ---------------------------------------------------------------------


def _runner(kind: str, url: str) -> Any:
    """A function retrieving (request, environ, target) with the client ``kind``."""
    if kind == "peer":
        from cads_mars_server.client import RemoteMarsClientCluster

        def peer(request: dict[str, str], env: dict[str, str], target: str) -> None:
            reply = RemoteMarsClientCluster([url], retries=1, delay=0).execute(
                request, env, target
            )
            if reply.error:
                raise RuntimeError(f"the peer client failed: {reply.error}")

        return peer
    if kind == "marsconn":
        import marsconn

        NullAuditLogger, ServerHealth = marsconn_parts()

        plan = marsconn.resolve_plan(
            env={},
            overrides={"servers": [url], "max_retries": 1, "retry_delay": 0},
            logger=NullAuditLogger(),
        )

        def ours(request: dict[str, str], env: dict[str, str], target: str) -> None:
            result = marsconn.execute(
                plan, request, env, target, health=ServerHealth(), audit_logger=NullAuditLogger()
            )
            if not result.ok:
                raise RuntimeError(f"marsconn failed: {result.error}")

        return ours
    if kind == "limit" or kind.startswith(VARIANT):
        from _pipeloop import VARIANTS, limit_retrieve

        host, _, port = url.removeprefix("http://").partition(":")
        loop = VARIANTS[kind.removeprefix(VARIANT)] if kind != "limit" else limit_retrieve

        def minimal(request: dict[str, str], env: dict[str, str], target: str) -> None:
            loop(host, int(port), request, env, target)

        return minimal
    raise SystemExit(f"unknown client {kind!r}")


def client_main(kind: str, url: str, target: str, size: int, seed: int, pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {0})
    retrieve = _runner(kind, url)
    warm = target + ".warm-up"
    with contextlib.redirect_stdout(io.StringIO()):
        retrieve(job(WARM_UP_SIZE, seed), environ(str(uuid.uuid4())), warm)
        # The cost of a job apart from its data: a few more 1 KiB retrievals.
        small = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(SMALL_JOBS):
            retrieve(job(WARM_UP_SIZE, seed), environ(str(uuid.uuid4())), warm)
        after_small = resource.getrusage(resource.RUSAGE_SELF)
    os.unlink(warm)
    per_job = (
        after_small.ru_utime + after_small.ru_stime - small.ru_utime - small.ru_stime
    ) / SMALL_JOBS
    touch_memory(int(size * 1.1))
    request, env = job(size, seed), environ(str(uuid.uuid4()))
    busy = cpu_busy(0) if pin else 0.0
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    retrieve(request, env, target)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    user = usage.ru_utime - before.ru_utime
    system = usage.ru_stime - before.ru_stime
    cpu = user + system
    # Pinned, this client is alone on CPU 0 unless something else ran there.
    others = max(0.0, cpu_busy(0) - busy - cpu) if pin else 0.0
    print(
        json.dumps(
            {
                "kind": kind,
                "seconds": seconds,
                "cpu": cpu,
                "user": user,
                "system": system,
                "others": others,
                "per_job": per_job,
                "maxrss_kib": usage.ru_maxrss,
            }
        )
    )


# --- the driver -------------------------------------------------------------------------------


def _busy_fraction(seconds: float) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle(limit: float) -> float:
    """Wait until the machine is idle for half a second (at most ``limit`` s); the time waited."""
    if not os.path.exists("/proc/stat"):
        return 0.0
    started = time.monotonic()
    while _busy_fraction(0.5) > 0.1 and time.monotonic() - started < limit:
        pass
    return time.monotonic() - started


def expected_sha256(size: int, seed: int) -> str:
    from marsconn.testing import iter_data

    digest = hashlib.sha256()
    for piece in iter_data(size, seed, 1 << 20):
        digest.update(piece)
    return digest.hexdigest()


def run_client(kind: str, url: str, target: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    # The peer client is imported from the real server's sources; _pipeloop from here.
    from tests.real.peers import SERVER_SRC

    paths = [str(SERVER_SRC), str(HERE), env.get("PYTHONPATH", "")]
    if kind == BEFORE:
        paths.insert(0, str(Path(args.before).resolve()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    role = "marsconn" if kind == BEFORE else kind
    command = [sys.executable, __file__, "--client", role, "--url", url, "--target", str(target)]
    command += ["--size", str(args.size_bytes), "--seed", str(args.seed)]
    if args.no_pin:
        command.append("--no-pin")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} client failed:\n{done.stdout}\n{done.stderr}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def measure(
    kind: str, url: str, out: Path, size: int, want: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One retrieval by ``kind`` in a fresh child, its output checked; its figures."""
    target = out / f"{kind}.grib"
    waited, repeats = 0.0, 0
    while True:
        waited += wait_for_idle(args.idle_wait)
        record = run_client(kind, url, target, args)
        got = target.stat().st_size
        if got != size or file_sha256(target) != want:
            raise SystemExit(f"{kind}: the output is wrong ({got} bytes, sha256 differs)")
        target.unlink()
        # Other processes on the client's CPU: measured again, at most 3 times.
        if record["others"] <= max(0.03, 0.05 * record["seconds"]) or repeats == 3:
            break
        repeats += 1
    record["waited"] = waited
    record["repeats"] = repeats
    return record


def _spread(values: list[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return f"{format(statistics.median(values), fmt)} [{low}-{high}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs",
        type=int,
        default=12,
        help="rounds of the clients (default 12; the target asks for 8 or more)",
    )
    parser.add_argument("--size", default="300MB", help="bytes per retrieval (default 300MB)")
    parser.add_argument("--dir", default="/dev/shm", help="where the outputs go")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    parser.add_argument("--idle-wait", type=float, default=60.0, help="longest wait for idle")
    parser.add_argument(
        "--before", help="also measure the marsconn in this directory (DIR/marsconn), in turn"
    )
    parser.add_argument(
        "--best-of",
        type=int,
        default=2,
        help="passes per round; a client's round figure is its cheapest (default 2)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also measure the limit loop's variants (read size, SO_RCVBUF, splice), in turn",
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size_bytes = parse_size(args.size)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if args.client:
        client_main(args.client, args.url, args.target, args.size_bytes, args.seed, pin)
        return

    sys.path.insert(0, str(ROOT))
    from tests.real.peers import Servers, Standin, missing_reason

    reason = missing_reason()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    size = args.size_bytes
    work = Path(tempfile.mkdtemp(prefix="bench-pipe-real-"))
    out = Path(tempfile.mkdtemp(prefix="bench-pipe-real-", dir=args.dir))
    servers = Servers(Standin(work / "standin"), work / "servers")
    try:
        server = servers.start_pipe()
        others = sorted(os.sched_getaffinity(0) - {0})
        if pin:
            # Children forked later (the handler per connection, MARS) inherit this.
            os.sched_setaffinity(server.pid, set(others))
        print(
            f"{size / 1e6:.0f} MB per retrieval through the real pipe server at {server.url}, "
            f"stand-in MARS in 64 KiB chunks, output to {args.dir}; {os.cpu_count()} CPUs, "
            + (f"clients on CPU 0, server and MARS on {others}" if pin else "no pinning")
        )
        want = expected_sha256(size, args.seed)
        kinds: tuple[str, ...] = (*KINDS, BEFORE) if args.before else KINDS
        variants: tuple[str, ...] = ()
        if args.variants:
            from _pipeloop import VARIANTS

            variants = tuple(VARIANT + name for name in VARIANTS)
            kinds = (*kinds, *variants)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        orders = [
            ("peer", "marsconn", "limit"),
            ("limit", "marsconn", "peer"),
            ("marsconn", "limit", "peer"),
            ("peer", "limit", "marsconn"),
            ("limit", "peer", "marsconn"),
            ("marsconn", "peer", "limit"),
        ]
        for number in range(args.pairs):
            order = orders[number % len(orders)]
            if args.before:  # it takes every place in turn too
                order = (*order[: number % 4], BEFORE, *order[number % 4 :])
            if variants:  # after the others, each in every place among them in turn
                turn = number % len(variants)
                order = (*order, *variants[turn:], *variants[:turn])
            # The order runs --best-of times; each client's round figure is its
            # cheapest pass. Interference (another guest, a host fault) only
            # ever adds CPU, so the cheapest of the passes is the client's own
            # cost, and one disturbed pass no longer decides the round.
            passes: dict[str, list[dict[str, Any]]] = {k: [] for k in order}
            for turn in range(args.best_of):
                for kind in order:
                    record = measure(kind, server.url, out, size, want, args)
                    passes[kind].append(record)
                    print(
                        f"  round {number + 1}"
                        + (f".{turn + 1}" if args.best_of > 1 else "")
                        + f" {kind:15s} CPU {record['cpu'] / (size / 1e9):.3f} s/GB  "
                        f"wall {record['seconds']:.3f} s "
                        f"({size / record['seconds'] / 1e6:.0f} MB/s)  "
                        f"peak RSS {record['maxrss_kib'] / 1024:.0f} MB"
                        + (
                            f"  (waited {record['waited']:.0f} s for an idle machine)"
                            if record["waited"] >= 1
                            else ""
                        )
                        + (
                            f"  (measured {record['repeats'] + 1} times: CPU 0 was shared)"
                            if record["repeats"]
                            else ""
                        )
                    )
            for kind, records in passes.items():
                results[kind].append(min(records, key=lambda r: r["cpu"]))
        leftovers = sorted(p.name for p in server.logdir.iterdir()) if server.logdir else []
        report(results, size, leftovers)
    finally:
        servers.stop_all()
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, list[dict[str, Any]]], size: int, leftovers: list[str]) -> None:
    gb = size / 1e9
    cpu = {k: [r["cpu"] / gb for r in v] for k, v in results.items()}
    wall = {k: [r["seconds"] for r in v] for k, v in results.items()}
    print(
        "\nper client, median [min-max] over the rounds of each round's cheapest pass "
        "(CPU = user + system):"
    )
    for kind, records in results.items():
        user = statistics.median(r["user"] / gb for r in records)
        system = statistics.median(r["system"] / gb for r in records)
        per_job = statistics.median(r["per_job"] * 1000 for r in records)
        print(
            f"  {kind:15s} CPU {_spread(cpu[kind], '.3f')} s/GB "
            f"(user {user:.3f}, system {system:.3f})   wall {_spread(wall[kind], '.3f')} s   "
            f"CPU per 1 KiB job {per_job:.2f} ms"
        )
    cpu_ratio = [p / m for p, m in zip(cpu["peer"], cpu["marsconn"], strict=True)]
    speed_ratio = [p / m for p, m in zip(wall["peer"], wall["marsconn"], strict=True)]
    limit_ratio = [m / lim for m, lim in zip(cpu["marsconn"], cpu["limit"], strict=True)]
    med = statistics.median
    print("ratios: median of the per-round ratios [min-max]; ratio of the medians")
    rows = [
        (
            "peer/marsconn client CPU",
            cpu_ratio,
            med(cpu["peer"]) / med(cpu["marsconn"]),
            ">=",
            1.1,
        ),
        (
            "marsconn/peer speed",
            speed_ratio,
            med(wall["peer"]) / med(wall["marsconn"]),
            ">=",
            0.95,
        ),
        ("marsconn/limit CPU", limit_ratio, med(cpu["marsconn"]) / med(cpu["limit"]), "<=", 1.10),
    ]
    for label, per_round, of_medians, _, _ in rows:
        print(f"  {label:26s} {_spread(per_round, '.3f')}; {of_medians:.3f}")
    if BEFORE in cpu:
        for label, num, den in (
            ("peer/before client CPU", cpu["peer"], cpu[BEFORE]),
            ("before/marsconn client CPU", cpu[BEFORE], cpu["marsconn"]),
            ("before/peer speed", wall["peer"], wall[BEFORE]),
        ):
            values = [a / b for a, b in zip(num, den, strict=True)]
            print(f"  {label:26s} {_spread(values, '.3f')}; {med(num) / med(den):.3f}")
    for kind in cpu:
        if kind.startswith(VARIANT):
            values = [v / lim for v, lim in zip(cpu[kind], cpu["limit"], strict=True)]
            label = f"{kind.removeprefix(VARIANT)}/limit CPU"
            of_medians = med(cpu[kind]) / med(cpu["limit"])
            print(f"  {label:26s} {_spread(values, '.3f')}; {of_medians:.3f}")
    print(f"MARS logs left on the server: {len(leftovers)}")
    for label, per_round, of_medians, sign, goal in rows:
        value = med(per_round)
        met = value >= goal if sign == ">=" else value <= goal
        print(
            f"target: {label} {sign} {goal:g} (median of {len(per_round)} rounds) -> "
            f"{'met' if met else 'missed'} ({value:.3f}; ratio of medians {of_medians:.3f})"
        )


if __name__ == "__main__":
    main()
