"""The real cads-mars-server (pipe and WebSocket) with a stand-in MARS, outside pytest too.

The fixtures in ``conftest.py`` and the benchmarks use these. The servers come
from ``../shared/peers/cads-mars-server`` beside the project root. Each runs as
a child process in its own process group, on 127.0.0.1 and a free port, with
a temporary working directory and the stand-in ``mars`` (``standin_mars.py``)
first on its ``PATH``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marsconn.testing import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PEERS = PROJECT_ROOT.parent / "shared" / "peers"
SERVER_SRC = PEERS / "cads-mars-server"
HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin_mars.py"
LAUNCH = HERE / "_launch.py"
#: What the real servers import (besides the standard library).
SERVER_MODULES = ("websockets", "setproctitle", "requests", "click")
_READY_TIMEOUT = 20.0


def missing_reason() -> str | None:
    if not (SERVER_SRC / "cads_mars_server" / "ws_server.py").is_file():
        return (
            f"the real servers are not at {SERVER_SRC} (expected cads-mars-server "
            "in ../shared/peers beside the project root)"
        )
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"the real servers need {', '.join(missing)}, not installed in {sys.executable}; "
            "install the test extras: pip install -e '.[test]'"
        )
    return None


# --- the stand-in MARS -----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Standin:
    """The stand-in ``mars`` of one test: where it is, what it ran, what still runs."""

    def __init__(self, root: Path) -> None:
        self.bindir = root / "bin"
        self.piddir = root / "pids"
        self.runlog_path = root / "runs.jsonl"
        self.bindir.mkdir(parents=True)
        self.piddir.mkdir()
        self.executable = self.bindir / "mars"
        # A two-line wrapper so tracebacks name the real file.
        self.executable.write_text(
            f"#!{sys.executable}\n"
            f"import runpy; runpy.run_path({str(STANDIN)!r}, run_name='__main__')\n"
        )
        self.executable.chmod(0o755)

    def env(self) -> dict[str, str]:
        """What a server needs in its environment to run this stand-in."""
        return {
            "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MARS_STANDIN_PIDDIR": str(self.piddir),
            "MARS_STANDIN_RUNLOG": str(self.runlog_path),
        }

    def runlog(self) -> list[dict[str, Any]]:
        """Every event recorded so far, in order."""
        try:
            text = self.runlog_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.runlog() if e.get("request_id") == request_id]

    def runs(self, request_id: str) -> int:
        """How many times MARS started for ``request_id``."""
        return sum(1 for e in self.events(request_id) if e["event"] == "start")

    def _known_pids(self, request_id: str | None = None) -> set[int]:
        pids = {
            int(e["pid"])
            for e in self.runlog()
            if e["event"] == "start" and (request_id is None or e["request_id"] == request_id)
        }
        if request_id is None:
            pids |= {int(p.name) for p in self.piddir.iterdir() if p.name.isdigit()}
        return pids

    def pids(self, request_id: str | None = None) -> list[int]:
        """Stand-in processes still running (for ``request_id``, or all)."""
        marker = str(self.executable)
        return sorted(
            pid
            for pid in self._known_pids(request_id)
            if _alive(pid) and (not _cmdline(pid) or marker in _cmdline(pid))
        )

    def wait_started(self, request_id: str, count: int = 1, timeout: float = 15.0) -> None:
        """Block until MARS has started ``count`` times for ``request_id``."""
        deadline = time.monotonic() + timeout
        while self.runs(request_id) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"MARS did not start {count} time(s) for {request_id} within {timeout:g}s; "
                    f"runlog: {self.runlog()}"
                )
            time.sleep(0.02)

    def wait_gone(self, request_id: str | None = None, timeout: float = 15.0) -> None:
        """Block until no stand-in (for ``request_id``) runs any more."""
        deadline = time.monotonic() + timeout
        while self.pids(request_id):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"stand-in MARS still running after {timeout:g}s: {self.pids(request_id)}"
                )
            time.sleep(0.05)

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- the servers -----------------------------------------------------------------------------


@dataclass
class RealServer:
    """One real server running as a child process in its own process group."""

    kind: str  # "ws" or "pipe"
    proc: subprocess.Popen[bytes]
    port: int
    cwd: Path
    logdir: Path | None = None
    standin: Standin | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        scheme = "ws" if self.kind == "ws" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def mars_pids(self) -> list[int]:
        """Stand-in MARS processes of this server still running (they run in its cwd)."""
        if self.standin is None:
            return []
        mine = {
            int(e["pid"])
            for e in self.standin.runlog()
            if e["event"] == "start" and e.get("cwd") == str(self.cwd)
        }
        return [pid for pid in self.standin.pids() if pid in mine]

    def freeze(self, *, with_mars: bool = False) -> None:
        """SIGSTOP the server's process group (the pipe server's forked children and
        MARS too). The WebSocket server starts MARS in a session of its own, so its
        MARS runs on unless ``with_mars`` (the whole machine freezes)."""
        self._signal(signal.SIGSTOP)
        if with_mars:
            for pid in self.mars_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process group and this server's MARS runs."""
        self._signal(signal.SIGCONT)
        for pid in self.mars_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill9(self) -> None:
        """SIGKILL the process group and reap the server."""
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def stop(self) -> None:
        """SIGTERM (the WebSocket server then kills its MARS runs), SIGKILL after 3 s."""
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def output(self) -> str:
        """What the server printed (stdout and stderr) so far."""
        try:
            return (self.cwd / "server-output.txt").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def files(self) -> list[str]:
        """Names in the server's working directory (besides its captured output)."""
        return sorted(p.name for p in self.cwd.iterdir() if p.name != "server-output.txt")


def _wait_listening(server: RealServer) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"the real {server.kind} server exited with {server.proc.returncode} "
                f"before listening on port {server.port}:\n{server.output()}"
            )
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(
                f"the real {server.kind} server did not listen on port {server.port} "
                f"within {_READY_TIMEOUT:g}s:\n{server.output()}"
            )
        time.sleep(0.05)


def _server_env(standin: Standin, extra: dict[str, str]) -> dict[str, str]:
    # Nothing MARS_* from the caller's environment may change the servers' behaviour.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARS_")}
    pythonpath = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SERVER_SRC) + (os.pathsep + pythonpath if pythonpath else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["MARS_CONFIG_FILE"] = "/nonexistent/cads-mars-server.yaml"
    env.update(standin.env())
    env.update(extra)
    return env


class Servers:
    """Starts servers for one test and stops every one of them at the end."""

    def __init__(self, standin: Standin, root: Path) -> None:
        self.standin = standin
        self.root = root
        self.started: list[RealServer] = []

    def launch(
        self, kind: str, args: list[str], extra_env: dict[str, str], logdir: Path | None
    ) -> RealServer:
        n = len(self.started) + 1
        cwd = self.root / f"{kind}-server-{n}"
        cwd.mkdir(parents=True)
        port = free_port()
        with open(cwd / "server-output.txt", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(LAUNCH), kind, "127.0.0.1", str(port), *args],
                cwd=cwd,
                env=_server_env(self.standin, extra_env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RealServer(kind, proc, port, cwd, logdir, self.standin)
        self.started.append(server)
        _wait_listening(server)
        return server

    def start_ws(
        self, *, heartbeat: int = 1, max_connections: int = 0, shared_root: str = "/"
    ) -> RealServer:
        """A real WebSocket server with this heartbeat, capacity and shared root."""
        env = {
            "MARS_SHARED_ROOT": shared_root,
            "MARS_HEARTBEAT_INTERVAL": str(heartbeat),
            "MARS_MAX_CONCURRENT_CONNECTIONS": str(max_connections),
        }
        return self.launch("ws", [], env, None)

    def start_pipe(self) -> RealServer:
        """A real pipe server; MARS logs go to its ``.logdir``."""
        logdir = self.root / f"logs-{len(self.started) + 1}"
        logdir.mkdir(parents=True)
        return self.launch("pipe", [str(self.standin.executable), str(logdir)], {}, logdir)

    def stop_all(self) -> None:
        for server in self.started:
            server.resume()
            server._signal(signal.SIGKILL)
        for server in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(5)
        self.standin.kill_all()
