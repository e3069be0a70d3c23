"""The ``marsconn`` command: explain, validate, probe, retrieve, demo, and what ships with it.

Every command reports problems the same way: on stderr, ``marsconn: error:``
or ``marsconn: warning:`` lines (an invalid configuration as the same block
the library's :class:`~marsconn.errors.ConfigError` prints), and with
``--json`` also as one JSON document on stdout. Each kind of outcome has one
exit status (:data:`EXIT_CODES`, listed by ``marsconn --help`` and in
docs/cli.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .core import audit
from .core.errors import (
    ConfigError,
    MarsRequestError,
    NoDataError,
    NoServerAvailableError,
    PreflightError,
    Problem,
)
from .core.version import __version__
from .plan.model import ConnectionPlan, Mode, Reason
from .plan.resolve import resolve_plan

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_MARS = 3
EXIT_NO_SERVER = 4
EXIT_FAILED = 5
EXIT_INPUT = 6
EXIT_NO_DATA = 7
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: Every exit status: (code, outcome name as in ``--json`` output, meaning).
EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (EXIT_OK, "ok", "success (validate: the deployment does what its settings ask)"),
    (
        EXIT_INVALID,
        "invalid_configuration",
        "invalid configuration; validate also when the deployment would not do what its "
        "settings ask, and on any warning with --strict",
    ),
    (EXIT_USAGE, "usage_error", "the command line is wrong (unknown option, missing argument)"),
    (EXIT_MARS, "mars_rejected", "retrieve: MARS rejected the request"),
    (
        EXIT_NO_SERVER,
        "no_server",
        "retrieve: no server ran the job; probe: no server answered",
    ),
    (
        EXIT_FAILED,
        "retrieval_failed",
        "retrieve: the retrieval failed otherwise (killed, transfer broken, output missing)",
    ),
    (
        EXIT_INPUT,
        "unusable_input",
        "a file or path given to the command cannot be used (request or environ file "
        "unreadable or not valid JSON, target directory missing, file exists)",
    ),
    (EXIT_NO_DATA, "no_data", "retrieve: MARS ran the request but produced no data"),
    (EXIT_INTERRUPTED, "interrupted", "interrupted (Ctrl-C)"),
    (EXIT_BROKEN_PIPE, "broken_pipe", "the output was closed early (e.g. piped into head)"),
)
_OUTCOME = {code: name for code, name, _ in EXIT_CODES}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# --- problems and how they are reported -------------------------------------------------------


class _Failure(Exception):
    """A command ends with ``code``; ``problems`` say why (each with its source)."""

    def __init__(self, code: int, problems: Iterable[Problem]) -> None:
        self.code = code
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class _UsageError(Exception):
    """The command line is wrong: exit 2 with the usage of the (sub)command."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "source": problem.where,
        "message": problem.message,
        "value": problem.value,
        "accepted": problem.accepted,
    }


@dataclass
class _Output:
    """Where a command's result and problems go; ``json``: one document on stdout."""

    json: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def warnings(self, warnings: Iterable[Problem]) -> None:
        for w in warnings:
            print(f"marsconn: warning: {w}", file=self.err)

    def errors(self, code: int, problems: Sequence[Problem]) -> None:
        if code == EXIT_INVALID:
            # The library's own text, so that a log of either reads the same.
            head, *rest = str(ConfigError(problems)).splitlines()
            print(f"marsconn: error: {head}", *rest, sep="\n", file=self.err)
        else:
            for problem in problems:
                print(f"marsconn: error: {problem}", file=self.err)

    def document(self, data: dict[str, Any]) -> None:
        print(json.dumps(data, indent=2), file=self.out)

    def failure(
        self, code: int, problems: Sequence[Problem], warnings: Sequence[Problem] = ()
    ) -> int:
        self.errors(code, problems)
        if self.json:
            self.document(
                {
                    "ok": False,
                    "exit_code": code,
                    "outcome": _OUTCOME[code],
                    "errors": [_problem_json(p) for p in problems],
                    "warnings": [_problem_json(w) for w in warnings],
                }
            )
        return code


# --- the parser -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are reported by :func:`main`, not by exiting."""

    commands: dict[str, _Parser]

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self)


_FORMATTER = argparse.RawDescriptionHelpFormatter


def _exit_code_text(codes: Sequence[int]) -> str:
    lines = ["exit status:"]
    for code, _, meaning in EXIT_CODES:
        if code in codes:
            lines += textwrap.wrap(
                meaning, 78, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7
            )
    return "\n".join(lines)


def _global_options(*, top: bool) -> _Parser:
    """-v and --log-json, accepted before the command (top) and after it (each command)."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("global options (before or after the command)")
    # After the command, SUPPRESS keeps an absent flag from resetting one given before it.
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every audit event on stderr, not only warnings",
        **default,
    )
    group.add_argument(
        "--log-json",
        action="store_true",
        help="write audit events to stderr as JSON lines",
        **default,
    )
    return parent


def _add_sources(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration sources (the process environment is always read)")
    g.add_argument("--env-file", metavar="FILE", help="dotenv file, below the environment")
    g.add_argument("--config", metavar="FILE", help="YAML config file (replaces MARS_CONFIG_FILE)")
    g.add_argument(
        "--server-list", metavar="FILE", help="server-list file (replaces MARS_API_SERVER_LIST)"
    )
    g.add_argument(
        "--server",
        metavar="URL",
        action="append",
        help="a server, or several separated by commas, as the adaptor's mars_servers "
        "(repeatable; highest precedence)",
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
        metavar="VERSION",
        help="declare the servers' cads-mars-server version instead of detecting it",
    )


@dataclass(frozen=True)
class _Command:
    name: str
    summary: str
    description: str
    exit_codes: tuple[int, ...]


_COMMAND_INFO = (
    _Command(
        "plan",
        "print the resolved connection plan",
        "Merge every settings source and print the connection plan: the mode and why, the "
        "servers, and (--explain) where every value came from and every URL marsconn "
        "rewrote. Warnings go to stderr.",
        (EXIT_OK, EXIT_INVALID, EXIT_USAGE),
    ),
    _Command(
        "validate",
        "check a deployment: exit 1 unless it does what its settings ask",
        "A deploy gate. Exit 1 when the configuration is invalid, when the deployment would "
        "not do what its settings ask (shares requested but the plan falls back to pipe "
        "mode; pipe_port equal to shares_port; a MARS_CONFIG_FILE that does not exist), "
        "and, with --strict, on any warning (a value ignored or rewritten: unknown YAML "
        "keys, misspelt variables, pipe URLs in MARS_WS_SERVERS, ...).",
        (EXIT_OK, EXIT_INVALID, EXIT_USAGE),
    ),
    _Command(
        "schema",
        "print the JSON Schema of every setting",
        "Print the JSON Schema of the settings: each setting's type, default, environment "
        "variable (x-env), YAML key (x-yaml-key) and adaptor key (x-adaptor-key).",
        (EXIT_OK, EXIT_USAGE),
    ),
    _Command(
        "probe",
        "handshake with every server of the plan",
        "Resolve the plan and open a connection to each of its servers (a WebSocket "
        "handshake, or an HTTP HEAD for pipe servers), without running anything.",
        (EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_NO_SERVER),
    ),
    _Command(
        "retrieve",
        "run a MARS request through the plan",
        "Run a MARS request (a JSON object, or a list of them) through the plan, with "
        "failover, writing the data to --target. MARS's log lines go to stderr.",
        (
            EXIT_OK,
            EXIT_INVALID,
            EXIT_USAGE,
            EXIT_MARS,
            EXIT_NO_SERVER,
            EXIT_FAILED,
            EXIT_INPUT,
            EXIT_NO_DATA,
        ),
    ),
    _Command(
        "demo",
        "run retrievals against in-process servers, with a failover",
        "Start servers that speak both wire protocols on 127.0.0.1 (one of them dead) and "
        "run a retrieval through each mode, printing the plan and the audit trail. Needs no "
        "MARS and no network.",
        (EXIT_OK, EXIT_USAGE, EXIT_FAILED),
    ),
    _Command(
        "example-config",
        "print or write the example deployment files",
        "The example deployment shipped with marsconn: a YAML config file, a server list "
        "and a dotenv file for a WebSocket ('shares') deployment. Without arguments, list "
        "them; with NAME, print one; with --write DIR, write all three into DIR.",
        (EXIT_OK, EXIT_USAGE, EXIT_INPUT),
    ),
    _Command(
        "docs",
        "say where marsconn's documentation is, or print one document",
        "Without arguments, list the documents and say where they are (shipped inside "
        "the installed package, or the docs/ directory of a source tree). With NAME "
        "(e.g. cli, configuration), print that document.",
        (EXIT_OK, EXIT_USAGE, EXIT_INPUT),
    ),
)


def _parser() -> _Parser:
    parser = _Parser(
        prog="marsconn",
        description="Decide how to reach the MARS proxy servers, check it, and use it.",
        epilog="Run `marsconn COMMAND --help` for a command's options.\n\n"
        + _exit_code_text([code for code, _, _ in EXIT_CODES])
        + "\n\nDocumentation: `marsconn docs`.",
        formatter_class=_FORMATTER,
        parents=[_global_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"marsconn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subs: dict[str, _Parser] = {}
    parser.commands = subs
    for info in _COMMAND_INFO:
        subs[info.name] = sub.add_parser(
            info.name,
            help=info.summary,
            description=textwrap.fill(info.description, 79),
            epilog=_exit_code_text(info.exit_codes),
            formatter_class=_FORMATTER,
            parents=[_global_options(top=False)],
        )

    p = subs["plan"]
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--explain", action="store_true", help="say where every value came from, and why"
    )

    p = subs["validate"]
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) on any warning too")

    p = subs["probe"]
    _add_sources(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = subs["retrieve"]
    _add_sources(p)
    p.add_argument("request", metavar="REQUEST.json", help="a request object or a list of them")
    p.add_argument("--target", required=True, metavar="PATH", help="output file")
    p.add_argument("--environ", metavar="FILE", help="JSON file with the environ keys")
    p.add_argument("--user-id", default=os.environ.get("USER", "marsconn"), help="user_id")
    p.add_argument("--namespace", default="marsconn", help="namespace")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = subs["demo"]
    p.add_argument(
        "--mode", choices=["websocket", "pipe", "both"], default="both", help="which protocol"
    )

    p = subs["example-config"]
    p.add_argument("name", nargs="?", metavar="NAME", help="the file to print")
    p.add_argument("--write", metavar="DIR", help="write every example file into DIR")

    p = subs["docs"]
    p.add_argument("name", nargs="?", metavar="NAME", help="the document to print")
    return parser


# --- settings ---------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _Failure(
                EXIT_USAGE,
                [
                    Problem(
                        "--set",
                        "expects KEY=VALUE",
                        value=item,
                        accepted="a setting name (see `marsconn schema`), '=' and its value",
                    )
                ],
            )
        out[key.strip()] = value
    if args.server_list:
        out["api_server_list"] = args.server_list
    if args.server:
        # One string, split on commas as the adaptor's mars_servers is.
        out["servers"] = ",".join(args.server)
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


# --- plan -------------------------------------------------------------------------------------


def _cmd_plan(args: argparse.Namespace, out: _Output) -> int:
    plan = _resolve(args)
    out.warnings(plan.warning_records)
    if args.json:
        out.document(plan.to_dict())
    elif args.explain:
        print(plan.explain(), file=out.out)
    else:
        print(f"mode: {plan.mode.value} ({plan.reason.value})", file=out.out)
        for url in plan.urls:
            print(f"  {url}", file=out.out)
        print(f"fingerprint: {plan.fingerprint}", file=out.out)
    return EXIT_OK


# --- validate ---------------------------------------------------------------------------------


def _setting_source(plan: ConnectionPlan, name: str) -> str:
    return next(prov.describe() for n, _, prov in plan.settings if n == name)


def _with_version(argv: Sequence[str], version: str) -> str:
    """The command line ``argv`` with ``--assume-server-version version`` (replacing any)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--assume-server-version":
            skip = True
        elif not arg.startswith("--assume-server-version="):
            kept.append(arg)
    return shlex.join(["marsconn", *kept, "--assume-server-version", version])


def _fallback_problem(plan: ConnectionPlan, argv: Sequence[str]) -> Problem:
    req = plan.required_version
    declare = f"`{_with_version(argv, req)}`"
    if plan.reason is Reason.SERVER_PACKAGE_TOO_OLD and plan.server_version_source == "declared":
        remedy = f"upgrade the servers to cads-mars-server >= {req} and declare it: {declare}"
    elif plan.reason is Reason.SERVER_PACKAGE_TOO_OLD:
        remedy = (
            f"upgrade cads-mars-server on this worker to >= {req}, or, if the servers run "
            f">= {req}, declare it: {declare}"
        )
    else:
        remedy = f"if the servers run cads-mars-server >= {req}, declare it: {declare}"
    return Problem(
        f"use_shares ({_setting_source(plan, 'use_shares')})",
        f"WebSocket (shares) mode is requested but the plan falls back to pipe mode "
        f"({plan.reason.value}): {plan.reason_text}",
        accepted=f"{remedy}; or set use_shares to false to choose pipe mode deliberately",
    )


def _deployment_check(
    plan: ConnectionPlan, argv: Sequence[str], strict: bool
) -> tuple[list[Problem], list[Problem]]:
    """Errors and warnings of a resolved plan, judged as a deployment."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    if plan.requested_mode is Mode.WEBSOCKET and plan.mode is not Mode.WEBSOCKET:
        errors.append(_fallback_problem(plan, argv))
    for w in plan.warning_records:
        # Equal ports are only a warning for the library (a plan can be made), not for a
        # deployment: the two servers of a worker cannot share a port.
        colliding = w.where.startswith("pipe_port (") and " and shares_port (" in w.where
        (errors if colliding or strict else warnings).append(w)
    return errors, warnings


def _cmd_validate(args: argparse.Namespace, out: _Output) -> int:
    plan: ConnectionPlan | None = None
    try:
        # Strict: a MARS_CONFIG_FILE naming a missing file is only a warning for
        # retrievals, but a deployment check must not let it ship.
        plan = _resolve(args, strict=True)
    except ConfigError as err:
        errors, warnings = list(err.problems), list[Problem]()
    else:
        errors, warnings = _deployment_check(plan, args.argv, args.strict)
    code = EXIT_INVALID if errors else EXIT_OK
    out.warnings(warnings)
    if errors:
        out.errors(code, errors)
    if args.json:
        out.document(
            {
                "valid": not errors,
                "ok": not errors,
                "exit_code": code,
                "outcome": _OUTCOME[code],
                "strict": args.strict,
                "mode": plan.mode.value if plan else None,
                "requested_mode": plan.requested_mode.value if plan else None,
                "reason": plan.reason.value if plan else None,
                "endpoints": plan.urls if plan else [],
                "fingerprint": plan.fingerprint if plan else None,
                "errors": [_problem_json(p) for p in errors],
                "warnings": [_problem_json(w) for w in warnings],
            }
        )
    elif plan is not None and not errors:
        extra = f", {_plural(len(warnings), 'warning')}" if warnings else ""
        print(
            f"valid: {plan.mode.value} mode ({plan.reason.value}), "
            f"{_plural(len(plan.endpoints), 'server')}{extra}, fingerprint {plan.fingerprint}",
            file=out.out,
        )
    return code


# --- schema -----------------------------------------------------------------------------------


def _cmd_schema(args: argparse.Namespace, out: _Output) -> int:
    from .plan.settings import MarsSettings

    out.document(MarsSettings.model_json_schema())
    return EXIT_OK


# --- probe ------------------------------------------------------------------------------------


def _cmd_probe(args: argparse.Namespace, out: _Output) -> int:
    from .probe import probe

    plan = _resolve(args)
    out.warnings(plan.warning_records)
    results = probe(plan)
    answered = any(r.ok for r in results)
    if args.json:
        out.document(
            {
                "ok": answered,
                "exit_code": EXIT_OK if answered else EXIT_NO_SERVER,
                "mode": plan.mode.value,
                "results": [r.to_dict() for r in results],
            }
        )
    else:
        print(f"probing {_plural(len(results), plan.mode.value + ' server')}", file=out.out)
        for r in results:
            mark = "ok  " if r.ok else "FAIL"
            print(f"  {mark} {r.server:<40} {r.latency * 1000:8.1f} ms  {r.detail}", file=out.out)
    if not answered:
        print(f"marsconn: error: none of the {len(results)} answered", file=out.err)
        return EXIT_NO_SERVER
    return EXIT_OK


# --- retrieve ---------------------------------------------------------------------------------


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
        text = f"[{elapsed:6.1f}s] {_plural(self.lines, 'log line')}  {self.last[:60]}"
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
        from .run.logs import classify_line

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


def _input_error(where: str, message: str, accepted: str) -> _Failure:
    return _Failure(EXIT_INPUT, [Problem(where, message, accepted=accepted)])


def _read_json(path: str, what: str, accepted: str) -> Any:
    where = f"{what} {path}"
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise _input_error(where, f"cannot be read: {exc.strerror or exc}", accepted) from None
    except UnicodeDecodeError as exc:
        raise _input_error(where, f"not UTF-8 text (byte {exc.start})", accepted) from None
    except json.JSONDecodeError as exc:
        raise _input_error(
            f"{where}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})", accepted
        ) from None


_REQUEST_ACCEPTED = "a JSON object of MARS keywords, or a non-empty list of them"


def _load_request(path: str) -> Any:
    data = _read_json(path, "request file", _REQUEST_ACCEPTED)
    if isinstance(data, dict) or (
        isinstance(data, list) and data and all(isinstance(r, dict) for r in data)
    ):
        return data
    raise _input_error(
        f"request file {path}", f"a JSON {type(data).__name__}, not a request", _REQUEST_ACCEPTED
    )


def _environ(args: argparse.Namespace) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "user_id": args.user_id,
        "namespace": args.namespace,
        "host": os.uname().nodename,
    }
    environ["username"] = f"{args.namespace}:{str(args.user_id).split('-')[-1]}"
    if args.environ:
        accepted = "a JSON object of environ keys (request_id, user_id, namespace, host, ...)"
        data = _read_json(args.environ, "environ file", accepted)
        if not isinstance(data, dict):
            raise _input_error(
                f"environ file {args.environ}",
                f"a JSON {type(data).__name__}, not an object",
                accepted,
            )
        environ.update(data)
    return environ


def _retrieval_code(error: BaseException | None) -> int:
    if error is None:
        return EXIT_OK
    if isinstance(error, MarsRequestError):
        return EXIT_MARS
    if isinstance(error, NoDataError):
        return EXIT_NO_DATA
    if isinstance(error, NoServerAvailableError):
        return EXIT_NO_SERVER
    return EXIT_FAILED


def _cmd_retrieve(args: argparse.Namespace, out: _Output) -> int:
    from .run.engine import execute

    requests = _load_request(args.request)
    environ = _environ(args)
    plan = _resolve(args)
    out.warnings(plan.warning_records)
    target = Path(args.target).absolute()
    progress = _Progress(out.err, plan.logs.filter)
    try:
        with progress:
            result = execute(plan, requests, environ, target, log_handler=progress.handler)
    except PreflightError as exc:
        raise _input_error(
            f"--target {args.target}", str(exc), "a file path in an existing directory"
        ) from None
    code = _retrieval_code(result.error)
    if args.json:
        out.document({"exit_code": code, "outcome": _OUTCOME[code], **result.to_dict()})
    elif result.ok:
        print(
            f"ok: {result.bytes} bytes written to {result.target} by {result.server} "
            f"in {result.duration:.2f}s ({_plural(len(result.attempts), 'attempt')})",
            file=out.out,
        )
    if not result.ok:
        print(f"marsconn: error: {result.error}", file=out.err)
    return code


# --- demo -------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="marsconn-demo-") as workdir:
        return run_demo(Path(workdir), args.mode, out.out)


# --- what ships with marsconn -----------------------------------------------------------------

#: Example files: name -> what it is. Shipped as marsconn/_examples (from config/).
EXAMPLES = {
    "cads-mars-server.yaml": "YAML config file (MARS_CONFIG_FILE, /etc/cads-mars-server.yaml)",
    "servers.list": "server list, one pipe-server URL per line (MARS_API_SERVER_LIST)",
    "shares.env": "dotenv file for --env-file, naming the other two",
}


def _shipped(packaged: str, source: str) -> Path | None:
    """A directory of files shipped with marsconn.

    In an installed wheel they are package data (``marsconn/<packaged>``,
    copied there from the source tree when the wheel is built); running from
    a source tree or an unpacked sdist (an editable install), they are the
    tree's own ``<source>`` directory.
    """
    here = Path(__file__).resolve().parent
    if (here / packaged).is_dir():
        return here / packaged
    tree = here.parent
    if (tree / source).is_dir() and (tree / "pyproject.toml").is_file():
        return tree / source
    return None


def _not_shipped(what: str) -> _Failure:
    return _input_error(
        what,
        "not found next to this installation of marsconn",
        "an installation from marsconn's wheel or sdist, or a source tree",
    )


def _cmd_example_config(args: argparse.Namespace, out: _Output) -> int:
    folder = _shipped("_examples", "config")
    if folder is None:
        raise _not_shipped("example configuration")
    if args.name is not None and args.write is not None:
        raise _Failure(
            EXIT_USAGE, [Problem("example-config", "give NAME or --write DIR, not both")]
        )
    if args.name is not None:
        if args.name not in EXAMPLES:
            raise _Failure(
                EXIT_USAGE,
                [Problem("example-config", "no such example", args.name, ", ".join(EXAMPLES))],
            )
        out.out.write((folder / args.name).read_text(encoding="utf-8"))
        return EXIT_OK
    if args.write is not None:
        return _write_examples(folder, Path(args.write), out)
    print(f"example deployment files (in {folder}):", file=out.out)
    for name, what in EXAMPLES.items():
        print(f"  {name:<22} {what}", file=out.out)
    print(
        "print one with `marsconn example-config NAME`, or write all with "
        "`marsconn example-config --write DIR`",
        file=out.out,
    )
    return EXIT_OK


def _write_examples(folder: Path, directory: Path, out: _Output) -> int:
    accepted = "an existing directory without files of these names"
    if not directory.is_dir():
        raise _input_error(f"--write {directory}", "is not an existing directory", accepted)
    clashes = [name for name in EXAMPLES if (directory / name).exists()]
    if clashes:
        raise _input_error(
            f"--write {directory}", f"already has {', '.join(clashes)}; nothing written", accepted
        )
    where = directory.absolute()
    for name in EXAMPLES:
        text = (folder / name).read_text(encoding="utf-8")
        if name == "shares.env":
            # Its paths name the repository's config/ directory; point them at the copies.
            text = text.replace("=config/", f"={where}/")
        (directory / name).write_text(text, encoding="utf-8")
        print(f"wrote {directory / name}", file=out.out)
    env_file = str(where / "shares.env")
    check = shlex.join(
        ["marsconn", "validate", "--env-file", env_file, "--assume-server-version", "0.3.1"]
    )
    print(f"check them with: {check}", file=out.out)
    return EXIT_OK


#: The documentation's home on the web, for installations that carry no copy.
DOCS_URL = "https://github.com/ecmwf-projects/marsconn/tree/main/docs"


def _cmd_docs(args: argparse.Namespace, out: _Output) -> int:
    folder = _shipped("_docs", "docs")
    if folder is None:
        if args.name is not None:
            raise _not_shipped("documentation")
        print(f"no copy of the documentation is installed; it is at {DOCS_URL}", file=out.out)
        return EXIT_OK
    names = sorted(p.stem for p in folder.glob("*.md"))
    if args.name is not None:
        name = args.name.removesuffix(".md")
        if name not in names:
            raise _Failure(
                EXIT_USAGE,
                [Problem("docs", "no such document", args.name, ", ".join(names))],
            )
        out.out.write((folder / f"{name}.md").read_text(encoding="utf-8"))
        return EXIT_OK
    print(f"marsconn's documentation is in {folder} (and at {DOCS_URL}):", file=out.out)
    for name in names:
        print(f"  {folder / (name + '.md')}", file=out.out)
    print("print one with `marsconn docs NAME`, e.g. `marsconn docs cli`", file=out.out)
    return EXIT_OK


_COMMANDS = {
    "plan": _cmd_plan,
    "validate": _cmd_validate,
    "schema": _cmd_schema,
    "probe": _cmd_probe,
    "retrieve": _cmd_retrieve,
    "demo": _cmd_demo,
    "example-config": _cmd_example_config,
    "docs": _cmd_docs,
}


def _usage_failure(err: _UsageError, argv: Sequence[str], out: _Output) -> int:
    parser = err.parser
    commands: dict[str, argparse.ArgumentParser] = getattr(parser, "commands", {})
    # Unrecognised arguments are found by the top parser, but belong to the command.
    command = next((a for a in argv if a in commands), None)
    if command is not None:
        parser = commands[command]
    parser.print_usage(out.err)
    print(f"marsconn: error: {err}", file=out.err)
    print(f"run `{parser.prog} --help` for help", file=out.err)
    if out.json:
        out.document(
            {
                "ok": False,
                "exit_code": EXIT_USAGE,
                "outcome": _OUTCOME[EXIT_USAGE],
                "errors": [_problem_json(Problem("command line", str(err)))],
                "warnings": [],
            }
        )
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = _Output(json="--json" in argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        return _usage_failure(err, argv, out)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        # `marsconn` alone: what there is to run.
        parser.print_help(out.err)
        return EXIT_USAGE
    args.argv = argv
    audit.configure(json=args.log_json, level="info" if args.verbose else "warning")
    try:
        return _COMMANDS[args.command](args, out)
    except _Failure as exc:
        return out.failure(exc.code, exc.problems)
    except ConfigError as err:
        return out.failure(EXIT_INVALID, err.problems)
    except KeyboardInterrupt:
        print("marsconn: interrupted", file=out.err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Nothing more can be printed; keep the interpreter's final flush from failing too.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
