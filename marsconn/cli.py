"""The ``marsconn`` command: explain, validate, probe, retrieve, demo, and what ships with it.

Every command reports problems the same way: on stderr, ``marsconn: error:``
or ``marsconn: warning:`` lines (an invalid configuration as the same block
the library's :class:`~marsconn.core.errors.ConfigError` prints), and with
``--json`` also as one JSON document on stdout. Each kind of outcome has one
exit status (:data:`EXIT_CODES`, listed by ``marsconn --help`` and in
docs/cli.md).

This module is the parser and the dispatch; each command's work is in
:mod:`marsconn.cli_commands`, exit codes and output in :mod:`marsconn.cli_output`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .cli_commands import (
    _cmd_demo,
    _cmd_docs,
    _cmd_example_config,
    _cmd_plan,
    _cmd_probe,
    _cmd_retrieve,
    _cmd_schema,
    _cmd_validate,
)
from .cli_output import (
    _OUTCOME,
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_MARS,
    EXIT_NO_DATA,
    EXIT_NO_SERVER,
    EXIT_OK,
    EXIT_USAGE,
    _Failure,
    _Output,
    _problem_json,
    _UsageError,
)
from .core import audit
from .core.errors import (
    ConfigError,
    Problem,
)
from .core.version import __version__

__all__ = ["EXIT_CODES", "main"]


# --- problems and how they are reported -------------------------------------------------------


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


# --- plan -------------------------------------------------------------------------------------


# --- validate ---------------------------------------------------------------------------------


# --- schema -----------------------------------------------------------------------------------


# --- probe ------------------------------------------------------------------------------------


# --- retrieve ---------------------------------------------------------------------------------


# --- demo -------------------------------------------------------------------------------------


# --- what ships with marsconn -----------------------------------------------------------------


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
