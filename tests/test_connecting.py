"""Connection failures are classified the same way by both transports."""

from __future__ import annotations

import socket
import ssl

import pytest

from marsconn.core.outcome import Action
from marsconn.run.connecting import connect_failure


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (TimeoutError(), "connect_timeout", "nothing within 3s"),
        (ConnectionRefusedError(111, "refused"), "connect_refused", "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "dns_failure", "lookup failed"),
        (UnicodeError("label empty or too long"), "dns_failure", "invalid host name"),
        (ssl.SSLCertVerificationError("bad cert"), "tls_error", "TLS failed"),
        (OSError(113, "No route to host"), "connect_error", "cannot connect"),
    ],
)
def test_every_connect_failure_moves_on_and_ejects(
    exc: BaseException, cls: str, text: str
) -> None:
    outcome = connect_failure(exc, "ws://m:9001", "nothing within 3s")
    assert (outcome.action, outcome.error_class, outcome.eject) == (Action.NEXT_SERVER, cls, True)
    assert str(outcome.error).startswith("ws://m:9001: ")
    assert text in str(outcome.error)


def test_a_transport_can_name_its_own_handshake_failures() -> None:
    def extra(exc: BaseException) -> tuple[str, str] | None:
        return ("handshake_failed", "bad upgrade") if isinstance(exc, ValueError) else None

    named = connect_failure(ValueError("x"), "s", "t", extra)
    other = connect_failure(KeyError("y"), "s", "t", extra)
    assert (named.error_class, str(named.error)) == ("handshake_failed", "s: bad upgrade")
    assert other.error_class == "connect_error"
