"""Every key of shared state on the aiohttp app and request, in one place: what ``app.create_app`` puts there
and what middleware and handlers read.  Typed with the use cases and ports, never with a concrete adapter.
"""

from __future__ import annotations

from aiohttp import web

from gateway.core.access import Gatekeeper, Limiter, Principal
from gateway.core.chat import ChatService
from gateway.core.conversations import ConversationsService
from gateway.core.lifecycle import Drain, InFlight
from gateway.core.passthrough import PassThrough
from gateway.core.ports import Storage
from gateway.core.responses import ResponsesService
from gateway.http.cors import CorsPolicy
from gateway.http.heap import HeapTrimmer
from gateway.observability.metrics import Metrics
from gateway.settings.config import Config

# Per request, set by the middleware.
REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_STARTED = web.RequestKey("request_started", float)

# Per app, set by app.create_app.
CONFIG = web.AppKey("config", Config)
GATEKEEPER = web.AppKey("gatekeeper", Gatekeeper)
LIMITER = web.AppKey("limiter", Limiter)
METRICS = web.AppKey("metrics", Metrics)
DRAIN = web.AppKey("drain", Drain)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
CORS = web.AppKey("cors", CorsPolicy)
HEAP = web.AppKey("heap", HeapTrimmer)
MAX_HEADER_BYTES = web.AppKey("max_header_bytes", int)
CHAT = web.AppKey("chat", ChatService)
CONVERSATIONS = web.AppKey("conversations", ConversationsService)
RESPONSES = web.AppKey("responses", ResponsesService)
PASS_THROUGH = web.AppKey("pass_through", PassThrough)
STORE = web.AppKey[Storage]("store")
