"""Reachability checks of a plan's servers: a handshake each, nothing run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from .core.errors import clip
from .core.neutralise import neutralise
from .core.redact import redact
from .core.tls import client_context
from .plan.endpoints import Endpoint
from .plan.model import ConnectionPlan, Mode

__all__ = ["ProbeResult", "probe", "probe_async"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One server's answer: ``ok``, the latency in seconds, and what happened."""

    server: str
    ok: bool
    latency: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "server": self.server,
            "ok": self.ok,
            "latency_ms": round(self.latency * 1000, 3),
            "detail": self.detail,
        }


async def _ws(endpoint: Endpoint, plan: ConnectionPlan) -> str:
    from .run.ws_connect import open_websocket

    url = endpoint.url
    # As the executor: credentials as a header, no redirects, no proxy, redacted logs.
    ws = await open_websocket(
        url,
        client_context(plan.ca_bundle) if url.is_tls else None,
        open_timeout=None,
        compression=None,
        close_timeout=1,
    )
    await ws.close()
    return "WebSocket handshake completed"


async def _pipe(endpoint: Endpoint, plan: ConnectionPlan) -> str:
    url = endpoint.url
    reader, writer = await asyncio.open_connection(
        url.host,
        url.effective_port,
        ssl=client_context(plan.ca_bundle) if url.is_tls else None,
        server_hostname=url.host if url.is_tls else None,
    )
    try:
        host = f"{url.netloc_host}:{url.effective_port}"
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    parts = status_line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status_line[:60]!r}")
    status = int(parts[1])
    if status >= 400:
        raise ConnectionError(f"HEAD / answered HTTP {status}")
    return f"HEAD / answered HTTP {status}"


async def _one(endpoint: Endpoint, plan: ConnectionPlan) -> ProbeResult:
    check = _ws if plan.mode is Mode.WEBSOCKET else _pipe
    started = time.perf_counter()
    try:
        async with asyncio.timeout(plan.timeouts.connect):
            detail = await check(endpoint, plan)
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {plan.timeouts.connect:g}s"
    except Exception as exc:
        # A library's text may quote the URL it was given, or the server's answer.
        ok, detail = False, neutralise(clip(redact(f"{type(exc).__name__}: {exc}"), 500))
    return ProbeResult(endpoint.url.display(), ok, time.perf_counter() - started, detail)


async def probe_async(plan: ConnectionPlan) -> list[ProbeResult]:
    """Probe every endpoint of ``plan`` concurrently, in plan order."""
    return list(await asyncio.gather(*(_one(e, plan) for e in plan.endpoints)))


def probe(plan: ConnectionPlan) -> list[ProbeResult]:
    """Synchronous :func:`probe_async`."""
    return asyncio.run(probe_async(plan))
