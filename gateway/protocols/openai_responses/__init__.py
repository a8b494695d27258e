"""OpenAI's Responses API (``POST /v1/responses``) as chat completions: request validation and translation in,
Response objects and stream events out.  Pure code; callers import from here.

The modules: ``request`` (a body validated into a ``ResponsesRequest``; the Response object's request-side fields),
``input_items`` (the input items validated into chat messages), ``checks`` (the validation errors and scalar checks
those two share), ``chat`` (a request as a chat completions body), ``objects`` (Response objects, their output
items, usage and status), ``items`` (stored chat messages as items), ``stream`` (``ResponsesStream``).

Public functions (plain values in and out; nothing here knows the core's records):

- ``parse_responses_request(raw: bytes) -> ResponsesRequest``: validates a body; any JSON input gives either a
  request or ``InvalidRequest`` with OpenAI's ``code`` (``invalid_type``, ``missing_required_parameter``,
  ``invalid_value``, ``unsupported_value``, ...) and ``param`` (``input[2].content[0].type``, ``tools[0].type``).
- ``with_referenced_items(req, found: Mapping[str, item]) -> ResponsesRequest``: the request with its
  ``item_reference`` placeholders (``req.references``: ``ItemReference(index, id)``) replaced by the items ``found``
  holds under those ids, translated as if sent; 400 ``item_not_found`` (``param`` ``input[i]``) for one it lacks.
  ``req.messages`` raises while references are unresolved.
- ``response_of_item(item_id) -> str | None``: the response id an output item id (``msg_<hex>_<n>``,
  ``fc_<hex>_<n>``, ``rs_<hex>_<n>``) derives from.
- ``chat_body(req, *, stream: bool) -> dict``: the chat completions body, without stored history.
- ``request_fields(req) -> dict``: the request-side fields of the Response object (``ResponseRecord.request``).
- ``response_object(*, id, created_at, request, reply, usage, status, conversation_id, error=None,
  incomplete=None, completed_at=None) -> dict``: a Response object; ``reply`` is the assistant chat message,
  ``usage`` the chat completion's usage, ``error`` an OpenAI error object (``{"message", "type", "code"}``).
- ``response_from_completion(*, id, created_at, request, completion, conversation_id, completed_at=None)``: the
  same from a whole ``chat.completion`` body (status from its ``finish_reason``).
- ``response_from_stored(*, id, created_at, request, reply, usage, interrupted, conversation_id,
  completed_at=None) -> dict``: GET's object from what a turn recorded (``StoredResponse.reply.body``, its usage,
  its interrupted flag, ``reply.created_at`` as ``completed_at``): ``completed``, or ``incomplete`` when
  interrupted.  (A reply stopped by the length limit reads back as ``completed``: no finish reason is stored.)
- ``items_from_messages(messages: Iterable[tuple[int, Message]]) -> list[dict]``: stored chat messages, given as
  ``(row_id, body)`` pairs in conversation order, as Responses items (input_items, the Conversations items API).
- ``finish_status(finish_reason, *, interrupted=False) -> (status, incomplete_details)``, ``response_usage``.
- ``ResponsesStream(id, created_at, request_fields, conversation_id)``: ``start()``, ``chunk(chat_chunk)``,
  ``complete(usage=None, *, completed_at=None)``, ``fail(error)``, each returning SSE bytes; ``complete`` ends
  with ``response.completed``, or ``response.incomplete`` (as OpenAI) when the reply hit its length limit.

The translation rules, where OpenAI's and the chat API's models differ, are in the docstrings of ``request``,
``input_items`` and ``chat``.
"""

from gateway.protocols.openai_responses.chat import chat_body
from gateway.protocols.openai_responses.input_items import ItemReference
from gateway.protocols.openai_responses.items import items_from_messages
from gateway.protocols.openai_responses.objects import (
    finish_status,
    response_from_completion,
    response_from_stored,
    response_object,
    response_of_item,
    response_usage,
)
from gateway.protocols.openai_responses.request import (
    ResponsesRequest,
    parse_responses_request,
    request_fields,
    with_referenced_items,
)
from gateway.protocols.openai_responses.stream import ResponsesStream

__all__ = [
    "ItemReference",
    "ResponsesRequest",
    "ResponsesStream",
    "chat_body",
    "finish_status",
    "items_from_messages",
    "parse_responses_request",
    "request_fields",
    "response_from_completion",
    "response_from_stored",
    "response_object",
    "response_of_item",
    "response_usage",
    "with_referenced_items",
]
