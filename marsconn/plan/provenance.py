"""Where a setting's value came from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Provenance", "SourceKind"]


class SourceKind(StrEnum):
    """The kinds of place a value can come from, highest precedence first."""

    OVERRIDE = "override"
    ADAPTOR = "adaptor"
    ENV = "env"
    DOTENV = "dotenv"
    YAML = "yaml"
    LIST_FILE = "list_file"
    DECLARED = "declared"
    DETECTED = "detected"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Provenance:
    """The source of one value: kind, the name used there, and file and line if any."""

    kind: SourceKind
    name: str
    file: str | None = None
    line: int | None = None

    def describe(self) -> str:
        """A phrase an operator can follow back to the value."""
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        match self.kind:
            case SourceKind.OVERRIDE:
                return f"keyword override {self.name!r}"
            case SourceKind.ADAPTOR:
                return f"adaptor config key {self.name!r}"
            case SourceKind.ENV:
                return f"environment variable {self.name}"
            case SourceKind.DOTENV:
                return f"{where} ({self.name})"
            case SourceKind.YAML:
                return f"{where} (key {self.name!r})"
            case SourceKind.LIST_FILE:
                return f"{where} (server list)"
            case SourceKind.DECLARED:
                return f"declared ({self.name})"
            case SourceKind.DETECTED:
                return f"detected ({self.name})"
            case _:
                return "default"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; ``file``/``line`` only when known."""
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name}
        if self.file is not None:
            out["file"] = self.file
        if self.line is not None:
            out["line"] = self.line
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """Inverse of :meth:`to_dict`."""
        return cls(SourceKind(data["kind"]), data["name"], data.get("file"), data.get("line"))

    def __str__(self) -> str:
        return self.describe()
