"""The route table: which handler serves which method and path.  Handlers live beside it (chat, native,
responses, conversations, ops); none holds SQL or an upstream session."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.http.chat import CONVERSATION_HEADER, chat_completions, pass_through
from gateway.http.console import add_console_routes
from gateway.http.conversations import (
    create_conversation,
    create_items,
    delete_conversation,
    delete_item,
    export_conversation,
    fork_conversation,
    get_conversation,
    get_item,
    list_conversations,
    list_items,
    list_messages,
    patch_conversation,
    rewind_conversation,
)
from gateway.http.ops import healthz, metrics, openapi_handler, readyz
from gateway.http.responses import create_response, delete_response, get_response, list_input_items
from gateway.protocols.openai_chat import validate_conversation_id


async def echo_conversation_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response to a request with a valid X-Conversation-Id carries it back (unless it names the one it used
    itself, as a Responses API call continuing another response does)."""
    header = request.headers.get(CONVERSATION_HEADER)
    if header is None or CONVERSATION_HEADER in response.headers:  # a response names its own conversation
        return
    try:
        response.headers[CONVERSATION_HEADER] = validate_conversation_id(header)
    except InvalidRequest:
        pass


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id:.+}/input_items", list_input_items)
    app.router.add_get("/v1/responses/{response_id:.+}", get_response)
    app.router.add_delete("/v1/responses/{response_id:.+}", delete_response)
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_post("/v1/conversations", create_conversation)
    # Ids may hold any printable character, "/" included (sent as %2F): match the rest of the path, and try the
    # /messages and /items routes first.  An item id holds no "/" (msg_12, fc_12_0): the last segment is it.
    app.router.add_get("/v1/conversations/{conversation_id:.+}/messages", list_messages)
    app.router.add_get("/v1/conversations/{conversation_id:.+}/export", export_conversation)
    app.router.add_get("/v1/conversations/{conversation_id:.+}/items", list_items)
    app.router.add_post("/v1/conversations/{conversation_id:.+}/items", create_items)
    app.router.add_get("/v1/conversations/{conversation_id:.+}/items/{item_id}", get_item)
    app.router.add_delete("/v1/conversations/{conversation_id:.+}/items/{item_id}", delete_item)
    app.router.add_post("/v1/conversations/{conversation_id:.+}/rewind", rewind_conversation)
    app.router.add_post("/v1/conversations/{conversation_id:.+}/fork", fork_conversation)
    app.router.add_get("/v1/conversations/{conversation_id:.+}", get_conversation)
    app.router.add_patch("/v1/conversations/{conversation_id:.+}", patch_conversation)
    app.router.add_post("/v1/conversations/{conversation_id:.+}", patch_conversation)  # OpenAI's form of PATCH
    app.router.add_delete("/v1/conversations/{conversation_id:.+}", delete_conversation)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_handler())
    add_console_routes(app)  # /ui/: the page signs in itself, so the access middleware lets it by (no /v1/ prefix)
    # Last, so that every route above wins; the native generation route is added by app.create_app before this.
    app.router.add_route("*", "/v1/{upstream_path:.*}", pass_through)
    app.router.add_route("*", "/api/v1/{upstream_path:.*}", pass_through)
    app.on_response_prepare.append(echo_conversation_id)
