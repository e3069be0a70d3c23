"""How a failed connection attempt is classified, the same for both transports.

Every outcome here sends the executor to the next server at once and
ejects the one that failed: it did not answer, so it is presumed down.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from ..core.errors import ConfigError, Problem
from ..core.outcome import Action, Outcome, ServerLost
from ..core.redact import redact
from ..core.tls import client_context
from ..plan.endpoints import ServerURL

__all__ = ["connect_failure", "tls_context"]

#: A transport's own classes for errors of its handshake: (class, text) or None.
ExtraClassifier = Callable[[BaseException], "tuple[str, str] | None"]


def connect_failure(
    exc: BaseException, server: str, timeout_text: str, extra: ExtraClassifier | None = None
) -> Outcome:
    """The outcome of an attempt whose connection (TCP, TLS, handshake) failed with ``exc``.

    ``timeout_text`` says what did not happen in time; ``extra`` lets a
    transport name failures of its own protocol's handshake.
    """
    if isinstance(exc, TimeoutError):
        cls, text = "connect_timeout", timeout_text
    elif isinstance(exc, ConnectionRefusedError):
        cls, text = "connect_refused", "connection refused"
    elif isinstance(exc, socket.gaierror):
        cls, text = "dns_failure", f"host name lookup failed ({exc.strerror or exc})"
    elif isinstance(exc, UnicodeError):  # raised by IDNA encoding for malformed names
        cls, text = "dns_failure", f"invalid host name ({exc})"
    elif isinstance(exc, ssl.SSLError):
        cls, text = "tls_error", f"TLS failed: {exc}"
    else:
        cls, text = (extra(exc) if extra else None) or ("connect_error", f"cannot connect: {exc}")
    # A library's text may quote the URL it was given: one redaction rule for all of them.
    text = redact(text)
    return Outcome.failed(Action.NEXT_SERVER, cls, ServerLost(f"{server}: {text}"), eject=True)


def tls_context(url: ServerURL, ca_bundle: str | None) -> ssl.SSLContext | Outcome | None:
    """The TLS context for ``url`` (None for plain ws/http), or the outcome if it cannot be made.

    A CA bundle that cannot be loaded is this side's problem, the same for
    every server: a final ``ca_bundle_error`` that ejects nobody, not a
    connect failure on each server in turn.
    """
    if not url.is_tls:
        return None
    try:
        return client_context(ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = ConfigError(
            [
                Problem(
                    "ca_bundle",
                    f"CA bundle {ca_bundle!r} cannot be used: {reason}",
                    accepted="the path of a readable PEM file of CA certificates",
                )
            ]
        )
        return Outcome.failed(Action.FINAL, "ca_bundle_error", error)
