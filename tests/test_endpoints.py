"""Server URLs: parsing, redaction and pipe -> WebSocket translation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marsconn.core.redact import redact
from marsconn.plan import endpoints
from marsconn.plan.endpoints import Endpoint, ServerURL, URLError, parse_server_url, to_websocket
from marsconn.plan.provenance import Provenance, SourceKind

PROPERTY = settings(max_examples=150, deadline=None)

# --- strategies -----------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
dns_names = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
hosts = st.one_of(dns_names, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))
paths = st.one_of(
    st.just(""),
    st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True), min_size=1, max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
queries = st.one_of(st.just(""), st.from_regex(r"\?[a-z]{1,5}=[a-z0-9]{1,5}", fullmatch=True))
_USERPART = st.from_regex(r"[A-Za-z0-9._~!$&'()*+;=-]{1,10}", fullmatch=True)
userinfos = st.one_of(
    st.none(),
    _USERPART,
    st.tuples(_USERPART, _USERPART).map(lambda up: f"{up[0]}:{up[1]}"),
)
schemes = st.sampled_from(["http", "https", "ws", "wss"])


@st.composite
def scheme_spellings(draw: st.DrawFn) -> str:
    """A scheme in random letter case, e.g. hTTp."""
    scheme = draw(schemes)
    flips = draw(st.lists(st.booleans(), min_size=len(scheme), max_size=len(scheme)))
    return "".join(c.upper() if f else c for c, f in zip(scheme, flips, strict=True))


def render(scheme: str, host: str, port: int | None, path: str, userinfo: str | None) -> str:
    netloc_host = f"[{host}]" if ":" in host else host
    auth = f"{userinfo}@" if userinfo is not None else ""
    return f"{scheme}://{auth}{netloc_host}{'' if port is None else f':{port}'}{path}"


# --- parsing --------------------------------------------------------------------------------


@PROPERTY
@given(scheme_spellings(), hosts, ports, paths, queries, userinfos)
def test_parse_recovers_every_part(
    scheme: str, host: str, port: int | None, path: str, query: str, userinfo: str | None
) -> None:
    url = parse_server_url(render(scheme, host, port, path + query, userinfo))
    assert url == ServerURL(scheme.lower(), host, port, path + query, userinfo)


@PROPERTY
@given(schemes, hosts, ports, paths, userinfos)
def test_secret_round_trips_and_display_hides_credentials(
    scheme: str, host: str, port: int | None, path: str, userinfo: str | None
) -> None:
    url = parse_server_url(render(scheme, host, port, path, userinfo))
    assert parse_server_url(url.secret()) == url
    shown = url.display()
    if userinfo is None:
        assert shown == url.secret()
        assert "***" not in shown
    else:
        assert shown == render(scheme, host, port, path, "***")
    assert str(url) == shown
    assert repr(url) == f"ServerURL({shown!r})"


@PROPERTY
@given(hosts, ports, paths)
def test_bare_host_and_host_port_mean_http(host: str, port: int | None, path: str) -> None:
    written = render("http", host, port, path, None).removeprefix("http://")
    assert parse_server_url(written) == ServerURL("http", host, port, path)


@PROPERTY
@given(dns_names, ports)
def test_host_names_are_compared_in_lower_case(host: str, port: int | None) -> None:
    upper = parse_server_url(render("HTTP", host.upper(), port, "", None))
    assert upper == parse_server_url(render("http", host, port, "", None))


@PROPERTY
@given(ipv6, ports)
def test_ipv6_brackets_are_preserved(host: str, port: int | None) -> None:
    url = parse_server_url(render("http", host, port, "", None))
    assert url.host == host
    assert url.netloc_host == f"[{host}]"
    assert url.display().startswith(f"http://[{host}]")
    ws = to_websocket(url, pipe_port=9000, shares_port=9001)
    assert ws.display().startswith(f"ws://[{host}]:")


@PROPERTY
@given(st.text(alphabet="abcxyz019:/@[]?#%.-_~+ ", max_size=30), schemes)
def test_fast_path_agrees_with_the_general_parser(rest: str, scheme: str) -> None:
    raw = f"{scheme}://{rest}"
    if any(ch.isspace() for ch in raw):
        return

    def outcome(parse: Callable[[str], ServerURL]) -> ServerURL | str:
        try:
            return parse(raw)
        except URLError as exc:
            return f"error: {exc}"

    assert outcome(parse_server_url) == outcome(endpoints._parse_general)


def test_fast_path_examples_match_the_general_parser() -> None:
    for raw in [
        "http://mars-worker-1.internal:9000",
        "HTTP://Mars-Worker-1.Internal:09000/a/b",
        "wss://10.0.0.1",
        "http://h:65535/x;y=1",
    ]:
        assert parse_server_url(raw) == endpoints._parse_general(raw)


def test_surrounding_white_space_is_ignored() -> None:
    assert parse_server_url("  http://a:9000\t") == ServerURL("http", "a", 9000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty server URL"),
        ("   ", "empty server URL"),
        ("http://a b:9000", "server URL contains white space"),
        ("ftp://mars:21", "unsupported scheme 'ftp'"),
        ("FTP://mars:21", "unsupported scheme 'ftp'"),
        ("http://mars:abc", "invalid port 'abc' (must be a number from 1 to 65535)"),
        ("mars:abc", "invalid port 'abc' (must be a number from 1 to 65535)"),
        ("http://mars:70000", "invalid port '70000' (must be a number from 1 to 65535)"),
        ("http://mars:-1", "invalid port '-1' (must be a number from 1 to 65535)"),
        ("http://mars:0", "invalid port '0' (must be a number from 1 to 65535)"),
        ("http://[fd00::5]:x", "invalid port 'x' (must be a number from 1 to 65535)"),
        ("http://", "no host name"),
        ("http://user@:9000", "no host name"),
        ("http://mars:9000/#top", "a server URL cannot have a #fragment"),
    ],
)
def test_unusable_urls_say_why(text: str, message: str) -> None:
    with pytest.raises(URLError) as info:
        parse_server_url(text)
    assert str(info.value) == message


def test_unclosed_ipv6_bracket_is_not_a_valid_url() -> None:
    with pytest.raises(URLError, match=r"^not a valid URL: "):
        parse_server_url("http://[fd00::5:9000")


def test_query_is_kept_with_the_path_and_its_values_never_shown() -> None:
    url = parse_server_url("http://mars:9000/api?x=1")
    assert (url.path, url.secret()) == ("/api?x=1", "http://mars:9000/api?x=1")
    assert url.display() == "http://mars:9000/api?x=***"


def test_effective_port_and_tls() -> None:
    assert parse_server_url("http://a").effective_port == 80
    assert parse_server_url("https://a").effective_port == 443
    assert parse_server_url("ws://a").effective_port == 80
    assert parse_server_url("wss://a").effective_port == 443
    assert parse_server_url("ws://a:9001").effective_port == 9001
    assert [parse_server_url(f"{s}://a").is_tls for s in ("http", "https", "ws", "wss")] == [
        False,
        True,
        False,
        True,
    ]


# --- translation ----------------------------------------------------------------------------


@PROPERTY
@given(
    scheme_spellings(),
    hosts,
    ports,
    paths,
    userinfos,
    st.integers(1, 65535),
    st.integers(1, 65535),
)
def test_translation_rules(
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    userinfo: str | None,
    pipe_port: int,
    shares_port: int,
) -> None:
    url = parse_server_url(render(scheme, host, port, path, userinfo))
    ws = to_websocket(url, pipe_port=pipe_port, shares_port=shares_port)
    if url.scheme in ("ws", "wss"):
        assert ws == url
        return
    assert ws.scheme == {"http": "ws", "https": "wss"}[url.scheme]
    expected_port = shares_port if port is None or port == pipe_port else port
    assert (ws.host, ws.port, ws.path, ws.userinfo) == (host, expected_port, path, userinfo)


@PROPERTY
@given(schemes, hosts, ports, paths, userinfos, st.integers(1, 65535), st.integers(1, 65535))
def test_translation_is_idempotent(
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    userinfo: str | None,
    pipe_port: int,
    shares_port: int,
) -> None:
    url = parse_server_url(render(scheme, host, port, path, userinfo))
    once = to_websocket(url, pipe_port=pipe_port, shares_port=shares_port)
    assert to_websocket(once, pipe_port=pipe_port, shares_port=shares_port) == once
    assert parse_server_url(once.secret()) == once


@pytest.mark.parametrize(
    ("pipe", "websocket"),
    [
        ("http://mars-1:9000", "ws://mars-1:9001"),
        ("https://mars-1:9000", "wss://mars-1:9001"),
        ("http://mars-1", "ws://mars-1:9001"),
        ("http://mars-1:8080/mars", "ws://mars-1:8080/mars"),
        ("HTTP://[FD00::5]:9000", "ws://[fd00::5]:9001"),
        ("http://u:secret@mars-1:9000", "ws://***@mars-1:9001"),
        ("ws://mars-1:9000", "ws://mars-1:9000"),
        ("wss://mars-1", "wss://mars-1"),
    ],
)
def test_translation_examples(pipe: str, websocket: str) -> None:
    ws = to_websocket(parse_server_url(pipe), pipe_port=9000, shares_port=9001)
    assert ws.display() == websocket


def test_translation_keeps_credentials_for_the_connection() -> None:
    ws = to_websocket(
        parse_server_url("https://u:secret@mars-1:9000/p"), pipe_port=9000, shares_port=9001
    )
    assert ws.secret() == "wss://u:secret@mars-1:9001/p"


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:secret@mars:9000", "http://***@mars:9000"),
        ("u:secret@mars:abc", "***@mars:abc"),
        ("http://u:p/w@mars", "http://***@mars"),
        ("http://u:p@ss@mars", "http://***@mars"),
        ("ftp://a:b@x, http://c:d@y", "ftp://***@x, http://***@y"),
        ("['http://u:pw@a', 'b']", "['http://***@a', 'b']"),
        ("http://mars:9000/path", "http://mars:9000/path"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


@PROPERTY
@given(schemes, hosts, ports, paths, _USERPART, _USERPART)
def test_redact_never_shows_a_password(
    scheme: str, host: str, port: int | None, path: str, user: str, password: str
) -> None:
    secret = f"{password}XSECRETX"
    text = render(scheme, host, port, path, f"{user}:{secret}")
    assert secret not in redact(text)
    assert secret not in parse_server_url(text).display()


# --- Endpoint -------------------------------------------------------------------------------


def test_endpoint_to_dict_redacts_and_names_its_source() -> None:
    prov = Provenance(SourceKind.LIST_FILE, "server", "/etc/mars/x.list", 3)
    pipe = parse_server_url("http://u:pw@mars:9000")
    ws = to_websocket(pipe, pipe_port=9000, shares_port=9001)
    assert Endpoint(ws, prov, pipe).to_dict() == {
        "url": "ws://***@mars:9001",
        "source": {"kind": "list_file", "name": "server", "file": "/etc/mars/x.list", "line": 3},
        "source_text": "/etc/mars/x.list:3 (server list)",
        "derived_from": "http://***@mars:9000",
    }
    direct = Endpoint(parse_server_url("ws://mars:9001"), Provenance(SourceKind.ENV, "X[0]"))
    assert direct.to_dict() == {
        "url": "ws://mars:9001",
        "source": {"kind": "env", "name": "X[0]"},
        "source_text": "environment variable X[0]",
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://a..b:9000", "has an empty label (two dots in a row, or a leading dot)"),
        ("a..b", "has an empty label"),
        ("http://.mars:9000", "has an empty label"),
        ("http://h1,h2:9000", "contains ','"),
        ("ws://mars%41:9001", "contains '%'"),
        ("http://" + "x" * 64 + ".example:9000", "has a label longer than 63 characters"),
        ("http://" + ".".join(["abcdefgh"] * 30) + ":9000", "is longer than 253 characters"),
    ],
)
def test_impossible_host_names_are_refused(text: str, reason: str) -> None:
    with pytest.raises(URLError, match="impossible host name") as info:
        parse_server_url(text)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "text", ["http://mars_1.internal:9000", "http://mars-1.internal.:9000", "ws://[fd00::5]:9001"]
)
def test_unusual_but_possible_host_names_are_kept(text: str) -> None:
    assert parse_server_url(text).display() == text
