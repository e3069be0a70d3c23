"""Per-process memory of servers that just refused or timed out (outlier ejection).

A server that failed to answer is moved to the end of the order for a
cooldown, for this and every concurrent or following retrieval in the
process, so a dead server stops costing every request a connection attempt
first. It is never skipped: when it is the only one left it is still tried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["ServerHealth", "default_health"]

T = TypeVar("T")


class ServerHealth:
    """Thread-safe record of ejected servers, keyed by URL."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ejected_until: dict[str, float] = {}

    def eject(self, server: str, cooldown: float) -> bool:
        """Move ``server`` to the back for ``cooldown`` seconds; True if it was not ejected yet."""
        if cooldown <= 0:
            return False
        with self._lock:
            now = self._clock()
            fresh = self._ejected_until.get(server, 0.0) <= now
            self._ejected_until[server] = now + cooldown
            return fresh

    def restore(self, server: str) -> bool:
        """Forget an ejection after the server answered; True if it was ejected."""
        with self._lock:
            until = self._ejected_until.pop(server, None)
            return until is not None and until > self._clock()

    def is_ejected(self, server: str) -> bool:
        """Whether ``server`` is inside its cooldown now."""
        with self._lock:
            return self._ejected_until.get(server, 0.0) > self._clock()

    def reorder(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """``items`` with healthy servers first, ejected ones last, each group in its order.

        Among ejected servers the one whose cooldown ends first comes first.
        """
        with self._lock:
            now = self._clock()
            until = {key(i): self._ejected_until.get(key(i), 0.0) for i in items}
            for server in [s for s, t in self._ejected_until.items() if t <= now]:
                del self._ejected_until[server]
        healthy = [i for i in items if until[key(i)] <= now]
        ejected = sorted((i for i in items if until[key(i)] > now), key=lambda i: until[key(i)])
        return healthy + ejected

    def clear(self) -> None:
        """Forget every ejection (tests, or after a deployment change)."""
        with self._lock:
            self._ejected_until.clear()


_default: ServerHealth | None = None
_default_lock = threading.Lock()


def default_health() -> ServerHealth:
    """The process-wide instance used when a retrieval is given none."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ServerHealth()
        return _default
