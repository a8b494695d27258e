"""The conversations API handlers (``/v1/conversations...``): thin calls into the conversations use case."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.core.access import tenant_owner
from gateway.core.conversations import parse_page
from gateway.core.keys import valid_tenant
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.http.channel import read_body
from gateway.http.state import CONVERSATIONS, PRINCIPAL
from gateway.observability.logs import note
from gateway.protocols.openai_chat import dumps, parse_json_body, validate_conversation_id


async def list_conversations(request: web.Request) -> web.Response:
    page = parse_page(request.query, default_order="desc")
    conversations = request.app[CONVERSATIONS]
    q = request.query.get("q")
    if q is not None:
        return _json(await conversations.search(_owner(request), q, page))
    return _json(await conversations.list(_owner(request), page))


async def export_conversation(request: web.Request) -> web.Response:
    """``?format=jsonl`` (default; one JSON line per record, as ``gateway conversations export``) or ``openai``."""
    fmt = request.query.get("format", "jsonl")
    conversation_id = _path_id(request)
    lines = await request.app[CONVERSATIONS].export(_owner(request), conversation_id, fmt)
    extension, content_type = ("jsonl", "application/x-ndjson") if fmt == "jsonl" else ("json", "application/json")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in conversation_id)[:100]
    return web.Response(
        body="".join(f"{line}\n" for line in lines).encode(),
        content_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{safe}.{extension}"'},
    )


async def get_conversation(request: web.Request) -> web.Response:
    return _json(await request.app[CONVERSATIONS].get(_owner(request), _path_id(request)))


async def list_messages(request: web.Request) -> web.Response:
    page = parse_page(request.query, default_order="asc")
    return _json(await request.app[CONVERSATIONS].messages(_owner(request), _path_id(request), page))


async def create_conversation(request: web.Request) -> web.Response:
    return _json(await request.app[CONVERSATIONS].create(_owner(request), await _json_body(request)))


async def patch_conversation(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await request.app[CONVERSATIONS].set_metadata(_owner(request), _path_id(request), body))


async def rewind_conversation(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await request.app[CONVERSATIONS].rewind(_owner(request), _path_id(request), body))


async def fork_conversation(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await request.app[CONVERSATIONS].fork(_owner(request), _path_id(request), body))


async def list_items(request: web.Request) -> web.Response:
    page = parse_page(request.query, default_order="desc")  # ``include`` is taken and ignored
    return _json(await request.app[CONVERSATIONS].items.list(_owner(request), _path_id(request), page))


async def create_items(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await request.app[CONVERSATIONS].items.add(_owner(request), _path_id(request), body))


async def get_item(request: web.Request) -> web.Response:
    owner, conversation_id = _owner(request), _path_id(request)
    return _json(await request.app[CONVERSATIONS].items.get(owner, conversation_id, request.match_info["item_id"]))


async def delete_item(request: web.Request) -> web.Response:
    owner, conversation_id = _owner(request), _path_id(request)
    return _json(await request.app[CONVERSATIONS].delete_item(owner, conversation_id, request.match_info["item_id"]))


async def delete_conversation(request: web.Request) -> web.Response:
    return _json(await request.app[CONVERSATIONS].delete(_owner(request), _path_id(request)))


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or None when it has none (every field of these bodies is optional)."""
    raw = await read_body(request)
    return parse_json_body(raw) if raw.strip() else None


def _owner(request: web.Request) -> str:
    """The caller's owner, or with ``?tenant=NAME`` (admin keys only) that tenant's."""
    principal = request[PRINCIPAL]
    tenant = request.query.get("tenant")
    if tenant is None:
        return principal.owner
    if not principal.admin:
        raise PermissionDenied("Only admin keys may name a tenant.", code="admin_key_required", param="tenant")
    if not valid_tenant(tenant):
        raise InvalidRequest("'tenant' is not a valid tenant name.", code="invalid_tenant", param="tenant")
    note(tenant_override=tenant)
    return tenant_owner(tenant)


def _path_id(request: web.Request) -> str:
    conversation_id = validate_conversation_id(request.match_info["conversation_id"], "conversation_id")
    note(conversation_id=conversation_id)
    return conversation_id


def _json(data: object) -> web.Response:
    return web.json_response(data, dumps=dumps)
