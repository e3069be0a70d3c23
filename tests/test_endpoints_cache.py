"""parse_server_url's cache of the common URL shape: same answers, shared immutable values."""

from __future__ import annotations

import pytest

from marsconn.plan.endpoints import (
    _SIMPLE_CACHED,
    ServerURL,
    URLError,
    _parse_simple,
    parse_server_url,
)


def test_the_same_text_gives_the_same_value() -> None:
    _parse_simple.cache_clear()
    first = parse_server_url("http://mars-cache-1.example:9000/x")
    again = parse_server_url("  http://mars-cache-1.example:9000/x  ")
    assert again is first
    assert first == ServerURL("http", "mars-cache-1.example", 9000, "/x")
    assert _parse_simple.cache_info().hits >= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mars-cache-2:9000", ServerURL("http", "mars-cache-2", 9000, "")),
        ("HTTPS://Mars-Cache-3.Example", ServerURL("https", "mars-cache-3.example", None, "")),
        ("ws://user:pw@mars-cache-4:9001", ServerURL("ws", "mars-cache-4", 9001, "", "user:pw")),
        ("http://[::1]:9000", ServerURL("http", "::1", 9000, "")),
    ],
)
def test_other_shapes_parse_as_before_every_time(text: str, expected: ServerURL) -> None:
    # The first call caches "not the common shape" (or the shape after adding
    # http://); the second must take the same way to the same answer.
    assert parse_server_url(text) == expected
    assert parse_server_url(text) == expected


@pytest.mark.parametrize(
    "text", ["", "http://a b", "http://mars:0", "ftp://mars", "http://ma\x01rs"]
)
def test_errors_are_raised_every_time(text: str) -> None:
    for _ in range(2):
        with pytest.raises(URLError):
            parse_server_url(text)


def test_long_urls_bypass_the_cache() -> None:
    _parse_simple.cache_clear()
    text = "http://mars-long:9000/" + "p" * _SIMPLE_CACHED
    url = parse_server_url(text)
    assert url.path == "/" + "p" * _SIMPLE_CACHED
    assert _parse_simple.cache_info().currsize == 0
    assert parse_server_url(text) is not url  # parsed again, not remembered
