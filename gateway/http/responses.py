"""OpenAI's Responses API over HTTP: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``.

As for the native endpoint (``gateway.http.native``), the handler translates the request into a chat completion
request (``gateway.protocols.openai_responses``) and hands it to the same chat use case as ``/v1/chat/completions``,
so memory, the context window and storage are shared; the responses use case (``gateway.core.responses``) says
which conversation it continues.  ``ResponsesChannel`` translates what the chat use case answers back: a chat
completion into a Response object, chat SSE chunks into Responses events.  The chat use case holds a stream's
``[DONE]`` back until the turn is recorded, and the channel sends ``response.completed`` only then, so a follow-up
sent the instant a response completes always finds it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.core.chat import ChatRequest
from gateway.core.conversations import parse_page
from gateway.core.ports import ResponseRecord
from gateway.core.relay import ClientGone, parse_completion
from gateway.core.responses import new_response_id
from gateway.errors import Conflict, UpstreamInvalidResponse
from gateway.http.channel import HttpChannel, read_body
from gateway.http.chat import CONVERSATION_HEADER, upstream_authorization, without_upstream_key
from gateway.http.state import CHAT, CONFIG, IN_FLIGHT, PRINCIPAL, RESPONSES
from gateway.observability.logs import note
from gateway.protocols.openai_chat import dumps, encode, loads, parse_chat_body, validate_conversation_id
from gateway.protocols.openai_responses import (
    ResponsesStream,
    chat_body,
    parse_responses_request,
    request_fields,
    response_from_completion,
)
from gateway.protocols.sse import DONE, SseParser

# A turn planned against a response that was the latest when it was looked up, but no longer is when the turn
# runs (another turn got in between): look again, which forks.  Each attempt is a lookup, never an upstream call.
_ATTEMPTS = 3


class ResponsesChannel(HttpChannel):
    """The chat use case's ``ReplyChannel``, answering in the Responses API's shapes."""

    def __init__(
        self,
        request: web.Request,
        *,
        response_id: str,
        created_at: float,
        fields: dict[str, Any],
        conversation_id: str | None,
    ) -> None:
        super().__init__(request)
        self._id = response_id
        self._created_at = created_at
        self._fields = fields
        self._conversation_id = conversation_id
        self._stream = ResponsesStream(response_id, created_at, fields, conversation_id)
        self._parser = SseParser()
        self._ended = False

    def _headers(self, headers: Mapping[str, str], content_type: str) -> dict[str, str]:
        out = {**headers, "Content-Type": content_type}
        if self._conversation_id is not None:
            out[CONVERSATION_HEADER] = self._conversation_id
        return out

    async def respond(self, status: int, content_type: str, headers: Mapping[str, str], body: bytes) -> None:
        if status < 400:
            if parse_completion(body) is None:  # vetted already when the turn has memory; not without
                error = UpstreamInvalidResponse(
                    "The upstream answered with something that is not a chat completion.",
                    code="upstream_invalid_response",
                )
                status, body = error.http_status, error.body()
            else:
                body = encode(
                    response_from_completion(
                        id=self._id,
                        created_at=self._created_at,
                        request=self._fields,
                        completion=loads(body),
                        conversation_id=self._conversation_id,
                        completed_at=time.time(),
                    )
                )
        self.response = web.Response(status=status, body=body, headers=self._headers(headers, "application/json"))

    async def open_stream(self, status: int, content_type: str, headers: Mapping[str, str]) -> None:
        response = web.StreamResponse(status=status, headers=self._headers(headers, "text/event-stream"))
        await response.prepare(self._request)
        self.response = response
        await super().send(self._stream.start())

    async def send(self, data: bytes) -> None:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if self._ended:
                continue
            if event.data is None:
                out.append(event.raw)  # keep-alive comments pass through, as on the chat path
                continue
            if event.data.strip() == DONE:  # held back by the chat use case until the turn was recorded
                self._ended = True
                out.append(self._stream.complete(completed_at=time.time()))
                continue
            try:
                chunk = loads(event.data)
            except ValueError:
                chunk = None  # the use case has vetted every chunk it relays; this is belt and braces
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                self._ended = True
                error = chunk["error"]
                out.append(self._stream.fail(error if isinstance(error, dict) else {"message": str(error)}))
                continue
            out.append(self._stream.chunk(chunk))
        if any(out):
            await super().send(b"".join(out))


async def create_response(request: web.Request) -> web.StreamResponse:
    # Admission first, as for /v1/chat/completions: past upstream.max_in_flight the 503 goes out unread.
    with request.app[IN_FLIGHT]:
        return await _create(request)


async def _create(request: web.Request) -> web.StreamResponse:
    raw = await read_body(request)
    parsed = parse_responses_request(raw)
    owner = request[PRINCIPAL].owner
    conversation = parsed.conversation
    header = request.headers.get(CONVERSATION_HEADER)
    if conversation is None and parsed.previous_response_id is None and header is not None:
        conversation = validate_conversation_id(header)  # the same conversation the chat path's header names
    # item_reference input items become the owner's items they name, as if the client had sent them.
    parsed = await request.app[RESPONSES].resolve_references(owner, parsed, conversation=conversation)
    body = parse_chat_body(
        encode(chat_body(parsed, stream=parsed.stream)), max_messages=request.app[CONFIG].max_messages
    )
    response_id, created_at = new_response_id(), time.time()
    fields = request_fields(parsed)
    note(protocol="responses", response_id=response_id, model=body.model, stream=body.stream)
    authorization = upstream_authorization(request)
    headers = without_upstream_key(request, request.headers)
    for attempt in range(1, _ATTEMPTS + 1):
        where = await request.app[RESPONSES].resolve(
            owner, previous_response_id=parsed.previous_response_id, conversation=conversation, store=parsed.store
        )
        note(conversation_id=where.conversation_id)
        recorded = parsed.store and where.conversation_id is not None
        channel = ResponsesChannel(
            request,
            response_id=response_id,
            created_at=created_at,
            fields=fields,
            conversation_id=where.conversation_id if recorded or conversation is not None else None,
        )
        chat = ChatRequest(
            body,
            encode(body.fields),
            where.conversation_id,
            owner,
            authorization,
            headers,
            record=recorded,
            response=ResponseRecord(response_id, created_at, fields) if recorded else None,
            expected_length=where.expected_length,
            trim=parsed.truncation == "auto",
        )
        try:
            await request.app[CHAT].complete(chat, channel)
        except Conflict as exc:
            if exc.code != "previous_response_not_latest" or attempt == _ATTEMPTS:
                raise
            continue
        except ClientGone:
            pass
        assert channel.response is not None, "the use case always answers"
        return channel.response
    raise AssertionError("unreachable")  # pragma: no cover


async def get_response(request: web.Request) -> web.Response:
    return _json(await request.app[RESPONSES].get(request[PRINCIPAL].owner, _path_id(request)))


async def delete_response(request: web.Request) -> web.Response:
    return _json(await request.app[RESPONSES].delete(request[PRINCIPAL].owner, _path_id(request)))


async def list_input_items(request: web.Request) -> web.Response:
    page = parse_page(request.query, default_order="desc")
    return _json(await request.app[RESPONSES].input_items(request[PRINCIPAL].owner, _path_id(request), page))


def _path_id(request: web.Request) -> str:
    response_id = request.match_info["response_id"]
    note(response_id=response_id[:64])
    return response_id


def _json(data: object) -> web.Response:
    return web.json_response(data, dumps=dumps)
