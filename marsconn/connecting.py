"""How a failed connection attempt is classified, the same for both transports.

Every outcome here sends the executor to the next server at once and
ejects the one that failed: it did not answer, so it is presumed down.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from .jobstate import ServerLost
from .result import Action, Outcome

__all__ = ["connect_failure"]

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
    return Outcome.failed(Action.NEXT_SERVER, cls, ServerLost(f"{server}: {text}"), eject=True)
