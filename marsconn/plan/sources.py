"""Where settings come from, each value with its provenance.

The environment, a .env file, the servers' YAML config file, the adaptor's config and
keyword overrides: read here, merged and validated by :mod:`marsconn.plan.load`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..core.errors import Problem
from .configfiles import FileProblem, load_yaml, read_regular_file
from .provenance import Provenance, SourceKind

__all__ = [
    "CONFIG_FILE_VAR",
    "DEFAULT_CONFIG_FILE",
    "SERVER_YAML_KEYS",
    "KeyTable",
    "SettingKeys",
    "key_table",
]

DEFAULT_CONFIG_FILE = "/etc/cads-mars-server.yaml"


CONFIG_FILE_VAR = "MARS_CONFIG_FILE"


#: Keys of the shared YAML file that cads-mars-server reads and marsconn does not: no warning.
SERVER_YAML_KEYS = ("shared_root", "max_concurrent_connections", "debug_mode")


#: Most unknown-key warnings given for one YAML file; one more warning counts the rest.
_UNKNOWN_KEY_WARNINGS = 20


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


class KeyTable:
    """Every setting's names per source, looked up by the name each source uses."""

    __slots__ = ("by_adaptor", "by_env", "by_yaml", "fields", "known_vars")

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        self.fields = {name: _keys(name, info) for name, info in settings_cls.model_fields.items()}
        self.by_env = {k.env: k for k in self.fields.values() if k.env}
        self.by_yaml = {k.yaml_key: k for k in self.fields.values() if k.yaml_key}
        self.by_adaptor = {k.adaptor: k for k in self.fields.values() if k.adaptor}
        self.known_vars = frozenset([*self.by_env, CONFIG_FILE_VAR])


@functools.cache
def key_table(settings_cls: type[BaseSettings]) -> KeyTable:
    """The key table of a settings model (made once per model)."""
    return KeyTable(settings_cls)


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
    table: KeyTable,
    env: Mapping[str, str],
    kind: SourceKind,
    file: str | None,
    lines: Mapping[str, int],
) -> dict[str, tuple[Any, Provenance]]:
    out: dict[str, tuple[Any, Provenance]] = {}
    for var, keys in table.by_env.items():
        value = env.get(var)
        # An empty variable counts as unset, as deployments often export VAR= to clear one.
        if value is None or not value.strip():
            continue
        out[keys.field] = (value.strip(), Provenance(kind, var, file, lines.get(var)))
    return out


def _near_miss_warnings(
    table: KeyTable, names: Sequence[str], where: Callable[[str], str]
) -> list[Problem]:
    warnings = []
    for name in names:
        if name.startswith("MARS_") and name not in table.known_vars:
            import difflib  # only for names that look like settings: ~1 ms to import

            close = difflib.get_close_matches(name, table.known_vars, n=1, cutoff=0.85)
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
    table: KeyTable, path: Path, explicit: Provenance | None, strict: bool = False
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
    for key, keys in table.by_yaml.items():
        if key in data and data[key] is not None:
            prov = Provenance(SourceKind.YAML, key, str(path), lines.get(key))
            out[keys.field] = (data[key], prov)
    return out, [], _unknown_yaml_keys(table, data, path, lines)


def _unknown_yaml_keys(
    table: KeyTable, data: dict[Any, Any], path: Path, lines: dict[str, int]
) -> list[Problem]:
    """A warning per key that neither marsconn nor cads-mars-server reads.

    Not an error: the file is shared with the server, and a key only one of the two
    reads is expected. A key neither reads is ignored by both, most often a typo.
    """
    warnings: list[Problem] = []
    unknown = [str(key) for key in data if str(key) not in table.by_yaml]
    unknown = [name for name in unknown if name not in SERVER_YAML_KEYS]
    for name in unknown[:_UNKNOWN_KEY_WARNINGS]:
        import difflib

        close = difflib.get_close_matches(name, [*table.by_yaml, *SERVER_YAML_KEYS], n=1)
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
    table: KeyTable, config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None
) -> tuple[dict[str, tuple[Any, Provenance]], dict[str, tuple[Any, Provenance]], list[Problem]]:
    adaptor: dict[str, tuple[Any, Provenance]] = {}
    for key, keys in table.by_adaptor.items():
        if config is not None and config.get(key) is not None:
            adaptor[keys.field] = (config[key], Provenance(SourceKind.ADAPTOR, key))
    explicit: dict[str, tuple[Any, Provenance]] = {}
    problems = []
    for name, value in (overrides or {}).items():
        if name not in table.fields:
            import difflib

            close = difflib.get_close_matches(name, list(table.fields), n=1)
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
    table = key_table(settings_cls)
    problems: list[Problem] = []
    warnings = _near_miss_warnings(table, sorted(env), lambda name: f"environment variable {name}")
    explicit, adaptor, override_problems = _override_values(table, config, overrides)
    problems += override_problems
    env_values = _env_values(table, env, SourceKind.ENV, None, {})

    dotenv_raw: dict[str, str] = {}
    dotenv_values: dict[str, tuple[Any, Provenance]] = {}
    env_path = Path(env_file) if env_file is not None else None
    if env_path is not None:
        dotenv_raw, lines, dotenv_problems = _read_dotenv(env_path)
        problems += dotenv_problems
        dotenv_values = _env_values(table, dotenv_raw, SourceKind.DOTENV, str(env_path), lines)
        warnings += _near_miss_warnings(
            table,
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
    yaml_values, yaml_problems, yaml_warnings = _read_yaml(table, yaml_path, yaml_prov, strict)
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
