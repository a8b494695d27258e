"""The HTTP edge (aiohttp): middleware (request context, the canonical log line, errors rendered once, access
control), thin handlers (chat, native, conversations, ops), the OpenAPI document, CORS, client connection limits.

Handlers parse, call one use case, respond or stream.  May import every layer below (``core``, ``protocols``,
``settings``, ``observability``, ``errors``); concrete adapters reach it only through ``app``.
"""
