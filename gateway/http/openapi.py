"""The OpenAPI 3 document of every route the gateway serves, published at ``GET /openapi.json``.

Written out here rather than derived from handlers (which parse by hand, to stay fast): ``tests/test_openapi.py``
keeps it true, checking that it names exactly the routes the app serves and running schemathesis against it.
Limits come from the modules that enforce them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from gateway.core.conversations import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
)
from gateway.core.passthrough import FORWARDED_METHODS
from gateway.protocols.openai_chat import MAX_CONVERSATION_ID, ROLES

JSON = "application/json"
_CONVERSATION_ID = {"type": "string", "minLength": 1, "maxLength": MAX_CONVERSATION_ID, "pattern": "^[!-~]+$"}
_NULLABLE_STRING = {"type": "string", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
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
    return {str(status): _json(_ref("Error"), meaning[status]) for status in statuses}


def _operation(
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
    responses = {"200": ok, **_errors(*statuses), **(responses_extra or {})}
    operation: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if body is not None:
        operation["requestBody"] = {"required": False, "content": {JSON: {"schema": _ref(body)}}}
    return operation


def _page_parameters(default_order: str) -> list[dict[str, Any]]:
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


_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
                ("message", "type", "param", "code"),
            )
        },
        ("error",),
    ),
    "Metadata": {
        "type": "object",
        "maxProperties": MAX_METADATA_PAIRS,
        "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        "x-key-max-length": MAX_METADATA_KEY,
        "description": f"At most {MAX_METADATA_PAIRS} pairs; keys up to {MAX_METADATA_KEY} characters.",
    },
    "ChatMessage": _object({"role": {"type": "string", "enum": sorted(ROLES)}}, ("role",), extra=True),
    "Usage": _object(
        {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "cached_tokens": {"type": "integer"},
        },
        ("prompt_tokens", "completion_tokens", "cached_tokens"),
    ),
    "Conversation": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["conversation"]},
            "created_at": {"type": "integer"},
            "updated_at": {"type": "integer"},
            "message_count": {"type": "integer"},
            "model": _NULLABLE_STRING,
            "metadata": _ref("Metadata"),
            "usage": _ref("Usage"),
        },
        ("id", "object", "created_at", "updated_at", "message_count", "model", "metadata", "usage"),
    ),
    "StoredMessage": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["conversation.message"]},
            "role": {"type": "string"},
            "created_at": {"type": "integer"},
            "interrupted": {"type": "boolean"},
            "usage": {"type": "object"},
        },
        ("id", "object", "role", "created_at", "interrupted"),
        extra=True,  # the message's own fields (content, tool_calls, ...) as stored
    ),
    "ConversationDeleted": _object(
        {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
        ("id", "object", "deleted"),
    ),
    "CreateConversation": _object(
        {
            "id": _CONVERSATION_ID,
            "metadata": _ref("Metadata"),
            "messages": {"type": "array", "items": _ref("ChatMessage")},
        }
    ),
    "UpdateConversation": _object({"metadata": _ref("Metadata")}, ("metadata",)),
    "Rewind": _object({"turns": {"type": "integer", "minimum": 1, "default": 1}}),
    "Fork": _object({"new_id": _CONVERSATION_ID, "at_message_id": {"type": "string"}, "metadata": _ref("Metadata")}),
    "ChatCompletionRequest": _object(
        {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")}},
        ("messages",),
        extra=True,  # every other field passes through to the upstream unchanged
    ),
    "ChatCompletion": {"type": "object", "description": "The upstream's chat completion, unchanged."},
    "NativeRequest": _object(
        {
            "model": {"type": "string"},
            "input": {"type": "object", "description": "messages, or prompt"},
            "parameters": {"type": "object", "description": "result_format, incremental_output, and the rest"},
        },
        ("model", "input"),
        extra=True,
    ),
    "NativeAnswer": _object(
        {"output": {"type": "object"}, "usage": {"type": "object"}, "request_id": {"type": "string"}},
        ("output", "request_id"),
        extra=True,
    ),
    "NativeError": _object(
        {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}},
        ("code", "message", "request_id"),
    ),
    "ResponsesRequest": _object(
        {
            "model": {"type": "string"},
            "input": {
                "description": "A user message as a string, or a list of items (message, function_call, "
                "function_call_output, reasoning)",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
            },
            "instructions": _NULLABLE_STRING,
            "previous_response_id": _NULLABLE_STRING,
            "conversation": {
                "description": 'A conversation id (as X-Conversation-Id names it), or {"id": ...}',
                "oneOf": [_CONVERSATION_ID, _object({"id": _CONVERSATION_ID}, ("id",))],
                "nullable": True,
            },
            "store": {"type": "boolean", "default": True},
            "stream": {"type": "boolean", "default": False},
            "tools": {"type": "array", "items": {"type": "object"}, "description": "Function tools only"},
            "truncation": {"type": "string", "enum": ["auto", "disabled"], "default": "disabled"},
            "metadata": _ref("Metadata"),
        },
        extra=True,  # the rest of OpenAI's fields (tool_choice, text, reasoning, ...); unknown ones pass through
    ),
    "Response": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "created_at": {"type": "number"},
            "status": {"type": "string"},
            "model": _NULLABLE_STRING,
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object", "nullable": True},
            "previous_response_id": _NULLABLE_STRING,
            "conversation": {"type": "object", "nullable": True},
        },
        ("id", "object", "created_at", "status", "output"),
        extra=True,  # every request-side field, error, incomplete_details, ... as OpenAI's Response object has
    ),
    "ResponseDeleted": _object(
        {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
        ("id", "object", "deleted"),
    ),
    "ResponseItem": _object({"id": {"type": "string"}, "type": {"type": "string"}}, ("id", "type"), extra=True),
    "Status": _object(
        {"status": {"type": "string"}, "database": {"type": "string"}, "detail": {"type": "string"}}, ("status",)
    ),
}


def _list_of(item: str) -> dict[str, Any]:
    return _object(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(item)},
            "first_id": _NULLABLE_STRING,
            "last_id": _NULLABLE_STRING,
            "has_more": {"type": "boolean"},
        },
        ("object", "data", "first_id", "last_id", "has_more"),
    )


def _paths() -> dict[str, Any]:
    conversation = _json(_ref("Conversation"), "The conversation")
    tenant = {
        "name": "tenant",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "description": "Admin keys only: act on this tenant's conversations",
    }
    in_path = [{"name": "conversation_id", "in": "path", "required": True, "schema": _CONVERSATION_ID}, tenant]
    response_id = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    response_missing = {"404": _json(_ref("Error"), "No such response (of this caller)")}
    chat_ok = {
        "description": "The upstream's reply: JSON, or server-sent events when the request asked to stream",
        "headers": {
            "X-Conversation-Id": {"schema": {"type": "string"}, "description": "The conversation, echoed"},
            "X-Conversation-Trimmed": {
                "schema": {"type": "integer"},
                "description": "Stored messages left out of this request to fit the model's context window",
            },
            "Idempotent-Replayed": {
                "schema": {"type": "string", "enum": ["true"]},
                "description": "The reply kept under the request's Idempotency-Key, sent again",
            },
            "X-Conversation-Replaced": {
                "schema": {"type": "integer"},
                "description": "A resent transcript that differed inside the last turn (a retry, a regenerate, an "
                "edit of the last message) replaced this many stored messages of that turn",
            },
        },
        "content": {JSON: {"schema": _ref("ChatCompletion")}, "text/event-stream": {"schema": {"type": "string"}}},
    }
    forwarded: dict[str, Any] = {
        method.lower(): {
            "summary": "Not served by the gateway itself: forwarded to the same path under the upstream's base URL "
            "(/api/v1/...: under DashScope's native base URL), method, query, headers and body unchanged; no memory",
            "parameters": [{"name": "upstream_path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                **_errors(401, 413, 429, 431),
                "default": {"description": "The upstream's answer as it is, or 502/504 (Error) when it failed"},
            },
        }
        for method in FORWARDED_METHODS
    }
    return {
        "/v1/{upstream_path}": forwarded,
        "/api/v1/{upstream_path}": forwarded,
        "/v1/chat/completions": {
            "post": {
                "summary": "Chat completion; with X-Conversation-Id, stored history goes along and the turn is stored",
                "parameters": [
                    {"name": "X-Conversation-Id", "in": "header", "schema": _CONVERSATION_ID},
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                        "description": "With X-Conversation-Id: a repeat of the same request gets the kept reply",
                    },
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChatCompletionRequest")}}},
                "responses": {
                    "200": chat_ok,
                    **_errors(400, 401, 413, 429, 431, 503),
                    "409": _json(
                        _ref("Error"),
                        "A resent transcript differs from the stored one before its last turn, or an Idempotency-Key "
                        "was used for another request",
                    ),
                    "default": _json(_ref("Error"), "The upstream's error status, or 502/504 when it failed"),
                },
            }
        },
        "/api/v1/services/aigc/text-generation/generation": {
            "post": {
                "summary": "DashScope's native text generation, with the same memory (X-Conversation-Id)",
                "parameters": [
                    {"name": "X-Conversation-Id", "in": "header", "schema": _CONVERSATION_ID},
                    {"name": "X-DashScope-SSE", "in": "header", "schema": {"type": "string", "enum": ["enable"]}},
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("NativeRequest")}}},
                "responses": {
                    "200": {
                        "description": "The native answer, or native SSE events when streaming",
                        "content": {
                            JSON: {"schema": _ref("NativeAnswer")},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "default": _json(_ref("NativeError"), "A native error: code, message, request_id"),
                },
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI's Responses API over any chat model, its memory in the gateway's conversations: "
                "previous_response_id continues (or, from an older response, forks) its conversation, conversation "
                "names one, store false records nothing",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ResponsesRequest")}}},
                "responses": {
                    "200": {
                        "description": "A Response object, or Responses API server-sent events when streaming",
                        "headers": {
                            "X-Conversation-Id": {
                                "schema": {"type": "string"},
                                "description": "The conversation that holds the response",
                            }
                        },
                        "content": {
                            JSON: {"schema": _ref("Response")},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 403, 413, 429, 431, 503),
                    "409": _json(
                        _ref("Error"),
                        "The conversation moved on while the request waited (previous_response_not_latest), or a "
                        "resent transcript differs from the stored one",
                    ),
                    "default": _json(_ref("Error"), "The upstream's error status, or 502/504 when it failed"),
                },
            }
        },
        "/v1/responses/{response_id}": {
            "parameters": [response_id],
            "get": _operation(
                "A stored response",
                _json(_ref("Response"), "The response"),
                errors=(400, 503),
                responses_extra=response_missing,
            ),
            "delete": _operation(
                "Delete a stored response (and, from its conversation's latest turn, that turn's messages)",
                _json(_ref("ResponseDeleted"), "Deleted"),
                errors=(400, 503),
                responses_extra=response_missing,
            ),
        },
        "/v1/responses/{response_id}/input_items": {
            "parameters": [response_id],
            "get": _operation(
                "The input items of a stored response",
                _json(_list_of("ResponseItem"), "A page of items"),
                errors=(400, 503),
                parameters=_page_parameters("desc"),
                responses_extra=response_missing,
            ),
        },
        "/v1/conversations": {
            "parameters": [tenant],
            "get": _operation(
                "The caller's conversations, newest activity first",
                _json(_list_of("Conversation"), "A page of conversations"),
                errors=(400, 503),
                parameters=_page_parameters("desc"),
            ),
            "post": _operation(
                "Create a conversation", conversation, errors=(400, 409, 413, 503), body="CreateConversation"
            ),
        },
        "/v1/conversations/{conversation_id}": {
            "parameters": in_path,
            "get": _operation("One conversation", conversation, errors=(400, 404, 503)),
            "patch": _operation(
                "Replace its metadata", conversation, errors=(400, 404, 413, 503), body="UpdateConversation"
            ),
            "delete": _operation(
                "Delete it and all its messages",
                _json(_ref("ConversationDeleted"), "Deleted"),
                errors=(400, 404, 503),
            ),
        },
        "/v1/conversations/{conversation_id}/messages": {
            "parameters": in_path,
            "get": _operation(
                "Stored messages in order",
                _json(_list_of("StoredMessage"), "A page of messages"),
                errors=(400, 404, 503),
                parameters=_page_parameters("asc"),
            ),
        },
        "/v1/conversations/{conversation_id}/rewind": {
            "parameters": in_path,
            "post": _operation(
                "Remove the last N user turns and everything after each",
                conversation,
                errors=(400, 404, 413, 503),
                body="Rewind",
            ),
        },
        "/v1/conversations/{conversation_id}/fork": {
            "parameters": in_path,
            "post": _operation(
                "A new conversation with a copy of the history up to a message",
                conversation,
                errors=(400, 404, 409, 413, 503),
                body="Fork",
            ),
        },
        "/healthz": {"get": _operation("The process is alive", _json(_ref("Status"), "Alive"), api=False)},
        "/readyz": {
            "get": {
                "summary": "A turn could be recorded now",
                "responses": {
                    "200": _json(_ref("Status"), "Ready"),
                    "503": _json(
                        _ref("Status"),
                        "Not ready: draining, or a storage fault (database: the reason, detail: a sentence)",
                    ),
                    **_errors(431),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(431),
                },
            }
        },
        "/openapi.json": {
            "get": _operation("This document", _json({"type": "object"}, "OpenAPI 3 document"), api=False)
        },
    }


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Memory gateway",
            "version": version,
            "description": "OpenAI-compatible chat completions and Responses API with server-side memory, and the "
            "API to manage it. "
            "Every conversation belongs to the caller: in keys mode to the tenant of its gateway key, in open mode "
            "to its bearer credential.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A gateway key, or (open mode) any"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key", "description": "A gateway key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": _paths(),
    }
