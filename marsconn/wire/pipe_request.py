"""A pipe job as the server reads it: the merged request and its POST / body."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

__all__ = [
    "encode_job",
    "encode_request",
    "merged_request",
]


def merged_request(requests: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    """Request ``index`` as MARS sees it: ``requests[0..index]`` merged, later keys winning."""
    merged: dict[str, Any] = {}
    for request in requests[: index + 1]:
        merged.update(request)
    return merged


def encode_job(request: Mapping[str, Any], environ: Mapping[str, Any]) -> bytes:
    """The ``POST /`` body: ``{"request": ..., "environ": ...}`` as JSON."""
    return json.dumps({"request": dict(request), "environ": dict(environ)}).encode()


def encode_request(
    method: str,
    target: str,
    host: str,
    body: bytes | None = None,
    *,
    content_type: str | None = None,
    userinfo: str | None = None,
    user_agent: str = "marsconn",
) -> bytes:
    """One HTTP/1.1 request, head and body, ready to write.

    ``host`` is the Host header value (``name[:port]``); ``userinfo`` from
    the server URL becomes HTTP Basic credentials.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {user_agent}"]
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    if body is not None:
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head
