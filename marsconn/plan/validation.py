"""Settings values validated into MarsSettings, fast.

A pydantic-core validator made from the model's fields; the model itself validates
when that validator cannot express a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .settings import MarsSettings

__all__ = []


def _validated(values: Mapping[str, Any]) -> MarsSettings:
    """``values`` validated as MarsSettings's fields (raises pydantic's ValidationError)."""
    validator = _fast_validator()
    if validator is None:
        return _validated_by_model(values)
    fields, _, fields_set = validator.validate_python(dict(values))
    return MarsSettings.model_construct(_fields_set=fields_set, **fields)


def _validated_by_model(values: Mapping[str, Any]) -> MarsSettings:
    # MarsSettings(**values) and MarsSettings.model_validate(values) both run
    # BaseSettings.__init__, which consults the class's own sources (os.environ,
    # the default YAML file) for every field missing from ``values``. The values
    # here are already merged from the caller's sources, so validate them as
    # the plain model they are.
    settings = MarsSettings.__new__(MarsSettings)
    BaseModel.__init__(settings, **values)
    return settings


_NO_FAST_VALIDATOR = object()


_fast: Any = None


def _fast_validator() -> Any:
    """The pydantic-core SchemaValidator for MarsSettings's fields, or None (see above)."""
    global _fast
    if _fast is None:
        _fast = _build_fast_validator() or _NO_FAST_VALIDATOR
    return None if _fast is _NO_FAST_VALIDATOR else _fast


def _type_schema(annotation: Any, metadata: list[Any]) -> Any:
    """The core schema of one field type with its constraints, or None if not known here."""
    import types
    import typing

    import annotated_types
    from pydantic_core import core_schema as cs

    bounds: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            bounds["gt"] = item.gt
        elif isinstance(item, annotated_types.Ge):
            bounds["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["le"] = item.le
        else:
            return None
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and len(args) == 2 and args[1] is type(None):
        inner = _type_schema(args[0], metadata)
        return None if inner is None else cs.nullable_schema(inner)
    if annotation is bool and not bounds:
        return cs.bool_schema()
    if annotation is str and not bounds:
        return cs.str_schema()
    if annotation is int:
        return cs.int_schema(**bounds)
    if annotation is float:
        return cs.float_schema(**bounds)
    if typing.get_origin(annotation) is typing.Literal and not bounds:
        return cs.literal_schema(list(args))
    if typing.get_origin(annotation) is list and args == (str,) and not bounds:
        return cs.list_schema(cs.str_schema())
    if annotation is Path and not bounds:
        # As pydantic validates a Path: an instance, or a string made one.
        from_str = cs.no_info_after_validator_function(Path, cs.str_schema())
        return cs.union_schema(
            [
                cs.json_or_python_schema(
                    json_schema=from_str, python_schema=cs.is_instance_schema(Path)
                ),
                cs.no_info_after_validator_function(Path, cs.str_schema(strict=True)),
            ],
            custom_error_type="path_type",
            custom_error_message=f"Input is not a valid path for {Path}",
        )
    return None


def _build_fast_validator() -> Any:
    from pydantic_core import CoreConfig, SchemaValidator
    from pydantic_core import core_schema as cs

    decorators = MarsSettings.__pydantic_decorators__
    if decorators.validators or decorators.model_validators or decorators.root_validators:
        return None
    fields: dict[str, Any] = {}
    for name, info in MarsSettings.model_fields.items():
        schema = _type_schema(info.annotation, list(info.metadata))
        if schema is None:
            return None
        # Field validators wrap the field's schema in the order they are defined, as pydantic
        # applies them (each one outside the ones before it).
        for decorator in decorators.field_validators.values():
            if name not in decorator.info.fields:
                continue
            wrap = {
                "before": cs.no_info_before_validator_function,
                "after": cs.no_info_after_validator_function,
            }.get(decorator.info.mode)
            if wrap is None:
                return None
            schema = wrap(decorator.func, schema)
        schema = cs.with_default_schema(schema, default=info.default)
        fields[name] = cs.model_field(schema)
    config = CoreConfig(
        title="MarsSettings",
        extra_fields_behavior="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )
    return SchemaValidator(cs.model_fields_schema(fields, model_name="MarsSettings"), config)
