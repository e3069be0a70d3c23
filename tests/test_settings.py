"""Typed settings merged from every source, with provenance; and the docs that describe them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from marsconn.core.errors import ConfigError, Problem
from marsconn.plan import sources as sources_module
from marsconn.plan.load import LoadedSettings, load_settings
from marsconn.plan.provenance import Provenance, SourceKind
from marsconn.plan.serverlist import DEFAULT_LIST_FILES
from marsconn.plan.settings import MarsSettings, setting_keys
from marsconn.plan.sources import CONFIG_FILE_VAR, DEFAULT_CONFIG_FILE

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BOOL = "true/false, 1/0, yes/no, on/off (any case)"
PORT = "a whole number from 1 to 65535"
SECONDS = "a number of seconds greater than 0, at most 604800 (7 days)"
SECONDS0 = "a number of seconds from 0 to 604800 (7 days)"


@pytest.fixture(autouse=True)
def no_system_yaml(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the default YAML path at a file that does not exist: tests never see /etc."""
    absent = tmp_path_factory.mktemp("etc") / "cads-mars-server.yaml"
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(absent))


def load(config: Mapping[str, Any] | None = None, **kwargs: Any) -> LoadedSettings:
    kwargs.setdefault("env", {})
    return load_settings(config, **kwargs)


def problems_of(**kwargs: Any) -> list[str]:
    config = kwargs.pop("config", None)
    with pytest.raises(ConfigError) as info:
        load(config, **kwargs)
    return [str(p) for p in info.value.problems]


# --- the setting table ----------------------------------------------------------------------


def test_every_setting_has_distinct_names() -> None:
    keys = setting_keys()
    assert list(keys) == list(MarsSettings.model_fields)
    envs = [k.env for k in keys.values() if k.env]
    yamls = [k.yaml_key for k in keys.values() if k.yaml_key]
    assert len(envs) == len(set(envs))
    assert len(yamls) == len(set(yamls))
    assert all(e.startswith("MARS_") for e in envs)
    assert {k.adaptor for k in keys.values() if k.adaptor} == {"mars_servers", "mars_server_list"}
    assert all(k.accepted and k.accepted != "None" for k in keys.values())


def test_protocol_settings_keep_their_names_and_defaults() -> None:
    # The names and defaults existing deployments already rely on.
    expected = {
        "MARS_USE_SHARES": ("use_shares", False),
        "MARS_FORCE_WEBSOCKET_MODE": (None, False),
        "MARS_WS_SERVERS": ("mars_ws_servers", None),
        "MARS_API_SERVER_LIST": (None, None),
        "MARS_PIPE_PORT": ("pipe_port", 9000),
        "MARS_SHARES_PORT": ("shares_port", 9001),
        "MARS_REQUEST_TIMEOUT": ("request_timeout", 30),
        "MARS_MAX_RETRIES": ("max_retries", 10),
        "MARS_RETRY_DELAY": ("retry_delay", 2),
        "MARS_HEARTBEAT_INTERVAL": ("heartbeat_interval", 20),
        "MARS_WS_PING_INTERVAL": ("ws_ping_interval", None),
        "MARS_WS_CLOSE_TIMEOUT": ("ws_close_timeout", 30),
        "MARS_CLIENT_FILTER_LOGS": ("client_filter_logs", True),
    }
    s = load().settings
    by_env = {k.env: k for k in setting_keys().values()}
    for env, (yaml_key, default) in expected.items():
        keys = by_env[env]
        assert keys.yaml_key == yaml_key, env
        assert getattr(s, keys.field) == default, env
        assert not keys.added, env
    assert DEFAULT_CONFIG_FILE == "/etc/cads-mars-server.yaml"
    assert CONFIG_FILE_VAR == "MARS_CONFIG_FILE"


def test_defaults_come_from_default() -> None:
    loaded = load()
    assert loaded.settings == MarsSettings.model_construct()
    assert {p.kind for p in loaded.provenance.values()} == {SourceKind.DEFAULT}
    assert loaded.where("pipe_port") == "default"
    assert loaded.warnings == ()
    assert loaded.env_file is None
    assert loaded.config_file_provenance == Provenance(SourceKind.DEFAULT, CONFIG_FILE_VAR)


# --- value syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("0", False),
    ],
)
def test_boolean_spellings(text: str, value: bool) -> None:
    loaded = load(env={"MARS_USE_SHARES": text, "MARS_CLIENT_FILTER_LOGS": text})
    assert loaded.settings.use_shares is value
    assert loaded.settings.client_filter_logs is value


@pytest.mark.parametrize("text", ["ture", "t", "y", "n", "2", "enabled", "true!"])
def test_misspelt_booleans_are_errors_never_false(text: str) -> None:
    assert problems_of(env={"MARS_USE_SHARES": text}) == [
        f"environment variable MARS_USE_SHARES: not a boolean (got {text!r}); accepted: {BOOL}"
    ]


def test_empty_variable_counts_as_unset() -> None:
    loaded = load(env={"MARS_USE_SHARES": "", "MARS_PIPE_PORT": "   "})
    assert loaded.settings.use_shares is False
    assert loaded.settings.pipe_port == 9000
    assert loaded.provenance["pipe_port"].kind is SourceKind.DEFAULT


def test_values_are_trimmed_and_typed() -> None:
    s = load(
        env={
            "MARS_PIPE_PORT": " 8000 ",
            "MARS_REQUEST_TIMEOUT": "2.5",
            "MARS_FAILOVER_ORDER": " Stable ",
            "MARS_JOB_DEADLINE": "3600",
            "MARS_WS_PING_INTERVAL": "NULL",
            "MARS_CA_BUNDLE": "/etc/ssl/mars.pem",
            "MARS_API_SERVER_LIST": "/etc/mars/x.list",
        }
    ).settings
    assert s.pipe_port == 8000
    assert s.request_timeout == 2.5
    assert s.failover_order == "stable"
    assert s.job_deadline == 3600.0
    assert s.ws_ping_interval is None
    assert s.ca_bundle == Path("/etc/ssl/mars.pem")
    assert s.api_server_list == Path("/etc/mars/x.list")


@pytest.mark.parametrize(
    ("value", "servers"),
    [
        ("ws://a:9001,ws://b:9001", ["ws://a:9001", "ws://b:9001"]),
        (",ws://a:9001,, ws://b:9001 ,", ["ws://a:9001", "ws://b:9001"]),
        ('["ws://a:9001", "ws://b:9001"]', ["ws://a:9001", "ws://b:9001"]),
        ("[ws://a:9001, ws://b:9001]", ["ws://a:9001", "ws://b:9001"]),
        ("[fd00::5]:9001", ["[fd00::5]:9001"]),
        ("[fd00::5]", ["[fd00::5]"]),
        ("[fd00::5]:9001,ws://[fd00::6]:9001", ["[fd00::5]:9001", "ws://[fd00::6]:9001"]),
        (",", []),
    ],
)
def test_ws_servers_syntax(value: str, servers: list[str]) -> None:
    assert load(env={"MARS_WS_SERVERS": value}).settings.ws_servers == servers


def test_ws_servers_broken_list_is_an_error() -> None:
    assert problems_of(env={"MARS_WS_SERVERS": "[ws://a, [ws://b]"}) == [
        "environment variable MARS_WS_SERVERS: not a valid YAML/JSON list (expected ',' or "
        "']', but got '<stream end>') (got '[ws://a, [ws://b]'); accepted: comma-separated "
        "server URLs, "
        "or a list of URLs in YAML/JSON"
    ]


def test_adaptor_servers_accept_a_url_or_a_list() -> None:
    assert load({"mars_servers": "http://a:9000"}).settings.servers == ["http://a:9000"]
    assert load({"mars_servers": ["http://a", "http://b"]}).settings.servers == [
        "http://a",
        "http://b",
    ]


def test_every_bad_value_is_reported_at_once() -> None:
    env = {
        "MARS_USE_SHARES": "ture",
        "MARS_PIPE_PORT": "abc",
        "MARS_SHARES_PORT": "70000",
        "MARS_REQUEST_TIMEOUT": "0",
        "MARS_RETRY_DELAY": "-1",
        "MARS_MAX_RETRIES": "0",
        "MARS_FAILOVER_ORDER": "random",
        "MARS_REQUIRED_SERVER_VERSION": "x.y",
        "MARS_JOB_DEADLINE": "soon",
        "MARS_CONNECT_TIMEOUT": "1e400",
        "MARS_READ_TIMEOUT": "nan",
    }
    assert sorted(problems_of(env=env)) == sorted(
        [
            f"environment variable MARS_USE_SHARES: not a boolean (got 'ture'); accepted: {BOOL}",
            "environment variable MARS_PIPE_PORT: input should be a valid integer, unable to "
            f"parse string as an integer (got 'abc'); accepted: {PORT}",
            "environment variable MARS_SHARES_PORT: input should be less than or equal to "
            f"65535 (got '70000'); accepted: {PORT}",
            "environment variable MARS_REQUEST_TIMEOUT: input should be greater than 0 "
            f"(got '0'); accepted: {SECONDS}",
            "environment variable MARS_RETRY_DELAY: input should be greater than or equal to 0 "
            f"(got '-1'); accepted: {SECONDS0}",
            "environment variable MARS_MAX_RETRIES: input should be greater than or equal to 1 "
            "(got '0'); accepted: a whole number from 1 to 1000",
            "environment variable MARS_FAILOVER_ORDER: input should be 'listed', 'shuffled' or "
            "'stable' (got 'random'); accepted: listed, shuffled or stable",
            "environment variable MARS_REQUIRED_SERVER_VERSION: not a version number "
            "(got 'x.y'); accepted: a version number such as 0.3.0",
            "environment variable MARS_JOB_DEADLINE: input should be a valid number, unable to "
            f"parse string as a number (got 'soon'); accepted: {SECONDS}, or none/null to "
            "disable",
            "environment variable MARS_CONNECT_TIMEOUT: input should be a finite number "
            f"(got '1e400'); accepted: {SECONDS}",
            "environment variable MARS_READ_TIMEOUT: input should be a finite number "
            f"(got 'nan'); accepted: {SECONDS}",
        ]
    )


def test_error_header_counts_problems() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"MARS_PIPE_PORT": "0"})
    assert str(info.value) == (
        "invalid MARS connection configuration (1 problem):\n"
        "  - environment variable MARS_PIPE_PORT: input should be greater than or equal to 1 "
        f"(got '0'); accepted: {PORT}"
    )
    assert isinstance(info.value, ValueError)


def test_keyword_overrides_are_checked_and_secrets_redacted() -> None:
    problems = problems_of(
        overrides={
            "max_retrys": 3,
            "ws_servers": {"a": "http://user:hunter2@h"},
            "servers": ["http://a", 7],
        }
    )
    assert problems == [
        "keyword override 'max_retrys': unknown setting; did you mean 'max_retries'?; "
        "accepted: a MarsSettings field name (see `marsconn schema`)",
        "keyword override 'servers' item 1: input should be a valid string (got '7'); "
        "accepted: a URL or a list of URLs",
        "keyword override 'ws_servers': input should be a valid list "
        "(got \"{'a': 'http://***@h'}\"); accepted: comma-separated server URLs, "
        "or a list of URLs in YAML/JSON",
    ]
    assert not any("hunter2" in p for p in problems)


def test_unknown_override_without_a_near_name() -> None:
    assert problems_of(overrides={"zzz": 1}) == [
        "keyword override 'zzz': unknown setting; "
        "accepted: a MarsSettings field name (see `marsconn schema`)"
    ]


def test_retry_backoff_is_fixed_unless_exponential_is_asked_for() -> None:
    assert load().settings.retry_backoff == "fixed"
    loaded = load(env={"MARS_RETRY_BACKOFF": " Exponential "})
    assert loaded.settings.retry_backoff == "exponential"
    assert loaded.where("retry_backoff") == "environment variable MARS_RETRY_BACKOFF"
    assert problems_of(env={"MARS_RETRY_BACKOFF": "linear"}) == [
        "environment variable MARS_RETRY_BACKOFF: input should be 'fixed' or 'exponential' "
        "(got 'linear'); accepted: fixed or exponential"
    ]


DIR_MODE = (
    "an octal permission mode such as 0733, 0o733 or '733' (quoted in YAML) that gives the "
    "owner rwx (0o700) and sets nothing beyond 0o777"
)


@pytest.mark.parametrize(
    ("text", "mode"),
    [("0733", 0o733), ("0o733", 0o733), ("733", 0o733), (" 0O755 ", 0o755), ("700", 0o700)],
)
def test_shares_dir_mode_spellings(text: str, mode: int) -> None:
    assert load(env={"MARS_SHARES_DIR_MODE": text}).settings.shares_dir_mode == mode


def test_shares_dir_mode_default_and_keyword_override() -> None:
    assert load().settings.shares_dir_mode == 0o733
    assert load(overrides={"shares_dir_mode": 0o770}).settings.shares_dir_mode == 0o770
    assert load(overrides={"shares_dir_mode": "0o711"}).settings.shares_dir_mode == 0o711


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "not an octal permission mode"),
        ("0o798", "not an octal permission mode"),
        ("-733", "not an octal permission mode"),
        ("0o633", "0o633 does not give the owner rwx"),
        ("0o500", "0o500 does not give the owner rwx"),
        ("1733", "0o1733 sets bits beyond 0o777"),
        ("4755", "0o4755 sets bits beyond 0o777"),
    ],
)
def test_shares_dir_mode_refused(text: str, message: str) -> None:
    (problem,) = problems_of(env={"MARS_SHARES_DIR_MODE": text})
    assert problem.startswith(f"environment variable MARS_SHARES_DIR_MODE: {message}")
    assert problem.endswith(f"(got {text!r}); accepted: {DIR_MODE}")


def test_shares_dir_mode_refuses_a_boolean_and_negative_numbers() -> None:
    assert problems_of(overrides={"shares_dir_mode": True}) == [
        f"keyword override 'shares_dir_mode': not a permission mode (got 'True'); "
        f"accepted: {DIR_MODE}"
    ]
    (problem,) = problems_of(overrides={"shares_dir_mode": -1})
    assert problem.startswith("keyword override 'shares_dir_mode': -0o1 sets bits beyond 0o777")


def test_shares_dir_mode_from_yaml(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted leading 0 as octal; a quoted string is octal text.
    octal = write(tmp_path / "a.yaml", "shares_dir_mode: 0733\n")
    assert load(config_file=octal).settings.shares_dir_mode == 0o733
    quoted = write(tmp_path / "b.yaml", "shares_dir_mode: '711'\n")
    loaded = load(config_file=quoted)
    assert loaded.settings.shares_dir_mode == 0o711
    assert loaded.where("shares_dir_mode") == f"{quoted}:1 (key 'shares_dir_mode')"
    # An unquoted 733 is the decimal number 733: refused, saying how to write it.
    decimal = write(tmp_path / "c.yaml", "\nshares_dir_mode: 733\n")
    assert problems_of(config_file=decimal) == [
        f"{decimal}:2 (key 'shares_dir_mode'): 733 is more than 0o777; in YAML write the "
        f"mode as 0733 or quote it (got '733'); accepted: {DIR_MODE}"
    ]


# --- sources and precedence -----------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_override_adaptor_env_dotenv_yaml_default(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path / "c.yaml",
        "use_shares: true\n"
        "pipe_port: 9100\n"
        "shares_port: 9101\n"
        "request_timeout: 60\n"
        "max_retries: 7\n"
        "mars_ws_servers:\n  - ws://y:9001\n",
    )
    dotenv = write(
        tmp_path / "d.env",
        "# comment\nMARS_PIPE_PORT=9200\nexport MARS_SHARES_PORT=9201\nMARS_REQUEST_TIMEOUT=45\n",
    )
    env = {"MARS_PIPE_PORT": "9300", "MARS_SHARES_PORT": "9301", "MARS_WS_SERVERS": "ws://e"}
    loaded = load(
        {"mars_servers": "http://adaptor:9000", "mars_server_list": "/adaptor.list"},
        env=env,
        env_file=dotenv,
        config_file=yaml_file,
        overrides={"pipe_port": 9400, "server_list": "/override.list"},
    )
    s, where = loaded.settings, loaded.where
    assert (s.pipe_port, where("pipe_port")) == (9400, "keyword override 'pipe_port'")
    assert (s.server_list, where("server_list")) == (
        Path("/override.list"),
        "keyword override 'server_list'",
    )
    assert (s.servers, where("servers")) == (
        ["http://adaptor:9000"],
        "adaptor config key 'mars_servers'",
    )
    assert (s.shares_port, where("shares_port")) == (
        9301,
        "environment variable MARS_SHARES_PORT",
    )
    assert (s.ws_servers, where("ws_servers")) == (
        ["ws://e"],
        "environment variable MARS_WS_SERVERS",
    )
    assert (s.request_timeout, where("request_timeout")) == (
        45.0,
        f"{dotenv}:4 (MARS_REQUEST_TIMEOUT)",
    )
    assert (s.max_retries, where("max_retries")) == (7, f"{yaml_file}:5 (key 'max_retries')")
    assert (s.use_shares, where("use_shares")) == (True, f"{yaml_file}:1 (key 'use_shares')")
    assert (s.retry_delay, where("retry_delay")) == (2.0, "default")
    assert loaded.provenance["request_timeout"] == Provenance(
        SourceKind.DOTENV, "MARS_REQUEST_TIMEOUT", str(dotenv), 4
    )
    assert loaded.provenance["max_retries"] == Provenance(
        SourceKind.YAML, "max_retries", str(yaml_file), 5
    )
    assert loaded.env_file == dotenv


def test_each_lower_source_shows_through_when_higher_ones_are_silent(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "c.yaml", "pipe_port: 9100\n")
    dotenv = write(tmp_path / "d.env", "MARS_PIPE_PORT=9200\n")
    assert load(config_file=yaml_file).where("pipe_port") == f"{yaml_file}:1 (key 'pipe_port')"
    assert load(config_file=yaml_file, env_file=dotenv).settings.pipe_port == 9200
    assert (
        load(config_file=yaml_file, env_file=dotenv, env={"MARS_PIPE_PORT": "9300"}).settings
    ).pipe_port == 9300


def test_yaml_file_from_env_var_then_dotenv(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "pipe_port: 1111\n")
    b = write(tmp_path / "b.yaml", "pipe_port: 2222\n")
    dotenv = write(tmp_path / "d.env", f"MARS_CONFIG_FILE={b}\n")
    from_env = load(env={"MARS_CONFIG_FILE": str(a)}, env_file=dotenv)
    assert from_env.settings.pipe_port == 1111
    assert from_env.config_file == a
    assert from_env.config_file_provenance == Provenance(SourceKind.ENV, "MARS_CONFIG_FILE")
    from_dotenv = load(env_file=dotenv)
    assert from_dotenv.settings.pipe_port == 2222
    assert from_dotenv.config_file_provenance == Provenance(
        SourceKind.DOTENV, "MARS_CONFIG_FILE", str(dotenv)
    )
    explicit = load(env={"MARS_CONFIG_FILE": str(a)}, config_file=b)
    assert explicit.settings.pipe_port == 2222
    assert explicit.config_file_provenance == Provenance(SourceKind.OVERRIDE, "config_file")


def test_default_yaml_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = write(tmp_path / "cads-mars-server.yaml", "shares_port: 9555\n")
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(default))
    loaded = load()
    assert loaded.settings.shares_port == 9555
    assert loaded.config_file == default


def test_absent_default_yaml_is_fine() -> None:
    loaded = load()
    assert not loaded.config_file.exists()
    assert loaded.settings.pipe_port == 9000


def test_yaml_ignores_unknown_keys_and_nulls(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path / "c.yaml", "server_root: /scratch\nmax_connections: 20\npipe_port: null\n"
    )
    loaded = load(config_file=yaml_file)
    assert loaded.settings.pipe_port == 9000
    assert loaded.where("pipe_port") == "default"


def test_empty_yaml_file_is_fine(tmp_path: Path) -> None:
    assert load(config_file=write(tmp_path / "c.yaml", "# nothing\n")).settings.pipe_port == 9000


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "pipe_port: 9000\nshares_port: [\n",
            "{path}:3: invalid YAML: expected the node content, but found '<stream end>'; "
            "accepted: a YAML mapping",
        ),
        (
            "- a\n- b\n",
            "{path}: the YAML document is a list, not a mapping; "
            "accepted: a YAML mapping of setting keys to values",
        ),
        (
            "use_shares: ture\nshares_port: abc\n",
            "{path}:1 (key 'use_shares'): not a boolean (got 'ture'); accepted: " + BOOL,
        ),
    ],
)
def test_yaml_problems_name_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    assert problems_of(config_file=path)[0] == problem.format(path=path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "pipe_port: 9000\n---\nshares_port: 9001\n",
            "{path}:2: invalid YAML: expected a single document in the stream but found "
            "another document; accepted: a YAML mapping",
        ),
        (
            "pipe_port: \x07\n",
            "{path}: invalid YAML: unacceptable character #x0007: special characters are not "
            'allowed in "<unicode string>", position 11; accepted: a YAML mapping',
        ),
        (
            "pipe_port: !!python/name:os.system\n",
            "{path}:1: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'; accepted: a YAML mapping",
        ),
    ],
)
def test_yaml_is_parsed_safely(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    assert problems_of(config_file=path) == [problem.format(path=path)]


def test_yaml_version_needs_quotes(tmp_path: Path) -> None:
    # docs/configuration.md says so: unquoted, YAML reads 0.4 as a float.
    quoted = write(tmp_path / "q.yaml", 'required_server_version: "0.4"\n')
    assert load(config_file=quoted).settings.required_server_version == "0.4"
    bare = write(tmp_path / "b.yaml", "required_server_version: 0.4\n")
    assert problems_of(config_file=bare) == [
        f"{bare}:1 (key 'required_server_version'): input should be a valid string "
        "(got '0.4'); accepted: a version number such as 0.3.0"
    ]


def test_yaml_null_document_is_empty(tmp_path: Path) -> None:
    assert load(config_file=write(tmp_path / "c.yaml", "~\n")).settings.pipe_port == 9000


def test_yaml_list_as_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "pipe_port: 9100\n? [a, b]\n: 1\n")
    assert problems_of(config_file=path) == [
        f"{path}:2: invalid YAML: found unhashable key; accepted: a YAML mapping"
    ]


def test_yaml_bad_values_each_name_their_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "use_shares: ture\n\nshares_port: abc\n")
    assert problems_of(config_file=path) == [
        f"{path}:1 (key 'use_shares'): not a boolean (got 'ture'); accepted: {BOOL}",
        f"{path}:3 (key 'shares_port'): input should be a valid integer, unable to parse "
        f"string as an integer (got 'abc'); accepted: {PORT}",
    ]


MISSING_HINT = (
    "which does not exist; it is ignored and the other sources and defaults apply (as "
    "cads-mars-server does); `marsconn validate` reports this as an error"
)


def test_missing_config_file_named_by_the_environment_is_a_warning(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    loaded = load(env={"MARS_CONFIG_FILE": str(missing), "MARS_PIPE_PORT": "9100"})
    assert loaded.warnings == (
        f"environment variable MARS_CONFIG_FILE: names YAML config file {str(missing)!r}, "
        + MISSING_HINT,
    )
    # Everything else still applies, the rest from defaults.
    assert loaded.settings.pipe_port == 9100
    assert loaded.settings.shares_port == 9001
    assert loaded.config_file == missing
    assert loaded.config_file_provenance == Provenance(SourceKind.ENV, "MARS_CONFIG_FILE")


def test_missing_config_file_named_by_a_dotenv_file_is_a_warning(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    dotenv = write(tmp_path / "d.env", f"MARS_CONFIG_FILE={missing}\n")
    loaded = load(env_file=dotenv)
    assert loaded.warnings == (
        f"{dotenv} (MARS_CONFIG_FILE): names YAML config file {str(missing)!r}, " + MISSING_HINT,
    )
    assert loaded.settings == MarsSettings.model_construct()


def test_missing_config_file_is_an_error_when_strict(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems_of(env={"MARS_CONFIG_FILE": str(missing)}, strict=True) == [
        f"environment variable MARS_CONFIG_FILE: YAML config file {str(missing)!r} does not "
        "exist; accepted: the path of a readable YAML file (or leave it unset)"
    ]


def test_missing_config_file_passed_as_argument_is_always_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems_of(config_file=missing) == [
        f"keyword override 'config_file': YAML config file {str(missing)!r} does not "
        "exist; accepted: the path of a readable YAML file (or leave it unset)"
    ]


def test_absent_default_yaml_is_silent_even_when_strict() -> None:
    loaded = load(strict=True)
    assert loaded.warnings == ()
    assert loaded.settings == MarsSettings.model_construct()


def test_unreadable_yaml_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems_of(config_file=tmp_path) == [
        f"keyword override 'config_file': YAML config file {str(tmp_path)!r} cannot be read: "
        "a directory, not a regular file; accepted: a readable UTF-8 YAML file"
    ]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"pipe_port: 9000 # caf\xe9\n")
    assert problems_of(config_file=latin) == [
        f"keyword override 'config_file': YAML config file {str(latin)!r} cannot be read: "
        "not UTF-8 text (byte 21); accepted: a readable UTF-8 YAML file"
    ]
    # The default file, present but unreadable, is a problem too (absent would be fine).
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(tmp_path))
    assert problems_of() == [
        f"default YAML config: YAML config file {str(tmp_path)!r} cannot be read: "
        "a directory, not a regular file; accepted: a readable UTF-8 YAML file"
    ]


def test_dotenv_that_was_named_must_be_readable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    assert problems_of(env_file=missing) == [
        f"dotenv file {str(missing)!r}: cannot be read: No such file or directory; "
        "accepted: a readable file of VAR=value lines"
    ]


def test_near_miss_variable_names_are_warnings(tmp_path: Path) -> None:
    dotenv = write(tmp_path / "d.env", "MARS_PIPE_PROT=9000\n")
    loaded = load(
        env={"MARS_USE_SHARE": "true", "MARS_SOMETHING_ELSE": "1", "MARS_CONFIG_FILES": "x"},
        env_file=dotenv,
    )
    assert loaded.warnings == (
        "environment variable MARS_CONFIG_FILES: not a marsconn setting, ignored; "
        "did you mean MARS_CONFIG_FILE?",
        "environment variable MARS_USE_SHARE: not a marsconn setting, ignored; "
        "did you mean MARS_USE_SHARES?",
        f"{dotenv}:1 (MARS_PIPE_PROT): not a marsconn setting, ignored; "
        "did you mean MARS_PIPE_PORT?",
    )
    assert loaded.settings.use_shares is False


def test_none_override_means_unset() -> None:
    loaded = load(env={"MARS_PIPE_PORT": "9100"}, overrides={"pipe_port": None})
    assert loaded.where("pipe_port") == "environment variable MARS_PIPE_PORT"


def test_adaptor_config_other_keys_are_ignored() -> None:
    loaded = load({"mars_servers": None, "dataset": "era5", "use_shares": True})
    assert loaded.settings.servers is None
    assert loaded.settings.use_shares is False


# --- no hidden inputs -----------------------------------------------------------------------


def test_guard_catches_reads(guarded_environ: Any) -> None:
    guarded_environ.armed = True
    with pytest.raises(AssertionError, match=r"os\.environ was read"):
        load_settings()


def test_env_given_never_reads_os_environ(guarded_environ: Any) -> None:
    guarded_environ.armed = True
    loaded = load_settings(env={"MARS_PIPE_PORT": "9100"})
    guarded_environ.armed = False
    assert loaded.settings.pipe_port == 9100
    assert loaded.settings.shares_port == 9001


def test_process_environment_does_not_leak_into_an_env_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: validation used to re-run pydantic-settings' own sources,
    # which filled every field missing from ``env`` from os.environ.
    monkeypatch.setenv("MARS_SHARES_PORT", "1234")
    monkeypatch.setenv("MARS_USE_SHARES", "ture")
    loaded = load_settings(env={})
    assert loaded.settings.shares_port == 9001
    assert loaded.settings.use_shares is False


def test_without_env_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARS_SHARES_PORT", "1234")
    loaded = load_settings()
    assert loaded.settings.shares_port == 1234
    assert loaded.where("shares_port") == "environment variable MARS_SHARES_PORT"


def test_plain_model_reads_environment_and_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_file = write(tmp_path / "c.yaml", "pipe_port: 9100\nshares_port: 9101\n")
    monkeypatch.setenv("MARS_CONFIG_FILE", str(yaml_file))
    monkeypatch.setenv("MARS_SHARES_PORT", "9201")
    s = MarsSettings(max_retries=2)
    assert (s.pipe_port, s.shares_port, s.max_retries) == (9100, 9201, 2)


def test_plain_model_reports_source_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_CONFIG_FILE", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        MarsSettings()
    assert info.value.problems == (
        Problem(
            "environment variable MARS_CONFIG_FILE",
            f"YAML config file {str(tmp_path)!r} cannot be read: a directory, not a regular file",
            accepted="a readable UTF-8 YAML file",
        ),
    )


def test_plain_model_ignores_a_missing_named_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARS_CONFIG_FILE", "/nonexistent/marsconn.yaml")
    monkeypatch.setenv("MARS_PIPE_PORT", "9100")
    s = MarsSettings()
    assert (s.pipe_port, s.shares_port) == (9100, 9001)


def test_settings_are_frozen() -> None:
    s = load().settings
    with pytest.raises(ValueError, match="frozen"):
        s.pipe_port = 1


# --- docs/configuration.md matches the code -------------------------------------------------


def _doc_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in DOCS.read_text().splitlines():
        if line.startswith("| setting | environment variable |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def _code(text: str | None) -> str:
    return f"`{text}`" if text else "-"


def _doc_default(value: Any, name: str = "") -> str:
    if name == "shares_dir_mode":
        return f"`{value:#o}`"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_docs_list_every_setting_exactly() -> None:
    rows = _doc_rows()
    assert list(rows) == list(MarsSettings.model_fields), "settings table rows != settings"
    for name, keys in setting_keys().items():
        field = MarsSettings.model_fields[name]
        _, env, yaml_key, adaptor, _type, default, meaning = rows[name]
        assert env == _code(keys.env), name
        assert yaml_key == _code(keys.yaml_key), name
        assert adaptor == _code(keys.adaptor), name
        assert default == _doc_default(field.default, name), name
        assert f"Accepted: {keys.accepted}." in meaning, name
        assert str(field.description) in meaning, name


def test_docs_name_config_file_and_default_list_files_in_order() -> None:
    text = DOCS.read_text()
    assert f"`{CONFIG_FILE_VAR}`" in text
    assert f"`{DEFAULT_CONFIG_FILE}`" in text
    positions = [text.index(f"`{path}`") for path in DEFAULT_LIST_FILES]
    assert positions == sorted(positions)
    assert re.search(r"`/etc/mars/mars-api-server-legacy\.list`, then\s+`/etc/mars/", text)


def test_docs_every_env_var_in_the_code_appears() -> None:
    text = DOCS.read_text()
    for keys in setting_keys().values():
        for name in (keys.env, keys.yaml_key, keys.adaptor):
            if name:
                assert f"`{name}`" in text, name


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_docs_worked_example_holds(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_file = write(
        in_tmp / "cads-mars-server.yaml",
        "use_shares: true\nshares_port: 9101\nrequest_timeout: 60\n",
    )
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(yaml_file))
    write(in_tmp / "deploy.env", "MARS_REQUEST_TIMEOUT=45\nMARS_MAX_RETRIES=5\n")
    loaded = load(
        {"mars_servers": ["http://mars-a:9000", "http://mars-b:9000"]},
        env={"MARS_MAX_RETRIES": "3", "MARS_API_SERVER_LIST": "/etc/mars/workers.list"},
        env_file="deploy.env",
    )
    where = loaded.where
    assert where("use_shares") == f"{yaml_file}:1 (key 'use_shares')"
    assert where("shares_port") == f"{yaml_file}:2 (key 'shares_port')"
    assert (loaded.settings.request_timeout, where("request_timeout")) == (
        45.0,
        "deploy.env:1 (MARS_REQUEST_TIMEOUT)",
    )
    assert (loaded.settings.max_retries, where("max_retries")) == (
        3,
        "environment variable MARS_MAX_RETRIES",
    )
    assert where("servers") == "adaptor config key 'mars_servers'"
    non_default = {n for n, p in loaded.provenance.items() if p.kind is not SourceKind.DEFAULT}
    assert non_default == {
        "use_shares",
        "shares_port",
        "request_timeout",
        "max_retries",
        "servers",
        "api_server_list",
    }
    text = DOCS.read_text()
    for phrase in (
        "deploy.env:1 (MARS_REQUEST_TIMEOUT)",
        "environment variable MARS_MAX_RETRIES",
        "adaptor config key 'mars_servers'",
        "/etc/cads-mars-server.yaml:2 (key 'shares_port')",
    ):
        assert phrase in text


# --- provenance and problems ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prov", "text"),
    [
        (Provenance(SourceKind.OVERRIDE, "pipe_port"), "keyword override 'pipe_port'"),
        (Provenance(SourceKind.ADAPTOR, "mars_servers"), "adaptor config key 'mars_servers'"),
        (Provenance(SourceKind.ENV, "MARS_PIPE_PORT"), "environment variable MARS_PIPE_PORT"),
        (Provenance(SourceKind.DOTENV, "MARS_PIPE_PORT", "d.env", 2), "d.env:2 (MARS_PIPE_PORT)"),
        (Provenance(SourceKind.DOTENV, "MARS_CONFIG_FILE", "d.env"), "d.env (MARS_CONFIG_FILE)"),
        (Provenance(SourceKind.YAML, "pipe_port", "c.yaml", 3), "c.yaml:3 (key 'pipe_port')"),
        (Provenance(SourceKind.LIST_FILE, "server", "s.list", 9), "s.list:9 (server list)"),
        (Provenance(SourceKind.DECLARED, "server_version"), "declared (server_version)"),
        (Provenance(SourceKind.DETECTED, "cads-mars-server"), "detected (cads-mars-server)"),
        (Provenance(SourceKind.DEFAULT, "pipe_port"), "default"),
    ],
)
def test_provenance_describes_and_round_trips(prov: Provenance, text: str) -> None:
    assert prov.describe() == text
    assert str(prov) == text
    assert Provenance.from_dict(prov.to_dict()) == prov


def test_problem_text_without_value_or_accepted() -> None:
    assert str(Problem("server list", "no servers")) == "server list: no servers"
    assert str(Problem("x", "bad", value="v")) == "x: bad (got 'v')"


def test_values_source_answers_per_field() -> None:
    source = sources_module._ValuesSource(
        MarsSettings, {"pipe_port": ("9100", Provenance(SourceKind.ENV, "MARS_PIPE_PORT"))}
    )
    info = MarsSettings.model_fields["pipe_port"]
    assert source.get_field_value(info, "pipe_port") == ("9100", "pipe_port", False)
    assert source.get_field_value(info, "shares_port") == (None, "shares_port", False)
    assert source() == {"pipe_port": "9100"}


def test_unknown_yaml_keys_are_warnings_with_a_suggestion(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "use_share: true\nmax_retires: 3\nshared_root: /cache\ndebug_mode: false\n"
        "pipe_port: 9100\nfrobnicate: 1\n"
    )
    loaded = load(config_file=yaml_file)
    # Read as if the typos were not there: the defaults apply to what they meant.
    assert (loaded.settings.use_shares, loaded.settings.max_retries) == (False, 10)
    assert loaded.settings.pipe_port == 9100
    accepted = "; accepted: the YAML keys of `marsconn schema` (x-yaml-key)"
    # cads-mars-server's own keys (shared_root, debug_mode) are expected in the shared file.
    assert loaded.warnings == (
        f"{yaml_file}:1 (key 'use_share'): not a key of marsconn or cads-mars-server, "
        "ignored; did you mean 'use_shares'?" + accepted,
        f"{yaml_file}:2 (key 'max_retires'): not a key of marsconn or cads-mars-server, "
        "ignored; did you mean 'max_retries'?" + accepted,
        f"{yaml_file}:6 (key 'frobnicate'): not a key of marsconn or cads-mars-server, "
        "ignored" + accepted,
    )
    assert [w.where for w in loaded.warning_records] == [
        f"{yaml_file}:1 (key 'use_share')",
        f"{yaml_file}:2 (key 'max_retires')",
        f"{yaml_file}:6 (key 'frobnicate')",
    ]


def test_unknown_yaml_key_warnings_are_bounded(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("".join(f"unknown_{i}: {i}\n" for i in range(25)))
    loaded = load(config_file=yaml_file)
    assert len(loaded.warnings) == 21
    assert loaded.warnings[-1] == f"{yaml_file}: 5 more unknown keys, ignored"
