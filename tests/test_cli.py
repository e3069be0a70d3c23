"""The ``marsconn`` command, in-process with capsys and a few times as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from marsconn import __version__, cli, resolve_plan
from marsconn.settings import MarsSettings
from marsconn.testing import (
    MarsScript,
    PipeMarsServer,
    SilentServer,
    WsMarsServer,
    dead_url,
    expected_data,
    run_in_thread,
)

WS = ["--set", "use_shares=true", "--set", "force_websocket_mode=true"]


class NullAudit:
    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MARS_"):
            monkeypatch.delenv(name)
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


def script(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marsconn.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )


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


def test_plan_text_shows_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--server", "http://a:9000", "--server", "http://a:9000")
    assert code == 0
    assert "warning: duplicate server http://a:9000" in out


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--json", *WS, "--server", "http://a:9000")
    assert code == 0
    data = json.loads(out)
    assert data["mode"] == "websocket"
    assert data["reason"] == "forced"
    assert [e["url"] for e in data["endpoints"]] == ["ws://a:9001"]
    assert data["endpoints"][0]["derived_from"] == "http://a:9000"
    assert data["fingerprint"].startswith("sha256:")
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
    assert any(
        line.startswith("  request_timeout") and f"[{config}:2 (key 'request_timeout')]" in line
        for line in lines
    )
    assert lines[-1].startswith("fingerprint: sha256:")


def test_plan_with_invalid_configuration_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_PIPE_PORT", "abc")
    code, out, err = run(capsys, "plan", "--server", "http://a:9000")
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "invalid configuration (1 problems):"
    assert lines[1].startswith("  environment variable MARS_PIPE_PORT: ")
    assert "(got 'abc')" in lines[1]


def test_verbose_json_audit_events_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--log-json", "-v", "plan", "--server", "http://a:9000")
    assert code == 0
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in events] == ["marsconn.plan.resolved"]
    assert events[0]["level"] == "info"
    assert events[0]["endpoint_count"] == 1


# --- validate ------------------------------------------------------------------------------------


def test_validate_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "cads-mars-server.yaml"
    config.write_text("use_shares: true\nshares_port: 9101\n")
    code, out, _ = run(
        capsys,
        "validate",
        "--config",
        str(config),
        "--assume-server-version",
        "0.3.1",
        "--server",
        "http://a:9000",
        "--server",
        "http://b:9000",
    )
    assert code == 0
    assert out.startswith("valid: websocket mode (shares_enabled), 2 servers, fingerprint sha256:")
    assert len(out.splitlines()) == 1


def test_missing_config_file_is_a_warning_for_plan_and_an_error_for_validate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "cads-mars-server.yaml"
    monkeypatch.setenv("MARS_CONFIG_FILE", str(missing))
    code, out, _ = run(capsys, "plan", "--server", "http://a:9000")
    assert code == 0
    assert (
        f"warning: environment variable MARS_CONFIG_FILE names YAML config file "
        f"{str(missing)!r}, which does not exist; it is ignored"
    ) in out
    code, out, _ = run(capsys, "validate", "--server", "http://a:9000")
    assert code == 1
    assert out.splitlines() == [
        f"error: environment variable MARS_CONFIG_FILE: YAML config file {str(missing)!r} "
        "does not exist; accepted: the path of a readable YAML file (or leave it unset)"
    ]
    code, out, _ = run(capsys, "validate", "--json", "--server", "http://a:9000")
    assert code == 1
    assert json.loads(out)["problems"][0]["message"] == (
        f"YAML config file {str(missing)!r} does not exist"
    )
    missing.write_text("max_retries: 3\n")
    code, out, _ = run(capsys, "validate", "--server", "http://a:9000")
    assert (code, out.startswith("valid: pipe mode")) == (0, True)


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
        line.startswith("failover: 10 passes; no sleep between servers; backoff") for line in lines
    )
    assert any(
        line.split()[:3] == ["shares_dir_mode", "=", "0o711"]
        and line.endswith(f"[{config}:2 (key 'shares_dir_mode')]")
        for line in lines
    )


def test_validate_text_shows_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "validate", "--server", "http://a:9000", "--server", "http://a:9000"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("warning: duplicate server http://a:9000 at keyword override")
    assert lines[1].startswith("valid: pipe mode (shares_not_requested), 1 servers")


def test_validate_json_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--json", "--server", "http://a:9000")
    assert code == 0
    data = json.loads(out)
    assert data == {
        "valid": True,
        "mode": "pipe",
        "reason": "shares_not_requested",
        "endpoints": ["http://a:9000"],
        "warnings": [],
        "fingerprint": data["fingerprint"],
    }
    assert data["fingerprint"].startswith("sha256:")


def test_validate_reports_a_too_old_server_as_valid_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        capsys,
        "validate",
        "--set",
        "use_shares=true",
        "--assume-server-version",
        "0.2.9",
        "--server",
        "http://a:9000",
    )
    assert code == 0
    assert out.startswith("valid: pipe mode (server_package_too_old), 1 servers")
    assert "marsconn.mode.fallback" in err  # a warning: shown without -v


@pytest.mark.parametrize(
    ("env", "args", "problem"),
    [
        (
            {"MARS_USE_SHARES": "ture"},
            ["--server", "http://a:9000"],
            "error: environment variable MARS_USE_SHARES: not a boolean (got 'ture'); "
            "accepted: true/false, 1/0, yes/no, on/off (any case)",
        ),
        (
            {},
            ["--set", "pipe_port=abc", "--server", "http://a:9000"],
            "error: keyword override 'pipe_port': input should be a valid integer, unable to "
            "parse string as an integer (got 'abc'); accepted: a whole number from 1 to 65535",
        ),
        (
            {"MARS_SHARES_PORT": "70000"},
            ["--server", "http://a:9000"],
            "error: environment variable MARS_SHARES_PORT: input should be less than or equal "
            "to 65535 (got '70000'); accepted: a whole number from 1 to 65535",
        ),
        (
            {},
            ["--server", "ftp://mars.example:21"],
            "error: keyword override 'servers[0]': unsupported scheme 'ftp' (got "
            "'ftp://mars.example:21'); accepted: http(s)://host[:port][/path], "
            "ws(s)://host[:port][/path], host or host:port",
        ),
        (
            {"MARS_API_SERVER_LIST": "/nonexistent/marsconn/servers.list"},
            [],
            "error: environment variable MARS_API_SERVER_LIST: server-list file "
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
    code, out, _ = run(capsys, "validate", *args)
    assert code == 1
    assert out.splitlines() == [problem]


def test_validate_lists_every_problem_on_its_own_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_USE_SHARES", "ture")
    monkeypatch.setenv("MARS_PIPE_PORT", "abc")
    monkeypatch.setenv("MARS_SHARES_PORT", "70000")
    monkeypatch.setenv("MARS_API_SERVER_LIST", "/nonexistent/marsconn/servers.list")
    code, out, _ = run(capsys, "validate")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("error: ") for line in lines)
    joined = "\n".join(lines)
    for name in ("MARS_USE_SHARES", "MARS_PIPE_PORT", "MARS_SHARES_PORT", "MARS_API_SERVER_LIST"):
        assert sum(name in line for line in lines) == 1, joined


def test_validate_list_file_problem_names_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    listing = tmp_path / "servers.list"
    listing.write_text("# MARS workers\nhttp://a:9000\nftp://b:21\n")
    code, out, _ = run(capsys, "validate", "--server-list", str(listing))
    assert code == 1
    assert out.splitlines() == [
        f"error: {listing}:3 (server list): unsupported scheme 'ftp' (got 'ftp://b:21'); "
        "accepted: http(s)://host[:port][/path], ws(s)://host[:port][/path], host or host:port"
    ]


def test_validate_json_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "validate", "--json", "--set", "pipe_port=70000", "--server", "ftp://x"
    )
    assert code == 1
    data = json.loads(out)
    assert data["valid"] is False
    assert [(p["where"], p["value"]) for p in data["problems"]] == [
        ("keyword override 'pipe_port'", "70000"),
        ("keyword override 'servers[0]'", "ftp://x"),
    ]
    assert all(set(p) == {"where", "message", "value", "accepted"} for p in data["problems"])


def test_validate_unknown_setting_suggests_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--set", "pipe_prot=1", "--server", "http://a")
    assert code == 1
    assert "did you mean 'pipe_port'?" in out


# --- usage errors --------------------------------------------------------------------------------


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["validate", "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


@pytest.mark.parametrize("item", ["pipe_port", "=5", " =5"])
def test_set_without_key_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], item: str
) -> None:
    code, out, err = run(capsys, "validate", "--set", item, "--server", "http://a:9000")
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == f"marsconn: error: --set expects KEY=VALUE, got {item!r}"
    assert err.startswith("usage: marsconn")


def test_keyboard_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "schema", interrupted)
    code, _, err = run(capsys, "schema")
    assert code == 130
    assert err == "interrupted\n"


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
    assert props["pipe_port"]["maximum"] == 65535
    assert props["servers"]["x-adaptor-key"] == "mars_servers"


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
    assert [(d["server"], d["ok"]) for d in data] == [(mars_ws_server.url, True), (dead, False)]
    assert all(set(d) == {"server", "ok", "latency_ms", "detail"} for d in data)
    assert all(d["latency_ms"] >= 0 for d in data)


def test_probe_pipe(capsys: pytest.CaptureFixture[str], mars_pipe_server: PipeMarsServer) -> None:
    code, out, _ = run(
        capsys, "probe", "--server", mars_pipe_server.url, "--server", dead_url("http")
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "probing 2 pipe servers"
    assert lines[1].split()[0] == "ok"
    assert "HEAD / answered HTTP 204" in lines[1]
    assert lines[2].split()[0] == "FAIL"


@pytest.mark.parametrize("mode", ["pipe", "websocket"])
def test_probe_none_answering_exits_1(capsys: pytest.CaptureFixture[str], mode: str) -> None:
    args = WS if mode == "websocket" else []
    scheme = "ws" if mode == "websocket" else "http"
    code, out, _ = run(
        capsys, "probe", *args, "--server", dead_url(scheme), "--server", dead_url(scheme)
    )
    assert code == 1
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["FAIL", "FAIL"]


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
    assert code == 1
    assert json.loads(out) == [
        {
            "server": canned.url,
            "ok": False,
            "latency_ms": json.loads(out)[0]["latency_ms"],
            "detail": f"ConnectionError: {detail}",
        }
    ]


def test_probe_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with run_in_thread(SilentServer()) as silent:
        code, out, _ = run(
            capsys, "probe", "--json", *WS, "--set", "connect_timeout=0.2",
            "--server", silent.url_for("ws"),
        )  # fmt: skip
    assert code == 1
    assert json.loads(out)[0]["detail"] == "no answer within 0.2s"


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
        capsys,
        "retrieve",
        str(request_file),
        "--target",
        str(job_target),
        *WS,
        "--server",
        server.url,
        "--user-id",
        "0000-abcd-ef12",
        "--namespace",
        "cads",
    )
    assert code == 0, err
    assert job_target.read_bytes() == expected_data(5000, seed=4)
    assert out.startswith(f"ok: 5000 bytes written to {job_target} by {server.url} in ")
    assert out.rstrip().endswith("(1 attempt)")
    assert "mars - INFO - Retrieving 1 field" in err  # progress lines, not a terminal
    job = server.jobs[0]
    assert job.requests == [{"param": "2t", "date": "20260101"}]
    # The server is sent a private directory beside the target, gone once the job is done.
    sent = Path(job.target)
    assert sent.name == "data.grib"
    assert sent.parent.parent == job_target.parent
    assert sent.parent.name.startswith(f".marsconn-{job_target.name}.")
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
        capsys,
        "retrieve",
        str(request_file),
        "--target",
        str(job_target),
        "--environ",
        str(environ),
        "--json",
        *WS,
        "--server",
        mars_ws_server.url,
    )
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert data["bytes"] == 1024
    assert data["server"] == mars_ws_server.url
    assert data["mode"] == "websocket"
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
    assert code == 3
    assert out == ""
    assert f"failed: MARS exited with code 1 on {server.url}" in err
    assert not job_target.exists()


def test_retrieve_no_server_exits_4(
    capsys: pytest.CaptureFixture[str], request_file: Path, job_target: Path
) -> None:
    code, _, err = run(
        capsys,
        "retrieve",
        str(request_file),
        "--target",
        str(job_target),
        *WS,
        "--set",
        "max_retries=1",
        "--set",
        "retry_delay=0",
        "--server",
        dead_url(),
        "--server",
        dead_url(),
    )
    assert code == 4
    assert "failed: no server ran the job after 1 passes over 2 servers" in err


def test_retrieve_missing_output_exits_5(
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
    assert code == 5
    assert "is missing after waiting" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"param": ', "invalid JSON"),
        ("[]", "expected a request object or a non-empty list of them"),
        ('[{"a": 1}, 2]', "expected a request object or a non-empty list of them"),
        ('"2t"', "expected a request object"),
    ],
)
def test_retrieve_bad_request_file_exits_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    job_target: Path,
    content: str,
    message: str,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = run(
        capsys, "retrieve", str(bad), "--target", str(job_target), "--server", "http://a:9000"
    )
    assert code == 2
    assert message in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith(f"marsconn: error: {bad}")


def test_retrieve_missing_request_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, job_target: Path
) -> None:
    code, _, err = run(
        capsys, "retrieve", str(tmp_path / "nope.json"), "--target", str(job_target),
        "--server", "http://a:9000",
    )  # fmt: skip
    assert code == 2
    assert "cannot read" in err


def test_retrieve_bad_environ_file_exits_2(
    capsys: pytest.CaptureFixture[str],
    mars_ws_server: WsMarsServer,
    request_file: Path,
    job_target: Path,
    tmp_path: Path,
) -> None:
    environ = tmp_path / "environ.json"
    environ.write_text("{not json")
    code, _, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target),
        "--environ", str(environ), *WS, "--server", mars_ws_server.url,
    )  # fmt: skip
    assert code == 2
    assert f"--environ {environ}" in err
    assert mars_ws_server.jobs == []


@pytest.mark.parametrize("content", ["[1, 2]", '"text"'])
def test_retrieve_environ_file_not_an_object_exits_2(
    capsys: pytest.CaptureFixture[str],
    request_file: Path,
    job_target: Path,
    tmp_path: Path,
    content: str,
) -> None:
    environ = tmp_path / "environ.json"
    environ.write_text(content)
    code, _, err = run(
        capsys, "retrieve", str(request_file), "--target", str(job_target),
        "--environ", str(environ), *WS, "--server", dead_url(),
    )  # fmt: skip
    assert code == 2
    assert f"--environ {environ}" in err


def test_retrieve_target_directory_missing_exits_2(
    capsys: pytest.CaptureFixture[str], mars_ws_server: WsMarsServer, request_file: Path
) -> None:
    code, _, err = run(
        capsys, "retrieve", str(request_file), "--target", "/nonexistent-marsconn/data.grib",
        *WS, "--server", mars_ws_server.url,
    )  # fmt: skip
    assert code == 2
    assert "does not exist" in err
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
    with cli._Progress(stream) as progress:
        assert progress.handler("mars - INFO - 10%", None, None) == "mars - INFO - 10%"
        assert progress.handler("mars - INFO - 20%", None, None) == "mars - INFO - 20%"
    text = stream.getvalue()
    assert "2 log lines  mars - INFO - 20%" in text
    assert text.endswith("\r\x1b[2K")
    assert progress.lines == 2


# --- demo ----------------------------------------------------------------------------------------


def test_demo_websocket(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--mode", "websocket")
    assert code == 0
    assert "=== WebSocket (shares) mode ===" in out
    assert "mode: websocket (requested: websocket)" in out
    assert "fingerprint: sha256:" in out
    assert "(connect_refused)" in out
    assert "result: ok, 262144 bytes in data.grib" in out
    assert "audit trail:" in out
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
    assert "  | mars - WARN" in out  # kept log lines are shown as they arrive
    assert out.rstrip().endswith("demo succeeded")


# --- the real console script ---------------------------------------------------------------------


def test_module_entry_point_version() -> None:
    proc = script("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"marsconn {__version__}"


def test_module_entry_point_plan_json() -> None:
    proc = script("plan", "--json", "--server", "http://a:9000")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["endpoints"][0]["url"] == "http://a:9000"


def test_module_entry_point_invalid_and_usage() -> None:
    invalid = script("validate", "--set", "pipe_port=abc", "--server", "http://a:9000")
    assert invalid.returncode == 1
    assert invalid.stdout.startswith("error: keyword override 'pipe_port'")
    usage = script("validate", "--set", "pipe_port")
    assert usage.returncode == 2
    assert "--set expects KEY=VALUE" in usage.stderr


def test_python_dash_m_marsconn() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "marsconn", "validate", "--server", "http://a:9000"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("valid: pipe mode (shares_not_requested), 1 servers")


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
    code = cli.main(
        [
            "retrieve",
            str(request),
            "--target",
            str(job / "data.grib"),
            "--server",
            server.url,
            "--set",
            "use_shares=true",
            "--set",
            "force_websocket_mode=true",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "Transfering 5 bytes" in err
    assert "Welcome" not in err


def test_demo_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "=== WebSocket (shares) mode ===" in out
    assert "=== pipe mode ===" in out
    assert "mode: pipe (requested: pipe)" in out
    assert out.count("content: byte for byte what the server sent") == 2
    assert out.count("(connect_refused)") == 2
    assert out.rstrip().endswith("demo succeeded")
