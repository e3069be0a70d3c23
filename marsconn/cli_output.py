"""The command line's exit codes, failures and output (text or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .core.errors import (
    ConfigError,
    Problem,
)

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
