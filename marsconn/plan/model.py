"""The resolved, frozen ConnectionPlan and its parts: mode, reason, policies, timeouts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core.errors import Problem
from ..core.redact import redact_value
from .endpoints import (
    Endpoint,
    ServerURL,
    parse_server_url,
)
from .provenance import Provenance, SourceKind

if TYPE_CHECKING:
    pass

__all__ = [
    "ConnectionPlan",
    "FailoverPolicy",
    "LogPolicy",
    "Mode",
    "Reason",
    "Timeouts",
]

#: Version of the plan's serialised form. 2 added ``FailoverPolicy.backoff_mode`` and
#: ``ConnectionPlan.shares_dir_mode``; format-1 plans (no ``format`` key) are still read.
PLAN_FORMAT = 2


class Mode(StrEnum):
    """How the executor talks to the servers."""

    PIPE = "pipe"
    WEBSOCKET = "websocket"


class Reason(StrEnum):
    """Why the plan's mode was chosen."""

    SHARES_NOT_REQUESTED = "shares_not_requested"
    SHARES_ENABLED = "shares_enabled"
    FORCED = "forced"
    SERVER_PACKAGE_MISSING = "server_package_missing"
    SERVER_PACKAGE_TOO_OLD = "server_package_too_old"
    SERVER_VERSION_UNPARSABLE = "server_version_unparsable"


Order = Literal["listed", "shuffled", "stable"]
Backoff = Literal["fixed", "exponential"]


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """How servers are walked and retried, as an immutable value.

    ``max_passes`` full passes over the server list; between passes the
    executor sleeps ``backoff(pass_index)``, never between two servers of one
    pass. With ``backoff_mode`` ``"fixed"`` (the default, cads-mars-server's
    behaviour) that is ``backoff_initial`` every time. With
    ``"exponential"`` it is ``backoff_initial`` multiplied by
    ``backoff_multiplier`` each pass, capped at ``backoff_max``, with up to
    ``jitter`` (a fraction) of it added at random; those three fields apply
    to exponential backoff only. ``same_host_retries`` bounds retries on one
    server for transient pipe statuses. A server that refused or timed out is
    tried last by the whole process for ``eject_cooldown`` seconds.
    """

    order: Order = "shuffled"
    max_passes: int = 10
    backoff_initial: float = 2.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5
    same_host_retries: int = 2
    eject_cooldown: float = 30.0
    backoff_mode: Backoff = "fixed"

    def backoff(self, pass_index: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed pass ``pass_index`` (0-based), jitter included."""
        if self.backoff_mode == "fixed":
            return float(self.backoff_initial)
        try:
            grown = self.backoff_initial * self.backoff_multiplier**pass_index
        except OverflowError:  # float ** int past ~1e308: long past the cap anyway
            grown = self.backoff_max
        base = min(self.backoff_max, grown)
        spread = (rng or random).random() * self.jitter * base
        return float(min(self.backoff_max, base + spread))

    def describe_backoff(self) -> str:
        """The sleep between passes in words, for explanations."""
        if self.backoff_mode == "fixed":
            return f"{self.backoff_initial:g}s between passes (fixed)"
        return (
            f"backoff between passes {self.backoff_initial:g}s x{self.backoff_multiplier:g} "
            f"(cap {self.backoff_max:g}s, jitter {self.jitter:.0%})"
        )

    def ordered(
        self,
        endpoints: Sequence[Endpoint],
        request_id: str = "",
        rng: random.Random | None = None,
    ) -> list[Endpoint]:
        """The endpoints in this policy's order for one retrieval."""
        items = list(endpoints)
        if self.order == "shuffled":
            (rng or random).shuffle(items)
        elif self.order == "stable":
            # Same request_id, same order, in every process: a hash, not random state.
            items.sort(
                key=lambda e: hashlib.sha256(f"{request_id}|{e.url.secret()}".encode()).digest()
            )
        return items


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every time limit of the plan, in seconds."""

    connect: float = 10.0
    request: float = 30.0
    read: float = 600.0
    heartbeat_interval: float = 20.0
    heartbeat_misses: int = 3
    job_deadline: float | None = None
    target_settle: float = 10.0
    ws_ping_interval: float | None = None
    ws_close: float = 30.0

    @property
    def liveness(self) -> float:
        """Seconds without any server message before a running job's server is presumed dead."""
        return self.heartbeat_interval * self.heartbeat_misses


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """What happens to MARS's log lines."""

    filter: bool = True
    keep_lines: int = 2000


# (kind, file) of an endpoint's source, in C: plan.sources visits every endpoint.
_ENDPOINT_PLACE = operator.attrgetter("provenance.kind", "provenance.file")
_KIND_RANK = {kind: rank for rank, kind in enumerate(SourceKind)}
#: Settings whose values are server URLs, which may carry credentials.
_URL_SETTINGS = frozenset({"servers", "ws_servers"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _shown(name: str, value: Any) -> Any:
    """A setting's value as JSON-ready data, credentials in server URLs redacted."""
    if name in _URL_SETTINGS and isinstance(value, list | tuple):
        return [redact_value(v) if isinstance(v, str) else v for v in value]
    return _jsonable(value)


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """Everything the executor needs, decided once: a frozen, JSON-able value.

    ``endpoints`` are the servers of the effective ``mode``, in configured
    order (the policy's order is applied per retrieval). ``fingerprint`` is a
    hash of the effective behaviour (mode, endpoints, ports, policy,
    timeouts, log, TLS and shares-directory settings), not of how it was
    configured. ``shares_dir_mode`` is the permission mode of the private
    directory a WebSocket attempt makes beside the target for the server to
    write into. ``warning_records`` are the plan's warnings as records, each
    naming its source (``where``); ``warnings`` is their text.
    """

    mode: Mode
    requested_mode: Mode
    reason: Reason
    reason_text: str
    server_version: str | None
    server_version_source: str
    required_version: str
    endpoints: tuple[Endpoint, ...]
    pipe_port: int
    shares_port: int
    policy: FailoverPolicy
    timeouts: Timeouts
    logs: LogPolicy
    ca_bundle: str | None
    warnings: tuple[str, ...]
    settings: tuple[tuple[str, Any, Provenance], ...] = field(repr=False)
    fingerprint: str = ""
    shares_dir_mode: int = 0o733
    warning_records: tuple[Problem, ...] = field(default=(), repr=False)

    @property
    def urls(self) -> list[str]:
        """Endpoint URLs for display (credentials redacted)."""
        return [e.url.display() for e in self.endpoints]

    @property
    def sources(self) -> list[str]:
        """Distinct places that contributed a non-default value, in precedence order."""
        # dict, not set: within one kind, places keep the order they were first seen in.
        places = dict.fromkeys((p.kind, p.file) for _, _, p in self.settings)
        places.update(dict.fromkeys(map(_ENDPOINT_PLACE, self.endpoints)))
        ordered = sorted(places, key=lambda place: _KIND_RANK[place[0]])
        return [
            kind.value + (f":{file}" if file else "")
            for kind, file in ordered
            if kind is not SourceKind.DEFAULT
        ]

    def effective(self) -> dict[str, Any]:
        """The behaviour-defining part of the plan; what the fingerprint covers."""
        return _effective(self, PLAN_FORMAT)

    def to_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The whole plan as JSON-ready data.

        Credentials in server URLs are redacted unless ``reveal_secrets`` is
        true, which is what handing the plan to another process needs (see
        :meth:`from_dict`).
        """

        def url(u: ServerURL) -> str:
            return u.secret() if reveal_secrets else u.display()

        endpoints = []
        for e in self.endpoints:
            item = e.to_dict()
            item["url"] = url(e.url)
            if e.derived_from is not None:
                item["derived_from"] = url(e.derived_from)
            endpoints.append(item)
        return {
            "format": PLAN_FORMAT,
            "mode": self.mode.value,
            "requested_mode": self.requested_mode.value,
            "reason": self.reason.value,
            "reason_text": self.reason_text,
            "server_version": self.server_version,
            "server_version_source": self.server_version_source,
            "required_version": self.required_version,
            "endpoints": endpoints,
            "pipe_port": self.pipe_port,
            "shares_port": self.shares_port,
            "policy": _asdict(self.policy),
            "timeouts": _asdict(self.timeouts),
            "logs": _asdict(self.logs),
            "ca_bundle": self.ca_bundle,
            "shares_dir_mode": self.shares_dir_mode,
            "warnings": list(self.warnings),
            "warning_records": [_problem_dict(w) for w in self.warning_records],
            "settings": {
                name: {
                    "value": _jsonable(value) if reveal_secrets else _shown(name, value),
                    "source": prov.describe(),
                    "provenance": prov.to_dict(),
                }
                for name, value, prov in self.settings
            },
            "sources": self.sources,
            "fingerprint": self.fingerprint,
        }

    def to_json(self, *, indent: int | None = 2, reveal_secrets: bool = False) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(reveal_secrets=reveal_secrets), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectionPlan:
        """Rebuild a plan from :meth:`to_dict` output (e.g. in another process).

        The fingerprint is recomputed and must match the stored one, so a
        plan edited by hand is refused rather than silently run. Redacted
        credentials cannot be restored: serialise with ``reveal_secrets=True``
        when the servers need them. A format-1 plan (written before the
        ``format`` key existed) is read with the behaviour it was resolved
        with: exponential backoff, and the default ``shares_dir_mode``.
        """
        fmt = data.get("format", 1)
        if fmt not in (1, PLAN_FORMAT):
            raise ValueError(
                f"not a serialised ConnectionPlan: format {fmt!r} is not 1 or {PLAN_FORMAT}"
            )
        try:
            policy = dict(data["policy"])
            if fmt == 1:
                # Format 1 had no backoff_mode: its backoff was always exponential.
                policy["backoff_mode"] = "exponential"
            endpoints = tuple(
                Endpoint(
                    parse_server_url(e["url"]),
                    Provenance.from_dict(e["source"]),
                    parse_server_url(e["derived_from"]) if e.get("derived_from") else None,
                )
                for e in data["endpoints"]
            )
            plan = cls(
                mode=Mode(data["mode"]),
                requested_mode=Mode(data["requested_mode"]),
                reason=Reason(data["reason"]),
                reason_text=data["reason_text"],
                server_version=data["server_version"],
                server_version_source=data["server_version_source"],
                required_version=data["required_version"],
                endpoints=endpoints,
                pipe_port=data["pipe_port"],
                shares_port=data["shares_port"],
                policy=FailoverPolicy(**policy),
                timeouts=Timeouts(**data["timeouts"]),
                logs=LogPolicy(**data["logs"]),
                ca_bundle=data["ca_bundle"],
                warnings=tuple(data["warnings"]),
                settings=tuple(
                    (name, item["value"], Provenance.from_dict(item["provenance"]))
                    for name, item in data["settings"].items()
                ),
                shares_dir_mode=data["shares_dir_mode"] if fmt != 1 else 0o733,
                warning_records=tuple(Problem(**w) for w in data.get("warning_records", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a serialised ConnectionPlan: {exc!r}") from None
        if any(e.url.has_redacted_secret for e in plan.endpoints):
            raise ValueError(
                "the plan's server credentials were redacted; serialise it with "
                "to_dict(reveal_secrets=True) to hand it to another process"
            )
        stored = _fingerprint(plan, fmt)
        if stored != data.get("fingerprint"):
            raise ValueError(
                f"plan fingerprint mismatch: stored {data.get('fingerprint')!r}, "
                f"recomputed {stored!r}; the plan was changed after it was resolved"
            )
        return _with_fingerprint(plan)

    @classmethod
    def from_json(cls, text: str) -> ConnectionPlan:
        """:meth:`from_dict` for JSON text."""
        return cls.from_dict(json.loads(text))

    def explain(self) -> str:
        """A human account of the plan: the decision, why, and where each value came from."""
        lines = [
            f"mode: {self.mode.value} (requested: {self.requested_mode.value})",
            f"reason: {self.reason.value}: {self.reason_text}",
            f"server version: {self.server_version or '-'} ({self.server_version_source}); "
            f"required >= {self.required_version}",
            f"endpoints ({len(self.endpoints)}), tried {_ORDER_TEXT[self.policy.order]}:",
        ]
        for i, e in enumerate(self.endpoints, start=1):
            via = f" <- {e.derived_from.display()}" if e.derived_from else ""
            lines.append(f"  {i}. {e.url.display()}{via}   [{e.provenance.describe()}]")
        p, t = self.policy, self.timeouts
        lines += [
            f"failover: {p.max_passes} passes; no sleep between servers; "
            f"{p.describe_backoff()}; dead servers tried last for {p.eject_cooldown:g}s",
            f"timeouts: connect {t.connect:g}s, acknowledge {t.request:g}s, "
            + (
                f"liveness {t.liveness:g}s ({t.heartbeat_misses} x {t.heartbeat_interval:g}s "
                "heartbeat), "
                if self.mode is Mode.WEBSOCKET
                else f"read {t.read:g}s, "
            )
            + (f"job deadline {t.job_deadline:g}s" if t.job_deadline else "no job deadline"),
        ]
        if self.mode is Mode.WEBSOCKET:
            lines.append(
                "shares: the server writes into a private directory per attempt beside the "
                f"target, mode {self.shares_dir_mode:#o}"
            )
        lines += [
            "sources: " + (", ".join(self.sources) or "defaults only"),
            "settings:",
        ]
        width = max(len(name) for name, _, _ in self.settings)
        for name, value, prov in self.settings:
            shown = _jsonable(value)
            if name in ("servers", "ws_servers") and isinstance(shown, list):
                shown = f"[{len(shown)} servers]"
            elif name == "shares_dir_mode" and isinstance(shown, int):
                shown = f"{shown:#o}"
            lines.append(f"  {name.ljust(width)} = {shown!s:<12} [{prov.describe()}]")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append(f"fingerprint: {self.fingerprint}")
        return "\n".join(lines)


_ORDER_TEXT = {
    "listed": "in the order listed",
    "shuffled": "in a random order per retrieval",
    "stable": "in a stable order per request_id",
}


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return {name: getattr(problem, name) for name in ("where", "message", "value", "accepted")}


def _asdict(value: FailoverPolicy | Timeouts | LogPolicy) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def _effective(plan: ConnectionPlan, fmt: int) -> dict[str, Any]:
    policy = _asdict(plan.policy)
    out: dict[str, Any] = {
        "format": fmt,
        "mode": plan.mode.value,
        "endpoints": [e.url.display() for e in plan.endpoints],
        "pipe_port": plan.pipe_port,
        "shares_port": plan.shares_port,
        "policy": policy,
        "timeouts": _asdict(plan.timeouts),
        "logs": _asdict(plan.logs),
        "ca_bundle": plan.ca_bundle,
    }
    if fmt == 1:
        del policy["backoff_mode"]  # format 1 predates it (and shares_dir_mode)
    else:
        out["shares_dir_mode"] = plan.shares_dir_mode
    return out


def _fingerprint(plan: ConnectionPlan, fmt: int = PLAN_FORMAT) -> str:
    canonical = json.dumps(_effective(plan, fmt), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _with_fingerprint(plan: ConnectionPlan) -> ConnectionPlan:
    return dataclasses.replace(plan, fingerprint=_fingerprint(plan))
