"""Typed MARS connection settings: the model, its fields and their checks.

Sources, highest precedence first:

1. keyword overrides (``resolve_plan(..., overrides={...})``);
2. the adaptor's per-dataset config (``mars_servers``, ``mars_server_list``);
3. the environment (``MARS_*`` variables);
4. an optional dotenv file;
5. the YAML file (``MARS_CONFIG_FILE``, default ``/etc/cads-mars-server.yaml``;
   the default may be absent; one named by ``MARS_CONFIG_FILE`` that does not
   exist is a warning, or an error in strict mode (``marsconn validate``);
   one passed as ``config_file=`` must exist);
6. defaults.

This module holds the model, its fields and their checks. Each source is read by
:mod:`marsconn.plan.sources` as a pydantic-settings source;
:func:`~marsconn.plan.load.load_settings` merges them the way pydantic-settings does
(the first source that has a key wins) while remembering which source that was, so every
effective value can be traced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..core.errors import ConfigError
from ..core.redact import credentials_split_by_comma
from .configfiles import load_yaml
from .sources import SettingKeys, _build_sources, key_table

__all__ = ["MarsSettings", "setting_keys"]

_NONE_WORDS = frozenset({"none", "null"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
# A whole value that is one bracketed IPv6 literal, e.g. "[fd00::5]": a server, not a list.
# Patterns of rarely taken paths are compiled on first use (re caches them), not at import.
_IPV6_LITERAL = r"^\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]$"

_BOOL = "true/false, 1/0, yes/no, on/off (any case)"
_PORT = "a whole number from 1 to 65535"
#: Longest duration any setting accepts: past it, a value is a mistake, and a bound keeps every
#: sum and product of durations finite.
_MAX_SECONDS = 7 * 24 * 3600
_SECONDS = f"a number of seconds greater than 0, at most {_MAX_SECONDS} (7 days)"
_SECONDS0 = f"a number of seconds from 0 to {_MAX_SECONDS} (7 days)"
_OPT_SECONDS = (
    f"a number of seconds greater than 0, at most {_MAX_SECONDS} (7 days), or none/null to disable"
)
_URLS = "comma-separated server URLs, or a list of URLs in YAML/JSON"
_DIR_MODE = (
    "an octal permission mode such as 0733, 0o733 or '733' (quoted in YAML) that gives "
    "the owner rwx (0o700) and sets nothing beyond 0o777"
)
_OCTAL = r"^(?:0[oO])?([0-7]+)$"
#: Default of required_server_version: the first cads-mars-server release with WebSocket mode.
_REQUIRED_VERSION = "0.3.0"


def _setting(
    default: Any,
    description: str,
    *,
    env: str | None,
    yaml_key: str | None,
    accepted: str,
    adaptor: str | None = None,
    added: bool = False,
    **constraints: Any,
) -> Any:
    extra: dict[str, Any] = {"x-env": env, "x-yaml-key": yaml_key, "x-accepted": accepted}
    if adaptor:
        extra["x-adaptor-key"] = adaptor
    if added:
        extra["x-marsconn"] = True
    if accepted in (_SECONDS, _SECONDS0, _OPT_SECONDS):
        constraints.setdefault("le", _MAX_SECONDS)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class MarsSettings(BaseSettings):
    """Every setting that decides how to reach the MARS proxy servers.

    ``MarsSettings()`` reads the process environment and the YAML file like
    any pydantic-settings model; library code should call :func:`load_settings`
    (or :func:`marsconn.resolve_plan`) with explicit inputs instead.
    """

    # allow_inf_nan=False: "inf" or "1e400" seconds would pass the range checks and
    # then make the plan's JSON invalid (json.dumps writes Infinity).
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
        # Completed (core schema, validator) on first MarsSettings(...) or schema use, not at
        # import: load_settings validates with _fast_validator() instead (see there).
        defer_build=True,
        # The schema's description is for people reading `marsconn schema`, not the
        # docstring's reStructuredText.
        json_schema_extra={
            "description": "Every setting that decides how marsconn reaches the MARS proxy "
            "servers, with its environment variable (x-env), YAML key (x-yaml-key), "
            "adaptor config key (x-adaptor-key) and accepted values (x-accepted)."
        },
    )

    use_shares: bool = _setting(
        False,
        "Ask for WebSocket ('shares') mode.",
        env="MARS_USE_SHARES",
        yaml_key="use_shares",
        accepted=_BOOL,
    )
    force_websocket_mode: bool = _setting(
        False,
        "Skip the cads-mars-server version check (testing only).",
        env="MARS_FORCE_WEBSOCKET_MODE",
        yaml_key=None,
        accepted=_BOOL,
    )
    required_server_version: str = _setting(
        _REQUIRED_VERSION,
        "Oldest cads-mars-server release (base version) that supports WebSocket mode.",
        env="MARS_REQUIRED_SERVER_VERSION",
        yaml_key="required_server_version",
        accepted="a version number such as 0.3.0",
        added=True,
    )
    servers: list[str] | None = _setting(
        None,
        "Servers named by the adaptor config; highest precedence of all server lists.",
        env=None,
        yaml_key=None,
        adaptor="mars_servers",
        accepted="a URL or a list of URLs",
    )
    server_list: Path | None = _setting(
        None,
        "Server-list file named by the adaptor config.",
        env=None,
        yaml_key=None,
        adaptor="mars_server_list",
        accepted="the path of a server-list file",
    )
    api_server_list: Path | None = _setting(
        None,
        "Server-list file (one pipe-server URL per line).",
        env="MARS_API_SERVER_LIST",
        yaml_key=None,
        accepted="the path of a server-list file",
    )
    ws_servers: list[str] | None = _setting(
        None,
        "WebSocket server URLs, used as they are in WebSocket mode.",
        env="MARS_WS_SERVERS",
        yaml_key="mars_ws_servers",
        accepted=_URLS,
    )
    pipe_port: int = _setting(
        9000,
        "Port of the pipe (HTTP) server.",
        env="MARS_PIPE_PORT",
        yaml_key="pipe_port",
        accepted=_PORT,
        ge=1,
        le=65535,
    )
    shares_port: int = _setting(
        9001,
        "Port of the WebSocket server.",
        env="MARS_SHARES_PORT",
        yaml_key="shares_port",
        accepted=_PORT,
        ge=1,
        le=65535,
    )
    connect_timeout: float = _setting(
        10.0,
        "Seconds allowed for TCP connect, TLS and the WebSocket handshake.",
        env="MARS_CONNECT_TIMEOUT",
        yaml_key="connect_timeout",
        accepted=_SECONDS,
        added=True,
        gt=0,
    )
    request_timeout: float = _setting(
        30.0,
        "Seconds a server has to acknowledge a job (WebSocket: 'started'; pipe: the ping). "
        "Never limits how long the job itself runs.",
        env="MARS_REQUEST_TIMEOUT",
        yaml_key="request_timeout",
        accepted=_SECONDS,
        gt=0,
    )
    read_timeout: float = _setting(
        600.0,
        "Pipe mode: seconds of silence on the data connection before the server is presumed dead.",
        env="MARS_READ_TIMEOUT",
        yaml_key="read_timeout",
        accepted=_SECONDS,
        added=True,
        gt=0,
    )
    max_retries: int = _setting(
        10,
        "Passes over the server list.",
        env="MARS_MAX_RETRIES",
        yaml_key="max_retries",
        accepted="a whole number from 1 to 1000",
        ge=1,
        le=1000,
    )
    retry_delay: float = _setting(
        2.0,
        "Seconds slept between two passes over the server list, never between the servers "
        "of one pass (with exponential backoff: the first of the growing sleeps).",
        env="MARS_RETRY_DELAY",
        yaml_key="retry_delay",
        accepted=_SECONDS0,
        ge=0,
    )
    retry_backoff: Literal["fixed", "exponential"] = _setting(
        "fixed",
        "How the sleep between passes grows: fixed (retry_delay every time, as "
        "cads-mars-server's client) or exponential (retry_delay doubled each pass, "
        "capped at retry_backoff_max, plus up to 50% random jitter).",
        env="MARS_RETRY_BACKOFF",
        yaml_key="retry_backoff",
        accepted="fixed or exponential",
        added=True,
    )
    retry_backoff_max: float = _setting(
        60.0,
        "Exponential backoff only: cap of the sleep between passes.",
        env="MARS_RETRY_BACKOFF_MAX",
        yaml_key="retry_backoff_max",
        accepted=_SECONDS0,
        added=True,
        ge=0,
    )
    same_host_retries: int = _setting(
        2,
        "Pipe mode: retries on the same server for 500/502/503/504/408 before moving on.",
        env="MARS_SAME_HOST_RETRIES",
        yaml_key="same_host_retries",
        accepted="a whole number from 0 to 100",
        added=True,
        ge=0,
        le=100,
    )
    failover_order: Literal["listed", "shuffled", "stable"] = _setting(
        "shuffled",
        "Order servers are tried in: as listed, shuffled per call, or a stable "
        "shuffle per request_id.",
        env="MARS_FAILOVER_ORDER",
        yaml_key="failover_order",
        accepted="listed, shuffled or stable",
        added=True,
    )
    eject_cooldown: float = _setting(
        30.0,
        "Seconds a server that refused or timed out is tried last by this process.",
        env="MARS_EJECT_COOLDOWN",
        yaml_key="eject_cooldown",
        accepted=_SECONDS0,
        added=True,
        ge=0,
    )
    heartbeat_interval: float = _setting(
        20.0,
        "Server heartbeat period.",
        env="MARS_HEARTBEAT_INTERVAL",
        yaml_key="heartbeat_interval",
        accepted=_SECONDS,
        gt=0,
    )
    heartbeat_misses: int = _setting(
        3,
        "Heartbeat periods without any message before a running server is presumed dead.",
        env="MARS_HEARTBEAT_MISSES",
        yaml_key="heartbeat_misses",
        accepted="a whole number from 1 to 1000",
        added=True,
        ge=1,
        le=1000,
    )
    job_deadline: float | None = _setting(
        None,
        "Optional limit on a whole job's duration; off by default.",
        env="MARS_JOB_DEADLINE",
        yaml_key="job_deadline",
        accepted=_OPT_SECONDS,
        added=True,
        gt=0,
    )
    target_settle_time: float = _setting(
        10.0,
        "WebSocket mode: seconds to wait for the output file to appear on the shared filesystem.",
        env="MARS_TARGET_SETTLE_TIME",
        yaml_key="target_settle_time",
        accepted=_SECONDS0,
        added=True,
        ge=0,
    )
    ws_ping_interval: float | None = _setting(
        None,
        "WebSocket ping interval; none disables pings.",
        env="MARS_WS_PING_INTERVAL",
        yaml_key="ws_ping_interval",
        accepted=_OPT_SECONDS,
        gt=0,
    )
    ws_close_timeout: float = _setting(
        30.0,
        "Close handshake timeout.",
        env="MARS_WS_CLOSE_TIMEOUT",
        yaml_key="ws_close_timeout",
        accepted=_SECONDS,
        gt=0,
    )
    client_filter_logs: bool = _setting(
        True,
        "Filter MARS log lines on the client (keep errors, warnings, progress; fold repeats).",
        env="MARS_CLIENT_FILTER_LOGS",
        yaml_key="client_filter_logs",
        accepted=_BOOL,
    )
    log_keep_lines: int = _setting(
        2000,
        "Most raw log lines kept in Result.message: over it, lines are dropped from the middle "
        "(error lines there are kept too).",
        env="MARS_LOG_KEEP_LINES",
        yaml_key="log_keep_lines",
        accepted="a whole number from 0 to 1000000",
        added=True,
        ge=0,
        le=1_000_000,
    )
    ca_bundle: Path | None = _setting(
        None,
        "CA bundle for https/wss certificate checks (default: the system store).",
        env="MARS_CA_BUNDLE",
        yaml_key="ca_bundle",
        accepted="the path of a PEM file",
        added=True,
    )
    shares_dir_mode: int = _setting(
        0o733,
        "WebSocket mode: permissions of the private per-attempt directory made beside the "
        "target, where the server writes the output and its request file (default 0o733: "
        "the owner may do anything, others may create files in it but not list it).",
        env="MARS_SHARES_DIR_MODE",
        yaml_key="shares_dir_mode",
        accepted=_DIR_MODE,
        added=True,
    )

    @field_validator("use_shares", "force_websocket_mode", "client_filter_logs", mode="before")
    @classmethod
    def _bool_words(cls, value: Any) -> Any:
        # Only the documented spellings: pydantic alone would also take t/f/y/n,
        # and a typo such as "ture" must be an error, never a silent false.
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError("not a boolean")
        return value

    @field_validator("servers", "ws_servers", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            # "[a, b]" is a YAML/JSON list; "[fd00::5]:9001,..." and "[fd00::5]" are servers.
            if text.startswith("[") and text.endswith("]") and not re.match(_IPV6_LITERAL, text):
                import yaml

                try:
                    # Bounded: nesting and aliases could otherwise recurse or expand without end.
                    return load_yaml(text)[1]
                except yaml.YAMLError as exc:
                    detail = getattr(exc, "problem", None) or "invalid YAML"
                    raise ValueError(f"not a valid YAML/JSON list ({detail})") from None
            if "," in text and credentials_split_by_comma(text):
                # A comma inside a URL's credentials: splitting there would cut the secret
                # in two and show one half as a host name.
                raise ValueError(
                    "a comma inside a URL's credentials, or credentials without a scheme: "
                    "the list cannot be split safely; percent-encode a comma in credentials "
                    "as %2C and write the scheme (http://user:password@host), or give the "
                    "servers as a YAML/JSON list"
                )
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("job_deadline", "ws_ping_interval", mode="before")
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        return value

    @field_validator("failover_order", "retry_backoff", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("shares_dir_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        # Text is always octal ("0733", "0o733", "733"); a number is the mode itself,
        # which is what YAML's unquoted 0733 gives (YAML 1.1 reads it as octal).
        if isinstance(value, bool):
            raise ValueError("not a permission mode")
        if isinstance(value, str):
            match = re.match(_OCTAL, value.strip())
            if match is None:
                raise ValueError("not an octal permission mode")
            return int(match.group(1), 8)
        if isinstance(value, int) and value > 0o777 and re.fullmatch(r"[0-7]{3}", str(value)):
            raise ValueError(
                f"{value} is more than 0o777; in YAML write the mode as 0{value} or quote it"
            )
        return value

    @field_validator("shares_dir_mode")
    @classmethod
    def _dir_mode(cls, value: int) -> int:
        if value < 0 or value & ~0o777:
            raise ValueError(
                f"{oct(value)} sets bits beyond 0o777 (setuid, setgid or sticky, or too large)"
            )
        if value & 0o700 != 0o700:
            raise ValueError(
                f"{oct(value)} does not give the owner rwx: marsconn must be able to "
                "list, read and remove what the server leaves in the directory"
            )
        return value

    @field_validator("required_server_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value == _REQUIRED_VERSION:
            return value  # the default: known to parse, and packaging is not loaded for it
        from packaging.version import InvalidVersion, Version

        try:
            Version(value)
        except InvalidVersion:
            raise ValueError("not a version number") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """For plain ``MarsSettings()``: init kwargs, process environment, YAML file.

        A ``MARS_CONFIG_FILE`` naming a file that does not exist is ignored here, as
        cads-mars-server ignores it; :func:`load_settings` also reports it as a warning.
        """
        source_set, problems = _build_sources(
            settings_cls, env=os.environ, overrides=None, config=None, env_file=None
        )
        if problems:
            raise ConfigError(problems)
        return (init_settings, *source_set.sources)


def setting_keys() -> dict[str, SettingKeys]:
    """Every setting's names per source, keyed by field name."""
    return dict(key_table(MarsSettings).fields)


# --- validation without completing the model ------------------------------------------------
#
# Completing a pydantic model (generating its core schema in Python, then its validator) is
# most of what importing marsconn and resolving a first plan costs beyond pydantic-settings
# itself. MarsSettings is therefore built with defer_build, and load_settings validates with
# a pydantic-core validator made here from the model's own fields (their types, constraints
# and defaults) and field validators: the same checks and the same errors, at a small part of
# the cost. Any field this does not know how to express makes it give up (None), and the
# model validates instead; tests/test_settings_validator.py checks the two agree.
