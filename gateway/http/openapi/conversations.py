"""The document's paths of the conversations API: our own routes (list, messages, rewind, fork) and OpenAI's
Conversations shape over the same conversations (items, metadata update by POST)."""

from __future__ import annotations

from typing import Any

from gateway.core.search import MAX_QUERY_CHARACTERS
from gateway.core.transfer import FORMATS
from gateway.http.openapi.parts import CONVERSATION_ID, json_content, list_of, operation, page_parameters, ref

TENANT = {
    "name": "tenant",
    "in": "query",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    "description": "Admin keys only: act on this tenant's conversations",
}


def conversation_paths() -> dict[str, Any]:
    conversation = json_content(ref("Conversation"), "The conversation")
    tenant = TENANT
    in_path = [{"name": "conversation_id", "in": "path", "required": True, "schema": CONVERSATION_ID}, tenant]
    item_id = {
        "name": "item_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "pattern": "^[!-.0-~]+$"},
        "description": "An item id (msg_..., fc_..._N, fco_..., rs_...)",
    }
    include = {
        "name": "include",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string"}},
        "description": "Taken and ignored (no item has optional fields here)",
    }
    return {
        "/v1/conversations": {
            "parameters": [tenant],
            "get": operation(
                "The caller's conversations, newest activity first; with q, those whose messages hold every word",
                json_content(list_of("ListedConversation"), "A page of conversations"),
                errors=(400, 503),
                parameters=[
                    *page_parameters("desc"),
                    {
                        "name": "q",
                        "in": "query",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARACTERS},
                        "description": "Words, in any order, each found case-insensitively inside a message's text "
                        "or tool calls (so the last may be a prefix, and Chinese matches without spaces)",
                    },
                ],
            ),
            "post": operation(
                "Create a conversation", conversation, errors=(400, 409, 413, 503), body="CreateConversation"
            ),
        },
        "/v1/conversations/{conversation_id}": {
            "parameters": in_path,
            "get": operation(
                "One conversation, with its cost ledger",
                json_content(ref("ConversationWithCost"), "The conversation and its cost"),
                errors=(400, 404, 503),
            ),
            "patch": operation(
                "Replace its metadata", conversation, errors=(400, 404, 413, 503), body="UpdateConversation"
            ),
            "post": operation(
                "Replace its metadata (OpenAI's form)",
                conversation,
                errors=(400, 404, 413, 503),
                body="UpdateConversation",
            ),
            "delete": operation(
                "Delete it and all its messages",
                json_content(ref("ConversationDeleted"), "Deleted"),
                errors=(400, 404, 503),
            ),
        },
        "/v1/conversations/{conversation_id}/messages": {
            "parameters": in_path,
            "get": operation(
                "Stored messages in order",
                json_content(list_of("StoredMessage"), "A page of messages"),
                errors=(400, 404, 503),
                parameters=page_parameters("asc"),
            ),
        },
        "/v1/conversations/{conversation_id}/export": {
            "parameters": in_path,
            "get": operation(
                "The conversation as `gateway conversations export` writes it",
                {
                    "description": "jsonl: one JSON object per line; openai: one line of {model, messages}",
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                errors=(400, 404, 503),
                parameters=[
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(FORMATS), "default": "jsonl"},
                    }
                ],
            ),
        },
        "/v1/conversations/{conversation_id}/items": {
            "parameters": in_path,
            "get": operation(
                "Its stored messages as OpenAI's conversation items (Responses items), newest first by default",
                json_content(list_of("ConversationItem"), "A page of items"),
                errors=(400, 404, 503),
                parameters=[*page_parameters("desc"), include],
            ),
            "post": operation(
                "Append items as messages, without a model call; the items they are stored as",
                json_content(list_of("ConversationItem"), "The items added"),
                errors=(400, 404, 413, 503),
                body="CreateItems",
                parameters=[include],
            ),
        },
        "/v1/conversations/{conversation_id}/items/{item_id}": {
            "parameters": [*in_path, item_id],
            "get": operation("One item", json_content(ref("ConversationItem"), "The item"), errors=(400, 404, 503)),
            "delete": operation(
                "Delete the stored message the item belongs to (all of its items)",
                conversation,
                errors=(400, 404, 503),
            ),
        },
        "/v1/conversations/{conversation_id}/rewind": {
            "parameters": in_path,
            "post": operation(
                "Remove the last N user turns and everything after each",
                conversation,
                errors=(400, 404, 413, 503),
                body="Rewind",
            ),
        },
        "/v1/conversations/{conversation_id}/fork": {
            "parameters": in_path,
            "post": operation(
                "A new conversation with a copy of the history up to a message",
                conversation,
                errors=(400, 404, 409, 413, 503),
                body="Fork",
            ),
        },
    }
