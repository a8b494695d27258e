"""The document's component schemas: errors, conversations and their messages and items, chat, native and
Responses API bodies."""

from __future__ import annotations

from typing import Any

from gateway.core.conversation_items import MAX_ITEMS
from gateway.core.conversations import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from gateway.http.openapi.parts import CONVERSATION_ID, NULLABLE_STRING, object_schema, ref
from gateway.protocols.openai_chat import ROLES

_COST_TOKENS = (
    "turns",
    "priced_turns",
    "unmetered_turns",
    "input_tokens",
    "cached_tokens",
    "explicit_cached_tokens",
    "implicit_cached_tokens",
    "cache_creation_tokens",
    "output_tokens",
    "stateless_input_tokens",
)
_REPLY_AMOUNTS = ("list_input_cost", "billed_input_cost", "output_cost", "billed_cost")
_COST_AMOUNTS = (*_REPLY_AMOUNTS, "stateless_cost", "saved_cost")

_CONVERSATION = {
    "id": {"type": "string"},
    "object": {"type": "string", "enum": ["conversation"]},
    "created_at": {"type": "integer"},
    "updated_at": {"type": "integer"},
    "message_count": {"type": "integer"},
    "model": NULLABLE_STRING,
    "metadata": ref("Metadata"),
    "usage": ref("Usage"),
}

SCHEMAS: dict[str, Any] = {
    "Error": object_schema(
        {
            "error": object_schema(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": NULLABLE_STRING,
                    "code": NULLABLE_STRING,
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
    "ChatMessage": object_schema({"role": {"type": "string", "enum": sorted(ROLES)}}, ("role",), extra=True),
    "Usage": object_schema(
        {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "cached_tokens": {"type": "integer"},
        },
        ("prompt_tokens", "completion_tokens", "cached_tokens"),
    ),
    "Conversation": object_schema(_CONVERSATION, tuple(_CONVERSATION)),
    # The list; with ?q=, each with the snippets of its matching messages (gateway.core.search).
    "ListedConversation": object_schema(
        {**_CONVERSATION, "matches": {"type": "array", "items": ref("SearchMatch"), "maxItems": 3}},
        tuple(_CONVERSATION),
    ),
    "SearchMatch": object_schema(
        {
            "id": {"type": "string"},
            "role": {"type": "string"},
            "snippet": {"type": "string"},
            "highlights": {
                "type": "array",
                "description": "[start, end) code-point offsets of each word found, in the snippet",
                "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            },
        },
        ("id", "role", "snippet", "highlights"),
    ),
    # GET of one conversation: the ledger summed over every reply it holds (gateway.core.ledger), and the stored
    # window's cut.
    "ConversationWithCost": object_schema(
        {**_CONVERSATION, "cost": ref("ConversationCost"), "context": ref("ConversationContext")},
        (*_CONVERSATION, "cost", "context"),
    ),
    "ConversationContext": object_schema(
        {
            "window_start": {"type": "integer", "description": "messages before this index are not sent upstream"},
            "summary": {"type": "string", "nullable": True, "description": "sent in their place"},
        },
        ("window_start", "summary"),
    ),
    "ConversationCost": object_schema(
        {
            "currency": NULLABLE_STRING,
            **{name: {"type": "integer"} for name in _COST_TOKENS},
            **{name: {"type": "number", "nullable": True} for name in _COST_AMOUNTS},
        },
        ("currency", *_COST_TOKENS, *_COST_AMOUNTS),
    ),
    "ReplyCost": object_schema(
        {
            "currency": NULLABLE_STRING,
            **{name: {"type": "number", "nullable": True} for name in _REPLY_AMOUNTS},
        },
        ("currency", *_REPLY_AMOUNTS),
    ),
    "StoredMessage": object_schema(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["conversation.message"]},
            "role": {"type": "string"},
            "created_at": {"type": "integer"},
            "interrupted": {"type": "boolean"},
            "usage": {"type": "object"},
            "cost": ref("ReplyCost"),
        },
        ("id", "object", "role", "created_at", "interrupted"),
        extra=True,  # the message's own fields (content, tool_calls, ...) as stored
    ),
    "ConversationDeleted": object_schema(
        {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
        ("id", "object", "deleted"),
    ),
    "CreateConversation": object_schema(
        {
            "id": CONVERSATION_ID,
            "metadata": ref("Metadata"),
            "messages": {"type": "array", "items": ref("ChatMessage")},
            "items": {
                "type": "array",
                "items": {"type": "object"},
                "description": "OpenAI's form of messages: Responses input items (give messages or items)",
            },
        }
    ),
    "CreateItems": object_schema(
        {"items": {"type": "array", "maxItems": MAX_ITEMS, "items": {"type": "object"}}}, ("items",)
    ),
    "ConversationItem": object_schema(
        {"id": {"type": "string"}, "type": {"type": "string"}},
        ("id", "type"),
        extra=True,  # a Responses item: message, function_call, function_call_output or reasoning
    ),
    "UpdateConversation": object_schema({"metadata": ref("Metadata")}, ("metadata",)),
    "Rewind": object_schema({"turns": {"type": "integer", "minimum": 1, "default": 1}}),
    "Fork": object_schema(
        {"new_id": CONVERSATION_ID, "at_message_id": {"type": "string"}, "metadata": ref("Metadata")}
    ),
    "ChatCompletionRequest": object_schema(
        {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")}},
        ("messages",),
        extra=True,  # every other field passes through to the upstream unchanged
    ),
    "ChatCompletion": {"type": "object", "description": "The upstream's chat completion, unchanged."},
    "NativeRequest": object_schema(
        {
            "model": {"type": "string"},
            "input": {"type": "object", "description": "messages, or prompt"},
            "parameters": {"type": "object", "description": "result_format, incremental_output, and the rest"},
        },
        ("model", "input"),
        extra=True,
    ),
    "NativeAnswer": object_schema(
        {"output": {"type": "object"}, "usage": {"type": "object"}, "request_id": {"type": "string"}},
        ("output", "request_id"),
        extra=True,
    ),
    "NativeError": object_schema(
        {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}},
        ("code", "message", "request_id"),
    ),
    "ResponsesRequest": object_schema(
        {
            "model": {"type": "string"},
            "input": {
                "description": "A user message as a string, or a list of items (message, function_call, "
                "function_call_output, reasoning)",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
            },
            "instructions": NULLABLE_STRING,
            "previous_response_id": NULLABLE_STRING,
            "conversation": {
                "description": 'A conversation id (as X-Conversation-Id names it), or {"id": ...}',
                "oneOf": [CONVERSATION_ID, object_schema({"id": CONVERSATION_ID}, ("id",))],
                "nullable": True,
            },
            "store": {"type": "boolean", "default": True},
            "stream": {"type": "boolean", "default": False},
            "tools": {"type": "array", "items": {"type": "object"}, "description": "Function tools only"},
            "truncation": {"type": "string", "enum": ["auto", "disabled"], "default": "disabled"},
            "metadata": ref("Metadata"),
        },
        extra=True,  # the rest of OpenAI's fields (tool_choice, text, reasoning, ...); unknown ones pass through
    ),
    "Response": object_schema(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "created_at": {"type": "number"},
            "status": {"type": "string"},
            "model": NULLABLE_STRING,
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object", "nullable": True},
            "previous_response_id": NULLABLE_STRING,
            "conversation": {"type": "object", "nullable": True},
        },
        ("id", "object", "created_at", "status", "output"),
        extra=True,  # every request-side field, error, incomplete_details, ... as OpenAI's Response object has
    ),
    "ResponseDeleted": object_schema(
        {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
        ("id", "object", "deleted"),
    ),
    "ResponseItem": object_schema({"id": {"type": "string"}, "type": {"type": "string"}}, ("id", "type"), extra=True),
    "Status": object_schema(
        {"status": {"type": "string"}, "database": {"type": "string"}, "detail": {"type": "string"}}, ("status",)
    ),
}
