"""The resolved, frozen ConnectionPlan and the pure function that makes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..core import audit
from ..core.errors import ConfigError, Problem
from ..core.redact import redact_value
from .endpoints import (
    ACCEPTED_URL,
    PIPE_SCHEMES,
    Endpoint,
    ServerURL,
    URLError,
    parse_server_url,
    to_websocket,
)
from .provenance import Provenance, SourceKind
from .serverlist import DEFAULT_LIST_FILES, ListedServer, read_list_file, split_inline_list
from .settings import LoadedSettings, MarsSettings, _load

if TYPE_CHECKING:
    from .capability import Capability

__all__ = [
    "ConnectionPlan",
    "FailoverPolicy",
    "LogPolicy",
    "Mode",
    "Reason",
    "Timeouts",
    "resolve_plan",
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
        places.update(
            dict.fromkeys((e.provenance.kind, e.provenance.file) for e in self.endpoints)
        )
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


# --- resolution -------------------------------------------------------------------------------


def _decide(s: MarsSettings, cap: Capability | None) -> tuple[Mode, Reason, str]:
    if not s.use_shares:
        return Mode.PIPE, Reason.SHARES_NOT_REQUESTED, "WebSocket (shares) mode was not requested"
    if s.force_websocket_mode:
        return (
            Mode.WEBSOCKET,
            Reason.FORCED,
            "WebSocket mode forced: the server version check was skipped",
        )
    assert cap is not None
    from .capability import VersionVerdict  # loaded with the capability check

    match cap.verdict:
        case VersionVerdict.SUPPORTED:
            return (
                Mode.WEBSOCKET,
                Reason.SHARES_ENABLED,
                f"shares requested and cads-mars-server {cap.version} ({cap.source}) "
                f">= {cap.required}",
            )
        case VersionVerdict.MISSING:
            return (
                Mode.PIPE,
                Reason.SERVER_PACKAGE_MISSING,
                "shares requested but cads-mars-server is not installed; using pipe mode",
            )
        case VersionVerdict.TOO_OLD:
            return (
                Mode.PIPE,
                Reason.SERVER_PACKAGE_TOO_OLD,
                f"shares requested but cads-mars-server {cap.version} ({cap.source}) is older "
                f"than {cap.required}; using pipe mode",
            )
        case _:
            return (
                Mode.PIPE,
                Reason.SERVER_VERSION_UNPARSABLE,
                f"shares requested but the cads-mars-server version {cap.version!r} "
                f"({cap.source}) cannot be parsed; using pipe mode",
            )


_REMEDY = {
    Reason.SERVER_PACKAGE_MISSING: "install cads-mars-server >= {req} on this worker, "
    "or declare the servers' version (resolve_plan(server_version=...), "
    "marsconn validate --assume-server-version {req})",
    Reason.SERVER_PACKAGE_TOO_OLD: "upgrade cads-mars-server to >= {req}",
    Reason.SERVER_VERSION_UNPARSABLE: "install a released cads-mars-server >= {req}",
}


# Plain classes, not dataclasses: these two are internal, and creating a dataclass costs
# about half a millisecond of import time.
class _ServerSearch:
    """Where server lists were looked for, to explain an empty result."""

    __slots__ = ("looked",)

    def __init__(self) -> None:
        self.looked: list[str] = []


class _Selected:
    """The server entries of the one source that supplies them, and which setting that is."""

    __slots__ = ("direct_ws", "entries", "problems", "setting")

    def __init__(
        self,
        entries: list[ListedServer] | None = None,
        problems: list[Problem] | None = None,
        setting: str | None = None,
        direct_ws: bool = False,
    ) -> None:
        self.entries = entries if entries is not None else []
        self.problems = problems if problems is not None else []
        self.setting = setting  # the MarsSettings field, or None for a default list file
        self.direct_ws = direct_ws  # the entries name WebSocket servers (MARS_WS_SERVERS)


def _read_listed(path: Path, pointed_by: str, search: _ServerSearch) -> _Selected:
    entries, problems = read_list_file(path, pointed_by)
    if not entries and not problems:
        search.looked.append(f"{path} (no servers in it)")
    return _Selected(entries, problems)


def _select_servers(
    loaded: LoadedSettings, mode: Mode, list_files: Sequence[str], search: _ServerSearch
) -> tuple[_Selected, list[Problem]]:
    """The server entries from the highest-precedence source that is set.

    Order: the adaptor's ``mars_servers``, the adaptor's ``mars_server_list``,
    in WebSocket mode ``MARS_WS_SERVERS``, ``MARS_API_SERVER_LIST``, then the
    first default list file that exists. Only the chosen source is read; an
    explicit list path of a lower source that does not exist is a warning.
    """
    s, prov = loaded.settings, loaded.provenance
    chosen: _Selected | None = None
    if s.servers is not None:
        entries, problems = split_inline_list(s.servers, prov["servers"])
        search.looked.append(f"{prov['servers'].describe()} (empty)")
        chosen = _Selected(entries, problems, "servers")
    else:
        search.looked.append("adaptor config key 'mars_servers' (unset)")
    if chosen is None:
        if s.server_list is not None:
            chosen = _read_listed(s.server_list, prov["server_list"].describe(), search)
            chosen.setting = "server_list"
        else:
            search.looked.append("adaptor config key 'mars_server_list' (unset)")
    if chosen is None and mode is Mode.WEBSOCKET:
        if s.ws_servers:
            entries, problems = split_inline_list(s.ws_servers, prov["ws_servers"])
            chosen = _Selected(entries, problems, "ws_servers", direct_ws=True)
        else:
            search.looked.append(
                f"{prov['ws_servers'].describe()} (empty)"
                if s.ws_servers is not None
                else "MARS_WS_SERVERS (unset)"
            )
    if chosen is None:
        if s.api_server_list is not None:
            chosen = _read_listed(s.api_server_list, prov["api_server_list"].describe(), search)
            chosen.setting = "api_server_list"
        else:
            search.looked.append("MARS_API_SERVER_LIST (unset)")
    if chosen is None:
        for candidate in list_files:
            if os.path.exists(candidate):
                chosen = _read_listed(Path(candidate), f"default list file {candidate}", search)
                break
            search.looked.append(f"{candidate} (absent)")
        else:
            return _Selected(), []

    warnings: list[Problem] = []
    # Default list files are only consulted when no list path is set, so any
    # list path set but not chosen ranks below a chosen setting. One pointing
    # at nothing is a deployment mistake waiting to bite when the setting above
    # it is removed.
    if chosen.setting is not None:
        winner = prov[chosen.setting].describe()
        for name in ("server_list", "api_server_list"):
            path = getattr(s, name)
            if path is not None and name != chosen.setting and not os.path.exists(path):
                warnings.append(
                    Problem(
                        prov[name].describe(),
                        f"names {str(path)!r}, which does not exist; it is not used because "
                        f"{winner} takes precedence",
                    )
                )
    return chosen, warnings


def _parse_entries(
    entries: Sequence[ListedServer], mode: Mode, s: MarsSettings, direct_ws: bool
) -> tuple[list[Endpoint], list[Problem], list[Problem]]:
    endpoints: list[Endpoint] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    first_seen: dict[ServerURL, Endpoint] = {}
    websocket = mode is Mode.WEBSOCKET
    for entry in entries:
        try:
            url = parse_server_url(entry.text)
        except URLError as exc:
            problems.append(
                Problem(
                    entry.provenance.describe(), str(exc), redact_value(entry.text), ACCEPTED_URL
                )
            )
            continue
        derived: ServerURL | None = None
        if websocket:
            ws = to_websocket(url, pipe_port=s.pipe_port, shares_port=s.shares_port)
            derived, url = (None if ws == url else url), ws
            if direct_ws and derived is not None:
                # Used as the WebSocket server it most likely means, but not as written.
                warnings.append(
                    Problem(
                        entry.provenance.describe(),
                        f"pipe-server URL {derived.display()} used as {url.display()}",
                        accepted="ws:// or wss:// URLs of the WebSocket servers",
                    )
                )
        elif url.port is None and "://" not in entry.text:
            # A bare host names a pipe server on the pipe port, not on HTTP's port 80.
            derived = url
            url = ServerURL(url.scheme, url.host, s.pipe_port, url.path, url.userinfo)
        elif url.scheme not in PIPE_SCHEMES:
            problems.append(
                Problem(
                    entry.provenance.describe(),
                    "a WebSocket URL cannot be used in pipe mode",
                    url.display(),
                    "http:// or https:// pipe-server URLs",
                )
            )
            continue
        endpoint = Endpoint(url, entry.provenance, derived)
        # ServerURL is a frozen value: equal fields (credentials included), same server.
        key = url
        if key in first_seen:
            warnings.append(
                Problem(
                    entry.provenance.describe(),
                    f"duplicate server {url.display()} dropped "
                    f"(first listed at {first_seen[key].provenance.describe()})",
                )
            )
            continue
        first_seen[key] = endpoint
        endpoints.append(endpoint)
    return endpoints, problems, warnings


def _endpoints(
    loaded: LoadedSettings, mode: Mode, list_files: Sequence[str]
) -> tuple[tuple[Endpoint, ...], list[Problem], list[Problem]]:
    s, prov = loaded.settings, loaded.provenance
    search = _ServerSearch()
    chosen, warnings = _select_servers(loaded, mode, list_files, search)
    endpoints, problems, parse_warnings = _parse_entries(chosen.entries, mode, s, chosen.direct_ws)
    problems = chosen.problems + problems
    warnings += parse_warnings
    if not endpoints and not problems:
        hint = ""
        if mode is Mode.PIPE and s.ws_servers:
            hint = (
                f"; {prov['ws_servers'].describe()} is set but only WebSocket mode uses it "
                "(this plan is in pipe mode)"
            )
        problems.append(
            Problem(
                "server list",
                "no MARS servers configured; looked in: " + ", ".join(search.looked) + hint,
                accepted="mars_servers in the adaptor config, a server-list file "
                "(MARS_API_SERVER_LIST or mars_server_list), MARS_WS_SERVERS in "
                "WebSocket mode, or a default list file",
            )
        )
    return tuple(endpoints), problems, warnings


def _setting_warnings(loaded: LoadedSettings, mode: Mode) -> list[Problem]:
    """Settings that are set but have no effect, or contradict each other."""
    s = loaded.settings
    warnings: list[Problem] = []
    if s.force_websocket_mode and not s.use_shares:
        warnings.append(
            Problem(
                loaded.where("force_websocket_mode"),
                f"set but use_shares is false ({loaded.where('use_shares')}); the force flag "
                "only applies when shares is requested",
            )
        )
    if s.ws_servers and mode is Mode.PIPE:
        warnings.append(
            Problem(
                loaded.where("ws_servers"),
                "set but not used: only WebSocket mode uses it, and this plan is in pipe mode",
            )
        )
    if s.pipe_port == s.shares_port:
        # Not an error here: a plan can still be made (and in pipe mode works); the
        # deployment check (`marsconn validate`) refuses it.
        warnings.append(
            Problem(
                f"pipe_port ({loaded.where('pipe_port')}) and shares_port "
                f"({loaded.where('shares_port')})",
                f"both are {s.pipe_port}: a worker's pipe and WebSocket servers cannot listen "
                "on one port, and pipe-server URLs would be turned into WebSocket URLs on the "
                "pipe server's port",
                accepted="two different ports (by default 9000 and 9001)",
            )
        )
    return warnings


def _ca_bundle_problems(loaded: LoadedSettings) -> list[Problem]:
    """A CA bundle that is set must be a readable PEM file, checked now rather than per attempt.

    Found only at run time, a bad bundle would fail the TLS handshake with every server,
    eject them all and retry every pass.
    """
    path = loaded.settings.ca_bundle
    if path is None:
        return []
    import ssl

    from ..core.tls import client_context
    from .configfiles import FileProblem, check_regular_file

    try:
        check_regular_file(path)
        client_context(str(path))  # loads it (and keeps it for the connections)
    except FileNotFoundError:
        reason = "does not exist"
    except FileProblem as exc:
        reason = f"cannot be read: {exc}"
    except ssl.SSLError as exc:
        reason = f"holds no usable PEM certificates ({exc.reason or exc})"
    except OSError as exc:  # pragma: no cover - a race with the check above
        reason = f"cannot be read: {exc.strerror or exc}"
    else:
        return []
    return [
        Problem(
            loaded.where("ca_bundle"),
            f"CA bundle {str(path)!r} {reason}",
            accepted="the path of a readable PEM file of CA certificates",
        )
    ]


def resolve_plan(
    config: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    server_version: str | None = None,
    default_list_files: Sequence[str] = DEFAULT_LIST_FILES,
    logger: audit.AuditLogger | None = None,
    strict: bool = False,
) -> ConnectionPlan:
    """Merge every settings source and decide how to reach the MARS servers.

    ``config`` is the adaptor's per-dataset config (``mars_servers``,
    ``mars_server_list``). With ``env`` given, ``os.environ`` is never read.
    ``server_version`` declares the servers' cads-mars-server version instead
    of detecting the installed one (for validating a deployment elsewhere).
    ``default_list_files`` replaces the list files looked up when no list is
    configured. Emits ``marsconn.plan.resolved`` (and ``marsconn.mode.fallback``
    when shares was requested but not granted) to ``logger``.

    A ``MARS_CONFIG_FILE`` naming a file that does not exist is a plan
    warning and the other sources apply, as in cads-mars-server; with
    ``strict`` (what ``marsconn validate`` uses) it is a problem.

    Raises :class:`~marsconn.errors.ConfigError` listing every problem.
    """
    loaded, problems = _load(
        config,
        env=env,
        env_file=env_file,
        config_file=config_file,
        overrides=overrides,
        strict=strict,
    )
    s = loaded.settings
    cap: Capability | None = None
    # The capability module (and packaging) only when the version decides something.
    if server_version is not None:
        from .capability import assess

        cap = assess(server_version, s.required_server_version, declared=True)
    elif s.use_shares and not s.force_websocket_mode:
        # Only looked up when it decides something: metadata scans sys.path.
        from .capability import assess, detect_server_version

        cap = assess(detect_server_version(), s.required_server_version)
    mode, reason, reason_text = _decide(s, cap)
    endpoints, endpoint_problems, endpoint_warnings = _endpoints(loaded, mode, default_list_files)
    problems += endpoint_problems
    problems += _ca_bundle_problems(loaded)
    if problems:
        raise ConfigError(problems)

    warnings = [*loaded.warning_records, *endpoint_warnings, *_setting_warnings(loaded, mode)]
    plan = ConnectionPlan(
        mode=mode,
        requested_mode=Mode.WEBSOCKET if s.use_shares else Mode.PIPE,
        reason=reason,
        reason_text=reason_text,
        server_version=cap.version if cap else None,
        server_version_source=cap.source if cap else "not checked",
        required_version=s.required_server_version,
        endpoints=endpoints,
        pipe_port=s.pipe_port,
        shares_port=s.shares_port,
        policy=FailoverPolicy(
            order=s.failover_order,
            max_passes=s.max_retries,
            backoff_initial=s.retry_delay,
            backoff_max=s.retry_backoff_max,
            same_host_retries=s.same_host_retries,
            eject_cooldown=s.eject_cooldown,
            backoff_mode=s.retry_backoff,
        ),
        timeouts=Timeouts(
            connect=s.connect_timeout,
            request=s.request_timeout,
            read=s.read_timeout,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_misses=s.heartbeat_misses,
            job_deadline=s.job_deadline,
            target_settle=s.target_settle_time,
            ws_ping_interval=s.ws_ping_interval,
            ws_close=s.ws_close_timeout,
        ),
        logs=LogPolicy(filter=s.client_filter_logs, keep_lines=s.log_keep_lines),
        ca_bundle=str(s.ca_bundle) if s.ca_bundle else None,
        warnings=tuple(str(w) for w in warnings),
        settings=tuple(
            (name, getattr(s, name), loaded.provenance[name]) for name in type(s).model_fields
        ),
        shares_dir_mode=s.shares_dir_mode,
        warning_records=tuple(warnings),
    )
    plan = _with_fingerprint(plan)
    audit.emit(
        audit.PlanResolved(
            mode=plan.mode.value,
            requested_mode=plan.requested_mode.value,
            reason=plan.reason.value,
            server_version=plan.server_version,
            required_version=plan.required_version,
            endpoint_count=len(plan.endpoints),
            fingerprint=plan.fingerprint,
            sources=plan.sources,
            warnings=list(plan.warnings),
        ),
        logger,
    )
    if plan.requested_mode is not plan.mode:
        audit.emit(
            audit.ModeFallback(
                requested_mode=plan.requested_mode.value,
                mode=plan.mode.value,
                reason=plan.reason.value,
                detail=plan.reason_text,
                remedy=_REMEDY[plan.reason].format(req=plan.required_version)
                + f"; or set use_shares to false ({loaded.where('use_shares')}) "
                "to choose pipe mode deliberately",
                server_version=plan.server_version,
                required_version=plan.required_version,
            ),
            logger,
        )
    return plan


def _with_fingerprint(plan: ConnectionPlan) -> ConnectionPlan:
    return dataclasses.replace(plan, fingerprint=_fingerprint(plan))
