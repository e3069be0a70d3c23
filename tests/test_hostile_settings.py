"""Hostile or broken settings sources: each is a ConfigError naming the source.

No source may hang (a FIFO), exhaust memory (/dev/zero, an alias bomb), recurse
without bound (nested brackets), overflow (huge numbers), print more than 64 KB
of error text, or show a secret.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from marsconn import resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.core.errors import ConfigError
from marsconn.plan import sources as sources_module
from marsconn.plan.configfiles import MAX_CONFIG_BYTES, MAX_YAML_DEPTH
from marsconn.plan.model import ConnectionPlan, FailoverPolicy
from marsconn.plan.settings import MarsSettings

CA_PEM = Path(__file__).resolve().parent / "data" / "ca.pem"
SHARES = {"MARS_USE_SHARES": "true", "MARS_FORCE_WEBSOCKET_MODE": "true"}
ONE = {"mars_servers": "http://mars-1:9000"}
#: The most error text any hostile input may produce.
ERROR_TEXT_LIMIT = 64 * 1024

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path_factory.mktemp("etc") / "cads-mars-server.yaml"
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(absent))


def resolve(config: Mapping[str, Any] | None = None, **kwargs: Any) -> ConnectionPlan:
    kwargs.setdefault("env", {})
    kwargs.setdefault("default_list_files", ())
    kwargs.setdefault("logger", NullAuditLogger())
    return resolve_plan(config, **kwargs)


def refused(config: Mapping[str, Any] | None = None, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(config, **kwargs)
    assert len(str(info.value)) <= ERROR_TEXT_LIMIT
    return info.value


def only_problem(error: ConfigError) -> str:
    assert len(error.problems) == 1, error
    return str(error.problems[0])


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# --- files that are not regular files --------------------------------------------------------

NOT_REGULAR = "cannot be read: a FIFO (named pipe), not a regular file"


def test_fifo_as_server_list_is_refused_without_hanging(fifo: Path) -> None:
    text = only_problem(refused(env={"MARS_API_SERVER_LIST": str(fifo)}))
    assert text.startswith("environment variable MARS_API_SERVER_LIST: server-list file ")
    assert NOT_REGULAR in text


def test_fifo_as_adaptor_server_list_is_refused(fifo: Path) -> None:
    text = only_problem(refused({"mars_server_list": str(fifo)}))
    assert text.startswith("adaptor config key 'mars_server_list': server-list file ")
    assert NOT_REGULAR in text


def test_fifo_as_yaml_file_is_refused_without_hanging(fifo: Path) -> None:
    text = only_problem(refused(ONE, env={"MARS_CONFIG_FILE": str(fifo)}))
    assert text.startswith(
        f"environment variable MARS_CONFIG_FILE: YAML config file {str(fifo)!r}"
    )
    assert NOT_REGULAR in text


def test_fifo_as_dotenv_file_is_refused_without_hanging(fifo: Path) -> None:
    text = only_problem(refused(ONE, env_file=fifo))
    assert text.startswith(f"dotenv file {str(fifo)!r}: {NOT_REGULAR}")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_are_refused_for_every_source(device: str) -> None:
    assert "cannot be read: a character device, not a regular file" in only_problem(
        refused(env={"MARS_API_SERVER_LIST": device})
    )
    assert "a character device, not a regular file" in only_problem(
        refused(ONE, config_file=device)
    )
    assert "a character device, not a regular file" in only_problem(refused(ONE, env_file=device))


def test_dev_null_reads_as_an_empty_file() -> None:
    # MARS_CONFIG_FILE=/dev/null is a way to say "no YAML file".
    plan = resolve(ONE, env={"MARS_CONFIG_FILE": os.devnull}, env_file=os.devnull)
    assert plan.urls == ["http://mars-1:9000"]


@pytest.mark.parametrize("source", ["list", "yaml", "dotenv"])
def test_files_over_the_size_limit_are_refused(tmp_path: Path, source: str) -> None:
    big = tmp_path / "big"
    line = {"list": "http://a:9000\n", "yaml": "# padding\n", "dotenv": "# padding\n"}[source]
    big.write_text(line * (MAX_CONFIG_BYTES // len(line) + 1))
    if source == "list":
        error = refused(env={"MARS_API_SERVER_LIST": str(big)})
    elif source == "yaml":
        error = refused(ONE, config_file=big)
    else:
        error = refused(ONE, env_file=big)
    assert f"more than the {MAX_CONFIG_BYTES} accepted" in only_problem(error)


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    listed = tmp_path / "s.list"
    head = "http://a:9000\n"
    listed.write_text(head + "#" * (MAX_CONFIG_BYTES - len(head) - 1) + "\n")
    assert listed.stat().st_size == MAX_CONFIG_BYTES
    assert resolve(env={"MARS_API_SERVER_LIST": str(listed)}).urls == ["http://a:9000"]


def test_non_utf8_dotenv_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "deploy.env"
    env_file.write_bytes(b"MARS_PIPE_PORT=9100\nMARS_USE_SHARES=\xff\xfe\n")
    assert only_problem(refused(ONE, env_file=env_file)) == (
        f"dotenv file {str(env_file)!r}: cannot be read: not UTF-8 text (byte 36); "
        "accepted: a readable file of VAR=value lines"
    )


def test_a_nul_in_a_file_path_is_a_config_error() -> None:
    assert "the path contains a NUL character" in only_problem(
        refused(env={"MARS_API_SERVER_LIST": "/tmp/a\0b"})
    )


# --- nesting and expansion -------------------------------------------------------------------


def test_thousand_nested_brackets_in_ws_servers() -> None:
    value = "[" * 1000 + "ws://a" + "]" * 1000
    error = refused(env={**SHARES, "MARS_WS_SERVERS": value})
    assert str(error.problems[0]).startswith(
        "environment variable MARS_WS_SERVERS: not a valid YAML/JSON list (collections nested "
        f"more than {MAX_YAML_DEPTH} levels deep)"
    )


def test_deeply_nested_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pipe_port: 9000\nmars_ws_servers: " + "[" * 5000 + "]" * 5000 + "\n")
    assert only_problem(refused(ONE, config_file=path)) == (
        f"{path}:2: invalid YAML: collections nested more than {MAX_YAML_DEPTH} levels deep; "
        "accepted: a YAML mapping"
    )


def _alias_bomb(levels: int, width: int = 9) -> list[str]:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return lines


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*_alias_bomb(8), "mars_ws_servers: *a8"]) + "\n")
    text = only_problem(refused(ONE, config_file=path))
    assert text.startswith(f"{path}:")
    assert "values once aliases are expanded (an alias bomb?)" in text


def test_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("mars_ws_servers: &x [ws://a, *x]\n")
    assert "alias *x refers to a collection that contains it" in only_problem(
        refused(ONE, config_file=path)
    )


def test_modest_yaml_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("common: &servers [ws://a:9001, ws://b:9001]\nmars_ws_servers: *servers\n")
    plan = resolve(env=SHARES, config_file=path)
    assert plan.urls == ["ws://a:9001", "ws://b:9001"]


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_ws_servers_alias_bomb_gives_a_short_error(levels: int) -> None:
    # 189 characters at 4 levels once gave 3.1 MB of error text; 8 levels hung.
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    value = "[" + ", ".join([*anchors, f"*a{levels}"]) + "]"
    error = refused(env={**SHARES, "MARS_WS_SERVERS": value})
    assert len(str(error)) < 8 * 1024
    assert str(error.problems[0]).startswith("environment variable MARS_WS_SERVERS")


# --- error text stays bounded ----------------------------------------------------------------


def test_thousands_of_bad_list_lines_give_a_bounded_error(tmp_path: Path) -> None:
    listed = tmp_path / "s.list"
    listed.write_text("".join(f"ftp://bad-{i}\n" for i in range(20_000)))
    error = refused(env={"MARS_API_SERVER_LIST": str(listed)})
    assert error.problem_count == 20_000
    assert str(error.problems[0]).startswith(f"{listed}:1")
    assert "unsupported scheme 'ftp'" in str(error.problems[0])
    assert str(error.problems[-1]) == (
        f"configuration: {20_000 - len(error.problems) + 1} more problems not listed; "
        "fix the ones above first"
    )


def test_a_huge_value_is_cut_in_the_error() -> None:
    error = refused(env={"MARS_PIPE_PORT": "9" * 100_000})
    assert len(str(error)) < 4 * 1024
    assert "more characters]" in str(error)


# --- the CA bundle is checked with the plan --------------------------------------------------


def test_missing_ca_bundle_is_refused_when_the_plan_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    assert only_problem(refused(ONE, env={"MARS_CA_BUNDLE": str(missing)})) == (
        f"environment variable MARS_CA_BUNDLE: CA bundle {str(missing)!r} does not exist; "
        "accepted: the path of a readable PEM file of CA certificates"
    )


def test_directory_as_ca_bundle_is_refused(tmp_path: Path) -> None:
    assert only_problem(refused(ONE, env={"MARS_CA_BUNDLE": str(tmp_path)})) == (
        f"environment variable MARS_CA_BUNDLE: CA bundle {str(tmp_path)!r} cannot be read: "
        "a directory, not a regular file; accepted: the path of a readable PEM file of CA "
        "certificates"
    )


def test_ca_bundle_without_certificates_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    text = only_problem(refused(ONE, overrides={"ca_bundle": str(junk)}))
    assert text.startswith(
        f"keyword override 'ca_bundle': CA bundle {str(junk)!r} holds no usable"
    )


def test_ca_bundle_fifo_is_refused(fifo: Path) -> None:
    assert NOT_REGULAR in only_problem(refused(ONE, env={"MARS_CA_BUNDLE": str(fifo)}))


def test_valid_ca_bundle_passes() -> None:
    assert resolve(ONE, env={"MARS_CA_BUNDLE": str(CA_PEM)}).ca_bundle == str(CA_PEM)


# --- numbers have upper bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "accepted"),
    [
        ("MARS_MAX_RETRIES", "1001", "a whole number from 1 to 1000"),
        ("MARS_SAME_HOST_RETRIES", "101", "a whole number from 0 to 100"),
        ("MARS_HEARTBEAT_MISSES", "1001", "a whole number from 1 to 1000"),
        ("MARS_LOG_KEEP_LINES", "1000001", "a whole number from 0 to 1000000"),
        ("MARS_REQUEST_TIMEOUT", "604801", "a number of seconds greater than 0, at most 604800"),
        ("MARS_RETRY_DELAY", "1e300", "a number of seconds from 0 to 604800 (7 days)"),
        ("MARS_JOB_DEADLINE", "1e12", "a number of seconds greater than 0, at most 604800"),
    ],
)
def test_numbers_above_their_bound_are_refused(var: str, value: str, accepted: str) -> None:
    text = only_problem(refused(ONE, env={var: value}))
    assert text.startswith(f"environment variable {var}: input should be less than or equal to")
    assert f"accepted: {accepted}" in text


def test_the_schema_states_every_upper_bound() -> None:
    properties = MarsSettings.model_json_schema()["properties"]
    unbounded = []
    for name, spec in properties.items():
        kinds = [spec, *spec.get("anyOf", [])]
        numeric = [k for k in kinds if k.get("type") in ("integer", "number")]
        if numeric and name != "shares_dir_mode" and not all("maximum" in k for k in numeric):
            unbounded.append(name)
    assert unbounded == []
    assert properties["max_retries"]["maximum"] == 1000


def test_the_most_passes_allowed_never_overflow_the_backoff() -> None:
    plan = resolve(ONE, env={"MARS_MAX_RETRIES": "1000", "MARS_RETRY_BACKOFF": "exponential"})
    policy = plan.policy
    rng = random.Random(1)
    sleeps = [policy.backoff(i, rng) for i in range(policy.max_passes)]
    assert max(sleeps) <= policy.backoff_max
    assert sleeps[-1] == pytest.approx(policy.backoff_max)
    # Past any bound too: a policy built by hand.
    wild = FailoverPolicy(backoff_mode="exponential", backoff_multiplier=1e300, backoff_max=5.0)
    assert wild.backoff(10**6, rng) == 5.0


# --- secrets in values that fail to parse ----------------------------------------------------

PASSWORD_PIECES = ("Xq7", "Zw9", "8812", "Tk5Vb")


@pytest.mark.parametrize(
    "url",
    [
        "http://user:Xq7#Zw9@host:9000",
        "http://user:Xq7?Zw9@host:9000",
        "http://user:Xq7/Zw9@host:9000",
        "http://user:8812/Zw9@host:9000",
        "http://user:Xq7 Zw9@host:9000",
        "http://Tk5Vb:Xq7,Zw9@host:9000",
    ],
)
def test_a_password_with_url_delimiters_is_never_printed(tmp_path: Path, url: str) -> None:
    listed = tmp_path / "s.list"
    listed.write_text(url + "\n")
    errors = [
        refused({"mars_servers": url}),
        refused(env={**SHARES, "MARS_WS_SERVERS": url.replace("http", "ws")}),
    ]
    if "," not in url:  # alone on a line or in a list, a comma in the credentials is fine
        errors.append(refused({"mars_servers": [url]}))
        errors.append(refused(env={"MARS_API_SERVER_LIST": str(listed)}))
    for error in errors:
        text = str(error)
        leaked = [piece for piece in PASSWORD_PIECES if piece in text]
        assert leaked == [], text


def test_a_percent_encoded_password_with_delimiters_works() -> None:
    plan = resolve({"mars_servers": "http://user:MyPa%23s%2Fs@host:9000"})
    assert plan.urls == ["http://***@host:9000"]
    assert plan.endpoints[0].url.userinfo == "user:MyPa%23s%2Fs"
