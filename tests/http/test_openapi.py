"""The OpenAPI document at /openapi.json is true: it names exactly the routes the app serves, and schemathesis,
sending generated requests to every operation of a live gateway, finds no server error and no response that
breaks the document."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from gateway import __version__
from gateway.core.passthrough import FORWARDED_METHODS
from gateway.http.openapi import document
from gateway.protocols.openai_chat import dumps
from tests.conftest import Gateway, make_config, start_gateway
from tests.fake_upstream import FakeUpstream

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


async def test_the_document_names_exactly_the_routes_served(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        served = await resp.json()
    assert served == json.loads(dumps(document(__version__)))
    documented = {
        (path, method.upper()) for path, item in served["paths"].items() for method in item if method != "parameters"
    }
    routes = set()
    for route in gateway.runner.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = str(info.get("path") or info.get("formatter"))
        path = path.replace("{conversation_id:.+}", "{conversation_id}").replace("{response_id:.+}", "{response_id}")
        if path == "/ui" or path.startswith("/ui/"):  # the web console: a page and its files, not API operations
            continue
        if route.method == "*":  # the pass-through
            routes.update((path, method) for method in FORWARDED_METHODS)
        elif route.method != "HEAD":  # aiohttp adds HEAD to every GET
            routes.add((path, route.method))
    assert documented == routes


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway and fake upstream on an event loop of their own: schemathesis makes blocking calls."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[FakeUpstream, Gateway]:
        upstream = await FakeUpstream().start()
        return upstream, await start_gateway(make_config(tmp_path_factory.mktemp("openapi"), upstream.url))

    upstream, gateway = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield gateway.url

    async def stop() -> None:
        await gateway.stop()
        await upstream.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


# The document the gateway serves (the first test checks that it is this one).  Built here rather than fetched
# from the live gateway: schemathesis's fixture-based loading does not work with this pytest.
schema = schemathesis.openapi.from_dict(document(__version__))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case: Any, live_gateway: str) -> None:
    case.call_and_validate(base_url=live_gateway, headers={"Authorization": "Bearer sk-schemathesis"}, checks=CHECKS)
