"""The base of every audit record: its event name, level and fields.

Apart from :mod:`marsconn.core.audit` so that the executor's events (loaded on first use)
and the audit module do not import each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["AuditEvent"]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() walks the class on every call; events are emitted per attempt.
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Base of all audit records."""

    EVENT: ClassVar[str] = ""
    LEVEL: ClassVar[str] = "info"

    @property
    def level(self) -> str:
        """The level this record is emitted at: :attr:`LEVEL` unless its content says more."""
        return self.LEVEL

    def fields(self) -> dict[str, Any]:
        """The record's fields, as emitted."""
        return {name: getattr(self, name) for name in _field_names(type(self))}
