"""load_settings' own validator against the completed MarsSettings model: the same answers.

MarsSettings is built with ``defer_build`` and load_settings validates with a pydantic-core
validator made from the model's fields (marsconn.plan.validation._fast_validator), so that a first
plan does not pay for completing the model. Every field, fed values of every kind, must
give the same settings or the same errors (type, location, message, input) both ways.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from marsconn.plan import validation as validation_module
from marsconn.plan.settings import MarsSettings

FIELDS = list(MarsSettings.model_fields)

words = st.sampled_from(
    [
        "", " ", "true", "FALSE", "yes", "on", "0", "1", "t", "ture", "none", "Null",
        "9000", "65536", "-1", "0.5", "1e400", "inf", "nan", "0733", "0o711", "733",
        "0o7777", "fixed", "Exponential", "listed", "stable", "0.3.0", "0.3.1rc1", "x.y",
        "http://a:9000", "a, b", "[a, b]", "[fd00::5]:9001", "[oops", "/etc/x.list",
        "mars-1,mars-2", "[1, 2]",
    ]
)  # fmt: skip
values = st.one_of(
    words,
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 733, 0o733, 0o1733, 9000, 65535, 65536, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(words, st.integers(), st.none()), max_size=3),
    st.sampled_from([Path("/etc/x.list"), b"bytes", {"a": 1}, (1, 2)]),
)


def outcome(validate: Any, data: dict[str, Any]) -> Any:
    try:
        return ("ok", validate(data).model_dump())
    except ValidationError as exc:
        return ("error", _comparable(exc.errors(include_url=False)))


def _comparable(errors: list[Any]) -> list[Any]:
    out = []
    for e in errors:
        item = {k: e.get(k) for k in ("type", "loc", "msg")}
        value = e.get("input")
        # NaN is never equal to itself; say what it was instead.
        item["input"] = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
        out.append(item)
    return out


def test_the_fast_validator_is_used() -> None:
    assert validation_module._fast_validator() is not None


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=values)
def test_each_field_gives_the_same_answer_both_ways(field: str, value: Any) -> None:
    data = {field: value}
    assert outcome(validation_module._validated, data) == outcome(
        validation_module._validated_by_model, data
    )


@settings(max_examples=100, deadline=None)
@given(data=st.dictionaries(st.sampled_from([*FIELDS, "not_a_field"]), values, max_size=5))
def test_several_fields_at_once_give_the_same_answer(data: dict[str, Any]) -> None:
    assert outcome(validation_module._validated, data) == outcome(
        validation_module._validated_by_model, data
    )


def test_defaults_and_fields_set_match() -> None:
    fast = validation_module._validated({"pipe_port": "9100"})
    model = validation_module._validated_by_model({"pipe_port": "9100"})
    assert fast == model
    assert fast.model_fields_set == model.model_fields_set == {"pipe_port"}
    assert type(fast) is MarsSettings


def test_an_unknown_field_type_falls_back_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation_module, "_fast", None)
    monkeypatch.setattr(validation_module, "_type_schema", lambda annotation, metadata: None)
    assert validation_module._fast_validator() is None
    assert validation_module._validated({"pipe_port": "9100"}).pipe_port == 9100
    with pytest.raises(ValidationError):
        validation_module._validated({"pipe_port": "x"})


@pytest.mark.parametrize(
    ("annotation", "metadata"),
    [(bytes, []), (int | str, []), (list[int], []), (str, [object()])],
)
def test_types_it_does_not_know_give_none(annotation: Any, metadata: list[Any]) -> None:
    assert validation_module._type_schema(annotation, metadata) is None
