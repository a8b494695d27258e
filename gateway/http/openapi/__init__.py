"""The OpenAPI 3 document of every route the gateway serves, published at ``GET /openapi.json``.

Written out here rather than derived from handlers (which parse by hand, to stay fast): ``tests/http/test_openapi.py``
keeps it true, checking that it names exactly the routes the app serves and running schemathesis against it.
Limits come from the modules that enforce them, so the two cannot drift apart.  ``parts`` holds the building
blocks, ``schemas`` the component schemas, ``paths`` and ``conversations`` the routes.
"""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.paths import paths
from gateway.http.openapi.schemas import SCHEMAS

__all__ = ["document"]


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Memory gateway",
            "version": version,
            "description": "OpenAI-compatible chat completions and Responses API with server-side memory, and the "
            "API to manage it. "
            "Every conversation belongs to the caller: in keys mode to the tenant of its gateway key, in open mode "
            "to its bearer credential.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A gateway key, or (open mode) any"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key", "description": "A gateway key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": paths(),
    }
