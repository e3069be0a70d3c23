"""Property and fuzz tests over the hostile-input boundaries.

Settings sources (list files, YAML, dotenv, environment values), server URLs and
redaction, the pre-flight checks of requests and environ, and the neutralising
of server log lines: for any input, only the documented error type, bounded
error text, and no secret or control character where it must not be.
"""

from __future__ import annotations

import asyncio
import os
import re
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from marsconn.core.errors import ConfigError, PreflightError
from marsconn.core.neutralise import neutralise
from marsconn.core.redact import redact, redact_value
from marsconn.plan import sources as sources_module
from marsconn.plan.endpoints import URLError, parse_server_url
from marsconn.plan.load import load_settings
from marsconn.plan.model import ConnectionPlan, LogPolicy
from marsconn.plan.resolve import resolve_plan
from marsconn.plan.serverlist import read_list_file
from marsconn.run.engine import _normalise
from marsconn.run.logs import LogSink

ERROR_TEXT_LIMIT = 64 * 1024
#: What no neutralised line and no accepted request string may contain.
UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
ENVIRON = {
    "request_id": "00000000-0000-4000-8000-000000000001",
    "user_id": "u",
    "namespace": "n",
    "host": "h",
    "username": "n:u",
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path_factory.mktemp("etc") / "cads-mars-server.yaml"
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(absent))


class Quiet:
    def info(self, *a: Any, **k: Any) -> None:
        pass

    warning = info


def raised(
    call: Callable[[], object], kind: type[Exception] = ConfigError
) -> tuple[object, str | None]:
    """``(result, None)``, or ``(None, the error's text)`` when ``call`` raised ``kind``."""
    try:
        return call(), None
    except kind as exc:
        return None, str(exc)


def in_file(data: bytes) -> Path:
    handle, name = tempfile.mkstemp(prefix="marsconn-fuzz-")
    with os.fdopen(handle, "wb") as fh:
        fh.write(data)
    return Path(name)


# --- settings sources ------------------------------------------------------------------------

yaml_like = st.one_of(
    st.text(alphabet="[]{}&*!|>-:,'\"# \n\tabc01%@?", max_size=300),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=30,
    ).map(repr),
)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_any_server_list_file_gives_entries_or_problems(data: bytes) -> None:
    path = in_file(data)
    try:
        entries, problems = read_list_file(path, "fuzz")
    finally:
        path.unlink()
    assert all(len(str(p)) < 4 * 1024 for p in problems)
    assert all(e.text.strip() == e.text and e.text for e in entries)


@FUZZ
@given(text=yaml_like)
def test_any_yaml_file_loads_or_is_a_bounded_config_error(text: str) -> None:
    path = in_file(text.encode("utf-8", "surrogatepass"))
    try:
        _, error = raised(lambda: load_settings(env={}, config_file=path))
    finally:
        path.unlink()
    assert len(error or "") <= ERROR_TEXT_LIMIT


@FUZZ
@given(data=st.binary(max_size=600))
def test_any_dotenv_file_loads_or_is_a_bounded_config_error(data: bytes) -> None:
    path = in_file(b"MARS_PIPE_PORT=9100\n" + data)
    try:
        _, error = raised(lambda: load_settings(env={}, env_file=path))
    finally:
        path.unlink()
    assert len(error or "") <= ERROR_TEXT_LIMIT


ENV_VARS = [
    "MARS_WS_SERVERS",
    "MARS_USE_SHARES",
    "MARS_PIPE_PORT",
    "MARS_MAX_RETRIES",
    "MARS_REQUEST_TIMEOUT",
    "MARS_JOB_DEADLINE",
    "MARS_SHARES_DIR_MODE",
    "MARS_API_SERVER_LIST",
]


@FUZZ
@given(
    values=st.dictionaries(
        st.sampled_from(ENV_VARS),
        st.one_of(yaml_like, st.text(max_size=200)).filter(lambda v: "\x00" not in v),
        min_size=1,
    )
)
def test_any_environment_resolves_or_is_a_bounded_config_error(values: dict[str, str]) -> None:
    env = {"MARS_USE_SHARES": "true", "MARS_FORCE_WEBSOCKET_MODE": "true", **values}
    _, error = raised(
        lambda: resolve_plan({"mars_servers": "http://a:9000"}, env=env, logger=Quiet())
    )
    assert len(error or "") <= ERROR_TEXT_LIMIT


@given(depth=st.integers(1, 3000), bomb=st.integers(1, 12))
@settings(max_examples=30, deadline=None)
def test_nested_and_aliased_ws_servers_never_recurse_or_explode(depth: int, bomb: int) -> None:
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, bomb)]
    for value in ("[" * depth + "]" * depth, "[" + ", ".join([*anchors, f"*a{bomb - 1}"]) + "]"):
        env = {"MARS_USE_SHARES": "1", "MARS_FORCE_WEBSOCKET_MODE": "1", "MARS_WS_SERVERS": value}
        with pytest.raises(ConfigError) as info:
            resolve_plan(env=env, logger=Quiet(), default_list_files=())
        assert len(str(info.value)) <= ERROR_TEXT_LIMIT


# --- URLs and redaction ----------------------------------------------------------------------

# A distinctive secret, wrapped in the characters that have broken redaction before.
secret_token = st.text(alphabet=string.ascii_letters + string.digits, min_size=6, max_size=10).map(
    lambda t: f"Q{t}7"  # never a word of marsconn's own texts
)
wrapping = st.text(alphabet="/?#, @;&=%.!$'()*+~-_ \t", max_size=4)


@st.composite
def credentialed_url(draw: st.DrawFn) -> tuple[str, str]:
    token = draw(secret_token)
    scheme = draw(st.sampled_from(["http", "https", "ws", "wss", "HTTP"]))
    host = draw(st.sampled_from(["mars-1", "10.0.0.5", "[fd00::5]", "mars.example.org"]))
    port = draw(st.sampled_from(["", ":9000", ":9001", ":70000", ":x"]))
    path = draw(st.sampled_from(["", "/", "/mars", "/a/b"]))
    where = draw(st.sampled_from(["user", "password", "query", "bare"]))
    before, after = draw(wrapping), draw(wrapping)
    secret = before + token + after
    if where == "user":
        return f"{scheme}://{secret}@{host}{port}{path}", token
    if where == "password":
        return f"{scheme}://agent:{secret}@{host}{port}{path}", token
    if where == "query":
        query = draw(st.sampled_from(["token", "key", "x"]))
        return f"{scheme}://{host}{port}{path}?{query}={token}{draw(wrapping).strip()}", token
    return f"agent:{secret}@{host}{port}", token


@FUZZ
@given(case=credentialed_url(), context=st.text(alphabet=" ,'\"([", max_size=3))
def test_no_secret_survives_redaction_or_display(case: tuple[str, str], context: str) -> None:
    url, token = case
    if "://" in url:  # free text: marsconn's own texts always show a URL with its scheme
        assert token not in redact(f"cannot connect to {context}{url}{context[::-1]}: refused")
    assert token not in redact_value(url)
    parsed, error = raised(lambda: parse_server_url(url), URLError)
    assert token not in (error or "")
    if parsed is not None:
        assert token not in str(parsed)
        assert token not in repr(parsed)


@FUZZ
@given(case=credentialed_url(), listed=st.booleans())
def test_no_secret_in_any_config_error_or_plan(case: tuple[str, str], listed: bool) -> None:
    url, token = case
    plan, error = raised(
        lambda: resolve_plan(
            {"mars_servers": [url] if listed else url},
            env={},
            logger=Quiet(),
            default_list_files=(),
        )
    )
    assert token not in (error or "")
    if isinstance(plan, ConnectionPlan):
        assert token not in plan.explain() + plan.to_json() + repr(plan)


@FUZZ
@given(text=st.text(max_size=200))
def test_parse_server_url_raises_nothing_but_url_error(text: str) -> None:
    try:
        url = parse_server_url(text)
    except URLError:
        return
    assert url.scheme in ("http", "https", "ws", "wss")
    assert parse_server_url(url.secret()) == url


@FUZZ
@given(text=st.text(max_size=300))
def test_redact_is_idempotent_and_leaves_text_without_urls_alone(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    if "@" not in text and "?" not in text:
        assert once == text


# --- request validation ----------------------------------------------------------------------

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
hostile = st.one_of(value, st.builds(object), st.sets(st.integers(), max_size=2), st.binary())


def strings_in(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, list | tuple):
        return [s for v in item for s in strings_in(v)]
    if isinstance(item, dict):
        return [s for k, v in item.items() for s in [str(k), *strings_in(v)]]
    return []


@FUZZ
@given(
    request=st.dictionaries(st.text(max_size=10), hostile, max_size=4),
    extra=st.dictionaries(st.text(max_size=10), value, max_size=3),
)
def test_preflight_accepts_only_what_cannot_inject(
    request: dict[str, Any], extra: dict[str, Any]
) -> None:
    target = Path(tempfile.gettempdir()) / "marsconn-fuzz-target"
    normalised, error = raised(
        lambda: _normalise(request, {**ENVIRON, **extra}, target), PreflightError
    )
    assert len(error or "") < 2000
    if normalised is None:
        return
    requests, environ, _ = normalised
    for key in [*requests[0], *environ]:
        assert not UNSAFE.search(str(key))
        assert "\t" not in str(key)
        assert "=" not in str(key)
        assert "," not in str(key)
    for text in strings_in(requests) + strings_in(environ):
        assert not UNSAFE.search(text)


# --- log lines ---------------------------------------------------------------------------------


@FUZZ
@given(line=st.text(max_size=200))
def test_neutralised_lines_have_no_line_breaks_or_escapes(line: str) -> None:
    shown = neutralise(line)
    assert not UNSAFE.search(shown)
    assert not re.search(r"[\u202a-\u202e\u2066-\u2069]", shown)
    assert neutralise(shown) == shown
    if not UNSAFE.search(line) and not re.search(r"[\u202a-\u202e\u2066-\u2069]", line):
        assert shown == line  # plain text, tabs and every script included, is unchanged


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warning = error = info


@FUZZ
@given(raw=st.lists(st.text(max_size=80), min_size=1, max_size=10))
def test_each_server_line_is_one_logged_line(raw: list[str]) -> None:
    logger = Lines()
    sink = LogSink(LogPolicy(filter=False, keep_lines=100), None, logger)

    async def feed() -> None:
        for line in raw:
            await sink.line(line)

    asyncio.run(feed())
    assume(all(line.rstrip("\r\n") for line in raw))
    assert len(logger.lines) == len(raw)
    assert sink.text.split("\n") == logger.lines
