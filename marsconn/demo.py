"""``marsconn demo``: the whole flow against in-process servers, one of them dead.

Needs no MARS and no network: the servers run on 127.0.0.1 in this
process (see :mod:`marsconn.testing`), and a port nobody listens on plays
the dead server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from .core.errors import TargetError
from .plan.model import ConnectionPlan
from .plan.resolve import resolve_plan
from .run.engine import execute
from .run.health import ServerHealth
from .run.result import Result
from .testing import (
    MarsScript,
    PipeMarsServer,
    WsMarsServer,
    dead_url,
    expected_data,
    run_in_thread,
)

__all__ = ["run_demo"]

_LOG = [
    "mars - INFO   - 20261128.120000 - Welcome to MARS",
    "mars - INFO   - 20261128.120000 - Processing request 1",
    "mars - INFO   - 20261128.120001 - Retrieving from the archive",
    "mars - WARN   - 20261128.120001 - Field 167.128 not in the cache, reading tape",
    "mars - INFO   - 20261128.120002 - Transfering 262144 bytes",
    "mars - INFO   - 20261128.120002 - 100% done",
    "mars - INFO   - 20261128.120002 - Request time: wall: 2 sec",
]
_OUTPUT_SIZE = 256 * 1024
_REQUEST = {"class": "ea", "date": "2026-11-01", "param": "167.128", "levtype": "sfc"}
_ENVIRON = {
    "request_id": "00000000-0000-4000-8000-000000000d31",
    "user_id": "00000000-0000-4000-8000-00000000demo",
    "namespace": "demo",
    "host": "demo-worker",
    "username": "demo:00000000demo",
}


class _Trail:
    """Collects audit events to print them as a trail afterwards."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def print(self, out: TextIO) -> None:
        print("audit trail:", file=out)
        for level, event, fields in self.events:
            shown = " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in fields.items()
                if v is not None
            )
            print(f"  [{level:7}] {event:28} {shown}", file=out)


class _Printer:
    """Shows MARS's kept log lines as they arrive."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def _line(self, msg: str) -> None:
        print(f"  | {msg}", file=self.out, flush=True)

    info = warning = error = _line


def _run(title: str, plan: ConnectionPlan, target: Path, trail: _Trail, out: TextIO) -> Result:
    print(f"\n=== {title} ===", file=out)
    print(plan.explain(), file=out)
    print("\nretrieving (the dead server comes first):", file=out)
    result = execute(
        plan,
        _REQUEST,
        _ENVIRON,
        target,
        logger=_Printer(out),
        audit_logger=trail,
        health=ServerHealth(),
    )
    if result.ok:
        print(
            f"\nresult: ok, {result.bytes} bytes in {target.name} from {result.server}, "
            f"{len(result.attempts)} attempts, {result.duration * 1000:.0f} ms",
            file=out,
        )
        exact = target.read_bytes() == expected_data(_OUTPUT_SIZE)
        print(
            "content: byte for byte what the server sent"
            if exact
            else "content: DIFFERS from what the server sent",
            file=out,
        )
        if not exact:
            result.error = TargetError(f"{target} does not hold the server's data")
    else:
        print(f"\nresult: FAILED: {result.error}", file=out)
    for a in result.attempts:
        print(
            f"  attempt on {a.server}: {a.outcome}"
            + (f" ({a.error_class})" if a.error_class else "")
            + f", {a.duration * 1000:.1f} ms",
            file=out,
        )
    trail.print(out)
    return result


def _websocket(workdir: Path, out: TextIO) -> bool:
    job = workdir / "shares-job"
    job.mkdir()
    script = MarsScript(log_lines=_LOG, line_delay=0.05, output_size=_OUTPUT_SIZE)
    # The server's shared root is "/": client and server see one filesystem,
    # as they would on a CephFS/NFS mount.
    with run_in_thread(WsMarsServer(Path("/"), script, heartbeat_interval=1.0)) as server:
        trail = _Trail()
        plan = resolve_plan(
            env={"MARS_USE_SHARES": "true", "MARS_FAILOVER_ORDER": "listed"},
            config={"mars_servers": [dead_url("http"), server.url.replace("ws://", "http://")]},
            overrides={"shares_port": server.port, "pipe_port": server.port},
            server_version="0.3.1",
            logger=trail,
        )
        return _run("WebSocket (shares) mode", plan, job / "data.grib", trail, out).ok


def _pipe(workdir: Path, out: TextIO) -> bool:
    job = workdir / "pipe-job"
    job.mkdir()
    script = MarsScript(log_lines=_LOG, output_size=_OUTPUT_SIZE, rewind_after=64 * 1024)
    with run_in_thread(PipeMarsServer(script)) as server:
        trail = _Trail()
        plan = resolve_plan(
            env={"MARS_FAILOVER_ORDER": "listed"},
            config={"mars_servers": [dead_url("http"), server.url]},
            logger=trail,
        )
        print(
            "\n(the pipe server below sends RWND after 64 KiB and then the whole data "
            "again: the client must rewind)",
            file=out,
        )
        return _run("pipe mode", plan, job / "data.grib", trail, out).ok


def run_demo(workdir: Path, mode: str, out: TextIO) -> int:
    """Run the demo in ``workdir``; ``mode`` is websocket, pipe or both. Returns an exit status."""
    ok = True
    if mode in ("websocket", "both"):
        ok &= _websocket(workdir, out)
    if mode in ("pipe", "both"):
        ok &= _pipe(workdir, out)
    print("\ndemo " + ("succeeded" if ok else "FAILED"), file=out)
    return 0 if ok else 5
