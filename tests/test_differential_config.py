"""marsconn's effective settings against cads-mars-server's own ``config.py``.

``cads_mars_server/config.py`` from ``../shared/peers/cads-mars-server``
(beside the project root) is imported fresh for every case, under that
case's environment, with ``MARS_CONFIG_FILE`` pointing at the case's YAML
file (or at a file that does not exist): it reads everything when it is
imported. Its module constants are compared with the same settings from
marsconn's ``load_settings(env=...)``.

The import raising (``int("")``, say) or ``load_settings`` raising
``ConfigError`` is the outcome ``"error"``. A case is identical, or names
the id of a chosen difference documented in docs/migrating.md together
with marsconn's outcome: its values for the settings that differ, or
``"error"``. Every setting not named must still be equal, and a named one
must really differ, so an undocumented difference, or a documented one that
went away, fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _peers import PEERS, require_peer

from marsconn.core.errors import ConfigError
from marsconn.plan import settings as settings_module
from marsconn.plan import sources as sources_module
from marsconn.plan.load import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PY = PEERS / "cads-mars-server" / "cads_mars_server" / "config.py"
MIGRATING = ROOT / "docs" / "migrating.md"

#: marsconn setting -> the constant cads-mars-server's config.py gives it.
COMPARED = {
    "pipe_port": "DEFAULT_PIPE_PORT",
    "shares_port": "DEFAULT_SHARES_PORT",
    "heartbeat_interval": "HEARTBEAT_INTERVAL",
    "ws_close_timeout": "WS_CLOSE_TIMEOUT",
    "ws_ping_interval": "WS_PING_INTERVAL",
    "retry_delay": "RETRY_DELAY",
    "max_retries": "MAX_RETRIES",
    "request_timeout": "REQUEST_TIMEOUT",
    "client_filter_logs": "CLIENT_FILTER_LOGS",
    "use_shares": "USE_SHARES",
}

Effective = dict[str, Any] | str  # the compared settings, or "error"


@pytest.fixture(scope="module")
def config_source() -> Path:
    """cads-mars-server's config.py; skipped without it, except in CI."""
    return require_peer(CONFIG_PY, "cads-mars-server's config.py")


@dataclass(frozen=True)
class Case:
    """Environment and YAML text (None: MARS_CONFIG_FILE names a file that does not exist)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    yaml: str | None = None
    #: (difference id, marsconn's values of the settings that differ, or "error")
    differ: tuple[str, dict[str, Any] | str] | None = None


CASES = [
    Case("nothing set, MARS_CONFIG_FILE names a missing file"),
    Case("empty YAML file", yaml=""),
    Case(
        "every compared key in YAML",
        yaml="pipe_port: 9100\nshares_port: 9101\nheartbeat_interval: 30\n"
        "ws_close_timeout: 10\nws_ping_interval: 15\nretry_delay: 3\nmax_retries: 5\n"
        "request_timeout: 60\nclient_filter_logs: false\nuse_shares: true\n",
    ),
    Case(
        "environment beats YAML",
        env={"MARS_PIPE_PORT": "9200", "MARS_USE_SHARES": "false"},
        yaml="pipe_port: 9100\nuse_shares: true\n",
    ),
    Case("ports from the environment", env={"MARS_PIPE_PORT": "8000", "MARS_SHARES_PORT": "8001"}),
    Case("passes and delay", env={"MARS_MAX_RETRIES": "3", "MARS_RETRY_DELAY": "1"}),
    Case("request timeout", env={"MARS_REQUEST_TIMEOUT": "45"}),
    Case("heartbeat", env={"MARS_HEARTBEAT_INTERVAL": "5"}),
    Case("ping interval", env={"MARS_WS_PING_INTERVAL": "20"}),
    Case("ping interval null in YAML", yaml="ws_ping_interval: null\n"),
    Case("close timeout", env={"MARS_WS_CLOSE_TIMEOUT": "5"}),
    Case("numbers with spaces", env={"MARS_PIPE_PORT": " 9100 ", "MARS_MAX_RETRIES": "4 "}),
    Case("quoted number in YAML", yaml="pipe_port: '9100'\n"),
    Case("filter logs false", env={"MARS_CLIENT_FILTER_LOGS": "false"}),
    Case("filter logs 0", env={"MARS_CLIENT_FILTER_LOGS": "0"}),
    Case("filter logs OFF", env={"MARS_CLIENT_FILTER_LOGS": "OFF"}),
    Case("shares true", env={"MARS_USE_SHARES": "true"}),
    Case("shares 1", env={"MARS_USE_SHARES": "1"}),
    Case("shares Yes", env={"MARS_USE_SHARES": "Yes"}),
    Case("shares on", env={"MARS_USE_SHARES": "on"}),
    Case("shares empty", env={"MARS_USE_SHARES": ""}),
    Case("YAML boolean yes", yaml="use_shares: yes\nclient_filter_logs: off\n"),
    Case("YAML number as boolean", yaml="use_shares: 1\nclient_filter_logs: 0\n"),
    Case("port not a number", env={"MARS_PIPE_PORT": "abc"}),
    Case("empty string in YAML", yaml="request_timeout: ''\n"),
    Case("YAML document is a list", yaml="- pipe_port: 9100\n"),
    Case("MARS_CONFIG_FILE empty", env={"MARS_CONFIG_FILE": ""}),
    Case(
        "shares misspelt",
        env={"MARS_USE_SHARES": "ture"},
        differ=("bool-typos", "error"),
    ),
    Case(
        "filter logs misspelt",
        env={"MARS_CLIENT_FILTER_LOGS": "flase"},
        differ=("bool-typos", "error"),
    ),
    Case(
        "shares with a leading space",
        env={"MARS_USE_SHARES": " true"},
        differ=("bool-spaces", {"use_shares": True}),
    ),
    Case(
        "YAML string false",
        yaml="use_shares: 'false'\nclient_filter_logs: 'no'\n",
        differ=("yaml-bool-strings", {"use_shares": False, "client_filter_logs": False}),
    ),
    Case(
        "filter logs empty",
        env={"MARS_CLIENT_FILTER_LOGS": ""},
        differ=("empty-unset", {"client_filter_logs": True}),
    ),
    Case(
        "empty port",
        env={"MARS_PIPE_PORT": ""},
        differ=("empty-unset", {"pipe_port": 9000}),
    ),
    Case(
        "empty delay and passes",
        env={"MARS_RETRY_DELAY": "", "MARS_MAX_RETRIES": " "},
        differ=("empty-unset", {"retry_delay": 2, "max_retries": 10}),
    ),
    Case(
        "YAML float timeout",
        yaml="request_timeout: 2.5\n",
        differ=("float-seconds", {"request_timeout": 2.5}),
    ),
    Case(
        "YAML float heartbeat, delay and ping",
        yaml="heartbeat_interval: 2.5\nretry_delay: 0.5\nws_ping_interval: 7.5\n",
        differ=(
            "float-seconds",
            {"heartbeat_interval": 2.5, "retry_delay": 0.5, "ws_ping_interval": 7.5},
        ),
    ),
    Case(
        "fractional delay in the environment",
        env={"MARS_RETRY_DELAY": "0.5"},
        differ=("float-seconds", {"retry_delay": 0.5}),
    ),
    Case(
        "fractional passes in YAML",
        yaml="max_retries: 2.5\n",
        differ=("whole-numbers", "error"),
    ),
    Case(
        "passes written 3.0",
        env={"MARS_MAX_RETRIES": "3.0"},
        differ=("whole-numbers", {"max_retries": 3}),
    ),
    Case("no passes", env={"MARS_MAX_RETRIES": "0"}, differ=("range-checks", "error")),
    Case("port out of range", env={"MARS_PIPE_PORT": "70000"}, differ=("range-checks", "error")),
    Case("zero timeout", env={"MARS_REQUEST_TIMEOUT": "0"}, differ=("range-checks", "error")),
    Case("negative delay", env={"MARS_RETRY_DELAY": "-1"}, differ=("range-checks", "error")),
    Case("zero heartbeat", yaml="heartbeat_interval: 0\n", differ=("range-checks", "error")),
    Case(
        "ping disabled by word",
        env={"MARS_WS_PING_INTERVAL": "none"},
        differ=("none-words", {"ws_ping_interval": None}),
    ),
    Case("broken YAML", yaml="pipe_port: [9100\n", differ=("bad-yaml", "error")),
]


def cads_mars_server_config(
    case: Case, tmp: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> Effective:
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("MARS_")]:
            m.delenv(name)
        for name, value in environ_of(case, tmp).items():
            m.setenv(name, value)
        spec = importlib.util.spec_from_file_location("_difftest_cms_config", source)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # it warns, then ignores, a file it cannot load
                spec.loader.exec_module(module)
        except Exception:
            return "error"
        return {name: getattr(module, constant) for name, constant in COMPARED.items()}


def marsconn_settings(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Effective:
    # The default /etc path is never consulted by either side in these cases.
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(tmp / "absent-default.yaml"))
    try:
        s = load_settings(env=environ_of(case, tmp)).settings
    except ConfigError:
        return "error"
    return {name: getattr(s, name) for name in COMPARED}


def environ_of(case: Case, tmp: Path) -> dict[str, str]:
    yaml_file = tmp / "cads-mars-server.yaml"
    if case.yaml is not None:
        yaml_file.write_text(case.yaml)
    return {"MARS_CONFIG_FILE": str(yaml_file), **case.env}


def test_enough_distinct_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def test_every_difference_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", MIGRATING.read_text(), flags=re.M))
    used = {case.differ[0] for case in CASES if case.differ}
    assert used - documented == set()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_settings_agree_with_cads_mars_server(
    case: Case, tmp_path: Path, config_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = cads_mars_server_config(case, tmp_path, config_source, monkeypatch)
    ours = marsconn_settings(case, tmp_path, monkeypatch)
    if case.differ is None:
        assert ours == theirs
        return
    diff_id, expected = case.differ
    if expected == "error" or theirs == "error":
        assert ours != theirs, f"'{diff_id}' no longer differs"
        if expected == "error":
            assert ours == "error"
        else:
            assert isinstance(ours, dict)
            assert {k: ours[k] for k in expected} == expected
        return
    assert isinstance(ours, dict)
    assert isinstance(theirs, dict)
    assert isinstance(expected, dict)
    for name in COMPARED:
        if name in expected:
            assert ours[name] == expected[name], name
            assert ours[name] != theirs[name], f"{name}: '{diff_id}' no longer differs"
        else:
            assert ours[name] == theirs[name], name


def test_without_the_peers_the_tests_skip_but_fail_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = tmp_path / "config.py"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"config.py is not at {absent}"):
        require_peer(absent, "config.py")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the differential tests"):
        require_peer(absent, "config.py")
    absent.write_text("")
    assert require_peer(absent, "config.py") == absent


def test_server_only_yaml_keys_are_the_ones_config_py_reads(config_source: Path) -> None:
    # The keys of the shared YAML file that cads-mars-server reads and marsconn does not give
    # no "unknown key" warning; that list must be exactly what config.py reads beyond ours.
    text = config_source.read_text()
    read = set(re.findall(r'_get_config\(\s*"MARS_\w+",\s*"(\w+)"', text))
    read |= set(re.findall(r'_file_config\.get\("(\w+)"\)', text))
    ours = {keys.yaml_key for keys in settings_module.setting_keys().values() if keys.yaml_key}
    assert read - ours == set(sources_module.SERVER_YAML_KEYS)
