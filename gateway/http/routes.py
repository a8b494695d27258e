"""HTTP handlers: parse the request, call one use case, respond or stream.  No SQL, no upstream session."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.core import idempotency
from gateway.core.access import tenant_owner
from gateway.core.chat import ChatRequest, ChatService, ClientGone
from gateway.settings.config import Config
from gateway.http.connections import waiting_for_client
from gateway.core.conversations import ConversationsService, parse_page
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
)
from gateway.core.keys import KEY_PREFIX, valid_tenant
from gateway.core.lifecycle import InFlight
from gateway.observability.logs import note
from gateway.http.middleware import DRAIN, METRICS, NATIVE_PREFIX, PRINCIPAL
from gateway.http.openapi import document
from gateway.core.passthrough import FORWARDED_METHODS, Forward, PassThrough
from gateway.protocols.openai_chat import (
    ChatBody,
    bearer_credential,
    dumps,
    parse_chat_body,
    parse_json_body,
    validate_conversation_id,
)
from gateway.storage.sqlite.readiness import StorageFault
from gateway.storage.sqlite.store import ConversationStore

CONFIG = web.AppKey("config", Config)
CHAT = web.AppKey("chat", ChatService)
CONVERSATIONS = web.AppKey("conversations", ConversationsService)
STORE = web.AppKey("store", ConversationStore)
PASS_THROUGH = web.AppKey("pass_through", PassThrough)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
CONVERSATION_HEADER = "X-Conversation-Id"
_OWN_PREFIXES = ("/v1/conversations",)  # the gateway's own API: never forwarded
_OWN_METHODS = ("GET", "POST", "PATCH", "DELETE")


class HttpChannel:
    """The use case's ``ReplyChannel`` over an aiohttp request."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def respond(self, status: int, content_type: str, headers: Mapping[str, str], body: bytes) -> None:
        self.response = web.Response(status=status, body=body, headers={**headers, "Content-Type": content_type})

    async def open_stream(self, status: int, content_type: str, headers: Mapping[str, str]) -> None:
        response = web.StreamResponse(status=status, headers={**headers, "Content-Type": content_type})
        await response.prepare(self._request)
        self.response = response

    async def send(self, data: bytes) -> None:
        assert self.response is not None, "open_stream comes first"
        try:
            await self.response.write(data)
        except ConnectionResetError as exc:
            raise ClientGone from exc

    def abort(self) -> None:
        if self._request.transport is not None:
            self._request.transport.close()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    # Admission first: past upstream.max_in_flight the 503 goes out before a byte of the body is read.
    with request.app[IN_FLIGHT]:
        raw = await read_body(request)
        body = parse_chat_body(raw, max_messages=request.app[CONFIG].max_messages)
        return await answer_chat(request, body, raw, HttpChannel(request))


async def answer_chat(
    request: web.Request,
    body: ChatBody,
    raw: bytes,
    channel: HttpChannel,
    forwarded: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Run the chat use case for a parsed body (OpenAI's, or translated from the native protocol) and return
    the response ``channel`` made."""
    header = request.headers.get(CONVERSATION_HEADER)
    conversation_id = validate_conversation_id(header) if header is not None else None
    principal = request[PRINCIPAL]
    authorization = _upstream_authorization(request)
    note(conversation_id=conversation_id, model=body.model, stream=body.stream)
    headers = _without_upstream_key(request, forwarded if forwarded is not None else request.headers)
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    try:
        await request.app[CHAT].complete(
            ChatRequest(body, raw, conversation_id, principal.owner, authorization, headers, key), channel
        )
    except ClientGone:
        pass
    assert channel.response is not None, "the use case always answers"
    return channel.response


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``server.max_body_bytes`` (else 413) and ``server.body_timeout_seconds`` in all,
    however it trickles (else 408): a byte now and then must not hold the connection, or an in-flight slot."""
    config = request.app[CONFIG]
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.", code="request_too_large")
    try:
        if request.content.is_eof():  # the usual case: the body came with the headers, nothing to wait for
            return await request.read()
        with waiting_for_client(request):
            async with asyncio.timeout(config.body_timeout):
                return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the {limit}-byte limit.", code="request_too_large") from None
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        raise InvalidRequest(
            "The request body could not be read as its Content-Encoding says.", code="invalid_body"
        ) from None
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {config.body_timeout:g} seconds.", code="request_timeout"
        ) from None


def _upstream_authorization(request: web.Request) -> str | None:
    """The ``Authorization`` that goes upstream for this request, or None for none of the client's (the gateway
    then sends its own key, when it holds one).  A gateway key never goes upstream.

    Open mode: the client's own credential.  Keys mode: the gateway's key (``upstream.api_key``), else the value
    of the client's ``auth.upstream_key_header`` (a bare key gets ``Bearer`` put in front), else nothing at all;
    the start-up refuses that last case, but in ``auto`` mode the first gateway key can be created while the
    server runs, and such requests are refused here with a 500 naming the settings rather than sent upstream
    without a key (which would answer 401, blaming the client's valid gateway key)."""
    if request[PRINCIPAL].key_id is None:
        return request.headers.get("Authorization")
    config = request.app[CONFIG]
    if config.upstream_api_key:
        return None
    if not config.upstream_key_header:
        raise GatewayError(
            "The gateway holds no upstream key for keys mode: its operator must set upstream.api_key "
            "(DASHSCOPE_API_KEY) or auth.upstream_key_header, and restart it.",
            code="upstream_key_not_configured",
        )
    value = request.headers.get(config.upstream_key_header, "").strip()
    if not value:
        raise AuthenticationFailed(
            f"This gateway needs your own upstream key: send it in the '{config.upstream_key_header}' header.",
            code="missing_upstream_key",
        )
    if bearer_credential(value).startswith(KEY_PREFIX):
        raise AuthenticationFailed(
            f"The '{config.upstream_key_header}' header must carry an upstream key, not a gateway key.",
            code="invalid_upstream_key",
        )
    return value if " " in value else f"Bearer {value}"


def _without_upstream_key(request: web.Request, headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` without ``auth.upstream_key_header``: its value goes upstream only as ``Authorization``."""
    name = request.app[CONFIG].upstream_key_header
    if not name:
        return headers
    kept = CIMultiDict(headers)
    kept.popall(name, None)
    return kept


async def pass_through(request: web.Request) -> web.StreamResponse:
    """Any other request under /v1/ or /api/v1/ goes upstream as it is (gateway.core.passthrough)."""
    path = request.rel_url.raw_path
    if request.method not in (*FORWARDED_METHODS, "HEAD") or path.startswith(_OWN_PREFIXES):
        # The gateway's own routes answer only their own methods; OPTIONS is CORS's (middleware), never forwarded.
        raise web.HTTPMethodNotAllowed(request.method, _OWN_METHODS if path.startswith(_OWN_PREFIXES) else ())
    native = path.startswith(NATIVE_PREFIX)
    authorization = _upstream_authorization(request)
    channel = HttpChannel(request)
    note(forwarded=True)
    with request.app[IN_FLIGHT]:
        forward = Forward(
            method=request.method,
            path=path.removeprefix(NATIVE_PREFIX.rstrip("/") if native else "/v1"),
            query=request.rel_url.raw_query_string,
            body=await read_body(request),
            native=native,
            authorization=authorization,
            headers=_without_upstream_key(request, request.headers),
        )
        try:
            await request.app[PASS_THROUGH].forward(forward, channel)
        except ClientGone:
            pass
    assert channel.response is not None, "the use case always answers"
    return channel.response


async def list_conversations(request: web.Request) -> web.Response:
    page = parse_page(request.query, default_order="desc")
    return _json(await request.app[CONVERSATIONS].list(_owner(request), page))


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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when a turn could be recorded now; 503 while draining, or naming the storage fault in the way."""
    if request.app[DRAIN].started:
        return web.json_response({"status": "draining"}, status=503)
    try:
        fault = await request.app[STORE].readiness()
    except Exception as exc:
        structlog.get_logger("gateway").warning("database_unreachable", error=type(exc).__name__)
        fault = StorageFault("unreachable", "the database could not be checked")
    if fault is not None:
        structlog.get_logger("gateway").warning("database_not_ready", reason=fault.reason)
        body = {"status": "unavailable", "database": fault.reason, "detail": fault.detail}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", "database": "ok"})


async def echo_conversation_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response to a request with a valid X-Conversation-Id carries it back."""
    header = request.headers.get(CONVERSATION_HEADER)
    if header is None:
        return
    try:
        response.headers[CONVERSATION_HEADER] = validate_conversation_id(header)
    except InvalidRequest:
        pass


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _openapi_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    body = dumps(document(__version__)).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_post("/v1/conversations", create_conversation)
    # Ids may hold any printable character, "/" included (sent as %2F): match the rest of the path, and try the
    # /messages route first.
    app.router.add_get("/v1/conversations/{conversation_id:.+}/messages", list_messages)
    app.router.add_post("/v1/conversations/{conversation_id:.+}/rewind", rewind_conversation)
    app.router.add_post("/v1/conversations/{conversation_id:.+}/fork", fork_conversation)
    app.router.add_get("/v1/conversations/{conversation_id:.+}", get_conversation)
    app.router.add_patch("/v1/conversations/{conversation_id:.+}", patch_conversation)
    app.router.add_delete("/v1/conversations/{conversation_id:.+}", delete_conversation)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", _openapi_handler())
    # Last, so that every route above wins; the native generation route is added by app.create_app before this.
    app.router.add_route("*", "/v1/{upstream_path:.*}", pass_through)
    app.router.add_route("*", "/api/v1/{upstream_path:.*}", pass_through)
    app.on_response_prepare.append(echo_conversation_id)
