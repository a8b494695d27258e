"""The building blocks of the OpenAPI document: shared parameter schemas, error answers, operations and lists."""

from __future__ import annotations

from typing import Any

from gateway.core.conversations import DEFAULT_LIMIT, MAX_LIMIT
from gateway.protocols.openai_chat import MAX_CONVERSATION_ID

JSON = "application/json"
CONVERSATION_ID = {"type": "string", "minLength": 1, "maxLength": MAX_CONVERSATION_ID, "pattern": "^[!-~]+$"}
NULLABLE_STRING = {"type": "string", "nullable": True}
# One server-sent event as a client parses it (schemathesis checks a stream event by event against this).
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "description": "One event of the stream: its data is a JSON chunk (or [DONE])",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def object_schema(properties: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_answers(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Invalid request",
        401: "Keys mode: no gateway key, or an unknown or revoked one",
        403: "Only admin keys may name a tenant",
        429: "Over a per-key limit (concurrent requests or requests per minute); see Retry-After",
        431: "A request header is too large",
        404: "No such conversation (of this caller)",
        409: "The id is taken",
        413: "Request body too large",
        503: "The database cannot be used right now",
    }
    return {str(status): json_content(ref("Error"), meaning[status]) for status in statuses}


def operation(
    summary: str,
    ok: dict[str, Any],
    *,
    errors: tuple[int, ...] = (),
    body: str | None = None,
    api: bool = True,
    responses_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An operation; ``api`` ones (under /v1) also answer 401/429 (keys, limits) and 403 (``?tenant=``)."""
    statuses = (*errors, 401, 403, 429, 431) if api else (*errors, 431)
    responses = {"200": ok, **error_answers(*statuses), **(responses_extra or {})}
    operation: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if body is not None:
        operation["requestBody"] = {"required": False, "content": {JSON: {"schema": ref(body)}}}
    return operation


def page_parameters(default_order: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        },
        {
            "name": "order",
            "in": "query",
            "schema": {"type": "string", "enum": ["asc", "desc"], "default": default_order},
        },
        {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "id of the item before the page"},
    ]


def list_of(item: str) -> dict[str, Any]:
    return object_schema(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": ref(item)},
            "first_id": NULLABLE_STRING,
            "last_id": NULLABLE_STRING,
            "has_more": {"type": "boolean"},
        },
        ("object", "data", "first_id", "last_id", "has_more"),
    )
