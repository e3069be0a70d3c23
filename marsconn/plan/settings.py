"""Typed MARS connection settings, merged from every source with provenance.

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

Each source is a pydantic-settings source. :func:`load_settings` merges them
the way pydantic-settings does (the first source that has a key wins) while
remembering which source that was, so every effective value can be traced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..core.errors import ConfigError, Problem
from ..core.redact import credentials_split_by_comma, redact_value
from .configfiles import FileProblem, load_yaml, read_regular_file
from .provenance import Provenance, SourceKind

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "LoadedSettings",
    "MarsSettings",
    "load_settings",
    "setting_keys",
]

DEFAULT_CONFIG_FILE = "/etc/cads-mars-server.yaml"
CONFIG_FILE_VAR = "MARS_CONFIG_FILE"
#: Keys of the shared YAML file that cads-mars-server reads and marsconn does not: no warning.
SERVER_YAML_KEYS = ("shared_root", "max_concurrent_connections", "debug_mode")
#: Most unknown-key warnings given for one YAML file; one more warning counts the rest.
_UNKNOWN_KEY_WARNINGS = 20
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


@dataclass(frozen=True, slots=True)
class SettingKeys:
    """The names one setting goes by in each source."""

    field: str
    env: str | None
    yaml_key: str | None
    adaptor: str | None
    accepted: str
    added: bool


def _keys(name: str, info: FieldInfo) -> SettingKeys:
    extra = info.json_schema_extra
    assert isinstance(extra, dict)
    return SettingKeys(
        field=name,
        env=extra.get("x-env"),  # type: ignore[arg-type]
        yaml_key=extra.get("x-yaml-key"),  # type: ignore[arg-type]
        adaptor=extra.get("x-adaptor-key"),  # type: ignore[arg-type]
        accepted=str(extra.get("x-accepted")),
        added=bool(extra.get("x-marsconn", False)),
    )


def setting_keys() -> dict[str, SettingKeys]:
    """Every setting's names per source, keyed by field name."""
    return {name: _keys(name, info) for name, info in MarsSettings.model_fields.items()}


_KEYS = setting_keys()
_BY_ENV = {k.env: k for k in _KEYS.values() if k.env}
_BY_YAML = {k.yaml_key: k for k in _KEYS.values() if k.yaml_key}
_BY_ADAPTOR = {k.adaptor: k for k in _KEYS.values() if k.adaptor}
_KNOWN_VARS = frozenset([*_BY_ENV, CONFIG_FILE_VAR])


class _ValuesSource(PydanticBaseSettingsSource):
    """A pydantic-settings source over values already read, each with its provenance."""

    def __init__(
        self, settings_cls: type[BaseSettings], values: dict[str, tuple[Any, Provenance]]
    ) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name, (None, None))[0], field_name, False

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.values.items()}


def _env_values(
    env: Mapping[str, str], kind: SourceKind, file: str | None, lines: Mapping[str, int]
) -> dict[str, tuple[Any, Provenance]]:
    out: dict[str, tuple[Any, Provenance]] = {}
    for var, keys in _BY_ENV.items():
        value = env.get(var)
        # An empty variable counts as unset, as deployments often export VAR= to clear one.
        if value is None or not value.strip():
            continue
        out[keys.field] = (value.strip(), Provenance(kind, var, file, lines.get(var)))
    return out


def _near_miss_warnings(names: Sequence[str], where: Callable[[str], str]) -> list[Problem]:
    warnings = []
    for name in names:
        if name.startswith("MARS_") and name not in _KNOWN_VARS:
            import difflib  # only for names that look like settings: ~1 ms to import

            close = difflib.get_close_matches(name, _KNOWN_VARS, n=1, cutoff=0.85)
            if close:
                warnings.append(
                    Problem(
                        where(name),
                        f"not a marsconn setting, ignored; did you mean {close[0]}?",
                    )
                )
    return warnings


def _unreadable(exc: Exception) -> str:
    """Why a configuration file could not be read, for "cannot be read: ..."."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


_DOTENV_KEY = r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*="


def _read_dotenv(path: Path) -> tuple[dict[str, str], dict[str, int], list[Problem]]:
    import io

    from dotenv import dotenv_values

    try:
        text = read_regular_file(path).decode("utf-8")
    except (OSError, FileProblem, UnicodeDecodeError) as exc:
        problem = Problem(
            f"dotenv file {str(path)!r}",
            f"cannot be read: {_unreadable(exc)}",
            accepted="a readable file of VAR=value lines",
        )
        return {}, {}, [problem]
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(_DOTENV_KEY, line)
        if match:
            lines[match.group(1)] = number
    parsed = dotenv_values(stream=io.StringIO(text), interpolate=False)
    values = {k: v for k, v in parsed.items() if v is not None}
    return values, lines, []


def _yaml_problem(path: Path, exc: Exception) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    if problem is None:  # errors without a mark, e.g. a control character
        detail = " ".join(str(exc).split())
    elif context and not context.startswith("while"):
        detail = f"{context} {problem}"  # "expected a single document ... but found another"
    else:
        detail = problem
    return Problem(where, f"invalid YAML: {detail}", accepted="a YAML mapping")


def _missing_yaml(
    path: Path, explicit: Provenance | None, strict: bool
) -> tuple[list[Problem], list[Problem]]:
    """What a YAML file that does not exist means, depending on who named it."""
    if explicit is None:  # the default /etc file: most workers have none
        return [], []
    if strict or explicit.kind is SourceKind.OVERRIDE:
        # `marsconn validate`, or a caller that passed config_file= itself.
        return [
            Problem(
                explicit.describe(),
                f"YAML config file {str(path)!r} does not exist",
                accepted="the path of a readable YAML file (or leave it unset)",
            )
        ], []
    # MARS_CONFIG_FILE: cads-mars-server carries on with its other sources when the file
    # it names is missing, and so do retrievals; only `marsconn validate` refuses it.
    return [], [
        Problem(
            explicit.describe(),
            f"names YAML config file {str(path)!r}, which does not exist; it is ignored and "
            "the other sources and defaults apply (as cads-mars-server does); "
            "`marsconn validate` reports this as an error",
        )
    ]


def _read_yaml(
    path: Path, explicit: Provenance | None, strict: bool = False
) -> tuple[dict[str, tuple[Any, Provenance]], list[Problem], list[Problem]]:
    pointed = explicit.describe() if explicit else "default YAML config"
    try:
        text = read_regular_file(path).decode("utf-8")
    except FileNotFoundError:
        return {}, *_missing_yaml(path, explicit, strict)
    except (OSError, FileProblem, UnicodeDecodeError) as exc:
        problem = Problem(
            pointed,
            f"YAML config file {str(path)!r} cannot be read: {_unreadable(exc)}",
            accepted="a readable UTF-8 YAML file",
        )
        return {}, [problem], []
    # Imported here: most workers have no YAML file, and importing yaml costs ~10 ms.
    import yaml

    # yaml.safe_load in steps, so that the node tree gives each key's line number; with
    # bounds on nesting and alias expansion.
    try:
        node, data = load_yaml(text)
    except yaml.YAMLError as exc:
        return {}, [_yaml_problem(path, exc)], []
    if data is None:
        return {}, [], []
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        problem = Problem(
            str(path),
            f"the YAML document is a {type(data).__name__}, not a mapping",
            accepted="a YAML mapping of setting keys to values",
        )
        return {}, [problem], []
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    out: dict[str, tuple[Any, Provenance]] = {}
    for key, keys in _BY_YAML.items():
        if key in data and data[key] is not None:
            prov = Provenance(SourceKind.YAML, key, str(path), lines.get(key))
            out[keys.field] = (data[key], prov)
    return out, [], _unknown_yaml_keys(data, path, lines)


def _unknown_yaml_keys(data: dict[Any, Any], path: Path, lines: dict[str, int]) -> list[Problem]:
    """A warning per key that neither marsconn nor cads-mars-server reads.

    Not an error: the file is shared with the server, and a key only one of the two
    reads is expected. A key neither reads is ignored by both, most often a typo.
    """
    warnings: list[Problem] = []
    unknown = [str(key) for key in data if str(key) not in _BY_YAML]
    unknown = [name for name in unknown if name not in SERVER_YAML_KEYS]
    for name in unknown[:_UNKNOWN_KEY_WARNINGS]:
        import difflib

        close = difflib.get_close_matches(name, [*_BY_YAML, *SERVER_YAML_KEYS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.append(
            Problem(
                Provenance(SourceKind.YAML, name, str(path), lines.get(name)).describe(),
                f"not a key of marsconn or cads-mars-server, ignored{hint}",
                accepted="the YAML keys of `marsconn schema` (x-yaml-key)",
            )
        )
    if len(unknown) > _UNKNOWN_KEY_WARNINGS:
        rest = len(unknown) - _UNKNOWN_KEY_WARNINGS
        warnings.append(Problem(str(path), f"{rest} more unknown keys, ignored"))
    return warnings


def _override_values(
    config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None
) -> tuple[dict[str, tuple[Any, Provenance]], dict[str, tuple[Any, Provenance]], list[Problem]]:
    adaptor: dict[str, tuple[Any, Provenance]] = {}
    for key, keys in _BY_ADAPTOR.items():
        if config is not None and config.get(key) is not None:
            adaptor[keys.field] = (config[key], Provenance(SourceKind.ADAPTOR, key))
    explicit: dict[str, tuple[Any, Provenance]] = {}
    problems = []
    for name, value in (overrides or {}).items():
        if name not in _KEYS:
            import difflib

            close = difflib.get_close_matches(name, list(_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                Problem(
                    f"keyword override {name!r}",
                    f"unknown setting{hint}",
                    accepted="a MarsSettings field name (see `marsconn schema`)",
                )
            )
        elif value is not None:
            explicit[name] = (value, Provenance(SourceKind.OVERRIDE, name))
    return explicit, adaptor, problems


class _SourceSet:
    """The sources of one load, and what was learnt reading them (a plain class: internal,
    and a frozen dataclass costs half a millisecond to create at import)."""

    __slots__ = ("config_file", "config_file_provenance", "env_file", "sources", "warnings")

    def __init__(
        self,
        sources: tuple[_ValuesSource, ...],
        config_file: Path,
        config_file_provenance: Provenance,
        env_file: Path | None,
        warnings: tuple[Problem, ...],
    ) -> None:
        self.sources = sources
        self.config_file = config_file
        self.config_file_provenance = config_file_provenance
        self.env_file = env_file
        self.warnings = warnings


def _build_sources(
    settings_cls: type[BaseSettings],
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    env_file: str | os.PathLike[str] | None,
    config_file: str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> tuple[_SourceSet, list[Problem]]:
    problems: list[Problem] = []
    warnings = _near_miss_warnings(sorted(env), lambda name: f"environment variable {name}")
    explicit, adaptor, override_problems = _override_values(config, overrides)
    problems += override_problems
    env_values = _env_values(env, SourceKind.ENV, None, {})

    dotenv_raw: dict[str, str] = {}
    dotenv_values: dict[str, tuple[Any, Provenance]] = {}
    env_path = Path(env_file) if env_file is not None else None
    if env_path is not None:
        dotenv_raw, lines, dotenv_problems = _read_dotenv(env_path)
        problems += dotenv_problems
        dotenv_values = _env_values(dotenv_raw, SourceKind.DOTENV, str(env_path), lines)
        warnings += _near_miss_warnings(
            sorted(dotenv_raw),
            lambda name: Provenance(
                SourceKind.DOTENV, name, str(env_path), lines.get(name)
            ).describe(),
        )

    yaml_prov: Provenance | None
    if config_file is not None:
        yaml_path, yaml_prov = Path(config_file), Provenance(SourceKind.OVERRIDE, "config_file")
    elif env.get(CONFIG_FILE_VAR, "").strip():
        yaml_path = Path(env[CONFIG_FILE_VAR].strip())
        yaml_prov = Provenance(SourceKind.ENV, CONFIG_FILE_VAR)
    elif dotenv_raw.get(CONFIG_FILE_VAR, "").strip():
        yaml_path = Path(dotenv_raw[CONFIG_FILE_VAR].strip())
        yaml_prov = Provenance(SourceKind.DOTENV, CONFIG_FILE_VAR, str(env_path))
    else:
        yaml_path, yaml_prov = Path(DEFAULT_CONFIG_FILE), None
    yaml_values, yaml_problems, yaml_warnings = _read_yaml(yaml_path, yaml_prov, strict)
    problems += yaml_problems
    warnings += yaml_warnings

    sources = tuple(
        _ValuesSource(settings_cls, values)
        for values in (explicit, adaptor, env_values, dotenv_values, yaml_values)
    )
    source_set = _SourceSet(
        sources,
        yaml_path,
        yaml_prov or Provenance(SourceKind.DEFAULT, CONFIG_FILE_VAR),
        env_path,
        tuple(warnings),
    )
    return source_set, problems


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Validated settings plus where each effective value came from.

    ``warning_records`` are the values the sources hold that are ignored (a
    missing ``MARS_CONFIG_FILE``, unknown YAML keys, near-miss variable
    names), each naming its source; :attr:`warnings` is their text.
    """

    settings: MarsSettings
    provenance: Mapping[str, Provenance]
    config_file: Path
    config_file_provenance: Provenance
    env_file: Path | None
    warning_records: tuple[Problem, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """The warnings as text, each ``where: message``."""
        return tuple(str(w) for w in self.warning_records)

    def where(self, field: str) -> str:
        """Describe the source of ``field`` for messages."""
        return self.provenance[field].describe()


def _redact(value: Any) -> str:
    # A bounded repr: a hostile value (deep, huge, self-referencing) must not make the
    # error text large; Problem cuts the result again.
    import reprlib

    shown = reprlib.Repr()  # keyword arguments only from Python 3.12
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlong = 3, 300, 300, 60
    return redact_value(value[:2000] if isinstance(value, str) else shown.repr(value))


def _validated(values: Mapping[str, Any]) -> MarsSettings:
    """``values`` validated as MarsSettings's fields (raises pydantic's ValidationError)."""
    validator = _fast_validator()
    if validator is None:
        return _validated_by_model(values)
    fields, _, fields_set = validator.validate_python(dict(values))
    return MarsSettings.model_construct(_fields_set=fields_set, **fields)


def _validated_by_model(values: Mapping[str, Any]) -> MarsSettings:
    # MarsSettings(**values) and MarsSettings.model_validate(values) both run
    # BaseSettings.__init__, which consults the class's own sources (os.environ,
    # the default YAML file) for every field missing from ``values``. The values
    # here are already merged from the caller's sources, so validate them as
    # the plain model they are.
    settings = MarsSettings.__new__(MarsSettings)
    BaseModel.__init__(settings, **values)
    return settings


# --- validation without completing the model ------------------------------------------------
#
# Completing a pydantic model (generating its core schema in Python, then its validator) is
# most of what importing marsconn and resolving a first plan costs beyond pydantic-settings
# itself. MarsSettings is therefore built with defer_build, and load_settings validates with
# a pydantic-core validator made here from the model's own fields (their types, constraints
# and defaults) and field validators: the same checks and the same errors, at a small part of
# the cost. Any field this does not know how to express makes it give up (None), and the
# model validates instead; tests/test_settings_validator.py checks the two agree.

_NO_FAST_VALIDATOR = object()
_fast: Any = None


def _fast_validator() -> Any:
    """The pydantic-core SchemaValidator for MarsSettings's fields, or None (see above)."""
    global _fast
    if _fast is None:
        _fast = _build_fast_validator() or _NO_FAST_VALIDATOR
    return None if _fast is _NO_FAST_VALIDATOR else _fast


def _type_schema(annotation: Any, metadata: list[Any]) -> Any:
    """The core schema of one field type with its constraints, or None if not known here."""
    import types
    import typing

    import annotated_types
    from pydantic_core import core_schema as cs

    bounds: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            bounds["gt"] = item.gt
        elif isinstance(item, annotated_types.Ge):
            bounds["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["le"] = item.le
        else:
            return None
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and len(args) == 2 and args[1] is type(None):
        inner = _type_schema(args[0], metadata)
        return None if inner is None else cs.nullable_schema(inner)
    if annotation is bool and not bounds:
        return cs.bool_schema()
    if annotation is str and not bounds:
        return cs.str_schema()
    if annotation is int:
        return cs.int_schema(**bounds)
    if annotation is float:
        return cs.float_schema(**bounds)
    if typing.get_origin(annotation) is typing.Literal and not bounds:
        return cs.literal_schema(list(args))
    if typing.get_origin(annotation) is list and args == (str,) and not bounds:
        return cs.list_schema(cs.str_schema())
    if annotation is Path and not bounds:
        # As pydantic validates a Path: an instance, or a string made one.
        from_str = cs.no_info_after_validator_function(Path, cs.str_schema())
        return cs.union_schema(
            [
                cs.json_or_python_schema(
                    json_schema=from_str, python_schema=cs.is_instance_schema(Path)
                ),
                cs.no_info_after_validator_function(Path, cs.str_schema(strict=True)),
            ],
            custom_error_type="path_type",
            custom_error_message=f"Input is not a valid path for {Path}",
        )
    return None


def _build_fast_validator() -> Any:
    from pydantic_core import CoreConfig, SchemaValidator
    from pydantic_core import core_schema as cs

    decorators = MarsSettings.__pydantic_decorators__
    if decorators.validators or decorators.model_validators or decorators.root_validators:
        return None
    fields: dict[str, Any] = {}
    for name, info in MarsSettings.model_fields.items():
        schema = _type_schema(info.annotation, list(info.metadata))
        if schema is None:
            return None
        # Field validators wrap the field's schema in the order they are defined, as pydantic
        # applies them (each one outside the ones before it).
        for decorator in decorators.field_validators.values():
            if name not in decorator.info.fields:
                continue
            wrap = {
                "before": cs.no_info_before_validator_function,
                "after": cs.no_info_after_validator_function,
            }.get(decorator.info.mode)
            if wrap is None:
                return None
            schema = wrap(decorator.func, schema)
        schema = cs.with_default_schema(schema, default=info.default)
        fields[name] = cs.model_field(schema)
    config = CoreConfig(
        title="MarsSettings",
        extra_fields_behavior="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )
    return SchemaValidator(cs.model_fields_schema(fields, model_name="MarsSettings"), config)


def _problem_for(error: Mapping[str, Any], provenance: Mapping[str, Provenance]) -> Problem:
    loc = error["loc"]
    field = str(loc[0]) if loc else "?"
    keys = _KEYS.get(field)
    where = provenance[field].describe() if field in provenance else field
    if len(loc) > 1:
        where += f" item {loc[1]}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message and message[0].isupper():
        message = message[0].lower() + message[1:]
    return Problem(
        where,
        message,
        value=_redact(error.get("input")),
        accepted=keys.accepted if keys else None,
    )


def _load(
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> tuple[LoadedSettings, list[Problem]]:
    """Load settings, returning every problem instead of raising.

    Invalid values fall back to their defaults in the returned settings, so
    that later checks (server lists, mode) can still report their own
    problems in the same error.
    """
    source_set, problems = _build_sources(
        MarsSettings,
        env=os.environ if env is None else env,
        overrides=overrides,
        config=config,
        env_file=env_file,
        config_file=config_file,
        strict=strict,
    )
    merged: dict[str, Any] = {}
    provenance: dict[str, Provenance] = {}
    # Highest precedence first: the first source that has a key wins, as in pydantic-settings.
    for source in source_set.sources:
        for name, (value, prov) in source.values.items():
            if name not in merged:
                merged[name] = value
                provenance[name] = prov
    for name in _KEYS:
        provenance.setdefault(name, Provenance(SourceKind.DEFAULT, name))
    try:
        settings = _validated(merged)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems += [_problem_for(e, provenance) for e in errors]
        bad = {str(e["loc"][0]) for e in errors if e["loc"]}
        for name in bad:
            merged.pop(name, None)
            provenance[name] = Provenance(SourceKind.DEFAULT, name)
        settings = _validated(merged)
    loaded = LoadedSettings(
        settings,
        provenance,
        source_set.config_file,
        source_set.config_file_provenance,
        source_set.env_file,
        source_set.warnings,
    )
    return loaded, problems


def load_settings(
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> LoadedSettings:
    """Merge every source into validated :class:`MarsSettings`.

    ``config`` is the adaptor's per-dataset config; ``env`` replaces
    ``os.environ`` (which is then never read); ``env_file`` names a dotenv
    file; ``config_file`` replaces ``MARS_CONFIG_FILE``; ``overrides`` sets
    fields by name. A ``MARS_CONFIG_FILE`` naming a file that does not exist
    is a warning (the other sources apply, as in cads-mars-server), or a
    problem when ``strict`` is true; a missing ``config_file`` is always a
    problem. Raises :class:`~marsconn.errors.ConfigError` listing every
    problem.
    """
    loaded, problems = _load(
        config,
        env=env,
        env_file=env_file,
        config_file=config_file,
        overrides=overrides,
        strict=strict,
    )
    if problems:
        raise ConfigError(problems)
    return loaded
