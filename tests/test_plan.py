"""The ConnectionPlan: mode decision, server sources, provenance, fingerprint, audit, errors."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from marsconn.core.errors import ConfigError
from marsconn.plan import capability
from marsconn.plan import sources as sources_module
from marsconn.plan.endpoints import Endpoint, parse_server_url
from marsconn.plan.model import ConnectionPlan, FailoverPolicy, Mode, Reason, Timeouts
from marsconn.plan.provenance import Provenance, SourceKind
from marsconn.plan.resolve import resolve_plan

ROOT = Path(__file__).resolve().parent.parent
BOOL = "true/false, 1/0, yes/no, on/off (any case)"
PORT = "a whole number from 1 to 65535"
ACCEPTED_URL = "http(s)://host[:port][/path], ws(s)://host[:port][/path], host or host:port"
ACCEPTED_SOURCES = (
    "mars_servers in the adaptor config, a server-list file (MARS_API_SERVER_LIST or "
    "mars_server_list), MARS_WS_SERVERS in WebSocket mode, or a default list file"
)

#: A CA certificate (a test CA made by trustme), for settings that need a real PEM file.
CA_PEM = str(Path(__file__).resolve().parent / "data" / "ca.pem")


class Quiet:
    """An audit logger that records events instead of printing them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No /etc/cads-mars-server.yaml, and no installed cads-mars-server unless a test says so."""
    absent = tmp_path_factory.mktemp("etc") / "cads-mars-server.yaml"
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(absent))

    def not_installed(name: str) -> str:
        raise capability.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(capability.metadata, "version", not_installed)


def installed(monkeypatch: pytest.MonkeyPatch, version: str) -> list[str]:
    """Pretend cads-mars-server ``version`` is installed; returns the lookups made."""
    asked: list[str] = []

    def fake(name: str) -> str:
        asked.append(name)
        return version

    monkeypatch.setattr(capability.metadata, "version", fake)
    return asked


def must_not_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> str:
        raise AssertionError("the installed version was looked up")

    monkeypatch.setattr(capability.metadata, "version", fail)


def resolve(config: Mapping[str, Any] | None = None, **kwargs: Any) -> ConnectionPlan:
    kwargs.setdefault("env", {})
    kwargs.setdefault("default_list_files", ())
    kwargs.setdefault("logger", Quiet())
    return resolve_plan(config, **kwargs)


def problems(config: Mapping[str, Any] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve(config, **kwargs)
    return [str(p) for p in info.value.problems]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SHARES = {"MARS_USE_SHARES": "true"}
ONE = {"mars_servers": "http://mars-1:9000"}


# --- the mode decision, one test per reason code --------------------------------------------


def test_shares_not_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    must_not_detect(monkeypatch)
    plan = resolve(ONE)
    assert (plan.mode, plan.requested_mode, plan.reason) == (
        Mode.PIPE,
        Mode.PIPE,
        Reason.SHARES_NOT_REQUESTED,
    )
    assert plan.reason_text == "WebSocket (shares) mode was not requested"
    assert (plan.server_version, plan.server_version_source) == (None, "not checked")
    assert plan.urls == ["http://mars-1:9000"]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.0rc1", "0.3.0.dev1+g1234567", "999"])
def test_shares_enabled_with_detected_version(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    asked = installed(monkeypatch, version)
    plan = resolve(ONE, env=SHARES)
    assert asked == ["cads-mars-server"]
    assert (plan.mode, plan.requested_mode, plan.reason) == (
        Mode.WEBSOCKET,
        Mode.WEBSOCKET,
        Reason.SHARES_ENABLED,
    )
    assert plan.reason_text == (
        f"shares requested and cads-mars-server {version} (detected) >= 0.3.0"
    )
    assert (plan.server_version, plan.server_version_source) == (version, "detected")
    assert plan.urls == ["ws://mars-1:9001"]


def test_declared_version_replaces_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    must_not_detect(monkeypatch)
    plan = resolve(ONE, env=SHARES, server_version="0.3.1")
    assert (plan.mode, plan.reason) == (Mode.WEBSOCKET, Reason.SHARES_ENABLED)
    assert plan.reason_text == "shares requested and cads-mars-server 0.3.1 (declared) >= 0.3.0"
    assert (plan.server_version, plan.server_version_source) == ("0.3.1", "declared")


def test_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    must_not_detect(monkeypatch)
    plan = resolve(ONE, env={**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "yes"})
    assert (plan.mode, plan.reason) == (Mode.WEBSOCKET, Reason.FORCED)
    assert plan.reason_text == "WebSocket mode forced: the server version check was skipped"
    assert (plan.server_version, plan.server_version_source) == (None, "not checked")
    # Forced wins over a declared version that is too old.
    assert (
        resolve(ONE, env={**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "1"}, server_version="0.1").reason
        is Reason.FORCED
    )


def test_server_package_missing() -> None:
    plan = resolve(ONE, env=SHARES)
    assert (plan.mode, plan.requested_mode, plan.reason) == (
        Mode.PIPE,
        Mode.WEBSOCKET,
        Reason.SERVER_PACKAGE_MISSING,
    )
    assert plan.reason_text == (
        "shares requested but cads-mars-server is not installed; using pipe mode"
    )
    assert (plan.server_version, plan.server_version_source) == (None, "not installed")
    assert plan.urls == ["http://mars-1:9000"]


@pytest.mark.parametrize("version", ["0.2.9", "0.2.5.1"])
def test_server_package_too_old(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    installed(monkeypatch, version)
    plan = resolve(ONE, env=SHARES)
    assert (plan.mode, plan.reason) == (Mode.PIPE, Reason.SERVER_PACKAGE_TOO_OLD)
    assert plan.reason_text == (
        f"shares requested but cads-mars-server {version} (detected) is older than 0.3.0; "
        "using pipe mode"
    )


def test_server_version_unparsable() -> None:
    plan = resolve(ONE, env=SHARES, server_version="garbage")
    assert (plan.mode, plan.reason) == (Mode.PIPE, Reason.SERVER_VERSION_UNPARSABLE)
    assert plan.reason_text == (
        "shares requested but the cads-mars-server version 'garbage' (declared) cannot be "
        "parsed; using pipe mode"
    )


def test_required_version_is_a_setting() -> None:
    env = {**SHARES, "MARS_REQUIRED_SERVER_VERSION": "0.4"}
    plan = resolve(ONE, env=env, server_version="0.3.1")
    assert (plan.reason, plan.required_version) == (Reason.SERVER_PACKAGE_TOO_OLD, "0.4")
    assert resolve(ONE, env=env, server_version="0.4.0rc2").reason is Reason.SHARES_ENABLED


def test_force_without_shares_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    must_not_detect(monkeypatch)
    plan = resolve(ONE, env={"MARS_FORCE_WEBSOCKET_MODE": "true"})
    assert plan.mode is Mode.PIPE
    assert plan.warnings == (
        "environment variable MARS_FORCE_WEBSOCKET_MODE: set but use_shares is false "
        "(default); the force flag only applies when shares is requested",
    )


def test_every_reason_code_is_tested() -> None:
    # The tests above cover each code by name; a new code must get its own test.
    assert {r.value for r in Reason} == {
        "shares_not_requested",
        "shares_enabled",
        "forced",
        "server_package_missing",
        "server_package_too_old",
        "server_version_unparsable",
    }


# --- precedence and provenance --------------------------------------------------------------


def settings_of(plan: ConnectionPlan) -> dict[str, tuple[Any, Provenance]]:
    return {name: (value, prov) for name, value, prov in plan.settings}


def test_precedence_adaptor_env_dotenv_yaml_default(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path / "c.yaml",
        "use_shares: true\npipe_port: 9100\nshares_port: 9101\nrequest_timeout: 60\n"
        "max_retries: 7\n",
    )
    dotenv = write(
        tmp_path / "d.env",
        f"MARS_CONFIG_FILE={yaml_file}\nMARS_SHARES_PORT=9201\nMARS_REQUEST_TIMEOUT=45\n",
    )
    listed = write(tmp_path / "env.list", "http://from-env-list:9100\n")
    plan = resolve(
        {"mars_servers": ["http://adaptor-1:9100", "http://adaptor-2"]},
        env={"MARS_SHARES_PORT": "9301", "MARS_API_SERVER_LIST": str(listed)},
        env_file=dotenv,
        server_version="0.3.0",
    )
    s = settings_of(plan)
    assert s["servers"] == (
        ["http://adaptor-1:9100", "http://adaptor-2"],
        Provenance(SourceKind.ADAPTOR, "mars_servers"),
    )
    assert s["shares_port"] == (9301, Provenance(SourceKind.ENV, "MARS_SHARES_PORT"))
    assert s["request_timeout"] == (
        45.0,
        Provenance(SourceKind.DOTENV, "MARS_REQUEST_TIMEOUT", str(dotenv), 3),
    )
    assert s["pipe_port"] == (9100, Provenance(SourceKind.YAML, "pipe_port", str(yaml_file), 2))
    assert s["use_shares"] == (True, Provenance(SourceKind.YAML, "use_shares", str(yaml_file), 1))
    assert s["retry_delay"] == (2.0, Provenance(SourceKind.DEFAULT, "retry_delay"))
    # The adaptor's servers win over MARS_API_SERVER_LIST; pipe port 9100 -> shares port 9301.
    assert [(e.to_dict()["url"], e.to_dict()["source_text"]) for e in plan.endpoints] == [
        ("ws://adaptor-1:9301", "adaptor config key 'mars_servers[0]'"),
        ("ws://adaptor-2:9301", "adaptor config key 'mars_servers[1]'"),
    ]
    assert plan.timeouts.request == 45.0
    assert plan.policy.max_passes == 7
    assert plan.sources == [
        "adaptor",
        "env",
        f"dotenv:{dotenv}",
        f"yaml:{yaml_file}",
    ]


def test_keyword_override_beats_adaptor() -> None:
    plan = resolve(ONE, overrides={"servers": ["http://override:9000"], "max_retries": 1})
    assert plan.urls == ["http://override:9000"]
    assert plan.endpoints[0].provenance == Provenance(SourceKind.OVERRIDE, "servers[0]")
    assert plan.policy.max_passes == 1
    assert plan.sources == ["override"]


def test_list_file_endpoints_carry_file_and_line(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "# servers\n\nhttp://a:9000\n  b:9000  # rack b\n")
    plan = resolve(env={"MARS_API_SERVER_LIST": str(listed)})
    assert [(e.url.display(), e.provenance) for e in plan.endpoints] == [
        ("http://a:9000", Provenance(SourceKind.LIST_FILE, "server", str(listed), 3)),
        ("http://b:9000", Provenance(SourceKind.LIST_FILE, "server", str(listed), 4)),
    ]
    assert plan.sources == ["env", f"list_file:{listed}"]


def test_adaptor_list_file_beats_env_list_file(tmp_path: Path) -> None:
    adaptor = write(tmp_path / "adaptor.list", "http://a:9000\n")
    env_list = write(tmp_path / "env.list", "http://e:9000\n")
    plan = resolve({"mars_server_list": str(adaptor)}, env={"MARS_API_SERVER_LIST": str(env_list)})
    assert plan.urls == ["http://a:9000"]
    assert plan.warnings == ()


# --- server sources -------------------------------------------------------------------------


def test_ws_servers_are_used_directly_in_websocket_mode(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://pipe-1:9000\n")
    env = {
        **SHARES,
        "MARS_WS_SERVERS": "ws://ws-1:7001, wss://ws-2, http://ws-3:9000",
        "MARS_API_SERVER_LIST": str(listed),
    }
    plan = resolve(env=env, server_version="0.3.0")
    assert [e.to_dict() for e in plan.endpoints] == [
        {
            "url": "ws://ws-1:7001",
            "source": {"kind": "env", "name": "MARS_WS_SERVERS[0]"},
            "source_text": "environment variable MARS_WS_SERVERS[0]",
        },
        {
            "url": "wss://ws-2",
            "source": {"kind": "env", "name": "MARS_WS_SERVERS[1]"},
            "source_text": "environment variable MARS_WS_SERVERS[1]",
        },
        {
            "url": "ws://ws-3:9001",
            "source": {"kind": "env", "name": "MARS_WS_SERVERS[2]"},
            "source_text": "environment variable MARS_WS_SERVERS[2]",
            "derived_from": "http://ws-3:9000",
        },
    ]
    # The pipe URL is used as the WebSocket server it most likely means, never silently.
    assert plan.warnings == (
        "environment variable MARS_WS_SERVERS[2]: pipe-server URL http://ws-3:9000 used as "
        "ws://ws-3:9001; accepted: ws:// or wss:// URLs of the WebSocket servers",
    )
    assert (
        "  3. ws://ws-3:9001 <- http://ws-3:9000   [environment variable MARS_WS_SERVERS[2]]"
        in (plan.explain().splitlines())
    )


def test_derived_urls_when_ws_servers_unset(tmp_path: Path) -> None:
    listed = write(
        tmp_path / "s.list", "http://pipe-1:9000\nhttps://pipe-2\nhttp://pipe-3:8080/x\n"
    )
    plan = resolve(env={**SHARES, "MARS_API_SERVER_LIST": str(listed)}, server_version="0.3.0")
    assert [
        (e.url.display(), e.derived_from and e.derived_from.display()) for e in plan.endpoints
    ] == [
        ("ws://pipe-1:9001", "http://pipe-1:9000"),
        ("wss://pipe-2:9001", "https://pipe-2"),
        ("ws://pipe-3:8080/x", "http://pipe-3:8080/x"),
    ]


def test_ws_servers_from_yaml_list(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path / "c.yaml",
        "use_shares: true\nmars_ws_servers:\n  - ws://y-1:9001\n  - ws://[fd00::5]:9001\n",
    )
    plan = resolve(config_file=yaml_file, server_version="0.3.0")
    assert plan.urls == ["ws://y-1:9001", "ws://[fd00::5]:9001"]
    assert plan.endpoints[1].provenance.describe() == f"{yaml_file}:2 (key 'mars_ws_servers[1]')"


def test_adaptor_servers_beat_ws_servers() -> None:
    plan = resolve(ONE, env={**SHARES, "MARS_WS_SERVERS": "ws://ws-1:9001"}, server_version="1.0")
    assert plan.urls == ["ws://mars-1:9001"]


def test_ws_servers_ignored_in_pipe_mode(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://pipe-1:9000\n")
    plan = resolve(env={"MARS_WS_SERVERS": "ws://ws-1:9001", "MARS_API_SERVER_LIST": str(listed)})
    assert plan.urls == ["http://pipe-1:9000"]


def test_ws_servers_alone_in_pipe_mode_is_no_servers() -> None:
    assert problems(env={**SHARES, "MARS_WS_SERVERS": "ws://ws-1:9001"}) == [
        "server list: no MARS servers configured; looked in: adaptor config key 'mars_servers' "
        "(unset), adaptor config key 'mars_server_list' (unset), MARS_API_SERVER_LIST (unset); "
        "environment variable MARS_WS_SERVERS is set but only WebSocket mode uses it "
        f"(this plan is in pipe mode); accepted: {ACCEPTED_SOURCES}"
    ]


def test_empty_ws_servers_falls_through_to_the_list(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://pipe-1:9000\n")
    yaml_file = write(tmp_path / "c.yaml", "mars_ws_servers: []\n")
    plan = resolve(
        env={**SHARES, "MARS_API_SERVER_LIST": str(listed)},
        config_file=yaml_file,
        server_version="0.3.0",
    )
    assert plan.urls == ["ws://pipe-1:9001"]


def test_default_list_files_first_existing_wins(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.list"
    current = write(tmp_path / "current.list", "http://current:9000\n")
    files = (str(legacy), str(current))
    assert resolve(default_list_files=files).urls == ["http://current:9000"]
    write(legacy, "http://legacy:9000\n")
    plan = resolve(default_list_files=files)
    assert plan.urls == ["http://legacy:9000"]
    assert plan.endpoints[0].provenance.file == str(legacy)


def test_default_list_files_are_the_documented_ones() -> None:
    defaults = resolve_plan.__kwdefaults__ or {}
    assert defaults["default_list_files"] == (
        "/etc/mars/mars-api-server-legacy.list",
        "/etc/mars/mars-api-server.list",
    )


def test_default_list_files_unused_when_a_list_is_configured(tmp_path: Path) -> None:
    default = write(tmp_path / "default.list", "http://default:9000\n")
    listed = write(tmp_path / "s.list", "http://configured:9000\n")
    plan = resolve(env={"MARS_API_SERVER_LIST": str(listed)}, default_list_files=(str(default),))
    assert plan.urls == ["http://configured:9000"]


def test_no_servers_at_all_says_where_it_looked(tmp_path: Path) -> None:
    legacy, current = tmp_path / "legacy.list", tmp_path / "current.list"
    assert problems(default_list_files=(str(legacy), str(current))) == [
        "server list: no MARS servers configured; looked in: adaptor config key 'mars_servers' "
        "(unset), adaptor config key 'mars_server_list' (unset), MARS_API_SERVER_LIST (unset), "
        f"{legacy} (absent), {current} (absent); accepted: {ACCEPTED_SOURCES}"
    ]


def test_no_servers_in_websocket_mode_mentions_ws_servers(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.list", "# nobody\n")
    assert problems(
        env={**SHARES, "MARS_API_SERVER_LIST": str(empty)}, server_version="0.3.0"
    ) == [
        "server list: no MARS servers configured; looked in: adaptor config key 'mars_servers' "
        "(unset), adaptor config key 'mars_server_list' (unset), MARS_WS_SERVERS (unset), "
        f"{empty} (no servers in it); accepted: {ACCEPTED_SOURCES}"
    ]


def test_empty_adaptor_list_and_empty_default_file(tmp_path: Path) -> None:
    assert "adaptor config key 'mars_servers' (empty)" in problems({"mars_servers": []})[0]
    empty = write(tmp_path / "d.list", "\n")
    assert f"{empty} (no servers in it)" in problems(default_list_files=(str(empty),))[0]


def test_explicit_list_paths_that_do_not_exist_are_errors(tmp_path: Path) -> None:
    nope = tmp_path / "nope.list"
    assert problems(env={"MARS_API_SERVER_LIST": str(nope)}) == [
        f"environment variable MARS_API_SERVER_LIST: server-list file {str(nope)!r} does not "
        "exist; accepted: the path of a readable file with one server URL per line"
    ]
    assert problems({"mars_server_list": str(nope)}) == [
        f"adaptor config key 'mars_server_list': server-list file {str(nope)!r} does not "
        "exist; accepted: the path of a readable file with one server URL per line"
    ]


def test_outranked_list_path_that_does_not_exist_is_a_warning(tmp_path: Path) -> None:
    nope = tmp_path / "nope.list"
    plan = resolve(ONE, env={"MARS_API_SERVER_LIST": str(nope)})
    assert plan.urls == ["http://mars-1:9000"]
    assert plan.warnings == (
        f"environment variable MARS_API_SERVER_LIST: names {str(nope)!r}, which does not exist; "
        "it is not used because adaptor config key 'mars_servers' takes precedence",
    )
    adaptor_list = write(tmp_path / "a.list", "http://a:9000\n")
    plan = resolve(
        {"mars_server_list": str(adaptor_list)}, env={"MARS_API_SERVER_LIST": str(nope)}
    )
    assert plan.warnings == (
        f"environment variable MARS_API_SERVER_LIST: names {str(nope)!r}, which does not exist; "
        "it is not used because adaptor config key 'mars_server_list' takes precedence",
    )
    plan = resolve(ONE | {"mars_server_list": str(nope)})
    assert plan.warnings == (
        f"adaptor config key 'mars_server_list': names {str(nope)!r}, which does not exist; "
        "it is not used because adaptor config key 'mars_servers' takes precedence",
    )
    plan = resolve(
        env={**SHARES, "MARS_WS_SERVERS": "ws://w:9001", "MARS_API_SERVER_LIST": str(nope)},
        server_version="0.3.0",
    )
    assert plan.warnings == (
        f"environment variable MARS_API_SERVER_LIST: names {str(nope)!r}, which does not exist; "
        "it is not used because environment variable MARS_WS_SERVERS takes precedence",
    )


def test_duplicates_are_dropped_first_kept(tmp_path: Path) -> None:
    listed = write(
        tmp_path / "s.list",
        "http://a:9000\nhttp://b:9000\nHTTP://A:9000\nhttp://a\nhttp://c:9000\n",
    )
    pipe = resolve(env={"MARS_API_SERVER_LIST": str(listed)})
    assert pipe.urls == ["http://a:9000", "http://b:9000", "http://a", "http://c:9000"]
    assert pipe.warnings == (
        f"{listed}:3 (server list): duplicate server http://a:9000 dropped "
        f"(first listed at {listed}:1 (server list))",
    )
    # In WebSocket mode http://a and http://a:9000 are the same server: ws://a:9001.
    ws = resolve(env={**SHARES, "MARS_API_SERVER_LIST": str(listed)}, server_version="0.3.0")
    assert ws.urls == ["ws://a:9001", "ws://b:9001", "ws://c:9001"]
    assert len(ws.warnings) == 2
    assert ws.warnings[1] == (
        f"{listed}:4 (server list): duplicate server ws://a:9001 dropped "
        f"(first listed at {listed}:1 (server list))"
    )


def test_ipv6_and_bare_hosts_from_a_list(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://[fd00::5]:9000\n[fd00::6]:9000\nmars-7\n")
    plan = resolve(env={**SHARES, "MARS_API_SERVER_LIST": str(listed)}, server_version="0.3.0")
    assert plan.urls == ["ws://[fd00::5]:9001", "ws://[fd00::6]:9001", "ws://mars-7:9001"]
    assert resolve(env={"MARS_API_SERVER_LIST": str(listed)}).urls == [
        "http://[fd00::5]:9000",
        "http://[fd00::6]:9000",
        "http://mars-7:9000",  # a bare host gets the pipe port
    ]


def test_websocket_url_in_pipe_mode_is_an_error() -> None:
    assert problems({"mars_servers": ["http://a:9000", "ws://b:9001"]}) == [
        "adaptor config key 'mars_servers[1]': a WebSocket URL cannot be used in pipe mode "
        "(got 'ws://b:9001'); accepted: http:// or https:// pipe-server URLs"
    ]


# --- bad input: every problem in one error --------------------------------------------------

SETTING_PROBLEMS = [
    f"environment variable MARS_USE_SHARES: not a boolean (got 'ture'); accepted: {BOOL}",
    "environment variable MARS_PIPE_PORT: input should be a valid integer, unable to parse "
    f"string as an integer (got 'abc'); accepted: {PORT}",
    "environment variable MARS_SHARES_PORT: input should be less than or equal to 65535 "
    f"(got '70000'); accepted: {PORT}",
]
BAD_SETTINGS = {"MARS_USE_SHARES": "ture", "MARS_PIPE_PORT": "abc", "MARS_SHARES_PORT": "70000"}


def test_bad_settings_and_bad_servers_in_one_error(tmp_path: Path) -> None:
    listed = write(
        tmp_path / "s.list",
        "http://ok:9000\nftp://user:hunter2@mars-x\nmars-y:abc\nhttp://mars-z:70000\n",
    )
    with pytest.raises(ConfigError) as info:
        resolve(env={**BAD_SETTINGS, "MARS_API_SERVER_LIST": str(listed)})
    assert [str(p) for p in info.value.problems] == [
        *SETTING_PROBLEMS,
        f"{listed}:2 (server list): unsupported scheme 'ftp' (got 'ftp://***@mars-x'); "
        f"accepted: {ACCEPTED_URL}",
        f"{listed}:3 (server list): invalid port 'abc' (must be a number from 1 to 65535) "
        f"(got 'mars-y:abc'); accepted: {ACCEPTED_URL}",
        f"{listed}:4 (server list): invalid port '70000' (must be a number from 1 to 65535) "
        f"(got 'http://mars-z:70000'); accepted: {ACCEPTED_URL}",
    ]
    assert str(info.value).startswith("invalid MARS connection configuration (6 problems):\n")
    assert "hunter2" not in str(info.value)


def test_bad_settings_and_unreadable_list_file_in_one_error(tmp_path: Path) -> None:
    # A directory is unreadable as a list file even for root.
    with pytest.raises(ConfigError) as info:
        resolve(env={**BAD_SETTINGS, "MARS_API_SERVER_LIST": str(tmp_path)})
    assert [str(p) for p in info.value.problems] == [
        *SETTING_PROBLEMS,
        f"environment variable MARS_API_SERVER_LIST: server-list file {str(tmp_path)!r} cannot "
        "be read: a directory, not a regular file; accepted: the path of a readable file with "
        "one server URL "
        "per line",
    ]


def test_bad_settings_and_no_servers_in_one_error(tmp_path: Path) -> None:
    absent = tmp_path / "absent.list"
    with pytest.raises(ConfigError) as info:
        resolve(env=BAD_SETTINGS, default_list_files=(str(absent),))
    assert [str(p) for p in info.value.problems] == [
        *SETTING_PROBLEMS,
        "server list: no MARS servers configured; looked in: adaptor config key "
        "'mars_servers' (unset), adaptor config key 'mars_server_list' (unset), "
        f"MARS_API_SERVER_LIST (unset), {absent} (absent); accepted: {ACCEPTED_SOURCES}",
    ]


def test_bad_yaml_and_adaptor_values_in_one_error(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "c.yaml", "use_shares: ture\nshares_port: 70000\n")
    with pytest.raises(ConfigError) as info:
        resolve(
            {"mars_servers": ["ftp://u:pw@a", "http://b:9000"]},
            config_file=yaml_file,
            env={"MARS_PIPE_PORT": "abc"},
        )
    assert [p.where for p in info.value.problems] == [
        f"{yaml_file}:1 (key 'use_shares')",
        "environment variable MARS_PIPE_PORT",
        f"{yaml_file}:2 (key 'shares_port')",
        "adaptor config key 'mars_servers[0]'",
    ]
    assert info.value.problems[3].value == "ftp://***@a"


# --- secrets --------------------------------------------------------------------------------


def test_credentials_never_appear_in_plan_output(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://user:hunter2@a:9000\nhttp://user:hunter2@a:9000\n")
    log = Quiet()
    plan = resolve(
        {"mars_server_list": str(listed)},
        env={**SHARES, "MARS_WS_SERVERS": "ws://u:hunter2@w:9001"},
        server_version="0.3.0",
        logger=log,
    )
    assert plan.endpoints[0].url.secret() == "ws://user:hunter2@a:9001"
    for text in (plan.to_json(), plan.explain(), repr(plan), *plan.warnings, repr(log.events)):
        assert "hunter2" not in text
    assert plan.urls == ["ws://***@a:9001"]
    plan = resolve(
        {"mars_servers": ["http://user:hunter2@a:9000"]},
        env={"MARS_WS_SERVERS": "ws://u:hunter2@w:9001,ws://x"},
    )
    data = plan.to_dict()
    assert data["settings"]["servers"]["value"] == ["http://***@a:9000"]
    assert data["settings"]["ws_servers"]["value"] == ["ws://***@w:9001", "ws://x"]
    assert "hunter2" not in json.dumps(data)
    assert "hunter2" not in plan.explain()


# --- the plan as a value --------------------------------------------------------------------


def test_json_round_trip(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://a:9000\n")
    plan = resolve(
        env={
            **SHARES,
            "MARS_API_SERVER_LIST": str(listed),
            "MARS_CA_BUNDLE": CA_PEM,
            "MARS_JOB_DEADLINE": "3600",
        },
        server_version="0.3.0",
    )
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert json.loads(plan.to_json()) == data
    assert plan.to_json(indent=None) == json.dumps(data)
    assert data["settings"]["api_server_list"] == {
        "value": str(listed),
        "source": "environment variable MARS_API_SERVER_LIST",
        "provenance": {"kind": "env", "name": "MARS_API_SERVER_LIST"},
    }
    assert {k: data[k] for k in ("mode", "requested_mode", "reason", "ca_bundle")} == {
        "mode": "websocket",
        "requested_mode": "websocket",
        "reason": "shares_enabled",
        "ca_bundle": CA_PEM,
    }
    assert data["timeouts"]["job_deadline"] == 3600.0
    assert list(data) == [
        "format",
        "mode",
        "requested_mode",
        "reason",
        "reason_text",
        "server_version",
        "server_version_source",
        "required_version",
        "endpoints",
        "pipe_port",
        "shares_port",
        "policy",
        "timeouts",
        "logs",
        "ca_bundle",
        "shares_dir_mode",
        "warnings",
        "warning_records",
        "settings",
        "sources",
        "fingerprint",
    ]


def test_plan_is_frozen() -> None:
    plan = resolve(ONE)
    with pytest.raises(AttributeError):
        plan.mode = Mode.WEBSOCKET  # type: ignore[misc]


def test_plan_carries_policy_and_timeouts_from_settings() -> None:
    env = {
        "MARS_FAILOVER_ORDER": "listed",
        "MARS_MAX_RETRIES": "4",
        "MARS_RETRY_DELAY": "0.5",
        "MARS_RETRY_BACKOFF_MAX": "8",
        "MARS_SAME_HOST_RETRIES": "0",
        "MARS_EJECT_COOLDOWN": "5",
        "MARS_CONNECT_TIMEOUT": "3",
        "MARS_REQUEST_TIMEOUT": "7",
        "MARS_READ_TIMEOUT": "90",
        "MARS_HEARTBEAT_INTERVAL": "10",
        "MARS_HEARTBEAT_MISSES": "4",
        "MARS_TARGET_SETTLE_TIME": "0",
        "MARS_WS_PING_INTERVAL": "15",
        "MARS_WS_CLOSE_TIMEOUT": "2",
        "MARS_CLIENT_FILTER_LOGS": "off",
        "MARS_LOG_KEEP_LINES": "10",
    }
    plan = resolve(ONE, env=env)
    assert plan.policy == FailoverPolicy(
        order="listed",
        max_passes=4,
        backoff_initial=0.5,
        backoff_max=8.0,
        same_host_retries=0,
        eject_cooldown=5.0,
    )
    assert plan.timeouts == Timeouts(
        connect=3.0,
        request=7.0,
        read=90.0,
        heartbeat_interval=10.0,
        heartbeat_misses=4,
        job_deadline=None,
        target_settle=0.0,
        ws_ping_interval=15.0,
        ws_close=2.0,
    )
    assert plan.timeouts.liveness == 40.0
    assert (plan.logs.filter, plan.logs.keep_lines) == (False, 10)
    assert (plan.pipe_port, plan.shares_port, plan.ca_bundle) == (9000, 9001, None)


def test_explain_names_every_value_and_its_source(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://a:9000\n")
    plan = resolve(
        env={**SHARES, "MARS_API_SERVER_LIST": str(listed), "MARS_USE_SHARE": "x"},
        server_version="0.3.1",
    )
    lines = plan.explain().splitlines()
    assert lines[:6] == [
        "mode: websocket (requested: websocket)",
        "reason: shares_enabled: shares requested and cads-mars-server 0.3.1 (declared) >= 0.3.0",
        "server version: 0.3.1 (declared); required >= 0.3.0",
        "endpoints (1), tried in a random order per retrieval:",
        f"  1. ws://a:9001 <- http://a:9000   [{listed}:1 (server list)]",
        "failover: 10 passes; no sleep between servers; 2s between passes (fixed); "
        "dead servers tried last for 30s",
    ]
    assert lines[6:9] == [
        "timeouts: connect 10s, acknowledge 30s, liveness 60s (3 x 20s heartbeat), "
        "no job deadline",
        "shares: the server writes into a private directory per attempt beside the target, "
        "mode 0o733",
        f"sources: env, list_file:{listed}",
    ]
    assert "  use_shares              = True         [environment variable MARS_USE_SHARES]" in (
        lines
    )
    assert lines[-2] == (
        "warning: environment variable MARS_USE_SHARE: not a marsconn setting, ignored; "
        "did you mean MARS_USE_SHARES?"
    )
    assert lines[-1] == f"fingerprint: {plan.fingerprint}"


def test_explain_in_pipe_mode_shows_read_timeout_and_deadline() -> None:
    plan = resolve(
        {"mars_servers": ["http://a:9000", "http://b:9000"]},
        env={"MARS_JOB_DEADLINE": "7200", "MARS_FAILOVER_ORDER": "stable"},
    )
    text = plan.explain()
    assert "endpoints (2), tried in a stable order per request_id:" in text
    assert "timeouts: connect 10s, acknowledge 30s, read 600s, job deadline 7200s" in text
    assert "  servers                 = [2 servers]  [adaptor config key 'mars_servers']" in text


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_is_stable_for_equal_inputs(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://a:9000\nhttp://b:9000\n")
    env = {**SHARES, "MARS_API_SERVER_LIST": str(listed)}
    first = resolve(env=env, server_version="0.3.0")
    second = resolve(env=dict(env), server_version="0.3.0")
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", first.fingerprint)
    assert first.fingerprint == second.fingerprint
    assert first == second


def test_fingerprint_covers_behaviour_not_provenance(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "c.yaml", "shares_port: 9555\n")
    from_yaml = resolve(ONE, config_file=yaml_file)
    from_env = resolve(ONE, env={"MARS_SHARES_PORT": "9555"})
    assert from_yaml.fingerprint == from_env.fingerprint
    assert from_yaml.settings != from_env.settings


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"mars_servers": "http://mars-2:9000"}, {}),
        ({"mars_servers": ["http://mars-1:9000", "http://mars-2:9000"]}, {}),
        ({"mars_servers": "http://mars-1:9001"}, {}),
        (ONE, {"MARS_PIPE_PORT": "9100"}),
        (ONE, {"MARS_SHARES_PORT": "9101"}),
        (ONE, {"MARS_REQUEST_TIMEOUT": "31"}),
        (ONE, {"MARS_FAILOVER_ORDER": "listed"}),
        (ONE, {"MARS_CA_BUNDLE": CA_PEM}),
        (ONE, {"MARS_CLIENT_FILTER_LOGS": "false"}),
        (ONE, {"MARS_USE_SHARES": "true", "MARS_FORCE_WEBSOCKET_MODE": "true"}),
        (ONE, {"MARS_RETRY_BACKOFF": "exponential"}),
        (ONE, {"MARS_SHARES_DIR_MODE": "0700"}),
    ],
)
def test_fingerprint_changes_with_behaviour(config: dict[str, Any], env: dict[str, str]) -> None:
    assert resolve(config, env=env).fingerprint != resolve(ONE).fingerprint


def test_server_order_changes_the_fingerprint() -> None:
    ab = resolve({"mars_servers": ["http://a:9000", "http://b:9000"]})
    ba = resolve({"mars_servers": ["http://b:9000", "http://a:9000"]})
    assert ab.fingerprint != ba.fingerprint


# --- failover policy ------------------------------------------------------------------------


def endpoints(*urls: str) -> list[Endpoint]:
    return [Endpoint(parse_server_url(u), Provenance(SourceKind.DEFAULT, "x")) for u in urls]


def test_backoff_doubles_with_jitter_and_cap() -> None:
    policy = FailoverPolicy(
        backoff_initial=2.0, backoff_max=60.0, jitter=0.0, backoff_mode="exponential"
    )
    assert [policy.backoff(i) for i in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    jittered = FailoverPolicy(
        backoff_initial=2.0, backoff_max=60.0, jitter=0.5, backoff_mode="exponential"
    )
    values = [jittered.backoff(1, random.Random(seed)) for seed in range(50)]
    assert all(4.0 <= v <= 6.0 for v in values)
    assert len(set(values)) > 1
    assert jittered.backoff(10, random.Random(1)) == 60.0
    assert FailoverPolicy(backoff_initial=0.0, backoff_mode="exponential").backoff(3) == 0.0


def test_default_backoff_is_fixed_retry_delay_without_jitter() -> None:
    plan = resolve(ONE)
    assert plan.policy.backoff_mode == "fixed"
    # Whatever the pass and the random state: retry_delay, as cads-mars-server's client.
    assert {plan.policy.backoff(i, random.Random(i)) for i in range(10)} == {2.0}
    # The executor sleeps after every pass but the last, never between servers of a pass:
    # every server refusing ends after 9 x 2 s with the defaults.
    between_passes = [plan.policy.backoff(i) for i in range(plan.policy.max_passes - 1)]
    assert sum(between_passes) == 18.0


def test_max_retries_and_retry_delay_keep_their_meaning() -> None:
    plan = resolve(ONE, env={"MARS_MAX_RETRIES": "3", "MARS_RETRY_DELAY": "1"})
    assert plan.policy.max_passes == 3
    assert [plan.policy.backoff(i) for i in range(2)] == [1.0, 1.0]
    fractional = resolve(ONE, env={"MARS_RETRY_DELAY": "0.25", "MARS_RETRY_BACKOFF_MAX": "0.1"})
    # The cap belongs to exponential backoff only.
    assert fractional.policy.backoff(5) == 0.25


def test_exponential_backoff_is_opt_in(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "c.yaml", "retry_backoff: exponential\nretry_delay: 1\n")
    plan = resolve(ONE, config_file=yaml_file)
    assert plan.policy.backoff_mode == "exponential"
    assert all(2**i <= plan.policy.backoff(i, random.Random(9)) <= 1.5 * 2**i for i in range(5))
    assert plan.policy.backoff(10) == 60.0
    assert (
        "failover: 10 passes; no sleep between servers; backoff between passes 1s x2 "
        "(cap 60s, jitter 50%); dead servers tried last for 30s"
    ) in plan.explain().splitlines()
    assert settings_of(plan)["retry_backoff"][1] == Provenance(
        SourceKind.YAML, "retry_backoff", str(yaml_file), 1
    )


def test_ordering_per_policy() -> None:
    eps = endpoints("http://a", "http://b", "http://c", "http://d", "http://e")
    assert FailoverPolicy(order="listed").ordered(eps) == eps
    shuffled = FailoverPolicy(order="shuffled")
    orders = {
        tuple(e.url.host for e in shuffled.ordered(eps, rng=random.Random(s))) for s in range(20)
    }
    assert len(orders) > 1
    assert all(sorted(o) == ["a", "b", "c", "d", "e"] for o in orders)
    assert shuffled.ordered(eps) is not eps
    stable = FailoverPolicy(order="stable")
    assert stable.ordered(eps, "req-1") == stable.ordered(list(reversed(eps)), "req-1")
    by_request = {tuple(e.url.host for e in stable.ordered(eps, f"req-{i}")) for i in range(20)}
    assert len(by_request) > 1


# --- no hidden inputs, no network imports ---------------------------------------------------


def test_env_given_never_reads_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded_environ: Any
) -> None:
    listed = write(tmp_path / "s.list", "http://a:9100\n")
    dotenv = write(tmp_path / "d.env", "MARS_PIPE_PORT=9100\n")
    monkeypatch.setenv("MARS_USE_SHARES", "ture")
    monkeypatch.setenv("MARS_SHARES_PORT", "1234")
    guard = guarded_environ
    guard.armed = True
    try:
        plan = resolve(
            env={**SHARES, "MARS_API_SERVER_LIST": str(listed)},
            env_file=dotenv,
            server_version="0.3.0",
        )
        with pytest.raises(AssertionError, match=r"os\.environ was read"):
            resolve_plan(ONE, logger=Quiet(), default_list_files=())
    finally:
        guard.armed = False
    assert (plan.mode, plan.pipe_port, plan.shares_port) == (Mode.WEBSOCKET, 9100, 9001)
    assert plan.urls == ["ws://a:9001"]


def test_process_environment_is_read_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARS_SHARES_PORT", "9555")
    plan = resolve_plan(ONE, logger=Quiet(), default_list_files=())
    assert plan.shares_port == 9555


def test_plan_side_imports_no_network_library() -> None:
    code = (
        "import json, sys\n"
        "import marsconn\n"
        "class Quiet:\n"
        "    def info(self, *a, **k): pass\n"
        "    warning = info\n"
        "plan = marsconn.resolve_plan({'mars_servers': 'http://a:9000'}, env={},\n"
        "    config_file='/dev/null', logger=Quiet(), server_version='0.3.0')\n"
        "plan = marsconn.resolve_plan({'mars_servers': 'http://a:9000'},\n"
        "    env={'MARS_USE_SHARES': 'true'}, config_file='/dev/null', server_version='0.3.0')\n"
        "names = ('websockets', 'h11', 'http.client', 'urllib.request', 'marsconn.run',\n"
        "         'marsconn.wire', 'marsconn.run.engine', 'marsconn.core.tls')\n"
        "print(json.dumps([plan.mode.value, [n for n in names if n in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(done.stdout.splitlines()[-1]) == ["websocket", []]


def test_unknown_package_attribute() -> None:
    import marsconn

    with pytest.raises(AttributeError, match=r"^module 'marsconn' has no attribute 'nope'$"):
        marsconn.nope  # noqa: B018


def test_importing_decides_nothing() -> None:
    # Two resolutions with different inputs in one process give different plans:
    # nothing was fixed at import time or cached between calls.
    assert resolve(ONE).mode is Mode.PIPE
    assert resolve(ONE, env=SHARES, server_version="0.3.0").mode is Mode.WEBSOCKET
    assert resolve(ONE).mode is Mode.PIPE


# --- the shares directory mode ---------------------------------------------------------------


def test_shares_dir_mode_is_carried_by_the_plan(tmp_path: Path) -> None:
    assert resolve(ONE).shares_dir_mode == 0o733
    yaml_file = write(tmp_path / "c.yaml", "shares_dir_mode: 0700\n")
    plan = resolve(ONE, env={**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "1"}, config_file=yaml_file)
    assert plan.shares_dir_mode == 0o700
    assert plan.to_dict()["shares_dir_mode"] == 0o700
    assert plan.effective()["shares_dir_mode"] == 0o700
    lines = plan.explain().splitlines()
    assert (
        "shares: the server writes into a private directory per attempt beside the target, "
        "mode 0o700"
    ) in lines
    assert any(
        line.split()[:3] == ["shares_dir_mode", "=", "0o700"]
        and line.endswith(f"[{yaml_file}:1 (key 'shares_dir_mode')]")
        for line in lines
    )
    # Pipe mode makes no such directory, so the explanation does not mention one.
    assert not any(line.startswith("shares:") for line in resolve(ONE).explain().splitlines())


# --- a missing MARS_CONFIG_FILE --------------------------------------------------------------


def test_missing_config_file_is_a_plan_warning_and_in_the_audit_event(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    log = Quiet()
    plan = resolve(ONE, env={"MARS_CONFIG_FILE": str(missing)}, logger=log)
    warning = (
        f"environment variable MARS_CONFIG_FILE: names YAML config file {str(missing)!r}, which "
        "does not exist; it is ignored and the other sources and defaults apply (as "
        "cads-mars-server does); `marsconn validate` reports this as an error"
    )
    assert plan.warnings == (warning,)
    assert plan.fingerprint == resolve(ONE).fingerprint  # the defaults apply
    assert f"warning: {warning}" in plan.explain().splitlines()
    # At warning level: a filter or an alert on warnings sees the defaults being used.
    [(level, event, fields)] = log.events
    assert (level, event, fields["warnings"]) == ("warning", "marsconn.plan.resolved", [warning])


def test_missing_config_file_is_a_problem_when_strict(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    log = Quiet()
    assert problems(ONE, env={"MARS_CONFIG_FILE": str(missing)}, strict=True, logger=log) == [
        f"environment variable MARS_CONFIG_FILE: YAML config file {str(missing)!r} does not "
        "exist; accepted: the path of a readable YAML file (or leave it unset)"
    ]
    assert log.events == []


def test_explain_shows_values_from_the_yaml_file(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "c.yaml", "# site\nuse_shares: true\nshares_port: 9101\n")
    plan = resolve(
        {"mars_servers": ["http://a:9000"]},
        env={"MARS_CONFIG_FILE": str(yaml_file)},
        server_version="0.3.0",
    )
    lines = plan.explain().splitlines()
    assert f"sources: adaptor, yaml:{yaml_file}" in lines
    assert "  1. ws://a:9101 <- http://a:9000   [adaptor config key 'mars_servers[0]']" in lines
    shown = {line.split()[0]: line for line in lines if line.startswith("  ") and " = " in line}
    assert shown["use_shares"].endswith(f"[{yaml_file}:2 (key 'use_shares')]")
    assert shown["shares_port"].endswith(f"[{yaml_file}:3 (key 'shares_port')]")
    assert shown["pipe_port"].endswith("[default]")
    # Every setting is listed with its source.
    assert set(shown) == {name for name, _, _ in plan.settings}
    listed = write(tmp_path / "default.list", "http://a:9000\n")
    from_list = resolve(default_list_files=(str(listed),))
    assert f"sources: list_file:{listed}" in from_list.explain().splitlines()


# --- audit events ---------------------------------------------------------------------------


def test_plan_resolved_event(tmp_path: Path) -> None:
    listed = write(tmp_path / "s.list", "http://a:9000\nhttp://b:9000\n")
    with structlog.testing.capture_logs() as logs:
        plan = resolve_plan(
            env={**SHARES, "MARS_API_SERVER_LIST": str(listed)},
            server_version="0.3.0",
            default_list_files=(),
        )
    assert logs == [
        {
            "event": "marsconn.plan.resolved",
            "log_level": "info",
            "mode": "websocket",
            "requested_mode": "websocket",
            "reason": "shares_enabled",
            "server_version": "0.3.0",
            "required_version": "0.3.0",
            "endpoint_count": 2,
            "fingerprint": plan.fingerprint,
            "sources": ["env", f"list_file:{listed}"],
            "warnings": [],
        }
    ]


def test_fallback_event_says_why_and_what_to_change() -> None:
    with structlog.testing.capture_logs() as logs:
        plan = resolve_plan(ONE, env=SHARES, server_version="0.2.9", default_list_files=())
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("marsconn.plan.resolved", "info"),
        ("marsconn.mode.fallback", "warning"),
    ]
    assert logs[0]["reason"] == "server_package_too_old"
    assert logs[1] == {
        "event": "marsconn.mode.fallback",
        "log_level": "warning",
        "requested_mode": "websocket",
        "mode": "pipe",
        "reason": "server_package_too_old",
        "detail": plan.reason_text,
        "remedy": "upgrade cads-mars-server to >= 0.3.0; or set use_shares to false "
        "(environment variable MARS_USE_SHARES) to choose pipe mode deliberately",
        "server_version": "0.2.9",
        "required_version": "0.3.0",
    }


@pytest.mark.parametrize(
    ("server_version", "remedy"),
    [
        (
            None,
            "install cads-mars-server >= 0.3.0 on this worker, or declare the servers' version "
            "(resolve_plan(server_version=...), "
            "marsconn validate --assume-server-version 0.3.0)",
        ),
        ("garbage", "install a released cads-mars-server >= 0.3.0"),
    ],
)
def test_fallback_remedies(server_version: str | None, remedy: str) -> None:
    log = Quiet()
    resolve(ONE, env=SHARES, server_version=server_version, logger=log)
    assert [(level, event) for level, event, _ in log.events] == [
        ("info", "marsconn.plan.resolved"),
        ("warning", "marsconn.mode.fallback"),
    ]
    assert log.events[1][2]["remedy"] == (
        f"{remedy}; or set use_shares to false (environment variable MARS_USE_SHARES) "
        "to choose pipe mode deliberately"
    )


@pytest.mark.parametrize(
    ("env", "server_version"),
    [({}, None), (SHARES, "0.3.0"), ({**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "1"}, None)],
)
def test_no_fallback_event_when_granted_or_not_asked(
    env: dict[str, str], server_version: str | None
) -> None:
    log = Quiet()
    resolve(ONE, env=env, server_version=server_version, logger=log)
    assert [event for _, event, _ in log.events] == ["marsconn.plan.resolved"]


def test_no_event_when_the_configuration_is_invalid() -> None:
    log = Quiet()
    with pytest.raises(ConfigError):
        resolve(ONE, env={"MARS_PIPE_PORT": "abc"}, logger=log)
    assert log.events == []


# --- the example configs in config/ ---------------------------------------------------------


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return ROOT


EXAMPLE_URLS = [
    "ws://mars-worker-1.internal:9001",
    "ws://mars-worker-2.internal:9001",
    "ws://[fd00:0:0:17::5]:9001",
    "ws://mars-worker-4.internal:9001",
]


def test_example_dotenv_resolves_to_websocket_mode(at_repo_root: Path) -> None:
    plan = resolve(env={}, env_file="config/shares.env", server_version="0.3.1")
    assert (plan.mode, plan.reason) == (Mode.WEBSOCKET, Reason.SHARES_ENABLED)
    assert plan.urls == EXAMPLE_URLS
    assert [e.provenance.line for e in plan.endpoints] == [5, 6, 9, 11]
    assert plan.endpoints[0].provenance.file == "config/servers.list"
    assert plan.sources == [
        "dotenv:config/shares.env",
        "yaml:config/cads-mars-server.yaml",
        "list_file:config/servers.list",
    ]
    assert plan.warnings == ()
    assert plan.policy.max_passes == 3


def test_example_yaml_and_list_resolve_to_websocket_mode(at_repo_root: Path) -> None:
    plan = resolve(
        env={
            "MARS_CONFIG_FILE": "config/cads-mars-server.yaml",
            "MARS_API_SERVER_LIST": "config/servers.list",
        },
        server_version="0.3.1",
    )
    assert plan.mode is Mode.WEBSOCKET
    assert plan.urls == EXAMPLE_URLS
    assert settings_of(plan)["use_shares"][1] == Provenance(
        SourceKind.YAML, "use_shares", "config/cads-mars-server.yaml", 11
    )
    # The same servers in pipe mode when the declared version is too old.
    old = resolve(
        env={
            "MARS_CONFIG_FILE": "config/cads-mars-server.yaml",
            "MARS_API_SERVER_LIST": "config/servers.list",
        },
        server_version="0.2.9",
    )
    assert old.urls == [
        "http://mars-worker-1.internal:9000",
        "http://mars-worker-2.internal:9000",
        "http://[fd00:0:0:17::5]:9000",
        "http://mars-worker-4.internal:9000",
    ]


# --- docs/plan.md matches the code ----------------------------------------------------------


def test_plan_docs_cover_fields_reasons_and_events() -> None:
    from marsconn.core import audit

    text = (ROOT / "docs" / "plan.md").read_text()
    for f in dataclasses.fields(ConnectionPlan):
        assert f"| `{f.name}` |" in text, f.name
    for reason in Reason:
        assert f"| `{reason.value}` |" in text, reason
    for cls in (FailoverPolicy, Timeouts):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f.name
    for event in (audit.PlanResolved, audit.ModeFallback):
        assert f"`{event.EVENT}`" in text
        for f in dataclasses.fields(event):
            assert f"`{f.name}`" in text, f.name
    assert {f.name for f in dataclasses.fields(ConnectionPlan)} <= set(resolve(ONE).to_dict())


def test_bare_host_means_the_pipe_port() -> None:
    plan = resolve_plan(
        env={"MARS_PIPE_PORT": "9100"},
        overrides={"servers": ["host-a", "http://host-b", "host-c:9000", "[fd00::5]"]},
        logger=Quiet(),
    )
    assert plan.urls == [
        "http://host-a:9100",
        "http://host-b",
        "http://host-c:9000",
        "http://[fd00::5]:9100",
    ]


# --- settings that have no effect, or contradict each other ------------------------------------


def test_equal_pipe_and_shares_ports_are_a_warning_the_plan_still_resolves() -> None:
    plan = resolve(ONE, env={"MARS_SHARES_PORT": "9000"})
    assert plan.mode is Mode.PIPE
    assert plan.urls == ["http://mars-1:9000"]
    [record] = plan.warning_records
    assert record.where == (
        "pipe_port (default) and shares_port (environment variable MARS_SHARES_PORT)"
    )
    assert record.message.startswith("both are 9000: a worker's pipe and WebSocket servers")
    assert record.accepted == "two different ports (by default 9000 and 9001)"
    assert plan.warnings == (str(record),)


def test_ws_servers_in_pipe_mode_are_a_warning() -> None:
    plan = resolve(ONE, env={"MARS_WS_SERVERS": "ws://w:9001"})
    assert plan.warnings == (
        "environment variable MARS_WS_SERVERS: set but not used: only WebSocket mode uses it, "
        "and this plan is in pipe mode",
    )
    assert resolve(ONE).warnings == ()


def test_bare_host_in_pipe_mode_shows_its_rewrite() -> None:
    plan = resolve({"mars_servers": "mars-1, mars-2:9000"})
    assert [
        (e.url.display(), e.derived_from and e.derived_from.display()) for e in plan.endpoints
    ] == [
        ("http://mars-1:9000", "http://mars-1"),
        ("http://mars-2:9000", None),
    ]
    assert "  1. http://mars-1:9000 <- http://mars-1   [adaptor config key 'mars_servers[0]']" in (
        plan.explain().splitlines()
    )
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("http://a..b:9000", "has an empty label (two dots in a row, or a leading dot)"),
        ("http://h1,h2:9000", "contains ','"),
    ],
)
def test_impossible_host_names_in_a_list_file_are_errors(
    tmp_path: Path, written: str, reason: str
) -> None:
    listed = write(tmp_path / "s.list", f"http://ok:9000\n{written}\n")
    with pytest.raises(ConfigError) as info:
        resolve(env={"MARS_API_SERVER_LIST": str(listed)})
    [problem] = info.value.problems
    assert problem.where == f"{listed}:2 (server list)"
    assert problem.message.startswith("impossible host name ")
    assert reason in problem.message


def test_warning_records_survive_serialisation() -> None:
    plan = resolve(ONE, env={"MARS_SHARES_PORT": "9000"})
    back = ConnectionPlan.from_json(plan.to_json())
    assert back.warning_records == plan.warning_records
    assert back == plan
