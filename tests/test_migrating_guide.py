"""The migrated adaptor functions of docs/migrating.md, run as written.

Every Python block of the guide is executed, in order, as one module, with
stand-ins for what it takes from cads-adaptors (its three exceptions, a
``Context`` that records what it is told, and ``_prepare_mars_request``,
which keeps its job: the requests as a list, the target path from
``target_dir``/``target_fname`` and the environ of the adaptor's
``make_env_dict`` with an empty config, ``None`` values included). The
functions then run against marsconn.testing's servers, so what the guide
claims about modes, server lists and exceptions is what the code does.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import marsconn
from marsconn.plan import sources as sources_module
from marsconn.testing import MarsScript, dead_url, expected_data

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"


class MarsRuntimeError(Exception):
    pass


class MarsNoDataError(Exception):
    pass


class MarsSystemError(Exception):
    pass


class Context:
    """Records every call, as the adaptor's context would log it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def _record(self, kind: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((kind, str(args[0] if args else kwargs.get("message"))))

        return record

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name in ("info", "debug", "warning", "error", "add_user_visible_log",
                    "add_user_visible_error"):  # fmt: skip
            return self._record(name)
        raise AttributeError(name)

    def said(self, kind: str) -> list[str]:
        return [text for k, text in self.calls if k == kind]


def _prepare_mars_request(
    request: Any, context: Any, config: Any, mapping: Any, target_fname: str, target_dir: Any
) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    requests = request if isinstance(request, list) else [request]
    env = {
        "user_id": config.get("user_uid"),
        "request_id": config.get("request_uid"),
        "namespace": "NO-OSPROJECT:NO-NAMESPACE",
        "host": None,
    }
    env["username"] = f"{env['namespace']}:{str(env['user_id']).split('-')[-1]}"
    return requests, str(Path(target_dir) / target_fname), env


@pytest.fixture
def guide(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The guide's code as a module namespace, in a clean MARS environment."""
    for name in [n for n in os.environ if n.startswith("MARS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(sources_module, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    exceptions = ModuleType("cads_adaptors.exceptions")
    exceptions.__dict__.update(
        MarsRuntimeError=MarsRuntimeError,
        MarsNoDataError=MarsNoDataError,
        MarsSystemError=MarsSystemError,
    )
    monkeypatch.setitem(sys.modules, "cads_adaptors", ModuleType("cads_adaptors"))
    monkeypatch.setitem(sys.modules, "cads_adaptors.exceptions", exceptions)
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    namespace: dict[str, Any] = {
        "__name__": "migrated_mars",
        "Context": Context,
        "_prepare_mars_request": _prepare_mars_request,
    }
    exec(compile("\n".join(blocks), str(GUIDE), "exec"), namespace)
    return namespace


def test_the_guide_defines_every_migrated_function(guide: dict[str, Any]) -> None:
    for name in (
        "execute_mars",
        "execute_mars_pipe",
        "execute_mars_shares",
        "get_mars_server_list",
        "get_mars_server_list_ws",
        "_should_use_websocket_mode",
    ):
        assert callable(guide[name]), name


def test_server_lists_as_the_adaptor_tests_expect(
    guide: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = tmp_path / "mars_servers.list"
    listed.write_text("http://a-test-server.url\n")
    assert guide["get_mars_server_list"]({"mars_servers": "http://b-test-server.url"}) == [
        "http://b-test-server.url"
    ]
    assert guide["get_mars_server_list"]({"mars_server_list": str(listed)}) == [
        "http://a-test-server.url"
    ]
    monkeypatch.setenv("MARS_API_SERVER_LIST", str(listed))
    assert guide["get_mars_server_list"]({}) == ["http://a-test-server.url"]
    assert guide["get_mars_server_list_ws"]({"mars_servers": ["https://m:9000", "m2"]}) == [
        "wss://m:9001",
        "ws://m2:9001",
    ]
    with pytest.raises(MarsSystemError, match="no MARS servers configured"):
        guide["get_mars_server_list"]({"mars_servers": []})


def test_mode_decision(guide: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"mars_servers": "http://m:9000"}
    assert guide["_should_use_websocket_mode"](config) is False
    monkeypatch.setenv("MARS_USE_SHARES", "true")
    monkeypatch.setenv("MARS_FORCE_WEBSOCKET_MODE", "yes")
    assert guide["_should_use_websocket_mode"](config) is True
    monkeypatch.setenv("MARS_USE_SHARES", "ture")
    with pytest.raises(MarsSystemError, match="MARS_USE_SHARES: not a boolean"):
        guide["_should_use_websocket_mode"](config)


def test_execute_mars_in_pipe_mode_with_a_relative_target(
    guide: dict[str, Any],
    mars_pipe_server_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mars_pipe_server_factory(MarsScript(output_size=3000, seed=2))
    monkeypatch.chdir(tmp_path)
    context = Context()
    target = guide["execute_mars"](
        {"param": "2t"}, context=context, config={"mars_servers": server.url}
    )
    assert target == str(tmp_path / "data.grib")
    assert Path(target).read_bytes() == expected_data(3000, seed=2)
    assert context.said("add_user_visible_error") == []
    assert "MARS wrote 3000 bytes in " in context.said("info")[-1]


def test_execute_mars_in_shares_mode(
    guide: dict[str, Any],
    mars_ws_server_factory: Any,
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mars_ws_server_factory(MarsScript(output_size=2000, seed=5))
    monkeypatch.setenv("MARS_USE_SHARES", "1")
    monkeypatch.setenv("MARS_FORCE_WEBSOCKET_MODE", "1")
    target = guide["execute_mars"](
        {"param": "2t"},
        context=Context(),
        config={"mars_servers": server.url},
        target_dir=mars_target.parent,
    )
    assert Path(target).read_bytes() == expected_data(2000, seed=5)
    # The server was sent a private directory beside the target, removed afterwards.
    [job] = server.jobs
    sent = Path(job.target)
    assert sent.parent.parent == mars_target.parent
    assert sent.parent != mars_target.parent
    assert not sent.parent.exists()


def test_execute_mars_shares_pins_websocket_mode(
    guide: dict[str, Any], mars_ws_server_factory: Any, mars_target: Path
) -> None:
    server = mars_ws_server_factory(MarsScript(output_size=100))
    target = guide["execute_mars_shares"](
        {"param": "2t"}, config={"mars_servers": server.url}, target_dir=mars_target.parent
    )
    assert Path(target).stat().st_size == 100
    assert len(server.jobs) == 1


def test_rejection_is_a_runtime_error_with_mars_error_lines(
    guide: dict[str, Any], mars_pipe_server_factory: Any, mars_target: Path
) -> None:
    line = "mars - ERROR - Unknown parameter 'parm'"
    server = mars_pipe_server_factory(MarsScript(log_lines=[line], returncode=1))
    context = Context()
    with pytest.raises(MarsRuntimeError) as info:
        guide["execute_mars_pipe"](
            {"parm": "2t"},
            context=context,
            config={"mars_servers": server.url},
            target_dir=mars_target.parent,
        )
    [shown] = context.said("add_user_visible_error")
    assert shown.startswith("MARS could not run this selection.")
    assert line in shown
    assert "Cause: " in str(info.value)
    assert isinstance(info.value.__cause__, marsconn.MarsRequestError)
    assert "Unknown parameter 'parm'" in str(info.value.__cause__)


def test_no_data_is_a_no_data_error(
    guide: dict[str, Any], mars_pipe_server_factory: Any, mars_target: Path
) -> None:
    server = mars_pipe_server_factory(MarsScript(output_size=0))
    context = Context()
    with pytest.raises(MarsNoDataError, match="MARS found no data") as info:
        guide["execute_mars_pipe"](
            {"param": "2t"},
            context=context,
            config={"mars_servers": server.url},
            target_dir=mars_target.parent,
        )
    assert isinstance(info.value.__cause__, marsconn.NoDataError)
    assert context.said("add_user_visible_error")[0].startswith("MARS found no data")


def test_no_server_is_a_system_error(
    guide: dict[str, Any], mars_target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARS_MAX_RETRIES", "1")
    with pytest.raises(MarsSystemError, match=r"\(system error\)") as info:
        guide["execute_mars"](
            {"param": "2t"},
            context=Context(),
            config={"mars_servers": [dead_url("http"), dead_url("http")]},
            target_dir=mars_target.parent,
        )
    assert isinstance(info.value.__cause__, marsconn.NoServerAvailableError)


def test_missing_config_file_warns_and_the_retrieval_runs(
    guide: dict[str, Any],
    mars_pipe_server_factory: Any,
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mars_pipe_server_factory(MarsScript(output_size=10))
    monkeypatch.setenv("MARS_CONFIG_FILE", str(mars_target.parent / "nope.yaml"))
    context = Context()
    guide["execute_mars"](
        {"param": "2t"},
        context=context,
        config={"mars_servers": server.url},
        target_dir=mars_target.parent,
    )
    [warning] = context.said("warning")
    assert "MARS_CONFIG_FILE: names YAML config file" in warning
    assert mars_target.stat().st_size == 10


def test_a_cads_mars_server_handler_kills_through_job_send(
    guide: dict[str, Any],
    mars_ws_server_factory: Any,
    mars_target: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mars_ws_server_factory(MarsScript(log_lines=["mars - INFO - starting"], run_time=5))

    async def handler(line: str, ws: Any, logger: Any) -> str:
        await ws.send(json.dumps({"cmd": "kill"}))
        return line

    monkeypatch.setenv("MARS_USE_SHARES", "true")
    monkeypatch.setenv("MARS_FORCE_WEBSOCKET_MODE", "true")
    with pytest.raises(MarsRuntimeError) as info:
        guide["execute_mars"](
            {"param": "2t"},
            context=Context(),
            config={"mars_servers": server.url},
            target_dir=mars_target.parent,
            log_handler=handler,
        )
    assert isinstance(info.value.__cause__, marsconn.JobKilledError)
    assert not mars_target.exists()


def _table_ids(heading: str) -> list[str]:
    text = GUIDE.read_text()
    start = text.index(f"### {heading}\n")
    end = text.find("\n### ", start + 1)
    section = text[start : end if end != -1 else None]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


def test_difference_ids_are_unique() -> None:
    ids = [i for h in ("Configuration", "Servers", "Retrievals") for i in _table_ids(h)]
    assert len(ids) >= 30
    assert len(ids) == len(set(ids))


def test_configuration_and_server_rows_are_exercised_by_the_differential_tests() -> None:
    here = Path(__file__).resolve().parent
    sources = "".join(
        (here / name).read_text()
        for name in ("test_differential_adaptor.py", "test_differential_config.py")
    )
    rows = _table_ids("Configuration") + _table_ids("Servers")
    untested = {i for i in rows if f'"{i}"' not in sources}
    assert untested == {"missing-config"}


def test_error_kind_table_matches_the_error_classes() -> None:
    rows = re.findall(r"^\| `(RUNTIME|NO_DATA|SYSTEM)` \| (.*?) \|", GUIDE.read_text(), flags=re.M)
    listed = {
        name: marsconn.ErrorKind[kind]
        for kind, cell in rows
        for name in re.findall(r"`([A-Za-z]+Error)`", cell)
    }
    every = {
        name: cls.kind
        for name in marsconn.__all__
        if isinstance(cls := getattr(marsconn, name), type)
        and issubclass(cls, marsconn.MarsconnError)
        and cls is not marsconn.MarsconnError
    }
    assert listed == every
