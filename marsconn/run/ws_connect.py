"""Opening a WebSocket connection to a MARS server, on marsconn's terms.

websockets' ``connect`` is used with three differences:

- credentials never go into the URI it is given: they travel as an
  ``Authorization: Basic`` header built as in pipe mode, so a username-only
  token (``ws://TOKEN@host``, which websockets refuses and quotes whole in
  its error) works in both modes, and no library error can print them;
- redirects are not followed: a 3xx answer is a failure naming where it
  pointed (:func:`redirect_failure`), so no server outside the plan is ever
  contacted while ``Result.server`` and the audit events name another;
- websockets logs through a logger that redacts URLs and ``Authorization``
  headers, so its DEBUG output never shows a credential.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from ..core.errors import clip
from ..core.neutralise import neutralise
from ..core.redact import redact
from ..plan.endpoints import ServerURL, basic_authorization

__all__ = ["open_websocket", "redirect_failure"]

_HEADER_SECRET = re.compile(r"(?i)\b((?:proxy-)?authorization|cookie)(\s*:\s*).*")


def _scrub(text: str) -> str:
    return _HEADER_SECRET.sub(r"\1\2***", redact(text))


class _RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, with every message redacted before it is emitted."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        self.logger.log(level, _scrub(text), **kwargs)


_LOGGER = _RedactingLogger(logging.getLogger("websockets.client"), {})


class _NoRedirects(connect):
    """websockets' connect, refusing to follow any redirect."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


async def open_websocket(
    url: ServerURL, tls: ssl.SSLContext | None, **options: Any
) -> ClientConnection:
    """Connect to ``url`` (credentials as a header, no redirects, redacted logs).

    ``options`` go to websockets' ``connect``. Raises what it raises; a
    redirect is an ``InvalidStatus`` with a 3xx status.
    """
    headers = None
    if url.userinfo is not None:
        headers = {"Authorization": basic_authorization(url.userinfo)}
    return await _NoRedirects(
        url.without_userinfo().secret(),
        ssl=tls,
        additional_headers=headers,
        logger=_LOGGER,
        proxy=None,  # MARS workers are reached directly, never through an HTTP(S)_PROXY
        **options,
    )


def redirect_failure(exc: BaseException) -> tuple[str, str] | None:
    """``("redirected", text)`` for a 3xx answer to the handshake, else None."""
    if not isinstance(exc, InvalidStatus) or not 300 <= exc.response.status_code < 400:
        return None
    location = exc.response.headers.get("Location")
    where = "without a Location"
    if location:
        shown = redact(location)
        if "?" in shown and "://" not in shown:  # a relative Location's query
            shown = shown.partition("?")[0] + "?***"
        where = f"to {neutralise(clip(shown, 200))!r}"
    return (
        "redirected",
        f"answered HTTP {exc.response.status_code}, a redirect {where}; redirects are not "
        "followed (only the plan's servers are contacted)",
    )
