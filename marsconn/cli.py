"""The ``marsconn`` command: explain, validate, probe, retrieve, demo.

Exit codes: 0 success; 1 invalid configuration (or, for ``probe``, no
server answered); 2 usage error; 3 MARS rejected the request; 4 no server
ran the job; 5 any other retrieval failure (killed, target missing,
transfer broken).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__, audit
from .errors import ConfigError, MarsRequestError, NoServerAvailableError, PreflightError
from .plan import ConnectionPlan, resolve_plan
from .settings import MarsSettings

__all__ = ["main"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_MARS, EXIT_NO_SERVER, EXIT_FAILED = 0, 1, 2, 3, 4, 5


class _Usage(Exception):
    """A command-line mistake: exit status 2."""


def _add_sources(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration sources (the process environment is always read)")
    g.add_argument("--env-file", metavar="F", help="dotenv file, below the environment")
    g.add_argument("--config", metavar="F", help="YAML config file (replaces MARS_CONFIG_FILE)")
    g.add_argument(
        "--server-list", metavar="F", help="server-list file (replaces MARS_API_SERVER_LIST)"
    )
    g.add_argument(
        "--server",
        metavar="URL",
        action="append",
        help="a server, as the adaptor's mars_servers (repeatable; highest precedence)",
    )
    g.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting by its field name (see `marsconn schema`)",
    )
    g.add_argument(
        "--assume-server-version",
        metavar="V",
        help="declare the servers' cads-mars-server version instead of detecting it",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marsconn",
        description="Decide how to reach the MARS proxy servers, check it, and use it.",
    )
    parser.add_argument("--version", action="version", version=f"marsconn {__version__}")
    parser.add_argument(
        "--log-json", action="store_true", help="write audit events to stderr as JSON lines"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show every audit event, not only warnings"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="print the resolved connection plan")
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--explain", action="store_true", help="say where every value came from")

    p = sub.add_parser(
        "validate",
        help="check a deployment's configuration (exit 1 if invalid, or if "
        "MARS_CONFIG_FILE names a file that does not exist)",
    )
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")

    sub.add_parser("schema", help="print the settings' JSON Schema")

    p = sub.add_parser("probe", help="handshake with every server of the plan")
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print results as JSON")

    p = sub.add_parser("retrieve", help="run a MARS request through the plan")
    _add_sources(p)
    p.add_argument("request", metavar="REQUEST.json", help="a request object or a list of them")
    p.add_argument("--target", required=True, metavar="PATH", help="output file (absolute)")
    p.add_argument("--environ", metavar="F", help="JSON file with the environ keys")
    p.add_argument("--user-id", default=os.environ.get("USER", "marsconn"), help="user_id")
    p.add_argument("--namespace", default="marsconn", help="namespace")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("demo", help="run retrievals against in-process servers, with a failover")
    p.add_argument(
        "--mode", choices=["websocket", "pipe", "both"], default="both", help="which protocol"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _Usage(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    if args.server_list:
        out["api_server_list"] = args.server_list
    if args.server:
        out["servers"] = args.server
    return out


def _resolve(args: argparse.Namespace, *, strict: bool = False) -> ConnectionPlan:
    return resolve_plan(
        env=os.environ,
        env_file=args.env_file,
        config_file=args.config,
        overrides=_overrides(args),
        server_version=args.assume_server_version,
        strict=strict,
    )


def _print_problems(err: ConfigError, out: TextIO) -> None:
    print(f"invalid configuration ({len(err.problems)} problems):", file=out)
    for problem in err.problems:
        print(f"  {problem}", file=out)


def _cmd_plan(args: argparse.Namespace) -> int:
    plan = _resolve(args)
    if args.json:
        print(plan.to_json())
    elif args.explain:
        print(plan.explain())
    else:
        print(f"mode: {plan.mode.value} ({plan.reason.value})")
        for url in plan.urls:
            print(f"  {url}")
        for w in plan.warnings:
            print(f"warning: {w}")
        print(f"fingerprint: {plan.fingerprint}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        # Strict: a MARS_CONFIG_FILE naming a missing file is only a warning for
        # retrievals, but a deployment check must not let it ship.
        plan = _resolve(args, strict=True)
    except ConfigError as err:
        if args.json:
            problems = [
                {"where": p.where, "message": p.message, "value": p.value, "accepted": p.accepted}
                for p in err.problems
            ]
            print(json.dumps({"valid": False, "problems": problems}, indent=2))
        else:
            for problem in err.problems:
                print(f"error: {problem}")
        return EXIT_INVALID
    if args.json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "mode": plan.mode.value,
                    "reason": plan.reason.value,
                    "endpoints": plan.urls,
                    "warnings": list(plan.warnings),
                    "fingerprint": plan.fingerprint,
                },
                indent=2,
            )
        )
    else:
        for w in plan.warnings:
            print(f"warning: {w}")
        print(
            f"valid: {plan.mode.value} mode ({plan.reason.value}), "
            f"{len(plan.endpoints)} servers, fingerprint {plan.fingerprint}"
        )
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(MarsSettings.model_json_schema(), indent=2))
    return EXIT_OK


def _cmd_probe(args: argparse.Namespace) -> int:
    from .probe import probe

    plan = _resolve(args)
    results = probe(plan)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(f"probing {len(results)} {plan.mode.value} servers")
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            print(f"  {mark} {r.server:<40} {r.latency * 1000:8.1f} ms  {r.detail}")
    return EXIT_OK if any(r.ok for r in results) else EXIT_INVALID


class _Progress:
    """Status line on a terminal; plain log lines otherwise."""

    def __init__(self, stream: TextIO, filter_lines: bool = True) -> None:
        self.stream = stream
        self.filter_lines = filter_lines
        self.tty = stream.isatty()
        self.lines = 0
        self.last = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _status(self) -> None:
        elapsed = time.monotonic() - self.started
        text = f"[{elapsed:6.1f}s] {self.lines} log lines  {self.last[:60]}"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._status()

    def __enter__(self) -> _Progress:
        if self.tty:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def handler(self, line: str, job: Any, logger: Any) -> str | None:
        from .logs import classify_line

        with self._lock:
            self.lines += 1
            # A handler replaces the executor's filter, so apply it here.
            if self.filter_lines and classify_line(line) is None:
                return None
            self.last = line
            if self.tty:
                self._status()
            else:
                print(line, file=self.stream, flush=True)
        return line


def _load_request(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise _Usage(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict) or (
        isinstance(data, list) and data and all(isinstance(r, dict) for r in data)
    ):
        return data
    raise _Usage(f"{path}: expected a request object or a non-empty list of them")


def _environ(args: argparse.Namespace) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "user_id": args.user_id,
        "namespace": args.namespace,
        "host": os.uname().nodename,
    }
    environ["username"] = f"{args.namespace}:{str(args.user_id).split('-')[-1]}"
    if args.environ:
        try:
            with open(args.environ, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise _Usage(f"--environ {args.environ}: {exc}") from None
        if not isinstance(data, dict):
            raise _Usage(f"--environ {args.environ}: expected a JSON object")
        environ.update(data)
    return environ


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from .executor import execute

    requests = _load_request(args.request)
    plan = _resolve(args)
    target = Path(args.target).absolute()
    progress = _Progress(sys.stderr, plan.logs.filter)
    try:
        with progress:
            result = execute(plan, requests, _environ(args), target, log_handler=progress.handler)
    except PreflightError as exc:
        raise _Usage(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.ok:
        print(
            f"ok: {result.bytes} bytes written to {result.target} by {result.server} "
            f"in {result.duration:.2f}s ({len(result.attempts)} attempt"
            f"{'s' if len(result.attempts) != 1 else ''})"
        )
    else:
        print(f"failed: {result.error}", file=sys.stderr)
    if result.ok:
        return EXIT_OK
    if isinstance(result.error, MarsRequestError):
        return EXIT_MARS
    if isinstance(result.error, NoServerAvailableError):
        return EXIT_NO_SERVER
    return EXIT_FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="marsconn-demo-") as workdir:
        return run_demo(Path(workdir), args.mode, sys.stdout)


_COMMANDS = {
    "plan": _cmd_plan,
    "validate": _cmd_validate,
    "schema": _cmd_schema,
    "probe": _cmd_probe,
    "retrieve": _cmd_retrieve,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    audit.configure(json=args.log_json, level="info" if args.verbose else "warning")
    try:
        return _COMMANDS[args.command](args)
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"marsconn: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as err:
        _print_problems(err, sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
