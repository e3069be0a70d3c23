"""What a pipe server's failure means for failover: same server, next server, or final."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from ..core.errors import ErrorKind, JobKilledError, MarsconnError, MarsRequestError, TransferError
from ..core.outcome import Action
from .http_response import _preview

__all__ = [
    "PipeStatusError",
    "Verdict",
    "classify_error_trailer",
    "classify_status",
]


class PipeStatusError(MarsconnError):
    """A pipe server answered a job with an HTTP status other than 200.

    ``status`` is the HTTP status code.
    """

    kind: ClassVar[ErrorKind] = ErrorKind.RUNTIME

    def __init__(self, message: str, *, status: int, server: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server = server


class Verdict(NamedTuple):
    """What a failure means: the action, a stable error class and the error.

    ``next_allowed`` is false when the server asked for retries on itself
    but not on another server.
    """

    action: Action
    error_class: str | None
    error: BaseException | None
    next_allowed: bool = True


#: Statuses retried on the same server by default (then the next one).
SAME_HOST_STATUSES = frozenset({500, 502, 503, 504, 408})


_TRUE = frozenset({"1", "true", "yes", "on"})


_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(value: Any) -> bool | None:
    """A 0/1 header or JSON flag; None when absent or unreadable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _decide(same: bool, nxt: bool) -> Action:
    if same:
        return Action.SAME_SERVER
    if nxt:
        return Action.NEXT_SERVER
    return Action.FINAL


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _shown_location(location: str) -> str:
    """A redirect's target as it may appear in an error: redacted, neutralised, cut."""
    from ..core.neutralise import neutralise
    from ..core.redact import redact

    shown = redact(location)
    if "?" in shown and "://" not in shown:  # a relative Location's query
        shown = shown.partition("?")[0] + "?***"
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return repr(neutralise(shown))


def classify_status(
    status: int, headers: Mapping[str, str], *, server: str = "", detail: str = ""
) -> Verdict:
    """Classify the status of a ``POST /`` answer.

    200 is success. 400 (MARS exited before any data) is final, class
    ``mars_rejected``, with a :class:`~marsconn.core.errors.MarsRequestError`
    carrying ``X-MARS-EXIT-CODE``. 500, 502, 503, 504 and 408 are retried on
    the same server (then the next); 429 and every other status go to the
    next server. ``X-MARS-RETRY-SAME-HOST`` / ``X-MARS-RETRY-NEXT-HOST``
    (0/1) override these defaults one flag each; when the flags say
    neither, the answer is final. A 500 with ``X-MARS-SIGNAL`` means MARS
    was killed: class ``mars_killed``, error
    :class:`~marsconn.core.errors.JobKilledError`. A 3xx is a redirect, never
    followed: class ``redirected``, next server, naming where it pointed
    (redacted). Other failures have class ``http_<status>``. ``detail``
    (e.g. a preview of the body) is appended to the error message.
    """
    if status == 200:
        return Verdict(Action.SUCCESS, None, None)
    lowered = {k.lower(): v for k, v in headers.items()}
    same = status in SAME_HOST_STATUSES
    nxt = status != 400
    override_same = _flag(lowered.get("x-mars-retry-same-host"))
    override_next = _flag(lowered.get("x-mars-retry-next-host"))
    if override_same is not None:
        same = override_same
    if override_next is not None:
        nxt = override_next
    action = _decide(same, nxt)
    where = f" on {server}" if server else ""
    tail = f": {detail}" if detail else ""
    error: BaseException
    if status == 400:
        code = _int_header(lowered.get("x-mars-exit-code"))
        shown = f"code {code}" if code is not None else "an unknown code"
        retried = "" if action is Action.FINAL else " (the server asked for a retry)"
        error = MarsRequestError(
            f"MARS exited with {shown}{where} before sending any data; "
            f"the request was rejected{retried}{tail}",
            returncode=code,
            server=server,
        )
        return Verdict(action, "mars_rejected", error, nxt)
    if 300 <= status < 400:
        # Never followed: the plan names the servers, and a redirect would take the job (and
        # the credentials) elsewhere while the audit events name this server.
        location = lowered.get("location")
        to = f" to {_shown_location(location)}" if location else " without a Location"
        error = PipeStatusError(
            f"{server or 'the server'} answered HTTP {status}, a redirect{to}; redirects are "
            f"not followed (only the plan's servers are contacted){tail}",
            status=status,
            server=server,
        )
        return Verdict(action, "redirected", error, nxt)
    signal = lowered.get("x-mars-signal")
    if status == 500 and signal is not None:
        error = JobKilledError(
            f"MARS was killed by signal {signal.strip()}{where} before sending any data{tail}"
        )
        return Verdict(action, "mars_killed", error, nxt)
    error = PipeStatusError(
        f"{server or 'the server'} answered HTTP {status} to the job{tail}",
        status=status,
        server=server,
    )
    return Verdict(action, f"http_{status}", error, nxt)


def classify_error_trailer(payload: Mapping[str, Any], *, server: str = "") -> Verdict:
    """Classify the JSON object that followed ``EROR``.

    ``{"exited": N}``: MARS exited with code N after data began; final,
    class ``mars_rejected``, :class:`~marsconn.core.errors.MarsRequestError`.
    ``{"killed": SIG, "retry_same_host": b, "retry_next_host": b}``: class
    ``mars_killed``, same server / next server / final per the flags (a
    missing flag takes the default of a 500 answer: retry). Anything else
    is a malformed body: class ``transfer_broken``, next server.
    """
    where = f" on {server}" if server else ""
    if "exited" in payload:
        code = payload["exited"]
        if isinstance(code, int) and not isinstance(code, bool):
            return Verdict(
                Action.FINAL,
                "mars_rejected",
                MarsRequestError(
                    f"MARS exited with code {code}{where} while sending data; "
                    "the partial output was discarded and the request not retried elsewhere",
                    returncode=code,
                    server=server,
                ),
            )
    elif "killed" in payload:
        same = _flag(payload.get("retry_same_host"))
        nxt = _flag(payload.get("retry_next_host"))
        next_ok = True if nxt is None else nxt
        action = _decide(True if same is None else same, next_ok)
        return Verdict(
            action,
            "mars_killed",
            JobKilledError(
                f"MARS was killed by signal {payload['killed']}{where} while sending data; "
                "the partial output was discarded"
            ),
            next_ok,
        )
    return Verdict(
        Action.NEXT_SERVER,
        "transfer_broken",
        TransferError(
            f"{server or 'the server'} sent EROR with an unknown payload "
            f"{_preview(json.dumps(dict(payload)).encode())}"
        ),
    )
