"""What each marsconn command does, once the command line is parsed."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .cli_output import (
    _OUTCOME,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INVALID,
    EXIT_MARS,
    EXIT_NO_DATA,
    EXIT_NO_SERVER,
    EXIT_OK,
    EXIT_USAGE,
    _Failure,
    _Output,
    _plural,
    _problem_json,
)
from .core.audit import PlanResolved, get_logger
from .core.errors import (
    ConfigError,
    MarsRequestError,
    NoDataError,
    NoServerAvailableError,
    PreflightError,
    Problem,
)
from .plan.model import ConnectionPlan, Mode, Reason
from .plan.resolve import resolve_plan


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


class _PlanAudit:
    """The commands' audit logger for resolving the plan.

    A command prints the plan's warnings itself (``marsconn: warning: ...``),
    so ``marsconn.plan.resolved`` stays at info level here (shown with
    ``-v``) rather than repeating them on stderr; every other event keeps
    its level.
    """

    def __init__(self) -> None:
        self._logger = get_logger()

    def info(self, event: str, **kw: Any) -> None:
        self._logger.info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        if event == PlanResolved.EVENT:
            self._logger.info(event, **kw)
        else:
            self._logger.warning(event, **kw)


def _resolve(args: argparse.Namespace, *, strict: bool = False) -> ConnectionPlan:
    return resolve_plan(
        env=os.environ,
        env_file=args.env_file,
        config_file=args.config,
        overrides=_overrides(args),
        server_version=args.assume_server_version,
        strict=strict,
        logger=_PlanAudit(),
    )


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


def _cmd_schema(args: argparse.Namespace, out: _Output) -> int:
    from .plan.settings import MarsSettings

    out.document(MarsSettings.model_json_schema())
    return EXIT_OK


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


def _cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="marsconn-demo-") as workdir:
        return run_demo(Path(workdir), args.mode, out.out)


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
