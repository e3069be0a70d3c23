"""Small pieces of the hostile-input work, one behaviour each, without servers."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from marsconn import ConnectionPlan, resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.core.errors import ConfigError, PreflightError, Problem, clip
from marsconn.core.outcome import Action, Outcome
from marsconn.core.redact import redact
from marsconn.plan.configfiles import FileProblem, check_regular_file, read_regular_file
from marsconn.plan.endpoints import parse_server_url
from marsconn.run.connecting import tls_context
from marsconn.run.preflight import check_environ, check_requests
from marsconn.run.ws_connect import _LOGGER, _scrub, redirect_failure
from marsconn.wire.pipe_verdict import classify_status


def status(code: int, **headers: str) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers(headers)))


# --- redirects --------------------------------------------------------------------------------


def test_websocket_redirect_failure_names_the_target_redacted() -> None:
    cls, text = redirect_failure(status(301, Location="wss://u:Pw5@h:1/p?token=Qt7")) or ("", "")
    assert cls == "redirected"
    assert "answered HTTP 301, a redirect to 'wss://***@h:1/p?token=***'" in text


def test_websocket_redirect_to_a_relative_path_hides_its_query() -> None:
    _, text = redirect_failure(status(307, Location="/elsewhere?token=Qt7")) or ("", "")
    assert "a redirect to '/elsewhere?***'" in text


def test_websocket_redirect_without_location_and_other_statuses() -> None:
    _, text = redirect_failure(status(302)) or ("", "")
    assert "a redirect without a Location" in text
    assert redirect_failure(status(404)) is None
    assert redirect_failure(ValueError("x")) is None


def test_pipe_redirect_is_classified_and_respects_the_retry_headers() -> None:
    verdict = classify_status(308, {"Location": "http://x/\x1b[2J" + "y" * 300}, server="s")
    assert (verdict.action, verdict.error_class) == (Action.NEXT_SERVER, "redirected")
    assert "\\x1b[2J" in str(verdict.error)
    assert "..." in str(verdict.error)
    final = classify_status(302, {"X-MARS-RETRY-NEXT-HOST": "0"})
    assert (final.action, final.error_class) == (Action.FINAL, "redirected")
    assert "without a Location" in str(final.error)


# --- websockets' logger -----------------------------------------------------------------------


def test_websockets_logger_redacts_headers_urls_and_odd_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="websockets.client"):
        _LOGGER.debug("> %s: %s", "Authorization", "Basic dXNlcjpwdw==")
        _LOGGER.debug("> Cookie: session=abc")
        _LOGGER.debug("> proxy-authorization: Basic Zm9v")
        _LOGGER.info("connect to %s failed", "ws://user:Pw5@h/?k=Qt7")
        _LOGGER.warning("%d items", "not a number")  # a format that does not fit its arguments
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "> Authorization: ***",
        "> Cookie: ***",
        "> proxy-authorization: ***",
        "connect to ws://***@h/?k=*** failed",
        "%d items not a number",
    ]


def test_websockets_logger_does_nothing_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="websockets.client"):
        _LOGGER.debug("> Authorization: %s", "Basic secret")
    assert caplog.records == []
    assert _scrub("no secrets here") == "no secrets here"


# --- plans ------------------------------------------------------------------------------------


def test_a_plan_with_redacted_query_values_is_not_run_elsewhere() -> None:
    plan = resolve_plan(
        {"mars_servers": "http://h:9000/mars?token=Qt7"}, env={}, logger=NullAuditLogger()
    )
    shown = plan.to_dict()
    assert shown["endpoints"][0]["url"] == "http://h:9000/mars?token=***"
    with pytest.raises(ValueError, match="credentials were redacted"):
        ConnectionPlan.from_dict(shown)
    assert ConnectionPlan.from_dict(plan.to_dict(reveal_secrets=True)) == plan


def test_has_redacted_secret() -> None:
    assert parse_server_url("ws://***@h").has_redacted_secret
    assert parse_server_url("ws://h/?a=1&b=***").has_redacted_secret
    assert parse_server_url("ws://h/?***").has_redacted_secret
    assert not parse_server_url("ws://h/?a=1").has_redacted_secret
    assert not parse_server_url("ws://u:p@h/x").has_redacted_secret


# --- TLS at run time --------------------------------------------------------------------------


def test_tls_context_for_plain_urls_is_none_and_a_bad_bundle_is_final(tmp_path: Path) -> None:
    assert tls_context(parse_server_url("ws://h"), None) is None
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    outcome = tls_context(parse_server_url("wss://h"), str(junk))
    assert isinstance(outcome, Outcome)
    assert (outcome.action, outcome.error_class, outcome.eject) == (
        Action.FINAL,
        "ca_bundle_error",
        False,
    )
    assert isinstance(outcome.error, ConfigError)


# --- configuration files ----------------------------------------------------------------------


def test_unreadable_and_special_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "absent")
    with pytest.raises(FileProblem, match="a directory, not a regular file"):
        check_regular_file(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(FileProblem, match="Permission denied"):
            read_regular_file(secret)
    else:  # root reads anything
        assert read_regular_file(secret) == b"x"


def test_a_socket_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(FileProblem, match="No such device or address"):
            read_regular_file(path)


def test_problem_parts_and_config_errors_are_bounded() -> None:
    problem = Problem("w" * 1000, "m" * 1000, "v" * 1000, "a" * 1000)
    assert all(len(part) == 600 for part in (problem.where, problem.message, problem.value))
    assert problem.accepted is not None
    assert problem.accepted.endswith("more characters]")
    assert clip("short", 10) == "short"
    error = ConfigError([Problem("x", "y" * 590, "z" * 590)] * 200)
    assert error.problem_count == 200
    assert len(str(error)) < 32 * 1024
    assert str(error.problems[-1]).startswith("configuration: ")


# --- pre-flight details -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ([{"param": {"nested": "a\nb"}}], r"requests\[0\]\['param'\]\['nested'\] holds a newline"),
        ([{"param": {"k\x07": 1}}], r"requests\[0\]\['param'\] key 'k\\x07' holds"),
        ([{"param": "x" * 500 + "\n"}], r"\('x{60}\.\.\.'\)"),
        ([{1: "2t\x1b"}], r"requests\[0\]\['1'\] holds an escape"),
        ([{"p": "\x85"}], r"holds the control character U\+0085"),
    ],
)
def test_preflight_names_where_the_bad_character_is(requests: Any, match: str) -> None:
    with pytest.raises(PreflightError, match=match):
        check_requests(requests)


def test_preflight_passes_what_the_servers_carry() -> None:
    check_requests([{"param": ["2t", 167], "area": "90/-180/-90/180", "grid": 0.25, "x": None}])
    check_environ({"request_id": "r", "user_id": None, "namespace": "ns", "host": "h\tx"})


def test_redact_leaves_plain_text_and_hides_request_line_queries() -> None:
    assert redact("GET /mars?token=Qt7 HTTP/1.1") == "GET /mars?token=*** HTTP/1.1"
    assert redact("what? no URL here") == "what? no URL here"
