"""The WebSocket job state machine, driven with plain strings: no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marsconn.core.errors import JobKilledError, MarsRequestError
from marsconn.core.outcome import Action, Outcome, ServerLost
from marsconn.wire.ws_job import (
    CAPACITY_CLOSE_CODE,
    KILL_MESSAGE,
    Heartbeat,
    JobPhase,
    LogLine,
    ProtocolError,
    ServerError,
    Started,
    WsJobMachine,
    start_message,
)

SERVER = "ws://worker-1:9001"


def msg(**fields: Any) -> str:
    return json.dumps(fields)


def fresh() -> WsJobMachine:
    return WsJobMachine(SERVER)


def running(job_id: str = "J1") -> WsJobMachine:
    machine = fresh()
    machine.receive(msg(type="state", status="started", job_id=job_id))
    return machine


PHASES = {"sent": fresh, "running": running}


def assert_failed(
    outcome: Any,
    action: Action,
    error_class: str,
    error_type: type[BaseException],
    *,
    eject: bool,
) -> Outcome:
    assert isinstance(outcome, Outcome)
    assert outcome.action is action
    assert outcome.error_class == error_class
    assert type(outcome.error) is error_type
    assert outcome.eject is eject
    assert outcome.bytes == 0
    return outcome


# --- start / kill messages -----------------------------------------------------------------------


def test_start_message_shape() -> None:
    requests = [{"param": "2t", "date": "20260101"}, {"param": "msl"}]
    environ = {
        "request_id": "r1",
        "user_id": "u-1",
        "namespace": "n",
        "host": "h",
        "username": "n:1",
    }
    text = start_message(requests, environ, "/cache/job/data.grib")
    decoded = json.loads(text)
    assert list(decoded) == ["cmd", "requests", "environ", "target"]
    assert decoded == {
        "cmd": "start",
        "requests": requests,
        "environ": environ,
        "target": "/cache/job/data.grib",
    }


def test_kill_message_shape() -> None:
    assert json.loads(KILL_MESSAGE) == {"cmd": "kill"}


@given(
    requests=st.lists(
        st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.booleans()), max_size=4),
        max_size=3,
    ),
    target=st.text(),
)
def test_start_message_round_trips(requests: list[dict[str, Any]], target: str) -> None:
    decoded = json.loads(start_message(requests, {"request_id": "r"}, target))
    assert decoded == {
        "cmd": "start",
        "requests": requests,
        "environ": {"request_id": "r"},
        "target": target,
    }


# --- initial state and non-terminal messages -----------------------------------------------------


def test_initial_state() -> None:
    machine = fresh()
    assert machine.server == SERVER
    assert machine.phase is JobPhase.SENT
    assert machine.job_id is None
    assert machine.outcome is None
    assert machine.kill_sent is False


def test_started_moves_to_running() -> None:
    machine = fresh()
    event = machine.receive(msg(type="state", status="started", job_id="J42"))
    assert event == Started("J42")
    assert machine.phase is JobPhase.RUNNING
    assert machine.job_id == "J42"
    assert machine.outcome is None


def test_started_with_numeric_job_id_is_a_string() -> None:
    machine = fresh()
    assert machine.receive(msg(type="state", status="started", job_id=7)) == Started("7")
    assert machine.job_id == "7"


def test_started_without_job_id() -> None:
    machine = fresh()
    assert machine.receive(msg(type="state", status="started")) == Started("")
    assert machine.job_id is None
    assert machine.phase is JobPhase.RUNNING


@pytest.mark.parametrize("phase", list(PHASES))
def test_log_line_in_each_phase(phase: str) -> None:
    machine = PHASES[phase]()
    before = machine.phase
    event = machine.receive(msg(type="log", line="mars - INFO - Retrieving 10%"))
    assert event == LogLine("mars - INFO - Retrieving 10%")
    assert machine.phase is before
    assert machine.outcome is None


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("status", ["running", "finished", "idle"])
def test_heartbeat_in_each_phase(phase: str, status: str) -> None:
    machine = PHASES[phase]()
    before = machine.phase
    event = machine.receive(msg(type="heartbeat", timestamp=1.5, job_status=status, pid=12))
    assert event == Heartbeat(status)
    assert machine.phase is before
    assert machine.outcome is None


def test_heartbeat_without_job_status() -> None:
    assert fresh().receive(msg(type="heartbeat", timestamp=1)) == Heartbeat("")


def test_bytes_messages_are_decoded() -> None:
    machine = fresh()
    assert machine.receive(b'{"type": "log", "line": "caf\xc3\xa9 1%"}') == LogLine("caf\u00e9 1%")


@given(st.text())
def test_any_log_line_text_round_trips(text: str) -> None:
    machine = running()
    assert machine.receive(msg(type="log", line=text)) == LogLine(text)
    assert machine.outcome is None
    assert machine.phase is JobPhase.RUNNING


# --- terminal messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(PHASES))
def test_finished_returncode_zero_is_success(phase: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.receive(msg(type="state", status="finished", returncode=0, job_id="J1"))
    expected_job = "J1" if phase == "running" else None
    assert outcome == Outcome(Action.SUCCESS, bytes=0, job_id=expected_job)
    assert machine.outcome is outcome
    assert machine.phase is JobPhase.DONE


@pytest.mark.parametrize("phase", list(PHASES))
def test_finished_nonzero_returncode_is_final_mars_rejected(phase: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.receive(msg(type="state", status="finished", returncode=2, job_id="J1"))
    assert_failed(outcome, Action.FINAL, "mars_rejected", MarsRequestError, eject=False)
    assert isinstance(outcome, Outcome)
    error = outcome.error
    assert isinstance(error, MarsRequestError)
    assert error.returncode == 2
    assert error.server == SERVER
    assert str(error) == (
        f"MARS exited with code 2 on {SERVER}; the request was not retried elsewhere"
    )
    assert outcome.job_id == ("J1" if phase == "running" else None)
    assert machine.phase is JobPhase.DONE


@given(st.integers(max_value=-1))
def test_any_negative_returncode_is_a_killed_mars(returncode: int) -> None:
    outcome = running().receive(msg(type="state", status="finished", returncode=returncode))
    assert isinstance(outcome, Outcome)
    assert outcome.error_class == "mars_killed"
    assert isinstance(outcome.error, JobKilledError)


@given(st.integers(min_value=1))
def test_any_positive_returncode_is_final_mars_rejected(returncode: int) -> None:
    machine = running()
    outcome = machine.receive(msg(type="state", status="finished", returncode=returncode))
    assert isinstance(outcome, Outcome)
    assert outcome.action is Action.FINAL
    assert outcome.error_class == "mars_rejected"
    assert outcome.eject is False
    assert isinstance(outcome.error, MarsRequestError)
    assert outcome.error.returncode == returncode


@pytest.mark.parametrize("returncode", ["0", "1", 0.0, 1.5, None, True, False, [0], {"rc": 0}])
def test_finished_with_non_integer_returncode_is_a_protocol_error(returncode: Any) -> None:
    machine = running()
    outcome = machine.receive(msg(type="state", status="finished", returncode=returncode))
    assert_failed(outcome, Action.NEXT_SERVER, "protocol_error", ProtocolError, eject=True)
    assert isinstance(outcome, Outcome)
    assert f"non-integer returncode {returncode!r}" in str(outcome.error)
    assert str(outcome.error).startswith(f"{SERVER}: ")
    assert outcome.job_id == "J1"
    assert machine.phase is JobPhase.DONE


def test_finished_without_returncode_is_a_protocol_error() -> None:
    outcome = running().receive(msg(type="state", status="finished"))
    assert_failed(outcome, Action.NEXT_SERVER, "protocol_error", ProtocolError, eject=True)


@pytest.mark.parametrize("phase", list(PHASES))
def test_killed_is_final(phase: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.receive(msg(type="state", status="killed", job_id="J1"))
    assert_failed(outcome, Action.FINAL, "killed", JobKilledError, eject=False)
    assert isinstance(outcome, Outcome)
    assert str(outcome.error) == f"the job was killed on {SERVER}"
    assert outcome.job_id == ("J1" if phase == "running" else None)
    assert machine.phase is JobPhase.DONE


@pytest.mark.parametrize("phase", list(PHASES))
def test_error_state_moves_to_next_server_without_eject(phase: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.receive(msg(type="state", status="error", error="workdir missing: /x"))
    assert_failed(outcome, Action.NEXT_SERVER, "server_error", ServerError, eject=False)
    assert isinstance(outcome, Outcome)
    assert str(outcome.error) == f"{SERVER} reported an error: workdir missing: /x"
    assert machine.phase is JobPhase.DONE


def test_error_state_without_text() -> None:
    outcome = fresh().receive(msg(type="state", status="error"))
    assert isinstance(outcome, Outcome)
    assert str(outcome.error) == f"{SERVER} reported an error: unspecified error"


# --- protocol violations -------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize(
    ("data", "text"),
    [
        (msg(type="progress", value=3), "unknown message type 'progress'"),
        (msg(line="no type"), "unknown message type None"),
        (msg(type="state", status="paused"), "unknown state 'paused'"),
        (msg(type="state"), "unknown state None"),
        ("not json at all", "invalid JSON from server: 'not json at all'"),
        ("", "invalid JSON from server: ''"),
        (b"\xff\xfe\x00garbage", "invalid JSON from server"),
        ('{"type": "log", "line": "x"', "invalid JSON from server"),
        ("[]", "server message is not a JSON object: '[]'"),
        ("42", "server message is not a JSON object: '42'"),
        ('"started"', "server message is not a JSON object"),
        ("null", "server message is not a JSON object: 'null'"),
    ],
)
def test_violations_eject_and_move_on(phase: str, data: str | bytes, text: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.receive(data)
    assert_failed(outcome, Action.NEXT_SERVER, "protocol_error", ProtocolError, eject=True)
    assert isinstance(outcome, Outcome)
    assert str(outcome.error).startswith(f"{SERVER}: {text}")
    assert machine.outcome is outcome
    assert machine.phase is JobPhase.DONE
    assert outcome.job_id == ("J1" if phase == "running" else None)


def test_long_invalid_message_is_shortened_in_the_error() -> None:
    outcome = fresh().receive("x" * 500)
    assert isinstance(outcome, Outcome)
    assert str(outcome.error) == f"{SERVER}: invalid JSON from server: {'x' * 80 + '...'!r}"


@given(
    st.dictionaries(st.text(), st.integers(), max_size=3).flatmap(
        lambda extra: (
            st.text()
            .filter(lambda t: t not in ("log", "heartbeat", "state"))
            .map(lambda kind: {**extra, "type": kind})
        )
    )
)
def test_any_unknown_message_type_is_a_protocol_error(message: dict[str, Any]) -> None:
    outcome = running().receive(json.dumps(message))
    assert isinstance(outcome, Outcome)
    assert outcome.error_class == "protocol_error"
    assert outcome.action is Action.NEXT_SERVER


@given(st.one_of(st.text(), st.binary()))
def test_receive_never_raises(data: str | bytes) -> None:
    machine = running()
    result = machine.receive(data)
    assert isinstance(result, Outcome | LogLine | Heartbeat | Started)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    # Fits in one WebSocket message (websockets' default max_size is 1 MiB).
    outcome = fresh().receive("[" * 100_000)
    assert isinstance(outcome, Outcome)
    assert outcome.error_class == "protocol_error"
    assert outcome.eject is True


# --- closed() ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(PHASES))
def test_close_1008_is_capacity_without_eject(phase: str) -> None:
    machine = PHASES[phase]()
    outcome = machine.closed(CAPACITY_CLOSE_CODE, "Server at capacity (4 connections)")
    assert CAPACITY_CLOSE_CODE == 1008
    assert_failed(outcome, Action.NEXT_SERVER, "capacity", ServerLost, eject=False)
    assert str(outcome.error) == f"{SERVER} is at capacity: Server at capacity (4 connections)"
    assert machine.phase is JobPhase.DONE


def test_close_1008_without_reason() -> None:
    outcome = fresh().closed(1008, "")
    assert str(outcome.error) == f"{SERVER} is at capacity: close 1008"


@pytest.mark.parametrize(
    ("code", "reason", "detail"),
    [
        (1011, "going away", "code 1011, going away"),
        (1000, "", "code 1000"),
        (None, "", "no close frame"),
    ],
)
def test_close_before_start_moves_on_without_eject(
    code: int | None, reason: str, detail: str
) -> None:
    machine = fresh()
    outcome = machine.closed(code, reason)
    assert_failed(outcome, Action.NEXT_SERVER, "closed_before_start", ServerLost, eject=False)
    assert str(outcome.error) == (f"{SERVER} closed the connection before starting ({detail})")
    assert outcome.job_id is None
    assert machine.outcome is outcome


@pytest.mark.parametrize(
    ("code", "reason", "detail"),
    [
        (1011, "internal error", "code 1011, internal error"),
        (1000, "", "code 1000"),
        (None, "", "no close frame"),
    ],
)
def test_close_after_start_is_connection_lost_and_ejects(
    code: int | None, reason: str, detail: str
) -> None:
    machine = running("J9")
    outcome = machine.closed(code, reason)
    assert_failed(outcome, Action.NEXT_SERVER, "connection_lost", ServerLost, eject=True)
    assert str(outcome.error) == f"connection to {SERVER} lost while the job ran ({detail})"
    assert outcome.job_id == "J9"


@pytest.mark.parametrize(
    "terminal",
    [
        msg(type="state", status="finished", returncode=0),
        msg(type="state", status="finished", returncode=1),
        msg(type="state", status="killed"),
        msg(type="state", status="error", error="x"),
        "not json",
    ],
)
@pytest.mark.parametrize("code", [1000, 1008, None])
def test_close_after_an_outcome_keeps_the_outcome(terminal: str, code: int | None) -> None:
    machine = running()
    first = machine.receive(terminal)
    assert machine.closed(code, "bye") is first
    assert machine.outcome is first


# --- silent() ------------------------------------------------------------------------------------


def test_silent_before_start_is_start_timeout() -> None:
    machine = fresh()
    outcome = machine.silent(0.5)
    assert_failed(outcome, Action.NEXT_SERVER, "start_timeout", ServerLost, eject=True)
    assert str(outcome.error) == f"{SERVER} did not start the job within 0.5s"
    assert outcome.job_id is None
    assert machine.phase is JobPhase.DONE
    assert machine.outcome is outcome


def test_silent_after_start_is_server_silent() -> None:
    machine = running("J3")
    outcome = machine.silent(60.0)
    assert_failed(outcome, Action.NEXT_SERVER, "server_silent", ServerLost, eject=True)
    assert str(outcome.error) == f"no message from {SERVER} for 60s while the job ran"
    assert outcome.job_id == "J3"


def test_silent_after_an_outcome_keeps_the_outcome() -> None:
    machine = running()
    first = machine.receive(msg(type="state", status="finished", returncode=0))
    assert machine.silent(1.0) is first
    assert machine.outcome is first


# --- the classification table --------------------------------------------------------------------


def _run(steps: list[Any]) -> Outcome:
    machine = fresh()
    result: Any = None
    for step in steps:
        result = step(machine)
    assert isinstance(result, Outcome)
    return result


def _recv(data: str) -> Any:
    return lambda m: m.receive(data)


STARTED = _recv(msg(type="state", status="started", job_id="J"))

TABLE = [
    ([STARTED, _recv(msg(type="state", status="finished", returncode=0))], "success", None, False),
    ([STARTED, _recv(msg(type="state", status="finished", returncode=3))],
     "final", "mars_rejected", False),
    ([STARTED, _recv(msg(type="state", status="killed"))], "final", "killed", False),
    ([_recv(msg(type="state", status="error", error="e"))], "next_server", "server_error", False),
    ([_recv("{")], "next_server", "protocol_error", True),
    ([lambda m: m.closed(1008, "full")], "next_server", "capacity", False),
    ([lambda m: m.closed(1011, "")], "next_server", "closed_before_start", False),
    ([STARTED, lambda m: m.closed(None, "")], "next_server", "connection_lost", True),
    ([lambda m: m.silent(1)], "next_server", "start_timeout", True),
    ([STARTED, lambda m: m.silent(1)], "next_server", "server_silent", True),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "action", "error_class", "eject"), TABLE)
def test_classification_table(
    steps: list[Any], action: str, error_class: str | None, eject: bool
) -> None:
    outcome = _run(steps)
    assert outcome.action.value == action
    assert outcome.error_class == error_class
    assert outcome.eject is eject


@pytest.mark.parametrize(
    ("returncode", "action", "text"),
    [
        (-15, Action.NEXT_SERVER, "signal 15 (SIGTERM) on s1; trying the next server"),
        (-1, Action.NEXT_SERVER, "signal 1 (SIGHUP)"),
        (-3, Action.NEXT_SERVER, "signal 3 (SIGQUIT)"),
        (-9, Action.FINAL, "signal 9 (SIGKILL) on s1; not retried elsewhere"),
        (-11, Action.FINAL, "signal 11 (SIGSEGV)"),
        (-200, Action.FINAL, "signal 200 on s1"),
    ],
)
def test_negative_returncode_is_a_signal_not_a_rejection(
    returncode: int, action: Action, text: str
) -> None:
    machine = WsJobMachine("s1")
    machine.receive(json.dumps({"type": "state", "status": "started", "job_id": "j"}))
    outcome = machine.receive(
        json.dumps({"type": "state", "status": "finished", "returncode": returncode})
    )
    assert isinstance(outcome, Outcome)
    assert outcome.action is action
    assert outcome.error_class == "mars_killed"
    assert isinstance(outcome.error, JobKilledError)
    assert text in str(outcome.error)
    assert machine.server_done
    assert machine.finished
