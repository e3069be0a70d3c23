"""Client TLS contexts: certificates are always verified."""

from __future__ import annotations

import functools
import ssl

__all__ = ["client_context"]


@functools.lru_cache(maxsize=8)
def client_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context: the system store, or ``ca_bundle`` when given.

    Cached because loading a certificate store costs milliseconds and the
    context is immutable once built.
    """
    return ssl.create_default_context(cafile=ca_bundle)
