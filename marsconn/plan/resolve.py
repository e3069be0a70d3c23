"""resolve_plan: settings loaded from every source in, one frozen ConnectionPlan out.

The decision (mode, reason), the endpoints parsed from the chosen server source,
the plan's warnings and its audit records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
from .load import LoadedSettings, _load
from .serverlist import DEFAULT_LIST_FILES, ListedServer
from .settings import MarsSettings

if TYPE_CHECKING:
    from .capability import Capability

from .model import (
    ConnectionPlan,
    FailoverPolicy,
    LogPolicy,
    Mode,
    Reason,
    Timeouts,
    _with_fingerprint,
)
from .server_sources import ServerSearch, select_servers

__all__ = ["resolve_plan"]


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
            # A URL that needs no translation comes back as the same object.
            derived, url = (None if ws is url else url), ws
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
        # One lookup (hashing the URL's fields) per server, not two.
        first = first_seen.setdefault(url, endpoint)
        if first is not endpoint:
            warnings.append(
                Problem(
                    entry.provenance.describe(),
                    f"duplicate server {url.display()} dropped "
                    f"(first listed at {first.provenance.describe()})",
                )
            )
            continue
        endpoints.append(endpoint)
    return endpoints, problems, warnings


def _endpoints(
    loaded: LoadedSettings, mode: Mode, list_files: Sequence[str]
) -> tuple[tuple[Endpoint, ...], list[Problem], list[Problem]]:
    s, prov = loaded.settings, loaded.provenance
    search = ServerSearch()
    chosen, warnings = select_servers(loaded, mode is Mode.WEBSOCKET, list_files, search)
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

    Raises :class:`~marsconn.core.errors.ConfigError` listing every problem.
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
