"""marsconn's mode and server lists against the original cads-adaptors MARS adaptor.

The adaptor module is loaded from ``../shared/peers/cads-adaptors`` (beside
the project root) exactly as it is, once per case, under that case's
environment: it reads ``MARS_*`` variables when it is imported. What it
imports from the rest of cads-adaptors is replaced by small stand-ins
(nothing the compared functions use does anything but ``ensure_list``), and
``cads_mars_server`` by a stand-in module with the case's ``__version__``.
Its hard-coded default list files under ``/etc/mars`` are redirected to
files of the case's temporary directory, which marsconn gets as
``default_list_files``.

For every case three things are compared:

- ``mode``: the adaptor's ``_should_use_websocket_mode()`` against the mode
  of ``resolve_plan`` (with a fixed server, so that only the mode decision
  can fail);
- ``pipe``: ``get_mars_server_list(config)`` against the plan's endpoint
  URLs in pipe mode (``use_shares`` set to false);
- ``ws``: ``get_mars_server_list_ws(config)`` against the endpoint URLs in
  WebSocket mode (``use_shares`` and ``force_websocket_mode`` set).

Either side raising is the outcome ``"error"``. A case is identical on all
three, or lists each aspect that differs with the id of a chosen difference
documented in docs/migrating.md and marsconn's value for it: a difference
that is not documented, or a documented one that went away, fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from _peers import PEERS, require_peer

from marsconn import resolve_plan
from marsconn.core.audit import NullAuditLogger
from marsconn.core.errors import ConfigError
from marsconn.plan import capability
from marsconn.plan import sources as sources_module

ROOT = Path(__file__).resolve().parent.parent
ADAPTOR = PEERS / "cads-adaptors" / "cads_adaptors" / "adaptors" / "mars.py"
MIGRATING = ROOT / "docs" / "migrating.md"

#: The adaptor's hard-coded default list files, in its lookup order.
ETC_LEGACY = "/etc/mars/mars-api-server-legacy.list"
ETC_API = "/etc/mars/mars-api-server.list"

Outcome = Any  # "pipe" / "websocket" / a list of URLs / "error"


@pytest.fixture(scope="module")
def adaptor_source() -> Path:
    """The original adaptor module; skipped without it, except in CI."""
    return require_peer(ADAPTOR, "the cads-adaptors MARS adaptor")


# --- stand-ins for the rest of cads-adaptors -----------------------------------------------------


def _module(name: str, *, package: bool = False, **attrs: Any) -> ModuleType:
    module = ModuleType(name)
    if package:
        module.__path__ = []
    module.__dict__.update(attrs)
    return module


def _as_list(value: Any) -> list[Any]:
    # What cads_adaptors.tools.general.ensure_list does: sequences and sets become
    # lists, None an empty list, anything else a one-item list.
    if isinstance(value, list | tuple | set):
        return list(value)
    return [] if value is None else [value]


class _Stub:
    """Accepts any construction; the compared functions never use these classes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def _cads_adaptors_stubs() -> dict[str, ModuleType]:
    class MarsSystemError(Exception):
        pass

    tools = _module("cads_adaptors.tools", package=True)
    tools.adaptor_tools = _module("cads_adaptors.tools.adaptor_tools")
    return {
        "cads_adaptors": _module("cads_adaptors", package=True),
        "cads_adaptors.adaptors": _module(
            "cads_adaptors.adaptors", package=True, Context=_Stub, Request=dict
        ),
        "cads_adaptors.adaptors.cds": _module(
            "cads_adaptors.adaptors.cds",
            AbstractCdsAdaptor=_Stub,
            CachingArgs=_Stub,
            ProcessingKwargs=dict,
        ),
        "cads_adaptors.exceptions": _module(
            "cads_adaptors.exceptions",
            MarsNoDataError=type("MarsNoDataError", (Exception,), {}),
            MarsRuntimeError=type("MarsRuntimeError", (Exception,), {}),
            MarsSystemError=MarsSystemError,
        ),
        "cads_adaptors.tools": tools,
        "cads_adaptors.tools.adaptor_tools": tools.adaptor_tools,
        "cads_adaptors.tools.date_tools": _module(
            "cads_adaptors.tools.date_tools", implement_embargo=lambda r, e: (r, True)
        ),
        "cads_adaptors.tools.general": _module(
            "cads_adaptors.tools.general",
            ensure_list=_as_list,
            split_requests_on_keys=lambda requests, *a, **k: requests,
        ),
        "cads_adaptors.tools.simulate_preinterpolation": _module(
            "cads_adaptors.tools.simulate_preinterpolation",
            simulate_preinterpolation=lambda request, *a, **k: request,
        ),
    }


#: A stand-in cads_mars_server: installed with this version (marsconn is told it,
#: as the version pip installed), or "missing" (importing it fails), or
#: "unversioned" (no __version__), or "source-copy" (importable, reporting 999 as a
#: copy without its generated version file does, but not installed).
Version = str
NOT_INSTALLED = ("missing", "unversioned", "source-copy")


def _server_stub(version: Version) -> ModuleType | None:
    if version == "missing":
        return None  # sys.modules[name] = None makes `import name` raise ImportError
    if version == "unversioned":
        return _module("cads_mars_server")
    if version == "source-copy":
        return _module("cads_mars_server", __version__="999")
    return _module("cads_mars_server", __version__=version)


class _RedirectedOs:
    """The ``os`` module, with the adaptor's /etc list files moved into the test's directory."""

    def __init__(self, redirect: Mapping[str, str]) -> None:
        self.path = SimpleNamespace(exists=lambda p: os.path.exists(redirect.get(p, p)))

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


# --- running one case on both sides --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One environment/config; ``{tmp}`` in values is the case's directory."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # names: legacy.list, api.list, ...
    version: Version = "0.3.1"
    etc_yaml: str | None = None  # contents of the default /etc/cads-mars-server.yaml
    #: aspect ("mode", "pipe", "ws") -> (difference id, marsconn's outcome)
    differ: dict[str, tuple[str, Outcome]] = field(default_factory=dict)


def _fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    return value


def _outcome(call: Callable[[], Any]) -> Outcome:
    try:
        return call()
    except Exception:
        return "error"


def run_adaptor(
    case: Case, tmp: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Outcome]:
    env, config = _fill(case.env, tmp), _fill(case.config, tmp)
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("MARS_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        for name, module in _cads_adaptors_stubs().items():
            m.setitem(sys.modules, name, module)
        m.setitem(sys.modules, "cads_mars_server", _server_stub(case.version))
        spec = importlib.util.spec_from_file_location("_difftest_adaptor_mars", source)
        assert spec is not None
        assert spec.loader is not None
        adaptor = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(adaptor)  # reads MARS_PIPE_PORT etc. now
        except Exception:
            return {"mode": "error", "pipe": "error", "ws": "error"}
        redirect = {ETC_LEGACY: str(tmp / "legacy.list"), ETC_API: str(tmp / "api.list")}
        adaptor.os = _RedirectedOs(redirect)  # type: ignore[attr-defined]
        adaptor.open = lambda p, *a, **k: open(redirect.get(p, p), *a, **k)  # type: ignore[attr-defined]  # noqa: SIM115
        return {
            "mode": _outcome(
                lambda: "websocket" if adaptor._should_use_websocket_mode() else "pipe"
            ),
            "pipe": _outcome(lambda: adaptor.get_mars_server_list(config)),
            "ws": _outcome(lambda: adaptor.get_mars_server_list_ws(config)),
        }


def run_marsconn(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Outcome]:
    env, config = _fill(case.env, tmp), _fill(case.config, tmp)
    etc_yaml = tmp / "etc-cads-mars-server.yaml"
    if case.etc_yaml is not None:
        etc_yaml.write_text(case.etc_yaml)
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(etc_yaml))
    declared: str | None = case.version
    if case.version in NOT_INSTALLED:
        declared = None  # detected: no installed distribution either

        def not_installed(name: str) -> str:
            raise capability.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(capability.metadata, "version", not_installed)

    def resolve(**overrides: Any) -> Any:
        return resolve_plan(
            config,
            env=env,
            overrides=overrides,
            server_version=declared,
            default_list_files=(str(tmp / "legacy.list"), str(tmp / "api.list")),
            logger=NullAuditLogger(),
        )

    def urls(**overrides: Any) -> Outcome:
        try:
            return [e.url.secret() for e in resolve(**overrides).endpoints]
        except ConfigError:
            return "error"

    try:
        mode: Outcome = resolve(servers=["http://mode-probe:9000"]).mode.value
    except ConfigError:
        mode = "error"
    return {
        "mode": mode,
        "pipe": urls(use_shares=False),
        "ws": urls(use_shares=True, force_websocket_mode=True),
    }


# --- the cases -----------------------------------------------------------------------------------

A = {"mars_servers": "http://mars-a:9000"}
AB = ["http://mars-a:9000", "http://mars-b:9000"]
AB_WS = ["ws://mars-a:9001", "ws://mars-b:9001"]
SHARES = {"MARS_USE_SHARES": "true"}
LIST_AB = "http://mars-a:9000\nhttp://mars-b:9000\n"

CASES = [
    # Where the servers come from.
    Case("adaptor mars_servers string", config=A),
    Case("adaptor mars_servers list", config={"mars_servers": AB}),
    Case(
        "adaptor mars_server_list file",
        config={"mars_server_list": "{tmp}/x.list"},
        files={"x.list": LIST_AB},
    ),
    Case(
        "MARS_API_SERVER_LIST",
        env={"MARS_API_SERVER_LIST": "{tmp}/x.list"},
        files={"x.list": LIST_AB},
    ),
    Case(
        "mars_server_list beats MARS_API_SERVER_LIST",
        env={"MARS_API_SERVER_LIST": "{tmp}/y.list"},
        config={"mars_server_list": "{tmp}/x.list"},
        files={"x.list": LIST_AB, "y.list": "http://mars-y:9000\n"},
    ),
    Case(
        "mars_servers beats every list",
        env={"MARS_API_SERVER_LIST": "{tmp}/y.list"},
        config=A,
        files={"y.list": "http://mars-y:9000\n"},
    ),
    Case("default legacy list", files={"legacy.list": LIST_AB}),
    Case("default api list", files={"api.list": LIST_AB}),
    Case(
        "legacy list before api list",
        files={"legacy.list": "http://mars-l:9000\n", "api.list": LIST_AB},
    ),
    Case("no server list anywhere"),
    Case(
        "MARS_API_SERVER_LIST names a missing file", env={"MARS_API_SERVER_LIST": "{tmp}/no.list"}
    ),
    Case("mars_server_list names a missing file", config={"mars_server_list": "{tmp}/no.list"}),
    # The mode decision.
    Case("shares requested, server 0.3.1", env=SHARES, config=A),
    Case("shares requested as True", env={"MARS_USE_SHARES": "True"}, config=A),
    Case("shares requested, server too old", env=SHARES, config=A, version="0.2.9"),
    Case("shares requested, branch build", env=SHARES, config=A, version="0.3.0.dev1+g1234567"),
    Case("shares requested, release candidate", env=SHARES, config=A, version="0.3.0rc1"),
    Case("shares requested, server not installed", env=SHARES, config=A, version="missing"),
    Case("shares requested, version unparsable", env=SHARES, config=A, version="garbage"),
    Case(
        "shares requested, installed module has no version",
        env=SHARES,
        config=A,
        version="unversioned",
    ),
    Case(
        "shares requested, a source copy that is not installed",
        env=SHARES,
        config=A,
        version="source-copy",
        differ={"mode": ("version-lookup", "pipe")},
    ),
    Case(
        "forced without a server package",
        env={**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "TRUE"},
        config=A,
        version="missing",
    ),
    Case("forced without shares", env={"MARS_FORCE_WEBSOCKET_MODE": "true"}, config=A),
    Case("shares explicitly false", env={"MARS_USE_SHARES": "false"}, config=A),
    Case("shares empty", env={"MARS_USE_SHARES": ""}, config=A),
    Case(
        "shares as 1",
        env={"MARS_USE_SHARES": "1"},
        config=A,
        differ={"mode": ("bool-words", "websocket")},
    ),
    Case(
        "shares as yes",
        env={"MARS_USE_SHARES": "yes"},
        config=A,
        differ={"mode": ("bool-words", "websocket")},
    ),
    Case(
        "force as on",
        env={**SHARES, "MARS_FORCE_WEBSOCKET_MODE": "on"},
        config=A,
        version="0.2.9",
        differ={"mode": ("bool-words", "websocket")},
    ),
    Case(
        "shares misspelt",
        env={"MARS_USE_SHARES": "ture"},
        config=A,
        differ={"mode": ("bool-typos", "error")},
    ),
    Case(
        "shares with a trailing space",
        env={"MARS_USE_SHARES": "true "},
        config=A,
        differ={"mode": ("bool-spaces", "websocket")},
    ),
    # Ports and the WebSocket translation.
    Case(
        "pipe port moved",
        env={"MARS_PIPE_PORT": "9100"},
        config={"mars_servers": "http://mars-a:9100"},
    ),
    Case("shares port moved", env={"MARS_SHARES_PORT": "9101"}, config={"mars_servers": AB}),
    Case("https becomes wss", config={"mars_servers": "https://mars-a:9000"}),
    Case("no port gets the shares port", config={"mars_servers": "http://mars-a"}),
    Case("other ports are kept", config={"mars_servers": "http://mars-a:8000/mars"}),
    Case("IPv6 with the pipe port", config={"mars_servers": "http://[fd00::5]:9000"}),
    Case("port not a number", env={"MARS_PIPE_PORT": "abc"}, config=A),
    Case(
        "empty pipe port",
        env={"MARS_PIPE_PORT": ""},
        config=A,
        differ={
            "mode": ("empty-unset", "pipe"),
            "pipe": ("empty-unset", ["http://mars-a:9000"]),
            "ws": ("empty-unset", ["ws://mars-a:9001"]),
        },
    ),
    Case(
        "empty MARS_API_SERVER_LIST",
        env={"MARS_API_SERVER_LIST": ""},
        files={"legacy.list": LIST_AB},
        differ={"pipe": ("empty-unset", AB), "ws": ("empty-unset", AB_WS)},
    ),
    Case(
        "IPv6 without a port",
        config={"mars_servers": "http://[fd00::5]"},
        differ={"ws": ("ws-translation", ["ws://[fd00::5]:9001"])},
    ),
    Case(
        "credentials without a port",
        config={"mars_servers": "http://user:pw@mars-a"},
        differ={"ws": ("ws-translation", ["ws://user:pw@mars-a:9001"])},
    ),
    Case(
        "query string",
        config={"mars_servers": "http://mars-a:9000/p?x=1"},
        differ={"ws": ("ws-translation", ["ws://mars-a:9001/p?x=1"])},
    ),
    Case(
        "wss URL in the config",
        config={"mars_servers": "wss://mars-a:9443"},
        differ={"pipe": ("url-checks", "error"), "ws": ("ws-translation", ["wss://mars-a:9443"])},
    ),
    Case(
        "unsupported scheme",
        config={"mars_servers": "ftp://mars-a:9000"},
        differ={"pipe": ("url-checks", "error"), "ws": ("url-checks", "error")},
    ),
    Case(
        "upper-case host",
        config={"mars_servers": "http://MARS-A:9000"},
        differ={
            "pipe": ("host-case", ["http://mars-a:9000"]),
            "ws": ("host-case", ["ws://mars-a:9001"]),
        },
    ),
    Case(
        "bare host:port",
        config={"mars_servers": "mars-a:9000"},
        differ={
            "pipe": ("bare-host", ["http://mars-a:9000"]),
            "ws": ("bare-host", ["ws://mars-a:9001"]),
        },
    ),
    # Server-list syntax.
    Case(
        "blank line and comment in a list",
        env={"MARS_API_SERVER_LIST": "{tmp}/x.list"},
        files={"x.list": "# MARS servers\nhttp://mars-a:9000\n\nhttp://mars-b:9000\n"},
        differ={"pipe": ("list-syntax", AB), "ws": ("list-syntax", AB_WS)},
    ),
    Case(
        "comma-separated mars_servers",
        config={"mars_servers": "http://mars-a:9000,http://mars-b:9000"},
        differ={"pipe": ("comma-list", AB), "ws": ("comma-list", AB_WS)},
    ),
    Case(
        "duplicate server",
        config={"mars_servers": ["http://mars-a:9000", "http://mars-a:9000"]},
        differ={
            "pipe": ("dedupe", ["http://mars-a:9000"]),
            "ws": ("dedupe", ["ws://mars-a:9001"]),
        },
    ),
    Case(
        "empty mars_servers list",
        config={"mars_servers": []},
        differ={"pipe": ("empty-list", "error"), "ws": ("empty-list", "error")},
    ),
    # Sources the adaptor did not read.
    Case(
        "MARS_WS_SERVERS in WebSocket mode",
        env={**SHARES, "MARS_API_SERVER_LIST": "{tmp}/x.list", "MARS_WS_SERVERS": "ws://w1:9001"},
        files={"x.list": LIST_AB},
        differ={"ws": ("ws-servers", ["ws://w1:9001"])},
    ),
    Case(
        "use_shares in /etc/cads-mars-server.yaml",
        config=A,
        etc_yaml="use_shares: true\n",
        differ={"mode": ("etc-yaml", "websocket")},
    ),
    Case(
        "ports in the MARS_CONFIG_FILE",
        env={"MARS_CONFIG_FILE": "{tmp}/site.yaml"},
        config={"mars_servers": AB},
        files={"site.yaml": "shares_port: 9101\n"},
        differ={"ws": ("etc-yaml", ["ws://mars-a:9101", "ws://mars-b:9101"])},
    ),
    Case(
        "environment beats the YAML file",
        env={"MARS_USE_SHARES": "false"},
        config=A,
        etc_yaml="use_shares: true\n",
    ),
]


def documented_ids() -> set[str]:
    """The difference ids of the table in docs/migrating.md."""
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", MIGRATING.read_text(), flags=re.M))


def test_enough_distinct_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def test_every_difference_is_documented() -> None:
    used = {diff_id for case in CASES for diff_id, _ in case.differ.values()}
    assert used - documented_ids() == set()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adaptor_and_marsconn_agree(
    case: Case, tmp_path: Path, adaptor_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    old = run_adaptor(case, tmp_path, adaptor_source, monkeypatch)
    new = run_marsconn(case, tmp_path, monkeypatch)
    for aspect in ("mode", "pipe", "ws"):
        if aspect in case.differ:
            diff_id, expected = case.differ[aspect]
            assert new[aspect] != old[aspect], f"{aspect}: '{diff_id}' no longer differs"
            assert new[aspect] == _fill(expected, tmp_path), aspect
        else:
            assert new[aspect] == old[aspect], aspect
