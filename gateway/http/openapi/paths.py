"""The document's paths: chat completions, DashScope's native route, the Responses API, the pass-through, the
operational routes, and (``conversations``) the conversations API."""

from __future__ import annotations

from typing import Any

from gateway.core.passthrough import FORWARDED_METHODS
from gateway.http.openapi.conversations import conversation_paths
from gateway.http.openapi.parts import (
    CONVERSATION_ID,
    JSON,
    SSE_EVENT,
    error_answers,
    json_content,
    list_of,
    operation,
    page_parameters,
    ref,
)


def paths() -> dict[str, Any]:
    response_id = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    response_missing = {"404": json_content(ref("Error"), "No such response (of this caller)")}
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
        "content": {JSON: {"schema": ref("ChatCompletion")}, "text/event-stream": {"schema": SSE_EVENT}},
    }
    forwarded: dict[str, Any] = {
        method.lower(): {
            "summary": "Not served by the gateway itself: forwarded to the same path under the upstream's base URL "
            "(/api/v1/...: under DashScope's native base URL), method, query, headers and body unchanged; no memory",
            "parameters": [{"name": "upstream_path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                **error_answers(401, 413, 429, 431),
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
                    {"name": "X-Conversation-Id", "in": "header", "schema": CONVERSATION_ID},
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                        "description": "With X-Conversation-Id: a repeat of the same request gets the kept reply",
                    },
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("ChatCompletionRequest")}}},
                "responses": {
                    "200": chat_ok,
                    **error_answers(400, 401, 413, 429, 431, 503),
                    "409": json_content(
                        ref("Error"),
                        "A resent transcript differs from the stored one before its last turn, or an Idempotency-Key "
                        "was used for another request",
                    ),
                    "default": json_content(ref("Error"), "The upstream's error status, or 502/504 when it failed"),
                },
            }
        },
        "/api/v1/services/aigc/text-generation/generation": {
            "post": {
                "summary": "DashScope's native text generation, with the same memory (X-Conversation-Id)",
                "parameters": [
                    {"name": "X-Conversation-Id", "in": "header", "schema": CONVERSATION_ID},
                    {"name": "X-DashScope-SSE", "in": "header", "schema": {"type": "string", "enum": ["enable"]}},
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("NativeRequest")}}},
                "responses": {
                    "200": {
                        "description": "The native answer, or native SSE events when streaming",
                        "content": {
                            JSON: {"schema": ref("NativeAnswer")},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    "default": json_content(ref("NativeError"), "A native error: code, message, request_id"),
                },
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI's Responses API over any chat model, its memory in the gateway's conversations: "
                "previous_response_id continues (or, from an older response, forks) its conversation, conversation "
                "names one, store false records nothing",
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("ResponsesRequest")}}},
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
                            JSON: {"schema": ref("Response")},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **error_answers(400, 401, 403, 413, 429, 431, 503),
                    "409": json_content(
                        ref("Error"),
                        "The conversation moved on while the request waited (previous_response_not_latest), or a "
                        "resent transcript differs from the stored one",
                    ),
                    "default": json_content(ref("Error"), "The upstream's error status, or 502/504 when it failed"),
                },
            }
        },
        "/v1/responses/{response_id}": {
            "parameters": [response_id],
            "get": operation(
                "A stored response",
                json_content(ref("Response"), "The response"),
                errors=(400, 503),
                responses_extra=response_missing,
            ),
            "delete": operation(
                "Delete a stored response (and, from its conversation's latest turn, that turn's messages)",
                json_content(ref("ResponseDeleted"), "Deleted"),
                errors=(400, 503),
                responses_extra=response_missing,
            ),
        },
        "/v1/responses/{response_id}/input_items": {
            "parameters": [response_id],
            "get": operation(
                "The input items of a stored response",
                json_content(list_of("ResponseItem"), "A page of items"),
                errors=(400, 503),
                parameters=page_parameters("desc"),
                responses_extra=response_missing,
            ),
        },
        **conversation_paths(),
        "/healthz": {"get": operation("The process is alive", json_content(ref("Status"), "Alive"), api=False)},
        "/readyz": {
            "get": {
                "summary": "A turn could be recorded now",
                "responses": {
                    "200": json_content(ref("Status"), "Ready"),
                    "503": json_content(
                        ref("Status"),
                        "Not ready: draining, or a storage fault (database: the reason, detail: a sentence)",
                    ),
                    **error_answers(431),
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
                    **error_answers(431),
                },
            }
        },
        "/openapi.json": {
            "get": operation("This document", json_content({"type": "object"}, "OpenAPI 3 document"), api=False)
        },
    }
