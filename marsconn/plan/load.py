"""load_settings: every source merged by precedence and validated, with provenance."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..core.errors import ConfigError, Problem
from ..core.redact import redact_value
from .provenance import Provenance, SourceKind
from .settings import MarsSettings
from .sources import _build_sources, key_table
from .validation import _validated

__all__ = ["LoadedSettings", "load_settings"]


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


def _problem_for(error: Mapping[str, Any], provenance: Mapping[str, Provenance]) -> Problem:
    loc = error["loc"]
    field = str(loc[0]) if loc else "?"
    keys = key_table(MarsSettings).fields.get(field)
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
    for name in key_table(MarsSettings).fields:
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
    problem. Raises :class:`~marsconn.core.errors.ConfigError` listing every
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
