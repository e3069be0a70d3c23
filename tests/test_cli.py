"""The ``marsconn`` command, in-process with capsys and a few times as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from marsconn import cli, cli_commands, resolve_plan
from marsconn.core.errors import ConfigError
from marsconn.core.version import __version__
from marsconn.plan import capability
from marsconn.plan import sources as sources_module
from marsconn.plan.settings import MarsSettings
from marsconn.testing import (
    MarsScript,
    PipeMarsServer,
    SilentServer,
    WsMarsServer,
    dead_url,
    expected_data,
    run_in_thread,
)

ROOT = Path(__file__).resolve().parent.parent
WS = ["--set", "use_shares=true", "--set", "force_websocket_mode=true"]
ACCEPTED_URL = "http(s)://host[:port][/path], ws(s)://host[:port][/path], host or host:port"


class NullAudit:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MARS_"):
            monkeypatch.delenv(name)
    # Never this machine's /etc/cads-mars-server.yaml, nor its installed cads-mars-server.
    absent = tmp_path_factory.mktemp("etc") / "cads-mars-server.yaml"
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(absent))
    monkeypatch.setattr(capability, "detect_server_version", lambda package="": None)
    structlog.reset_defaults()
    yield
    # main() configures structlog for the process, bound to this test's stderr.
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MARS_")}


def script(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marsconn.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=cwd,
    )


def error_text(err: ConfigError) -> list[str]:
    """What every command prints on stderr for this library error."""
    head, *rest = str(err).splitlines()
    return [f"marsconn: error: {head}", *rest]


def commands_in(text: str) -> list[list[str]]:
    """The argument lists of every `marsconn ...` command quoted in ``text``."""
    return [shlex.split(m)[1:] for m in re.findall(r"`(marsconn [^`]*)`", text)]


# --- plan ----------------------------------------------------------------------------------------


def test_plan_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--server", "http://a:9000", "--server", "http://b:9000")
    expected = resolve_plan(
        env={}, overrides={"servers": ["http://a:9000", "http://b:9000"]}, logger=NullAudit()
    )
    assert code == 0
    assert out.splitlines() == [
        "mode: pipe (shares_not_requested)",
        "  http://a:9000",
        "  http://b:9000",
        f"fingerprint: {expected.fingerprint}",
    ]
    assert err == ""  # info events are not shown without -v


def test_plan_warnings_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--server", "http://a:9000", "--server", "http://a:9000")
    assert code == 0
    assert "warning" not in out
    assert err.splitlines() == [
        "marsconn: warning: keyword override 'servers[1]': duplicate server http://a:9000 "
        "dropped (first listed at keyword override 'servers[0]')"
    ]


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--json", *WS, "--server", "http://a:9000")
    assert code == 0
    data = json.loads(out)
    assert data["mode"] == "websocket"
    assert data["reason"] == "forced"
    assert [e["url"] for e in data["endpoints"]] == ["ws://a:9001"]
    assert data["endpoints"][0]["derived_from"] == "http://a:9000"
    assert (
        data["fingerprint"]
        == resolve_plan(
            env={},
            overrides={
                "servers": ["http://a:9000"],
                "use_shares": True,
                "force_websocket_mode": True,
            },
            logger=NullAudit(),
        ).fingerprint
    )


def test_plan_explain_names_every_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "cads-mars-server.yaml"
    config.write_text("pipe_port: 9100\nrequest_timeout: 45\n")
    monkeypatch.setenv("MARS_MAX_RETRIES", "4")
    code, out, _ = run(
        capsys, "plan", "--explain", "--config", str(config), "--server", "http://a:9100"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "mode: pipe (requested: pipe)"
    assert lines[1].startswith("reason: shares_not_requested: ")
    assert "  1. http://a:9100   [keyword override 'servers[0]']" in lines
    assert any(
        line.split() == ["max_retries", "=", "4", "[environment", "variable", "MARS_MAX_RETRIES]"]
        for line in lines
    )
    assert any(
        line.startswith("  pipe_port") and f"[{config}:1 (key 'pipe_port')]" in line
        for line in lines
    )
    assert lines[-1].startswith("fingerprint: sha256:")


def test_plan_explain_shows_yaml_values_and_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("retry_backoff: exponential\nshares_dir_mode: '0711'\n")
    monkeypatch.setenv("MARS_CONFIG_FILE", str(config))
    code, out, _ = run(capsys, "plan", "--explain", *WS, "--server", "http://a:9000")
    assert code == 0
    lines = out.splitlines()
    assert f"sources: override, yaml:{config}" in lines
    assert any(
        line.split()[:3] == ["shares_dir_mode", "=", "0o711"]
        and line.endswith(f"[{config}:2 (key 'shares_dir_mode')]")
        for line in lines
    )


def test_server_option_splits_on_commas_as_mars_servers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "plan", "--json", "--server", "h1,h2", "--server", "h3:9000")
    assert code == 0
    data = json.loads(out)
    adaptor = resolve_plan({"mars_servers": "h1,h2,h3:9000"}, env={}, logger=NullAudit())
    assert [e["url"] for e in data["endpoints"]] == adaptor.urls
    assert adaptor.urls == ["http://h1:9000", "http://h2:9000", "http://h3:9000"]
    assert data["fingerprint"] == adaptor.fingerprint
    assert [e["source_text"] for e in data["endpoints"]] == [
        "keyword override 'servers[0]'",
        "keyword override 'servers[1]'",
        "keyword override 'servers[2]'",
    ]


def test_explain_shows_every_rewrite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_WS_SERVERS", "http://mars-1:9000,ws://mars-2:9001")
    code, out, err = run(capsys, "plan", "--explain", *WS)
    assert code == 0
    lines = out.splitlines()
    assert (
        "  1. ws://mars-1:9001 <- http://mars-1:9000   [environment variable MARS_WS_SERVERS[0]]"
        in (lines)
    )
    assert "  2. ws://mars-2:9001   [environment variable MARS_WS_SERVERS[1]]" in lines
    warning = (
        "environment variable MARS_WS_SERVERS[0]: pipe-server URL http://mars-1:9000 used as "
        "ws://mars-1:9001; accepted: ws:// or wss:// URLs of the WebSocket servers"
    )
    assert f"warning: {warning}" in lines
    assert err.splitlines() == [f"marsconn: warning: {warning}"]
    # A bare host in pipe mode gets the pipe port, and --explain says so too.
    code, out, _ = run(capsys, "plan", "--explain", "--server", "mars-3")
    assert "  1. http://mars-3:9000 <- http://mars-3   [keyword override 'servers[0]']" in (
        out.splitlines()
    )


# --- one error format, one stream, JSON always ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["plan"],
        ["plan", "--explain"],
        ["validate"],
        ["probe"],
        ["retrieve", "REQUEST", "--target", "TARGET"],
    ],
)
def test_invalid_configuration_is_reported_alike_by_every_command(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
) -> None:
    request = tmp_path / "r.json"
    request.write_text('{"param": "2t"}')
    argv = [{"REQUEST": str(request), "TARGET": str(tmp_path / "x.grib")}.get(a, a) for a in argv]
    monkeypatch.setenv("MARS_PIPE_PORT", "abc")
    with pytest.raises(ConfigError) as library:
        resolve_plan(env={"MARS_PIPE_PORT": "abc"}, overrides={"servers": "http://a:9000"})
    code, out, err = run(capsys, *argv, "--server", "http://a:9000")
    assert (code, out) == (1, "")
    # The library's own text, header included ("1 problem", not "1 problems").
    assert err.splitlines() == error_text(library.value)
    assert err.startswith("marsconn: error: invalid MARS connection configuration (1 problem):")


@pytest.mark.parametrize("command", ["plan", "validate", "probe", "retrieve"])
def test_json_is_printed_for_invalid_configuration_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    extra = ["r.json", "--target", str(tmp_path / "x")] if command == "retrieve" else []
    if extra:
        (tmp_path / "r.json").write_text("{}")
        extra[0] = str(tmp_path / "r.json")
    code, out, err = run(capsys, command, *extra, "--json", "--set", "pipe_port=70000")
    assert code == 1
    data = json.loads(out)
    assert data["exit_code"] == 1
    assert data["outcome"] == "invalid_configuration"
    assert data["ok"] is False
    assert data["errors"][0] == {
        "source": "keyword override 'pipe_port'",
        "message": "input should be less than or equal to 65535",
        "value": "70000",
        "accepted": "a whole number from 1 to 65535",
    }
    assert err.startswith("marsconn: error: invalid MARS connection configuration")


def test_json_is_printed_for_usage_errors_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--json", "--no-such-option")
    assert code == 2
    assert json.loads(out) == {
        "ok": False,
        "exit_code": 2,
        "outcome": "usage_error",
        "errors": [
            {
                "source": "command line",
                "message": "unrecognized arguments: --no-such-option",
                "value": None,
                "accepted": None,
            }
        ],
        "warnings": [],
    }
    assert "marsconn: error: unrecognized arguments: --no-such-option" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], where: str
) -> None:
    flags = ["-v", "--log-json"]
    command = ["plan", "--server", "http://a:9000"]
    argv = [*flags, *command] if where == "before" else [*command, *flags]
    code, _, err = run(capsys, *argv)
    assert code == 0
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in events] == ["marsconn.plan.resolved"]
    assert events[0]["level"] == "info"


def test_a_global_flag_before_is_kept_when_the_command_does_not_repeat_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "--log-json", "plan", "-v", "--server", "http://a:9000")
    assert code == 0
    assert json.loads(err.splitlines()[0])["event"] == "marsconn.plan.resolved"


# --- usage errors, help, exit codes --------------------------------------------------------------


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "--no-such-option")
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].startswith("usage: marsconn validate ")
    assert "marsconn: error: unrecognized arguments: --no-such-option" in lines
    assert lines[-1] == "run `marsconn validate --help` for help"


def test_marsconn_alone_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert (code, out) == (2, "")
    for info in cli._COMMAND_INFO:
        assert re.search(rf"^\s+{re.escape(info.name)}\s", err, re.MULTILINE), info.name
    assert "exit status:" in err


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    section = out.split("exit status:", 1)[1]
    assert [int(n) for n in re.findall(r"^  (\d+) ", section, re.MULTILINE)] == [
        c for c, _, _ in cli.EXIT_CODES
    ]


@pytest.mark.parametrize("info", cli._COMMAND_INFO, ids=lambda i: i.name)
def test_every_command_has_a_description_and_its_exit_codes(
    capsys: pytest.CaptureFixture[str], info: Any
) -> None:
    code, out, _ = run(capsys, info.name, "--help")
    assert code == 0
    assert " ".join(info.description.split()[:6]) in " ".join(out.split())
    section = out.split("exit status:", 1)[1]
    assert tuple(int(n) for n in re.findall(r"^  (\d+) ", section, re.MULTILINE)) == (
        info.exit_codes
    )
    assert "-v, --verbose" in out  # global options are accepted here too


def test_docs_cli_lists_every_command_and_exit_code() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for code, outcome, _ in cli.EXIT_CODES:
        assert re.search(rf"^\| {code} \| `{outcome}` \|", text, re.MULTILINE), code
    for info in cli._COMMAND_INFO:
        assert f"\n## `marsconn {info.name}`" in text, info.name


@pytest.mark.parametrize("item", ["pipe_port", "=5", " =5"])
def test_set_without_key_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], item: str
) -> None:
    code, out, err = run(capsys, "validate", "--set", item, "--server", "http://a:9000")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"marsconn: error: --set: expects KEY=VALUE (got {item!r}); accepted: a setting name "
        "(see `marsconn schema`), '=' and its value"
    ]


def test_keyboard_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(args: Any, out: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "schema", interrupted)
    code, _, err = run(capsys, "schema")
    assert code == 130
    assert err == "marsconn: interrupted\n"


def test_output_closed_early_exits_141_without_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "marsconn", "schema"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=clean_env(),
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


# --- validate ------------------------------------------------------------------------------------


def test_validate_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "cads-mars-server.yaml"
    config.write_text("use_shares: true\nshares_port: 9101\n")
    code, out, err = run(
        capsys, "validate", "--config", str(config), "--assume-server-version", "0.3.1",
        "--server", "http://a:9000", "--server", "http://b:9000",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("valid: websocket mode (shares_enabled), 2 servers, fingerprint sha256:")
    assert len(out.splitlines()) == 1


def test_validate_says_1_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--server", "http://a:9000")
    assert code == 0
    assert out.startswith("valid: pipe mode (shares_not_requested), 1 server, fingerprint ")


def test_validate_warnings_go_to_stderr_and_are_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        capsys, "validate", "--server", "http://a:9000", "--server", "http://a:9000"
    )
    assert code == 0
    assert out.startswith("valid: pipe mode (shares_not_requested), 1 server, 1 warning, ")
    assert err.splitlines() == [
        "marsconn: warning: keyword override 'servers[1]': duplicate server http://a:9000 "
        "dropped (first listed at keyword override 'servers[0]')"
    ]
    code, out, err = run(
        capsys, "validate", "--strict", "--server", "http://a:9000", "--server", "http://a:9000"
    )
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == (
        "marsconn: error: invalid MARS connection configuration (1 problem):"
    )


def test_missing_config_file_is_a_warning_for_plan_and_an_error_for_validate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "cads-mars-server.yaml"
    monkeypatch.setenv("MARS_CONFIG_FILE", str(missing))
    code, _, err = run(capsys, "plan", "--server", "http://a:9000")
    assert code == 0
    assert err.startswith(
        f"marsconn: warning: environment variable MARS_CONFIG_FILE: names YAML config file "
        f"{str(missing)!r}, which does not exist; it is ignored"
    )
    code, out, err = run(capsys, "validate", "--server", "http://a:9000")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "marsconn: error: invalid MARS connection configuration (1 problem):",
        f"  - environment variable MARS_CONFIG_FILE: YAML config file {str(missing)!r} "
        "does not exist; accepted: the path of a readable YAML file (or leave it unset)",
    ]
    code, out, _ = run(capsys, "validate", "--json", "--server", "http://a:9000")
    assert code == 1
    assert json.loads(out)["errors"][0]["message"] == (
        f"YAML config file {str(missing)!r} does not exist"
    )
    missing.write_text("max_retries: 3\n")
    code, out, _ = run(capsys, "validate", "--server", "http://a:9000")
    assert (code, out.startswith("valid: pipe mode")) == (0, True)


def test_validate_json_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--json", "--server", "http://a:9000")
    assert code == 0
    data = json.loads(out)
    assert data == {
        "valid": True,
        "ok": True,
        "exit_code": 0,
        "outcome": "ok",
        "strict": False,
        "mode": "pipe",
        "requested_mode": "pipe",
        "reason": "shares_not_requested",
        "endpoints": ["http://a:9000"],
        "fingerprint": data["fingerprint"],
        "errors": [],
        "warnings": [],
    }
    assert data["fingerprint"].startswith("sha256:")


def test_validate_fails_when_shares_falls_back_to_pipe_and_its_remedy_works(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_USE_SHARES", "true")
    argv = ["validate", "--server", "http://a:9000"]
    code, out, err = run(capsys, *argv)  # cads-mars-server is not installed here
    assert (code, out) == (1, "")
    problem = next(line for line in err.splitlines() if line.startswith("  - "))
    assert problem.startswith(
        "  - use_shares (environment variable MARS_USE_SHARES): WebSocket (shares) mode is "
        "requested but the plan falls back to pipe mode (server_package_missing): "
    )
    [remedy] = commands_in(problem)
    assert remedy == [*argv, "--assume-server-version", "0.3.0"]
    code, out, _ = run(capsys, *remedy)
    assert code == 0
    assert out.startswith("valid: websocket mode (shares_enabled), 1 server, ")


def test_validate_fails_for_a_too_old_declared_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["validate", "--set", "use_shares=true", "--server", "http://a:9000"]
    code, out, err = run(capsys, *argv, "--assume-server-version", "0.2.9")
    assert (code, out) == (1, "")
    assert "falls back to pipe mode (server_package_too_old)" in err
    assert "marsconn.mode.fallback" in err  # the audit warning, shown without -v
    [remedy] = commands_in(err.split("accepted:", 1)[1])
    assert remedy == [*argv, "--assume-server-version", "0.3.0"]  # the old value replaced
    assert run(capsys, *remedy)[0] == 0
    code, out, _ = run(capsys, *argv, "--assume-server-version", "0.2.9", "--json")
    data = json.loads(out)
    assert (data["valid"], data["mode"], data["requested_mode"]) == (False, "pipe", "websocket")
    assert data["errors"][0]["source"] == "use_shares (keyword override 'use_shares')"


def test_validate_misspelt_yaml_keys_warn_and_fail_under_strict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "cads-mars-server.yaml"
    config.write_text("use_share: true\nmax_retires: 3\nshared_root: /cache\n")
    argv = ["validate", "--config", str(config), "--server", "http://a:9000"]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert ", 2 warnings, " in out
    assert err.splitlines() == [
        f"marsconn: warning: {config}:1 (key 'use_share'): not a key of marsconn or "
        "cads-mars-server, ignored; did you mean 'use_shares'?; accepted: the YAML keys of "
        "`marsconn schema` (x-yaml-key)",
        f"marsconn: warning: {config}:2 (key 'max_retires'): not a key of marsconn or "
        "cads-mars-server, ignored; did you mean 'max_retries'?; accepted: the YAML keys of "
        "`marsconn schema` (x-yaml-key)",
    ]
    code, out, err = run(capsys, *argv, "--strict")
    assert (code, out) == (1, "")
    assert "(2 problems)" in err.splitlines()[0]
    code, out, _ = run(capsys, *argv, "--strict", "--json")
    data = json.loads(out)
    assert [e["source"] for e in data["errors"]] == [
        f"{config}:1 (key 'use_share')",
        f"{config}:2 (key 'max_retires')",
    ]
    assert (data["strict"], data["warnings"]) == (True, [])


def test_validate_fails_on_equal_ports(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_PIPE_PORT", "9001")
    code, out, err = run(capsys, "validate", "--server", "http://a")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "marsconn: error: invalid MARS connection configuration (1 problem):",
        "  - pipe_port (environment variable MARS_PIPE_PORT) and shares_port (default): both "
        "are 9001: a worker's pipe and WebSocket servers cannot listen on one port, and "
        "pipe-server URLs would be turned into WebSocket URLs on the pipe server's port; "
        "accepted: two different ports (by default 9000 and 9001)",
    ]
    # Only a warning for plan: a plan can be made.
    code, _, err = run(capsys, "plan", "--server", "http://a")
    assert code == 0
    assert err.startswith("marsconn: warning: pipe_port (environment variable MARS_PIPE_PORT)")


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ("http://a..b:9000", "impossible host name 'a..b': it has an empty label"),
        ("http://h1,h2:9000", "impossible host name 'h1,h2': it contains ','"),
    ],
)
def test_validate_fails_on_impossible_host_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, listed: str, message: str
) -> None:
    listing = tmp_path / "servers.list"
    listing.write_text(f"{listed}\n")
    code, out, err = run(capsys, "validate", "--server-list", str(listing))
    assert (code, out) == (1, "")
    assert err.splitlines()[1].startswith(f"  - {listing}:1 (server list): {message}")
    code, _, err = run(capsys, "validate", "--server", "a..b")
    assert code == 1
    assert "keyword override 'servers[0]': impossible host name 'a..b'" in err


def test_validate_ws_servers_rewrite_warns_and_fails_under_strict(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_USE_SHARES", "true")
    monkeypatch.setenv("MARS_WS_SERVERS", "http://mars-1:9000")
    argv = ["validate", "--assume-server-version", "0.3.1"]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert out.startswith("valid: websocket mode (shares_enabled), 1 server, 1 warning, ")
    assert err == (
        "marsconn: warning: environment variable MARS_WS_SERVERS[0]: pipe-server URL "
        "http://mars-1:9000 used as ws://mars-1:9001; accepted: ws:// or wss:// URLs of the "
        "WebSocket servers\n"
    )
    assert run(capsys, *argv, "--strict")[0] == 1


@pytest.mark.parametrize(
    ("env", "args", "problem"),
    [
        (
            {"MARS_USE_SHARES": "ture"},
            ["--server", "http://a:9000"],
            "environment variable MARS_USE_SHARES: not a boolean (got 'ture'); "
            "accepted: true/false, 1/0, yes/no, on/off (any case)",
        ),
        (
            {},
            ["--set", "pipe_port=abc", "--server", "http://a:9000"],
            "keyword override 'pipe_port': input should be a valid integer, unable to "
            "parse string as an integer (got 'abc'); accepted: a whole number from 1 to 65535",
        ),
        (
            {},
            ["--server", "ftp://mars.example:21"],
            "keyword override 'servers[0]': unsupported scheme 'ftp' (got "
            f"'ftp://mars.example:21'); accepted: {ACCEPTED_URL}",
        ),
        (
            {"MARS_API_SERVER_LIST": "/nonexistent/marsconn/servers.list"},
            [],
            "environment variable MARS_API_SERVER_LIST: server-list file "
            "'/nonexistent/marsconn/servers.list' does not exist; accepted: the path of a "
            "readable file with one server URL per line",
        ),
    ],
)
def test_validate_invalid_single_problem(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    problem: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "validate", *args)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "marsconn: error: invalid MARS connection configuration (1 problem):",
        f"  - {problem}",
    ]


def test_validate_lists_every_problem_on_its_own_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_USE_SHARES", "ture")
    monkeypatch.setenv("MARS_PIPE_PORT", "abc")
    monkeypatch.setenv("MARS_SHARES_PORT", "70000")
    monkeypatch.setenv("MARS_API_SERVER_LIST", "/nonexistent/marsconn/servers.list")
    code, _, err = run(capsys, "validate")
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == "marsconn: error: invalid MARS connection configuration (4 problems):"
    assert len(lines) == 5
    for name in ("MARS_USE_SHARES", "MARS_PIPE_PORT", "MARS_SHARES_PORT", "MARS_API_SERVER_LIST"):
        assert sum(name in line for line in lines) == 1, err


def test_validate_json_reports_errors_and_warnings_with_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_USE_SHARE", "true")  # a near miss: a warning
    code, out, _ = run(
        capsys, "validate", "--json", "--set", "pipe_port=70000", "--server", "ftp://x"
    )
    assert code == 1
    data = json.loads(out)
    assert (data["valid"], data["exit_code"], data["mode"]) == (False, 1, None)
    assert [(p["source"], p["value"]) for p in data["errors"]] == [
        ("keyword override 'pipe_port'", "70000"),
        ("keyword override 'servers[0]'", "ftp://x"),
    ]
    assert all(set(p) == {"source", "message", "value", "accepted"} for p in data["errors"])
    # Warnings come with the plan; an invalid configuration has none.
    assert data["warnings"] == []
    code, out, _ = run(capsys, "validate", "--json", "--server", "http://a:9000")
    data = json.loads(out)
    assert (code, data["valid"]) == (0, True)
    assert data["warnings"] == [
        {
            "source": "environment variable MARS_USE_SHARE",
            "message": "not a marsconn setting, ignored; did you mean MARS_USE_SHARES?",
            "value": None,
            "accepted": None,
        }
    ]


def test_validate_unknown_setting_suggests_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "validate", "--set", "pipe_prot=1", "--server", "http://a")
    assert code == 1
    assert "did you mean 'pipe_port'?" in err


def test_printed_remedies_are_commands_that_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    texts = []
    texts.append(run(capsys, "validate", "--set", "pipe_prot=1", "--server", "http://a")[2])
    texts.append(run(capsys, "validate", "--set", "pipe_port", "--server", "http://a")[2])
    monkeypatch.setenv("MARS_CONFIG_FILE", str(tmp_path / "nope.yaml"))
    texts.append(run(capsys, "plan", "--server", "http://a")[2])
    monkeypatch.delenv("MARS_CONFIG_FILE")
    texts.append(run(capsys, "validate", "--set", "use_shares=true", "--server", "http://a")[2])
    commands = [c for text in texts for c in commands_in(text)]
    # The fallback's audit event names one too, unquoted, in its remedy.
    [audit_remedy] = re.findall(r"marsconn validate --assume-server-version [0-9.]+", texts[-1])
    commands.append(shlex.split(audit_remedy)[1:])
    assert len(commands) >= 5
    for argv in commands:
        code, _, err = run(capsys, *argv)
        assert code != 2, (argv, err)  # every one is a command line marsconn accepts
        if "--server" in argv and "--assume-server-version" in argv:
            assert code == 0, (argv, err)  # validate's own remedy repeats the command line


# --- schema --------------------------------------------------------------------------------------


def test_schema_has_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    props = schema["properties"]
    assert set(props) == set(MarsSettings.model_fields)
    assert all(p.get("description") for p in props.values())
    assert props["use_shares"]["x-env"] == "MARS_USE_SHARES"
    assert props["pipe_port"]["default"] == 9000
    assert props["servers"]["x-adaptor-key"] == "mars_servers"


def test_schema_descriptions_carry_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    texts = [schema["description"], *(p["description"] for p in schema["properties"].values())]
    for text in texts:
        assert not re.search(r"``|:(func|class|meth|attr|mod|data):`", text), text
    assert schema["description"].startswith("Every setting that decides how marsconn reaches")


# --- probe ---------------------------------------------------------------------------------------


def test_probe_websocket_one_alive(
    capsys: pytest.CaptureFixture[str], mars_ws_server: WsMarsServer
) -> None:
    dead = dead_url()
    code, out, _ = run(capsys, "probe", *WS, "--server", mars_ws_server.url, "--server", dead)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "probing 2 websocket servers"
    assert lines[1].split()[:2] == ["ok", mars_ws_server.url]
    assert "WebSocket handshake completed" in lines[1]
    assert lines[2].split()[:2] == ["FAIL", dead]
    assert "ConnectionRefusedError" in lines[2]


def test_probe_json(capsys: pytest.CaptureFixture[str], mars_ws_server: WsMarsServer) -> None:
    dead = dead_url()
    code, out, _ = run(
        capsys, "probe", "--json", *WS, "--server", mars_ws_server.url, "--server", dead
    )
    assert code == 0
    data = json.loads(out)
    assert (data["ok"], data["exit_code"], data["mode"]) == (True, 0, "websocket")
    results = data["results"]
    assert [(d["server"], d["ok"]) for d in results] == [
        (mars_ws_server.url, True),
        (dead, False),
    ]
    assert all(set(d) == {"server", "ok", "latency_ms", "detail"} for d in results)


def test_probe_pipe(capsys: pytest.CaptureFixture[str], mars_pipe_server: PipeMarsServer) -> None:
    code, out, _ = run(capsys, "probe", "--server", mars_pipe_server.url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "probing 1 pipe server"
    assert lines[1].split()[0] == "ok"
    assert "HEAD / answered HTTP 204" in lines[1]


@pytest.mark.parametrize("mode", ["pipe", "websocket"])
def test_probe_none_answering_exits_4(capsys: pytest.CaptureFixture[str], mode: str) -> None:
    args = WS if mode == "websocket" else []
    scheme = "ws" if mode == "websocket" else "http"
    code, out, err = run(
        capsys, "probe", *args, "--server", dead_url(scheme), "--server", dead_url(scheme)
    )
    assert code == 4
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["FAIL", "FAIL"]
    assert err == "marsconn: error: none of the 2 answered\n"


class _CannedHTTP:
    """A TCP server on 127.0.0.1 that answers every connection with fixed bytes."""

    def __init__(self, answer: bytes) -> None:
        import socketserver

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(1024)
                self.request.sendall(answer)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _CannedHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            "HEAD / answered HTTP 503",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP answer: b'SSH-2.0-OpenSSH_9.6\\r\\n'"),
    ],
)
def test_probe_pipe_server_answering_wrongly_fails(
    capsys: pytest.CaptureFixture[str], answer: bytes, detail: str
) -> None:
    with _CannedHTTP(answer) as canned:
        code, out, _ = run(capsys, "probe", "--json", "--server", canned.url)
    assert code == 4
    [result] = json.loads(out)["results"]
    assert (result["server"], result["ok"]) == (canned.url, False)
    assert result["detail"] == f"ConnectionError: {detail}"


def test_probe_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with run_in_thread(SilentServer()) as silent:
        code, out, _ = run(
            capsys, "probe", "--json", *WS, "--set", "connect_timeout=0.2",
            "--server", silent.url_for("ws"),
        )  # fmt: skip
    assert code == 4
    assert json.loads(out)["results"][0]["detail"] == "no answer within 0.2s"


# --- retrieve ------------------------------------------------------------------------------------


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"param": "2t", "date": "20260101"}))
    return path


@pytest.fixture
def job_target(tmp_path: Path) -> Path:
    job = tmp_path / "job"
    job.mkdir()
    return job / "data.grib"


def test_retrieve_websocket(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server_factory: Callable[..., WsMarsServer],
    request_file: Path,
    job_target: Path,
) -> None:
    server = mars_ws_server_factory(
        MarsScript(log_lines=["mars - INFO - Retrieving 1 field"], output_size=5000, seed=4)
    )
    code, out, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target), *WS,
        "--server", server.url, "--user-id", "0000-abcd-ef12", "--namespace", "cads",
    )  # fmt: skip
    assert code == 0, err
    assert job_target.read_bytes() == expected_data(5000, seed=4)
    assert out.startswith(f"ok: 5000 bytes written to {job_target} by {server.url} in ")
    assert out.rstrip().endswith("(1 attempt)")
    assert "mars - INFO - Retrieving 1 field" in err  # progress lines, not a terminal
    job = server.jobs[0]
    assert job.requests == [{"param": "2t", "date": "20260101"}]
    sent = Path(job.target)
    assert sent.parent.parent == job_target.parent
    assert not sent.parent.exists()
    assert job.environ["user_id"] == "0000-abcd-ef12"
    assert job.environ["namespace"] == "cads"
    assert job.environ["username"] == "cads:ef12"
    assert job.environ["host"] == os.uname().nodename
    assert len(job.environ["request_id"]) == 36


FIXED_ID = "00000000-0000-4000-8000-0000000f1bed"  # a request id of the servers' form


def test_retrieve_json_and_environ_file(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server: WsMarsServer,
    request_file: Path,
    job_target: Path,
    tmp_path: Path,
) -> None:
    environ = tmp_path / "environ.json"
    environ.write_text(json.dumps({"request_id": FIXED_ID, "host": "adaptor-7"}))
    code, out, _ = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target),
        "--environ", str(environ), "--json", *WS, "--server", mars_ws_server.url,
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert (data["ok"], data["exit_code"], data["outcome"]) == (True, 0, "ok")
    assert data["bytes"] == 1024
    assert data["server"] == mars_ws_server.url
    assert mars_ws_server.jobs[0].environ["request_id"] == FIXED_ID
    assert mars_ws_server.jobs[0].environ["host"] == "adaptor-7"


def test_retrieve_mars_rejection_exits_3(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server_factory: Callable[..., WsMarsServer],
    request_file: Path,
    job_target: Path,
) -> None:
    server = mars_ws_server_factory(MarsScript(log_lines=["mars - ERROR - bad"], returncode=1))
    code, out, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target), *WS,
        "--server", server.url,
    )  # fmt: skip
    assert (code, out) == (3, "")
    assert f"marsconn: error: MARS exited with code 1 on {server.url}" in err
    assert not job_target.exists()


def test_retrieve_no_server_exits_4(
    capsys: pytest.CaptureFixture[str], request_file: Path, job_target: Path
) -> None:
    code, out, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target), *WS,
        "--set", "max_retries=1", "--set", "retry_delay=0",
        "--server", dead_url(), "--server", dead_url(), "--json",
    )  # fmt: skip
    assert code == 4
    assert json.loads(out)["outcome"] == "no_server"
    assert "marsconn: error: no server ran the job after 1 pass over 2 servers" in err


def test_retrieve_no_output_exits_7(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server_factory: Callable[..., WsMarsServer],
    request_file: Path,
    job_target: Path,
) -> None:
    server = mars_ws_server_factory(MarsScript(write_file=False))
    code, _, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target), *WS,
        "--set", "target_settle_time=0.1", "--server", server.url,
    )  # fmt: skip
    assert code == 7
    assert "is missing after waiting" in err


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        ('{"param": ', "request file {path}:1", "invalid JSON: Expecting value (column 11)"),
        ("[]", "request file {path}", "a JSON list, not a request"),
        ('[{"a": 1}, 2]', "request file {path}", "a JSON list, not a request"),
        ('"2t"', "request file {path}", "a JSON str, not a request"),
    ],
)
def test_bad_request_file_is_unusable_input_not_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    job_target: Path,
    content: str,
    where: str,
    message: str,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, out, err = run(
        capsys, "retrieve", str(bad), "--target", str(job_target), "--server", "http://a:9000"
    )
    assert (code, out) == (6, "")
    assert err.splitlines() == [
        f"marsconn: error: {where.format(path=bad)}: {message}; accepted: a JSON object of "
        "MARS keywords, or a non-empty list of them"
    ]


def test_missing_request_file_is_unusable_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, job_target: Path
) -> None:
    missing = tmp_path / "nope.json"
    code, _, err = run(
        capsys, "retrieve", str(missing), "--target", str(job_target), "--server", "http://a",
        "--json",
    )  # fmt: skip
    assert code == 6
    assert err.startswith(
        f"marsconn: error: request file {missing}: cannot be read: No such file or directory"
    )
    assert "usage:" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "invalid JSON"), ("[1, 2]", "a JSON list, not an object")],
)
def test_bad_environ_file_is_unusable_input(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server: WsMarsServer,
    request_file: Path,
    job_target: Path,
    tmp_path: Path,
    content: str,
    message: str,
) -> None:
    environ = tmp_path / "environ.json"
    environ.write_text(content)
    code, out, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target),
        "--environ", str(environ), *WS, "--server", mars_ws_server.url, "--json",
    )  # fmt: skip
    assert code == 6
    assert json.loads(out)["outcome"] == "unusable_input"
    assert err.startswith(f"marsconn: error: environ file {environ}")
    assert message in err
    assert mars_ws_server.jobs == []


def test_missing_target_directory_is_unusable_input(
    capsys: pytest.CaptureFixture[str], mars_ws_server: WsMarsServer, request_file: Path
) -> None:
    code, out, err = run(
        capsys, "retrieve", str(request_file), "--target", "/nonexistent-marsconn/data.grib",
        *WS, "--server", mars_ws_server.url,
    )  # fmt: skip
    assert (code, out) == (6, "")
    [line] = err.splitlines()
    assert line.startswith("marsconn: error: --target /nonexistent-marsconn/data.grib: ")
    assert "does not exist" in line
    assert mars_ws_server.jobs == []


def test_retrieve_with_invalid_configuration_exits_1(
    capsys: pytest.CaptureFixture[str], request_file: Path, job_target: Path
) -> None:
    code, _, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target),
        "--set", "max_retries=0", "--server", "http://a:9000",
    )  # fmt: skip
    assert code == 1
    assert "keyword override 'max_retries'" in err


def test_progress_on_a_terminal_draws_a_status_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with cli_commands._Progress(stream) as progress:
        assert progress.handler("mars - INFO - 10%", None, None) == "mars - INFO - 10%"
        text = stream.getvalue()
        assert "1 log line  mars - INFO - 10%" in text
        assert progress.handler("mars - INFO - 20%", None, None) == "mars - INFO - 20%"
    text = stream.getvalue()
    assert "2 log lines  mars - INFO - 20%" in text
    assert text.endswith("\r\x1b[2K")
    assert progress.lines == 2


def test_retrieve_filters_noise_from_the_progress_lines(
    capsys: pytest.CaptureFixture[str], mars_ws_server_factory: Any, tmp_path: Path
) -> None:
    server = mars_ws_server_factory(
        MarsScript(log_lines=["mars - INFO - Welcome", "mars - INFO - Transfering 5 bytes"])
    )
    request = tmp_path / "r.json"
    request.write_text('{"param": "2t"}')
    job = tmp_path / "job"
    job.mkdir()
    code, _, err = run(
        capsys, "retrieve", str(request), "--target", str(job / "data.grib"),
        "--server", server.url, *WS,
    )  # fmt: skip
    assert code == 0
    assert "Transfering 5 bytes" in err
    assert "Welcome" not in err


# --- demo ----------------------------------------------------------------------------------------


def test_demo_websocket(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--mode", "websocket")
    assert code == 0
    assert "=== WebSocket (shares) mode ===" in out
    assert "mode: websocket (requested: websocket)" in out
    assert "(connect_refused)" in out
    assert "result: ok, 262144 bytes in data.grib" in out
    trail = out.split("audit trail:", 1)[1]
    for event in (
        "marsconn.plan.resolved",
        "marsconn.attempt.failed",
        "marsconn.server.ejected",
        "marsconn.failover",
        "marsconn.attempt.succeeded",
        "marsconn.job.finished",
    ):
        assert event in trail
    assert out.rstrip().endswith("demo succeeded")


def test_demo_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "=== pipe mode ===" in out
    assert out.count("content: byte for byte what the server sent") == 2
    assert out.rstrip().endswith("demo succeeded")


# --- what ships with marsconn: example configuration and docs ---------------------------------


def test_example_config_lists_prints_and_writes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "example-config")
    assert code == 0
    for name in cli_commands.EXAMPLES:
        assert f"  {name} " in out
    code, out, _ = run(capsys, "example-config", "cads-mars-server.yaml")
    assert code == 0
    assert out == (ROOT / "config" / "cads-mars-server.yaml").read_text()

    code, out, _ = run(capsys, "example-config", "--write", str(tmp_path))
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cli_commands.EXAMPLES)
    assert (tmp_path / "servers.list").read_bytes() == (
        ROOT / "config" / "servers.list"
    ).read_bytes()
    assert f"MARS_API_SERVER_LIST={tmp_path}/servers.list" in (tmp_path / "shares.env").read_text()
    # The printed check works from any directory.
    monkeypatch.chdir(tmp_path.parent)
    [check] = [shlex.split(line.split(": ", 1)[1]) for line in out.splitlines() if "check" in line]
    code, out, err = run(capsys, *check[1:])
    assert code == 0, err
    assert out.startswith("valid: websocket mode (shares_enabled), 4 servers, ")

    code, _, err = run(capsys, "example-config", "--write", str(tmp_path))
    assert code == 6
    assert "already has cads-mars-server.yaml, servers.list, shares.env; nothing written" in err
    assert run(capsys, "example-config", "--write", str(tmp_path / "nope"))[0] == 6
    assert run(capsys, "example-config", "nope.yaml")[0] == 2
    assert run(capsys, "example-config", "servers.list", "--write", str(tmp_path))[0] == 2


def test_docs_lists_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    # The source tree's docs/, or the copy an installed wheel carries (marsconn/_docs).
    folder = cli_commands._shipped("_docs", "docs")
    assert folder in (ROOT / "docs", Path(cli_commands.__file__).parent / "_docs")
    code, out, _ = run(capsys, "docs")
    assert code == 0
    assert f"marsconn's documentation is in {folder}" in out
    assert f"  {folder / 'cli.md'}" in out.splitlines()
    code, out, _ = run(capsys, "docs", "cli")
    assert (code, out) == (0, (ROOT / "docs" / "cli.md").read_text())
    assert run(capsys, "docs", "cli.md")[0] == 0
    assert run(capsys, "docs", "nope")[0] == 2


def test_shipped_files_are_found_in_a_wheel_a_source_tree_or_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An installed wheel: marsconn/_docs inside the package.
    wheel = tmp_path / "site-packages" / "marsconn"
    (wheel / "_docs").mkdir(parents=True)
    (wheel / "_docs" / "cli.md").write_text("# cli\n")
    monkeypatch.setattr(cli_commands, "__file__", str(wheel / "cli_commands.py"))
    assert cli_commands._shipped("_docs", "docs") == wheel / "_docs"
    code, out, _ = run(capsys, "docs", "cli")
    assert (code, out) == (0, "# cli\n")
    # Neither: the docs' address, and a clear error for the examples.
    monkeypatch.setattr(
        cli_commands, "__file__", str(tmp_path / "bare" / "marsconn" / "cli_commands.py")
    )
    assert cli_commands._shipped("_docs", "docs") is None
    code, out, _ = run(capsys, "docs")
    assert (code, out) == (
        0,
        f"no copy of the documentation is installed; it is at {cli_commands.DOCS_URL}\n",
    )
    code, _, err = run(capsys, "example-config")
    assert code == 6
    assert err.startswith("marsconn: error: example configuration: not found next to this")


# --- the real console script ---------------------------------------------------------------------


def test_module_entry_point_version() -> None:
    proc = script("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"marsconn {__version__}"


def test_module_entry_point_invalid_and_usage() -> None:
    invalid = script("validate", "--set", "pipe_port=abc", "--server", "http://a:9000")
    assert (invalid.returncode, invalid.stdout) == (1, "")
    assert invalid.stderr.startswith("marsconn: error: invalid MARS connection configuration")
    usage = script("validate", "--bogus")
    assert usage.returncode == 2
    assert "marsconn: error: unrecognized arguments: --bogus" in usage.stderr


def test_python_dash_m_marsconn() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "marsconn", "validate", "--server", "http://a:9000", "-v"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("valid: pipe mode (shares_not_requested), 1 server")
    assert "marsconn.plan.resolved" in proc.stderr
