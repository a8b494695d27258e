"""The chat handler (``POST /v1/chat/completions``, also reached from the native endpoint) and the pass-through
handler for every other API request, with the credential rules for what goes upstream."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from gateway.core import idempotency
from gateway.core.chat import ChatRequest
from gateway.core.keys import KEY_PREFIX
from gateway.core.passthrough import FORWARDED_METHODS, Forward
from gateway.core.relay import ClientGone
from gateway.errors import AuthenticationFailed, GatewayError
from gateway.http.channel import HttpChannel, read_body
from gateway.http.middleware import NATIVE_PREFIX
from gateway.http.state import CHAT, CONFIG, IN_FLIGHT, PASS_THROUGH, PRINCIPAL
from gateway.observability.logs import note
from gateway.protocols.openai_chat import ChatBody, bearer_credential, parse_chat_body, validate_conversation_id

CONVERSATION_HEADER = "X-Conversation-Id"
_OWN_PREFIXES = ("/v1/conversations", "/v1/responses")  # the gateway's own API: never forwarded
_OWN_METHODS = ("GET", "POST", "PATCH", "DELETE")


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
    authorization = upstream_authorization(request)
    note(conversation_id=conversation_id, model=body.model, stream=body.stream)
    headers = without_upstream_key(request, forwarded if forwarded is not None else request.headers)
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    try:
        await request.app[CHAT].complete(
            ChatRequest(body, raw, conversation_id, principal.owner, authorization, headers, key), channel
        )
    except ClientGone:
        pass
    assert channel.response is not None, "the use case always answers"
    return channel.response


def upstream_authorization(request: web.Request) -> str | None:
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


def without_upstream_key(request: web.Request, headers: Mapping[str, str]) -> Mapping[str, str]:
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
    authorization = upstream_authorization(request)
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
            headers=without_upstream_key(request, request.headers),
        )
        try:
            await request.app[PASS_THROUGH].forward(forward, channel)
        except ClientGone:
            pass
    assert channel.response is not None, "the use case always answers"
    return channel.response
