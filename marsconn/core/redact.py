"""Redaction: the one rule that hides a URL's secrets wherever text may hold one."""

from __future__ import annotations

import re

__all__ = ["credentials_split_by_comma", "redact", "redact_value"]

# Redaction's patterns are compiled on first use (re caches them): most processes never
# redact anything, and compiling costs ~0.1 ms each at import.
_TOKEN = r"[^\s,]+"


_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"


# A URL in free text: from its scheme to the next white space or quote.
_URL_IN_TEXT = r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*"


# A path with a query in free text (an HTTP request line): "/mars?token=...".
_PATH_IN_TEXT = r"(?<![^\s'\"(])/[^\s'\"<>?]*\?[^\s'\"<>]*"


def redact_value(text: str) -> str:
    """:func:`redact`, stricter, for a configured value: one URL, or a list as written.

    In a value nothing but URLs is expected, so before its first scheme
    (``user:pa ss@host``, ``['agent:pw@h', ...]``) everything up to the last
    ``@`` is hidden, whatever separates it: a password may hold a comma or
    white space, and which part is a host cannot be known.
    """
    lines = text.split("\n")
    for n, line in enumerate(lines):
        first = re.search(_SCHEME, line)
        end = first.start() if first is not None else len(line)
        at = line.rfind("@", 0, end)
        if at >= 0:
            lines[n] = "***" + line[at:]
    return redact("\n".join(lines))


def credentials_split_by_comma(text: str) -> bool:
    """Whether splitting ``text`` at its commas would cut a URL's credentials in two.

    True for a comma inside the credentials after a scheme
    (``ws://user:pa,ss@host``), and for any item with credentials but no
    scheme: in ``user:pa,ss@host`` (or ``user:1234,5@host``) no rule can
    tell a password's comma from a list's.
    """
    if "@" not in text:
        return False
    if redact(text).count(",") < text.count(","):
        return True
    return any("@" in item and "://" not in item for item in text.split(","))


def _redact_token(token: str) -> str:
    if "@" not in token:
        return token
    scheme, sep, rest = token.partition("://")
    if not sep:
        scheme, rest = "", token
    # Up to the last '@': a password may hold '/' or '@' and still must not show.
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _redact_query(url: str) -> str:
    """``url`` with every query value (or a bare query item) replaced by ``***``."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    items = re.split(r"([&;])", query)
    for i in range(0, len(items), 2):
        key, eq, _ = items[i].partition("=")
        items[i] = f"{key}=***" if eq else ("***" if items[i] else "")
    return base + sep + "".join(items)


def _redact_userinfo(line: str) -> str:
    # From each scheme to the last '@' before the next scheme (or the end of the line):
    # a password may hold '/', '#', ',' or white space, which end no credential here.
    schemes = list(re.finditer(_SCHEME, line))
    if not schemes:
        return line
    out = [line[: schemes[0].end()]]
    for i, scheme in enumerate(schemes):
        following = schemes[i + 1] if i + 1 < len(schemes) else None
        stop = following.start() if following is not None else len(line)
        span = line[scheme.end() : stop]
        at = span.rfind("@")
        out.append(span if at < 0 else "***" + span[at:])
        if following is not None:
            out.append(line[stop : following.end()])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with anything that may be a URL's secret replaced by ``***``.

    The one redaction rule of marsconn, for any text that may hold server
    URLs (error messages, library exceptions, values that failed to parse):
    after a scheme (``ws://``), everything up to the last ``@`` before the
    next URL or the end of the line is credentials and hidden whole; in an
    item without a scheme (comma- or space-separated), everything up to its
    last ``@``; in a URL, or a path starting with ``/``, every query value
    (``?token=***``).
    """
    if "@" not in text and "?" not in text:
        return text
    lines = text.split("\n")
    for n, line in enumerate(lines):
        if "@" in line:
            line = re.sub(_TOKEN, lambda m: _redact_token(m.group()), _redact_userinfo(line))
        if "?" in line:
            line = re.sub(_URL_IN_TEXT, lambda m: _redact_query(m.group()), line)
            line = re.sub(_PATH_IN_TEXT, lambda m: _redact_query(m.group()), line)
        lines[n] = line
    return "\n".join(lines)
