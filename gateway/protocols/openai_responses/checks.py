"""The Responses request's validation errors, with OpenAI's ``code`` and ``param`` (``invalid_type``,
``missing_required_parameter``, ``invalid_value``, ``unsupported_value``), and the scalar checks that raise them;
shared by ``request`` and ``input_items``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import InvalidRequest

# --- errors -------------------------------------------------------------------------------------------------


def invalid_type(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", code="invalid_type", param=param)


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)


def invalid_value(param: str, value: Any, supported: Iterable[str]) -> InvalidRequest:
    shown = f"'{value}'" if isinstance(value, str) and len(value) <= 64 else "the value given"
    choices = ", ".join(f"'{s}'" for s in supported)
    return InvalidRequest(
        f"Invalid value for '{param}': {shown}. Supported values are: {choices}.", code="invalid_value", param=param
    )


def unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this gateway.", code="unsupported_value", param=param)


def item_not_found(param: str, item_id: str) -> InvalidRequest:
    """An ``item_reference`` naming no item of the caller's (unknown, another owner's, or not an id of ours): the
    same answer for each, so nothing leaks."""
    return InvalidRequest(f"Item with id '{item_id[:128]}' not found.", code="item_not_found", param=param)


# --- scalar checks ------------------------------------------------------------------------------------------


def optional_str(data: Mapping[str, Any], key: str, param: str | None = None) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid_type(param or key, "a string")


def required_str(data: Mapping[str, Any], key: str, param: str) -> str:
    value = data.get(key)
    if value is None:
        raise missing(param)
    if not isinstance(value, str):
        raise invalid_type(param, "a string")
    return value


def optional_bool(data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid_type(key, "a boolean")


def optional_number(data: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid_type(key, "a number")
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid '{key}': expected a value between {low:g} and {high:g}.", code="invalid_value", param=key
        )
    return value


def one_of(data: Mapping[str, Any], key: str, choices: tuple[str, ...], param: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise invalid_value(param, value, choices)
    return value
