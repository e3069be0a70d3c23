"""Server URLs: parsing and pipe -> WebSocket translation (redaction: marsconn.core.redact).

Everything here is pure: no I/O, no settings lookups. A URL is parsed once
into a :class:`ServerURL`; translation returns a new value.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..core.redact import _redact_query, redact
from .provenance import Provenance

__all__ = [
    "PIPE_SCHEMES",
    "WS_SCHEMES",
    "Endpoint",
    "ServerURL",
    "URLError",
    "basic_authorization",
    "parse_server_url",
    "to_websocket",
]

PIPE_SCHEMES = frozenset({"http", "https"})
WS_SCHEMES = frozenset({"ws", "wss"})
_WS_FOR = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The shape nearly every deployed server URL has: scheme://dns-name-or-ipv4[:port][/path],
# no credentials, IPv6, query or fragment. Parsed without urlsplit, which costs
# several times more; anything else takes the general path.
_SIMPLE = re.compile(
    r"(?P<scheme>[A-Za-z]+)://(?P<host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~/%!$&'()*+,;=:-]*)?"
)
ACCEPTED_URL = "http(s)://host[:port][/path], ws(s)://host[:port][/path], host or host:port"


class URLError(ValueError):
    """A server URL that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class ServerURL:
    """A parsed server URL.

    ``host`` is stored without IPv6 brackets; ``port`` is None when the URL
    names none; ``path`` keeps any query string. ``userinfo`` is kept so that
    a connection can use it, but :meth:`display` never shows it, nor the
    values of the query string (which may hold tokens).
    """

    scheme: str
    host: str
    port: int | None = None
    path: str = ""
    userinfo: str | None = None

    @property
    def netloc_host(self) -> str:
        """The host as written in a URL: IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def _render(self, userinfo: str | None, path: str) -> str:
        auth = f"{userinfo}@" if userinfo is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{auth}{self.netloc_host}{port}{path}"

    def secret(self) -> str:
        """The full URL, credentials included, for making the connection."""
        return self._render(self.userinfo, self.path)

    def display(self) -> str:
        """The URL for people and logs: credentials and query values replaced by ``***``."""
        path = self.path if "?" not in self.path else _redact_query(self.path)
        return self._render("***" if self.userinfo is not None else None, path)

    @property
    def has_redacted_secret(self) -> bool:
        """Whether this URL came from a display form, ``***`` standing for a secret."""
        if self.userinfo == "***":
            return True
        query = self.path.partition("?")[2]
        items = re.split("[&;]", query)
        return any(item == "***" or item.partition("=")[2] == "***" for item in items)

    def without_userinfo(self) -> ServerURL:
        """The same URL without credentials (they travel in a header instead)."""
        return ServerURL(self.scheme, self.host, self.port, self.path, None)

    @property
    def effective_port(self) -> int:
        """The port a connection goes to (the scheme's default when none is named)."""
        return self.port if self.port is not None else _DEFAULT_PORT[self.scheme]

    @property
    def is_tls(self) -> bool:
        """Whether the scheme is https or wss."""
        return self.scheme in ("https", "wss")

    def __str__(self) -> str:
        return self.display()

    def __repr__(self) -> str:
        return f"ServerURL({self.display()!r})"


def parse_server_url(text: str) -> ServerURL:
    """Parse one server URL as written in a list file, env var or config.

    Surrounding whitespace is ignored; the scheme is case-insensitive; a bare
    ``host`` or ``host:port`` (including ``[v6]:port``) means http. Raises
    :class:`URLError` with the reason for anything else.
    """
    raw = text.strip()
    # The common shape first: it has a scheme, and its characters exclude white
    # space and control characters, so the checks below could not fail for it.
    if len(raw) <= _SIMPLE_CACHED:
        url = _parse_simple(raw)
        if url is not None:
            return url
    if not raw:
        raise URLError("empty server URL")
    if _SPACE.search(raw):
        raise URLError("server URL contains white space")
    if _CONTROL.search(raw):
        raise URLError("server URL contains a control character")
    if not _HAS_SCHEME.match(raw):
        raw = "http://" + raw
    url = _parse_simple(raw) if len(raw) <= _SIMPLE_CACHED else _parse_simple.__wrapped__(raw)
    return url if url is not None else _parse_general(raw)


#: URLs up to this long go through the cache of _parse_simple.
_SIMPLE_CACHED = 512


@functools.lru_cache(maxsize=4096)
def _parse_simple(raw: str) -> ServerURL | None:
    """``raw`` parsed if it has the common shape (see ``_SIMPLE``), else None.

    Cached: a worker resolving a plan per job reads the same server list
    every time, and a ServerURL is an immutable value, so the same one
    serves every plan. That saves the match, the pieces and the object for
    each server of each plan (a third of resolve_plan's time for 1,000
    servers). Strings of another shape are remembered as None (the caller
    then checks them the long way); strings longer than _SIMPLE_CACHED are
    not passed here.
    """
    simple = _SIMPLE.fullmatch(raw)
    if simple is None:
        return None
    scheme, host, port_text, path = simple.group("scheme", "host", "port", "path")
    port = int(port_text) if port_text is not None else None
    scheme = scheme.lower()
    # The pattern's labels are never empty; only their length remains to check.
    if scheme in _WS_FOR and (port is None or 1 <= port <= 65535) and len(host) <= 63:
        return ServerURL(scheme, host.lower(), port, path or "")
    return None


def _host_name_problem(host: str) -> str | None:
    """Why ``host`` (not an IP literal in brackets) can never resolve, or None."""
    if len(host) > 253:
        return "is longer than 253 characters"
    for label in host.removesuffix(".").split("."):
        if not label:
            return "has an empty label (two dots in a row, or a leading dot)"
        if len(label) > 63:
            return f"has a label longer than 63 characters ({label[:20]}...)"
        bad = next((c for c in label if not (c.isalnum() or c in "-_")), None)
        if bad == ",":
            return (
                "contains ',': write one URL per server (a comma-separated list is split into "
                "servers only in mars_servers, MARS_WS_SERVERS and marsconn --server)"
            )
        if bad is not None:
            return f"contains {bad!r} (host names have letters, digits, '-' and '_')"
    return None


def _parse_general(raw: str) -> ServerURL:
    """Parse ``raw`` (stripped, white-space free, with a scheme) with urlsplit."""
    try:
        parts = urlsplit(raw)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        # The library's message may quote the authority, credentials included.
        raise URLError(f"not a valid URL: {redact(str(exc))}") from None
    scheme = parts.scheme.lower()
    if scheme not in _WS_FOR:
        raise URLError(f"unsupported scheme {parts.scheme!r}")
    if "@" in parts.path + parts.query + parts.fragment:
        # "user:pa/ss@host" or "user:pa#ss@host": the '@' is read as part of a path, query or
        # fragment, and what looks like a host or port is part of the credentials.
        raise URLError(
            "an '@' after a '/', '?' or '#': credentials containing those characters must "
            "be percent-encoded (%2F, %3F, %23), and an '@' in a path written as %40"
        )
    host = parts.hostname
    if not host:
        raise URLError("no host name")
    if "[" not in parts.netloc:  # urlsplit has checked a bracketed IPv6 literal
        reason = _host_name_problem(host)
        if reason is not None:
            raise URLError(f"impossible host name {host!r}: it {reason}")
    try:
        port = parts.port
    except ValueError:
        # Taken after the credentials: with the check above, nothing of them is quoted.
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise URLError(f"invalid port {port_text!r} (must be a number from 1 to 65535)") from None
    if port == 0:
        raise URLError("invalid port '0' (must be a number from 1 to 65535)")
    if parts.fragment:
        raise URLError("a server URL cannot have a #fragment")
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    # .hostname is already lower-cased: DNS names are case-insensitive, which
    # keeps duplicate detection and fingerprints stable.
    return ServerURL(scheme, host, port, path, userinfo)


def basic_authorization(userinfo: str) -> str:
    """The ``Authorization`` header value for a URL's credentials, in both modes.

    ``user:password`` or a lone token (``ws://TOKEN@host``), each part
    percent-decoded: ``Basic`` and the base64 of ``user:password``.
    """
    import base64
    from urllib.parse import unquote

    user, _, password = userinfo.partition(":")
    return "Basic " + base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()


def to_websocket(url: ServerURL, *, pipe_port: int, shares_port: int) -> ServerURL:
    """Translate a pipe-server URL into the WebSocket server's URL.

    http -> ws and https -> wss (ws/wss are kept); a port equal to the pipe
    port, or no port, becomes the shares port; other ports, the path and
    credentials are kept. Idempotent for ws URLs: they come back unchanged.
    """
    if url.scheme in WS_SCHEMES:
        return url
    port = shares_port if url.port is None or url.port == pipe_port else url.port
    # The constructor rather than dataclasses.replace: this runs once per server
    # and replace() costs several times more.
    return ServerURL(_WS_FOR[url.scheme], url.host, port, url.path, url.userinfo)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server of a plan: its URL and where the plan got it.

    ``derived_from`` holds the pipe URL a WebSocket URL was translated from.
    """

    url: ServerURL
    provenance: Provenance
    derived_from: ServerURL | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; URLs redacted."""
        out: dict[str, Any] = {
            "url": self.url.display(),
            "source": self.provenance.to_dict(),
            "source_text": self.provenance.describe(),
        }
        if self.derived_from is not None:
            out["derived_from"] = self.derived_from.display()
        return out
