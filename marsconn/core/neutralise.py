"""Text from a server made safe to log or show: no forged lines, no terminal tricks."""

from __future__ import annotations

import re

__all__ = ["neutralise"]

# What a line from a server may not carry into a log: line breaks (a forged next line), CR and
# escape sequences (overwriting or recolouring what a terminal shows), other C0/C1 controls, and
# bidirectional overrides (text that displays in another order than it reads). Tab stays.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str) -> str:
    """``text`` with every character that could forge or disguise a log line made visible.

    Line breaks, carriage returns, escape sequences, other control characters
    and bidirectional overrides become backslash escapes (``\\n``, ``\\r``,
    ``\\x1b``, ``\\u202e``); everything else, tab included, is unchanged.
    """
    if text.isprintable():  # the usual line: one C-speed scan, no copy
        return text
    return _UNSAFE.sub(_escape, text)
